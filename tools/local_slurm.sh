#!/usr/bin/env bash
# A real Slurm cluster on this machine (munged, slurmctld, slurmd), for tests, CI and trying
# the sbatch jobs on a laptop: one node by default, or several, each a slurmd in its own
# network and UTS namespace with its own address and hostname.
#
#   tools/local_slurm.sh start [--nodes N]   install if needed (Debian: apt), start, wait for idle nodes
#   tools/local_slurm.sh stop                stop what this script started, remove what it created
#   tools/local_slurm.sh status              print the node states
#   tools/local_slurm.sh env                 print the export line clients need (SLURM_CONF)
#
# Everything lives under $CRILD_SLURM_DIR (default /tmp/crild-slurm): config, state, logs,
# munge socket and pid files. Idempotent: start on a running cluster only checks it.
# Each node advertises $CRILD_SLURM_CPUS CPUs (default 4, more than a laptop may have: the
# config lets it) so that multi-task allocations can be tested on 2 cores.
#
# With --nodes N > 1 (root, iproute2): a bridge <prefix>-br holds the controller's address
# $CRILD_SLURM_SUBNET.1/24 (default 10.213.7), and node i is a slurmd named <prefix>-n<i> in
# network namespace <prefix>-n<i> at $CRILD_SLURM_SUBNET.(10+i), joined to the bridge by a
# veth pair, with its own hostname and an /etc/hosts (bind-mounted in its own mount
# namespace) that names every node. Jobs run inside their node's namespaces, so ranks on
# different nodes talk over the nodes' addresses, as on a real cluster. munge is shared
# through its socket under $CRILD_SLURM_DIR. <prefix> is $CRILD_SLURM_PREFIX (default crild),
# the controller's port $CRILD_SLURM_PORT (default 6817, slurmd the next one): a second
# cluster with its own directory, prefix, subnet and port can run beside the first.
set -euo pipefail

DIR=${CRILD_SLURM_DIR:-/tmp/crild-slurm}
CPUS=${CRILD_SLURM_CPUS:-4}
PREFIX=${CRILD_SLURM_PREFIX:-crild}
SUBNET=${CRILD_SLURM_SUBNET:-10.213.7}
CTLD_PORT=${CRILD_SLURM_PORT:-6817}
SLURMD_PORT=$((CTLD_PORT + 1))
CONF="$DIR/slurm.conf"
NODE=crild-node                 # the single node's name
MUNGE_SOCKET="$DIR/munge/munge.socket.2"
MARK="$DIR/.created-by-crild"   # the directory is this script's own: stop removes it
NODES_FILE="$DIR/nodes"         # the running cluster's node count
BRIDGE="$PREFIX-br"

log() { echo "local_slurm: $*" >&2; }

install_packages() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
      && command -v munged >/dev/null; then
    return
  fi
  command -v apt-get >/dev/null || { log "slurmctld/slurmd/munge are missing and there is no apt-get"; exit 1; }
  log "installing slurmctld slurmd slurm-client munge (apt)"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    slurmctld slurmd slurm-client munge >/dev/null
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

running() {  # pid file exists and the process is alive (a daemon removes its file as it exits)
  local pid
  pid=$(cat "$1" 2>/dev/null) && [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

node_name() { echo "$PREFIX-n$1"; }
node_addr() { echo "$SUBNET.$((10 + $1))"; }

write_config() {  # $1: node count
  local n=$1 ctld_addr=127.0.0.1 node_lines partition i
  mkdir -p "$DIR"/{state,spool,log,munge}
  touch "$MARK"
  if [ "$n" -eq 1 ]; then
    node_lines="NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=16000 State=UNKNOWN"
    partition=$NODE
  else
    ctld_addr="$SUBNET.1"
    node_lines=$(for i in $(seq "$n"); do
      echo "NodeName=$(node_name "$i") NodeAddr=$(node_addr "$i") CPUs=$CPUS RealMemory=16000 State=UNKNOWN"
    done)
    partition="$PREFIX-n[1-$n]"
    { echo "127.0.0.1 localhost"; echo "$ctld_addr $(hostname -s)"
      for i in $(seq "$n"); do echo "$(node_addr "$i") $(node_name "$i")"; done; } > "$DIR/hosts"
  fi
  cat > "$CONF" <<EOF
ClusterName=$PREFIX
SlurmctldHost=$(hostname -s)($ctld_addr)
MailProg=/bin/true
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=10
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.%n.log
ProctrackType=proctrack/pgid
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
DependencyParameters=kill_invalid_depend
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.txt
JobRequeue=1
KillWait=10
InactiveLimit=0
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=30
$node_lines
PartitionName=debug Nodes=$partition Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
}

make_network() {  # $1: node count; a bridge, and per node a namespace joined to it by a veth pair
  local n=$1 i ns
  command -v ip >/dev/null || { log "--nodes needs iproute2 (ip)"; exit 1; }
  ip link add "$BRIDGE" type bridge
  ip addr add "$SUBNET.1/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  for i in $(seq "$n"); do
    ns=$(node_name "$i")
    ip netns add "$ns"
    ip link add "$PREFIX-v$i" type veth peer name eth0 netns "$ns"
    ip link set "$PREFIX-v$i" master "$BRIDGE" up
    ip -n "$ns" addr add "$(node_addr "$i")/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
  done
}

remove_network() {  # $1: node count; everything make_network made, whatever part of it exists
  local i ns
  command -v ip >/dev/null || return 0
  for i in $(seq "$1"); do
    ns=$(node_name "$i")
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true  # its veth end goes with it, and so the pair
  done
  ip link del "$BRIDGE" 2>/dev/null || true
}

start_node() {  # $1: node index; slurmd in the node's network, UTS and mount namespaces
  local name
  name=$(node_name "$1")
  # nsenter, not `ip netns exec`: that remounts /sys, hiding the cgroup mounts slurmd reads
  if ! unshare --uts --mount --propagation private nsenter --net="/run/netns/$name" \
      bash -c 'mount --bind "$1" /etc/hosts && hostname "$2" && exec /usr/sbin/slurmd -f "$3" -N "$2"' \
      _ "$DIR/hosts" "$name" "$CONF"; then
    log "slurmd of node $name did not start; its log: $DIR/log/slurmd.$name.log"
    exit 1
  fi
}

wait_idle() {
  local states bad
  for _ in $(seq 120); do
    states=$(sinfo -h -N -o "%N %t" 2>/dev/null || true)
    if [ -n "$states" ] && ! echo "$states" | awk '{print $2}' | grep -qvE '^(idle|mix|alloc)$'; then
      log "$(echo "$states" | wc -l) node(s) up: $(echo "$states" | tr '\n' ' '); export SLURM_CONF=$CONF"
      return 0
    fi
    for bad in $(echo "$states" | awk '$2 ~ /^(down|drain)/ {print $1}'); do
      scontrol update nodename="$bad" state=resume >/dev/null 2>&1 || true
    done
    sleep 0.5
  done
  log "the nodes did not become idle; logs in $DIR/log"
  exit 1
}

start() {  # $1: node count
  local n=$1 running_n port i
  install_packages
  export SLURM_CONF="$CONF"
  if running "$DIR/slurmctld.pid" && running "$DIR/munged.pid"; then
    running_n=$(cat "$NODES_FILE" 2>/dev/null || echo 1)
    if [ "$running_n" != "$n" ]; then
      log "a cluster of $running_n node(s) is running in $DIR; stop it first"
      exit 1
    fi
    log "already running ($CONF)"
  else
    local ports=("$CTLD_PORT")
    [ "$n" -eq 1 ] && ports+=("$SLURMD_PORT")  # several nodes: each slurmd listens in its own namespace
    for port in "${ports[@]}"; do
      if port_busy "$port"; then
        log "port $port is in use by another program; stop it first (this script starts only its own daemons)"
        exit 1
      fi
    done
    write_config "$n"
    echo "$n" > "$NODES_FILE"
    chown munge:munge "$DIR/munge" && chmod 755 "$DIR/munge"
    if ! running "$DIR/munged.pid"; then
      runuser -u munge -- /usr/sbin/munged --socket="$MUNGE_SOCKET" --pid-file="$DIR/munge/munged.pid" \
        --log-file="$DIR/munge/munged.log" --seed-file="$DIR/munge/munged.seed" --key-file=/etc/munge/munge.key
      for _ in $(seq 50); do [ -f "$DIR/munge/munged.pid" ] && break; sleep 0.1; done
      cp "$DIR/munge/munged.pid" "$DIR/munged.pid"
    fi
    if [ "$n" -gt 1 ]; then
      remove_network "$n"  # left over by a killed run of this script
      make_network "$n"
    fi
    /usr/sbin/slurmctld -f "$CONF" -i
    if [ "$n" -eq 1 ]; then
      mkdir -p "$DIR/spool/$NODE"
      /usr/sbin/slurmd -f "$CONF" -N "$NODE"
    else
      for i in $(seq "$n"); do mkdir -p "$DIR/spool/$(node_name "$i")"; start_node "$i"; done
    fi
  fi
  wait_idle
}

stop_pid() {  # $1: pid file
  local pid
  pid=$(cat "$1" 2>/dev/null || true)  # read once: the daemon removes the file as it exits
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$1"
}

stop() {
  local n f
  n=$(cat "$NODES_FILE" 2>/dev/null || echo 1)
  for f in "$DIR"/slurmd*.pid "$DIR/slurmctld.pid" "$DIR/munged.pid"; do
    [ -e "$f" ] && stop_pid "$f"
  done
  [ "$n" -gt 1 ] && remove_network "$n"
  [ -f "$MARK" ] && rm -rf "$DIR"
  log "stopped"
}

usage() { echo "usage: $0 start [--nodes N] | stop | status | env" >&2; exit 2; }

COMMAND=${1:-}
NODES=1
if [ "$COMMAND" = start ] && [ "${2:-}" = "--nodes" ]; then
  NODES=${3:-}
  [[ "$NODES" =~ ^[1-9][0-9]*$ ]] || { echo "$0: --nodes: expected a positive integer, got '$NODES'" >&2; exit 2; }
  [ $# -eq 3 ] || usage
elif [ $# -gt 1 ]; then
  usage
fi
case "$COMMAND" in
  start) start "$NODES" ;;
  stop) stop ;;
  status) SLURM_CONF="$CONF" sinfo -N ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  *) usage ;;
esac
