"""Worker links and the steering sink: real Unix sockets, real processes where it matters.

In-process tests run two ``WorkerLinks`` in one loop (asyncio's and uvloop's); the
process tests start two workers (``tests/helpers/steer_worker.py``) that share one UDP
socket, as the daemon's workers will, and check every datagram is delivered exactly
once, to the worker owning its Call-ID, byte-exact, with its original peer and listener.
Only 127.0.14.0/24 and abstract Unix names containing ``test-steer``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sipedge.gateway.probe import ProbeResult, Replied, SendFailed, TimedOut
from sipedge.sip.address import Endpoint
from sipedge.transport import TransportError, TransportErrorReason, bind_shared
from sipedge.transport.steer import STEER_FAILURE_REASONS, SteeringSink, WorkerLinks
from tests.helpers.steer_worker import result_from_json, result_to_json
from tests.transport.conftest import BOTH_LOOPS, RecordingSink, loop_factories, until

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_HOST = "127.0.14.1"
CLIENT_HOSTS = ("127.0.14.2", "127.0.14.3", "127.0.14.4")
PEER = Endpoint("udp", "127.0.14.2", 40001)
LISTENER = Endpoint("udp", SHARED_HOST, 5060)
OWN = Endpoint("udp", "127.0.14.5", 5060)  # a worker's own endpoint: never steered
PROBES: list[tuple[str, ProbeResult]] = [
    ("ashburn-1", Replied(200, 0.0123456789)),
    ("ashburn-2", Replied(503, 1.5, retry_after_s=30.0)),
    ("san-jose-1", TimedOut()),
    ("sän-jose-2", SendFailed("connection refused: ü")),
]


def group() -> str:
    """A link group no other test (or sipedge) uses."""
    return f"test-steer-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def request(call_id_line: bytes, n: int, size: int = 0) -> bytes:
    """An INVITE carrying ``call_id_line`` (or none when empty), padded to ``size`` bytes."""
    head = (
        b"INVITE sip:+15550100@example.sip.ashburn-ix.twilio.com SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 127.0.14.2:5060;branch=z9hG4bK-" + str(n).encode() + b"\r\n"
        b"Max-Forwards: 70\r\nFrom: <sip:pbx@127.0.14.2>;tag=" + str(n).encode() + b"\r\n"
        b"To: <sip:+15550100@example.sip.ashburn-ix.twilio.com>\r\n"
        + (call_id_line + b"\r\n" if call_id_line else b"")
        + b"CSeq: 1 INVITE\r\nContent-Type: application/sdp\r\n"
    )
    body = b"v=0\r\n" + b"a=x\r\n" * max(0, (size - len(head) - 30) // 5)
    return head + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body


#: Call-ID spellings (RFC 3261 §7.3.1 case-insensitive names, §7.3.3 compact form,
#: whitespace around the colon) and the value the owner is computed from.
CALL_ID_FORMS = (
    (b"Call-ID: %s", "{}"),
    (b"i: %s", "{}"),
    (b"call-id:%s", "{}"),
    (b"CALL-ID :  %s  ", "{}"),
)


def messages(first: int, count: int) -> list[tuple[bytes, int | None]]:
    """``count`` INVITEs numbered from ``first``: (bytes, crc32(Call-ID) % 2 or None)."""
    out: list[tuple[bytes, int | None]] = []
    for n in range(first, first + count):
        if n % 9 == 8:  # no Call-ID: whoever reads it keeps it
            out.append((request(b"", n), None))
            continue
        form, _ = CALL_ID_FORMS[n % len(CALL_ID_FORMS)]
        call_id = f"{uuid.uuid4().hex}@127.0.14.2".encode()
        out.append((request(form % call_id, n, size=1024), zlib.crc32(call_id) % 2))
    return out


# -- in-process: two links in one loop -------------------------------------------------


class Links:
    """Two started ``WorkerLinks`` of one group, recording what each was handed."""

    def __init__(self, count: int = 2) -> None:
        self.group = group()
        self.delivered: list[list[tuple[bytes, Endpoint, Endpoint]]] = [[] for _ in range(count)]
        self.probes: list[list[tuple[str, ProbeResult]]] = [[] for _ in range(count)]
        self.links = [self.make(i, count) for i in range(count)]

    def make(self, index: int, count: int = 2) -> WorkerLinks:
        def deliver(data: bytes, peer: Endpoint, local: Endpoint, now: float) -> None:
            assert now == pytest.approx(asyncio.get_running_loop().time(), abs=1.0)
            self.delivered[index].append((data, peer, local))

        def probe(gateway_id: str, result: ProbeResult, now: float) -> None:
            self.probes[index].append((gateway_id, result))

        return WorkerLinks(self.group, index, count, deliver=deliver, probe_result=probe)

    async def start(self) -> Links:
        for link in self.links:
            await link.start()
        return self

    def close(self) -> None:
        for link in self.links:
            link.close()


@contextlib.asynccontextmanager
async def started(count: int = 2) -> Any:
    links = Links(count)
    try:
        yield await links.start()
    finally:
        links.close()


@BOTH_LOOPS
async def test_steer_delivers_bytes_peer_and_local_unchanged() -> None:
    async with started() as pair:
        a, _b = pair.links
        v6_peer, v6_local = Endpoint("udp", "::1", 5062), Endpoint("udp", "::", 5060)
        sent = [
            (request(b"Call-ID: c1", 1), PEER, LISTENER),
            (b"x" * 65535, PEER, LISTENER),  # the largest UDP payload
            (b"", PEER, LISTENER),
            (request(b"Call-ID: c2", 2), v6_peer, v6_local),
            (request(b"Call-ID: c3", 3), Endpoint("udp", "127.0.14.3", 1), LISTENER),
        ]
        for data, peer, local in sent:
            assert a.steer(1, data, peer, local)
        await until(lambda: len(pair.delivered[1]) == len(sent))
        assert pair.delivered[1] == sent
        assert pair.delivered[0] == []
        assert (a.steered_out, pair.links[1].steered_in) == (len(sent), len(sent))
        # Decoded endpoints are reused, not rebuilt per datagram.
        assert pair.delivered[1][0][1] is pair.delivered[1][1][1]


@BOTH_LOOPS
async def test_probe_results_broadcast_and_decoded_equal() -> None:
    async with started(3) as trio:
        for gateway_id, result in PROBES:
            assert trio.links[0].broadcast_probe(gateway_id, result) == 2
        await until(lambda: len(trio.probes[1]) == len(trio.probes[2]) == len(PROBES))
        assert trio.probes[1] == trio.probes[2] == PROBES
        assert trio.probes[0] == []
        assert trio.links[0].probes_out == 2 * len(PROBES)
        assert trio.links[1].probes_in == len(PROBES)
        long_reason = SendFailed("é" * 5000)  # cut to 1,024 characters, still UTF-8
        trio.links[1].broadcast_probe("gw", long_reason)
        await until(lambda: len(trio.probes[0]) == 1)
        assert trio.probes[0] == [("gw", SendFailed("é" * 1024))]


@BOTH_LOOPS
async def test_probe_that_cannot_be_encoded_is_counted_not_raised() -> None:
    async with started() as pair:
        a = pair.links[0]
        assert a.broadcast_probe("g" * 1025, TimedOut()) == 0
        assert a.broadcast_probe("gw", Replied(70000, 0.1)) == 0  # code over 2 bytes
        assert a.probes_failed == 2 and a.probes_out == 0


def _record(local: Endpoint, peer: Endpoint, data: bytes) -> bytes:
    """A steered record built from the module docstring, not from the code under test."""

    def endpoint(ep: Endpoint) -> bytes:
        host = ep.host.encode()
        return bytes([len(host)]) + host + struct.pack(">H", ep.port)

    return b"\x01" + endpoint(local) + endpoint(peer) + data


MALFORMED = [
    b"\x09anything",  # unknown kind
    b"\x01",  # short
    b"\x01\x0a127.0",  # listener host cut short
    b"\x01\x00\x13\xc4\x0a127.0.14.2\x9c\x41data",  # empty listener host
    _record(LISTENER, PEER, b"")[:-1],  # peer port cut short
    b"\x01\x0a127.0.14.\xff\x13\xc4" + _record(LISTENER, PEER, b"")[14:],  # not ASCII
    _record(Endpoint("udp", "example.com", 5060), PEER, b"data"),  # a name, not an address
    b"\x02",  # probe: short
    b"\x02\x00\x02gwX",  # unknown result tag
    b"\x02\x00\x02gwT!",  # trailing bytes
    b"\x02\x00\x09gwT",  # gateway id longer than the record
    b"\x02\x00\x02\xff\xfeT",  # gateway id not UTF-8
    b"\x02\x00\x02gwR" + struct.pack(">HdBd", 200, 0.1, 2, 0.0),  # Retry-After flag 2
    b"\x02\x00\x02gwR" + struct.pack(">Hd", 200, 0.1),  # Replied fields cut short
    b"\x02\x00\x02gwF\x00\x09short",  # reason longer than the record
]


@BOTH_LOOPS
async def test_malformed_records_are_counted_and_dropped_and_the_link_goes_on() -> None:
    async with started() as pair:
        b = pair.links[1]
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as raw:
            raw.connect(b.address)
            for record in MALFORMED:
                raw.send(record)
            good = _record(LISTENER, PEER, b"INVITE sip:x SIP/2.0\r\n\r\n")
            raw.send(good)
            raw.send(b"\x02\x00\x02gwT")
            await until(lambda: len(pair.probes[1]) == 1)
        assert b.link_malformed == len(MALFORMED)
        assert pair.delivered[1] == [(b"INVITE sip:x SIP/2.0\r\n\r\n", PEER, LISTENER)]
        assert pair.probes[1] == [("gw", TimedOut())]
        assert (b.steered_in, b.probes_in) == (1, 1)


@BOTH_LOOPS
async def test_owner_not_listening_steer_fails_and_the_message_stays_here() -> None:
    pair = Links()
    a = pair.links[0]
    await a.start()  # worker 1 never starts (or is restarting)
    inner = RecordingSink()
    sink = SteeringSink(inner, a, shared=[LISTENER])
    try:
        sent = [data for data, owner in messages(0, 60) if owner == 1]
        for data in sent:
            sink.receive(data, PEER, LISTENER, 1.0)
        assert [m.data for m in inner.messages] == sent
        assert a.steer_failed == {"unreachable": len(sent), "queue_full": 0, "unencodable": 0}
        assert a.steered_out == 0
        assert a.broadcast_probe("gw", TimedOut()) == 0 and a.probes_failed == 1
    finally:
        a.close()


@BOTH_LOOPS
async def test_owner_not_reading_queue_full_fails_fast_then_everything_taken_arrives() -> None:
    async with started() as pair:
        a = pair.links[0]
        data = request(b"Call-ID: busy", 1, size=1024)
        taken = 0
        started_at = time.perf_counter()
        while a.steer(1, data + str(taken).encode(), PEER, LISTENER):  # no await: 1 never reads
            taken += 1
            assert taken < 100_000
        elapsed = time.perf_counter() - started_at
        assert a.steer_failed["queue_full"] == 1
        # Far deeper than an unconnected Unix datagram socket's 10 (module docstring).
        assert taken > 50
        assert elapsed < 2.0  # never blocked
        await until(lambda: len(pair.delivered[1]) == taken)
        assert [d for d, _, _ in pair.delivered[1]] == [
            data + str(n).encode() for n in range(taken)
        ]
        assert a.steer(1, data, PEER, LISTENER)  # drained: steering works again


@BOTH_LOOPS
async def test_restarted_owner_is_reached_again_by_the_next_steer() -> None:
    async with started() as pair:
        a, b = pair.links
        assert a.steer(1, b"before", PEER, LISTENER)
        await until(lambda: len(pair.delivered[1]) == 1)
        b.close()
        assert not a.steer(1, b"while down", PEER, LISTENER)
        restarted = pair.links[1] = pair.make(1)
        await restarted.start()  # the name is free again at once
        assert a.steer(1, b"after", PEER, LISTENER)
        await until(lambda: len(pair.delivered[1]) == 2)
        assert [d for d, _, _ in pair.delivered[1]] == [b"before", b"after"]
        assert a.steer_failed["unreachable"] == 1


@BOTH_LOOPS
async def test_link_name_taken_start_fails_and_links_start_once() -> None:
    async with started() as pair:
        twin = pair.make(1)
        with pytest.raises(TransportError) as info:
            await twin.start()
        assert info.value.reason is TransportErrorReason.BIND_FAILED
        twin.close()
        with pytest.raises(TransportError):
            await pair.links[0].start()
        pair.links[0].close()
        pair.links[0].close()  # idempotent
        assert not pair.links[0].steer(1, b"x", PEER, LISTENER)


@BOTH_LOOPS
async def test_steering_sink_steers_only_shared_datagrams_of_another_workers_call() -> None:
    async with started() as pair:
        a = pair.links[0]
        inner = RecordingSink(strangers=frozenset({"127.0.14.66"}))
        sink = SteeringSink(inner, a, shared=[LISTENER])
        sent = messages(0, 60)
        for data, _owner in sent:
            sink.receive(data, PEER, LISTENER, 1.0)
        mine = [d for d, owner in sent if owner in (0, None)]
        theirs = [d for d, owner in sent if owner == 1]
        assert mine and theirs
        assert [m.data for m in inner.messages] == mine
        await until(lambda: len(pair.delivered[1]) == len(theirs))
        assert pair.delivered[1] == [(d, PEER, LISTENER) for d in theirs]
        # A worker's own endpoint and stream connections are never steered.
        inner.messages.clear()
        for local in (OWN, Endpoint("tcp", SHARED_HOST, 5060)):
            for data in theirs:
                sink.receive(data, PEER, local, 2.0)
        assert len(inner.messages) == 2 * len(theirs)
        assert a.steered_out == len(theirs)
        # The rest of MessageSink goes straight through.
        sink.transport_error(PEER, 3.0)
        assert inner.errors == [PEER]
        assert sink.is_answerable(PEER, LISTENER, 3.0)
        assert not sink.is_answerable(Endpoint("udp", "127.0.14.66", 5060), LISTENER, 3.0)


def test_counters_start_at_zero_with_every_reason() -> None:
    links = WorkerLinks(group(), 0, 2, deliver=lambda *_: None, probe_result=lambda *_: None)
    assert links.steer_failed == dict.fromkeys(STEER_FAILURE_REASONS, 0)
    assert links.address == f"\0sipedge-{links.group}-0"
    with pytest.raises(ValueError):
        WorkerLinks(group(), 2, 2, deliver=lambda *_: None, probe_result=lambda *_: None)


@contextlib.contextmanager
def as_user(uid: int) -> Iterator[None]:
    """Act as another user for a moment (SO_PEERCRED records the euid at connect/listen)."""
    os.seteuid(uid)
    try:
        yield
    finally:
        os.seteuid(0)


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")


@needs_root
@BOTH_LOOPS
async def test_process_of_another_user_is_refused_both_ways() -> None:
    async with started() as pair:
        a, b = pair.links
        # A stranger sends a forged datagram "from" a gateway: refused, never delivered.
        with as_user(65534):
            stranger = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            stranger.connect(b.address)
        with stranger:
            stranger.send(_record(LISTENER, PEER, b"INVITE forged"))
            await until(lambda: b.link_refused == 1)
        assert pair.delivered[1] == [] and b.link_malformed == 0
        # A stranger squats the name of a worker that is down: nothing is sent to it.
        b.close()
        with as_user(65534):
            squatter = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            squatter.bind(b.address)
            squatter.listen()
        with squatter:
            assert not a.steer(1, b"INVITE secret", PEER, LISTENER)
            assert a.link_refused == 1 and a.steer_failed["unreachable"] == 1
            conn, _ = squatter.accept()  # our connect, closed unused once seen
            with conn:
                assert conn.recv(100) == b""


# -- two worker processes sharing one UDP socket ---------------------------------------


class Worker:
    """A ``tests.helpers.steer_worker`` process, spoken to in JSON lines."""

    def __init__(self, group: str, index: int, shared: socket.socket, loop: str) -> None:
        host, port = shared.getsockname()
        self.index = index
        self.proc = subprocess.Popen(
            [sys.executable, "-bb", "-W", "error", "-m", "tests.helpers.steer_worker",
             "--group", group, "--index", str(index), "--count", "2",
             "--fd", str(shared.fileno()), "--listener", f"udp:{host}:{port}", "--loop", loop],
            cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            pass_fds=(shared.fileno(),),
        )
        self._buffer = b""
        assert self._answer() == {"ready": index}

    def _answer(self, timeout_s: float = 20.0) -> Any:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.proc.stdout], [], [], max(left, 0))
            assert ready, f"worker {self.index} did not answer"
            chunk = os.read(self.proc.stdout.fileno(), 1 << 20)
            assert chunk, f"worker {self.index} exited: {self.proc.wait()}"
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def ask(self, **command: Any) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command).encode() + b"\n")
        self.proc.stdin.flush()
        return self._answer()

    def report(self) -> dict[str, Any]:
        answer: dict[str, Any] = self.ask(cmd="report")
        return answer

    def pause(self) -> None:
        """SIGSTOP, and wait until it is stopped (from then on it reads nothing)."""
        self.proc.send_signal(signal.SIGSTOP)
        stat = Path(f"/proc/{self.proc.pid}/stat")
        deadline = time.monotonic() + 5
        while stat.read_text().rsplit(")", 1)[1].split()[0] != "T":
            assert time.monotonic() < deadline
            time.sleep(0.001)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> int:
        """Ask it to quit (killing it after 10 s); its exit status."""
        if self.proc.poll() is None:
            self.resume()
            assert self.proc.stdin is not None
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.write(b'{"cmd": "quit"}\n')
                self.proc.stdin.flush()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()
        return self.proc.returncode


class Clients:
    """Three PBX-like sources sending to the shared listener."""

    def __init__(self, shared: socket.socket) -> None:
        self.dest = shared.getsockname()
        self.socks = []
        for host in CLIENT_HOSTS:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((host, 0))
            self.socks.append(sock)

    def send(self, batch: list[tuple[bytes, int | None]]) -> dict[bytes, tuple[str, int | None]]:
        """Send each message from one of the sources: data → (peer, owner)."""
        sent = {}
        for n, (data, owner) in enumerate(batch):
            sock = self.socks[n % len(self.socks)]
            sock.sendto(data, self.dest)
            host, port = sock.getsockname()
            sent[data] = (f"udp:{host}:{port}", owner)
        return sent

    def close(self) -> None:
        for sock in self.socks:
            sock.close()


def wait_batch(workers: list[Worker], batch: dict[bytes, Any]) -> list[dict[str, Any]]:
    """The workers' reports once every datagram of ``batch`` was delivered somewhere."""
    deadline = time.monotonic() + 10
    while True:
        reports = [worker.report() for worker in workers]
        got = {bytes.fromhex(m[0]) for report in reports for m in report["messages"]}
        if set(batch) <= got or time.monotonic() > deadline:
            return reports
        time.sleep(0.02)


def check_exactly_once(
    reports: list[dict[str, Any]],
    batch: dict[bytes, tuple[str, int | None]],
    local: str,
    indices: list[int],
) -> dict[bytes, tuple[int, str]]:
    """Every datagram of ``batch`` delivered once, byte-exact, with its peer and listener.

    Returns:
        data → (the worker it was delivered to, ``"read"`` or ``"steered"``).
    """
    seen: dict[bytes, tuple[int, str]] = {}
    for index, report in zip(indices, reports, strict=True):
        for data_hex, peer, got_local, how in report["messages"]:
            data = bytes.fromhex(data_hex)
            if data not in batch:
                continue  # an earlier phase's
            assert data not in seen, "delivered twice"
            seen[data] = (index, how)
            assert (peer, got_local) == (batch[data][0], local)
    assert set(seen) == set(batch), f"lost {len(set(batch) - set(seen))}"
    return seen


@pytest.mark.parametrize("loop", list(loop_factories()))
def test_two_worker_processes_each_datagram_once_to_its_owner(loop: str) -> None:
    shared = bind_shared(Endpoint("udp", SHARED_HOST, 0))
    host, port = shared.getsockname()
    local = f"udp:{host}:{port}"
    name = group()
    clients = Clients(shared)
    workers: list[Worker] = []
    first = 0

    def batch(count: int) -> dict[bytes, tuple[str, int | None]]:
        nonlocal first
        first += count
        return clients.send(messages(first - count, count))

    try:
        workers = [Worker(name, 0, shared, loop), Worker(name, 1, shared, loop)]

        # 1. Both reading: whoever reads a datagram hands it to the owner of its Call-ID.
        sent = batch(60)
        seen = check_exactly_once(wait_batch(workers, sent), sent, local, [0, 1])
        for data, (index, _how) in seen.items():
            assert sent[data][1] in (None, index)

        # 2, 3. One worker stalled (a GC pause, a slow burst): the other reads every
        # datagram and queues the stalled one's on its link; nothing is lost.
        for stalled in (1, 0):
            workers[stalled].pause()
            sent = batch(60)
            time.sleep(0.2)
            workers[stalled].resume()
            seen = check_exactly_once(wait_batch(workers, sent), sent, local, [0, 1])
            for data, got in seen.items():
                owner = sent[data][1]
                assert got == ((stalled, "steered") if owner == stalled else (1 - stalled, "read"))

        reports = [worker.report() for worker in workers]
        for report in reports:
            counters = report["counters"]
            assert counters["link_malformed"] == counters["link_refused"] == 0
            assert sum(counters["steer_failed"].values()) == 0
        steered = sum(1 for r in reports for m in r["messages"] if m[3] == "steered")
        assert steered > 0
        assert sum(r["counters"]["steered_out"] for r in reports) == steered
        assert sum(r["counters"]["steered_in"] for r in reports) == steered

        # 4. Worker 1 down: worker 0 keeps worker 1's calls (the steer fails at once).
        assert workers[1].stop() == 0
        sent = batch(40)
        (report,) = wait_batch(workers[:1], sent)
        seen = check_exactly_once([report], sent, local, [0])
        assert set(seen.values()) == {(0, "read")}
        orphans = sum(1 for _peer, owner in sent.values() if owner == 1)
        assert orphans and report["counters"]["steer_failed"]["unreachable"] == orphans

        # 5. Worker 1 restarted (stalled at first): steering to it resumes.
        workers[1] = Worker(name, 1, shared, loop)
        workers[1].pause()
        sent = batch(40)
        time.sleep(0.2)
        workers[1].resume()
        seen = check_exactly_once(wait_batch(workers, sent), sent, local, [0, 1])
        for data, got in seen.items():
            assert got == ((1, "steered") if sent[data][1] == 1 else (0, "read"))

        # 6. Probe results cross processes and decode equal.
        for gateway_id, result in PROBES:
            answer = workers[0].ask(cmd="probe", gateway=gateway_id, result=result_to_json(result))
            assert answer == {"reached": 1}
        deadline = time.monotonic() + 10
        while len(workers[1].report()["probes"]) < len(PROBES) and time.monotonic() < deadline:
            time.sleep(0.02)
        probes = workers[1].report()["probes"]
        assert [(g, result_from_json(r)) for g, r in probes] == PROBES
        assert [worker.stop() for worker in workers] == [0, 0]
    finally:
        for worker in workers:
            worker.stop()
        clients.close()
        shared.close()


def test_steer_imports_nothing_above_the_transport_layer() -> None:
    from tests.test_layering import PKG, imported_modules

    allowed = ("sipedge.sip", "sipedge.gateway.probe", "sipedge.proxy.steering",
               "sipedge.transport.base", "sipedge.logs")
    ours = {n for n in imported_modules(PKG / "transport" / "steer.py") if n.startswith("sipedge")}
    assert ours and all(n.startswith(allowed) for n in ours), sorted(ours)
