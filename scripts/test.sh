#!/usr/bin/env bash
# Runs the test suite with the project's environment (set up by scripts/setup.sh). Extra arguments go to pytest.
#
# Two phases (VIDEOP2R_TEST_WORKERS, default 2): first the tests marked `alone` in one process, by themselves (the
# 3B-width slices need about 16 GB of the box's 24; the multi-host run starts five Ray nodes in namespaces and its
# waits are timed), then every other test on that many pytest-xdist workers that take whole files (--dist loadfile:
# a file's module fixtures are made once). One process leaves a core about a third idle (imports, engine and Ray
# start-ups are single-threaded). VIDEOP2R_TEST_WORKERS=0 runs everything in one process, in name order.
# Measured on the 2-core, 24 GB box (2026-11-28, two runs): 650 s + 1190 s = 31 min and 545 s + 1138 s = 28 min,
# all passed, against 46-55 min in one process on the same day; at least 7.5 GB stayed available in the first phase
# and 5.7 GB in the second.
# With the phases, a `-m` of your own would replace a phase's marker: use VIDEOP2R_TEST_WORKERS=0 for that.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
workers="${VIDEOP2R_TEST_WORKERS:-2}"
pytest=(.venv/bin/python -m pytest)
if [[ "$workers" == 0 ]]; then
    exec "${pytest[@]}" -n 0 "$@"
fi

log="$(mktemp "${TMPDIR:-/tmp}/videop2r-tests.XXXXXX")"
trap 'rm -f "$log"' EXIT
start=$SECONDS
echo "== phase 1 of 2: the tests marked 'alone', in one process"
"${pytest[@]}" -n 0 -m alone "$@" 2>&1 | tee "$log"
alone=${PIPESTATUS[0]}
alone_s=$((SECONDS - start))
summary_alone="$(grep -a -E '^(FAILED|ERROR) ' "$log")"
# pytest's 2 is "interrupted" (Ctrl-C), 4 "usage error": the second phase would only repeat them
if [[ "$alone" == 2 || "$alone" == 4 ]]; then exit "$alone"; fi
echo "== phase 2 of 2: the other tests on $workers workers"
"${pytest[@]}" -n "$workers" --dist loadfile -m "not alone" "$@"
rest=$?
rest_s=$((SECONDS - start - alone_s))
# pytest's 5 is "no test collected": a phase that the arguments select nothing from is no failure
ok() { [[ "$1" == 0 || "$1" == 5 ]]; }
echo "== phase 1 (alone): exit $alone in ${alone_s} s; phase 2 ($workers workers): exit $rest in ${rest_s} s;" \
    "$((SECONDS - start)) s in all"
if ! ok "$alone"; then
    echo "phase 1's failures (above phase 2's output):"
    echo "${summary_alone:-  (none listed: see the output of phase 1)}"
    exit "$alone"
fi
if [[ "$alone" == 5 && "$rest" == 5 ]]; then exit 5; fi
ok "$rest" && exit 0 || exit "$rest"
