"""Shared listeners: ``bind_shared`` in the parent, ``Transports(inherited=...)`` in workers.

Two ``Transports`` in one process stand for two workers: each adopts (duplicates) the
same bound socket, exactly as a worker adopts the descriptor it inherited. Real sockets
on 127.0.14.0/24, on asyncio's loop and on uvloop's.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

import pytest
import trustme

from sipedge.sip.address import Endpoint
from sipedge.transport import (
    TlsSettings,
    TransportError,
    TransportErrorReason,
    Transports,
    bind_shared,
)
from tests.transport.conftest import BOTH_LOOPS, RecordingSink, sip_request, until

pytestmark = BOTH_LOOPS

SHARED_HOST = "127.0.14.1"
CLIENT_HOST = "127.0.14.2"
OTHER_HOST = "127.0.14.3"
DOMAIN = "example.sip.ashburn-ix.twilio.com"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    ca = trustme.CA()
    d = tmp_path_factory.mktemp("pki")
    cert = ca.issue_cert(DOMAIN)
    paths = {"cafile": d / "ca.pem", "certfile": d / "edge.pem", "keyfile": d / "edge.key"}
    ca.cert_pem.write_to_path(str(paths["cafile"]))
    cert.private_key_pem.write_to_path(str(paths["keyfile"]))
    Path(paths["certfile"]).write_bytes(b"".join(b.bytes() for b in cert.cert_chain_pems))
    return {k: str(v) for k, v in paths.items()}


def _endpoint(transport: str, sock: socket.socket) -> Endpoint:
    host, port = sock.getsockname()[:2]
    return Endpoint(transport, host, port)


def _delivered(*sinks: RecordingSink) -> list[bytes]:
    return [m.data for sink in sinks for m in sink.messages]


async def test_shared_udp_socket_read_by_both_workers_each_datagram_once() -> None:
    shared = bind_shared(Endpoint("udp", SHARED_HOST, 0))
    local = _endpoint("udp", shared)
    sink_a, sink_b = RecordingSink(), RecordingSink()
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind((CLIENT_HOST, 0))
    peer = _endpoint("udp", client)
    try:
        async with Transports(sink_b, inherited={local: shared}) as b:
            a = Transports(sink_a, inherited={local: shared})
            assert await a.start([local]) == [local]
            assert await b.start([local]) == [local]
            assert a.inherited_udp == b.inherited_udp == [local]
            sent = [sip_request(n) for n in range(40)]
            for data in sent:
                client.sendto(data, (local.host, local.port))
            await until(lambda: len(_delivered(sink_a, sink_b)) == len(sent))
            assert sorted(_delivered(sink_a, sink_b)) == sorted(sent)  # each exactly once
            assert {(m.peer, m.local) for m in sink_a.messages + sink_b.messages} == {(peer, local)}

            # One worker closing its listener (a drain, a reload) closes only its copy.
            await a.aclose()
            more = [sip_request(n) for n in range(40, 50)]
            for data in more:
                client.sendto(data, (local.host, local.port))
            await until(lambda: len(sink_b.messages) + len(sink_a.messages) == 50)
            assert _delivered(sink_b)[-10:] == more
            # Replies leave through the shared socket: the source is the shared address.
            b.send(b"SIP/2.0 200 OK\r\n\r\n", peer, local)
            client.settimeout(3)
            data, source = client.recvfrom(100)
            assert (data, source) == (b"SIP/2.0 200 OK\r\n\r\n", (local.host, local.port))
        assert shared.fileno() != -1 and shared.getsockname()[1] == local.port  # still ours
    finally:
        client.close()
        shared.close()


async def test_bind_shared_fails_when_someone_holds_the_port() -> None:
    for transport, kind in (("udp", socket.SOCK_DGRAM), ("tcp", socket.SOCK_STREAM)):
        with socket.socket(socket.AF_INET, kind) as holder:
            holder.bind((SHARED_HOST, 0))
            if kind == socket.SOCK_STREAM:
                holder.listen()
            taken = Endpoint(transport, SHARED_HOST, holder.getsockname()[1])
            with pytest.raises(TransportError) as info:
                bind_shared(taken)
            assert info.value.reason is TransportErrorReason.BIND_FAILED


async def test_shared_udp_socket_keeps_the_plain_bind_guard() -> None:
    # No SO_REUSEPORT on the shared socket: a second sipedge (a plain bind, or its own
    # Transports) and even a SO_REUSEPORT joiner are refused, as for a private listener.
    shared = bind_shared(Endpoint("udp", SHARED_HOST, 0))
    local = _endpoint("udp", shared)
    try:
        with pytest.raises(TransportError) as info:
            bind_shared(local)
        assert info.value.reason is TransportErrorReason.BIND_FAILED
        async with Transports(RecordingSink()) as other:
            with pytest.raises(TransportError):
                await other.start([local])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as joiner:
            joiner.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            with pytest.raises(OSError):
                joiner.bind((local.host, local.port))
    finally:
        shared.close()


async def test_shared_tcp_listener_each_connection_belongs_to_its_acceptor() -> None:
    shared = bind_shared(Endpoint("tcp", SHARED_HOST, 0))
    local = _endpoint("tcp", shared)
    sink_a, sink_b = RecordingSink(), RecordingSink()
    try:
        async with (
            Transports(sink_a, inherited={local: shared}) as a,
            Transports(sink_b, inherited={local: shared}) as b,
        ):
            assert await a.start([local]) == [local]
            assert await b.start([local]) == [local]
            assert a.inherited_udp == []  # streams are never steered
            streams = []
            for n in range(8):
                reader, writer = await asyncio.open_connection(
                    local.host, local.port, local_addr=(CLIENT_HOST, 0)
                )
                writer.write(sip_request(n))
                streams.append((reader, writer))
            await until(lambda: len(_delivered(sink_a, sink_b)) == 8)
            assert sorted(_delivered(sink_a, sink_b)) == sorted(sip_request(n) for n in range(8))
            # The acceptor answers over the connection it holds (RFC 3261 §18.2.2).
            for transports, sink in ((a, sink_a), (b, sink_b)):
                for got in sink.messages:
                    transports.send(b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n", got.peer, local)
            for reader, _writer in streams:
                line = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
                assert line.startswith(b"SIP/2.0 200 OK")
            assert a.connection_count + b.connection_count == 8
            for _reader, writer in streams:
                writer.close()

            await a.remove_listeners([local])  # a's copy closes, the accept queue stays
            reader, writer = await asyncio.open_connection(local.host, local.port)
            writer.write(sip_request(99))
            await until(lambda: sip_request(99) in _delivered(sink_b))
            writer.close()
    finally:
        shared.close()


async def test_shared_tls_listener_handshakes_in_the_accepting_worker(
    pki: dict[str, str],
) -> None:
    shared = bind_shared(Endpoint("tls", SHARED_HOST, 0))
    local = _endpoint("tls", shared)
    server_tls = TlsSettings(pki["cafile"], pki["certfile"], pki["keyfile"])
    client_ctx = ssl.create_default_context(cafile=pki["cafile"])
    sink_a, sink_b = RecordingSink(), RecordingSink()
    try:
        async with (
            Transports(sink_a, tls=server_tls, inherited={local: shared}) as a,
            Transports(sink_b, tls=server_tls, inherited={local: shared}) as b,
        ):
            assert await a.start([local]) == [local]
            assert await b.start([local]) == [local]
            writers = []
            for n in range(4):
                _reader, writer = await asyncio.open_connection(
                    local.host, local.port, ssl=client_ctx, server_hostname=DOMAIN
                )
                writer.write(sip_request(n))
                writers.append(writer)
            await until(lambda: len(_delivered(sink_a, sink_b)) == 4)
            assert sorted(_delivered(sink_a, sink_b)) == sorted(sip_request(n) for n in range(4))
            assert {m.local for m in sink_a.messages + sink_b.messages} == {local}
            assert all(m.peer.transport == "tls" for m in sink_a.messages + sink_b.messages)
            for writer in writers:
                writer.close()
    finally:
        shared.close()


async def test_inherited_socket_that_does_not_fit_its_listener_is_refused() -> None:
    udp = bind_shared(Endpoint("udp", SHARED_HOST, 0))
    tcp = bind_shared(Endpoint("tcp", SHARED_HOST, 0))
    not_listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    not_listening.bind((SHARED_HOST, 0))
    closed = bind_shared(Endpoint("udp", SHARED_HOST, 0))
    closed_local = _endpoint("udp", closed)
    closed.close()
    udp_local, tcp_local = _endpoint("udp", udp), _endpoint("tcp", tcp)
    cases = {
        Endpoint("udp", SHARED_HOST, udp_local.port): tcp,  # another transport
        Endpoint("tcp", SHARED_HOST, tcp_local.port): udp,
        Endpoint("udp", OTHER_HOST, udp_local.port): udp,  # another address
        Endpoint("udp", SHARED_HOST, udp_local.port + 1): udp,  # another port
        Endpoint("tcp", SHARED_HOST, 0): not_listening,
        closed_local: closed,
        Endpoint("udp", "::1", udp_local.port): udp,  # another family
    }
    try:
        for local, sock in cases.items():
            async with Transports(RecordingSink(), inherited={local: sock}) as t:
                with pytest.raises(TransportError) as info:
                    await t.start([local])
                assert info.value.reason is TransportErrorReason.BIND_FAILED
                assert "inherited socket" in info.value.detail
        assert udp.getsockname()[1] == udp_local.port  # refusing closed nothing of ours
    finally:
        for sock in (udp, tcp, not_listening):
            sock.close()


async def test_reload_readopts_an_inherited_listener_and_binds_the_rest() -> None:
    shared = bind_shared(Endpoint("udp", SHARED_HOST, 0))
    local = _endpoint("udp", shared)
    inherited: dict[Endpoint, socket.socket] = {}
    sink = RecordingSink()
    try:
        async with Transports(sink, inherited=inherited) as t:
            (own,) = await t.start([Endpoint("udp", OTHER_HOST, 0)])  # the worker's own
            assert t.inherited_udp == []
            inherited[local] = shared  # the parent bound a listener a reload added
            assert await t.add_listeners([local]) == [local]
            assert t.inherited_udp == [local] and set(t.listeners) == {own, local}
            await t.remove_listeners([local])
            assert t.inherited_udp == []
            assert await t.add_listeners([local]) == [local]  # the caller's copy survived
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                client.sendto(sip_request(1), (local.host, local.port))
                await until(lambda: len(sink.messages) == 1)
            assert sink.messages[0].local == local
    finally:
        shared.close()


async def test_shared_udp_listener_is_not_watched_own_endpoint_is() -> None:
    # Two workers' flows to one gateway from the shared ip:port would be one 4-tuple:
    # the kernel would give the gateway's datagrams and ICMP errors to one of them only.
    shared = bind_shared(Endpoint("udp", SHARED_HOST, 0))
    local = _endpoint("udp", shared)
    gateway = Endpoint("udp", OTHER_HOST, 5060)
    try:
        async with Transports(RecordingSink(), inherited={local: shared}) as t:
            shared_local, own = await t.start([local, Endpoint("udp", CLIENT_HOST, 0)])
            assert not t.watch_udp(gateway, shared_local)
            assert t.watch_udp(gateway, own)
            await t.wait_watching()
            assert t.watched_udp == [(gateway, own)]
    finally:
        shared.close()
