"""UDP transport: real datagrams on 127.0.0.200–209."""

from __future__ import annotations

import asyncio

import pytest

from sipedge.sip.address import Endpoint
from sipedge.transport import TransportError, TransportErrorReason, Transports
from sipedge.transport.base import new_event_loop, run
from tests.transport.conftest import HOST_A, HOST_B, RecordingSink, sip_request, until


async def test_udp_round_trip_peer_and_local_are_endpoints() -> None:
    sink_a, sink_b = RecordingSink(), RecordingSink()
    async with Transports(sink_a) as a, Transports(sink_b) as b:
        (local_a,) = await a.start([Endpoint("udp", HOST_A, 0)])
        (local_b,) = await b.start([Endpoint("udp", HOST_B, 0)])
        assert local_a.port != 0 and local_a.host == HOST_A

        a.send(sip_request(1), local_b, local_a)
        await until(lambda: len(sink_b.messages) == 1)
        got = sink_b.messages[0]
        assert (got.data, got.peer, got.local) == (sip_request(1), local_a, local_b)
        assert got.now == pytest.approx(asyncio.get_running_loop().time(), abs=1.0)

        # The answer goes to the peer exactly as reported, from the socket it arrived on.
        b.send(b"SIP/2.0 200 OK\r\n\r\n", got.peer, got.local)
        await until(lambda: len(sink_a.messages) == 1)
        assert sink_a.messages[0].peer == local_b
        assert sink_a.messages[0].local == local_a
        assert sink_a.errors == sink_b.errors == []


async def test_udp_large_datagram_delivered() -> None:
    sink = RecordingSink()
    body = b"x" * (60_000 - len(sip_request(1)))
    big = sip_request(1, body=body)
    async with Transports(RecordingSink()) as a, Transports(sink) as b:
        (local_a,) = await a.start([Endpoint("udp", HOST_A, 0)])
        (local_b,) = await b.start([Endpoint("udp", HOST_B, 0)])
        a.send(big, local_b, local_a)
        await until(lambda: len(sink.messages) == 1)
    assert sink.messages[0].data == big


async def test_udp_oversized_datagram_reports_transport_error() -> None:
    sink = RecordingSink()
    async with Transports(sink) as a:
        (local_a,) = await a.start([Endpoint("udp", HOST_A, 0)])
        dest = Endpoint("udp", HOST_B, 5060)
        a.send(b"x" * 70_000, dest, local_a)  # beyond the IPv4 datagram limit: EMSGSIZE
        assert sink.errors == []  # reported from the loop, never re-entrantly
        await until(lambda: sink.errors == [dest])


async def test_udp_send_without_a_socket_on_local_reports_transport_error() -> None:
    sink = RecordingSink()
    async with Transports(sink) as a:
        await a.start([Endpoint("udp", HOST_A, 0)])
        dest = Endpoint("udp", HOST_B, 5060)
        a.send(b"x", dest, Endpoint("udp", "127.0.0.205", 5060))
        await until(lambda: sink.errors == [dest])


async def test_udp_send_from_stream_local_uses_udp_socket_on_same_host() -> None:
    sink_b = RecordingSink()
    async with Transports(RecordingSink()) as a, Transports(sink_b) as b:
        udp_a, tcp_a = await a.start([Endpoint("udp", HOST_A, 0), Endpoint("tcp", HOST_A, 0)])
        (local_b,) = await b.start([Endpoint("udp", HOST_B, 0)])
        a.send(sip_request(1), local_b, tcp_a)
        await until(lambda: len(sink_b.messages) == 1)
        assert sink_b.messages[0].peer == udp_a


async def test_bind_conflict_raises_transport_error() -> None:
    async with Transports(RecordingSink()) as a:
        (local_a,) = await a.start([Endpoint("udp", HOST_A, 0)])
        b = Transports(RecordingSink())
        with pytest.raises(TransportError) as info:
            await b.start([Endpoint("tcp", HOST_B, 0), local_a])
        assert info.value.reason is TransportErrorReason.BIND_FAILED
        assert b.listeners == []  # the TCP listener bound before the failure was closed


async def test_duplicate_listen_entries_bound_once() -> None:
    async with Transports(RecordingSink()) as a:
        same = Endpoint("udp", HOST_A, 0)
        assert len(await a.start([same, same])) == 1


def test_run_uses_uvloop_when_installed() -> None:
    uvloop = pytest.importorskip("uvloop")
    loop = new_event_loop()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()

    async def round_trip() -> bytes:
        sink = RecordingSink()
        async with Transports(RecordingSink()) as a, Transports(sink) as b:
            (local_a,) = await a.start([Endpoint("udp", HOST_A, 0)])
            local_b, _ = await b.start([Endpoint("udp", HOST_B, 0), Endpoint("tcp", HOST_B, 0)])
            a.send(sip_request(7), local_b, local_a)
            await until(lambda: len(sink.messages) == 1)
            return sink.messages[0].data

    assert run(round_trip()) == sip_request(7)
