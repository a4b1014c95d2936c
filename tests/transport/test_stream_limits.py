"""Resource caps on the stream transports (issue 13): caps, slowloris deadlines, sizes.

Real loopback sockets on 127.0.11.0/24 only (ephemeral ports), a recording sink, and
shrunk deadlines. Time is asserted only with generous bounds: a close must come within
a few seconds after its deadline, and never before it — the client's clock starts
before it connects, so the server's deadline (from its accept, or from the first byte
it read) cannot have started earlier.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import cast

import pytest

from sipedge.config import parse_config
from sipedge.daemon import build_core
from sipedge.sip.address import Endpoint
from sipedge.transport import StreamCloseReason, StreamSettings, Transports
from sipedge.transport.driver import CoreDriver
from sipedge.transport.tcp import StreamTable
from tests.transport.conftest import RecordingSink, free_port, sip_request, until

SERVER = "127.0.11.1"
CLIENT_A = "127.0.11.2"
CLIENT_B = "127.0.11.3"
CLIENT_C = "127.0.11.4"
#: Source addresses the burst is spread over (50 connections each, under the default cap).
BURST_HOSTS = [f"127.0.11.{i}" for i in range(10, 20)]

R = StreamCloseReason
#: Generous upper bound for "closed soon after its deadline" on a loaded CI box.
SLACK_S = 3.0


class Server:
    """A StreamTable listening on SERVER, with its sink; closed by ``aclose``.

    ``strangers``: client hosts the sink says not to answer (the core's ACL stand-in).
    """

    def __init__(self, settings: StreamSettings, strangers: frozenset[str] = frozenset()) -> None:
        self.sink = RecordingSink(strangers=strangers)
        self.table = StreamTable(self.sink, asyncio.get_running_loop(), settings)
        self.local = Endpoint("tcp", SERVER, 0)

    async def start(self) -> Server:
        self.local = await self.table.listen(Endpoint("tcp", SERVER, 0))
        return self

    async def aclose(self) -> None:
        self.table.close()
        await self.table.wait_closed()

    def closes(self) -> dict[str, int]:
        """The non-zero counters, by reason name (for readable assertions)."""
        return {r.name: n for r, n in self.table.closes.items() if n}


async def _connect(
    server: Endpoint, host: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(server.host, server.port, local_addr=(host, 0))


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def _read_to_close(reader: asyncio.StreamReader, timeout_s: float) -> bytes:
    """Everything the server sends until it closes (FIN or RST)."""
    got = b""
    with contextlib.suppress(ConnectionError):
        while chunk := await asyncio.wait_for(reader.read(65536), timeout_s):
            got += chunk
    return got


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class _Attacker(asyncio.Protocol):
    """A slowloris client as a bare protocol: cheap enough that 500 of them sharing the
    server's loop do not starve it (stream coroutines per connection did, under load).

    With a payload it writes the first byte in ``connection_made`` and then one byte
    every 0.2 s (a trickler); without one it never writes (idle). ``closed`` resolves
    with ``loop.time()`` when the server closed it (FIN or RST); the transport is then
    closed by asyncio, so the client's descriptor goes too.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, payload: bytes) -> None:
        self.loop = loop
        self.payload = payload
        self.sent = 0
        self.received = b""
        self.transport: asyncio.Transport | None = None
        self.handle: asyncio.TimerHandle | None = None
        self.closed: asyncio.Future[float] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if self.payload:
            self._drip()

    def _drip(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(self.payload[self.sent : self.sent + 1])
        self.sent += 1
        if self.sent < len(self.payload):
            self.handle = self.loop.call_later(0.2, self._drip)

    def data_received(self, data: bytes) -> None:
        self.received += data

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.handle is not None:
            self.handle.cancel()
        if not self.closed.done():
            self.closed.set_result(self.loop.time())


# -- connection caps ------------------------------------------------------------------


async def test_per_ip_cap_refuses_next_from_that_ip_while_other_ip_admitted() -> None:
    srv = await Server(StreamSettings(max_connections_per_ip=2)).start()
    try:
        a1 = await _connect(srv.local, CLIENT_A)
        a2 = await _connect(srv.local, CLIENT_A)
        await until(lambda: srv.table.connections_from(CLIENT_A) == 2)
        r3, w3 = await _connect(srv.local, CLIENT_A)  # the N+1th from A
        assert await _read_to_close(r3, SLACK_S) == b""
        b1 = await _connect(srv.local, CLIENT_B)  # another address is still admitted
        b1[1].write(sip_request(1))
        await until(lambda: len(srv.sink.messages) == 1)
        assert srv.sink.messages[0].peer.host == CLIENT_B
        assert srv.table.connections_from(CLIENT_A) == 2
        assert srv.table.refused_per_ip == 1 and srv.table.refused_total == 1
        assert srv.closes() == {"PER_IP_LIMIT": 1}
        # A slot freed by A comes back to A.
        await _close(a1[1])
        await until(lambda: srv.table.connections_from(CLIENT_A) == 1)
        a4 = await _connect(srv.local, CLIENT_A)
        await until(lambda: srv.table.connections_from(CLIENT_A) == 2)
        assert srv.table.refused_per_ip == 1
        for _, w in (a2, b1, a4):
            await _close(w)
        await _close(w3)
        await until(lambda: not srv.table.connections)
        assert srv.table.connections_from(CLIENT_A) == srv.table.connections_from(CLIENT_B) == 0
    finally:
        await srv.aclose()


async def test_total_cap_refuses_any_ip_and_counts() -> None:
    srv = await Server(StreamSettings(max_connections=2)).start()
    try:
        _, wa = await _connect(srv.local, CLIENT_A)
        _, wb = await _connect(srv.local, CLIENT_B)
        await until(lambda: len(srv.table.connections) == 2)
        rc, wc = await _connect(srv.local, CLIENT_C)  # a fresh address: total cap applies
        assert await _read_to_close(rc, SLACK_S) == b""
        assert srv.closes() == {"TOTAL_LIMIT": 1}
        assert srv.table.refused_total == 1 and srv.table.refused_per_ip == 0
        assert srv.table.connections_from(CLIENT_C) == 0
        for w in (wa, wb, wc):
            await _close(w)
    finally:
        await srv.aclose()


# -- slowloris ------------------------------------------------------------------------


async def test_connection_that_never_sends_closed_after_first_byte_deadline() -> None:
    srv = await Server(StreamSettings(first_byte_timeout_s=0.3)).start()
    loop = asyncio.get_running_loop()
    try:
        start = loop.time()
        reader, writer = await _connect(srv.local, CLIENT_A)
        assert await _read_to_close(reader, SLACK_S) == b""
        elapsed = loop.time() - start
        assert 0.3 <= elapsed < 0.3 + SLACK_S
        await until(lambda: not srv.table.connections)
        assert srv.closes() == {"FIRST_BYTE_TIMEOUT": 1}
        assert srv.sink.errors == []  # it never sent anything: nothing for the core
        await _close(writer)
    finally:
        await srv.aclose()


async def test_trickling_sender_closed_at_message_deadline() -> None:
    settings = StreamSettings(first_byte_timeout_s=0.5, message_timeout_s=1.0)
    srv = await Server(settings).start()
    loop = asyncio.get_running_loop()
    try:
        reader, writer = await _connect(srv.local, CLIENT_A)
        message = sip_request(7)

        async def trickle() -> int:
            sent = 0
            with contextlib.suppress(ConnectionError):
                for byte in message:  # one byte every 0.2 s: last_activity stays fresh
                    writer.write(bytes([byte]))
                    await writer.drain()
                    sent += 1
                    await asyncio.sleep(0.2)
            return sent

        start = loop.time()
        sender = asyncio.create_task(trickle())
        assert await _read_to_close(reader, 1.0 + SLACK_S) == b""
        elapsed = loop.time() - start
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        assert 1.0 <= elapsed < 1.0 + SLACK_S  # not the idle timeout (600 s) nor 0.5 s
        await until(lambda: not srv.table.connections)
        assert srv.closes() == {"MESSAGE_TIMEOUT": 1}
        assert srv.sink.messages == []
        await until(lambda: len(srv.sink.errors) == 1)  # it had begun a message
        await _close(writer)
    finally:
        await srv.aclose()


async def test_keepalive_connection_with_pauses_between_messages_not_closed() -> None:
    # Pauses longer than both deadlines, but only *between* messages (and pings).
    settings = StreamSettings(first_byte_timeout_s=0.3, message_timeout_s=0.5)
    srv = await Server(settings).start()
    try:
        reader, writer = await _connect(srv.local, CLIENT_A)
        await asyncio.sleep(0.1)
        writer.write(sip_request(1))
        await asyncio.sleep(0.8)
        writer.write(b"\r\n\r\n")  # RFC 5626 ping: not a message
        assert await asyncio.wait_for(reader.readexactly(2), SLACK_S) == b"\r\n"
        await asyncio.sleep(0.8)
        second = sip_request(2, body=b"v=0\r\n")
        writer.write(second[:40])  # a message in two parts, well within its deadline
        await asyncio.sleep(0.1)
        writer.write(second[40:] + sip_request(3))
        await asyncio.sleep(0.8)
        writer.write(b"\r\n")  # a lone CRLF keep-alive, then quiet again
        await asyncio.sleep(0.8)
        await until(lambda: len(srv.sink.messages) == 3)
        assert [m.data for m in srv.sink.messages] == [sip_request(1), second, sip_request(3)]
        assert len(srv.table.connections) == 1
        assert srv.closes() == {}
        # Still usable both ways.
        peer = srv.sink.messages[0].peer
        ok = b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n"
        srv.table.send(ok, peer, srv.local)
        assert await asyncio.wait_for(reader.readexactly(len(ok)), SLACK_S) == ok
        await _close(writer)
    finally:
        await srv.aclose()


# -- sizes ----------------------------------------------------------------------------


async def test_oversized_request_answered_513_then_closed() -> None:
    srv = await Server(StreamSettings(max_message=1024)).start()
    try:
        reader, writer = await _connect(srv.local, CLIENT_A)
        head = sip_request(9, method=b"INVITE").replace(
            b"Content-Length: 0", b"Content-Length: 5000"
        )
        writer.write(head + b"v=0\r\n" * 20)  # and it starts a body it will not finish
        got = await _read_to_close(reader, SLACK_S)
        status, _, rest = got.partition(b"\r\n")
        assert status == b"SIP/2.0 513 Message Too Large"
        assert b"Via: SIP/2.0/TCP 127.0.0.200:5060;branch=z9hG4bK9\r\n" in rest
        assert b"Call-ID: call-9\r\n" in rest and b"CSeq: 9 INVITE\r\n" in rest
        assert b"To: <sip:gw@127.0.0.201>;tag=" in rest
        assert rest.endswith(b"Content-Length: 0\r\n\r\n")
        await until(lambda: not srv.table.connections)
        assert srv.closes() == {"TOO_LARGE": 1}
        assert srv.sink.messages == []
        await _close(writer)
    finally:
        await srv.aclose()


def _oversized_invite(n: int) -> bytes:
    """An INVITE head announcing 5000 body bytes, and the start of that body."""
    head = sip_request(n, method=b"INVITE").replace(b"Content-Length: 0", b"Content-Length: 5000")
    return head + b"v=0\r\n" * 20


async def test_oversized_request_from_stranger_closed_without_a_byte() -> None:
    # CLIENT_B is not to be answered (a stranger under reject_unknown = "drop"); CLIENT_A
    # is, on the same listener, with the same request.
    srv = await Server(StreamSettings(max_message=1024), strangers=frozenset({CLIENT_B})).start()
    try:
        reader_b, writer_b = await _connect(srv.local, CLIENT_B)
        writer_b.write(_oversized_invite(9))
        assert await _read_to_close(reader_b, SLACK_S) == b""
        await until(lambda: not srv.table.connections)
        assert srv.closes() == {"TOO_LARGE_DROPPED": 1}
        reader_a, writer_a = await _connect(srv.local, CLIENT_A)
        writer_a.write(_oversized_invite(10))
        got = await _read_to_close(reader_a, SLACK_S)
        assert got.startswith(b"SIP/2.0 513 Message Too Large\r\n")
        await until(lambda: not srv.table.connections)
        assert srv.closes() == {"TOO_LARGE_DROPPED": 1, "TOO_LARGE": 1}
        assert srv.sink.messages == []
        for w in (writer_a, writer_b):
            await _close(w)
    finally:
        await srv.aclose()


def _proxy_config(inside: Endpoint, reject_unknown: str) -> str:
    """A config whose inside listener is ``inside`` (TCP, on 127.0.11.0/24), allowing
    CLIENT_A only; the outside and the gateway are never bound or reached here."""
    return (
        f'[inside]\nlisten = ["{inside}"]\nallow = ["{CLIENT_A}/32"]\n'
        'pbx = "127.0.11.10:5060"\n'
        '[outside]\nlisten = ["tcp:127.0.11.5:5060"]\ndomain = "example"\n'
        '[[edges]]\nname = "ashburn-ix"\ngateways = ["127.0.11.64"]\n'
        f'[inbound]\nreject_unknown = "{reject_unknown}"\n'
    )


@pytest.mark.parametrize(
    ("reject_unknown", "stranger_answered"), [("drop", False), ("403", True)],
)
async def test_oversized_request_answered_as_the_core_decides(
    reject_unknown: str, stranger_answered: bool
) -> None:
    """The real ProxyCore behind the driver: the allowed PBX gets 513 and a close; a
    stranger gets what ``reject_unknown`` says (drop: a close, not a byte; 403: the
    core answers a stranger's malformed requests, so the 513), a gateway on the
    inside listener (the wrong side) nothing."""
    loop = asyncio.get_running_loop()
    inside = Endpoint("tcp", SERVER, free_port(SERVER))
    core = build_core(parse_config(_proxy_config(inside, reject_unknown)), loop.time())
    driver = CoreDriver(core, loop, lambda _event: None)
    async with Transports(driver, settings=StreamSettings(max_message=1024)) as t:
        driver.attach(t)
        assert await t.start([inside]) == [inside]
        answers = {}
        for host in (CLIENT_A, CLIENT_B, "127.0.11.64"):
            reader, writer = await _connect(inside, host)
            writer.write(_oversized_invite(11))
            answers[host] = (await _read_to_close(reader, SLACK_S)).split(b"\r\n", 1)[0]
            await _close(writer)
        await until(lambda: t.connection_count == 0)
        closes = {r.value: n for r, n in t.stream_closes.items() if n}
    driver.close()
    status = b"SIP/2.0 513 Message Too Large"
    assert answers == {CLIENT_A: status, CLIENT_B: status if stranger_answered else b"",
                       "127.0.11.64": b""}
    assert closes == ({"too_large": 2, "too_large_dropped": 1} if stranger_answered
                      else {"too_large": 1, "too_large_dropped": 2})
    assert driver.internal_errors == 0
    assert core.stats.requests_received == 0  # none of them was read


async def test_oversized_response_closed_without_answer() -> None:
    srv = await Server(StreamSettings(max_message=1024)).start()
    try:
        reader, writer = await _connect(srv.local, CLIENT_A)
        writer.write(
            b"SIP/2.0 200 OK\r\nVia: SIP/2.0/TCP 127.0.11.1;branch=z9hG4bKx\r\n"
            b"Call-ID: c\r\nContent-Length: 99999\r\n\r\n"
        )
        assert await _read_to_close(reader, SLACK_S) == b""  # never answer a response
        assert srv.closes() == {"TOO_LARGE": 1}
        await _close(writer)
    finally:
        await srv.aclose()


async def test_header_block_without_end_beyond_max_closed() -> None:
    srv = await Server(StreamSettings(max_message=1024)).start()
    try:
        reader, writer = await _connect(srv.local, CLIENT_A)
        writer.write(b"OPTIONS sip:gw@127.0.11.1 SIP/2.0\r\n")
        with contextlib.suppress(ConnectionError):
            for i in range(200):  # 8 KB of header lines, never a CRLF CRLF
                writer.write(b"X-Pad-%03d: %s\r\n" % (i, b"a" * 28))
                await writer.drain()
        assert await _read_to_close(reader, SLACK_S) == b""  # nothing to address a 513 to
        await until(lambda: not srv.table.connections)
        assert srv.closes() == {"HEADERS_TOO_LARGE": 1}
        await _close(writer)
    finally:
        await srv.aclose()


async def test_closes_counted_by_reason_through_transports() -> None:
    settings = StreamSettings(
        max_connections_per_ip=1, first_byte_timeout_s=0.2, message_timeout_s=0.4,
        max_message=512,
    )
    async with Transports(RecordingSink(), settings=settings) as t:
        assert set(t.stream_closes) == set(StreamCloseReason)
        assert not any(t.stream_closes.values())
        (local,) = await t.start([Endpoint("tcp", SERVER, 0)])
        silent = await _connect(local, CLIENT_A)  # FIRST_BYTE_TIMEOUT
        refused = await _connect(local, CLIENT_A)  # PER_IP_LIMIT (A holds its one slot)
        assert await _read_to_close(refused[0], SLACK_S) == b""
        stalled = await _connect(local, CLIENT_B)  # MESSAGE_TIMEOUT
        stalled[1].write(b"OPTIONS sip:x SIP/2.0\r\n")
        bad = await _connect(local, CLIENT_C)  # FRAMING_ERROR
        bad[1].write(b"OPTIONS sip:x SIP/2.0\r\nContent-Length: many\r\n\r\n")
        for reader, _ in (silent, stalled, bad):
            assert await _read_to_close(reader, SLACK_S) == b""
        await until(lambda: t.connection_count == 0)
        big = await _connect(local, CLIENT_A)  # TOO_LARGE
        big[1].write(sip_request(1).replace(b"Content-Length: 0", b"Content-Length: 999"))
        assert (await _read_to_close(big[0], SLACK_S)).startswith(b"SIP/2.0 513 ")
        counts = {r.name: n for r, n in t.stream_closes.items() if n}
        assert counts == {
            "FIRST_BYTE_TIMEOUT": 1, "PER_IP_LIMIT": 1, "MESSAGE_TIMEOUT": 1,
            "FRAMING_ERROR": 1, "TOO_LARGE": 1,
        }
        for _, w in (silent, refused, stalled, bad, big):
            await _close(w)


# -- the burst: descriptors come back -------------------------------------------------


async def test_burst_of_slowloris_connections_all_closed_fds_back_normal_client_served() -> None:
    settings = StreamSettings(first_byte_timeout_s=0.5, message_timeout_s=1.0)
    srv = await Server(settings).start()
    loop = asyncio.get_running_loop()
    n_trickle, n_idle = 300, 200
    try:
        baseline = _fds()
        # A normal client on the same listener, sending whole messages all along.
        normal_r, normal_w = await _connect(srv.local, CLIENT_A)
        stop = asyncio.Event()

        async def normal() -> int:
            n = 0
            while not stop.is_set():
                n += 1
                normal_w.write(sip_request(n))
                await normal_w.drain()
                await asyncio.sleep(0.05)
            return n

        async def attacker(i: int, trickle: bool) -> float:
            start = loop.time()  # before connecting: a sound lower bound (module docstring)
            proto = _Attacker(loop, sip_request(10_000 + i) if trickle else b"")
            await loop.create_connection(
                lambda: proto, srv.local.host, srv.local.port,
                local_addr=(BURST_HOSTS[i % len(BURST_HOSTS)], 0),
            )
            closed_at = await asyncio.wait_for(proto.closed, 10.0)
            assert proto.received == b""
            return closed_at - start

        normal_task = asyncio.create_task(normal())
        attacks = [attacker(i, True) for i in range(n_trickle)]
        attacks += [attacker(n_trickle + i, False) for i in range(n_idle)]
        started = loop.time()
        lifetimes = await asyncio.wait_for(asyncio.gather(*attacks), 20.0)
        burst_s = loop.time() - started
        stop.set()
        sent = await normal_task
        trickled, idled = lifetimes[:n_trickle], lifetimes[n_trickle:]
        figures = (min(trickled), max(trickled), min(idled), max(idled), baseline)
        assert min(trickled) >= 1.0 and max(trickled) < 1.0 + SLACK_S, figures
        assert min(idled) >= 0.5 and max(idled) < 0.5 + SLACK_S, figures
        assert burst_s < 10.0
        assert srv.table.closes[R.MESSAGE_TIMEOUT] == n_trickle, (srv.closes(), figures)
        assert srv.table.closes[R.FIRST_BYTE_TIMEOUT] == n_idle
        assert srv.table.refused_total == 0
        # The normal client got every message through, and is still connected.
        await until(lambda: len(srv.sink.messages) == sent)
        assert [m.data for m in srv.sink.messages] == [sip_request(n) for n in range(1, sent + 1)]
        assert sent >= 20
        assert list(srv.table.connections) == [srv.sink.messages[0].peer]
        assert all(srv.table.connections_from(h) == 0 for h in BURST_HOSTS)
        await _close(normal_w)
        del normal_r
        await until(lambda: not srv.table.connections and _fds() == baseline, 5.0)
    finally:
        await srv.aclose()


# -- the production loop ----------------------------------------------------------------


def test_deadlines_and_513_under_uvloop() -> None:
    """The same closes on uvloop's transports (the production loop on Linux)."""
    pytest.importorskip("uvloop")
    from sipedge.transport import run

    async def scenario() -> None:
        await test_connection_that_never_sends_closed_after_first_byte_deadline()
        await test_trickling_sender_closed_at_message_deadline()
        await test_oversized_request_answered_513_then_closed()
        await test_oversized_request_from_stranger_closed_without_a_byte()
        await test_oversized_request_answered_as_the_core_decides("drop", False)
        await test_per_ip_cap_refuses_next_from_that_ip_while_other_ip_admitted()

    run(scenario())
