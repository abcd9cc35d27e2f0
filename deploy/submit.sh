#!/usr/bin/env bash
# Submits a videop2r command as a Ray job to a running cluster (a local head from deploy/local-head.sh, or a
# KubeRay head):
#   RAY_ADDRESS=http://HEAD:8265 deploy/submit.sh --out-root /shared/runs -- train --config configs/demo.yaml
#   deploy/submit.sh --out-root /shared/runs --no-wait -- train ...   (other options before `--` go to `ray job submit`)
# Options of this script (before `--`):
#   --out-root DIR     where relative output folders (run.out_dir, eval.out_dir, cot.out_dir) go: storage the head
#                      node writes and you read. Without it a relative output folder is refused by the job, since
#                      the command runs in Ray's temporary copy of this repository and its outputs would vanish.
#   --env NAME         pass the submitting shell's variable NAME to the job (repeatable). These are passed when
#                      set: VIDEOP2R_JUDGE_API_KEY, VIDEOP2R_REDIS_URL, REDIS_PASSWORD, HF_TOKEN.
#   --max-upload-mb N  refuse to upload a working directory larger than this (default 100)
#   --secrets-dir DIR  a folder the head node reads (shared storage, or its own disk when you submit from it; the job
#                      must run as you): the variables above go into a file there that only you can read, and the
#                      job gets only its path (VIDEOP2R_SECRETS_FILE); its command reads it once and deletes it.
#                      Default for a head on this machine (a loopback RAY_ADDRESS): $TMPDIR or /tmp.
# Without a secrets folder the variables travel as the job's runtime_env variables, which Ray's job API shows to
# every token holder and its runtime-env agent logs on the head (a warning says so). Either way they never go into
# the command line that `ray job list` and the dashboard show: a secret-looking `key=value` there is refused.
# The working directory excludes .venv, runs, models, .git and weight files. Follow a job with
# `ray job logs --follow JOB_ID`, stop it with `ray job stop JOB_ID` (it checkpoints first); docs/training.md ("Launching with ray job submit").
set -euo pipefail
cd "$(dirname "$0")/.."
: "${RAY_ADDRESS:=http://127.0.0.1:8265}"
# Ray 2.60 clusters started here enable token auth with ~/.ray/auth_token; the job client must be told to send it.
if [ -z "${RAY_AUTH_MODE:-}" ] && { [ -n "${RAY_AUTH_TOKEN:-}" ] || [ -f "$HOME/.ray/auth_token" ]; }; then
  export RAY_AUTH_MODE=token
fi
local_head=0
[[ "$RAY_ADDRESS" =~ ^(https?://)?(127\.[0-9.]+|localhost|\[::1\])(:|/|$) ]] && local_head=1
if [ "${RAY_AUTH_MODE:-}" = token ] && [ "$local_head" = 0 ] && [[ "$RAY_ADDRESS" != https://* ]]; then
  # Ray's dashboard serves plain http: whoever watches that network reads the token (and with it runs jobs)
  echo "warning: the Ray token goes to $RAY_ADDRESS in clear; reach the head through a tunnel (kubectl port-forward, ssh -L: RAY_ADDRESS=http://127.0.0.1:8265) or an https proxy" >&2
fi
RAY="${RAY:-.venv/bin/ray}"
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
die() { echo "error: $*" >&2; exit 2; }

out_root="" secrets_dir="" max_mb=100 submit_opts=() env_names=(VIDEOP2R_JUDGE_API_KEY VIDEOP2R_REDIS_URL REDIS_PASSWORD HF_TOKEN)
if [[ " $* " == *" -- "* ]]; then
  while [ "$1" != "--" ]; do
    case "$1" in
      --out-root) out_root="$2"; shift 2 ;;
      --env) env_names+=("$2"); shift 2 ;;
      --secrets-dir) secrets_dir="$2"; shift 2 ;;
      --max-upload-mb) max_mb="$2"; shift 2 ;;
      *) submit_opts+=("$1"); shift ;;
    esac
  done
  shift
fi
[ $# -gt 0 ] || die "no videop2r command given (deploy/submit.sh [OPTIONS --] COMMAND ARGS...)"
if [ -n "$out_root" ]; then
  [[ "$out_root" = /* ]] || die "--out-root $out_root is relative; give an absolute path on storage the head node writes"
fi
if [ -z "$secrets_dir" ] && [ "$local_head" = 1 ]; then
  secrets_dir="${TMPDIR:-/tmp}"  # the head is on this machine: it reads this machine's folders
fi
if [ -n "$secrets_dir" ]; then
  [[ "$secrets_dir" = /* && -d "$secrets_dir" ]] || die "--secrets-dir $secrets_dir is not an absolute path to a folder; give one the head node reads"
fi
for arg in "$@"; do
  key="${arg%%=*}"; leaf="${key##*.}"
  [ "$key" = "$arg" ] && continue  # not key=value
  case "$leaf" in
    api_key|password|secret|token|*_api_key|*_password|*_secret|*_token) secret=1 ;;
    *) secret=0 ;;
  esac
  # a password in a URL's userinfo, or as a query value (redis://host/0?password=..., which redis-py honours)
  if [ "$secret" = 1 ] || [[ "$arg" =~ ://[^/@:]*:[^/]+@ ]] || [[ "${arg,,}" =~ [?\&](password|passwd|pass|pwd|secret|token|api_key|apikey|key|auth)= ]]; then
    die "'$key=...' would put a secret in the job's command line, which 'ray job list' shows; export it and pass its variable name (--env NAME, read by the config's *_env keys)"
  fi
done

excludes='[".venv", "runs", "models", ".git", "*.egg-info", "__pycache__", ".pytest_cache", "*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.gguf"]'
# the upload's size, counted with the same exclusions (and, as Ray does, without what .gitignore ignores)
"$PY" - "$max_mb" "$excludes" <<'PYEOF' || exit 2
import fnmatch, json, os, subprocess, sys
limit, excludes = float(sys.argv[1]), json.loads(sys.argv[2])
try:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], capture_output=True, check=True,
                           text=True).stdout.split("\0")
except (OSError, subprocess.CalledProcessError):
    files = [os.path.relpath(os.path.join(d, f)) for d, _, fs in os.walk(".") for f in fs]
sizes = []
for f in filter(None, files):
    if any(fnmatch.fnmatch(part, pat) for part in f.split(os.sep) for pat in excludes) or not os.path.isfile(f):
        continue
    sizes.append((os.path.getsize(f), f))
total = sum(s for s, _ in sizes) / 2**20
if total > limit:
    big = ", ".join(f"{f} ({s / 2**20:.1f} MiB)" for s, f in sorted(sizes, reverse=True)[:5])
    print(f"error: the job's working directory would upload {total:.1f} MiB, over --max-upload-mb {limit:g}; "
          f"largest: {big}. Move data and models out of the repository (pass their paths instead)", file=sys.stderr)
    sys.exit(2)
PYEOF

umask 077
renv="$(mktemp /tmp/videop2r-runtime-env.XXXXXX.json)"
trap 'rm -f "$renv"' EXIT
"$PY" - "$renv" "$excludes" "$out_root" "$secrets_dir" "${env_names[@]}" <<'PYEOF' || exit 2
import json, os, sys, tempfile
path, excludes, out_root, secrets_dir, names = sys.argv[1], json.loads(sys.argv[2]), *sys.argv[3:5], sys.argv[5:]
env = {"VLLM_LOGGING_LEVEL": "ERROR", "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false",
       "PYTHONWARNINGS": "ignore", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TORCH_CPP_LOG_LEVEL": "ERROR",
       "TORCH_LOGS": "-all"}
secrets = {n: os.environ[n] for n in names if os.environ.get(n)}
if secrets and secrets_dir:  # a file only this user reads (umask 077); the job reads it once and deletes it
    fd, spath = tempfile.mkstemp(prefix="videop2r-secrets.", suffix=".json", dir=secrets_dir)
    with os.fdopen(fd, "w") as f:
        json.dump(secrets, f)
    env["VIDEOP2R_SECRETS_FILE"] = spath
    print(f"[submit] {', '.join(sorted(secrets))} passed in {spath} (read once by the job)", file=sys.stderr)
elif secrets:
    env.update(secrets)
    print(f"warning: {', '.join(sorted(secrets))} travel in the job's runtime environment, which Ray's job API shows "
          "to every token holder and its agent logs on the head; --secrets-dir DIR (a folder the head reads) "
          "keeps them out", file=sys.stderr)
if out_root:
    env["VIDEOP2R_OUT_ROOT"] = out_root
with open(path, "w") as f:
    json.dump({"working_dir": ".", "excludes": excludes, "env_vars": env}, f)
PYEOF
"$RAY" job submit --address "$RAY_ADDRESS" --runtime-env "$renv" "${submit_opts[@]}" -- python -m commands.cli "$@"
