"""Stream transports (TCP, and TLS through ``tls.py``): listeners, connections, reuse.

Theory of operation:

* A :class:`StreamTable` owns every stream connection of one process, inbound
  (accepted on a listener) and outbound (opened by :meth:`StreamTable.send`), in one
  table keyed by the *remote* :class:`Endpoint`. RFC 3261 §18 connection reuse falls out
  of the key: a response or request for ``tcp:198.51.100.7:49152`` goes back over the
  connection that peer opened, and a second request to ``tcp:208.78.112.64:5060``
  reuses the connection the first one opened.
* An outbound connection is entered in the table *before* it connects, with a bounded
  queue of pending bytes, so messages sent while connecting keep their order and do
  not open a second connection. A refused connect, a timeout, a failed TLS handshake
  or a reset becomes ``sink.transport_error(dest, now)`` (RFC 3261 §18.4).
* A failed outbound TLS handshake (the peer's certificate refused, no common TLS
  version) is an operator-visible fact, not a routine connect failure: one WARNING
  line (rate-limited) names the destination, the server name it was checked against
  and the reason, and ``StreamTable.tls_failures`` counts it by reason for metrics.
* A TLS listener is not ``loop.create_server(ssl=...)``: there the loop runs the
  handshake before any protocol of ours exists and drops a failure silently (asyncio
  and uvloop alike), so a PBX offering TLS 1.1, or sending plain SIP to the TLS port,
  would leave no trace. The table binds the socket itself, accepts plain TCP in a
  reader callback and hands each accepted socket to ``loop.connect_accepted_socket``
  with the server context and the same ``ssl_handshake_timeout`` (the handshake's
  slowloris bound), which raises what went wrong: one rate-limited WARNING names the
  peer and the reason, and ``StreamTable.tls_inbound_failures`` counts it. (Not
  ``loop.start_tls`` on an accepted transport: uvloop starts reading right after
  ``connection_made``, so a ClientHello could reach our protocol before the handshake
  task ran and be lost.) Admission, framing and deadlines start once the handshake is
  done, in ``connection_made``, exactly as before.
* Each connection frames its byte stream with ``sipedge.sip.framing.StreamFramer``
  (Content-Length framing, RFC 3261 §18.3). A framing error is unrecoverable on a
  stream — the next message boundary is unknown — so the connection is closed.
  A double-CRLF keep-alive ping is answered with a single CRLF pong (RFC 5626 §4.4.1).
* Resource caps (issue 13; Kamailio's ``tcp_max_connections``, ``tcp_conn_wq_max``,
  ``tcp_rd_buf_size``, ``tcp_connection_lifetime`` are the reference): no peer can make
  the table hold unbounded memory or descriptors.

  - Admission: an accepted connection over ``max_connections`` (all connections) or
    ``max_connections_per_ip`` (inbound ones from its source address) is aborted in
    ``connection_made``, before a byte is read.
  - Read buffer: the framer holds at most ``max_message`` plus one read. A request
    whose Content-Length makes it larger is answered 513 built from its header block
    (``answer_parse_error``, RFC 3261 §21.5.14) and closed, when the sink says the
    source may be answered (``is_answerable``: the proxy core's access rules and
    ``reject_unknown``; a stranger's is closed without a byte back, counted
    ``TOO_LARGE_DROPPED``); a header block that passes the maximum without CRLF CRLF
    is closed unanswered.
  - Slowloris: an accepted connection must send its first byte within
    ``first_byte_timeout_s``, and a message once begun must be whole within
    ``message_timeout_s`` — one byte every few seconds keeps ``last_activity`` fresh
    and would otherwise defeat the idle timeout. Between messages (keep-alive CRLFs
    included) only the idle timeout applies, so a quiet trunk is left alone.
  - Write buffer: see backpressure below.

  Each connection carries at most one armed deadline (a float and its reason), set
  when the framer state changes, never a timer of its own; the one periodic reaper
  compares it, O(connections) per sweep. Every close the table decides is counted
  in :attr:`StreamTable.closes` by :class:`StreamCloseReason`, read by the metrics
  collector at scrape time.
* One periodic reaper closes connections idle longer than ``idle_timeout_s`` and those
  past their deadline. Its period is at most 1 s while a deadline is enabled (a close
  is at most one period late) and otherwise a quarter of the idle timeout.
* Backpressure: when a peer stops reading and our write buffer passes the high-water
  mark, reading from that same peer pauses until the buffer drains; past a hard limit
  the connection is aborted rather than buffering without bound.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import os
import socket
import ssl
from collections.abc import Callable
from typing import cast

from sipedge.logs import RateLimitedLogger
from sipedge.sip.address import Endpoint
from sipedge.sip.errors import ParseError
from sipedge.sip.framing import StreamFramer
from sipedge.sip.message import answer_parse_error
from sipedge.transport.base import (
    MessageSink,
    StreamCloseReason,
    StreamSettings,
    TransportError,
    TransportErrorReason,
)
from sipedge.transport.tls import (
    TLS_INBOUND_FAILURE_REASONS,
    handshake_failure,
    inbound_handshake_failure,
)
from sipedge.transport.udp import peer_endpoint

__all__ = ["StreamConnection", "StreamTable", "listening_socket"]

_log = logging.getLogger(__name__)

_PING = b"\r\n\r\n"
_PONG = b"\r\n"
_WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})
#: How long a 513 may take to flush before the connection is aborted anyway (a peer
#: that sent too much and does not read must not keep its descriptor).
_LINGER_S = 2.0
#: Reaper period bounds: fine enough for sub-second test deadlines, and at most 1 s
#: while any slowloris deadline is enabled.
_MIN_PERIOD_S = 0.05
_DEADLINE_PERIOD_S = 1.0
#: Connections a TLS listener accepts per readiness callback (asyncio's own server takes
#: up to its backlog per wake-up; a bounded batch keeps one burst from holding the loop).
_ACCEPT_BATCH = 64
#: accept() errors that mean "out of descriptors or memory": accepting pauses this long
#: instead of spinning on a listener that stays readable (asyncio's server does the same).
_ACCEPT_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_ACCEPT_RETRY_S = 1.0
#: listen() backlog of every stream listener (a burst of trunk reconnects after a restart).
_BACKLOG = 1024
#: Refusals at admission (logged at WARNING: the operator may need to raise a cap).
_LIMITS = frozenset({StreamCloseReason.TOTAL_LIMIT, StreamCloseReason.PER_IP_LIMIT})
#: Closes the sink hears about as a transport error: the peer had sent (part of) a
#: message, so the core may hold transactions for it. A connection that never sent
#: a byte, or was refused, has nothing the core knows of.
_REPORTED = frozenset({
    StreamCloseReason.MESSAGE_TIMEOUT,
    StreamCloseReason.TOO_LARGE,
    StreamCloseReason.TOO_LARGE_DROPPED,
    StreamCloseReason.HEADERS_TOO_LARGE,
    StreamCloseReason.FRAMING_ERROR,
    StreamCloseReason.WRITE_STALLED,
})


class StreamConnection(asyncio.Protocol):
    """One TCP or TLS connection: a framer on the way in, a queue while connecting.

    Attributes:
        peer: the remote endpoint (the table key); ``None`` until an inbound
            connection is made.
        local: the listener this connection belongs to (inbound) or the ``local`` it
            was opened for (outbound); given to the sink with every message.
        last_activity: ``loop.time()`` of the last byte read or written.
        deadline: ``loop.time()`` by which :attr:`deadline_reason` closes the
            connection unless the framer moves on (``math.inf``: none armed); the
            reaper compares it.
        deadline_reason: FIRST_BYTE_TIMEOUT after accept, MESSAGE_TIMEOUT while a
            message is in progress, ``None`` when none is armed or while a 513 is
            lingering (the reaper then aborts without counting again).
    """

    def __init__(
        self,
        table: StreamTable,
        transport_name: str,
        local: Endpoint,
        peer: Endpoint | None = None,
    ) -> None:
        self.peer = peer
        self.local = local
        self._table = table
        self._transport_name = transport_name
        self._transport: asyncio.Transport | None = None
        self._framer = StreamFramer(table.settings.max_message)
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._failed = False
        self.last_activity = table.loop.time()
        # We opened it (peer known up front): ours to keep alive toward a gateway.
        self.outbound = peer is not None
        self.deadline = math.inf
        self.deadline_reason: StreamCloseReason | None = None
        self.counted_ip: str | None = None  # the source address admit() counted it under
        self.closed = asyncio.Event()

    # -- asyncio callbacks --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # cast, not isinstance: uvloop's transports do not subclass asyncio.Transport.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        self.last_activity = self._table.loop.time()
        transport.set_write_buffer_limits(high=self._table.settings.write_high_water)
        if self.peer is None:  # accepted on a listener
            self.peer = peer_endpoint(self._transport_name, transport.get_extra_info("peername"))
            if not self._table.admit(self):
                transport.abort()
                return
            first_byte_s = self._table.settings.first_byte_timeout_s
            if first_byte_s > 0:  # slowloris: a connect and nothing more
                self.deadline = self.last_activity + first_byte_s
                self.deadline_reason = StreamCloseReason.FIRST_BYTE_TIMEOUT
        if self._pending:
            transport.write(b"".join(self._pending))
            self._pending.clear()
            self._pending_size = 0

    def data_received(self, data: bytes) -> None:
        loop = self._table.loop
        self.last_activity = now = loop.time()
        framer = self._framer
        framer.feed(data)
        delivered = False
        try:
            while (message := framer.next_message()) is not None:
                assert self.peer is not None
                delivered = True
                self._table.sink.receive(message, self.peer, self.local, now)
        except ParseError as exc:
            self._reject(exc, now)
            return
        if not framer.in_message:
            # Between messages (keep-alive CRLFs included): the idle timeout governs.
            self.deadline = math.inf
            self.deadline_reason = None
        elif delivered or self.deadline_reason is not StreamCloseReason.MESSAGE_TIMEOUT:
            # A new message began in this read: it must be whole within the deadline
            # (a byte at a time keeps last_activity fresh; this clock does not reset).
            message_s = self._table.settings.message_timeout_s
            if message_s > 0:
                self.deadline = now + message_s
                self.deadline_reason = StreamCloseReason.MESSAGE_TIMEOUT
            else:
                self.deadline = math.inf
                self.deadline_reason = None
        pings = framer.pings
        if pings:
            framer.pings = 0  # the framer counts since the caller last reset it
            if self._transport is not None:
                # RFC 5626 §4.4.1: each double-CRLF ping gets one single-CRLF pong.
                self._transport.write(_PONG * pings)

    def eof_received(self) -> bool | None:
        return None  # half-closed is useless to SIP: let asyncio close our side

    def pause_writing(self) -> None:
        # The peer is not reading: stop reading its requests too (backpressure).
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._table.forget(self)
        if (exc is not None or self._failed) and self.peer is not None:
            self._table.report_error(self.peer)
        self.closed.set()

    # -- API ----------------------------------------------------------------------------

    @property
    def is_connected(self) -> bool:
        """True once connected (and, for TLS, after the handshake)."""
        return self._transport is not None

    @property
    def write_buffer_size(self) -> int:
        """Bytes queued but not yet handed to the kernel (pending included)."""
        if self._transport is None:
            return self._pending_size
        return self._transport.get_write_buffer_size()

    def write(self, data: bytes) -> bool:
        """Queue ``data``; False when the connection cannot take it (caller reports)."""
        settings = self._table.settings
        transport = self._transport
        if transport is None:
            if self._pending_size + len(data) > settings.max_pending:
                return False
            self._pending.append(data)
            self._pending_size += len(data)
            return True
        if transport.is_closing():
            return False
        transport.write(data)
        self.last_activity = self._table.loop.time()
        if transport.get_write_buffer_size() > settings.write_hard_limit:
            self._close_for(StreamCloseReason.WRITE_STALLED, "peer not reading")
        return True

    @property
    def is_closing(self) -> bool:
        """True once a close was started (or the connection is gone)."""
        return self._transport is None or self._transport.is_closing()

    def close_idle(self, now: float) -> None:
        """Close after ``idle_timeout_s`` without traffic: gracefully, within a bound."""
        self._table.count_close(self, StreamCloseReason.IDLE_TIMEOUT)
        self.close()
        self.deadline = now + _LINGER_S
        self.deadline_reason = None

    def close(self) -> None:
        """Close gracefully (buffered bytes are flushed first)."""
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        """Close now, dropping buffered bytes."""
        if self._transport is not None:
            self._transport.abort()
        else:
            self.closed.set()

    def expire(self) -> None:
        """The reaper found :attr:`deadline` passed: close for :attr:`deadline_reason`."""
        reason = self.deadline_reason
        self.deadline = math.inf
        if reason is None:  # a 513 that did not flush in time: just let go
            if self._transport is not None:
                self._transport.abort()
            return
        self._close_for(reason)

    def _reject(self, exc: ParseError, now: float) -> None:
        # RFC 3261 §18.3: without a usable Content-Length the stream cannot be
        # re-synchronised, and a message over the maximum is not read: either way
        # closing is the only safe answer.
        if exc.status != 513:
            self._close_for(StreamCloseReason.FRAMING_ERROR, exc.reason)
            return
        head = self._framer.pending_head()
        if head is None:  # max_message bytes and still no CRLF CRLF: nothing to answer
            self._close_for(StreamCloseReason.HEADERS_TOO_LARGE, exc.reason)
            return
        assert self.peer is not None
        if not self._table.sink.is_answerable(self.peer, self.local, now):
            # The core would not answer this source (reject_unknown = "drop" for a
            # stranger, the default): no 513, so a scanner learns nothing here either.
            self._close_for(StreamCloseReason.TOO_LARGE_DROPPED, exc.reason)
            return
        # RFC 3261 §21.5.14 513 Message Too Large, when the header block is a request
        # with Via/From/To/Call-ID/CSeq to copy (answer_parse_error returns None for a
        # response or when one is missing); sent back over this connection (§18.2.2).
        reply = answer_parse_error(head, exc, to_tag=os.urandom(5).hex().encode())
        transport = self._transport
        if reply is None or transport is None:
            self._close_for(StreamCloseReason.TOO_LARGE, exc.reason)
            return
        self._table.count_close(self, StreamCloseReason.TOO_LARGE, exc.reason)
        self._failed = True
        transport.write(reply)
        transport.close()  # flush the 513 first; stops reading at once
        self.deadline = now + _LINGER_S  # ...but not forever if the peer is not reading
        self.deadline_reason = None

    def _close_for(self, reason: StreamCloseReason, detail: str = "") -> None:
        """Count ``reason`` and abort (a slowloris peer gets no graceful flush)."""
        self._table.count_close(self, reason, detail)
        self.deadline = math.inf
        self.deadline_reason = None
        if reason in _REPORTED:
            self._failed = True
        if self._transport is not None:
            self._transport.abort()


def listening_socket(local: Endpoint) -> socket.socket:
    """A non-blocking listening TCP socket on ``local``, as a stream listener binds it.

    The options ``loop.create_server`` sets: ``SO_REUSEADDR`` (a restart does not wait
    out TIME_WAIT; a port someone *listens* on still fails with ``EADDRINUSE``) and
    ``IPV6_V6ONLY`` for an IPv6 address; the backlog is :data:`_BACKLOG`.

    Args:
        local: a ``tcp`` or ``tls`` address; port 0 picks an ephemeral port.

    Returns:
        The socket (the caller owns it).

    Raises:
        OSError: the bind or listen failed.
    """
    family = socket.AF_INET6 if ":" in local.host else socket.AF_INET
    sock = socket.create_server((local.host, local.port), family=family, backlog=_BACKLOG)
    sock.setblocking(False)
    return sock


class _Listener:
    """A stream listener and its bound endpoint.

    TCP: ``server`` (the loop's). TLS: ``sock`` (bound and accepted by the table,
    watched with ``loop.add_reader``; see the module docstring), ``ssl`` its context,
    ``retry`` the timer that resumes accepting after descriptors ran out.
    """

    __slots__ = ("local", "retry", "server", "sock", "ssl")

    def __init__(self, local: Endpoint) -> None:
        self.local = local
        self.server: asyncio.Server | None = None
        self.sock: socket.socket | None = None
        self.ssl: ssl.SSLContext | None = None
        self.retry: asyncio.TimerHandle | None = None

    def close(self, loop: asyncio.AbstractEventLoop) -> None:
        """Stop accepting (idempotent); accepted connections are not touched."""
        if self.server is not None:
            self.server.close()
        if self.retry is not None:
            self.retry.cancel()
            self.retry = None
        sock = self.sock
        if sock is not None:
            self.sock = None
            loop.remove_reader(sock.fileno())
            sock.close()


class StreamTable:
    """Every stream connection and listener, keyed by remote endpoint.

    Args:
        sink: where framed messages and transport errors go.
        loop: the running loop.
        settings: timeouts and limits.
        client_ssl: the context outbound ``tls`` connections use (``None``: sends to a
            ``tls`` destination fail with a transport error).
        sni_for: server name for an outbound ``tls`` destination (SNI and the name the
            certificate is checked against); ``None`` from it means ``dest.host``.

    Attributes:
        tls_failures: failed outbound TLS handshakes by reason (the keys are
            ``sipedge.transport.tls.TLS_FAILURE_REASONS``; a reason appears once seen),
            read at scrape time by the metrics.
        tls_inbound_failures: failed handshakes of peers connecting to a TLS listener,
            by reason (every ``sipedge.transport.tls.TLS_INBOUND_FAILURE_REASONS`` is a
            key from the start); monotonic counters.
        closes: connections refused or closed by the table, by reason (every
            :class:`StreamCloseReason` is a key from the start, so a collector can
            export zeros); monotonic counters, never reset.
    """

    def __init__(
        self,
        sink: MessageSink,
        loop: asyncio.AbstractEventLoop,
        settings: StreamSettings,
        *,
        client_ssl: ssl.SSLContext | None = None,
        sni_for: Callable[[Endpoint], str | None] | None = None,
    ) -> None:
        self.sink = sink
        self.loop = loop
        self.settings = settings
        self._client_ssl = client_ssl
        self._sni_for = sni_for
        self.connections: dict[Endpoint, StreamConnection] = {}
        self.tls_failures: dict[str, int] = {}
        self.tls_inbound_failures: dict[str, int] = dict.fromkeys(TLS_INBOUND_FAILURE_REASONS, 0)
        self._open: set[StreamConnection] = set()  # everything not yet connection_lost
        self._connecting: set[asyncio.Task[None]] = set()
        self._handshakes: set[asyncio.Task[None]] = set()  # inbound TLS, not yet connected
        # Accepted sockets whose handshake task has not started yet: close() closes them,
        # since a task cancelled before its first step never runs its body.
        self._unclaimed: set[socket.socket] = set()
        self._listeners: list[_Listener] = []
        self._closing = False
        self.closes: dict[StreamCloseReason, int] = dict.fromkeys(StreamCloseReason, 0)
        self._per_ip: dict[str, int] = {}  # admitted inbound connections by source address
        self._limited = RateLimitedLogger(_log)
        period = min(max(settings.idle_timeout_s / 4, _MIN_PERIOD_S), 30.0)
        if settings.keepalive_s > 0:
            period = min(period, max(settings.keepalive_s / 3, _MIN_PERIOD_S))
        for deadline_s in (settings.first_byte_timeout_s, settings.message_timeout_s):
            if deadline_s > 0:  # honour it within a period: at most 1 s late
                period = min(period, _DEADLINE_PERIOD_S, max(deadline_s / 4, _MIN_PERIOD_S))
        self._reap_period = period
        self._reaper: asyncio.TimerHandle | None = loop.call_later(period, self._reap)

    # -- listeners ----------------------------------------------------------------------

    async def listen(
        self,
        local: Endpoint,
        server_ssl: ssl.SSLContext | None = None,
        *,
        sock: socket.socket | None = None,
    ) -> Endpoint:
        """Accept connections on ``local`` (``tcp`` or, with ``server_ssl``, ``tls``).

        Args:
            local: address to bind; port 0 picks an ephemeral port.
            server_ssl: the server context for a ``tls`` listener.
            sock: an already bound and listening socket to accept on instead of
                binding ``local`` (a worker's copy of the parent's shared listener;
                see :func:`listening_socket`); the table takes it over and closes it
                with the listener.

        Returns:
            The bound endpoint.

        Raises:
            TransportError: BIND_FAILED when the address cannot be bound.
        """
        listener = _Listener(local)
        name = local.transport
        if server_ssl is not None:
            return self._listen_tls(listener, server_ssl, sock)

        def factory() -> StreamConnection:
            return StreamConnection(self, name, listener.local)

        try:
            if sock is None:
                server = await self.loop.create_server(
                    factory,
                    local.host,
                    local.port,
                    family=socket.AF_INET6 if ":" in local.host else socket.AF_INET,
                    reuse_address=True,
                    backlog=_BACKLOG,
                )
            else:
                server = await self.loop.create_server(factory, sock=sock, backlog=_BACKLOG)
        except OSError as exc:
            if sock is not None:
                sock.close()
            raise TransportError(TransportErrorReason.BIND_FAILED, f"{local}: {exc}") from exc
        listener.server = server
        listener.local = peer_endpoint(name, server.sockets[0].getsockname())
        self._listeners.append(listener)
        return listener.local

    def _listen_tls(
        self, listener: _Listener, server_ssl: ssl.SSLContext, sock: socket.socket | None
    ) -> Endpoint:
        local = listener.local
        if sock is None:
            try:
                sock = listening_socket(local)
            except OSError as exc:
                raise TransportError(TransportErrorReason.BIND_FAILED, f"{local}: {exc}") from exc
        sock.setblocking(False)
        listener.sock = sock
        listener.ssl = server_ssl
        listener.local = peer_endpoint(local.transport, sock.getsockname())
        self.loop.add_reader(sock.fileno(), self._accept_tls, listener)
        self._listeners.append(listener)
        return listener.local

    def _accept_tls(self, listener: _Listener) -> None:
        """Readiness callback of a TLS listener: accept, then handshake in a task each."""
        sock = listener.sock
        if sock is None or self._closing:
            return
        for _ in range(_ACCEPT_BATCH):
            try:
                conn_sock, address = sock.accept()
            except (BlockingIOError, InterruptedError):
                return  # the backlog is empty
            except ConnectionAbortedError:
                continue  # reset while in the backlog: nothing to hand over
            except OSError as exc:
                if exc.errno in _ACCEPT_EXHAUSTED:
                    self._limited.log(logging.WARNING, "tls accept", "accept on %s: %s; "
                                      "pausing for %.0f s", listener.local, exc, _ACCEPT_RETRY_S)
                    self.loop.remove_reader(sock.fileno())
                    listener.retry = self.loop.call_later(
                        _ACCEPT_RETRY_S, self._resume_accept, listener)
                else:
                    self._limited.log(logging.WARNING, "tls accept", "accept on %s: %s",
                                      listener.local, exc)
                return
            conn_sock.setblocking(False)
            self._unclaimed.add(conn_sock)
            task = self.loop.create_task(self._handshake(conn_sock, address, listener))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    def _resume_accept(self, listener: _Listener) -> None:
        listener.retry = None
        if listener.sock is not None and not self._closing:
            self.loop.add_reader(listener.sock.fileno(), self._accept_tls, listener)

    async def _handshake(
        self, sock: socket.socket, address: tuple[str, int], listener: _Listener
    ) -> None:
        """The TLS handshake of one accepted socket; a failure is counted and logged."""
        self._unclaimed.discard(sock)  # the loop owns it from here, closes it on failure
        assert listener.ssl is not None
        conn = StreamConnection(self, listener.local.transport, listener.local)
        try:
            await self.loop.connect_accepted_socket(
                lambda: conn,
                sock,
                ssl=listener.ssl,
                ssl_handshake_timeout=self.settings.connect_timeout_s,
            )
        except Exception as exc:  # the peer's doing, a value (house rule 6): count it
            self._tls_refused(peer_endpoint(listener.local.transport, address), exc)
        # Success: StreamConnection.connection_made ran (admission, deadlines) already.

    def _tls_refused(self, peer: Endpoint, exc: Exception) -> None:
        reason, detail = inbound_handshake_failure(exc)
        self.tls_inbound_failures[reason] += 1
        # A bare connect-and-close is what TCP health checks and port scans do: counted,
        # but not worth a WARNING each time; every other reason may be a peer to fix.
        level = logging.INFO if reason == "closed" else logging.WARNING
        self._limited.log(level, f"tls-in {reason}", "inbound TLS handshake from %s failed "
                          "(%s): %s", peer, reason, detail)

    def admit(self, conn: StreamConnection) -> bool:
        """Enter an accepted connection in the table, unless over a cap or closing.

        Returns:
            False when the caller must abort it: the table is closing, or it would
            pass ``max_connections`` (counted ``TOTAL_LIMIT``) or its source
            address's ``max_connections_per_ip`` (counted ``PER_IP_LIMIT``).
        """
        if self._closing:
            return False
        assert conn.peer is not None
        settings = self.settings
        host = conn.peer.host
        if len(self._open) >= settings.max_connections:
            self.count_close(conn, StreamCloseReason.TOTAL_LIMIT, "max_connections reached")
            return False
        per_ip = settings.max_connections_per_ip
        if per_ip > 0 and self._per_ip.get(host, 0) >= per_ip:
            self.count_close(conn, StreamCloseReason.PER_IP_LIMIT, "max_connections_per_ip reached")
            return False
        self._open.add(conn)
        self.connections[conn.peer] = conn
        self._per_ip[host] = self._per_ip.get(host, 0) + 1
        conn.counted_ip = host
        return True

    def forget(self, conn: StreamConnection) -> None:
        """Drop a connection that is gone (called from ``connection_lost``); idempotent."""
        self._open.discard(conn)
        if conn.peer is not None and self.connections.get(conn.peer) is conn:
            del self.connections[conn.peer]
        host = conn.counted_ip
        if host is not None:
            conn.counted_ip = None
            left = self._per_ip[host] - 1
            if left:
                self._per_ip[host] = left
            else:
                del self._per_ip[host]  # nothing kept for a peer that is gone

    def count_close(
        self, conn: StreamConnection, reason: StreamCloseReason, detail: str = ""
    ) -> None:
        """Count a refusal or close decided by the transport (one rate-limited log line)."""
        self.closes[reason] += 1
        if reason in _LIMITS:  # the operator may need to raise a cap: say so
            level, verb = logging.WARNING, "refusing"
        elif reason is StreamCloseReason.IDLE_TIMEOUT:  # routine housekeeping
            level, verb = logging.DEBUG, "closing"
        else:
            level, verb = logging.INFO, "closing"
        self._limited.log(level, reason.value, "%s stream connection %s: %s%s",
                          verb, conn.peer, reason.value, f" ({detail})" if detail else "")

    @property
    def refused_total(self) -> int:
        """Accepted connections closed at once over either cap (total or per address)."""
        closes = self.closes
        return closes[StreamCloseReason.TOTAL_LIMIT] + closes[StreamCloseReason.PER_IP_LIMIT]

    @property
    def refused_per_ip(self) -> int:
        """Accepted connections closed at once over ``max_connections_per_ip``."""
        return self.closes[StreamCloseReason.PER_IP_LIMIT]

    def connections_from(self, host: str) -> int:
        """Admitted inbound connections from the source address ``host`` right now."""
        return self._per_ip.get(host, 0)

    def report_error(self, dest: Endpoint) -> None:
        """Tell the sink about ``dest``, from the loop (never re-entrantly)."""
        if not self._closing:
            self.loop.call_soon(self.sink.transport_error, dest, self.loop.time())

    # -- sending ------------------------------------------------------------------------

    def send(self, data: bytes, dest: Endpoint, local: Endpoint) -> None:
        """Write ``data`` to ``dest`` over its connection, opening one if needed.

        Args:
            data: one whole SIP message.
            dest: ``tcp`` or ``tls`` endpoint (the connection table key).
            local: the listener the core chose; a new connection binds its host.
        """
        conn = self.connections.get(dest)
        if conn is None:
            conn = self._connect(dest, local)
            if conn is None:
                self.report_error(dest)
                return
        if not conn.write(data):
            self.report_error(dest)

    def _connect(self, dest: Endpoint, local: Endpoint) -> StreamConnection | None:
        if self._closing or len(self._open) >= self.settings.max_connections:
            return None
        if dest.transport == "tls" and self._client_ssl is None:
            _log.warning("no TLS client context: cannot send to %s", dest)
            return None
        conn = StreamConnection(self, dest.transport, local, peer=dest)
        self._open.add(conn)
        self.connections[dest] = conn
        task = self.loop.create_task(self._open_connection(conn, dest, local))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)
        return conn

    async def _open_connection(
        self, conn: StreamConnection, dest: Endpoint, local: Endpoint
    ) -> None:
        # Bind the source address so the peer sees the same host as our Via and
        # Record-Route (and an ACL on the far side matches); the port is ephemeral.
        local_addr = None if local.host in _WILDCARD_HOSTS else (local.host, 0)
        ctx = self._client_ssl if dest.transport == "tls" else None
        server_hostname = None
        if ctx is not None:
            server_hostname = (self._sni_for(dest) if self._sni_for else None) or dest.host
        try:
            await asyncio.wait_for(
                self.loop.create_connection(
                    lambda: conn,
                    dest.host,
                    dest.port,
                    ssl=ctx,
                    server_hostname=server_hostname,
                    local_addr=local_addr,
                    ssl_handshake_timeout=self.settings.connect_timeout_s if ctx else None,
                ),
                self.settings.connect_timeout_s,
            )
        except asyncio.CancelledError:
            self.forget(conn)
            conn.closed.set()
            raise
        except ssl.SSLError as exc:  # the TCP connect worked, the TLS handshake did not
            self._tls_failed(dest, server_hostname or dest.host, exc)
            self.forget(conn)
            conn.closed.set()
            self.report_error(dest)
        except Exception as exc:  # any connect/handshake failure is the peer's, a value
            _log.info("connect %s -> %s failed: %s", local, dest, exc)
            self.forget(conn)
            conn.closed.set()
            self.report_error(dest)

    def _tls_failed(self, dest: Endpoint, server_name: str, exc: ssl.SSLError) -> None:
        # Surfaces here: asyncio (and uvloop) complete the handshake inside
        # create_connection and raise what OpenSSL said; ssl.SSLCertVerificationError
        # when our client context refused the certificate.
        reason, detail = handshake_failure(exc)
        self.tls_failures[reason] = self.tls_failures.get(reason, 0) + 1
        self._limited.log(
            logging.WARNING, f"tls {dest} {reason}",
            "TLS handshake with %s (server name %s) failed: %s", dest, server_name, detail,
        )

    # -- housekeeping -------------------------------------------------------------------

    def _reap(self) -> None:
        now = self.loop.time()
        deadline = now - self.settings.idle_timeout_s
        keepalive_s = self.settings.keepalive_s
        ping_before = now - keepalive_s
        # Every open connection once per sweep: O(connections), no per-connection timer.
        for conn in list(self._open):
            if not conn.is_connected:
                continue
            if conn.deadline <= now:
                conn.expire()
            elif conn.is_closing:
                continue  # already on its way out (counted when that was decided)
            elif conn.last_activity < deadline:
                conn.close_idle(now)
            elif keepalive_s > 0 and conn.outbound and conn.last_activity < ping_before:
                conn.write(_PING)  # RFC 5626 §4.4.1 double-CRLF keep-alive
        self._reaper = self.loop.call_later(self._reap_period, self._reap)

    @property
    def listeners(self) -> list[Endpoint]:
        """The bound listener endpoints."""
        return [listener.local for listener in self._listeners]

    def stop_listening(self) -> None:
        """Stop accepting new connections (existing ones keep working)."""
        for listener in self._listeners:
            listener.close(self.loop)

    def unlisten(self, endpoints: set[Endpoint]) -> None:
        """Close the listeners bound to ``endpoints``; their connections stay."""
        for listener in [lst for lst in self._listeners if lst.local in endpoints]:
            self._listeners.remove(listener)
            # Not wait_closed(): uvloop's (and 3.12's) waits for every connection the
            # listener accepted to end, and those are calls that must go on.
            listener.close(self.loop)

    def pending_bytes(self) -> int:
        """Bytes still buffered across all connections (for a bounded drain)."""
        return sum(conn.write_buffer_size for conn in self._open)

    def close(self) -> None:
        """Stop listening and close every connection; then await :meth:`wait_closed`."""
        self._closing = True
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        self.stop_listening()
        for task in self._connecting | self._handshakes:
            task.cancel()  # a handshake cancelled in progress: the loop closes its socket
        for sock in self._unclaimed:
            sock.close()
        self._unclaimed.clear()
        for conn in list(self._open):
            conn.close()

    async def wait_closed(self, timeout_s: float = 2.0) -> None:
        """Wait until every listener and connection is gone.

        Args:
            timeout_s: how long graceful closes may take to flush; connections still
                open after it (a peer that stopped reading) are aborted.
        """
        for listener in self._listeners:
            if listener.server is not None:
                await listener.server.wait_closed()
        if self._connecting or self._handshakes:
            await asyncio.gather(*self._connecting, *self._handshakes, return_exceptions=True)
        waits = [conn.closed.wait() for conn in self._open]
        if not waits:
            return
        done = asyncio.gather(*waits)
        try:
            await asyncio.wait_for(asyncio.shield(done), timeout_s)
        except TimeoutError:
            for conn in list(self._open):
                conn.abort()
            await done
