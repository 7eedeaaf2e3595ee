#!/usr/bin/env bash
# A real single-node Slurm cluster on this machine (munged, slurmctld, slurmd), for tests,
# CI and trying the sbatch jobs on a laptop.
#
#   tools/local_slurm.sh start    install if needed (Debian: apt), start, wait for an idle node
#   tools/local_slurm.sh stop     stop only the daemons this script started
#   tools/local_slurm.sh status   print the node state
#   tools/local_slurm.sh env      print the export line clients need (SLURM_CONF)
#
# Everything lives under $CRILD_SLURM_DIR (default /tmp/crild-slurm): config, state, logs,
# munge socket and pid files. Idempotent: start on a running cluster only checks it.
# The node advertises $CRILD_SLURM_CPUS CPUs (default 4, more than a laptop may have: the
# config lets it) so that multi-task allocations can be tested on 2 cores.
set -euo pipefail

DIR=${CRILD_SLURM_DIR:-/tmp/crild-slurm}
CPUS=${CRILD_SLURM_CPUS:-4}
CONF="$DIR/slurm.conf"
NODE=crild-node
MUNGE_SOCKET="$DIR/munge/munge.socket.2"

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

write_config() {
  mkdir -p "$DIR"/{state,spool,log,munge}
  cat > "$CONF" <<EOF
ClusterName=crild
SlurmctldHost=$(hostname -s)(127.0.0.1)
MailProg=/bin/true
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=10
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/pgid
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
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
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=16000 State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
}

start() {
  install_packages
  export SLURM_CONF="$CONF"
  if running "$DIR/slurmctld.pid" && running "$DIR/slurmd.pid" && running "$DIR/munged.pid"; then
    log "already running ($CONF)"
  else
    for port in 6817 6818; do
      if port_busy "$port"; then
        log "port $port is in use by another program; stop it first (this script starts only its own daemons)"
        exit 1
      fi
    done
    write_config
    chown munge:munge "$DIR/munge" && chmod 755 "$DIR/munge"
    if ! running "$DIR/munged.pid"; then
      runuser -u munge -- /usr/sbin/munged --socket="$MUNGE_SOCKET" --pid-file="$DIR/munge/munged.pid" \
        --log-file="$DIR/munge/munged.log" --seed-file="$DIR/munge/munged.seed" --key-file=/etc/munge/munge.key
      for _ in $(seq 50); do [ -f "$DIR/munge/munged.pid" ] && break; sleep 0.1; done
      cp "$DIR/munge/munged.pid" "$DIR/munged.pid"
    fi
    /usr/sbin/slurmctld -f "$CONF" -i
    /usr/sbin/slurmd -f "$CONF" -N "$NODE"
  fi
  for _ in $(seq 120); do
    state=$(sinfo -h -N -o "%t" 2>/dev/null | head -n1 || true)
    case "$state" in
      idle|mix|alloc) log "node $NODE is $state; export SLURM_CONF=$CONF"; return 0 ;;
      down*|drain*) scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true ;;
    esac
    sleep 0.5
  done
  log "the node did not become idle; logs in $DIR/log"
  exit 1
}

stop() {
  for name in slurmd slurmctld munged; do
    pidfile="$DIR/$name.pid"
    pid=$(cat "$pidfile" 2>/dev/null || true)  # read once: the daemon removes the file as it exits
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
  done
  log "stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) SLURM_CONF="$CONF" sinfo -N ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
