"""TLS transport with a trustme CA: verification, SNI, round trip — real sockets."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
import trustme

from sipedge.sip.address import Endpoint
from sipedge.transport import TlsSettings, TransportError, TransportErrorReason, Transports
from tests.transport.conftest import RecordingSink, sip_request, until

# The TLS tests keep to 127.0.12.0/24 (ephemeral ports), away from the other suites.
HOST_A = "127.0.12.1"
HOST_B = "127.0.12.2"
DOMAIN = "example.sip.ashburn-ix.twilio.com"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def pki(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """CA bundle, a gateway certificate for the localized domain, and an unrelated CA."""
    d = tmp_path_factory.mktemp("pki")
    cert = ca.issue_cert(DOMAIN)
    paths = {
        "cafile": d / "ca.pem",
        "certfile": d / "gw.pem",
        "keyfile": d / "gw.key",
        "other_ca": d / "other.pem",
    }
    ca.cert_pem.write_to_path(str(paths["cafile"]))
    cert.private_key_pem.write_to_path(str(paths["keyfile"]))
    Path(paths["certfile"]).write_bytes(b"".join(b.bytes() for b in cert.cert_chain_pems))
    trustme.CA().cert_pem.write_to_path(str(paths["other_ca"]))
    return {k: str(v) for k, v in paths.items()}


async def _sni_server(
    pki: dict[str, str], seen: list[str | None]
) -> tuple[asyncio.Server, Endpoint, list[bytes]]:
    """A bare asyncio TLS server that records the SNI each client sent."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pki["certfile"], pki["keyfile"])

    def record_sni(_sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        seen.append(name)

    ctx.sni_callback = record_sni
    received: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await reader.readuntil(b"\r\n\r\n"))
        writer.close()

    server = await asyncio.start_server(handle, HOST_B, 0, ssl=ctx)
    port = server.sockets[0].getsockname()[1]
    return server, Endpoint("tls", HOST_B, port), received


async def test_tls_sni_is_the_hostname_given_for_the_destination(pki: dict[str, str]) -> None:
    seen: list[str | None] = []
    server, dest, received = await _sni_server(pki, seen)
    sink = RecordingSink()
    asked: list[Endpoint] = []

    def sni_for(ep: Endpoint) -> str | None:
        asked.append(ep)
        return DOMAIN

    try:
        async with Transports(sink, tls=TlsSettings(pki["cafile"]), sni_for=sni_for) as t:
            (local,) = await t.start([Endpoint("tcp", HOST_A, 0)])
            t.send(sip_request(1), dest, local)
            await until(lambda: len(received) == 1)
            assert seen == [DOMAIN]
            assert asked == [dest]
            assert received[0] == sip_request(1)
    finally:
        server.close()
        await server.wait_closed()


async def test_tls_round_trip_between_transports(pki: dict[str, str]) -> None:
    sink_a, sink_b = RecordingSink(), RecordingSink()
    server_tls = TlsSettings(pki["cafile"], pki["certfile"], pki["keyfile"])
    client_tls = TlsSettings(pki["cafile"])
    async with (
        Transports(sink_a, tls=client_tls, sni_for=lambda _ep: DOMAIN) as a,
        Transports(sink_b, tls=server_tls) as b,
    ):
        # A has no TLS listener: the outbound connection binds local_a's host only.
        (local_a,) = await a.start([Endpoint("udp", HOST_A, 0)])
        (local_b,) = await b.start([Endpoint("tls", HOST_B, 0)])
        assert local_b.transport == "tls"
        a.send(sip_request(1), local_b, local_a)
        await until(lambda: len(sink_b.messages) == 1)
        got = sink_b.messages[0]
        assert got.data == sip_request(1)
        assert got.peer.transport == "tls" and got.peer.host == HOST_A
        assert got.local == local_b
        b.send(b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n", got.peer, got.local)
        await until(lambda: len(sink_a.messages) == 1)
        assert sink_a.messages[0].peer == local_b
        assert a.connection_count == 1


async def test_tls_wrong_ca_reports_transport_error(pki: dict[str, str]) -> None:
    sink_a, sink_b = RecordingSink(), RecordingSink()
    server_tls = TlsSettings(pki["cafile"], pki["certfile"], pki["keyfile"])
    async with (
        Transports(sink_b, tls=server_tls) as b,
        Transports(sink_a, tls=TlsSettings(pki["other_ca"]), sni_for=lambda _: DOMAIN) as a,
    ):
        (local_b,) = await b.start([Endpoint("tls", HOST_B, 0)])
        (local_a,) = await a.start([Endpoint("tcp", HOST_A, 0)])
        a.send(sip_request(1), local_b, local_a)
        await until(lambda: sink_a.errors == [local_b])
        assert sink_b.messages == []
        assert a.connection_count == 0


async def test_tls_hostname_mismatch_reports_transport_error(pki: dict[str, str]) -> None:
    server_tls = TlsSettings(pki["cafile"], pki["certfile"], pki["keyfile"])
    sink_a = RecordingSink()
    wrong = "example.sip.san-jose-ix.twilio.com"
    async with (
        Transports(RecordingSink(), tls=server_tls) as b,
        Transports(sink_a, tls=TlsSettings(pki["cafile"]), sni_for=lambda _: wrong) as a,
    ):
        (local_b,) = await b.start([Endpoint("tls", HOST_B, 0)])
        (local_a,) = await a.start([Endpoint("tcp", HOST_A, 0)])
        a.send(sip_request(1), local_b, local_a)
        await until(lambda: sink_a.errors == [local_b])


async def test_tls_send_without_tls_settings_reports_transport_error() -> None:
    sink = RecordingSink()
    async with Transports(sink) as t:
        (local,) = await t.start([Endpoint("tcp", HOST_A, 0)])
        dest = Endpoint("tls", HOST_B, 5061)
        t.send(sip_request(1), dest, local)
        await until(lambda: sink.errors == [dest])


async def test_tls_listener_without_certificate_refused(pki: dict[str, str]) -> None:
    t = Transports(RecordingSink(), tls=TlsSettings(pki["cafile"]))
    with pytest.raises(TransportError) as info:
        await t.start([Endpoint("tls", HOST_B, 0)])
    assert info.value.reason is TransportErrorReason.TLS_CONFIG


async def test_tls_unreadable_cafile_refused(tmp_path: Path) -> None:
    t = Transports(RecordingSink(), tls=TlsSettings(str(tmp_path / "missing.pem")))
    with pytest.raises(TransportError) as info:
        await t.start([Endpoint("udp", HOST_A, 0)])
    assert info.value.reason is TransportErrorReason.TLS_CONFIG
