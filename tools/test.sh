#!/usr/bin/env bash
# Set up (idempotent), lint (ruff, configured in ruff.toml) and run the test suite.
# Extra arguments go to pytest, e.g. -m "not slow" for the quick loop.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
.venv/bin/ruff check --quiet .
exec .venv/bin/python -m pytest tests "$@"
