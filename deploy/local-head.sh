#!/usr/bin/env bash
# A single-node Ray cluster on this machine, started from the project's environment so that jobs' `python` is
# .venv's, for `deploy/submit.sh`:
#   deploy/local-head.sh start [DASHBOARD_PORT] [-- MORE `ray start` OPTIONS]   (prints RAY_ADDRESS=...)
#   deploy/local-head.sh stop      stops the head this script started, and only it (not `ray stop`, which stops
#                                  every Ray process of yours on the machine, test clusters and notebooks included)
#   deploy/local-head.sh status
# State (the head's process group and log) lives in $VIDEOP2R_HEAD_DIR (default ~/.cache/videop2r/local-head).
# Environment: RAY_GCS_PORT (6380), RAY_NUM_CPUS (4). Ray's metrics: deploy/monitoring/prometheus.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
state="${VIDEOP2R_HEAD_DIR:-$HOME/.cache/videop2r/local-head}"
pgid_file="$state/head.pgid"

running() { [ -f "$pgid_file" ] && kill -0 -- "-$(cat "$pgid_file")" 2>/dev/null; }

case "${1:-start}" in
  start)
    shift || true
    port=8265
    if [ $# -gt 0 ] && [ "$1" != "--" ]; then port="$1"; shift; fi
    [ "${1:-}" = "--" ] && shift
    mkdir -p "$state"
    if running; then
      echo "error: a head started by this script is running (process group $(cat "$pgid_file")); run '$0 stop' first" >&2
      exit 2
    fi
    # a dead rollout worker's vLLM engine processes are reaped instead of outliving it
    export RAY_kill_child_processes_on_worker_exit_with_raylet_subreaper=true
    # its own process group (setsid), so that stop can end exactly this head and the processes it started
    setsid ray start --head --block --disable-usage-stats --dashboard-host=127.0.0.1 --dashboard-port="$port" \
      --port="${RAY_GCS_PORT:-6380}" --num-cpus="${RAY_NUM_CPUS:-4}" "$@" >"$state/head.log" 2>&1 &
    echo $! >"$pgid_file"
    for _ in $(seq 120); do  # the job API answers once the dashboard is up
      # any HTTP answer (401 included, where token auth is on) means the dashboard is up
      if python -c "
import urllib.error, urllib.request
try:
    urllib.request.urlopen('http://127.0.0.1:$port/api/version', timeout=2)
except urllib.error.HTTPError:
    pass" 2>/dev/null; then
        echo "RAY_ADDRESS=http://127.0.0.1:$port"
        exit 0
      fi
      running || { echo "error: the Ray head exited; its log: $state/head.log" >&2; tail -5 "$state/head.log" >&2; exit 1; }
      sleep 1
    done
    echo "error: the Ray head did not answer on port $port within 120 s; its log: $state/head.log" >&2
    exit 1
    ;;
  stop)
    if ! running; then
      echo "no head started by this script is running (nothing stopped)"
      rm -f "$pgid_file"
      exit 0
    fi
    pgid="$(cat "$pgid_file")"
    kill -TERM -- "-$pgid" 2>/dev/null || true
    for _ in $(seq 30); do kill -0 -- "-$pgid" 2>/dev/null || break; sleep 1; done
    kill -KILL -- "-$pgid" 2>/dev/null || true
    for _ in $(seq 20); do kill -0 -- "-$pgid" 2>/dev/null || break; sleep 0.5; done
    rm -f "$pgid_file"
    echo "stopped the Ray head (process group $pgid)"
    ;;
  status) if running; then echo "running (process group $(cat "$pgid_file"))"; else echo "not running"; fi ;;
  *) echo "usage: $0 start [DASHBOARD_PORT] [-- RAY_START_OPTIONS] | stop | status" >&2; exit 2 ;;
esac
