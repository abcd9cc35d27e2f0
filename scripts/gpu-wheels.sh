#!/usr/bin/env bash
# Puts into .gpu-wheels/ (git-ignored) every wheel that `python -m benchmarks gpu` needs and a borrowed GPU machine
# lacks; scripts/gpu-check.sh installs them there without a network. Run it here, on the CPU box, then carry the
# folder with the working tree (the device tool's `carry: [".gpu-wheels"]`).
#
#   scripts/gpu-wheels.sh            fetch / build what is missing (idempotent), print the folder's total size
#   scripts/gpu-wheels.sh --force    start from an empty folder
#   scripts/gpu-wheels.sh --list     print the packages (name==version, module, install rule) and stop
#
# The GPU machines have Python 3.12, torch 2.11 (CUDA 13), transformers 5.17, numpy, pyarrow, prometheus-client and
# pytest; no vLLM, Ray, DeepSpeed or pydantic (../shared/ENVIRONMENT.md). What the check imports beyond that:
#   - DeepSpeed (a source package: built here into a py3-none-any wheel, no ops compiled) and its Requires-Dist:
#     einops hjson msgpack ninja numpy packaging psutil py-cpuinfo pydantic torch tqdm (not nvidia-ml-py: its CUDA
#     accelerator uses pynvml only when present);
#   - pydantic and pydantic-core (cp312 manylinux), annotated-types, typing-inspection, typing-extensions;
#   - tenacity and PyYAML (cluster.config, which the learner's LearnerSection comes from);
#   - torchvision and Pillow: transformers' Qwen2.5-VL video processor will not load without them. torchvision
#     0.26.0 is the build for torch 2.11 (its PyPI wheel is +cu130); installed only where the machine has none.
#   - transformers and regex (its pin: regex>=2025.10.22): the version the CPU tests run, where the machine's is older
#     (5.17 there); its other needs (huggingface-hub>=1.31, tokenizers 0.23, safetensors 0.8) the machine has.
# Not carried, because the check never imports them: vLLM, Ray, decord (the check's frames are synthetic arrays),
# OpenCV, jiwer and rouge-score (rewards.accuracy imports them inside the functions that use them).
# Versions are this virtualenv's (what the CPU tests run), except torchvision's, which must match the GPU's torch.
set -euo pipefail
cd "$(dirname "$0")/.."

DIR=.gpu-wheels
PY=.venv/bin/python
FORCE=0
LIST=0
for arg in "$@"; do
  case "$arg" in
    --force) FORCE=1 ;;
    --list) LIST=1 ;;
    -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu-wheels: unknown argument $arg (--force, --list)" >&2; exit 2 ;;
  esac
done
[ -x "$PY" ] || { echo "gpu-wheels: $PY missing: run 'make setup' first" >&2; exit 1; }

version() { "$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }

# distribution  module  rule (missing: install only when the machine cannot import the module; older: also when the
# machine's copy is older than this one)
PACKAGES=(
  "deepspeed deepspeed older"
  "pydantic pydantic older"
  "pydantic-core pydantic_core older"
  "annotated-types annotated_types older"
  "typing-inspection typing_inspection older"
  "typing-extensions typing_extensions older"
  "hjson hjson older"
  "py-cpuinfo cpuinfo older"
  "msgpack msgpack older"
  "einops einops older"
  "ninja ninja missing"
  "psutil psutil missing"
  "packaging packaging missing"
  "tqdm tqdm missing"
  "tenacity tenacity older"
  "pyyaml yaml missing"
  "torchvision torchvision missing"
  "pillow PIL missing"
  "transformers transformers older"
  "regex regex older"
)
PINNED_torchvision=0.26.0

lines=()
for entry in "${PACKAGES[@]}"; do
  read -r dist module rule <<<"$entry"
  pin_var="PINNED_${dist//-/_}"
  ver=${!pin_var:-$(version "$dist")}
  lines+=("$dist $ver $module $rule")
done

if [ "$LIST" = 1 ]; then
  printf '%s\n' "${lines[@]}" | awk '{printf "%s==%s  module %s  install when %s\n", $1, $2, $3, $4}'
  exit 0
fi

[ "$FORCE" = 1 ] && rm -rf "$DIR"
mkdir -p "$DIR"
PIP() { "$PY" -m pip --disable-pip-version-check --quiet "$@" 2>&1 | { grep -v "is ignored: it is neither" || true; }; }
wheel_of() {  # the folder's wheel of this distribution and version (wheel names: '_' for '-', any case)
  local norm=${1//-/_}
  ls "$DIR" | grep -i "^${norm}-${2//./\\.}-.*\.whl$" | head -1 || true
}

for line in "${lines[@]}"; do
  read -r dist ver module rule <<<"$line"
  [ -n "$(wheel_of "$dist" "$ver")" ] && continue
  if [ "$dist" = deepspeed ]; then
    echo "[gpu-wheels] building deepspeed==$ver (no ops compiled)"
    # DS_BUILD_OPS=0: pure Python; DS_ACCELERATOR=cuda: the wheel records the CUDA op set (all JIT, none built).
    DS_BUILD_OPS=0 DS_ACCELERATOR=cuda PIP wheel --no-deps --no-build-isolation --no-cache-dir -w "$DIR" \
      "deepspeed==$ver"
  else
    echo "[gpu-wheels] $dist==$ver"
    PIP download --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux2014_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --no-deps -d "$DIR" "$dist==$ver"
  fi
  [ -n "$(wheel_of "$dist" "$ver")" ] || { echo "gpu-wheels: no wheel of $dist==$ver in $DIR after fetching it" >&2; exit 1; }
done
printf '%s\n' "${lines[@]}" > "$DIR/packages.txt"

# the folder holds exactly the listed wheels (an older version left by an earlier run would be installed too)
keep=()
for line in "${lines[@]}"; do
  read -r dist ver _ _ <<<"$line"
  keep+=("$(wheel_of "$dist" "$ver")")
done
for whl in "$DIR"/*.whl; do
  name=$(basename "$whl")
  printf '%s\n' "${keep[@]}" | grep -qxF "$name" || { echo "[gpu-wheels] removing $name (not listed)"; rm -f "$whl"; }
done
total=$(du -cb "$DIR"/*.whl | tail -1 | cut -f1)
echo "[gpu-wheels] $(ls "$DIR"/*.whl | wc -l) wheels in $DIR: $(awk -v b="$total" 'BEGIN{printf "%.1f MiB", b/1048576}') (the device tool carries at most 64 MiB with the working tree)"
