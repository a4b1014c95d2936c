"""A simulated SIP user agent on one loopback UDP address: a Twilio gateway or the PBX.

Theory of operation
-------------------
One :class:`UserAgent` owns one UDP socket and plays both roles a lab needs:

* **UAS** (a Twilio gateway answering calls from the PBX, or the PBX answering calls
  from Twilio): OPTIONS → 200; INVITE → 100 at once, 180 after ``ring_s``, 200 with an
  SDP answer after ``answer_s`` more (``c=``/``m=`` in Twilio's media range
  168.86.128.0/18, UDP 10000–60000, for a gateway); the final response is retransmitted
  (RFC 3261 §13.3.1.4, Timer G) until its ACK; ACK → nothing; BYE → 200 (481 for an
  unknown dialog); CANCEL → 200 and 487 for the INVITE (§9.2). A retransmitted request
  gets the last response again.
* **UAC** (the PBX placing a call through sipedge's inside listener, or a gateway
  placing one to its outside listener): :meth:`UserAgent.call` sends the INVITE
  (retransmitted per Timer A until a response), ACKs a non-2xx in the same transaction
  or a 2xx in a new one along the route set (``sipedge.sip.dialog``), holds, sends BYE
  and returns a :class:`CallResult` with the timings.

Every message is built with ``sipedge.sip.message`` (``build_request``,
``build_response``, ``build_ack``) and read with its ``parse``.

:meth:`UserAgent.go_down` stops the agent the way a gateway fails: ``"close"`` closes
the socket, so the kernel answers with ICMP port-unreachable; ``"blackhole"`` keeps it
and ignores everything (no answer at all). First it finishes the call set-ups it has
started (a tenth of a second at most), so the lab's accounting stays exact: a real
crash could also strand a half-set-up call, which sipedge leaves to Timer C.
:meth:`UserAgent.come_back` undoes it.

Lab agents only bind and send to loopback addresses (``ValueError`` otherwise).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import itertools
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from sipedge.proxy.routing import uri_endpoint
from sipedge.sip.address import Endpoint
from sipedge.sip.dialog import Dialog, uac_dialog
from sipedge.sip.errors import SipError
from sipedge.sip.message import (
    Request,
    Response,
    build_ack,
    build_request,
    build_response,
    parse,
)
from sipedge.sip.uri import parse_uri

__all__ = ["CallResult", "DownMode", "UserAgent", "is_loopback", "sdp"]

DownMode = Literal["close", "blackhole"]

#: RFC 3261 §17.1.1.1 defaults (the lab runs on them).
T1 = 0.5
T2 = 4.0
#: How long a UAC waits for the final response to its INVITE (Timer B, 64 × T1).
TIMER_B = 64 * T1
#: Twilio's media range (interconnect facts): c= hosts and m= ports of gateway answers.
TWILIO_MEDIA_PORTS = (10000, 60000)
_ALLOW = b"INVITE, ACK, BYE, CANCEL, OPTIONS"
_DONE_CACHE = 1024


def is_loopback(host: str) -> bool:
    """True for an IP literal on the loopback network (127.0.0.0/8, ::1)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def sdp(host: str, port: int, session: int) -> bytes:
    """A minimal SDP (RFC 4566) for one audio stream: PCMU and telephone-event."""
    return (
        b"v=0\r\n"
        b"o=- %d %d IN IP4 %s\r\n"
        b"s=-\r\n"
        b"c=IN IP4 %s\r\n"
        b"t=0 0\r\n"
        b"m=audio %d RTP/AVP 0 101\r\n"
        b"a=rtpmap:0 PCMU/8000\r\n"
        b"a=rtpmap:101 telephone-event/8000\r\n"
        b"a=sendrecv\r\n"
    ) % (session, session, host.encode(), host.encode(), port)


@dataclass(slots=True)
class CallResult:
    """What one call placed by :meth:`UserAgent.call` did, seen from the caller.

    Attributes:
        call_id: its Call-ID.
        code: the INVITE's final status (0: none before Timer B).
        pdd_s: INVITE sent → first 18x (post-dial delay), or None.
        setup_s: INVITE sent → final response, or None.
        answered_by: host of the 2xx's Contact (which UAS took the call), or None.
        bye_code: the BYE's final status, or None (no answer in time, or not sent).
    """

    call_id: str
    code: int = 0
    pdd_s: float | None = None
    setup_s: float | None = None
    answered_by: str | None = None
    bye_code: int | None = None

    @property
    def answered(self) -> bool:
        """True when the INVITE got a 2xx."""
        return 200 <= self.code < 300


@dataclass(slots=True)
class _Incoming:
    """One INVITE server transaction of the UAS, and then its dialog until the BYE."""

    invite: Request
    addr: Any
    to_tag: bytes
    last: bytes | None = None
    final: int = 0
    acked: bool = False
    handles: list[asyncio.TimerHandle] = field(default_factory=list)


class _Socket(asyncio.DatagramProtocol):
    """One binding of the agent's address (a new one after each come-back)."""

    def __init__(self, agent: UserAgent) -> None:
        self.agent = agent
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.agent._received(data, addr)

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP from a closed peer: the transaction timers deal with it


class UserAgent:
    """A simulated SIP UA (see the module docstring).

    Args:
        name: a label for tables (``"127.0.0.64"``).
        local: the UDP address to bind (port 0: ephemeral; see ``local`` after start).
        ring_s: INVITE → 180.
        answer_s: 180 → 200; None rings until CANCELled.
        media_host: the ``c=`` host of the SDP it sends.
        user: the user part of its Contact.
        bye_timeout_s: how long a UAC waits for the answer to its BYE.
        on_answered: called with each INVITE this agent answers with 200 (UAS).
    """

    def __init__(self, name: str, local: Endpoint, *, ring_s: float = 0.02,
                 answer_s: float | None = 0.05, media_host: str = "168.86.128.10",
                 user: str = "lab", bye_timeout_s: float = 4.0,
                 on_answered: Callable[[UserAgent, Request], None] | None = None) -> None:
        if not is_loopback(local.host):
            raise ValueError(f"{name}: lab agents bind loopback addresses only, not {local}")
        self.name = name
        self.local = local
        self.ring_s = ring_s
        self.answer_s = answer_s
        self.media_host = media_host
        self.user = user.encode()
        self.bye_timeout_s = bye_timeout_s
        self.on_answered = on_answered
        #: Requests received by method (retransmissions included), for tests.
        self.received: collections.Counter[str] = collections.Counter()
        #: Request-URIs of the requests received, in order (bounded), for tests.
        self.request_uris: collections.deque[bytes] = collections.deque(maxlen=256)
        self.answered = 0
        self.mode: DownMode | None = None
        self._sock: _Socket | None = None
        self._incoming: dict[bytes, _Incoming] = {}  # INVITE branch → transaction
        self._dialogs: dict[bytes, _Incoming] = {}  # Call-ID → answered INVITE
        self._done: collections.OrderedDict[tuple[bytes, bytes], bytes] = (
            collections.OrderedDict())
        self._outgoing: dict[bytes, asyncio.Queue[Response]] = {}  # Call-ID → responses
        self._acks: dict[bytes, tuple[bytes, Any]] = {}  # Call-ID → our ACK for its 2xx
        self._placing = 0  # calls placed (UAC) whose INVITE has no final response yet
        self._answering = 0  # INVITEs received (UAS) not answered finally yet
        self._ids = itertools.count(1)
        self._nonce = os.urandom(4).hex()
        self._rng = random.Random()

    # -- life --------------------------------------------------------------------------

    @property
    def is_up(self) -> bool:
        """True while the agent answers (not gone down)."""
        return self.mode is None and self._sock is not None

    async def start(self) -> None:
        """Bind the address (port 0 picks one; ``local`` then names it)."""
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_datagram_endpoint(
            lambda: _Socket(self), local_addr=(self.local.host, self.local.port))
        self._sock = proto
        assert proto.transport is not None
        host, port = proto.transport.get_extra_info("sockname")[:2]
        self.local = Endpoint("udp", host, port)
        self.mode = None

    async def close(self) -> None:
        """Close the socket and forget every transaction (idempotent)."""
        self._forget()
        sock, self._sock = self._sock, None
        if sock is not None and sock.transport is not None:
            sock.transport.close()
            await asyncio.sleep(0)  # let connection_lost run: the socket is closed now

    async def go_down(self, mode: DownMode) -> None:
        """Stop answering: ``close`` (ICMP port-unreachable) or ``blackhole`` (silence).

        New INVITEs are ignored at once; call set-ups already started finish first
        (up to 1 s), then the agent forgets everything it was doing.
        """
        self.mode = mode
        deadline = asyncio.get_running_loop().time() + 1.0
        while (self._placing or self._answering) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        if mode == "close":
            await self.close()
        else:
            self._forget()

    async def come_back(self) -> None:
        """Answer again (rebinding the address after ``close``)."""
        if self._sock is None:
            await self.start()
        self.mode = None

    def _forget(self) -> None:
        for tx in self._incoming.values():
            for handle in tx.handles:
                handle.cancel()
        self._incoming.clear()
        self._dialogs.clear()
        self._done.clear()
        self._answering = 0

    # -- wire --------------------------------------------------------------------------

    def _send(self, data: bytes, addr: Any) -> None:
        if not is_loopback(str(addr[0])):
            raise ValueError(f"{self.name}: lab agents send to loopback only, not {addr[0]}")
        sock = self._sock
        if sock is not None and sock.transport is not None and not sock.transport.is_closing():
            sock.transport.sendto(data, addr)

    def _received(self, data: bytes, addr: Any) -> None:
        try:
            msg = parse(data)
            if isinstance(msg, Response):
                self._on_response(msg, addr)
            else:
                self._on_request(msg, addr)
        except SipError:
            return  # a lab agent is not a conformance test: malformed input is ignored

    def _via(self, branch: bytes) -> bytes:
        return b"SIP/2.0/UDP %s;branch=%s;rport" % (self.local.hostport.encode(), branch)

    def _token(self) -> bytes:
        return f"{self._nonce}{next(self._ids):x}".encode()

    def _contact(self) -> bytes:
        return b"<sip:%s@%s>" % (self.user, self.local.hostport.encode())

    def _sdp(self) -> bytes:
        low, high = TWILIO_MEDIA_PORTS
        port = self._rng.randrange(low, high, 2)  # RTP on an even port (RFC 3550 §11)
        return sdp(self.media_host, port, self._rng.randrange(1, 2**31))

    # -- UAS ---------------------------------------------------------------------------

    def _on_request(self, req: Request, addr: Any) -> None:
        if self.mode is not None and req.method != b"ACK":
            return  # going down: nothing new is answered
        method = req.method.decode("ascii", "replace")
        self.received[method] += 1
        self.request_uris.append(req.request_uri)
        branch = req.top_via.branch or b""
        if req.method == b"INVITE":
            self._on_invite(req, addr, branch)
        elif req.method == b"ACK":
            self._on_ack(req, branch)
        elif (branch, req.method) in self._done:
            self._send(self._done[(branch, req.method)], addr)  # retransmission
        elif req.method == b"CANCEL":
            self._on_cancel(req, addr, branch)
        elif req.method == b"BYE":
            known = self._dialogs.pop(req.call_id, None) is not None
            self._answer(req, addr, branch, 200 if known else 481)
        elif req.method == b"OPTIONS":
            self._answer(req, addr, branch, 200, headers=((b"Allow", _ALLOW),))
        else:
            self._answer(req, addr, branch, 501)

    def _answer(self, req: Request, addr: Any, branch: bytes, status: int,
                headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        data = build_response(req, status, to_tag=self._token(), headers=headers)
        self._done[(branch, req.method)] = data
        while len(self._done) > _DONE_CACHE:
            self._done.popitem(last=False)
        self._send(data, addr)

    def _on_invite(self, req: Request, addr: Any, branch: bytes) -> None:
        tx = self._incoming.get(branch)
        if tx is not None:
            if tx.last is not None:
                self._send(tx.last, addr)  # §17.2.1: a retransmission gets the last answer
            return
        if self.mode is not None:
            return
        tx = self._incoming[branch] = _Incoming(req, addr, self._token())
        self._answering += 1
        self._respond(tx, 100)
        loop = asyncio.get_running_loop()
        tx.handles.append(loop.call_later(self.ring_s, self._respond, tx, 180))
        if self.answer_s is not None:
            tx.handles.append(loop.call_later(self.ring_s + self.answer_s, self._respond,
                                              tx, 200))

    def _respond(self, tx: _Incoming, status: int) -> None:
        if tx.final:
            return
        req = tx.invite
        headers: list[tuple[bytes, bytes]] = []
        body = b""
        if 100 < status < 300:
            # RFC 3261 §12.1.1: the UAS copies Record-Route into its 18x/2xx, in order.
            headers += [(b"Record-Route", v) for v in req.header_values(b"record-route")]
            headers.append((b"Contact", self._contact()))
        if status == 200:
            headers.append((b"Content-Type", b"application/sdp"))
            body = self._sdp()
        data = build_response(req, status, to_tag=tx.to_tag, headers=headers, body=body)
        tx.last = data
        self._send(data, tx.addr)
        if status >= 200:
            tx.final = status
            self._answering -= 1
            if status == 200:
                self.answered += 1
                self._dialogs[req.call_id] = tx
                if self.on_answered is not None:
                    self.on_answered(self, req)
            self._retransmit_final(tx, T1, 0.0)

    def _retransmit_final(self, tx: _Incoming, interval: float, waited: float) -> None:
        """Timer G: the final response again, T1 doubling up to T2, until ACK (Timer H)."""
        if tx.acked or waited >= TIMER_B:
            self._incoming.pop(tx.invite.top_via.branch or b"", None)
            return
        if waited:
            assert tx.last is not None
            self._send(tx.last, tx.addr)
        loop = asyncio.get_running_loop()
        tx.handles.append(loop.call_later(interval, self._retransmit_final, tx,
                                          min(2 * interval, T2), waited + interval))

    def _on_ack(self, req: Request, branch: bytes) -> None:
        # A non-2xx is ACKed in its INVITE's transaction (same branch, §17.1.1.3); a 2xx
        # in a transaction of its own, matched to the dialog by Call-ID (§13.2.2.4).
        tx = self._incoming.get(branch) or self._dialogs.get(req.call_id)
        if tx is not None:
            tx.acked = True

    def _on_cancel(self, req: Request, addr: Any, branch: bytes) -> None:
        tx = self._incoming.get(branch)
        self._answer(req, addr, branch, 200 if tx is not None else 481)
        if tx is not None and not tx.final:
            for handle in tx.handles:
                handle.cancel()
            self._respond(tx, 487)  # §9.2: the INVITE ends with 487 Request Terminated

    # -- UAC ---------------------------------------------------------------------------

    def _on_response(self, resp: Response, addr: Any) -> None:
        call_id = resp.call_id
        queue = self._outgoing.get(call_id)
        if queue is not None:
            queue.put_nowait(resp)
            return
        ack = self._acks.get(call_id)
        if ack is not None and 200 <= resp.status < 300 and resp.cseq.method == b"INVITE":
            self._send(*ack)  # §13.2.2.4: a retransmitted 2xx gets the ACK again

    async def call(self, proxy: Endpoint, request_uri: bytes, *, hold_s: float,
                   setup_timeout_s: float = TIMER_B) -> CallResult:
        """Place one call through ``proxy``: INVITE, ACK, hold ``hold_s``, BYE.

        Args:
            proxy: where the INVITE goes (sipedge's listener).
            request_uri: its Request-URI.
            hold_s: seconds between the ACK and the BYE.
            setup_timeout_s: how long to wait for a final response.

        Returns:
            The call's result (never raises for a call that fails).
        """
        token = self._token()
        call_id = token + b"@" + self.local.host.encode()
        queue: asyncio.Queue[Response] = asyncio.Queue()
        self._outgoing[call_id] = queue
        result = CallResult(call_id.decode())
        host = self.local.hostport.encode()
        to_user = parse_uri(request_uri).user or b""
        data = build_request(
            b"INVITE", request_uri, via=self._via(b"z9hG4bK-lab-" + token),
            from_=b"<sip:%s@%s>;tag=%s" % (self.user, host, token),
            to=b"<sip:%s@%s>" % (to_user, host), call_id=call_id, cseq=1,
            headers=((b"Contact", self._contact()), (b"Content-Type", b"application/sdp"),
                     (b"User-Agent", b"sipedge-lab")),
            body=sdp(self.media_host, 40000, 1))
        invite = parse(data)
        assert isinstance(invite, Request)
        addr = (proxy.host, proxy.port)
        self._placing += 1
        try:
            final = await self._invite(data, addr, queue, result, setup_timeout_s)
        finally:
            self._placing -= 1
        try:
            if final is None:
                return result
            if not result.answered:
                self._send(build_ack(invite, final), addr)  # §17.1.1.3, same transaction
                return result
            try:
                dialog = uac_dialog(invite, final)
                next_hop = uri_endpoint(parse_uri(dialog.next_hop()))
                result.answered_by = parse_uri(dialog.remote_target).host.decode()
            except SipError:
                return result
            if next_hop is None:
                return result
            hop = (next_hop.host, next_hop.port)
            ack = dialog.request(b"ACK", via=self._via(b"z9hG4bK-lab-" + self._token()))
            self._acks[call_id] = (ack, hop)
            self._send(ack, hop)
            await asyncio.sleep(hold_s)
            result.bye_code = await self._bye(dialog, hop, queue)
            return result
        finally:
            del self._outgoing[call_id]
            self._acks.pop(call_id, None)

    async def _invite(self, data: bytes, addr: Any, queue: asyncio.Queue[Response],
                      result: CallResult, timeout_s: float) -> Response | None:
        """Send the INVITE (Timer A until a provisional) and wait for the final response."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + timeout_s
        interval: float | None = T1
        self._send(data, addr)
        while (left := deadline - loop.time()) > 0:
            wait = left if interval is None else min(left, interval)
            try:
                resp = await asyncio.wait_for(queue.get(), wait)
            except TimeoutError:
                if interval is not None:
                    self._send(data, addr)
                    interval *= 2
                continue
            if resp.cseq.method != b"INVITE":
                continue
            interval = None  # §17.1.1.2: any response stops the retransmissions
            now = loop.time()
            if 180 <= resp.status < 190 and result.pdd_s is None:
                result.pdd_s = now - start
            if resp.status >= 200:
                result.code = resp.status
                result.setup_s = now - start
                return resp
        return None

    async def _bye(self, dialog: Dialog, hop: Any, queue: asyncio.Queue[Response]) -> int | None:
        """BYE (Timer E retransmissions, T1 doubling up to T2) until its final response."""
        loop = asyncio.get_running_loop()
        data = dialog.request(b"BYE", via=self._via(b"z9hG4bK-lab-" + self._token()))
        deadline = loop.time() + self.bye_timeout_s
        interval = T1
        self._send(data, hop)
        while (left := deadline - loop.time()) > 0:
            try:
                resp = await asyncio.wait_for(queue.get(), min(left, interval))
            except TimeoutError:
                self._send(data, hop)
                interval = min(2 * interval, T2)
                continue
            if resp.cseq.method == b"BYE" and resp.status >= 200:
                return resp.status
            if resp.cseq.method == b"INVITE" and 200 <= resp.status < 300:
                ack = self._acks.get(dialog.call_id)
                if ack is not None:
                    self._send(*ack)
        return None

    async def wait_idle(self, timeout_s: float) -> None:
        """Wait until no call placed by this agent is in progress (up to ``timeout_s``)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while self._outgoing:
                    await asyncio.sleep(0.02)
