#!/usr/bin/env bash
# Several hosts on this machine (network, mount and PID namespaces; needs root), with a Ray cluster across them:
#   scripts/multihost.sh up                 hosts head, learn0, learn1, roll0, reward0, roll1 and Ray on them
#   scripts/multihost.sh run --host head -- deploy/submit.sh --out-root /var/tmp/videop2r-hosts/shared/runs -- train ...
#   scripts/multihost.sh status | down      (down ends only what `up` started, also after a killed run)
# Options: --state DIR (default /var/tmp/videop2r-hosts; its shared/ is the cluster's shared volume), --subnet.
# docs/multihost.md.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m toy.multihost_cli "$@"
