"""Worker steering benchmark: link throughput between two processes, and the sink's cost.

Two figures (issue 14, multi-process workers):

* ``steer→deliver``: a 1 KB INVITE steered from worker 0 to worker 1, two real
  processes on one machine. The sender calls ``WorkerLinks.steer`` as fast as it can and
  yields to its loop only when the link says ``queue_full``; the receiver counts
  ``deliver`` calls. Reported: messages/s at the receiver (the first to the last
  delivery), the sender's mean time per ``steer()`` call, and how often the queue was
  full.
* ``SteeringSink.receive``: what the wrapper adds to each datagram that stays in this
  worker, in ns, against a direct call of the inner sink (a no-op). Cases: a worker's
  own endpoint (a set miss), a shared listener with a Call-ID this worker owns (set
  hit + Call-ID scan), a compact ``i:`` Call-ID (the scan's slower path), and no Call-ID.

Usage: python bench/steer.py [--messages N] [--loop asyncio|uvloop] [--repeats R]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import sys
import time
import timeit
import zlib
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sipedge.proxy.steering import owner_of  # noqa: E402
from sipedge.sip.address import Endpoint  # noqa: E402
from sipedge.transport.steer import SteeringSink, WorkerLinks  # noqa: E402

PEER = Endpoint("udp", "198.51.100.7", 5060)
SHARED = Endpoint("udp", "192.0.2.10", 5060)
OWN = Endpoint("udp", "192.0.2.10", 5070)


def invite(call_id_line: bytes, size: int = 1024) -> bytes:
    """An INVITE of exactly ``size`` bytes (SDP padded) carrying ``call_id_line``."""
    head = (
        b"INVITE sip:+14155550142@example.sip.ashburn-ix.twilio.com SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bK776asdhds;rport\r\n"
        b"Max-Forwards: 70\r\n"
        b"From: \"PBX\" <sip:+14155550100@198.51.100.7>;tag=1928301774\r\n"
        b"To: <sip:+14155550142@example.sip.ashburn-ix.twilio.com>\r\n"
        + call_id_line + b"\r\n"
        b"CSeq: 314159 INVITE\r\n"
        b"Contact: <sip:+14155550100@198.51.100.7:5060>\r\n"
        b"Content-Type: application/sdp\r\n"
    )
    sdp = (
        b"v=0\r\no=- 1 1 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\n"
        b"m=audio 20000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=x-pad:" + b"p" * size
    )
    # The body length that makes the whole message ``size`` bytes, Content-Length digits
    # included.
    length = next(n for n in range(size)
                  if len(head) + len(b"Content-Length: \r\n\r\n") + len(str(n)) + n == size)
    body = sdp[: length - 2] + b"\r\n"
    return head + b"Content-Length: " + str(length).encode() + b"\r\n\r\n" + body


def new_loop(name: str) -> asyncio.AbstractEventLoop:
    if name == "uvloop":
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        return loop
    return asyncio.new_event_loop()


def receiver(group: str, expected: int, loop_name: str, conn: Connection) -> None:
    """Worker 1: count deliveries; report (first, last, count) on ``conn``."""

    async def run() -> None:
        done = asyncio.Event()
        times: list[float] = []
        count = 0

        def deliver(data: bytes, peer: Endpoint, local: Endpoint, now: float) -> None:
            nonlocal count
            count += 1
            if count == 1 or count == expected:
                times.append(time.perf_counter())
                if count == expected:
                    done.set()

        links = WorkerLinks(group, 1, 2, deliver=deliver, probe_result=lambda *_: None)
        await links.start()
        conn.send("ready")
        await done.wait()
        conn.send((times[0], times[-1], count, links.link_malformed))
        links.close()

    with asyncio.Runner(loop_factory=lambda: new_loop(loop_name)) as runner:
        runner.run(run())


def steer_throughput(messages: int, loop_name: str) -> dict[str, float]:
    group = f"bench-test-steer-{os.getpid()}"
    data = invite(b"Call-ID: a84b4c76e66710@pbx.example.com")
    assert len(data) == 1024
    ctx = multiprocessing.get_context("spawn")
    parent_end, child_end = ctx.Pipe()
    child = ctx.Process(target=receiver, args=(group, messages, loop_name, child_end))
    child.start()
    assert parent_end.recv() == "ready"

    async def send() -> dict[str, float]:
        links = WorkerLinks(group, 0, 2, deliver=lambda *_: None, probe_result=lambda *_: None)
        await links.start()
        steer = links.steer
        in_steer = 0.0
        full = 0
        sent = 0
        while sent < messages:
            started = time.perf_counter()
            ok = steer(1, data, PEER, SHARED)
            in_steer += time.perf_counter() - started
            if ok:
                sent += 1
            else:
                full += 1
                await asyncio.sleep(0)  # let the receiver catch up
        links.close()
        return {"steer_ns": in_steer / (sent + full) * 1e9, "queue_full": full,
                "unreachable": links.steer_failed["unreachable"]}

    with asyncio.Runner(loop_factory=lambda: new_loop(loop_name)) as runner:
        sender = runner.run(send())
    first, last, count, malformed = parent_end.recv()
    child.join()
    assert count == messages and malformed == 0
    return {"msgs_per_s": (count - 1) / (last - first), **sender}


class NullSink:
    """The inner sink: does nothing, so only the wrapper's cost is measured."""

    def receive(self, data: bytes, peer: Endpoint, local: Endpoint, now: float) -> None:
        pass

    def transport_error(self, dest: Endpoint, now: float) -> None:
        pass

    def is_answerable(self, peer: Endpoint, local: Endpoint, now: float) -> bool:
        return True


def owned_call_id(index: int, count: int, compact: bool) -> bytes:
    """A Call-ID header line whose value this worker owns (crc32 % count == index)."""
    for n in range(1000):
        value = f"{n}a84b4c76e66710@pbx.example.com".encode()
        if zlib.crc32(value) % count == index:
            return (b"i: " if compact else b"Call-ID: ") + value
    raise AssertionError("no owned Call-ID found")


def sink_cost(repeats: int) -> dict[str, float]:
    """ns added per locally kept datagram by SteeringSink.receive, by case (median)."""
    inner = NullSink()
    links = WorkerLinks("bench-test-steer-sink", 0, 2, deliver=inner.receive, probe_result=lambda *_: None)
    sink = SteeringSink(inner, links, shared=[SHARED])
    cases: dict[str, tuple[Callable[..., None], bytes, Endpoint]] = {
        "direct (baseline)": (inner.receive, invite(owned_call_id(0, 2, False)), SHARED),
        "own endpoint": (sink.receive, invite(owned_call_id(0, 2, False)), OWN),
        "shared, owned Call-ID": (sink.receive, invite(owned_call_id(0, 2, False)), SHARED),
        "shared, owned i: (compact)": (sink.receive, invite(owned_call_id(0, 2, True)), SHARED),
        "shared, no Call-ID": (sink.receive, invite(b"X-Note: none"), SHARED),
    }
    owned = invite(owned_call_id(0, 2, False))
    number = 200_000
    results: dict[str, float] = {}
    for name, (receive, data, local) in cases.items():
        runs = timeit.repeat(lambda r=receive, d=data, lo=local: r(d, PEER, lo, 1.0),
                             number=number, repeat=repeats)
        results[name] = statistics.median(runs) / number * 1e9
    runs = timeit.repeat(lambda: owner_of(owned, 2), number=number, repeat=repeats)
    results["owner_of alone"] = statistics.median(runs) / number * 1e9
    assert links.steered_out == 0 and sum(links.steer_failed.values()) == 0  # all stayed
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="uvloop")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    rates = [steer_throughput(args.messages, args.loop) for _ in range(3)]
    best = max(rates, key=lambda r: r["msgs_per_s"])
    print(f"steer→deliver, 1024-byte INVITE, 2 processes, {args.loop}: "
          f"{', '.join(format(r['msgs_per_s'], ',.0f') for r in rates)} msgs/s "
          f"(3 runs of {args.messages:,}); sender {best['steer_ns']:,.0f} ns per steer(), "
          f"queue full {best['queue_full']:,.0f} times")
    costs = sink_cost(args.repeats)
    base = costs["direct (baseline)"]
    print(f"SteeringSink.receive, datagram kept here (median of {args.repeats}):")
    for name, ns in costs.items():
        added = "" if name.startswith(("direct", "owner_of")) else f"  (+{ns - base:,.0f} ns)"
        print(f"  {name:28s} {ns:7,.0f} ns{added}")
    print(f"steer_msgs_per_s={best['msgs_per_s']:.0f} "
          f"sink_local_added_ns={costs['shared, owned Call-ID'] - base:.0f}")


if __name__ == "__main__":
    main()
