#!/usr/bin/env bash
# A single-node Ray cluster on this machine, started from the project's environment so that jobs' `python` is
# .venv's, for `deploy/submit.sh`:
#   deploy/local-head.sh start [DASHBOARD_PORT] [-- MORE `ray start` OPTIONS]   (prints RAY_ADDRESS=...)
#   deploy/local-head.sh stop      stops the jobs running on the head this script started, then that head, and
#                                  nothing else (not `ray stop`, which stops every Ray process of yours on the
#                                  machine, test clusters and notebooks included)
#   deploy/local-head.sh status
# State (the head's process group and log) lives in $VIDEOP2R_HEAD_DIR (default ~/.cache/videop2r/local-head).
# Environment: RAY_GCS_PORT (6380), RAY_NUM_CPUS (4). Ray's metrics: deploy/monitoring/prometheus.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
state="${VIDEOP2R_HEAD_DIR:-$HOME/.cache/videop2r/local-head}"
pgid_file="$state/head.pgid"

# a process of the group is alive (a zombie, dead but not yet reaped by its parent, does not count)
alive() { ps -eo pgid=,stat= | awk -v g="$1" '$1 == g && $2 !~ /^Z/ {found = 1} END {exit !found}'; }
running() { [ -f "$pgid_file" ] && alive "$(cat "$pgid_file")"; }

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
    # a dead rollout worker's vLLM engine processes are killed with it (each worker has its own process group)
    export RAY_process_group_cleanup_enabled=true
    # token authentication, always: Ray 2.60 turns it on only where a token already exists, so a first head would
    # serve its job API (arbitrary code with the job's secrets) to anyone who reaches the port. The token is
    # Ray's default file (~/.ray/auth_token, owner-only), which deploy/submit.sh and `ray job` clients send.
    if [ -z "${RAY_AUTH_TOKEN:-}" ] && [ ! -s "$HOME/.ray/auth_token" ]; then
      mkdir -p "$HOME/.ray"
      (umask 077 && python -c "import secrets; print(secrets.token_hex(32))" >"$HOME/.ray/auth_token")
      echo "made a Ray auth token: $HOME/.ray/auth_token" >&2
    fi
    export RAY_AUTH_MODE=token
    # its own process group (setsid), so that stop can end exactly this head and the processes it started
    setsid ray start --head --block --disable-usage-stats --dashboard-host=127.0.0.1 --dashboard-port="$port" \
      --port="${RAY_GCS_PORT:-6380}" --num-cpus="${RAY_NUM_CPUS:-4}" "$@" >"$state/head.log" 2>&1 &
    echo $! >"$pgid_file"
    echo "$port" >"$state/head.port"
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
    # its jobs first, as `ray job stop` does (SIGTERM: a train run checkpoints): a job's driver runs in a process
    # group of its own, which the head's shutdown would kill without letting it clean up (its Redis, its workers)
    if [ -f "$state/head.port" ]; then
      if [ -z "${RAY_AUTH_MODE:-}" ] && { [ -n "${RAY_AUTH_TOKEN:-}" ] || [ -f "$HOME/.ray/auth_token" ]; }; then
        export RAY_AUTH_MODE=token
      fi
      python - "http://127.0.0.1:$(cat "$state/head.port")" <<'PYEOF' || true
import sys, time
from ray.job_submission import JobSubmissionClient
client = JobSubmissionClient(sys.argv[1])
live = [j.submission_id for j in client.list_jobs() if j.submission_id and not j.status.is_terminal()]
for job in live:
    client.stop_job(job)
deadline = time.monotonic() + 120
while live and time.monotonic() < deadline:
    live = [j for j in live if not client.get_job_status(j).is_terminal()]
    time.sleep(1)
if live:
    print(f"jobs still running after 120 s, stopped with the head: {', '.join(live)}", file=sys.stderr)
PYEOF
    fi
    kill -TERM -- "-$pgid" 2>/dev/null || true
    for _ in $(seq 30); do alive "$pgid" || break; sleep 1; done
    kill -KILL -- "-$pgid" 2>/dev/null || true
    for _ in $(seq 20); do alive "$pgid" || break; sleep 0.5; done
    rm -f "$pgid_file" "$state/head.port"
    echo "stopped the Ray head (process group $pgid)"
    ;;
  status) if running; then echo "running (process group $(cat "$pgid_file"))"; else echo "not running"; fi ;;
  *) echo "usage: $0 start [DASHBOARD_PORT] [-- RAY_START_OPTIONS] | stop | status" >&2; exit 2 ;;
esac
