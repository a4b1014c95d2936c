"""UDP transport: real datagrams on 127.0.0.200–209."""

from __future__ import annotations

import asyncio
import gc
import socket

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


# -- watched destinations: ICMP unreachable → transport_error (127.0.0.205–208 only) -------

HOST_DEAD = "127.0.0.205"  # nothing listens on the chosen port: the kernel answers ICMP
HOST_PEER = "127.0.0.206"  # a live gateway
HOST_LISTEN = "127.0.0.207"  # our listener
HOST_OTHER = "127.0.0.208"  # an unrelated (unwatched) peer


def _free_udp_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
    return port


def _udp_peer(host: str, port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, port))
    sock.setblocking(False)
    return sock


async def _recv(sock: socket.socket, timeout_s: float = 3.0) -> tuple[bytes, tuple[str, int]]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        try:
            data, addr = sock.recvfrom(65535)
            return data, (addr[0], addr[1])
        except BlockingIOError:
            if loop.time() > deadline:
                raise AssertionError("nothing received") from None
            await asyncio.sleep(0.002)


async def _error_latency(
    t: Transports, sink: RecordingSink, dest: Endpoint, local: Endpoint
) -> float:
    loop = asyncio.get_running_loop()
    before = len(sink.errors)
    start = loop.time()
    t.send(sip_request(1), dest, local)
    assert len(sink.errors) == before  # reported from the loop, never re-entrantly
    await until(lambda: len(sink.errors) > before, timeout_s=1.0)
    assert sink.errors[before:] == [dest]
    return loop.time() - start


async def test_watched_udp_dead_port_reports_transport_error_promptly() -> None:
    sink = RecordingSink()
    dead = Endpoint("udp", HOST_DEAD, _free_udp_port(HOST_DEAD))
    async with Transports(sink) as t:
        (local,) = await t.start([Endpoint("udp", HOST_LISTEN, 0)])
        assert t.watch_udp(dead, local)
        await t.wait_watching()
        assert t.watched_udp == [(dead, local)]
        latency = await _error_latency(t, sink, dead, local)
        assert latency < 0.1
        # Per send, not sticky: every datagram refused is one more report.
        assert await _error_latency(t, sink, dead, local) < 0.1


async def test_unwatched_udp_dead_port_stays_silent() -> None:
    # The baseline the feature exists for: the unconnected listener hears no ICMP.
    sink = RecordingSink()
    dead = Endpoint("udp", HOST_DEAD, _free_udp_port(HOST_DEAD))
    async with Transports(sink) as t:
        (local,) = await t.start([Endpoint("udp", HOST_LISTEN, 0)])
        t.send(sip_request(1), dead, local)
        await asyncio.sleep(0.1)
        assert sink.errors == []


async def test_watched_udp_keeps_listener_source_and_delivers_replies_as_listener() -> None:
    sink = RecordingSink()
    peer = _udp_peer(HOST_PEER)
    gateway = Endpoint("udp", HOST_PEER, peer.getsockname()[1])
    try:
        async with Transports(sink) as t:
            (local,) = await t.start([Endpoint("udp", HOST_LISTEN, 0)])
            assert t.watch_udp(gateway, local)
            await t.wait_watching()
            for n in range(1, 4):
                t.send(sip_request(n), gateway, local)
                data, source = await _recv(peer)
                assert (data, source) == (sip_request(n), (local.host, local.port))
                peer.sendto(b"SIP/2.0 200 OK\r\n\r\n" + bytes([n]), source)
                await until(lambda k=n: len(sink.messages) == k)  # type: ignore[misc]
                got = sink.messages[-1]
                assert (got.peer, got.local) == (gateway, local)
                assert got.data.endswith(bytes([n]))
            assert sink.errors == []
    finally:
        peer.close()


async def test_watched_udp_leaves_unrelated_peers_on_the_listener() -> None:
    # SO_REUSEPORT load balancing skips connected members, and a connected socket only
    # matches its own 4-tuple: nobody else's datagrams may land on (or vanish in) a flow.
    sink = RecordingSink()
    gw = _udp_peer(HOST_PEER)
    other = _udp_peer(HOST_OTHER)
    gateway = Endpoint("udp", HOST_PEER, gw.getsockname()[1])
    stranger = Endpoint("udp", HOST_OTHER, other.getsockname()[1])
    dead = Endpoint("udp", HOST_DEAD, _free_udp_port(HOST_DEAD))
    try:
        async with Transports(sink) as t:
            (local,) = await t.start([Endpoint("udp", HOST_LISTEN, 0)])
            assert t.watch_udp(gateway, local) and t.watch_udp(dead, local)
            await t.wait_watching()
            for n in range(40):
                other.sendto(b"o%d" % n, (local.host, local.port))
                gw.sendto(b"g%d" % n, (local.host, local.port))
            await until(lambda: len(sink.messages) == 80)
            assert {m.local for m in sink.messages} == {local}
            by_peer = {m.data: m.peer for m in sink.messages}
            assert all(by_peer[b"o%d" % n] == stranger for n in range(40))
            assert all(by_peer[b"g%d" % n] == gateway for n in range(40))
            # The unwatched path still sends from the listener.
            t.send(sip_request(9), stranger, local)
            assert await _recv(other) == (sip_request(9), (local.host, local.port))
            assert sink.errors == []
    finally:
        gw.close()
        other.close()


async def test_watched_udp_socket_recovers_when_gateway_returns() -> None:
    sink = RecordingSink()
    port = _free_udp_port(HOST_DEAD)
    dest = Endpoint("udp", HOST_DEAD, port)
    async with Transports(sink) as t:
        (local,) = await t.start([Endpoint("udp", HOST_LISTEN, 0)])
        assert t.watch_udp(dest, local)
        await t.wait_watching()
        await _error_latency(t, sink, dest, local)
        errors = len(sink.errors)
        revived = _udp_peer(HOST_DEAD, port)  # the gateway process restarts
        try:
            t.send(sip_request(2), dest, local)
            data, source = await _recv(revived)
            assert (data, source) == (sip_request(2), (local.host, local.port))
            revived.sendto(b"SIP/2.0 200 OK\r\n\r\n", source)
            await until(lambda: len(sink.messages) == 1)
            assert (sink.messages[0].peer, sink.messages[0].local) == (dest, local)
            await asyncio.sleep(0.05)
            assert len(sink.errors) == errors
        finally:
            revived.close()


async def test_unwatch_udp_closes_the_flow_and_sends_use_the_listener() -> None:
    sink = RecordingSink()
    dead = Endpoint("udp", HOST_DEAD, _free_udp_port(HOST_DEAD))
    async with Transports(sink) as t:
        (local,) = await t.start([Endpoint("udp", HOST_LISTEN, 0)])
        assert t.watch_udp(dead, local)
        assert t.watch_udp(dead, local)  # idempotent
        await t.wait_watching()
        assert t.unwatch_udp(dead)
        assert not t.unwatch_udp(dead, local)
        assert t.watched_udp == []
        t.send(sip_request(1), dead, local)  # through the unconnected listener again
        await asyncio.sleep(0.1)
        assert sink.errors == []
        # Watching again works (the old socket has left the reuseport group).
        assert t.watch_udp(dead, local)
        await t.wait_watching()
        assert await _error_latency(t, sink, dead, local) < 0.1
    gc.collect()  # with -W error an unclosed socket's ResourceWarning fails the test


async def test_close_while_flows_start_leaks_nothing() -> None:
    sink = RecordingSink()
    t = Transports(sink)
    (local,) = await t.start([Endpoint("udp", HOST_LISTEN, 0)])
    for n in range(5):
        assert t.watch_udp(Endpoint("udp", HOST_DEAD, 40000 + n), local)
    await t.aclose()  # before the flows' loop tick
    assert t.watched_udp == [] and t.listeners == []
    assert not t.watch_udp(Endpoint("udp", HOST_DEAD, 40000), local)
    gc.collect()


async def test_rewatch_udp_sets_the_watched_set() -> None:
    async with Transports(RecordingSink()) as t:
        (local,) = await t.start([Endpoint("udp", HOST_LISTEN, 0)])
        a, b, c = (Endpoint("udp", HOST_DEAD, 40010 + n) for n in range(3))
        t.rewatch_udp([a, b, Endpoint("tcp", HOST_DEAD, 5060)], local)
        assert sorted(d.port for d, _ in t.watched_udp) == [a.port, b.port]
        t.rewatch_udp([b, c], local)
        await t.wait_watching()
        assert sorted(d.port for d, _ in t.watched_udp) == [b.port, c.port]


async def test_watch_udp_refuses_what_it_cannot_watch() -> None:
    async with Transports(RecordingSink()) as t:
        assert not t.watch_udp(Endpoint("udp", HOST_DEAD, 5060), Endpoint("udp", HOST_LISTEN, 1))
        (local,) = await t.start([Endpoint("udp", HOST_LISTEN, 0)])
        assert not t.watch_udp(Endpoint("udp", "gw.example.com", 5060), local)  # no DNS here
        assert not t.watch_udp(Endpoint("udp", "::1", 5060), local)  # other family
        assert not t.watch_udp(Endpoint("tcp", HOST_DEAD, 5060), local)
        assert not t.watch_udp(Endpoint("udp", HOST_DEAD, 5060), Endpoint("udp", HOST_OTHER, 9))
        assert t.watched_udp == []


async def test_watched_listener_still_refuses_a_second_plain_bind() -> None:
    # SO_REUSEPORT is set on the listener only after its bind: a second sipedge (or any
    # socket that did not ask for SO_REUSEPORT first) still gets BIND_FAILED.
    async with Transports(RecordingSink()) as t:
        (local,) = await t.start([Endpoint("udp", HOST_LISTEN, 0)])
        assert t.watch_udp(Endpoint("udp", HOST_DEAD, _free_udp_port(HOST_DEAD)), local)
        await t.wait_watching()
        other = Transports(RecordingSink())
        with pytest.raises(TransportError) as info:
            await other.start([local])
        assert info.value.reason is TransportErrorReason.BIND_FAILED
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as plain, pytest.raises(OSError):
            plain.bind((local.host, local.port))


def test_watched_udp_under_uvloop() -> None:
    """The same behaviour on uvloop's transports (the production loop on Linux)."""
    pytest.importorskip("uvloop")

    async def scenario() -> None:
        await test_watched_udp_dead_port_reports_transport_error_promptly()
        await test_unwatched_udp_dead_port_stays_silent()
        await test_watched_udp_keeps_listener_source_and_delivers_replies_as_listener()
        await test_watched_udp_leaves_unrelated_peers_on_the_listener()
        await test_watched_udp_socket_recovers_when_gateway_returns()
        await test_unwatch_udp_closes_the_flow_and_sends_use_the_listener()
        await test_close_while_flows_start_leaks_nothing()
        await test_watched_listener_still_refuses_a_second_plain_bind()

    run(scenario())
