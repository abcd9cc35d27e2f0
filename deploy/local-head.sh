#!/usr/bin/env bash
# A single-node Ray cluster on this machine, started from the project's environment so that jobs' `python` is
# .venv's.  deploy/local-head.sh start [DASHBOARD_PORT]  |  deploy/local-head.sh stop
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
case "${1:-start}" in
  start)
    port="${2:-8265}"
    # a dead rollout worker's vLLM engine processes are reaped instead of outliving it
    export RAY_kill_child_processes_on_worker_exit_with_raylet_subreaper=true
    ray start --head --disable-usage-stats --dashboard-host=127.0.0.1 --dashboard-port="$port" \
      --port="${RAY_GCS_PORT:-6380}" --num-cpus="${RAY_NUM_CPUS:-4}" >/dev/null
    echo "RAY_ADDRESS=http://127.0.0.1:$port"
    ;;
  stop) ray stop --force >/dev/null ;;  # note: stops every Ray process of this user on the machine
  *) echo "usage: $0 start [DASHBOARD_PORT] | stop" >&2; exit 2 ;;
esac
