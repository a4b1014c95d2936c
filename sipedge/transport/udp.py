"""UDP listeners: one asyncio datagram endpoint per configured ``udp:`` address.

Theory of operation: every received datagram goes to ``sink.receive`` unchanged with
the sender as ``peer`` and the listener as ``local``. Sends leave through the socket
bound to the ``local`` the proxy core names, so a reply comes from the address the
peer sent to (RFC 3261 §18.2.2; RFC 3581 symmetric response routing needs it).

RFC 3261 §18.1.1 says requests above 1300 bytes "MUST" use a congestion-controlled
transport, but SIP trunks routinely send larger INVITEs over UDP and the proxy is
not the UAC: datagrams up to 65,535 bytes are read and written, and the receive
buffer is made large so bursts of calls are not dropped by the kernel.

Watched destinations (fast failover on ICMP): the listener socket is unconnected, and
Linux reports an ICMP port or host unreachable only to a *connected* UDP socket (or
through ``IP_RECVERR`` + ``MSG_ERRQUEUE``, which neither asyncio nor uvloop reads). So
for each destination the daemon marks as watched (its UDP gateways), a :class:`UdpFlow`
opens a second socket bound to the *same* ``ip:port`` as the listener (``SO_REUSEPORT``)
and ``connect()``-ed to that destination. Packets keep the listener's source address
(Twilio's ACL, Via and Record-Route name it); the kernel delivers the destination's
datagrams to the connected socket (an exact 4-tuple match outranks the listener, and
``SO_REUSEPORT`` load balancing skips connected members), and an ICMP error for a
datagram we sent surfaces as ``ECONNREFUSED``/``EHOSTUNREACH`` in ``error_received`` within
a round trip, instead of after the core's no-provisional timer. The error is per send:
the socket stays usable when the destination comes back.

The listener is bound *without* ``SO_REUSEPORT`` and gets it only after the bind, when
the first destination is watched: a second process binding the same address the plain
way (a second sipedge) still fails with ``EADDRINUSE``; only sockets of the same user
that ask for ``SO_REUSEPORT`` before binding, i.e. our flows, can join.

Shared listeners (multi-process workers, issue 14): the parent binds each UDP listener
once with :func:`bound_socket` (the same plain bind, so the guard above still holds) and
every worker is handed that socket's descriptor; :func:`open_udp_listener` with ``sock=``
serves it instead of binding. All workers then read from one kernel socket, and one
receive queue: each datagram is read by exactly one of them. Sharing needs no
``SO_REUSEPORT`` at all, so a second sipedge binding the address still fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Any, cast

from sipedge.sip.address import Endpoint
from sipedge.transport.base import MessageSink, TransportError, TransportErrorReason

__all__ = [
    "RCVBUF_BYTES",
    "UdpFlow",
    "UdpListener",
    "bound_socket",
    "open_udp_listener",
    "peer_endpoint",
    "tune_buffers",
]

_log = logging.getLogger(__name__)

#: Requested SO_RCVBUF. Linux caps it at net.core.rmem_max (often 208 KiB) unless the
#: operator raises that sysctl; asking costs nothing and the grant is logged at DEBUG.
RCVBUF_BYTES = 4 * 1024 * 1024
_SNDBUF_BYTES = 1024 * 1024


def peer_endpoint(transport: str, addr: Any) -> Endpoint:
    """The ``Endpoint`` of a socket address tuple (IPv6 host without brackets).

    Args:
        transport: ``"udp"``, ``"tcp"`` or ``"tls"``.
        addr: ``(host, port)`` or ``(host, port, flowinfo, scope_id)`` from asyncio.

    Returns:
        The endpoint value.
    """
    return Endpoint(transport, str(addr[0]), int(addr[1]))


class UdpListener(asyncio.DatagramProtocol):
    """One bound UDP socket: datagrams in to the sink, ``send`` out.

    Attributes:
        local: the bound address (the real port when 0 was asked for).
        shared: it serves a socket other processes serve too (a worker's copy of the
            parent's listener); such a listener is never watched (see :meth:`watch`).
    """

    def __init__(self, sink: MessageSink, local: Endpoint, loop: asyncio.AbstractEventLoop) -> None:
        self.local = local
        self.shared = False
        self._sink = sink
        self._loop = loop
        self._transport: asyncio.DatagramTransport | None = None
        self._sock: socket.socket | None = None  # set by open_udp_listener (SO_REUSEPORT)
        # The destination of the sendto() in progress: asyncio reports a synchronous
        # send failure through error_received() without the address, so remember it.
        self._sending: Endpoint | None = None
        # Watched destinations: ``_flows`` holds the ready ones (the send path's one
        # lookup), ``_watched`` every one asked for (also those still starting), and
        # ``_open`` every flow whose socket is not closed yet (wait_closed).
        self._flows: dict[Endpoint, UdpFlow] = {}
        self._watched: dict[Endpoint, UdpFlow] = {}
        self._open: set[UdpFlow] = set()
        self.closed = asyncio.Event()
        self.send_errors = 0
        self._peers: dict[Any, Endpoint] = {}

    # -- asyncio callbacks --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # cast, not isinstance: asyncio's and uvloop's datagram transports do not all
        # subclass asyncio.DatagramTransport.
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        # One Endpoint per source address, reused: a trunk has a handful of peers, and a
        # frozen dataclass costs a microsecond to build per datagram. Bounded for scans.
        peer = self._peers.get(addr)
        if peer is None:
            if len(self._peers) >= 4096:
                self._peers.clear()
            peer = self._peers[addr] = peer_endpoint("udp", addr)
        self._sink.receive(data, peer, self.local, self._loop.time())

    def error_received(self, exc: Exception) -> None:
        self.send_errors += 1
        dest = self._sending
        if dest is not None:
            _log.debug("udp send %s -> %s failed: %s", self.local, dest, exc)
            self._loop.call_soon(self._sink.transport_error, dest, self._loop.time())
        else:
            # An asynchronous ICMP error on an unconnected socket names no destination
            # (and Linux does not even report it without IP_RECVERR); watched
            # destinations get theirs through their UdpFlow, the rest rely on the
            # transaction layer's timers (RFC 3261 §17.1.1.2).
            _log.debug("udp %s: %s", self.local, exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self.closed.set()

    # -- API ----------------------------------------------------------------------------

    def send(self, data: bytes, dest: Endpoint) -> None:
        """Send one datagram to ``dest``; failures go to ``sink.transport_error``."""
        flows = self._flows
        if flows:
            flow = flows.get(dest)
            if flow is not None:
                flow.send(data)
                return
        transport = self._transport
        if transport is None or transport.is_closing():
            self._loop.call_soon(self._sink.transport_error, dest, self._loop.time())
            return
        self._sending = dest
        try:
            transport.sendto(data, (dest.host, dest.port))
        finally:
            self._sending = None

    def watch(self, dest: Endpoint) -> bool:
        """Send to ``dest`` through a connected socket on this address (see module doc).

        The flow starts within a loop iteration or two; until then datagrams to ``dest``
        leave through the listener as before. Idempotent.

        Args:
            dest: a ``udp`` endpoint whose host is an IP literal of this listener's family.

        Returns:
            True when ``dest`` is (now) watched; False when it cannot be (a name, not an
            address; another family; the kernel refused the shared bind or the connect;
            a :attr:`shared` listener), in which case sends keep using the listener. The
            reason is logged.
        """
        if dest in self._watched:
            return True
        if self.shared:
            # Every worker's flow to ``dest`` would be bound to the same ip:port and
            # connected to the same ``dest``: one 4-tuple, and the kernel hands that
            # tuple's datagrams and ICMP errors to one of the sockets only (the last one
            # connected). Measured: worker A's send to a dead port was reported to
            # worker B. Workers watch gateways from their own endpoints instead.
            _log.debug("udp %s: not watching %s: the listener is shared", self.local, dest)
            return False
        if self._transport is None or self._transport.is_closing() or self._sock is None:
            return False
        family = self._sock.family
        try:
            socket.inet_pton(family, dest.host)  # connect() must never resolve a name
        except (OSError, ValueError):
            # Quietly: an unresolved DNS gateway or another family is a normal case.
            _log.debug("udp %s: not watching %s: not an address of this family", self.local, dest)
            return False
        try:
            # After the listener's bind, so plain binds of this address still conflict.
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock = bound_socket(self.local, reuse_port=True)
        except (OSError, AttributeError) as exc:  # AttributeError: no SO_REUSEPORT here
            _log.warning("udp %s: cannot watch %s: %s", self.local, dest, exc)
            return False
        try:
            sock.connect((dest.host, dest.port))
        except OSError as exc:  # e.g. ENETUNREACH: no route to the gateway at all
            sock.close()
            _log.warning("udp %s: cannot watch %s: %s", self.local, dest, exc)
            return False
        flow = UdpFlow(self, dest, self._loop)
        self._watched[dest] = flow
        self._open.add(flow)
        flow.start(sock)
        return True

    def unwatch(self, dest: Endpoint) -> bool:
        """Stop watching ``dest``: close its socket, send through the listener again.

        Returns:
            True when ``dest`` was watched.
        """
        flow = self._watched.get(dest)
        if flow is None:
            return False
        flow.close()
        return True

    @property
    def watched(self) -> list[Endpoint]:
        """The watched destinations (including flows still starting)."""
        return list(self._watched)

    def close(self) -> None:
        """Close the socket and every watched flow (idempotent)."""
        for flow in list(self._watched.values()):
            flow.close()
        if self._transport is not None:
            self._transport.close()
        else:
            self.closed.set()

    async def wait_watching(self) -> None:
        """Wait until every flow asked for so far is ready (or failed to start)."""
        for flow in list(self._watched.values()):
            await flow.settled.wait()

    async def wait_closed(self) -> None:
        """Wait until the listener and every flow it opened have closed their sockets."""
        await self.closed.wait()
        while self._open:
            await next(iter(self._open)).closed.wait()

    # -- UdpFlow bookkeeping ------------------------------------------------------------

    def _flow_ready(self, flow: UdpFlow) -> None:
        if self._watched.get(flow.dest) is flow:
            self._flows[flow.dest] = flow

    def _flow_gone(self, flow: UdpFlow, closed: bool) -> None:
        if self._flows.get(flow.dest) is flow:
            del self._flows[flow.dest]
        if self._watched.get(flow.dest) is flow:
            del self._watched[flow.dest]
        if closed:
            self._open.discard(flow)


class UdpFlow(asyncio.DatagramProtocol):
    """A connected UDP socket sharing a listener's ``ip:port``, for one destination.

    Everything that arrives on it is delivered as if the listener had read it (``local``
    is the listener's); every error on it (ICMP port/host unreachable from the last
    send, or a failed send) becomes ``sink.transport_error(dest, now)``, from the loop.

    Attributes:
        dest: the connected destination.
        local: the listener's endpoint (the source of every datagram it sends).
        settled: set once it is ready to send (or failed to start).
        closed: set once its socket is closed.
        errors: errors reported so far.
    """

    def __init__(
        self, listener: UdpListener, dest: Endpoint, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.dest = dest
        self.local = listener.local
        self._listener = listener
        self._sink = listener._sink
        self._loop = loop
        self._transport: asyncio.DatagramTransport | None = None
        self._task: asyncio.Task[Any] | None = None
        self._cancelled = False
        self.settled = asyncio.Event()  # ready to send, or failed to start
        self.closed = asyncio.Event()
        self.errors = 0

    def start(self, sock: socket.socket) -> None:
        """Hand the bound and connected ``sock`` to the loop (ready a tick later)."""
        self._task = self._loop.create_task(self._attach(sock))

    async def _attach(self, sock: socket.socket) -> None:
        try:
            await self._loop.create_datagram_endpoint(lambda: self, sock=sock)
        except OSError as exc:
            sock.close()
            _log.warning("udp %s: cannot watch %s: %s", self.local, self.dest, exc)
            self._listener._flow_gone(self, closed=True)
            self.settled.set()
            self.closed.set()

    # -- asyncio callbacks --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)
        if self._cancelled:
            self._transport.close()
        else:
            self._listener._flow_ready(self)
        self.settled.set()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        # The peer is normally ``dest``; a datagram from someone else can only be one that
        # raced in between bind() and connect(), and is delivered as its sender's.
        dest = self.dest
        # A connected socket hears (almost) only its gateway: reuse its Endpoint.
        if not addr or (addr[1] == dest.port and addr[0] == dest.host):
            peer = dest
        else:
            peer = peer_endpoint("udp", addr)
        self._sink.receive(data, peer, self.local, self._loop.time())

    def error_received(self, exc: Exception) -> None:
        # ECONNREFUSED (ICMP port unreachable), EHOSTUNREACH/ENETUNREACH (ICMP host or
        # net unreachable), EMSGSIZE: the datagram we sent last did not arrive.
        self.errors += 1
        _log.debug("udp %s -> %s: %s", self.local, self.dest, exc)
        self._loop.call_soon(self._sink.transport_error, self.dest, self._loop.time())

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._listener._flow_gone(self, closed=True)
        self.settled.set()
        self.closed.set()

    # -- API ----------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Send one datagram to ``dest`` (only called while the flow is ready)."""
        transport = self._transport
        if transport is None:  # pragma: no cover - a ready flow always has one
            self._loop.call_soon(self._sink.transport_error, self.dest, self._loop.time())
            return
        transport.sendto(data)  # connected: no address (uvloop refuses one, EISCONN)

    def close(self) -> None:
        """Stop the flow; the socket closes a tick later (``closed``). Idempotent."""
        self._cancelled = True
        self._listener._flow_gone(self, closed=False)
        if self._transport is not None:
            self._transport.close()


def tune_buffers(sock: socket.socket) -> None:
    """Ask for the large receive and send buffers (best effort: the kernel may clamp them).

    Also applied to an inherited shared socket, which the parent may not have tuned.
    """
    for opt, size in ((socket.SO_RCVBUF, RCVBUF_BYTES), (socket.SO_SNDBUF, _SNDBUF_BYTES)):
        with contextlib.suppress(OSError):  # best effort: the kernel may refuse or clamp
            sock.setsockopt(socket.SOL_SOCKET, opt, size)


def bound_socket(local: Endpoint, *, reuse_port: bool = False) -> socket.socket:
    """A non-blocking UDP socket bound to ``local``, as a listener (or a flow) binds it.

    Args:
        local: the ``udp`` address; port 0 picks an ephemeral port.
        reuse_port: join an address whose socket already has ``SO_REUSEPORT`` (flows
            only). A listener binds without it, so a second plain bind of the address
            (another sipedge) fails with ``EADDRINUSE`` (module docstring).

    Returns:
        The socket (the caller owns it).

    Raises:
        OSError: the bind failed.
    """
    family = socket.AF_INET6 if ":" in local.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            # One family per socket: a v4-mapped peer would otherwise appear as
            # ::ffff:a.b.c.d and miss the ACL and gateway tables.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if reuse_port:
            # A flow joins its listener's address (the listener set it after its bind).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        tune_buffers(sock)
        sock.bind((local.host, local.port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    if not reuse_port:
        _log.debug(
            "udp %s: SO_RCVBUF granted %d bytes",
            local,
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
        )
    return sock


async def open_udp_listener(
    sink: MessageSink,
    local: Endpoint,
    loop: asyncio.AbstractEventLoop,
    *,
    sock: socket.socket | None = None,
) -> UdpListener:
    """Bind ``local`` (or serve the already bound ``sock``) and deliver datagrams to ``sink``.

    Args:
        sink: where datagrams go.
        local: ``udp`` endpoint to bind; port 0 picks an ephemeral port.
        loop: the running loop.
        sock: an already bound UDP socket to serve instead of binding ``local`` (a
            worker's copy of the parent's shared listener); the listener takes it
            over, closes it with itself, and is :attr:`UdpListener.shared`.

    Returns:
        The listener, whose ``local`` carries the bound port.

    Raises:
        TransportError: BIND_FAILED when the address cannot be bound.
    """
    inherited = sock is not None
    if sock is None:
        try:
            sock = bound_socket(local)
        except OSError as exc:
            raise TransportError(TransportErrorReason.BIND_FAILED, f"{local}: {exc}") from exc
    else:
        tune_buffers(sock)
    try:
        bound = peer_endpoint("udp", sock.getsockname())
        listener = UdpListener(sink, bound, loop)
        listener._sock = sock
        listener.shared = inherited
        await loop.create_datagram_endpoint(lambda: listener, sock=sock)
    except OSError as exc:
        sock.close()
        raise TransportError(TransportErrorReason.BIND_FAILED, f"{local}: {exc}") from exc
    return listener
