#!/usr/bin/env bash
# Submits a videop2r command as a Ray job to a running cluster (a local `ray start --head`, or a KubeRay head).
#   RAY_ADDRESS=http://HEAD:8265 deploy/submit.sh train --config configs/demo.yaml rollout.num_workers=2
#   deploy/submit.sh --no-wait -- train ...     (options before `--` go to `ray job submit`)
# The repository is shipped as the job's working directory (the packages sit at its top level, so they import
# from there); virtual environments, run outputs and caches stay behind. The cluster's nodes need the Python
# environment `make setup` (or `make setup-gpu`) builds.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${RAY_ADDRESS:=http://127.0.0.1:8265}"
# Ray 2.60 clusters started here enable token auth with ~/.ray/auth_token; the job client must be told to send it.
if [ -z "${RAY_AUTH_MODE:-}" ] && { [ -n "${RAY_AUTH_TOKEN:-}" ] || [ -f "$HOME/.ray/auth_token" ]; }; then
  export RAY_AUTH_MODE=token
fi
RAY="${RAY:-.venv/bin/ray}"
submit_opts=()
if [[ " $* " == *" -- "* ]]; then
  while [ "$1" != "--" ]; do submit_opts+=("$1"); shift; done
  shift
fi
exec "$RAY" job submit --address "$RAY_ADDRESS" --working-dir . "${submit_opts[@]}" \
  --runtime-env-json '{"excludes": [".venv", "runs", ".git", "*.egg-info", "__pycache__", ".pytest_cache"],
    "env_vars": {"VLLM_LOGGING_LEVEL": "ERROR", "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false",
                 "PYTHONWARNINGS": "ignore", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}}' \
  -- python -m cluster.cli "$@"
