"""Calls per second through the sans-I/O ProxyCore alone (no sockets, no event loop).

One call = INVITE → 100 + forwarded INVITE → 200 from the gateway → forwarded 200 →
ACK → BYE → 200, the same flow as ../shared/bench's uac.xml/uas.xml. It isolates the
Python cost per call from syscalls and SIPp, so hot-path work can be measured and
profiled in a repeatable way:

    python bench/core.py              # calls/s, median of 5 runs
    python bench/core.py --profile    # cProfile of one run, top 25 by self time
    python bench/core.py --default-gc # without the daemon's tune_gc() (CPython defaults)
    python bench/core.py --sdp        # the gateway answers with SDP (the media check runs)
    python bench/core.py --eventlog   # events logged as the daemon does (INFO, /dev/null)
    python bench/core.py --memory     # bytes and GC-tracked objects a call holds in its
                                      # RFC 3261 wait timers (tracemalloc, gc.get_objects)

An installed sipedge wins over this checkout (the repo root goes last on sys.path), so
``PYTHONPATH=build/compiled-core/site python bench/core.py`` measures the mypyc wheel that
``make unit-compiled`` built; the output says which core ran (``core=mypyc|python``).
bench/instructions.sh counts instructions per call under callgrind.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import gc
import logging
import os
import pstats
import statistics
import sys
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))  # an installed sipedge wins

from sipedge import core_build
from sipedge.config import load_config
from sipedge.daemon import build_core, tune_gc
from sipedge.proxy.core import ProxyCore, Send
from sipedge.proxy.events import Event
from sipedge.sip.address import Endpoint
from sipedge.sip.message import Request, build_response, parse

ROOT = Path(__file__).resolve().parents[1]
PBX = Endpoint("udp", "127.0.0.1", 5099)
INSIDE = Endpoint("udp", "127.0.0.1", 5080)
OUTSIDE = Endpoint("udp", "127.0.0.3", 5060)

INVITE = (
    "INVITE sip:+14155550100@127.0.0.1:5080 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5099;branch=z9hG4bK-{n}-1-0\r\n"
    'From: "pbx" <sip:pbx@127.0.0.1:5099>;tag={n}SIPpTag00\r\n'
    "To: <sip:+14155550100@127.0.0.1:5080>\r\n"
    "Call-ID: {n}-bench@127.0.0.1\r\n"
    "CSeq: 1 INVITE\r\n"
    "Contact: <sip:pbx@127.0.0.1:5099;transport=UDP>\r\n"
    "Max-Forwards: 70\r\n"
    "Subject: sipedge bench\r\n"
    "Content-Type: application/sdp\r\n"
    "Content-Length: {length}\r\n\r\n{sdp}"
)
SDP = (
    "v=0\r\no=pbx 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
    "t=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)
INVITE = INVITE.format(n="{n}", length=len(SDP), sdp=SDP)
IN_DIALOG = (
    "{method} sip:gw@{gw}:5060;transport=UDP SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5099;branch=z9hG4bK-{n}-{cseq}\r\n"
    "Route: <sip:127.0.0.1:5080;lr>, <sip:127.0.0.3:5060;lr>\r\n"
    'From: "pbx" <sip:pbx@127.0.0.1:5099>;tag={n}SIPpTag00\r\n'
    "To: <sip:+14155550100@127.0.0.1:5080>;tag=gw{n}\r\n"
    "Call-ID: {n}-bench@127.0.0.1\r\n"
    "CSeq: {cseq} {method}\r\n"
    "Contact: <sip:pbx@127.0.0.1:5099;transport=UDP>\r\n"
    "Max-Forwards: 70\r\n"
    "Content-Length: 0\r\n\r\n"
)


def _make_core() -> ProxyCore:
    config = load_config(ROOT / "conf" / "lab.toml")
    # The bench places 1,000 calls per simulated second over six gateways: raise the call
    # caps above that so every call completes, while their buckets are still taken.
    limits = dataclasses.replace(config.limits, call_rate_per_s=1e6, call_burst=1e6,
                                 gateway_calls_per_s=1e6, source_rate_per_s=1e7,
                                 source_burst=1e7)
    core = build_core(dataclasses.replace(config, limits=limits), 0.0)
    # Mark every gateway UP: answer two probe rounds.
    now = 0.0
    for _ in range(3):
        core.handle_timer(now)
        for send in core.drain_outbox():
            req = parse(send.data)
            assert isinstance(req, Request)
            core.receive(build_response(req, 200, to_tag=b"p"), send.dest, OUTSIDE, now)
        now += 10.0
    core.drain_events()
    return core


#: The answer SDP of a Twilio gateway (media inside 168.86.128.0/18, UDP 10000-60000).
TWILIO_SDP = (b"v=0\r\no=- 1 1 IN IP4 168.86.130.7\r\ns=-\r\nc=IN IP4 168.86.130.7\r\n"
              b"t=0 0\r\nm=audio 18000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n")
SDP_HEADERS = [(b"Content-Type", b"application/sdp")]


def _answer(send: Send, status: int, n: int, with_rr: bool, sdp: bool = False) -> bytes:
    req = parse(send.data)
    assert isinstance(req, Request)
    headers = [(b"Record-Route", v) for v in req.header_values(b"record-route")] if with_rr else []
    if sdp:
        return build_response(req, status, to_tag=b"gw%d" % n, headers=headers + SDP_HEADERS,
                              body=TWILIO_SDP)
    return build_response(req, status, to_tag=b"gw%d" % n, headers=headers)


def run(calls: int, on_event: Callable[[Event], None] | None = None,
        sdp: bool = False, core: ProxyCore | None = None, first: int = 0) -> float:
    core = core if core is not None else _make_core()
    now = 100.0 + first * 0.001  # calls numbered from ``first`` continue a core's clock
    start = time.perf_counter()
    for n in range(first, first + calls):
        core.receive(INVITE.format(n=n).encode(), PBX, INSIDE, now)
        fwd = next(s for s in core.drain_outbox() if s.data.startswith(b"INVITE"))
        core.receive(_answer(fwd, 200, n, True, sdp), fwd.dest, OUTSIDE, now)
        core.drain_outbox()
        gw = fwd.dest.host
        core.receive(IN_DIALOG.format(method="ACK", cseq=1, n=n, gw=gw).encode(), PBX, INSIDE, now)
        core.drain_outbox()
        core.receive(IN_DIALOG.format(method="BYE", cseq=2, n=n, gw=gw).encode(), PBX, INSIDE, now)
        bye = next(s for s in core.drain_outbox() if s.data.startswith(b"BYE"))
        core.receive(_answer(bye, 200, n, False), bye.dest, OUTSIDE, now)
        core.drain_outbox()
        events = core.drain_events()  # the driver hands them to the event logger
        if on_event is not None:
            for event in events:
                on_event(event)
        now += 0.001
        if n % 256 == 0:
            core.handle_timer(now)
            for send in core.drain_outbox():
                if send.data.startswith(b"OPTIONS"):  # keep the gateways UP
                    core.receive(_answer(send, 200, n, False), send.dest, OUTSIDE, now)
            core.drain_outbox()
    elapsed = time.perf_counter() - start
    return calls / elapsed


def memory(calls: int) -> None:
    """What ``calls`` complete calls hold while every one is inside its wait timers.

    The bench places 1,000 calls per simulated second, so with ``calls`` <= 32,000 none of
    their 64*T1 timers has run out: the difference is what a held call costs.
    """
    core = _make_core()
    run(200, core=core)  # warm every cache and table first
    gc.collect()
    tracked0 = Counter(type(o).__name__ for o in gc.get_objects())
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    run(calls, core=core, first=200)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    held = sum(s.size_diff for s in after.compare_to(before, "filename"))
    tracked = Counter(type(o).__name__ for o in gc.get_objects()) - tracked0
    tracked.pop("tuple", None)  # tracemalloc's own snapshot traces
    top = ", ".join(f"{name} {n / calls:.2f}" for name, n in tracked.most_common(6))
    print(f"held_bytes_per_call={held / calls:.0f} gc_tracked_per_call="
          f"{sum(tracked.values()) / calls:.2f} ({top}; {calls} calls held)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--sdp", action="store_true",
                        help="the gateway's 200 carries an SDP (the media check reads it)")
    parser.add_argument("--eventlog", action="store_true",
                        help="log every event as the daemon does (INFO, to /dev/null)")
    parser.add_argument("--memory", action="store_true",
                        help="bytes and GC-tracked objects held per call in its wait timers")
    parser.add_argument("--default-gc", action="store_true",
                        help="keep CPython's GC thresholds instead of the daemon's tune_gc()")
    args = parser.parse_args()
    on_event = None
    if args.eventlog:
        from sipedge.eventlog import EventLogger
        from sipedge.logs import setup_logging

        setup_logging("info")
        logging.getLogger().handlers[0].setStream(open(os.devnull, "w"))  # noqa: SIM115
        on_event = EventLogger()
    if not args.default_gc:
        tune_gc()  # the daemon runs with these settings (sipedge.daemon.run)
    if args.memory:
        memory(args.calls)
        return
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        run(args.calls, on_event, args.sdp)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        return
    rates = [run(args.calls, on_event, args.sdp) for _ in range(args.repeats)]
    # The gateway's answers are built with the same parser: their cost is included, so
    # the figure is a lower bound on the core's own rate.
    print(f"core_calls_per_s={statistics.median(rates):.0f} core={core_build().kind} "
          f"(median of {args.repeats}, {args.calls} calls each; includes building the "
          "simulated gateway's answers)")


if __name__ == "__main__":
    main()
