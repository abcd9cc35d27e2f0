#!/usr/bin/env bash
# The GPU check, as it runs on a borrowed GPU machine from the repository root (no network there):
#
#   scripts/gpu-check.sh OUT_DIR [options of `python -m benchmarks gpu`]
#
# installs the wheels that scripts/gpu-wheels.sh put into .gpu-wheels/ (carried with the working tree) into a
# temporary folder, only those whose module the machine lacks (or has in an older version, where the list says so),
# puts that folder on PYTHONPATH and runs `python -m benchmarks gpu --out OUT_DIR`, which prints the table and writes
# OUT_DIR/gpu-check.md, gpu-check.json and logs/. It downloads nothing. On this CPU box the same code runs as
# `python -m benchmarks gpu --device cpu` instead.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${1:?usage: scripts/gpu-check.sh OUT_DIR [options of python -m benchmarks gpu]}
shift
WHEELS=${GPU_WHEELS:-.gpu-wheels}  # the folder scripts/gpu-wheels.sh filled
LIST="$WHEELS/packages.txt"
if [ ! -f "$LIST" ]; then
  echo "gpu-check: $LIST missing: run scripts/gpu-wheels.sh on the CPU box and carry .gpu-wheels" >&2
  exit 2
fi
PY=${PYTHON:-}
if [ -z "$PY" ]; then  # the interpreter that has the machine's torch
  for candidate in python3 python; do
    if command -v "$candidate" >/dev/null && "$candidate" -c "import torch" 2>/dev/null; then PY=$candidate; break; fi
  done
fi
[ -n "$PY" ] || { echo "gpu-check: no python with torch on PATH (set PYTHON=...)" >&2; exit 2; }
SITE="${TMPDIR:-/tmp}/videop2r-gpu-site"
rm -rf "$SITE"
mkdir -p "$SITE" "$OUT"
"$PY" -c 'import sys, torch
print(f"[gpu-check] python {sys.version.split()[0]}, torch {torch.__version__}, cuda: {torch.cuda.is_available()}")'

# which carried distributions this machine needs
need=$("$PY" - "$LIST" <<'EOF'
import importlib.metadata as md
import importlib.util
import sys


def key(v):  # enough of PEP 440 for release versions: 2.14.4 < 2.15
    out = []
    for part in v.split("+")[0].split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return out


for line in open(sys.argv[1]):
    dist, ver, module, rule = line.split()
    if importlib.util.find_spec(module) is None:
        print(dist)
        continue
    if rule == "older":
        try:
            if key(md.version(dist)) < key(ver):
                print(dist)
        except md.PackageNotFoundError:
            print(dist)
EOF
)
if [ -n "$need" ]; then
  echo "[gpu-check] installing from $WHEELS: $(echo $need)"
  # shellcheck disable=SC2086
  if ! PIP_ROOT_USER_ACTION=ignore "$PY" -m pip install --quiet --disable-pip-version-check --no-index --no-deps --find-links "$WHEELS" \
      --target "$SITE" $need; then
    echo "[gpu-check] pip failed (or is missing): unpacking the wheels instead" >&2
    # shellcheck disable=SC2086
    "$PY" - "$WHEELS" "$SITE" $need <<'EOF'
import pathlib
import sys
import zipfile

wheels, site, dists = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
for dist in dists:
    norm = dist.replace("-", "_").lower()
    found = [w for w in wheels.glob("*.whl") if w.name.lower().startswith(norm + "-")]
    if not found:
        sys.exit(f"gpu-check: no wheel of {dist} in {wheels}")
    zipfile.ZipFile(found[0]).extractall(site)
EOF
  fi
else
  echo "[gpu-check] the machine has every package the check needs"
fi
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! versions=$("$PY" -c 'import deepspeed, pydantic, torchvision, transformers
from transformers import AutoProcessor
print(f"deepspeed {deepspeed.__version__}, pydantic {pydantic.VERSION}, torchvision {torchvision.__version__}, "
      f"transformers {transformers.__version__}")' 2>&1); then
  echo "$versions" | tail -20 >&2
  echo "gpu-check: the check's imports fail here (above); nothing was measured" >&2
  exit 3
fi
echo "[gpu-check] $(echo "$versions" | tail -1)"
exec "$PY" -m benchmarks gpu --out "$OUT" "$@"
