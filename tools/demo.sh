#!/usr/bin/env bash
# Set up (idempotent) and run the whole pipeline on the built-in offline default.
# Extra arguments are configuration overrides, e.g. stages.teacher.epochs=1
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
exec .venv/bin/crild run jobs/demo.yaml "$@"
