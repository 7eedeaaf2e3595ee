#!/usr/bin/env bash
# The whole GPU check in one command, for a CUDA machine without a network.
#
#   bash tools/gpu_check.sh --prepare [BUNDLE]        on a machine with the package registry (this one):
#        a folder (default gpu_bundle/, git-ignored) with what the GPU machine lacks, as wheels for
#        Python 3.12 manylinux x86_64 (DeepSpeed built with no precompiled ops: its CUDA ops compile
#        on first use there; datasets, pydantic, textbrewer, ...; crild itself), a bf16 safetensors
#        copy of the offline teacher and the prepared Rotten Tomatoes data; at most 60 MiB (checked).
#   bash tools/gpu_check.sh --run BUNDLE OUT            on the GPU machine: installs from BUNDLE into a
#        scratch target folder, then with timeouts (all of it within 8 minutes on one H200):
#          1. the GPU tests (tests/gpu, marker gpu): bf16 engine steps at ZeRO 0/2/3, FusedAdam and
#             torch's fused AdamW, captures under each CUDA SDPA kernel, the CR-ILD loss on GPU against
#             CPU, the teacher-logit cache, exact resume;
#          2. a short real pipeline through the deepspeed launcher, bf16 ZeRO-2: teacher, CR-ILD,
#             evaluation, export (jobs/gpu_check.yaml, the bf16 teacher);
#          3. tools/bench_distill.py at BERT-base shapes (12-layer teacher, 6-layer student, hidden 768,
#             length 128) at batches 32 and 256, and tools/bench_memory.py per ZeRO stage.
#        OUT gets 6 files, 2 under the device tool's limit of 8: summary.json, the pytest report, the
#        benchmark JSONs and logs.tar.gz (every step's log, the profiles, the pipeline's latency table),
#        so a benchmark's JSON.tmp left by a run stopped mid-write does not push a result out.
#   bash tools/gpu_check.sh --dry-run [--with-model]    the CPU side anywhere: prepares a bundle (without
#        the model copy unless asked), checks its size, and runs the GPU tests that can run on a CPU.
#   bash tools/gpu_check.sh --rehearse OUT              all of --run on this machine's CPU, with this venv's
#        Python, small benchmark shapes and twice the step limits (about 10 minutes on 2 cores): proves
#        the script itself before GPU time is spent on it (the first GPU run lost its memory benchmark
#        to a launcher the CPU never ran). It runs with the GPU machine's transformers and
#        huggingface_hub (GPU_MACHINE_PINS, from the package registry) in place of this venv's, so
#        crild is proven on the versions it will meet there.
#
# The device tool runs --run with the bundle carried beside the working tree:
#   run(command="bash tools/gpu_check.sh --run gpu_bundle $OUT", carry=["gpu_bundle"], timeout_s=540)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
LIMIT_MIB=60
CARRY_MIB=64  # what the device tool carries to the GPU machine: the working tree and the bundle
# what the GPU machine lacks (see ../shared/docs/environment.md), pinned to this venv's versions
WHEELS=(datasets dill multiprocess hjson pydantic pydantic_core annotated_types typing_inspection msgpack py-cpuinfo
        einops xxhash fsspec)
BUILT=(textbrewer)  # published as source only: built here into a pure-Python wheel
# the GPU machine's own versions where they differ from this venv's (../shared/docs/environment.md)
GPU_MACHINE_PINS=("transformers==5.17.0" "huggingface_hub>=1.5,<2")  # the second with its dependencies (httpx)

prepare() {  # prepare BUNDLE WITH_MODEL
  local bundle=$1 with_model=$2 py=.venv/bin/python
  [ -x "$py" ] || bash tools/setup.sh >/dev/null
  rm -rf "$bundle" && mkdir -p "$bundle/wheels" "$bundle/data"
  local specs built
  specs=$("$py" -c "import importlib.metadata as m, sys; print(' '.join(f'{n}=={m.version(n)}' for n in sys.argv[1:]))" \
          "${WHEELS[@]}")
  built=$("$py" -c "import importlib.metadata as m, sys; print(' '.join(f'{n}=={m.version(n)}' for n in sys.argv[1:]))" \
          "${BUILT[@]}")
  # shellcheck disable=SC2086
  "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d "$bundle/wheels" $specs 2>&1 | grep -v "is ignored" || true
  # shellcheck disable=SC2086
  "$py" -m pip wheel -q --no-deps --no-build-isolation -w "$bundle/wheels" $built 2>&1 | grep -v "is ignored" || true
  local ds_version
  ds_version=$("$py" -c "import importlib.metadata as m; print(m.version('deepspeed'))")
  DS_BUILD_OPS=0 "$py" -m pip wheel -q --no-deps --no-build-isolation --no-cache-dir -w "$bundle/wheels" \
      "deepspeed==$ds_version" 2>&1 | grep -v "is ignored" || true
  "$py" -m pip wheel -q --no-deps --no-build-isolation -w "$bundle/wheels" . 2>&1 | grep -v "is ignored" || true
  "$py" -m pipeline.cli prepare-data >/dev/null
  cp -r "${CRILD_HOME:-$HOME/.cache/crild}/data/rotten_tomatoes" "$bundle/data/"
  if [ "$with_model" = 1 ]; then
    "$py" - "$bundle/teacher-bf16" <<'PY'
import sys
import torch
from transformers import AutoModel, AutoTokenizer
from pipeline.models.loading import quiet_libraries, resolve_model
quiet_libraries()
src = resolve_model("all-MiniLM-L6-v2", "teacher")
AutoModel.from_pretrained(src, dtype=torch.bfloat16).save_pretrained(sys.argv[1])
AutoTokenizer.from_pretrained(src).save_pretrained(sys.argv[1])
PY
  fi
  local wheels=$(( ${#WHEELS[@]} + ${#BUILT[@]} + 2 ))  # + deepspeed + crild
  [ "$(ls "$bundle"/wheels/*.whl | wc -l)" -ge "$wheels" ] || { echo "gpu_check: missing wheels" >&2; exit 1; }
  local bytes
  bytes=$(du -sb "$bundle" | cut -f1)
  echo "gpu_check: bundle $bundle: $(ls "$bundle"/wheels | wc -l) wheels, $((bytes / 1048576)) MiB (limit $LIMIT_MIB)"
  [ "$bytes" -le $((LIMIT_MIB * 1048576)) ] || { echo "gpu_check: bundle over $LIMIT_MIB MiB" >&2; exit 1; }
  # the device tool carries the working tree (tracked and untracked, not ignored files) and the bundle: 64 MiB in all
  local tree
  tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
  echo "gpu_check: working tree $((tree / 1048576)) MiB, with the bundle $(((tree + bytes) / 1048576)) MiB" \
       "(limit $CARRY_MIB)"
  [ $((tree + bytes)) -le $((CARRY_MIB * 1048576)) ] || { echo "gpu_check: tree and bundle over $CARRY_MIB MiB" >&2
                                                           exit 1; }
}

timed() {  # timed NAME SECONDS LOG COMMAND...: run, record exit code and seconds in the summary
  # the limits are the GPU machine's; a rehearsal on this project's 2-core CPU gets twice as long
  local name=$1 limit=$(($2 * ${GPU_CHECK_SLOWER:-1})) log=$3; shift 3
  local start=$SECONDS code=0
  timeout "$limit" "$@" >"$log" 2>&1 || code=$?
  echo "{\"step\": \"$name\", \"exit\": $code, \"seconds\": $((SECONDS - start))}" >>"$WORK/steps.jsonl"
  echo "gpu_check: $name: exit $code in $((SECONDS - start)) s"
  summarise
}

summarise() {  # OUT's summary.json and logs.tar.gz as they stand, after every step: a run the device
  # tool's time limit stops still brings back the steps it finished, with their logs
  "$PY" - "$WORK/machine.json" "$WORK/steps.jsonl" "$WORK/summary.json" <<'PY'
import json, sys
machine, steps = json.load(open(sys.argv[1])), [json.loads(line) for line in open(sys.argv[2])]
with open(sys.argv[3], "w") as f:
    json.dump({"machine": machine, "steps": steps, "passed": all(s["exit"] == 0 for s in steps)}, f, indent=1)
PY
  tar -czf "$WORK.logs.tar.gz" -C "$WORK" --exclude site --exclude home --exclude run \
      --exclude torch_extensions . 2>/dev/null || true
  cp "$WORK/summary.json" "$OUT/summary.json" && cp "$WORK.logs.tar.gz" "$OUT/logs.tar.gz"
}

run() {  # run BUNDLE OUT; GPU_CHECK_PYTHON (default python3) and GPU_CHECK_SMALL=1 are for --rehearse
  local bundle py=${GPU_CHECK_PYTHON:-python3}
  bundle=$(cd "$1" && pwd); mkdir -p "$2"; OUT=$(cd "$2" && pwd); PY=$py
  WORK=$(mktemp -d /tmp/crild-gpu.XXXX)
  local out=$OUT
  local site=$WORK/site
  # --rehearse installs only the pure-Python wheels: the others are built for the GPU machine's Python 3.12
  "$py" -m pip install -q --no-index --no-deps --target "$site" "$bundle"/wheels/*${GPU_CHECK_WHEELS:-.whl}
  # the shapes the benchmarks run at: BERT-base (12-layer teacher, 6-layer student), or tiny ones
  local shapes=(--teacher-layers 12 --student-layers 6) steps=10 small=()
  if [ "${GPU_CHECK_SMALL:-0}" = 1 ]; then
    shapes=(--hidden 64 --heads 4 --teacher-layers 2 --student-layers 1) steps=2
    small=(task.few_sample=200 task.max_eval_examples=100)
  fi
  export PYTHONPATH="$site:${GPU_CHECK_PATH:+$GPU_CHECK_PATH:}$REPO" PATH="$site/bin:$PATH" CRILD_HOME="$WORK/home" OMP_NUM_THREADS=8
  # DeepSpeed's ops build under the work folder: a step stopped by its timeout mid-build leaves its lock
  # there, not in the user's cache, where every later build of that op would wait on it
  export TORCH_EXTENSIONS_DIR="$WORK/torch_extensions"
  mkdir -p "$CRILD_HOME/data" && cp -r "$bundle/data/rotten_tomatoes" "$CRILD_HOME/data/"
  { nvidia-smi; echo "TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST-unset}"; } >"$WORK/nvidia-smi.txt" 2>&1 || true
  "$py" - "$WORK/machine.json" <<'PY'
import json, platform, sys
from importlib import metadata
import torch
def version(name):  # read from the installed metadata: a library that fails to import still leaves a summary
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
json.dump({"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
           **{name: version(name) for name in ("transformers", "huggingface_hub", "datasets", "deepspeed")}},
          open(sys.argv[1], "w"))
PY
  : >"$WORK/steps.jsonl"
  timed gpu-tests 240 "$WORK/gpu-tests.log" "$py" -m pytest tests/gpu -q -p no:cacheprovider -rs \
      --junitxml "$out/pytest-gpu.xml"
  local teacher=$bundle/teacher-bf16 cfg=jobs/gpu_check.yaml
  local args=(--config "$cfg" "output_dir=$WORK/run" "teacher.model=$teacher" "student.backbone=$teacher"
              ${small[@]+"${small[@]}"})
  for stage in stage1_teacher stage3_distill stage4_evaluate; do
    timed "pipeline-$stage" 150 "$WORK/pipeline-$stage.log" "$py" -m deepspeed.launcher.runner --num_gpus 1 \
        "pipeline/$stage.py" "${args[@]}"
  done
  timed pipeline-stage5_export 120 "$WORK/pipeline-stage5_export.log" "$py" pipeline/stage5_export.py "${args[@]}"
  cp "$WORK/run/export/latency.md" "$WORK/latency.md" 2>/dev/null || true  # in logs.tar.gz
  for batch in 32 256; do
    timed "bench-distill-b$batch" 180 "$WORK/bench-distill-b$batch.log" "$py" tools/bench_distill.py \
        "${shapes[@]}" --batch-size "$batch" --steps "$steps" --tokenizer "$teacher" \
        --json "$out/bench_distill_b$batch.json" --profile "$WORK/profile_b$batch.txt"  # in logs.tar.gz
  done
  timed bench-memory 150 "$WORK/bench-memory.log" "$py" tools/bench_memory.py --ranks 1 --base "$teacher" \
      "${shapes[@]}" --json "$out/bench_memory.json"
  echo "gpu_check: results in $out"
}

usage_error() {  # one line on stderr and exit 2, as crild's own commands do
  echo "gpu_check.sh: error: $1; see tools/gpu_check.sh --help" >&2
  exit 2
}

given() {  # given N: "N argument(s)", for a mode's usage line
  if [ "$1" -eq 1 ]; then echo "1 argument"; else echo "$1 arguments"; fi
}

case "${1:-}" in
  --prepare) [ $# -le 2 ] || usage_error "--prepare takes one BUNDLE folder at most, got $(given $(($# - 1)))"
    prepare "${2:-gpu_bundle}" 1 ;;
  --run) [ $# -eq 3 ] || usage_error "--run takes BUNDLE OUT, got $(given $(($# - 1)))"
    [ -d "$2/wheels" ] || usage_error "--run: '$2' is not a bundle --prepare made (no wheels/ in it); run bash tools/gpu_check.sh --prepare $2 first"
    run "$2" "$3" ;;
  --dry-run)
    case "$#:${2:-}" in
      1:|2:--with-model) ;;
      *) usage_error "--dry-run takes --with-model at most, got '${*:2}'" ;;
    esac
    bundle=$(mktemp -d /tmp/crild-gpu-bundle.XXXX)
    prepare "$bundle" "$([ "${2:-}" = --with-model ] && echo 1 || echo 0)"
    .venv/bin/python -m pytest tests/gpu -q -p no:cacheprovider -rs
    rm -rf "$bundle" ;;
  --rehearse)
    [ $# -eq 2 ] || usage_error "--rehearse takes OUT, got $(given $(($# - 1)))"
    bundle=$(mktemp -d /tmp/crild-gpu-bundle.XXXX)
    prepare "$bundle" 1
    .venv/bin/python -m pip install -q --no-deps --target "$bundle/gpu-machine" "${GPU_MACHINE_PINS[0]}"
    .venv/bin/python -m pip install -q --target "$bundle/gpu-machine" "${GPU_MACHINE_PINS[1]}" 2>&1 \
        | grep -v "dependency conflicts\|requires\|already exists" || true
    GPU_CHECK_PYTHON=$(pwd)/.venv/bin/python GPU_CHECK_SMALL=1 GPU_CHECK_SLOWER=2 GPU_CHECK_WHEELS=-py3-none-any.whl \
        GPU_CHECK_PATH="$bundle/gpu-machine" run "$bundle" "$2"
    rm -rf "$bundle"
    python3 -c "import json, sys; s = json.load(open(sys.argv[1])); sys.exit(0 if s['passed'] else 1)" \
        "$2/summary.json" ;;
  -h|--help) sed -n '2,27p' "$0" ;;
  *) usage_error "expected --prepare [BUNDLE], --run BUNDLE OUT, --dry-run [--with-model] or --rehearse OUT, got '${1:-}'" ;;
esac
