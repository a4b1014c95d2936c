#!/usr/bin/env bash
# Instructions per call through the sans-I/O core (bench/core.py) under callgrind:
#
#     (I(N=1500 calls) - I(N=300 calls)) / 1200
#
# so interpreter start-up, imports and the core's set-up cancel out. Instruction counts do
# not depend on the machine's load, unlike calls/s on this shared box; PYTHONHASHSEED is
# fixed so two runs of the same build agree to a few instructions per call.
#
#   bench/instructions.sh                          # the venv's sipedge (editable: pure Python)
#   PYTHONPATH=build/compiled-core/site bench/instructions.sh   # the wheel `make unit-compiled` built
#
# Prints `core=<mypyc|python> instructions_per_call=<n>` (a few minutes: callgrind runs
# Python ~50x slower). Extra arguments go to bench/core.py (e.g. --sdp).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
LOW=${LOW:-300}
HIGH=${HIGH:-1500}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

instructions() {  # $1 = calls; the total Ir of one bench run
    PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file="$out/cg.$1" \
        "$PY" bench/core.py --calls "$1" --repeats 1 "${@:2}" >"$out/stdout.$1" 2>"$out/log.$1"
    sed -n 's/.*Collected : \([0-9]*\).*/\1/p' "$out/log.$1"
}

core=$("$PY" -P -c 'import sipedge; print(sipedge.core_build().kind)' 2>/dev/null || echo unknown)
low=$(instructions "$LOW" "$@")
high=$(instructions "$HIGH" "$@")
echo "core=$core instructions_per_call=$(( (high - low) / (HIGH - LOW) ))" \
     "(I($HIGH)=$high I($LOW)=$low)"
