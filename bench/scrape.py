"""Cost of one ``/metrics`` scrape for a large pool after real traffic through the core.

The issue's target: a scrape of 200 gateways under load takes < 50 ms. The admin handler
runs the exposition on the event loop, so this time is also how long SIP traffic waits.

Setup: 8 edges × 25 gateways (loopback 127.0.100.10 … 127.0.107.34), all brought UP by
answering their OPTIONS probes (2–4 ms RTT), then ``--calls`` calls driven through the
sans-I/O ``ProxyCore`` as bytes: 70 % answered (180, 200, ACK, BYE, 200), 10 % busy (486),
10 % failed over (503 from the first gateway, answered by the next), 10 % answered and left
up (calls in progress). Then ``--scrapes`` expositions of a registry built by
``sipedge.metrics.make_registry`` (the sipedge collector plus process/platform/GC) are timed.

    python bench/scrape.py                   # median / p99 ms of 200 scrapes
    python bench/scrape.py --profile         # cProfile of the scrapes, top 20 by self time
    python bench/scrape.py --default-gc      # without the daemon's tune_gc()

The last line compares with ``prometheus_client.generate_latest`` over the same registry in
the same run (the machine is shared and noisy: the ratio is the stable figure).
"""

from __future__ import annotations

import argparse
import cProfile
import ipaddress
import pstats
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prometheus_client import generate_latest

from sipedge.config import Config, InsideConfig, OutsideConfig, build_settings
from sipedge.daemon import tune_gc
from sipedge.gateway.health import Health, HealthPolicy
from sipedge.gateway.monitor import GatewayMonitor
from sipedge.gateway.pool import Gateway, GatewayPool
from sipedge.gateway.probe import ProbeSchedule
from sipedge.metrics import LoopLagMonitor, exposition, make_registry
from sipedge.proxy.core import ProxyCore, Send, probe_settings
from sipedge.sip.address import Endpoint
from sipedge.sip.message import Request, build_response, parse

EDGES = 8
PER_EDGE = 25
PBX = Endpoint("udp", "127.0.0.1", 5099)
INSIDE = Endpoint("udp", "127.0.0.1", 5080)
OUTSIDE = Endpoint("udp", "127.0.0.3", 5060)
CALLEE = Endpoint("udp", "127.0.0.10", 5060)

INVITE = (
    "INVITE sip:+14155550100@127.0.0.1:5080 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5099;branch=z9hG4bK-{n}-1\r\n"
    "From: <sip:pbx@127.0.0.1:5099>;tag={n}pbx\r\n"
    "To: <sip:+14155550100@127.0.0.1:5080>\r\n"
    "Call-ID: {n}-scrape@127.0.0.1\r\n"
    "CSeq: 1 INVITE\r\n"
    "Contact: <sip:pbx@127.0.0.1:5099>\r\n"
    "Max-Forwards: 70\r\n"
    "Content-Length: 0\r\n\r\n"
)
IN_DIALOG = (
    "{method} sip:gw@{gw}:5060 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5099;branch=z9hG4bK-{n}-{cseq}\r\n"
    "Route: <sip:127.0.0.1:5080;lr>, <sip:127.0.0.3:5060;lr>\r\n"
    "From: <sip:pbx@127.0.0.1:5099>;tag={n}pbx\r\n"
    "To: <sip:+14155550100@127.0.0.1:5080>;tag=gw{n}\r\n"
    "Call-ID: {n}-scrape@127.0.0.1\r\n"
    "CSeq: {cseq} {method}\r\n"
    "Max-Forwards: 70\r\n"
    "Content-Length: 0\r\n\r\n"
)


class Lab:
    """A core over 200 gateways and a clock; ``step`` moves time and runs due timers."""

    def __init__(self) -> None:
        self.now = 0.0
        self.rng = random.Random(1)
        groups = [
            [Gateway.make(f"edge-{e}", f"region-{e}", Endpoint("udp", f"127.0.{100 + e}.{10 + i}", 5060),
                          b"example.sip.edge-%d.twilio.com" % e) for i in range(PER_EDGE)]
            for e in range(EDGES)
        ]
        pool = GatewayPool(groups, HealthPolicy(), now=self.now)
        schedule = ProbeSchedule(rng=random.Random(7), interval_up_s=60.0, interval_down_s=5.0)
        # Settings through the config's loader, as tests/helpers/wire.py builds them: every
        # value the file does not give is the config's default (ProxySettings has no
        # defaults of its own for those).
        settings = build_settings(Config(
            path="<bench>",
            inside=InsideConfig(listen=(INSIDE,),
                                allow=(ipaddress.ip_network("127.0.0.1/32"),), pbx=CALLEE),
            outside=OutsideConfig(listen=(OUTSIDE,), domain="example"),
            edges=()))
        monitor = GatewayMonitor(pool, schedule, probe_settings(settings), instance=b"bench")
        self.core = ProxyCore(settings, pool, monitor=monitor)
        self.core.start(self.now)

    def step(self, seconds: float) -> None:
        self.now += seconds
        core = self.core
        core.handle_timer(self.now)
        self._answer_probes(core.drain_outbox())
        core.drain_events()

    def _answer_probes(self, sends: list[Send]) -> None:
        probes = [s for s in sends if s.data.startswith(b"OPTIONS ")]
        if not probes:
            return
        self.now += self.rng.uniform(0.002, 0.004)  # the probe RTT
        for send in probes:
            self.core.receive(answer(send, 200, b"p"), send.dest, OUTSIDE, self.now)
        self.core.drain_outbox()

    def feed(self, data: bytes, peer: Endpoint, local: Endpoint) -> list[Send]:
        self.core.receive(data, peer, local, self.now)
        out = self.core.drain_outbox()
        self.core.drain_events()
        self._answer_probes(out)
        return out


def answer(send: Send, status: int, tag: bytes) -> bytes:
    req = parse(send.data)
    assert isinstance(req, Request)
    rr = [(b"Record-Route", v) for v in req.header_values(b"record-route")]
    return build_response(req, status, to_tag=tag, headers=rr)


def invite_out(out: list[Send]) -> Send:
    return next(s for s in out if s.data.startswith(b"INVITE "))


def call(lab: Lab, n: int) -> None:
    """One call of the mix (see the module docstring)."""
    kind = n % 10
    tag = b"gw%d" % n
    fwd = invite_out(lab.feed(INVITE.format(n=n).encode(), PBX, INSIDE))
    if kind == 7:
        lab.step(0.05)
        lab.feed(answer(fwd, 486, tag), fwd.dest, OUTSIDE)
        return
    if kind == 8:
        lab.step(0.05)
        fwd = invite_out(lab.feed(answer(fwd, 503, tag), fwd.dest, OUTSIDE))
    lab.step(lab.rng.uniform(0.1, 1.5))
    lab.feed(answer(fwd, 180, tag), fwd.dest, OUTSIDE)
    lab.step(lab.rng.uniform(0.5, 4.0))
    lab.feed(answer(fwd, 200, tag), fwd.dest, OUTSIDE)
    gw = fwd.dest.host
    lab.feed(IN_DIALOG.format(method="ACK", cseq=1, n=n, gw=gw).encode(), PBX, INSIDE)
    if kind == 9:
        return  # left up: a call in progress
    bye = lab.feed(IN_DIALOG.format(method="BYE", cseq=2, n=n, gw=gw).encode(), PBX, INSIDE)
    fwd_bye = next(s for s in bye if s.data.startswith(b"BYE "))
    lab.feed(answer(fwd_bye, 200, tag), fwd_bye.dest, OUTSIDE)


def build(calls: int) -> Lab:
    lab = Lab()
    for _ in range(4):  # up_after=2 healthy replies; the first round is due at once
        lab.step(5.0)
    states = {s.state for s in lab.core.pool.snapshot()}
    assert states == {Health.UP}, states
    for n in range(calls):
        call(lab, n)
        lab.step(0.01)
    return lab


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--scrapes", type=int, default=200)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--default-gc", action="store_true",
                        help="keep CPython's GC thresholds instead of the daemon's tune_gc()")
    args = parser.parse_args()
    if not args.default_gc:
        tune_gc()  # the daemon runs with these settings (sipedge.daemon.run)

    t0 = time.perf_counter()
    lab = build(args.calls)
    setup_s = time.perf_counter() - t0
    driver = SimpleNamespace(core=lab.core, internal_errors=0)
    monitor = LoopLagMonitor()  # never started: its families are exposed at zero
    registry = make_registry(lambda: driver, loop_lag=monitor, state=lambda: "ready")
    body = exposition(registry)
    samples = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    stats = lab.core.stats
    print(f"pool: {EDGES} edges x {PER_EDGE} gateways; calls: {args.calls} "
          f"(started {sum(stats.calls_started.values())}, answered "
          f"{sum(stats.calls_answered.values())}, in progress {lab.core.calls_in_progress}, "
          f"failovers {stats.failovers}); setup {setup_s:.1f}s")
    print(f"exposition: {len(body)} bytes, {samples} samples")

    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(args.scrapes):
            exposition(registry)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(20)
        return
    times = timed(lambda: exposition(registry), args.scrapes)
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    print(f"scrape_ms median={statistics.median(times):.2f} p99={p99:.2f} "
          f"max={times[-1]:.2f} ({args.scrapes} scrapes; target < 50 ms)")
    peer = timed(lambda: generate_latest(registry), max(10, args.scrapes // 4))
    print(f"generate_latest_ms median={statistics.median(peer):.2f} "
          f"speedup={statistics.median(peer) / statistics.median(times):.1f}x")


def timed(scrape: Callable[[], bytes], n: int) -> list[float]:
    """Sorted wall times of ``n`` calls, milliseconds."""
    out = []
    for _ in range(n):
        start = time.perf_counter()
        scrape()
        out.append((time.perf_counter() - start) * 1e3)
    return sorted(out)


if __name__ == "__main__":
    main()
