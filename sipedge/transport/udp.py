"""UDP listeners: one asyncio datagram endpoint per configured ``udp:`` address.

Theory of operation: every received datagram goes to ``sink.receive`` unchanged with
the sender as ``peer`` and the listener as ``local``. Sends leave through the socket
bound to the ``local`` the proxy core names, so a reply comes from the address the
peer sent to (RFC 3261 §18.2.2; RFC 3581 symmetric response routing needs it).

RFC 3261 §18.1.1 says requests above 1300 bytes "MUST" use a congestion-controlled
transport, but SIP trunks routinely send larger INVITEs over UDP and the proxy is
not the UAC: datagrams up to 65,535 bytes are read and written, and the receive
buffer is made large so bursts of calls are not dropped by the kernel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Any, cast

from sipedge.sip.address import Endpoint
from sipedge.transport.base import MessageSink, TransportError, TransportErrorReason

__all__ = ["RCVBUF_BYTES", "UdpListener", "open_udp_listener", "peer_endpoint"]

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
    """

    def __init__(self, sink: MessageSink, local: Endpoint, loop: asyncio.AbstractEventLoop) -> None:
        self.local = local
        self._sink = sink
        self._loop = loop
        self._transport: asyncio.DatagramTransport | None = None
        # The destination of the sendto() in progress: asyncio reports a synchronous
        # send failure through error_received() without the address, so remember it.
        self._sending: Endpoint | None = None
        self.closed = asyncio.Event()
        self.send_errors = 0

    # -- asyncio callbacks --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # cast, not isinstance: asyncio's and uvloop's datagram transports do not all
        # subclass asyncio.DatagramTransport.
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._sink.receive(data, peer_endpoint("udp", addr), self.local, self._loop.time())

    def error_received(self, exc: Exception) -> None:
        self.send_errors += 1
        dest = self._sending
        if dest is not None:
            _log.debug("udp send %s -> %s failed: %s", self.local, dest, exc)
            self._loop.call_soon(self._sink.transport_error, dest, self._loop.time())
        else:
            # An asynchronous ICMP error on an unconnected socket names no destination;
            # the transaction layer's timers cover that case (RFC 3261 §17.1.1.2).
            _log.debug("udp %s: %s", self.local, exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self.closed.set()

    # -- API ----------------------------------------------------------------------------

    def send(self, data: bytes, dest: Endpoint) -> None:
        """Send one datagram to ``dest``; failures go to ``sink.transport_error``."""
        transport = self._transport
        if transport is None or transport.is_closing():
            self._loop.call_soon(self._sink.transport_error, dest, self._loop.time())
            return
        self._sending = dest
        try:
            transport.sendto(data, (dest.host, dest.port))
        finally:
            self._sending = None

    def close(self) -> None:
        """Close the socket (idempotent)."""
        if self._transport is not None:
            self._transport.close()
        else:
            self.closed.set()


def _bound_socket(local: Endpoint) -> socket.socket:
    family = socket.AF_INET6 if ":" in local.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            # One family per socket: a v4-mapped peer would otherwise appear as
            # ::ffff:a.b.c.d and miss the ACL and gateway tables.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        for opt, size in ((socket.SO_RCVBUF, RCVBUF_BYTES), (socket.SO_SNDBUF, _SNDBUF_BYTES)):
            with contextlib.suppress(OSError):  # best effort: the kernel may refuse or clamp
                sock.setsockopt(socket.SOL_SOCKET, opt, size)
        sock.bind((local.host, local.port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    _log.debug(
        "udp %s: SO_RCVBUF granted %d bytes",
        local,
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
    )
    return sock


async def open_udp_listener(
    sink: MessageSink, local: Endpoint, loop: asyncio.AbstractEventLoop
) -> UdpListener:
    """Bind ``local`` and start delivering datagrams to ``sink``.

    Args:
        sink: where datagrams go.
        local: ``udp`` endpoint to bind; port 0 picks an ephemeral port.
        loop: the running loop.

    Returns:
        The listener, whose ``local`` carries the bound port.

    Raises:
        TransportError: BIND_FAILED when the address cannot be bound.
    """
    try:
        sock = _bound_socket(local)
    except OSError as exc:
        raise TransportError(TransportErrorReason.BIND_FAILED, f"{local}: {exc}") from exc
    bound = peer_endpoint("udp", sock.getsockname())
    listener = UdpListener(sink, bound, loop)
    try:
        await loop.create_datagram_endpoint(lambda: listener, sock=sock)
    except OSError as exc:
        sock.close()
        raise TransportError(TransportErrorReason.BIND_FAILED, f"{local}: {exc}") from exc
    return listener
