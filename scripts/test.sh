#!/usr/bin/env bash
# Runs the test suite with the project's environment (set up by scripts/setup.sh). Extra arguments go to pytest.
# Two pytest-xdist workers (VIDEOP2R_TEST_WORKERS; `-n 0` runs in one process), each taking whole test files: a
# third of a single process's wall time is one core idle (imports, engine and Ray start-ups are single-threaded).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest -n "${VIDEOP2R_TEST_WORKERS:-2}" --dist loadfile "$@"
