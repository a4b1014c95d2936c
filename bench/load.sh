#!/usr/bin/env bash
# Load and failover figures for sipedge beside Kamailio, in the same sitting
# (../shared/bench drives both the same way; machines are noisy, so compare ratios).
#
#   bench/load.sh [cps|max|failover|all]     (default: all)
#
# sipedge runs conf/lab.toml (inside udp 127.0.0.1:5080; gateways 127.0.0.64-66 then
# 127.0.1.64-66), Kamailio ../shared/bench/kamailio/kamailio.cfg on 127.0.0.1:5070.
# Loopback only. Output: one summary line per measurement, then a ratio line.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
BENCH=${SHARED:-$ROOT/../shared}/bench
what=${1:-all}
OUT=${OUT:-/tmp/sipedge-load-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"

bash "$BENCH/install.sh" >/dev/null
"$BENCH/uas.sh" start all >/dev/null

start_sipedge() {
    "$ROOT/.venv/bin/sipedge" run --config "$ROOT/conf/lab.toml" --log-level warning \
        >"$OUT/sipedge.log" 2>&1 &
    SIPEDGE_PID=$!
    sleep 4  # probes mark the gateways UP
}
stop_sipedge() { kill "$SIPEDGE_PID" 2>/dev/null; wait "$SIPEDGE_PID" 2>/dev/null; }

run_for() {  # run_for NAME TARGET PIDS
    local name=$1 target=$2 pids=$3
    case $what in cps|all)
        WATCH_PIDS="$pids" "$BENCH/cps.sh" "$target" 200 20 | tail -2 | sed "s/^/$name /" ;; esac
    case $what in max|all)
        WATCH_PIDS="$pids" "$BENCH/max_cps.sh" "$target" | tee "$OUT/max-$name.txt" | tail -1 | sed "s/^/$name /" ;; esac
    case $what in failover|all)
        "$BENCH/failover.sh" "$target" | tail -2 | sed "s/^/$name /"
        FAIL_MODE=stop "$BENCH/failover.sh" "$target" | tail -2 | sed "s/^/$name stop-mode /" ;; esac
}

start_sipedge
run_for sipedge 127.0.0.1:5080 "$SIPEDGE_PID"
stop_sipedge

"$BENCH/run_kamailio.sh" start >/dev/null
run_for kamailio 127.0.0.1:5070 "$("$BENCH/run_kamailio.sh" pids)"
"$BENCH/run_kamailio.sh" stop >/dev/null

if [ -f "$OUT/max-sipedge.txt" ] && [ -f "$OUT/max-kamailio.txt" ]; then
    s=$(sed -n 's/^max_cps=//p' "$OUT/max-sipedge.txt"); k=$(sed -n 's/^max_cps=//p' "$OUT/max-kamailio.txt")
    awk -v s="$s" -v k="$k" 'BEGIN { printf "max_cps sipedge=%s kamailio=%s ratio=%.2f\n", s, k, (k > 0 ? s / k : 0) }'
fi
"$BENCH/uas.sh" stop all >/dev/null
echo "raw output: $OUT"
