#!/usr/bin/env bash
# Sustained load on sipedge with a per-second timeline (issue 14: stalls, RSS, drops).
#
#   bench/sustained.sh [RATE] [SECONDS] [RUNS]      (default 1000 300 1)
#
# Starts the six SIPp gateways of ../shared/bench and sipedge on conf/lab.toml
# (127.0.0.1:5080, admin 127.0.0.1:9091), then for each run: bench/timeline.py samples
# /metrics and /proc/net/udp every second while ../shared/bench/cps.sh offers RATE calls/s
# for SECONDS. Each run prints cps.sh's summary line and the timeline's summary line;
# the per-second tables are in $OUT. Runs are back to back on one daemon (the third sees
# what the first two left behind), then 60 s with no load to see what RSS falls back to.
# Loopback only, bounded: RATE*SECONDS calls per run.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
BENCH=${SHARED:-$ROOT/../shared}/bench
RATE=${1:-1000} SECS=${2:-300} RUNS=${3:-1}
OUT=${OUT:-/tmp/sipedge-sustained-$(date +%Y%m%d-%H%M%S)}
PY=$ROOT/.venv/bin/python
mkdir -p "$OUT"

bash "$BENCH/install.sh" >/dev/null
"$BENCH/uas.sh" start all >/dev/null
# SIPEDGE_CMD: another build to run (e.g. "env PYTHONPATH=/path/to/old/tree .venv/bin/python
# -m sipedge"), for a before/after comparison in the same sitting.
# WORKERS=N: conf/lab.toml with [process] workers = N (the supervisor and N workers; their
# own ports, 5080/5060 + 100 x (i + 1), are sampled too).
CONFIG=${CONFIG:-$ROOT/conf/lab.toml}
SOCKETS="--socket 127.0.0.1:5080 --socket 127.0.0.3:5060"
if [ -n "${WORKERS:-}" ]; then
    { cat "$CONFIG"; printf '\n[process]\nworkers = %s\n' "$WORKERS"; } >"$OUT/sipedge.toml"
    CONFIG=$OUT/sipedge.toml
    for i in $(seq 1 "$WORKERS"); do
        SOCKETS="$SOCKETS --socket 127.0.0.1:$((5080 + 100 * i)) --socket 127.0.0.3:$((5060 + 100 * i))"
    done
fi
memory() {
    # RSS counts a page shared by the supervisor and its workers once per process; PSS
    # splits it among them, so its sum is what all of sipedge's processes hold together.
    local pids rss=0 pss=0 kb
    pids="$PID $(pgrep -P "$PID" | tr '\n' ' ')"
    for p in $pids; do
        kb=$(awk '/^Rss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null) && rss=$((rss + ${kb:-0}))
        kb=$(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null) && pss=$((pss + ${kb:-0}))
    done
    echo "$1 processes=$(echo $pids | wc -w) rss_mb_sum=$((rss / 1024)) pss_mb_sum=$((pss / 1024))"
}
${SIPEDGE_CMD:-"$ROOT/.venv/bin/sipedge"} run --config "$CONFIG" \
    --log-level warning >"$OUT/sipedge.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; "$BENCH/uas.sh" stop all >/dev/null' EXIT
sleep 4  # probes mark the gateways UP
memory "start memory:"
timeline() {
    # shellcheck disable=SC2086
    "$PY" "$HERE/timeline.py" --admin 127.0.0.1:9091 $SOCKETS "$@"
}
for run in $(seq 1 "$RUNS"); do
    # shellcheck disable=SC2086
    "$PY" "$HERE/timeline.py" --admin 127.0.0.1:9091 $SOCKETS >"$OUT/timeline-$run.txt" 2>&1 &
    TL=$!  # the python itself (not a function's subshell): a background job ignores SIGINT, so stop it with TERM
    WATCH_PIDS="$PID" OUT_DIR="$OUT/cps-$run" "$BENCH/cps.sh" 127.0.0.1:5080 "$RATE" "$SECS" \
        | tail -2 | sed "s/^/run $run /"
    kill -TERM $TL; wait $TL
    tail -1 "$OUT/timeline-$run.txt" | sed "s/^/run $run /"
    memory "run $run memory:"
done
timeline --seconds "${IDLE_S:-60}" >"$OUT/timeline-idle.txt" 2>&1
tail -1 "$OUT/timeline-idle.txt" | sed "s/^/idle ${IDLE_S:-60} s /"
memory "idle memory:"
echo "raw output: $OUT"
