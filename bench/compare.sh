#!/usr/bin/env bash
# sipedge against Kamailio 5.6, one after the other in the same sitting (issue 14's report).
#
#   bench/compare.sh            (about 25 min: two max_cps searches, two 30 s latency runs,
#                                5 min sustained on sipedge; SUSTAIN_S=0 skips that part)
#
# For each proxy: ../shared/bench/max_cps.sh (highest clean rate: <= 0.1 % failed, <= 1 %
# retransmitted, >= 95 % of the offered rate), then cps.sh at 1,000 calls/s for 30 s with
# TRACE_MSG=1 (exact INVITE→200 percentiles) and its CPU. Then sipedge alone for SUSTAIN_S
# (300) at 1,000 calls/s with bench/timeline.py, for its RSS, stalls, drops.
# Last lines:
#   sipedge_max_cps=N kamailio_max_cps=N ratio=R
#   at_1000cps sipedge_p50_ms= sipedge_p99_ms= sipedge_cpu_ms_per_call= kamailio_p50_ms= ...
#   sustained_1000cps_300s sipedge ok= failed= retrans= target_drops= p99_ms= rss_mb= lag_max_s= ...
# Loopback only; sipedge on conf/lab.toml (127.0.0.1:5080), Kamailio on 127.0.0.1:5070.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
BENCH=${SHARED:-$ROOT/../shared}/bench
OUT=${OUT:-/tmp/sipedge-compare-$(date +%Y%m%d-%H%M%S)}
SUSTAIN_S=${SUSTAIN_S:-300}
RATE=${RATE:-1000}
mkdir -p "$OUT"
kv() { echo "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }
# cpu_ms LINE RATE: CPU milliseconds per call from cps.sh's "cpu name[pid+n]=X%" line
# (every "=X%" entry summed: one per watched root).
cpu_ms() {
    echo "$1" | tr ' ' '\n' | sed -n 's/.*=\([0-9.]*\)%$/\1/p' \
        | awk -v r="$2" '{ t += $1 } END { printf "%.3f", t * 10 / r }'
}

bash "$BENCH/install.sh" >/dev/null
"$BENCH/uas.sh" start all >/dev/null
trap '"$BENCH/uas.sh" stop all >/dev/null; "$BENCH/run_kamailio.sh" stop >/dev/null 2>&1' EXIT

measure() {  # measure NAME TARGET PIDS
    local name=$1 target=$2 pids=$3 lat
    WATCH_PIDS="$pids" OUT_BASE="$OUT/max-$name" "$BENCH/max_cps.sh" "$target" >"$OUT/max-$name.txt"
    grep '^step' "$OUT/max-$name.txt" | sed "s/^/$name /" | cut -c1-160
    WATCH_PIDS="$pids" TRACE_MSG=1 OUT_DIR="$OUT/lat-$name" "$BENCH/cps.sh" "$target" "$RATE" 30 \
        >"$OUT/lat-$name.txt"
    lat=$(tail -1 "$OUT/lat-$name.txt")
    printf '%s_p50_ms=%s %s_p99_ms=%s %s_cpu_ms_per_call=%s %s_failed=%s ' \
        "$name" "$(kv "$lat" rt_p50_ms)" "$name" "$(kv "$lat" rt_p99_ms)" \
        "$name" "$(cpu_ms "$(grep '^cpu ' "$OUT/lat-$name.txt")" "$RATE")" \
        "$name" "$(kv "$lat" failed)" >>"$OUT/latency.txt"
}

# WORKERS=N runs sipedge with [process] workers = N (default: the config's, 1).
CONFIG=$ROOT/conf/lab.toml
if [ -n "${WORKERS:-}" ]; then
    { cat "$CONFIG"; printf '\n[process]\nworkers = %s\n' "$WORKERS"; } >"$OUT/sipedge.toml"
    CONFIG=$OUT/sipedge.toml
fi
# SIPEDGE_CMD: another build (e.g. the mypyc wheel of `make unit-compiled`, see sustained.sh).
${SIPEDGE_CMD:-"$ROOT/.venv/bin/sipedge"} run --config "$CONFIG" --log-level warning \
    >"$OUT/sipedge.log" 2>&1 &
SIPEDGE=$!
sleep 4
measure sipedge 127.0.0.1:5080 "$SIPEDGE"
kill "$SIPEDGE"; wait "$SIPEDGE" 2>/dev/null

"$BENCH/run_kamailio.sh" start >/dev/null
# Only the main process: cps.sh adds its descendants itself, and every PID given as well
# is counted once more (the workers' CPU came out doubled, or 0 from the last entry).
measure kamailio 127.0.0.1:5070 "$("$BENCH/run_kamailio.sh" pids | awk '{ print $1 }')"
"$BENCH/run_kamailio.sh" stop >/dev/null

s=$(sed -n 's/^max_cps=//p' "$OUT/max-sipedge.txt"); k=$(sed -n 's/^max_cps=//p' "$OUT/max-kamailio.txt")
awk -v s="${s:-0}" -v k="${k:-0}" 'BEGIN { printf "sipedge_max_cps=%s kamailio_max_cps=%s ratio=%.2f\n", s, k, (k > 0 ? s / k : 0) }'
echo "at_${RATE}cps $(cat "$OUT/latency.txt")"
if [ "$SUSTAIN_S" -gt 0 ]; then
    IDLE_S=10 OUT="$OUT/sustained" bash "$HERE/sustained.sh" "$RATE" "$SUSTAIN_S" 1 >"$OUT/sustained.txt"
    c=$(grep '^run 1 cps' "$OUT/sustained.txt"); t=$(grep '^run 1 timeline' "$OUT/sustained.txt")
    echo "sustained_${RATE}cps_${SUSTAIN_S}s sipedge ok=$(kv "$c" ok) failed=$(kv "$c" failed)" \
        "retrans=$(kv "$c" retrans) target_drops=$(kv "$c" target_drops) p99_ms=$(kv "$c" rt_p99_ms)" \
        "max_ms=$(kv "$c" rt_max_ms) rss_mb=$(kv "$t" rss_mb_last) lag_max_s=$(kv "$t" lag_max_s)" \
        "gc_max_s=$(kv "$t" gc_max_s) cpu=$(grep '^run 1 cpu' "$OUT/sustained.txt" | sed 's/.*=//')"
fi
echo "raw output: $OUT"
