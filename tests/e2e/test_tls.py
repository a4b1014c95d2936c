"""PBX → Twilio over TLS: an in-test TLS gateway (trustme certificate) receives the call.

The gateway runs in a thread with the stdlib ``ssl`` server side and records the SNI it
was asked for; sipedge is the real daemon subprocess, the PBX a small UDP user agent.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from pathlib import Path

import pytest
import trustme

from sipedge.sip.framing import StreamFramer
from sipedge.sip.message import Request, build_response, parse
from tests.e2e.conftest import lab_config

pytestmark = pytest.mark.e2e

DOMAIN = "example.sip.ashburn-ix.twilio.com"


class TlsGateway(threading.Thread):
    """Answers OPTIONS with 200 and INVITE with 200 over TLS on 127.0.0.64:5061."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        super().__init__(daemon=True)
        self.sni: list[str | None] = []
        self.invites: list[bytes] = []
        self.ctx = ctx
        ctx.sni_callback = lambda _sock, name, _ctx: self.sni.append(name)  # type: ignore[assignment,misc]
        self.listener = socket.create_server(("127.0.0.64", 5061))
        self.listener.settimeout(0.2)
        self.stopping = False

    def run(self) -> None:
        while not self.stopping:
            try:
                raw, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # listener closed by stop()
            threading.Thread(target=self.serve, args=(raw,), daemon=True).start()

    def serve(self, raw: socket.socket) -> None:
        try:
            conn = self.ctx.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()
            return
        framer = StreamFramer()
        conn.settimeout(0.2)
        with conn:
            while not self.stopping:
                try:
                    chunk = conn.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not chunk:
                    return
                framer.feed(chunk)
                while (data := framer.next_message()) is not None:
                    msg = parse(data)
                    if not isinstance(msg, Request):
                        continue
                    if msg.method == b"INVITE":
                        self.invites.append(data)
                    if msg.method in (b"INVITE", b"OPTIONS", b"BYE"):
                        rr = [(b"Record-Route", v) for v in msg.header_values(b"record-route")]
                        contact = [(b"Contact", b"<sip:gw@127.0.0.64:5061;transport=tls>")]
                        conn.sendall(build_response(msg, 200, to_tag=b"tlsgw",
                                                    headers=rr + contact))

    def stop(self) -> None:
        self.stopping = True
        self.listener.close()


def test_invite_reaches_tls_gateway_with_localized_domain_as_sni(
        tmp_path: Path, daemon_factory: object) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert(DOMAIN)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    cafile = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    gateway = TlsGateway(server_ctx)
    gateway.start()
    try:
        config = lab_config(tmp_path, transport="tls", virginia='["127.0.0.64"]',
                            oregon='["127.0.1.64"]', interval_up=5, interval_down=5,
                            extra=f'\n[tls]\ncafile = "{cafile}"\n')
        daemon = daemon_factory(config)  # type: ignore[operator]
        pbx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        pbx.bind(("127.0.0.1", 0))
        pbx.settimeout(5)
        port = pbx.getsockname()[1]
        invite = (
            f"INVITE sip:+14155550100@127.0.0.1:5080 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-tls-1;rport\r\n"
            f"From: <sip:pbx@127.0.0.1>;tag=pbx1\r\n"
            f"To: <sip:+14155550100@127.0.0.1>\r\n"
            f"Call-ID: tls-1@127.0.0.1\r\nCSeq: 1 INVITE\r\n"
            f"Contact: <sip:pbx@127.0.0.1:{port}>\r\nMax-Forwards: 70\r\n"
            f"Content-Length: 0\r\n\r\n").encode()
        pbx.sendto(invite, ("127.0.0.1", 5080))
        statuses = []
        deadline = time.monotonic() + 10
        while 200 not in statuses and time.monotonic() < deadline:
            data, _ = pbx.recvfrom(65536)
            statuses.append(int(data.split(b" ", 2)[1]))
        pbx.close()
        assert statuses[:1] == [100] and 200 in statuses, daemon.log()
        assert gateway.invites, daemon.log()
        fwd = parse(gateway.invites[0])
        assert isinstance(fwd, Request)
        assert fwd.request_uri == f"sip:+14155550100@{DOMAIN}".encode()
        assert fwd.top_via.transport == b"TLS"
        assert DOMAIN in gateway.sni
        assert set(gateway.sni) == {DOMAIN}
    finally:
        gateway.stop()
