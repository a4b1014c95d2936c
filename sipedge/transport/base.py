"""What the transport layer offers and expects: the leaf module of ``sipedge.transport``.

Theory of operation: the asyncio shell (``udp``, ``tcp``, ``tls``, composed by
:class:`sipedge.transport.Transports`) turns socket events into two calls on a
:class:`MessageSink` — ``receive`` for every datagram or framed stream message and
``transport_error`` when bytes for a destination could not be delivered — and offers
one call back, :meth:`Sender.send`. Peers never cause exceptions here (house rule 6):
a refused connection, a reset or a failed TLS handshake becomes a ``transport_error``
*value*; :class:`TransportError` is raised only to the operator-facing code that
starts the transports (a port already in use, an unreadable certificate).

This module imports only asyncio and the ``Endpoint`` value type so every other
transport module (and the driver) can import it without cycles.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from sipedge.sip.address import Endpoint

__all__ = [
    "MessageSink",
    "Sender",
    "StreamCloseReason",
    "StreamSettings",
    "TlsSettings",
    "TransportError",
    "TransportErrorReason",
    "new_event_loop",
    "run",
]

_T = TypeVar("_T")


class MessageSink(Protocol):
    """What the transports deliver to (the driver implements it; tests use a recorder).

    Both methods are called from the event loop, never re-entrantly from inside
    :meth:`Sender.send`, and must not raise.
    """

    def receive(self, data: bytes, peer: Endpoint, local: Endpoint, now: float) -> None:
        """One datagram or one framed stream message.

        Args:
            data: the message bytes (one UDP datagram or one whole framed message).
            peer: where it came from; a response or request sent to this exact
                ``Endpoint`` goes back over the same UDP socket or stream connection.
            local: the listener it arrived on (for an outbound stream connection: the
                ``local`` it was opened for).
            now: ``loop.time()`` when the bytes were read.
        """
        ...

    def transport_error(self, dest: Endpoint, now: float) -> None:
        """Bytes for ``dest`` could not be delivered (RFC 3261 §18.4 transport error).

        Args:
            dest: the destination given to :meth:`Sender.send`, or the peer of a
                stream connection that was reset.
            now: ``loop.time()`` when the failure was seen.
        """
        ...

    def is_answerable(self, peer: Endpoint, local: Endpoint, now: float) -> bool:
        """Whether the transport may answer ``peer`` itself (a query; no side effects).

        Asked before the one answer a transport builds on its own, the stream 513 for
        a message too large to read: a source the proxy does not serve (a stranger
        under ``reject_unknown = "drop"``, the wrong side, a banned source) gets the
        connection closed without a byte instead.

        Args:
            peer: where the message came from.
            local: the listener it arrived on.
            now: ``loop.time()``.
        """
        ...


class Sender(Protocol):
    """The one call the driver makes into the transports."""

    def send(self, data: bytes, dest: Endpoint, local: Endpoint) -> None:
        """Queue ``data`` for ``dest``; never blocks and never raises for peer problems."""
        ...


class TransportErrorReason(enum.Enum):
    """Why the transport layer refused to do what the operator asked."""

    BIND_FAILED = "bind failed"
    TLS_CONFIG = "bad TLS configuration"
    UNSUPPORTED = "unsupported transport"
    CLOSED = "transports closed"


class TransportError(Exception):
    """The one error type of the transport layer (operator-facing, never peer-caused).

    Attributes:
        reason: what kind of failure.
        detail: human text (which address, which file, the OS error).
    """

    def __init__(self, reason: TransportErrorReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


class StreamCloseReason(enum.Enum):
    """Why the stream transport refused or closed a connection on its own initiative.

    The keys of ``StreamTable.closes`` (one counter each, for the metrics collector).
    Closes the peer asked for (FIN, RST) or the operator did (shutdown) are not here.
    """

    TOTAL_LIMIT = "total_limit"  # accepted over ``max_connections``: closed at once
    PER_IP_LIMIT = "per_ip_limit"  # accepted over ``max_connections_per_ip``: closed at once
    FIRST_BYTE_TIMEOUT = "first_byte_timeout"  # nothing sent within ``first_byte_timeout_s``
    MESSAGE_TIMEOUT = "message_timeout"  # a message begun, unfinished after ``message_timeout_s``
    TOO_LARGE = "too_large"  # Content-Length makes the message exceed ``max_message`` (513)
    # The same, from a source the sink says not to answer (a stranger, by default):
    # closed without a byte back, as the core drops a stranger's datagram.
    TOO_LARGE_DROPPED = "too_large_dropped"
    HEADERS_TOO_LARGE = "headers_too_large"  # ``max_message`` bytes and still no CRLF CRLF
    FRAMING_ERROR = "framing_error"  # Content-Length missing, malformed or conflicting
    IDLE_TIMEOUT = "idle_timeout"  # between messages, no bytes either way for ``idle_timeout_s``
    WRITE_STALLED = "write_stalled"  # the peer stopped reading: ``write_hard_limit`` passed


@dataclass(frozen=True, slots=True)
class StreamSettings:
    """Tuning for TCP/TLS connections (defaults suit a trunk proxy; tests shrink them).

    Attributes:
        idle_timeout_s: a connection with no bytes in either direction for this long is
            closed. 600 s outlives an INVITE transaction left ringing for Timer C
            (> 3 min, RFC 3261 §16.6 step 11) so its final response can still use the
            inbound connection (§18.2.2: a new connection to the caller's sent-by
            would hit a NAT or firewall); it is far above the 15 s probe / CRLF
            keep-alive interval so gateway flows never reap; the cost is one file
            descriptor per idle peer, bounded by ``max_connections`` (and per source
            address by ``max_connections_per_ip``). Kamailio's
            ``tcp_connection_lifetime``. It governs only the gaps *between* messages;
            a connection that never sends, or stalls inside a message, meets the
            much shorter ``first_byte_timeout_s`` / ``message_timeout_s``.
        connect_timeout_s: TCP connect plus TLS handshake budget. Below Twilio's 4 s
            "no provisional reply" failover timer would starve the handshake on a slow
            link; above it the proxy core has already failed over anyway. It also
            bounds the handshake of a peer connecting to a TLS listener (the TLS form
            of slowloris; past it the connection is aborted and counted ``timeout`` in
            ``StreamTable.tls_inbound_failures``).
        keepalive_s: an outbound connection with no bytes either way for this long gets a
            double-CRLF keep-alive ping (RFC 5626 §4.4.1; the gateway answers a single
            CRLF), so NATs and firewalls on the private link keep the flow; 0 disables.
            30 s is twice Twilio's probe interval: a probed flow never needs one.
        max_connections: cap on open stream connections (inbound plus outbound);
            beyond it an accepted connection is closed at once (counted as
            ``TOTAL_LIMIT``) and sends that need a new connection fail. Kamailio's
            ``tcp_max_connections``; the cost of the cap is one fd and at most
            ``max_message`` buffered bytes per connection.
        max_connections_per_ip: cap on *inbound* connections from one source address;
            beyond it an accepted connection is closed at once (``PER_IP_LIMIT``).
            A PBX trunk opens one or a few connections (one flow per registration or
            per transport; RFC 5626 flows are per instance) and Twilio's signalling
            edges reuse a handful per address, so 64 leaves room for a PBX cluster or
            several IP phones behind one NAT address while one misbehaving host can
            take at most 64 of the 4096 slots rather than all of them. Outbound
            connections (ours, to configured gateways) do not count. 0 disables.
        first_byte_timeout_s: an accepted connection that has sent no byte at all
            this long after accept (after the TLS handshake, for TLS) is closed
            (``FIRST_BYTE_TIMEOUT``): slowloris's cheapest form, a connect and
            nothing more. A SIP client opens a connection to send a request
            (RFC 3261 §18.1.1) and writes it at once; 5 s is far above a round trip
            on the private link, a slow TLS client included (the handshake has its
            own ``connect_timeout_s``).
            Once a byte arrived, the idle timeout governs the gaps between messages.
            0 disables.
        message_timeout_s: once the first byte of a message arrived, the whole
            message (header block and body, up to ``max_message``) must arrive within
            this long, else the connection is closed (``MESSAGE_TIMEOUT``): the
            trickling slowloris that keeps ``last_activity`` fresh with one byte at a
            time and so defeats the idle timeout. 64 KiB take milliseconds on the
            private link; 10 s forgives a congested path and a retransmission or two.
            Keep-alive CRLFs between messages are not a message. 0 disables.
        max_message: largest framed message accepted, header block plus body
            (Kamailio's ``tcp_rd_buf_size`` plays this role). A Content-Length that
            makes a request larger is answered ``513 Message Too Large`` (RFC 3261
            §21.5.14) and the connection closed (``TOO_LARGE``), unless the sink's
            ``is_answerable`` says the source gets nothing (a stranger under
            ``reject_unknown = "drop"``): then it is only closed
            (``TOO_LARGE_DROPPED``); a header block that
            passes it without CRLF CRLF is closed unanswered (``HEADERS_TOO_LARGE``).
            The read buffer of a connection never holds more than this plus one read.
        write_high_water: write buffer size at which reading from that peer pauses
            (backpressure: do not accept work whose answers cannot be written).
        write_hard_limit: write buffer size at which the peer is a lost cause and the
            connection is aborted (a peer that stopped reading; Kamailio's
            ``tcp_conn_wq_max``).
        max_pending: bytes queued for a connection that is still connecting.
    """

    idle_timeout_s: float = 600.0
    keepalive_s: float = 30.0
    connect_timeout_s: float = 5.0
    max_connections: int = 4096
    max_connections_per_ip: int = 64
    first_byte_timeout_s: float = 5.0
    message_timeout_s: float = 10.0
    max_message: int = 65535
    write_high_water: int = 256 * 1024
    write_hard_limit: int = 4 * 1024 * 1024
    max_pending: int = 1024 * 1024


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """Where the TLS material lives (paths are already absolute; see ``sipedge.config``).

    Attributes:
        cafile: CA bundle every TLS peer we connect to is verified against.
        certfile: our certificate chain (PEM), required to listen on TLS.
        keyfile: its private key (PEM); ``None`` when it is inside ``certfile``.
    """

    cafile: str
    certfile: str | None = None
    keyfile: str | None = None


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new event loop: uvloop's when it is importable (Linux), else asyncio's.

    Returns:
        A fresh loop, not set as the current loop.
    """
    try:
        import uvloop
    except ImportError:  # not a hard dependency off Linux; asyncio is the fallback
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def run(main: Coroutine[Any, Any, _T], *, debug: bool | None = None) -> _T:
    """Run ``main`` to completion on a loop from :func:`new_event_loop`.

    ``asyncio.Runner`` with a loop factory rather than a global event loop policy:
    the policy API is deprecated from Python 3.14 on and a policy is process-global.

    Args:
        main: the coroutine to run (the daemon's entry point).
        debug: asyncio debug mode, ``None`` to follow ``PYTHONASYNCIODEBUG``.

    Returns:
        What ``main`` returned.
    """
    with asyncio.Runner(debug=debug, loop_factory=new_event_loop) as runner:
        return runner.run(main)
