"""A per-second timeline of a running sipedge: what a latency stall is made of.

Samples, every ``--interval`` seconds until killed or ``--seconds`` pass:

* from ``/metrics`` (the admin listener): the event-loop lag histogram (the worst bucket
  reached in the interval), GC collections and their time by generation, timer-heap
  entries popped and held, transactions in progress, calls in progress, RSS, CPU;
* from ``/proc/net/udp``: the receive queue and the cumulative drops of each UDP socket
  bound to a ``--socket`` address (the kernel drops a datagram when the queue is full).

Prints one line per sample (``--csv`` for CSV) and a summary at the end (on SIGINT/SIGTERM
too). Used by ``bench/sustained.sh``; by hand::

    .venv/bin/python bench/timeline.py --admin 127.0.0.1:9091 --socket 127.0.0.1:5080 \\
        --socket 127.0.0.3:5060 --seconds 300
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families


@dataclass
class Scrape:
    """The values of one scrape: ``name{labels}`` → value."""

    values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = field(default_factory=dict)

    def get(self, name: str, **labels: str) -> float:
        return self.values.get((name, tuple(sorted(labels.items()))), 0.0)

    def buckets(self, name: str, **labels: str) -> list[tuple[float, float]]:
        """(le, cumulative count) of histogram ``name``, ``+Inf`` last."""
        out = []
        for (sample, labs), value in self.values.items():
            if sample != name + "_bucket":
                continue
            d = dict(labs)
            le = d.pop("le")
            if d == labels:
                out.append((float(le), value))
        return sorted(out)


def scrape(admin: str) -> Scrape:
    with urllib.request.urlopen(f"http://{admin}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out = Scrape()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.values[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def worst_bucket(before: Scrape, after: Scrape, name: str, **labels: str) -> float:
    """The upper bound of the highest bucket that gained observations (0: none)."""
    old = dict(before.buckets(name, **labels))
    worst = 0.0
    previous_new = previous_old = 0.0
    for le, count in after.buckets(name, **labels):
        gained = (count - previous_new) - (old.get(le, 0.0) - previous_old)
        previous_new, previous_old = count, old.get(le, 0.0)
        if gained > 0:
            worst = le
    return worst


def _hex_address(host: str, port: int) -> str:
    packed = socket.inet_aton(host)
    return f"{int.from_bytes(packed, 'little'):08X}:{port:04X}"


def udp_sockets(addresses: Iterable[tuple[str, int]]) -> dict[str, tuple[int, int]]:
    """``host:port`` → (rx_queue bytes, drops) for every bound UDP socket on them."""
    wanted = {_hex_address(h, p): f"{h}:{p}" for h, p in addresses}
    out: dict[str, tuple[int, int]] = {}
    with open("/proc/net/udp") as f:
        next(f)
        for line in f:
            cols = line.split()
            name = wanted.get(cols[1])
            if name is None:
                continue
            rx = int(cols[4].split(":")[1], 16)
            drops = int(cols[12])
            q, d = out.get(name, (0, 0))
            out[name] = (q + rx, d + drops)  # SO_REUSEPORT: several sockets, one address
    return out


COLUMNS = ("t_s", "lag_max_s", "gc0_n", "gc1_n", "gc2_n", "gc_ms", "gc_max_s", "timers_per_s",
           "timer_entries", "server_tx", "client_tx", "calls", "rss_mb", "cpu_pct",
           "rxq_kb", "drops")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--admin", default="127.0.0.1:9091")
    ap.add_argument("--socket", action="append", default=[],
                    help="UDP HOST:PORT to watch in /proc/net/udp (repeatable)")
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--seconds", type=float, default=0.0, help="0: until killed")
    ap.add_argument("--csv", action="store_true")
    args = ap.parse_args(argv)
    addresses = [(a.rpartition(":")[0], int(a.rpartition(":")[2])) for a in args.socket]

    stop = [False]

    def on_signal(signum: int, frame: object) -> None:
        stop[0] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    start = time.monotonic()
    before = scrape(args.admin)
    sockets0 = udp_sockets(addresses)
    t_before = start
    rows: list[dict[str, float]] = []
    sep = "," if args.csv else " "
    print(sep.join(COLUMNS), flush=True)
    while not stop[0]:
        time.sleep(max(0.0, args.interval - (time.monotonic() - t_before)))
        try:
            after = scrape(args.admin)
        except OSError:
            break  # the daemon went away
        now = time.monotonic()
        dt = now - t_before
        socks = udp_sockets(addresses)
        gc_n = [after.get("sipedge_gc_pause_seconds_count", generation=str(g))
                - before.get("sipedge_gc_pause_seconds_count", generation=str(g))
                for g in range(3)]
        gc_s = sum(after.get("sipedge_gc_pause_seconds_sum", generation=str(g))
                   - before.get("sipedge_gc_pause_seconds_sum", generation=str(g))
                   for g in range(3))
        gc_max = max(worst_bucket(before, after, "sipedge_gc_pause_seconds", generation=str(g))
                     for g in range(3))
        row = {
            "t_s": now - start,
            "lag_max_s": worst_bucket(before, after, "sipedge_event_loop_lag_seconds"),
            "gc0_n": gc_n[0], "gc1_n": gc_n[1], "gc2_n": gc_n[2],
            "gc_ms": 1000 * gc_s, "gc_max_s": gc_max,
            "timers_per_s": (after.get("sipedge_timers_fired_total")
                             - before.get("sipedge_timers_fired_total")) / dt,
            "timer_entries": after.get("sipedge_timer_entries"),
            "server_tx": after.get("sipedge_transactions_in_progress", kind="server"),
            "client_tx": after.get("sipedge_transactions_in_progress", kind="client"),
            "calls": after.get("sipedge_calls_in_progress"),
            "rss_mb": after.get("process_resident_memory_bytes") / 2**20,
            "cpu_pct": 100 * (after.get("process_cpu_seconds_total")
                              - before.get("process_cpu_seconds_total")) / dt,
            "rxq_kb": sum(q for q, _ in socks.values()) / 1024,
            "drops": sum(d for _, d in socks.values()) - sum(d for _, d in sockets0.values()),
        }
        rows.append(row)
        print(sep.join(f"{row[c]:.3f}" if isinstance(row[c], float) and row[c] % 1 else
                       f"{row[c]:.0f}" for c in COLUMNS), flush=True)
        before, t_before = after, now
        if args.seconds and now - start >= args.seconds:
            break
    if rows:
        lags = [r["lag_max_s"] for r in rows]
        print(f"timeline samples={len(rows)} lag_max_s={max(lags):g} "
              f"seconds_with_lag_over_0.1={sum(1 for x in lags if x > 0.1)} "
              f"gc_total_ms={sum(r['gc_ms'] for r in rows):.0f} "
              f"gc_max_s={max(r['gc_max_s'] for r in rows):g} "
              f"gc2_collections={sum(r['gc2_n'] for r in rows):.0f} "
              f"timers_per_s_max={max(r['timers_per_s'] for r in rows):.0f} "
              f"timer_entries_max={max(r['timer_entries'] for r in rows):.0f} "
              f"rss_mb_last={rows[-1]['rss_mb']:.1f} rss_mb_max={max(r['rss_mb'] for r in rows):.1f} "
              f"rxq_kb_max={max(r['rxq_kb'] for r in rows):.0f} drops={rows[-1]['drops']:.0f}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
