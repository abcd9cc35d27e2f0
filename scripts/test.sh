#!/usr/bin/env bash
# Runs the test suite with the project's environment (set up by scripts/setup.sh). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
# DeepSpeed JIT-builds a CPU comm op; build it per environment, so that a build lock left by a killed process in
# the shared ~/.cache cannot stall this checkout's runs
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$PWD/.venv/torch_extensions}"
exec .venv/bin/python -m pytest "$@"
