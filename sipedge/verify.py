"""``sipedge verify``: Twilio's "verify the path" step, now, from this host.

Theory of operation: out of band of the daemon, so it also runs beside one. For every
configured gateway it opens a UDP socket bound to the outside listener's address on an
ephemeral port (the source Twilio's ACL knows) and ``connect()``-ed to the gateway, so
an ICMP port-unreachable comes back as an error instead of a silent timeout. It sends
the daemon's own OPTIONS (``gateway.probe.build_probe``: Request-URI host = the edge's
localized domain), retransmitted as RFC 3261 §17.1.2.2 says (Timer E), and prints a
table: gateway, edge, code, RTT or why not.

``--call NUMBER`` then places one INVITE to the first gateway of the first edge that
answered with a healthy code, with the Request-URI the proxy would send
(``proxy.rewrite.localize_request_uri``: ``sip:NUMBER@{domain}.sip.{edge}.twilio.com``).
A 2xx is ACKed and hung up at once (BYE); a call still ringing after ``--timeout`` is
CANCELled (RFC 3261 §9.1); any other final response is ACKed (§17.1.1.3). Every request
goes to that gateway: the verify never sends anywhere the config does not name.

This contacts whatever the config names: on a production config, Twilio.

Exit status: 0 when a gateway of the first edge answers the OPTIONS with a healthy code
(``[probe] healthy_codes``) and, with ``--call``, the INVITE got any response; 69
(EX_UNAVAILABLE) otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass
from typing import Any, TextIO

from sipedge.config import Config, GatewayConfig
from sipedge.gateway.pool import gateway_id
from sipedge.gateway.probe import build_probe
from sipedge.proxy.rewrite import localize_request_uri
from sipedge.sip.address import Endpoint
from sipedge.sip.dialog import uac_dialog
from sipedge.sip.errors import SipError
from sipedge.sip.message import (
    Request,
    Response,
    build_ack,
    build_cancel,
    build_request,
    parse,
)
from sipedge.sip.uri import parse_uri

__all__ = ["EX_UNAVAILABLE", "ProbeRow", "Target", "call_request_uri", "plan", "probe_table",
           "run", "verify"]

EX_UNAVAILABLE = 69
T1 = 0.5
T2 = 4.0
#: Characters a NUMBER may hold: the user part of a SIP URI without escapes (RFC 3261 §25.1).
_USER_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                        "-_.!~*'()&=+$,/#")


@dataclass(frozen=True, slots=True)
class Target:
    """One configured gateway as verify sees it.

    Attributes:
        id: ``ashburn-ix/208.78.112.64:5060`` (as the daemon names it).
        edge: its edge.
        endpoint: where it is.
        domain_host: its edge's localized domain (Request-URI host of probes and calls).
        skip: why verify cannot reach it (a DNS name, a stream transport), or None.
    """

    id: str
    edge: str
    endpoint: Endpoint
    domain_host: bytes
    skip: str | None = None


@dataclass(frozen=True, slots=True)
class ProbeRow:
    """The OPTIONS result of one gateway: a code and RTT, or why none."""

    target: Target
    code: int | None
    rtt_s: float | None
    error: str | None


def _target(edge: str, domain: str, gw: GatewayConfig) -> Target:
    endpoint = gw.endpoint
    skip = None
    if not gw.is_ip:
        skip = "DNS name (verify sends to IP gateways only)"
    elif endpoint.transport != "udp":
        skip = f"{endpoint.transport} (verify speaks UDP only)"
    return Target(gateway_id(edge, endpoint), edge, endpoint, domain.encode("ascii"), skip)


def plan(config: Config) -> list[Target]:
    """Every configured gateway, first edge first (pure: nothing is sent)."""
    return [_target(edge.name, edge.localized_domain, gw)
            for edge in config.edges for gw in edge.gateways]


def call_request_uri(config: Config, number: str, edge_index: int = 0) -> bytes:
    """The Request-URI of the test call, exactly as the proxy localizes a PBX's INVITE.

    Raises:
        ValueError: ``number`` is not a usable SIP user part.
    """
    if not number or not set(number) <= _USER_CHARS:
        raise ValueError(f"{number!r} is not a number or SIP user part")
    inside = config.inside.listen[0]
    # What the PBX would send sipedge, then the proxy's own rewrite of it.
    uri = parse_uri(b"sip:%s@%s" % (number.encode("ascii"), inside.hostport.encode("ascii")))
    domain = config.edges[edge_index].localized_domain.encode("ascii")
    return localize_request_uri(uri, domain)


def source_host(config: Config) -> str:
    """The host verify sends from: the first UDP outside listener's (else the first's)."""
    listen = config.outside.listen
    udp = [ep for ep in listen if ep.transport == "udp"]
    return (udp or list(listen))[0].host


class _Flow(asyncio.DatagramProtocol):
    """A connected UDP socket to one gateway: parsed messages and errors, in order."""

    def __init__(self) -> None:
        #: (arrival on time.perf_counter(), message or error): uvloop's loop.time() has
        #: millisecond resolution, too coarse for a loopback or private-link RTT.
        self.queue: asyncio.Queue[tuple[float, Response | Request | OSError]] = (
            asyncio.Queue())
        #: When the last received item arrived.
        self.arrival = 0.0
        #: Responses that arrived while another transaction was being waited for.
        self.stash: list[Response] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        with contextlib.suppress(SipError):  # not SIP: not an answer
            self.queue.put_nowait((time.perf_counter(), parse(data)))

    def error_received(self, exc: Exception) -> None:
        if isinstance(exc, OSError):
            self.queue.put_nowait((time.perf_counter(), exc))

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(data)

    @property
    def local(self) -> Endpoint:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return Endpoint("udp", host, port)


async def _open(host: str, target: Target) -> _Flow:
    loop = asyncio.get_running_loop()
    _, flow = await loop.create_datagram_endpoint(
        _Flow, local_addr=(host, 0),
        remote_addr=(target.endpoint.host, target.endpoint.port))
    return flow


async def _transact(flow: _Flow, data: bytes | None, method: bytes, timeout_s: float,
                    *, on_provisional: Any = None) -> tuple[Response | None, str | None]:
    """Send ``data`` with Timer A/E retransmissions until a final response to ``method``.

    ``data`` None only waits (the INVITE's 487 after a CANCEL). Responses to other
    methods are kept in ``flow.stash`` for the transaction that waits for them.
    """
    for resp in flow.stash:
        if resp.cseq.method == method and resp.status >= 200:
            flow.stash.remove(resp)
            return resp, None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    interval: float | None = None if data is None else T1
    if data is not None:
        flow.send(data)
    while (left := deadline - loop.time()) > 0:
        try:
            flow.arrival, item = await asyncio.wait_for(
                flow.queue.get(), left if interval is None else min(left, interval))
        except TimeoutError:
            if interval is not None and data is not None:
                flow.send(data)
                # INVITE: doubling (Timer A); non-INVITE: doubling capped at T2 (Timer E).
                interval = 2 * interval if method == b"INVITE" else min(2 * interval, T2)
            continue
        if isinstance(item, OSError):
            return None, "unreachable (ICMP)" if isinstance(item, ConnectionRefusedError) \
                else f"error: {item.strerror or item}"
        if not isinstance(item, Response):
            continue
        if item.cseq.method != method:
            flow.stash.append(item)
            continue
        if item.status < 200:
            if method == b"INVITE":
                interval = None  # §17.1.1.2: a provisional stops INVITE retransmissions
            if on_provisional is not None:
                on_provisional(item)
            continue
        return item, None
    return None, "timeout"


async def _probe(host: str, target: Target, nonce: int, instance: bytes,
                 timeout_s: float) -> ProbeRow:
    if target.skip is not None:
        return ProbeRow(target, None, None, target.skip)
    try:
        flow = await _open(host, target)
    except OSError as exc:
        return ProbeRow(target, None, None, f"cannot send from {host}: {exc.strerror or exc}")
    try:
        data, _ = build_probe(target, flow.local, nonce, instance=instance,
                              from_user=b"sipedge-verify", user_agent=b"sipedge verify")
        start = time.perf_counter()
        resp, error = await _transact(flow, data, b"OPTIONS", timeout_s)
        rtt = flow.arrival - start
        if resp is None:
            return ProbeRow(target, None, None, error)
        return ProbeRow(target, resp.status, rtt, None)
    finally:
        assert flow.transport is not None
        flow.transport.close()


def probe_table(rows: list[ProbeRow]) -> str:
    """The table ``sipedge verify`` prints (no trailing newline)."""
    lines = [("gateway", "edge", "code", "RTT")]
    for r in rows:
        code = "-" if r.code is None else str(r.code)
        rtt = f"{r.rtt_s * 1000:.1f} ms" if r.rtt_s is not None else (r.error or "-")
        lines.append((r.target.id, r.target.edge, code, rtt))
    widths = [max(len(line[i]) for line in lines) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
                     for line in lines)


def _status(resp: Response) -> str:
    return f"{resp.status} {resp.reason.decode('utf-8', 'replace')}".rstrip()


async def _call(config: Config, target: Target, number: str, timeout_s: float,
                out: TextIO, instance: bytes) -> bool:
    """The test call; True when the INVITE got any response."""
    request_uri = call_request_uri(config, number, [e.name for e in config.edges]
                                   .index(target.edge))
    flow = await _open(source_host(config), target)
    try:
        local = flow.local
        host = local.hostport.encode("ascii")
        token = instance + b"-call"
        invite_bytes = build_request(
            b"INVITE", request_uri,
            via=b"SIP/2.0/UDP %s;branch=z9hG4bK-verify-%s;rport" % (host, token),
            from_=b"<sip:sipedge-verify@%s>;tag=%s" % (host, token),
            to=b"<%s>" % request_uri, call_id=token + b"@" + local.host.encode("ascii"),
            cseq=1,
            headers=((b"Contact", b"<sip:sipedge-verify@%s>" % host),
                     (b"User-Agent", b"sipedge verify"),
                     (b"Content-Type", b"application/sdp")),
            body=(b"v=0\r\no=- 1 1 IN IP4 %s\r\ns=sipedge verify\r\nc=IN IP4 %s\r\nt=0 0\r\n"
                  b"m=audio 9 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=inactive\r\n")
            % (local.host.encode(), local.host.encode()))
        invite = parse(invite_bytes)
        assert isinstance(invite, Request)
        out.write(f"test call: INVITE {request_uri.decode()}\n"
                  f"  to {target.id} from {local}\n")
        start = time.perf_counter()
        seen: list[Response] = []

        def provisional(resp: Response) -> None:
            seen.append(resp)
            out.write(f"  {_status(resp)}  {(flow.arrival - start) * 1000:.1f} ms\n")

        final, error = await _transact(flow, invite_bytes, b"INVITE", timeout_s,
                                       on_provisional=provisional)
        if final is None and not seen:
            out.write(f"  no response ({error}); nothing to cancel (RFC 3261 §9.1)\n")
            return False
        if final is None:
            # Still ringing: CANCEL (same branch), then the INVITE ends with 487 (§9.1).
            ok, _ = await _transact(flow, build_cancel(invite), b"CANCEL", timeout_s)
            out.write(f"  no final response in {timeout_s:g} s: CANCEL sent -> "
                      f"{_status(ok) if ok else 'no answer'}\n")
            final, _ = await _transact(flow, None, b"INVITE", timeout_s)
            if final is None:
                out.write("final: none (the INVITE was cancelled)\n")
                return True
        out.write(f"  {_status(final)}  {(flow.arrival - start) * 1000:.1f} ms  "
                  f"(answered by {target.id})\n")
        if 200 <= final.status < 300:
            dialog = uac_dialog(invite, final)
            # ACK and BYE go to the same gateway (our next hop), R-URI = its Contact.
            flow.send(dialog.request(
                b"ACK", via=b"SIP/2.0/UDP %s;branch=z9hG4bK-verify-%s-ack;rport" % (host, token)))
            bye = dialog.request(
                b"BYE", via=b"SIP/2.0/UDP %s;branch=z9hG4bK-verify-%s-bye;rport" % (host, token))
            ok, error = await _transact(flow, bye, b"BYE", timeout_s)
            out.write(f"  ACK sent; BYE sent -> {_status(ok) if ok else error}\n")
        else:
            flow.send(build_ack(invite, final))
            out.write("  ACK sent\n")
        out.write(f"final: {final.status}\n")
        return True
    finally:
        assert flow.transport is not None
        flow.transport.close()


async def verify(config: Config, *, call: str | None = None, timeout_s: float = 2.0,
                 out: TextIO) -> int:
    """Probe every gateway, print the table, optionally place the test call; exit status."""
    targets = plan(config)
    host = source_host(config)
    instance = b"v" + os.urandom(4).hex().encode("ascii")
    out.write(f"sipedge verify: OPTIONS from {host} (ephemeral port) to {len(targets)} "
              f"gateways, timeout {timeout_s:g} s\n")
    rows = await asyncio.gather(*(_probe(host, t, i, instance, timeout_s)
                                  for i, t in enumerate(targets, 1)))
    out.write(probe_table(list(rows)) + "\n")
    healthy = config.probe.healthy_codes
    first = config.edges[0].name
    good = [r for r in rows if r.target.edge == first and r.code in healthy]
    total = sum(r.target.edge == first for r in rows)
    out.write(f"{first}: {len(good)} of {total} gateways answered\n")
    if not good:
        out.write(f"sipedge verify: no gateway of the first edge ({first}) answered\n")
        return EX_UNAVAILABLE
    if call is not None and not await _call(config, good[0].target, call, timeout_s, out,
                                            instance):
        return EX_UNAVAILABLE
    return 0


def run(config: Config, *, call: str | None, timeout_s: float, out: TextIO) -> int:
    """``sipedge verify`` in the foreground (its own event loop); the exit status."""
    from sipedge.transport import run as run_loop

    return run_loop(verify(config, call=call, timeout_s=timeout_s, out=out))
