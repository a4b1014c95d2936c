"""TCP transport: framing, keep-alives, connection reuse, failures, reaping — real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from typing import cast

import pytest

from sipedge.sip.address import Endpoint
from sipedge.transport import StreamSettings, Transports
from tests.transport.conftest import (
    HOST_A,
    HOST_B,
    HOST_C,
    HOST_NOBODY,
    RecordingSink,
    free_port,
    sip_request,
    until,
)


async def _client(
    server: Endpoint, host: str = HOST_C
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, Endpoint]:
    reader, writer = await asyncio.open_connection(server.host, server.port, local_addr=(host, 0))
    ip, port = writer.get_extra_info("sockname")[:2]
    return reader, writer, Endpoint("tcp", ip, port)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def test_tcp_framing_across_split_writes() -> None:
    sink = RecordingSink()
    message = sip_request(1, body=b"v=0\r\no=- 1 1 IN IP4 127.0.0.202\r\n")
    async with Transports(sink) as t:
        (local,) = await t.start([Endpoint("tcp", HOST_B, 0)])
        _, writer, me = await _client(local)
        for chunk in (message[:10], message[10:90], message[90:-3], message[-3:]):
            writer.write(chunk)
            await writer.drain()
            await asyncio.sleep(0.01)
        await until(lambda: len(sink.messages) == 1)
        got = sink.messages[0]
        assert (got.data, got.peer, got.local) == (message, me, local)
        await _close(writer)


async def test_tcp_pipelined_messages_delivered_in_order() -> None:
    sink = RecordingSink()
    async with Transports(sink) as t:
        (local,) = await t.start([Endpoint("tcp", HOST_B, 0)])
        _, writer, _ = await _client(local)
        writer.write(sip_request(1) + sip_request(2, body=b"abc") + sip_request(3))
        await until(lambda: len(sink.messages) == 3)
        assert [m.data for m in sink.messages] == [
            sip_request(1),
            sip_request(2, body=b"abc"),
            sip_request(3),
        ]
        await _close(writer)


async def test_tcp_double_crlf_ping_answered_with_single_crlf() -> None:
    async with Transports(RecordingSink()) as t:
        (local,) = await t.start([Endpoint("tcp", HOST_B, 0)])
        reader, writer, _ = await _client(local)
        writer.write(b"\r\n\r\n")  # RFC 5626 §4.4.1 ping
        assert await asyncio.wait_for(reader.readexactly(2), 2) == b"\r\n"
        # A second ping gets exactly one more pong; a request afterwards gets none.
        writer.write(b"\r\n\r\n")
        assert await asyncio.wait_for(reader.readexactly(2), 2) == b"\r\n"
        writer.write(sip_request(1))
        await until(lambda: t.connection_count == 1)
        await asyncio.sleep(0.05)
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 2) == b""
        await _close(writer)


async def test_tcp_response_goes_back_over_inbound_connection() -> None:
    sink = RecordingSink()
    async with Transports(sink) as t:
        (local,) = await t.start([Endpoint("tcp", HOST_B, 0)])
        reader, writer, _ = await _client(local)
        writer.write(sip_request(1))
        await until(lambda: len(sink.messages) == 1)
        response = b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n"
        t.send(response, sink.messages[0].peer, sink.messages[0].local)
        assert await asyncio.wait_for(reader.readexactly(len(response)), 2) == response
        assert t.connection_count == 1
        assert sink.errors == []
        await _close(writer)


async def test_tcp_outbound_connection_reused_and_bound_to_local_host() -> None:
    sink_a, sink_b = RecordingSink(), RecordingSink()
    async with Transports(sink_a) as a, Transports(sink_b) as b:
        (local_a,) = await a.start([Endpoint("tcp", HOST_A, 0)])
        (local_b,) = await b.start([Endpoint("tcp", HOST_B, 0)])
        # Both sends happen before the connection exists: queued in order, one connection.
        a.send(sip_request(1), local_b, local_a)
        a.send(sip_request(2), local_b, local_a)
        await until(lambda: len(sink_b.messages) == 2)
        a.send(sip_request(3), local_b, local_a)
        await until(lambda: len(sink_b.messages) == 3)
        assert [m.data for m in sink_b.messages] == [sip_request(i) for i in (1, 2, 3)]
        peers = {m.peer for m in sink_b.messages}
        assert len(peers) == 1
        (peer,) = peers
        assert peer.host == HOST_A and peer.port != local_a.port  # ephemeral source port
        assert a.connection_count == b.connection_count == 1

        # B answers over the same connection; A sees it from the destination it used.
        b.send(b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n", peer, local_b)
        await until(lambda: len(sink_a.messages) == 1)
        assert sink_a.messages[0].peer == local_b
        assert sink_a.messages[0].local == local_a
        assert sink_a.errors == sink_b.errors == []


async def test_tcp_connect_refused_reports_transport_error() -> None:
    sink = RecordingSink()
    async with Transports(sink) as t:
        (local,) = await t.start([Endpoint("tcp", HOST_A, 0)])
        dest = Endpoint("tcp", HOST_NOBODY, free_port(HOST_NOBODY))
        t.send(sip_request(1), dest, local)
        await until(lambda: sink.errors == [dest])
        assert t.connection_count == 0


async def test_tcp_idle_connection_reaped() -> None:
    settings = StreamSettings(idle_timeout_s=0.2)
    async with Transports(RecordingSink(), settings=settings) as t:
        (local,) = await t.start([Endpoint("tcp", HOST_B, 0)])
        reader, writer, _ = await _client(local)
        await until(lambda: t.connection_count == 1)
        assert await asyncio.wait_for(reader.read(), 2) == b""  # closed by the reaper
        assert t.connection_count == 0
        await _close(writer)


async def test_tcp_framing_error_closes_connection() -> None:
    sink = RecordingSink()
    async with Transports(sink) as t:
        (local,) = await t.start([Endpoint("tcp", HOST_B, 0)])
        reader, writer, _ = await _client(local)
        writer.write(b"OPTIONS sip:x SIP/2.0\r\nContent-Length: many\r\n\r\n")
        assert await asyncio.wait_for(reader.read(), 2) == b""
        await until(lambda: t.connection_count == 0)
        assert sink.messages == []
        await _close(writer)


async def test_tcp_reset_reports_transport_error() -> None:
    sink = RecordingSink()
    async with Transports(sink) as t:
        (local,) = await t.start([Endpoint("tcp", HOST_B, 0)])
        _, writer, me = await _client(local)
        await until(lambda: t.connection_count == 1)
        sock = writer.get_extra_info("socket")
        # SO_LINGER 0: close() sends RST instead of FIN.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
        await until(lambda: sink.errors == [me])
        assert t.connection_count == 0


async def test_tcp_connection_cap_refuses_extra_inbound() -> None:
    settings = StreamSettings(max_connections=1)
    sink = RecordingSink()
    async with Transports(sink, settings=settings) as t:
        (local,) = await t.start([Endpoint("tcp", HOST_B, 0)])
        _, w1, _ = await _client(local)
        await until(lambda: t.connection_count == 1)
        r2, w2, _ = await _client(local, HOST_A)
        assert await asyncio.wait_for(r2.read(), 2) == b""
        assert t.connection_count == 1
        # The cap applies to outbound connections too.
        dest = Endpoint("tcp", HOST_NOBODY, 5060)
        t.send(b"x", dest, local)
        await until(lambda: sink.errors == [dest])
        await _close(w1)
        await _close(w2)


async def test_tcp_peer_not_reading_is_aborted_and_reported() -> None:
    sink = RecordingSink()
    settings = StreamSettings(write_high_water=16 * 1024, write_hard_limit=256 * 1024)
    async with Transports(sink, settings=settings) as t:
        (local,) = await t.start([Endpoint("tcp", HOST_B, 0)])
        _, writer, me = await _client(local)
        cast(asyncio.Transport, writer.transport).pause_reading()  # a peer that stopped reading
        await until(lambda: t.connection_count == 1)
        chunk = b"x" * (1024 * 1024)
        for _ in range(64):
            t.send(chunk, me, local)
            if sink.errors:
                break
            await asyncio.sleep(0)
        await until(lambda: sink.errors[:1] == [me])
        await until(lambda: t.connection_count == 0)
        await _close(writer)


async def test_tcp_send_after_close_is_an_error_not_an_exception() -> None:
    sink = RecordingSink()
    t = Transports(sink)
    (local,) = await t.start([Endpoint("tcp", HOST_A, 0)])
    await t.aclose()
    t.send(b"x", Endpoint("tcp", HOST_B, 5060), local)  # must not raise
    await asyncio.sleep(0.01)
    assert t.listeners == []


async def test_drain_flushes_then_closes() -> None:
    sink_b = RecordingSink()
    async with Transports(sink_b) as b:
        (local_b,) = await b.start([Endpoint("tcp", HOST_B, 0)])
        a = Transports(RecordingSink())
        (local_a,) = await a.start([Endpoint("tcp", HOST_A, 0)])
        a.send(sip_request(1), local_b, local_a)
        await until(lambda: len(sink_b.messages) == 1)
        a.send(sip_request(2), local_b, local_a)
        await a.drain(timeout_s=1.0)
        await until(lambda: len(sink_b.messages) == 2)
        assert a.connection_count == 0


def test_tcp_reuse_and_ping_under_uvloop() -> None:
    """The same behaviour on uvloop's transports (the production loop on Linux)."""
    pytest.importorskip("uvloop")
    from sipedge.transport import run

    async def scenario() -> None:
        await test_tcp_outbound_connection_reused_and_bound_to_local_host()
        await test_tcp_double_crlf_ping_answered_with_single_crlf()
        await test_tcp_reset_reports_transport_error()

    run(scenario())


async def test_tcp_idle_outbound_flow_gets_double_crlf_keepalive() -> None:
    # RFC 5626 §4.4.1: an idle flow we opened toward a gateway is pinged; the pong
    # (single CRLF) is consumed without reaching the sink.
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind((HOST_B, 0))
    server.listen()
    server.setblocking(False)
    loop = asyncio.get_running_loop()
    dest = Endpoint("tcp", HOST_B, server.getsockname()[1])
    sink = RecordingSink()
    settings = StreamSettings(keepalive_s=0.2)
    try:
        async with Transports(sink, settings=settings) as t:
            (local,) = await t.start([Endpoint("tcp", HOST_A, 0)])
            t.send(sip_request(1), dest, local)
            conn, _ = await loop.sock_accept(server)
            with conn:
                got = b""
                while not got.endswith(b"\r\n\r\n\r\n\r\n"):
                    got += await asyncio.wait_for(loop.sock_recv(conn, 4096), 3)
                assert got == sip_request(1) + b"\r\n\r\n"
                await loop.sock_sendall(conn, b"\r\n")  # pong
                await asyncio.sleep(0.05)
                assert sink.messages == [] and sink.errors == []
    finally:
        server.close()
