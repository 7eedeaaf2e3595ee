#!/usr/bin/env bash
# Set up (idempotent), lint (ruff, configured in ruff.toml) and run the test suite.
# Extra arguments go to pytest, e.g. -m "not slow" for the quick loop, or -n 0 for one process.
#
#   CRILD_TEST_WORKERS  pytest-xdist workers (default: the CPU count, at most 4). A file's tests run
#                       on one worker, so one worker drives each local Slurm cluster (one per file).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
.venv/bin/ruff check --quiet .
cpus=$(nproc 2>/dev/null || echo 1)
workers=${CRILD_TEST_WORKERS:-$(( cpus < 4 ? cpus : 4 ))}
exec .venv/bin/python -m pytest tests -n "$workers" --dist loadfile "$@"
