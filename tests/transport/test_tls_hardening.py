"""TLS hardening (issue 13): the context policy, and every refusal with its exact outcome.

Each refused case is checked three ways: the handshake error OpenSSL raises for our
client context (type and verify code), what the stream table makes of it (one
``transport_error`` for the destination, so the proxy core fails over), and the one
WARNING line naming the destination, its server name and the reason, plus the counter.

Inbound (peers connecting to the sipedge TLS listener), each refused handshake is
counted by reason in ``tls_inbound_failures`` (``sipedge_tls_inbound_failures_total``)
with one log line naming the peer, the connection is closed, and a good client still
gets through the same listener afterwards.

Addresses: 127.0.12.0/24 only, ephemeral ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import socket
import ssl
import threading
import warnings
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sipedge.config import ConfigError, parse_config
from sipedge.metrics import exposition, make_registry
from sipedge.sip.address import Endpoint
from sipedge.transport import StreamSettings, TlsSettings, Transports
from sipedge.transport.driver import CoreDriver
from sipedge.transport.tls import (
    TLS_FAILURE_REASONS,
    TLS_INBOUND_FAILURE_REASONS,
    client_context,
    server_context,
)
from tests.helpers.wire import ProxyHarness
from tests.transport.conftest import RecordingSink, sip_request, until

HOST_A = "127.0.12.1"  # sipedge (the side that connects)
HOST_B = "127.0.12.2"  # the gateway / the sipedge listener
DOMAIN = "example.sip.ashburn-ix.twilio.com"
WILDCARD = "*.sip.ashburn-ix.twilio.com"
TCP_LOG = "sipedge.transport.tcp"


# -- certificates ------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    cafile: str
    certs: dict[str, tuple[str, str]]  # name -> (certfile, keyfile)
    other_cafile: str  # a CA that issued "other_ca" and not our listener's certificate

    def server(self, name: str) -> TlsSettings:
        certfile, keyfile = self.certs[name]
        return TlsSettings(self.cafile, certfile, keyfile)


def _leaf(ca: trustme.CA, name: str, san: str | None) -> tuple[bytes, bytes]:
    """A leaf from ``ca``: subject CN ``name``, subjectAltName ``san`` (or none at all).

    Built with ``cryptography`` for the names trustme will not issue (no SAN; a partial
    wildcard, which IDNA refuses); RFC 5280 complete (SKI/AKI) for VERIFY_X509_STRICT.
    """
    ca_key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
    )
    if san is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(san)]), False)
    cert = builder.sign(ca_key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """The CA sipedge trusts, and gateway certificates good and bad."""
    d = tmp_path_factory.mktemp("pki")
    ca, other = trustme.CA(), trustme.CA()
    now = datetime.now(UTC)
    leaves = {
        "good": ca.issue_cert(DOMAIN),
        "wildcard": ca.issue_cert(WILDCARD),
        "expired": ca.issue_cert(
            DOMAIN, not_before=now - timedelta(days=30), not_after=now - timedelta(days=1)
        ),
        "other_ca": other.issue_cert(DOMAIN),
    }
    certs: dict[str, tuple[str, str]] = {}
    for name, leaf in leaves.items():
        chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
        certfile, keyfile = d / f"{name}.pem", d / f"{name}.key"
        certfile.write_bytes(chain)
        leaf.private_key_pem.write_to_path(str(keyfile))
        certs[name] = (str(certfile), str(keyfile))
    # A gateway that sends its whole chain, root included, from a CA we do not trust.
    other_leaf = leaves["other_ca"]
    Path(d / "other_ca_full.pem").write_bytes(
        b"".join(blob.bytes() for blob in other_leaf.cert_chain_pems) + other.cert_pem.bytes()
    )
    certs["other_ca_full"] = (str(d / "other_ca_full.pem"), certs["other_ca"][1])
    built = {
        "cn_only": _leaf(ca, DOMAIN, None),
        "partial_wildcard": _leaf(ca, DOMAIN, "ex*.sip.ashburn-ix.twilio.com"),
    }
    for name, (cert_pem, key_pem) in built.items():
        (d / f"{name}.pem").write_bytes(cert_pem)
        (d / f"{name}.key").write_bytes(key_pem)
        certs[name] = (str(d / f"{name}.pem"), str(d / f"{name}.key"))
    cafile, other_cafile = d / "ca.pem", d / "other_root.pem"
    ca.cert_pem.write_to_path(str(cafile))
    other.cert_pem.write_to_path(str(other_cafile))
    return Pki(str(cafile), certs, str(other_cafile))


def _legacy_context(purpose: int, maximum: str) -> ssl.SSLContext:
    """A context limited to TLS 1.0 or 1.1 at security level 0 (OpenSSL 3 needs it).

    ``ssl.TLSVersion.TLSv1``/``TLSv1_1`` are deprecated names; the warning is expected.
    """
    ctx = ssl.SSLContext(purpose)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = getattr(ssl.TLSVersion, maximum)
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


class BlockingTlsServer:
    """A gateway on a thread with the blocking ``ssl`` server side (it sends alerts)."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx
        self.listener = socket.create_server((HOST_B, 0))
        self.port: int = self.listener.getsockname()[1]
        self.outcomes: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return  # closed
            raw.settimeout(3)
            try:
                with self.ctx.wrap_socket(raw, server_side=True) as conn:
                    self.outcomes.append(f"ok {conn.version()}")
            except (ssl.SSLError, OSError) as exc:
                self.outcomes.append(getattr(exc, "reason", None) or repr(exc))
                raw.close()


@contextmanager
def blocking_tls_server(ctx: ssl.SSLContext) -> Iterator[BlockingTlsServer]:
    server = BlockingTlsServer(ctx)
    server.thread.start()
    try:
        yield server
    finally:
        server.listener.shutdown(socket.SHUT_RDWR)
        server.listener.close()
        server.thread.join(3)



# -- the policy, without sockets ---------------------------------------------------------


def test_client_context_verifies_peer_and_host_name_tls12_minimum(pki: Pki) -> None:
    ctx = client_context(TlsSettings(pki.cafile))
    assert ctx.verify_mode is ssl.CERT_REQUIRED
    assert ctx.check_hostname is True
    assert ctx.hostname_checks_common_name is False
    assert ctx.verify_flags & ssl.VERIFY_X509_STRICT
    assert ctx.minimum_version is ssl.TLSVersion.TLSv1_2
    assert ctx.options & ssl.OP_NO_COMPRESSION
    assert ctx.options & ssl.OP_NO_RENEGOTIATION


def test_server_context_tls12_minimum_no_compression_no_renegotiation(pki: Pki) -> None:
    ctx = server_context(pki.server("good"))
    assert ctx.minimum_version is ssl.TLSVersion.TLSv1_2
    assert ctx.options & ssl.OP_NO_COMPRESSION
    assert ctx.options & ssl.OP_NO_RENEGOTIATION
    assert ctx.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    assert ctx.verify_mode is ssl.CERT_NONE  # sources are admitted by the ACL


def test_cipher_policy_is_forward_secret_with_aead_or_sha2(pki: Pki) -> None:
    for ctx in (client_context(TlsSettings(pki.cafile)), server_context(pki.server("good"))):
        assert ctx.security_level >= 2
        suites = ctx.get_ciphers()
        assert suites
        for suite in suites:
            name = suite["name"]
            assert not any(bad in name for bad in ("RC4", "DES", "NULL", "MD5", "EXPORT"))
            if suite["protocol"] == "TLSv1.3":
                assert suite["aead"], name
                continue
            assert suite["kea"] in ("kx-ecdhe", "kx-dhe"), name  # forward secrecy
            assert suite["aead"] or suite["digest"] in ("sha256", "sha384"), name


def test_no_setting_turns_verification_off(pki: Pki) -> None:
    # TlsSettings carries files only; a [tls] verify key in the config is refused.
    assert {f.name for f in fields(TlsSettings)} == {"cafile", "certfile", "keyfile"}
    text = (
        '[inside]\nlisten = ["udp:127.0.12.1:5080"]\nallow = ["127.0.12.0/24"]\n'
        'pbx = "127.0.12.10:5060"\n'
        '[outside]\nlisten = ["udp:127.0.12.3:5060"]\ndomain = "example"\n'
        '[[edges]]\nname = "ashburn-ix"\ngateways = ["127.0.12.64"]\n'
        f'[tls]\ncafile = "{pki.cafile}"\nverify = false\n'
    )
    with pytest.raises(ConfigError) as info:
        parse_config(text, "test.toml")
    assert info.value.key == "tls.verify"
    assert info.value.reason.startswith("unknown key")


# -- outbound: good paths ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("cert", "server_name"),
    [("good", DOMAIN), ("wildcard", DOMAIN)],
    ids=["exact-name", "wildcard-left-most-label"],
)
async def test_tls_trusted_certificate_connects(
    pki: Pki, cert: str, server_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=TCP_LOG)
    sink_a, sink_b = RecordingSink(), RecordingSink()
    async with (
        Transports(sink_b, tls=pki.server(cert)) as b,
        Transports(sink_a, tls=TlsSettings(pki.cafile), sni_for=lambda _: server_name) as a,
    ):
        (local_b,) = await b.start([Endpoint("tls", HOST_B, 0)])
        (local_a,) = await a.start([Endpoint("tcp", HOST_A, 0)])
        a.send(sip_request(1), local_b, local_a)
        await until(lambda: len(sink_b.messages) == 1)
        assert sink_b.messages[0].data == sip_request(1)
        assert sink_a.errors == []
        assert a.tls_failures == {}
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


# -- outbound: refusals ------------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    cert: str  # the certificate the gateway presents ("tls11": a TLS 1.1-only gateway)
    server_name: str  # what sipedge asks for (SNI) and checks the certificate against
    error: type[ssl.SSLError]
    verify_code: int | None  # OpenSSL X509_V_ERR_*, for a verification failure
    reason: str  # the counter key
    detail: str  # the end of the log line


REFUSALS = {
    "other-ca-root-in-chain": Refusal(
        "other_ca_full", DOMAIN, ssl.SSLCertVerificationError, 19, "untrusted",
        "certificate verify failed: self-signed certificate in certificate chain",
    ),
    "other-ca-leaf-only": Refusal(
        "other_ca", DOMAIN, ssl.SSLCertVerificationError, 20, "untrusted",
        "certificate verify failed: unable to get local issuer certificate",
    ),
    "expired": Refusal(
        "expired", DOMAIN, ssl.SSLCertVerificationError, 10, "expired",
        "certificate verify failed: certificate has expired",
    ),
    "name-mismatch": Refusal(
        "good", "example.sip.san-jose-ix.twilio.com", ssl.SSLCertVerificationError, 62,
        "hostname_mismatch", "certificate verify failed: hostname mismatch",
    ),
    "wildcard-two-labels": Refusal(
        "wildcard", "a.b.sip.ashburn-ix.twilio.com", ssl.SSLCertVerificationError, 62,
        "hostname_mismatch", "certificate verify failed: hostname mismatch",
    ),
    "wildcard-parent-domain": Refusal(
        "wildcard", "ashburn-ix.twilio.com", ssl.SSLCertVerificationError, 62,
        "hostname_mismatch", "certificate verify failed: hostname mismatch",
    ),
    "wildcard-bare-suffix": Refusal(
        "wildcard", "sip.ashburn-ix.twilio.com", ssl.SSLCertVerificationError, 62,
        "hostname_mismatch", "certificate verify failed: hostname mismatch",
    ),
    "partial-wildcard": Refusal(
        "partial_wildcard", DOMAIN, ssl.SSLCertVerificationError, 62,
        "hostname_mismatch", "certificate verify failed: hostname mismatch",
    ),
    "common-name-without-san": Refusal(
        "cn_only", DOMAIN, ssl.SSLCertVerificationError, 62,
        "hostname_mismatch", "certificate verify failed: hostname mismatch",
    ),
    "gateway-speaks-tls11-only": Refusal(
        "tls11", DOMAIN, ssl.SSLError, None, "protocol_version",
        "TLS version refused: tlsv1 alert protocol version",
    ),
}


@contextmanager
def gateway(pki: Pki, cert: str) -> Iterator[Endpoint]:
    """A TLS gateway presenting ``cert`` (or speaking only TLS 1.1 for ``tls11``)."""
    if cert == "tls11":
        ctx = _legacy_context(ssl.PROTOCOL_TLS_SERVER, "TLSv1_1")
        ctx.load_cert_chain(*pki.certs["good"])
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(*pki.certs[cert])
    with blocking_tls_server(ctx) as server:
        yield Endpoint("tls", HOST_B, server.port)


async def _refused_handshake(pki: Pki, case: Refusal, dest: Endpoint) -> ssl.SSLError:
    """What loop.create_connection raises with sipedge's client context."""
    loop = asyncio.get_running_loop()
    ctx = client_context(TlsSettings(pki.cafile))
    with pytest.raises(ssl.SSLError) as info:
        await loop.create_connection(
            asyncio.Protocol, dest.host, dest.port, ssl=ctx, server_hostname=case.server_name
        )
    return info.value


async def _check_refusal(pki: Pki, case: Refusal, caplog: pytest.LogCaptureFixture) -> None:
    with gateway(pki, case.cert) as dest:
        exc = await _refused_handshake(pki, case, dest)
        assert type(exc) is case.error
        if case.verify_code is not None:
            assert isinstance(exc, ssl.SSLCertVerificationError)
            assert exc.verify_code == case.verify_code
        else:
            assert exc.reason == "TLSV1_ALERT_PROTOCOL_VERSION"

        caplog.clear()
        sink = RecordingSink()
        names = {dest: case.server_name}
        async with Transports(sink, tls=TlsSettings(pki.cafile), sni_for=names.get) as t:
            (local,) = await t.start([Endpoint("tcp", HOST_A, 0)])
            t.send(sip_request(1), dest, local)
            await until(lambda: sink.errors == [dest])
            await asyncio.sleep(0.02)
            assert sink.errors == [dest]  # exactly one transport error: the core fails over
            assert sink.messages == []
            assert t.connection_count == 0
            assert t.tls_failures == {case.reason: 1}
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == TCP_LOG]
    assert lines == [(
        logging.WARNING,
        f"TLS handshake with {dest} (server name {case.server_name}) failed: {case.detail}",
    )]


@pytest.mark.parametrize("case", list(REFUSALS.values()), ids=list(REFUSALS))
async def test_tls_gateway_refused_transport_error_and_one_warning(
    pki: Pki, case: Refusal, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=TCP_LOG)
    await _check_refusal(pki, case, caplog)


def test_tls_gateway_refusals_under_uvloop(pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    """The same outcomes on uvloop's SSL transport (the production loop on Linux)."""
    pytest.importorskip("uvloop")
    from sipedge.transport import run

    caplog.set_level(logging.INFO, logger=TCP_LOG)

    async def scenario() -> None:
        for name in ("other-ca-root-in-chain", "expired", "name-mismatch",
                     "gateway-speaks-tls11-only"):
            await _check_refusal(pki, REFUSALS[name], caplog)

    run(scenario())


def test_every_refusal_reason_is_a_declared_counter_key() -> None:
    assert {case.reason for case in REFUSALS.values()} <= set(TLS_FAILURE_REASONS)


async def test_tls_refusal_log_is_rate_limited_counter_is_not(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=TCP_LOG)
    sink = RecordingSink()
    with gateway(pki, "expired") as dest:
        async with Transports(sink, tls=TlsSettings(pki.cafile), sni_for=lambda _: DOMAIN) as t:
            (local,) = await t.start([Endpoint("tcp", HOST_A, 0)])
            for n in range(1, 8):
                t.send(sip_request(n), dest, local)
                await until(lambda n=n: len(sink.errors) == n)  # type: ignore[misc]
            assert t.tls_failures == {"expired": 7}
    warned = [r for r in caplog.records if r.name == TCP_LOG and r.levelno == logging.WARNING]
    assert len(warned) == 5  # RateLimitedLogger's burst for one (gateway, reason)


# -- inbound: the sipedge TLS listener refuses TLS 1.0 and 1.1 -----------------------------


@pytest.mark.parametrize("maximum", ["TLSv1", "TLSv1_1"])
async def test_tls_listener_refuses_legacy_versions(pki: Pki, maximum: str) -> None:
    sink = RecordingSink()
    legacy = _legacy_context(ssl.PROTOCOL_TLS_CLIENT, maximum)
    legacy.load_verify_locations(pki.cafile)
    loop = asyncio.get_running_loop()

    # Control: the same client does get through to a server that allows its version,
    # so the refusal below is sipedge's policy, not this OpenSSL's.
    lax = _legacy_context(ssl.PROTOCOL_TLS_SERVER, maximum)
    lax.load_cert_chain(*pki.certs["good"])
    control = await asyncio.start_server(lambda _r, w: w.close(), HOST_B, 0, ssl=lax)
    try:
        port = control.sockets[0].getsockname()[1]
        transport, _ = await loop.create_connection(
            asyncio.Protocol, HOST_B, port, ssl=legacy, server_hostname=DOMAIN
        )
        ssl_object = transport.get_extra_info("ssl_object")
        assert ssl_object.version() == maximum.replace("_", ".")
        transport.close()
    finally:
        control.close()
        await control.wait_closed()

    async with Transports(sink, tls=pki.server("good")) as t:
        (local,) = await t.start([Endpoint("tls", HOST_B, 0)])
        with pytest.raises((ConnectionResetError, ssl.SSLError)) as info:
            await loop.create_connection(
                asyncio.Protocol, local.host, local.port, ssl=legacy, server_hostname=DOMAIN
            )
        # OpenSSL writes a protocol_version alert, but asyncio's and uvloop's SSL
        # transports close without flushing it (cpython gh-98078), so this client sees
        # a reset; once the fix lands it sees the alert. Either way: refused.
        if isinstance(info.value, ssl.SSLError):
            assert info.value.reason == "TLSV1_ALERT_PROTOCOL_VERSION"
        await until(lambda: t.tls_inbound_failures["protocol_version"] == 1)
        assert sink.messages == [] and t.connection_count == 0


@pytest.mark.parametrize("maximum", ["TLSv1", "TLSv1_1"])
def test_server_context_refuses_legacy_versions_with_protocol_version_alert(
    pki: Pki, maximum: str
) -> None:
    """sipedge's server context itself answers TLS ≤ 1.1 with the protocol_version alert.

    Over blocking sockets, which do send the alert the asyncio listener drops.
    """
    legacy = _legacy_context(ssl.PROTOCOL_TLS_CLIENT, maximum)
    legacy.load_verify_locations(pki.cafile)
    with blocking_tls_server(server_context(pki.server("good"))) as server:
        with (
            socket.create_connection((HOST_B, server.port), timeout=3) as raw,
            pytest.raises(ssl.SSLError) as info,
        ):
            legacy.wrap_socket(raw, server_hostname=DOMAIN)
        assert info.value.reason == "TLSV1_ALERT_PROTOCOL_VERSION"
        deadline = 300
        while not server.outcomes and deadline:
            threading.Event().wait(0.01)
            deadline -= 1
    assert server.outcomes == ["UNSUPPORTED_PROTOCOL"]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")
@pytest.mark.parametrize(
    ("flags", "accepted"),
    [
        (["-tls1", "-cipher", "DEFAULT:@SECLEVEL=0"], False),
        (["-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"], False),
        (["-tls1_2"], True),
        (["-tls1_3"], True),
    ],
    ids=["tls1.0", "tls1.1", "tls1.2", "tls1.3"],
)
async def test_tls_listener_versions_seen_by_openssl_s_client(
    pki: Pki, flags: list[str], accepted: bool
) -> None:
    async with Transports(RecordingSink(), tls=pki.server("good")) as t:
        (local,) = await t.start([Endpoint("tls", HOST_B, 0)])
        proc = await asyncio.create_subprocess_exec(
            "openssl", "s_client", "-connect", f"{local.host}:{local.port}",
            "-servername", DOMAIN, "-CAfile", pki.cafile, "-verify_return_error", *flags,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(b""), 10)
        if not accepted:
            await until(lambda: t.tls_inbound_failures["protocol_version"] == 1)
        refused = {k: n for k, n in t.tls_inbound_failures.items() if n}
    text = out.decode(errors="replace")
    if accepted:
        assert proc.returncode == 0, text
        assert "Verify return code: 0 (ok)" in text
        assert refused == {}
    else:
        assert proc.returncode != 0, text
        assert "no peer certificate available" in text
        assert refused == {"protocol_version": 1}


# -- inbound: every refused handshake counted by reason, logged, closed ------------------

#: The listener's handshake budget, shrunk so the silent client's timeout is quick.
HANDSHAKE_S = 0.5
TLS_LISTENER_SETTINGS = StreamSettings(connect_timeout_s=HANDSHAKE_S)


async def _read_to_close(reader: asyncio.StreamReader) -> bytes:
    """Everything the listener sends until it closes (FIN or RST)."""
    got = b""
    with contextlib.suppress(ConnectionError):
        while chunk := await asyncio.wait_for(reader.read(65536), 5):
            got += chunk
    return got


async def _legacy_client(pki: Pki, local: Endpoint, maximum: str) -> None:
    legacy = _legacy_context(ssl.PROTOCOL_TLS_CLIENT, maximum)
    legacy.load_verify_locations(pki.cafile)
    with pytest.raises((ConnectionResetError, ssl.SSLError)):  # see the test above
        await asyncio.get_running_loop().create_connection(
            asyncio.Protocol, local.host, local.port, ssl=legacy, server_hostname=DOMAIN,
            local_addr=(HOST_A, 0),
        )


async def _tls11_client(pki: Pki, local: Endpoint) -> None:
    await _legacy_client(pki, local, "TLSv1_1")


async def _tls10_client(pki: Pki, local: Endpoint) -> None:
    await _legacy_client(pki, local, "TLSv1")


async def _plaintext_sip_client(pki: Pki, local: Endpoint) -> None:
    # A PBX configured for transport=tcp toward the TLS port: a SIP request in clear.
    reader, writer = await asyncio.open_connection(local.host, local.port, local_addr=(HOST_A, 0))
    writer.write(sip_request(1))
    assert await _read_to_close(reader) == b""  # closed, not a byte back
    writer.close()


async def _untrusting_client(pki: Pki, local: Endpoint) -> None:
    # A client whose CA bundle does not hold our CA refuses our certificate with an
    # unknown_ca alert, which the server reads as the handshake's end (TLS 1.3: instead
    # of the client's Finished). Blocking sockets on a thread, as a PBX's OpenSSL does
    # it: an asyncio client would close without flushing the alert (cpython gh-98078)
    # and the listener could only count "closed".
    ctx = client_context(TlsSettings(pki.other_cafile))

    def connect() -> None:
        with (
            socket.create_connection((local.host, local.port), 5, (HOST_A, 0)) as raw,
            pytest.raises(ssl.SSLCertVerificationError),
        ):
            ctx.wrap_socket(raw, server_hostname=DOMAIN)

    await asyncio.get_running_loop().run_in_executor(None, connect)


async def _connect_and_close_client(pki: Pki, local: Endpoint) -> None:
    # A TCP port check (a load balancer, keepalived, a scanner): connect, close.
    _, writer = await asyncio.open_connection(local.host, local.port, local_addr=(HOST_A, 0))
    writer.close()


async def _silent_client(pki: Pki, local: Endpoint) -> None:
    # Connects and never sends a ClientHello: the handshake deadline closes it.
    loop = asyncio.get_running_loop()
    start = loop.time()
    reader, writer = await asyncio.open_connection(local.host, local.port, local_addr=(HOST_A, 0))
    assert await _read_to_close(reader) == b""
    assert loop.time() - start >= HANDSHAKE_S
    writer.close()


@dataclass(frozen=True)
class InboundRefusal:
    client: Callable[[Pki, Endpoint], Awaitable[None]]
    reason: str  # the counter key
    level: int  # of the one log line
    detail: str  # the end of the log line


INBOUND_REFUSALS = {
    "tls1.1-client": InboundRefusal(
        _tls11_client, "protocol_version", logging.WARNING,
        "TLS version refused: unsupported protocol",
    ),
    "tls1.0-client": InboundRefusal(
        _tls10_client, "protocol_version", logging.WARNING,
        "TLS version refused: unsupported protocol",
    ),
    "plaintext-sip": InboundRefusal(
        _plaintext_sip_client, "not_tls", logging.WARNING,
        "not a TLS client: wrong version number",
    ),
    "client-refuses-our-certificate": InboundRefusal(
        _untrusting_client, "certificate", logging.WARNING,
        "the client refused our certificate: tlsv1 alert unknown ca",
    ),
    "silent-until-deadline": InboundRefusal(
        _silent_client, "timeout", logging.WARNING,
        "no complete handshake within the handshake timeout",
    ),
    "connect-and-close": InboundRefusal(
        _connect_and_close_client, "closed", logging.INFO, "closed during the handshake",
    ),
}


async def _good_client_completes(pki: Pki, local: Endpoint, sink: RecordingSink, n: int) -> None:
    """A client that trusts our CA and speaks TLS ≥ 1.2 delivers request ``n``."""
    async with Transports(
        RecordingSink(), tls=TlsSettings(pki.cafile), sni_for=lambda _: DOMAIN
    ) as client:
        (client_local,) = await client.start([Endpoint("tcp", HOST_A, 0)])
        client.send(sip_request(n), local, client_local)
        await until(lambda: len(sink.messages) == 1)
    assert sink.messages[0].data == sip_request(n)
    assert sink.messages[0].peer.host == HOST_A


async def _check_inbound_refusal(
    pki: Pki, case: InboundRefusal, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.clear()
    sink = RecordingSink()
    async with Transports(sink, settings=TLS_LISTENER_SETTINGS, tls=pki.server("good")) as t:
        (local,) = await t.start([Endpoint("tls", HOST_B, 0)])
        assert set(t.tls_inbound_failures) == set(TLS_INBOUND_FAILURE_REASONS)
        assert not any(t.tls_inbound_failures.values())
        await case.client(pki, local)
        await until(lambda: t.tls_inbound_failures[case.reason] == 1)
        await asyncio.sleep(0.05)  # nothing else follows
        assert {k: n for k, n in t.tls_inbound_failures.items() if n} == {case.reason: 1}
        assert sink.messages == [] and sink.errors == []
        assert t.connection_count == 0
        lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == TCP_LOG]
        assert len(lines) == 1, lines
        level, message = lines[0]
        assert level == case.level
        pattern = (rf"inbound TLS handshake from tls:{re.escape(HOST_A)}:\d+ failed "
                   rf"\({case.reason}\): {re.escape(case.detail)}")
        assert re.fullmatch(pattern, message), message
        # The listener is unharmed: a good client completes, and nothing more is counted.
        await _good_client_completes(pki, local, sink, 7)
        assert sum(t.tls_inbound_failures.values()) == 1


@pytest.mark.parametrize("case", list(INBOUND_REFUSALS.values()), ids=list(INBOUND_REFUSALS))
async def test_tls_listener_counts_refused_handshake_by_reason_and_logs_peer(
    pki: Pki, case: InboundRefusal, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=TCP_LOG)
    await _check_inbound_refusal(pki, case, caplog)


def test_tls_listener_refusals_counted_under_uvloop(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    """The same counts on uvloop (the production loop on Linux), every case; then a
    shutdown with handshakes in progress."""
    pytest.importorskip("uvloop")
    from sipedge.transport import run

    caplog.set_level(logging.INFO, logger=TCP_LOG)

    async def scenario() -> None:
        assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")
        for case in INBOUND_REFUSALS.values():
            await _check_inbound_refusal(pki, case, caplog)
        await _check_close_during_handshake(pki)

    run(scenario())


async def test_tls_inbound_failures_on_metrics_and_log_rate_limited(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=TCP_LOG)
    h = ProxyHarness()
    h.start()
    driver = CoreDriver(h.core, asyncio.get_running_loop(), lambda _event: None)
    sink = RecordingSink()
    try:
        async with Transports(sink, settings=TLS_LISTENER_SETTINGS, tls=pki.server("good")) as t:
            registry = make_registry(lambda: driver, transports=lambda: t, process=False)
            (local,) = await t.start([Endpoint("tls", HOST_B, 0)])
            for n in range(1, 8):
                await _plaintext_sip_client(pki, local)
                await until(lambda n=n: t.tls_inbound_failures["not_tls"] == n)  # type: ignore[misc]
            await _tls11_client(pki, local)
            await until(lambda: t.tls_inbound_failures["protocol_version"] == 1)
            await _good_client_completes(pki, local, sink, 8)
            body = exposition(registry).decode()
    finally:
        driver.close()
    series = dict(re.findall(r'^sipedge_tls_inbound_failures_total\{reason="(\w+)"\} (\S+)$',
                             body, re.MULTILINE))
    assert series == {why: "0.0" for why in TLS_INBOUND_FAILURE_REASONS} | {
        "not_tls": "7.0", "protocol_version": "1.0"}
    warned = [r for r in caplog.records if r.name == TCP_LOG and r.levelno == logging.WARNING]
    # RateLimitedLogger's burst per reason: 5 of the 7 plain-text lines, the TLS 1.1 one.
    assert [r.getMessage().split("(")[1].split(")")[0] for r in warned] == [
        "not_tls"] * 5 + ["protocol_version"]


async def test_tls_listener_deadlines_kept_handshake_then_first_byte(pki: Pki) -> None:
    """Two slowloris bounds in a row, as before: the handshake (``connect_timeout_s``,
    counted ``timeout`` above), then, once it is done, ``first_byte_timeout_s`` for the
    first SIP byte (a stream close, not a TLS failure)."""
    settings = StreamSettings(connect_timeout_s=HANDSHAKE_S, first_byte_timeout_s=0.3)
    loop = asyncio.get_running_loop()
    async with Transports(RecordingSink(), settings=settings, tls=pki.server("good")) as t:
        (local,) = await t.start([Endpoint("tls", HOST_B, 0)])
        ctx = client_context(TlsSettings(pki.cafile))
        start = loop.time()
        reader, writer = await asyncio.open_connection(
            local.host, local.port, ssl=ctx, server_hostname=DOMAIN, local_addr=(HOST_A, 0)
        )
        await until(lambda: t.connection_count == 1)  # handshake done: admitted
        assert await _read_to_close(reader) == b""
        assert loop.time() - start >= 0.3
        writer.close()
        await until(lambda: t.connection_count == 0)
        closes = {r.value: n for r, n in t.stream_closes.items() if n}
        assert closes == {"first_byte_timeout": 1}
        assert not any(t.tls_inbound_failures.values())


async def test_tls_listener_close_during_handshake_counts_nothing_frees_fds(pki: Pki) -> None:
    await _check_close_during_handshake(pki)


async def _check_close_during_handshake(pki: Pki) -> None:
    loop = asyncio.get_running_loop()
    fds = len(os.listdir("/proc/self/fd"))
    t = Transports(RecordingSink(), tls=pki.server("good"))  # 5 s handshake budget
    (local,) = await t.start([Endpoint("tls", HOST_B, 0)])
    silent = [
        await asyncio.open_connection(local.host, local.port, local_addr=(HOST_A, 0))
        for _ in range(5)
    ]
    await asyncio.sleep(0.05)  # accepted, handshakes waiting for a ClientHello
    start = loop.time()
    await t.aclose()
    assert loop.time() - start < 1.0  # cancelled, not waited out
    for reader, writer in silent:
        assert await _read_to_close(reader) == b""
        writer.close()
    await asyncio.sleep(0.05)
    assert not any(t.tls_inbound_failures.values())  # our shutdown is not the peer's fault
    assert len(os.listdir("/proc/self/fd")) == fds
