"""The asyncio shell: UDP, TCP and TLS transports behind one :class:`Transports` object.

``Transports`` composes ``udp``, ``tcp`` and ``tls`` (which import only ``base``), so it
lives here, above them, rather than in ``base`` (which they import). The daemon wires
it to the driver:

    transports = Transports(driver, tls=settings, sni_for=domain_of_gateway)
    listeners = await transports.start(config_listen_endpoints)
    ...
    transports.watch_udp(gateway, udp_local)  # each UDP gateway: ICMP → transport_error
    transports.send(data, dest, local)   # the driver, for each Send in the outbox
    ...
    await transports.drain(timeout_s=5)  # or: await transports.aclose()

Multi-process workers (issue 14): the parent binds each configured listener once with
:func:`bind_shared` before it starts the workers and hands the sockets down; a worker
passes them as ``Transports(driver, inherited={endpoint: sock, ...})`` and ``start``
serves those instead of binding, so every worker reads the same kernel sockets (the
UDP receive queue, the TCP/TLS accept queue). Each socket is duplicated on adoption:
the caller keeps the one it passed, and closing a worker's listener (a reload, a
drain) closes only the worker's copy; the kernel socket lives while any copy does.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType, TracebackType

from sipedge.sip.address import Endpoint
from sipedge.transport.base import (
    MessageSink,
    Sender,
    StreamCloseReason,
    StreamSettings,
    TlsSettings,
    TransportError,
    TransportErrorReason,
    new_event_loop,
    run,
)
from sipedge.transport.tcp import StreamTable, listening_socket
from sipedge.transport.tls import TLS_INBOUND_FAILURE_REASONS, client_context, server_context
from sipedge.transport.udp import UdpListener, bound_socket, open_udp_listener

__all__ = [
    "MessageSink",
    "Sender",
    "StreamCloseReason",
    "StreamSettings",
    "TlsSettings",
    "TransportError",
    "TransportErrorReason",
    "Transports",
    "bind_shared",
    "new_event_loop",
    "run",
]

_log = logging.getLogger(__name__)

#: The socket type each transport's listener is.
_SOCKET_TYPES = {"udp": socket.SOCK_DGRAM, "tcp": socket.SOCK_STREAM, "tls": socket.SOCK_STREAM}


def bind_shared(endpoint: Endpoint) -> socket.socket:
    """Bind a listener once, for every worker to serve (the parent calls it; no loop).

    Binds exactly as :meth:`Transports.start` binds a listener of its own: a UDP socket
    without ``SO_REUSEPORT`` (so another process binding the address the plain way, a
    second sipedge, still fails with ``EADDRINUSE``: see ``udp.py``) and with the large
    buffers; a TCP/TLS socket with ``SO_REUSEADDR``, listening with a backlog of 1024.
    The socket is non-blocking; pass it (its descriptor, inherited) to each worker's
    ``Transports(inherited=...)``.

    Args:
        endpoint: a ``udp``, ``tcp`` or ``tls`` listener endpoint; port 0 picks an
            ephemeral port (read it back with ``getsockname``).

    Returns:
        The bound socket; the caller owns it.

    Raises:
        TransportError: BIND_FAILED when the address cannot be bound (in use, not
            local), UNSUPPORTED for another transport.
    """
    if endpoint.transport not in _SOCKET_TYPES:
        raise TransportError(TransportErrorReason.UNSUPPORTED, str(endpoint))
    try:
        if endpoint.transport == "udp":
            return bound_socket(endpoint)
        return listening_socket(endpoint)
    except OSError as exc:
        raise TransportError(TransportErrorReason.BIND_FAILED, f"{endpoint}: {exc}") from exc


def _adopt(local: Endpoint, inherited: socket.socket) -> socket.socket:
    """A duplicate of the inherited listener socket for ``local``, checked to fit it.

    A parent that handed the wrong descriptor (another transport's, an unbound or a
    closed one, another address) must fail the worker's start loudly rather than
    serve the wrong traffic.

    Raises:
        TransportError: BIND_FAILED when the socket does not fit ``local``.
    """
    family = socket.AF_INET6 if ":" in local.host else socket.AF_INET
    try:
        kind = inherited.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
        host, port = inherited.getsockname()[:2]
        listening = inherited.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        if inherited.family != family or kind != _SOCKET_TYPES[local.transport]:
            problem = "is not a socket of this transport and address family"
        elif socket.inet_pton(family, host) != socket.inet_pton(family, local.host):
            problem = f"is bound to {host}"
        elif local.port not in (0, port):
            problem = f"is bound to port {port}"
        elif local.transport != "udp" and not listening:
            problem = "is not listening"
        else:
            sock = inherited.dup()
            sock.setblocking(False)
            return sock
    except OSError as exc:  # closed (EBADF), not a socket, a host that is not an address
        problem = f"is unusable ({exc})"
    raise TransportError(TransportErrorReason.BIND_FAILED, f"{local}: inherited socket {problem}")


class Transports:
    """Every listener and connection of the process; implements ``base.Sender``.

    Args:
        sink: receives every message and transport error.
        settings: stream (TCP/TLS) timeouts and limits.
        tls: CA bundle and certificate; needed for any ``tls`` listener or destination
            (without it, a send to a ``tls`` destination is a transport error).
        sni_for: the TLS server name for an outbound destination, e.g. a function the
            daemon builds from config mapping each gateway ``Endpoint`` to its edge's
            localized domain (``example.sip.ashburn-ix.twilio.com``). It is called once
            per new connection, so a reloaded mapping takes effect for new connections.
            It is both the SNI and the name the certificate must match; ``None`` (or a
            ``None`` result) means ``dest.host``.
        inherited: already bound listener sockets by configured listener endpoint
            (from the parent's :func:`bind_shared`). A listener of :meth:`start` or
            :meth:`add_listeners` that is a key here serves a duplicate of that socket
            instead of binding; the rest bind as usual. Read at each bind, so a parent
            may add sockets to the mapping before a reload's ``add_listeners``.
    """

    def __init__(
        self,
        sink: MessageSink,
        *,
        settings: StreamSettings | None = None,
        tls: TlsSettings | None = None,
        sni_for: Callable[[Endpoint], str | None] | None = None,
        inherited: Mapping[Endpoint, socket.socket] | None = None,
    ) -> None:
        self._sink = sink
        # Kept by reference, not copied: the parent may add a reload's new sockets to it.
        self._inherited: Mapping[Endpoint, socket.socket] = {} if inherited is None else inherited
        self._inherited_udp: set[Endpoint] = set()
        self._settings = settings or StreamSettings()
        self._tls = tls
        self._sni_for = sni_for
        self._loop: asyncio.AbstractEventLoop | None = None
        self._udp: dict[tuple[str, int], UdpListener] = {}
        self._udp_by_host: dict[str, UdpListener] = {}
        self._streams: StreamTable | None = None
        self._server_ssl: ssl.SSLContext | None = None
        self._closed = False

    async def start(self, listen: Iterable[Endpoint]) -> list[Endpoint]:
        """Bind every listener (duplicates are bound once).

        Args:
            listen: ``udp``/``tcp``/``tls`` endpoints; port 0 picks an ephemeral port.

        Returns:
            The bound endpoints, in order (real ports filled in). These are the values
            the proxy core must use as ``local``.

        Raises:
            TransportError: BIND_FAILED, TLS_CONFIG or UNSUPPORTED; listeners already
                bound are closed again before it propagates.
        """
        if self._loop is not None or self._closed:
            raise TransportError(TransportErrorReason.CLOSED, "start() called twice")
        loop = self._loop = asyncio.get_running_loop()
        client_ssl = client_context(self._tls) if self._tls is not None else None
        self._streams = StreamTable(
            self._sink, loop, self._settings, client_ssl=client_ssl, sni_for=self._sni_for
        )
        bound: list[Endpoint] = []
        try:
            for local in dict.fromkeys(listen):
                bound.append(await self._bind(local))
        except TransportError:
            await self.aclose()
            raise
        _log.info("listening on %s", ", ".join(map(str, bound)))
        return bound

    async def _bind(self, local: Endpoint) -> Endpoint:
        loop = self._loop
        streams = self._streams
        assert loop is not None and streams is not None
        if local.transport not in _SOCKET_TYPES:
            raise TransportError(TransportErrorReason.UNSUPPORTED, str(local))
        server_ssl = None
        if local.transport == "tls":
            if self._tls is None:
                raise TransportError(TransportErrorReason.TLS_CONFIG, f"{local}: no TLS settings")
            if self._server_ssl is None:
                self._server_ssl = server_context(self._tls)
            server_ssl = self._server_ssl
        inherited = self._inherited.get(local)
        sock = _adopt(local, inherited) if inherited is not None else None
        if local.transport == "udp":
            listener = await open_udp_listener(self._sink, local, loop, sock=sock)
            self._udp[(listener.local.host, listener.local.port)] = listener
            self._udp_by_host.setdefault(listener.local.host, listener)
            if sock is not None:
                self._inherited_udp.add(listener.local)
            return listener.local
        return await streams.listen(local, server_ssl, sock=sock)

    async def add_listeners(self, listen: Iterable[Endpoint]) -> list[Endpoint]:
        """Bind the listeners of ``listen`` not bound yet (a reload's new sockets).

        All or nothing: when one cannot be bound, those this call bound are closed again
        and the error propagates; the listeners from before are untouched.

        Returns:
            The newly bound endpoints.

        Raises:
            TransportError: as :meth:`start`, or CLOSED before ``start``/after close.
        """
        if self._loop is None or self._closed:
            raise TransportError(TransportErrorReason.CLOSED, "transports not running")
        have = set(self.listeners)
        added: list[Endpoint] = []
        try:
            for local in dict.fromkeys(listen):
                if local not in have:
                    added.append(await self._bind(local))
        except TransportError:
            await self.remove_listeners(added)
            raise
        if added:
            _log.info("now also listening on %s", ", ".join(map(str, added)))
        return added

    async def remove_listeners(self, endpoints: Iterable[Endpoint]) -> None:
        """Close these listeners (a reload dropped them).

        A UDP socket closes with its watched flows; a stream listener stops accepting,
        while its established connections stay until they end or idle out, so calls
        set up through it finish.
        """
        gone = set(endpoints)
        for key, listener in list(self._udp.items()):
            if listener.local in gone:
                del self._udp[key]
                self._inherited_udp.discard(listener.local)
                if self._udp_by_host.get(listener.local.host) is listener:
                    del self._udp_by_host[listener.local.host]
                    for other in self._udp.values():
                        if other.local.host == listener.local.host:
                            self._udp_by_host[other.local.host] = other
                            break
                listener.close()
                await listener.wait_closed()
        if self._streams is not None:
            self._streams.unlisten(gone)
        if gone:
            _log.info("stopped listening on %s", ", ".join(map(str, sorted(gone, key=str))))

    @property
    def listeners(self) -> list[Endpoint]:
        """The bound listener endpoints (UDP first, then streams); empty once closed."""
        if self._closed:
            return []
        udp = [listener.local for listener in self._udp.values()]
        return udp + (self._streams.listeners if self._streams is not None else [])

    @property
    def inherited_udp(self) -> list[Endpoint]:
        """The bound UDP listeners that serve an inherited (shared) socket.

        Exactly the ``local`` their datagrams reach the sink with: what
        ``steer.SteeringSink.shared`` must hold so that it steers them.
        """
        return [lst.local for lst in self._udp.values() if lst.local in self._inherited_udp]

    @property
    def connection_count(self) -> int:
        """Stream connections currently in the table."""
        return len(self._streams.connections) if self._streams is not None else 0

    def reconfigure_streams(self, settings: StreamSettings) -> None:
        """New stream limits from a reload: caps and deadlines apply from the next check."""
        self._settings = settings
        if self._streams is not None:
            self._streams.settings = settings

    @property
    def tls_failures(self) -> dict[str, int]:
        """Failed outbound TLS handshakes by reason (a copy; see ``StreamTable``).

        Keys are ``sipedge.transport.tls.TLS_FAILURE_REASONS`` (``untrusted``,
        ``expired``, ``hostname_mismatch``, ``protocol_version``, …), present once seen.
        """
        return dict(self._streams.tls_failures) if self._streams is not None else {}

    @property
    def tls_inbound_failures(self) -> Mapping[str, int]:
        """Failed handshakes of peers connecting to our TLS listeners, by reason.

        A live read-only view of ``StreamTable.tls_inbound_failures``: every reason of
        ``sipedge.transport.tls.TLS_INBOUND_FAILURE_REASONS`` (``protocol_version``,
        ``not_tls``, ``certificate``, ``timeout``, ``closed``, ``handshake_failed``) is
        present, zero until seen and before :meth:`start`.
        """
        if self._streams is None:
            return dict.fromkeys(TLS_INBOUND_FAILURE_REASONS, 0)
        return MappingProxyType(self._streams.tls_inbound_failures)

    @property
    def stream_closes(self) -> Mapping[StreamCloseReason, int]:
        """Stream connections refused or closed by the transport, by reason.

        A live read-only view of ``StreamTable.closes`` (monotonic counters, every
        reason present; all zero before :meth:`start`) for the metrics collector.
        """
        if self._streams is None:
            return dict.fromkeys(StreamCloseReason, 0)
        return MappingProxyType(self._streams.closes)

    def send(self, data: bytes, dest: Endpoint, local: Endpoint) -> None:
        """Send one message; never blocks, never raises for peer problems.

        UDP leaves from the socket bound to ``local`` (or, if the core named a stream
        listener, the UDP socket on the same host). TCP/TLS reuses the connection keyed
        by ``dest`` or opens one from ``local.host``. Every failure, now or later, is
        reported as ``sink.transport_error(dest, now)`` from the event loop; for a
        :meth:`watch_udp` destination that includes an ICMP unreachable answer.

        Args:
            data: one whole SIP message.
            dest: where to (``udp``/``tcp``/``tls``).
            local: the listener the proxy core chose for it.
        """
        if dest.transport == "udp":
            listener = self._udp.get((local.host, local.port)) or self._udp_by_host.get(local.host)
            if listener is not None:
                listener.send(data, dest)
                return
            _log.warning("no UDP socket on %s for %s", local, dest)
        elif self._streams is not None and dest.transport in ("tcp", "tls"):
            self._streams.send(data, dest, local)
            return
        self._report(dest)

    def watch_udp(self, dest: Endpoint, local: Endpoint) -> bool:
        """Report ICMP port/host unreachable from ``dest`` promptly (fast failover).

        From now on datagrams to ``dest`` sent from the UDP listener ``local`` leave
        through a socket bound to the listener's own ``ip:port`` and connected to
        ``dest`` (same source address and port on the wire), so the kernel tells us when
        ``dest`` answers with ICMP unreachable: ``sink.transport_error(dest, now)``
        follows within a round trip. Datagrams from ``dest`` reach the sink as before,
        with ``local`` as the listener. Idempotent; cheap to call for every gateway.

        Args:
            dest: a ``udp`` destination whose host is an IP address (the exact
                ``Endpoint`` the proxy core puts in its ``Send``; a gateway endpoint).
            local: the listener its sends leave from (resolved like :meth:`send`).

        Returns:
            True when watched; False when not possible (not started or closed, no UDP
            listener for ``local``, a name instead of an address, the kernel refused
            the shared bind, ``local`` serves an inherited socket: see
            ``UdpListener.watch``); sends to ``dest`` then work as before, without the
            early error.
        """
        if dest.transport != "udp" or self._closed:
            return False
        listener = self._udp_listener(local)
        return listener is not None and listener.watch(dest)

    def unwatch_udp(self, dest: Endpoint, local: Endpoint | None = None) -> bool:
        """Stop watching ``dest`` (on ``local``'s listener, or on every listener).

        Its socket closes within a loop iteration; later sends use the listener.

        Returns:
            True when ``dest`` was watched there.
        """
        if local is not None:
            listener = self._udp_listener(local)
            return listener is not None and listener.unwatch(dest)
        found = False
        for listener in self._udp.values():
            found = listener.unwatch(dest) or found
        return found

    def rewatch_udp(self, dests: Iterable[Endpoint], local: Endpoint) -> None:
        """Make the watched set on ``local``'s listener exactly the ``udp`` ones of ``dests``.

        For a reload: new gateways are watched, gone ones unwatched, the rest untouched.

        Args:
            dests: gateway endpoints (non-``udp`` ones are skipped).
            local: the listener they are sent from.
        """
        wanted = [d for d in dests if d.transport == "udp"]
        listener = self._udp_listener(local)
        if listener is None or self._closed:
            return
        keep = set(wanted)
        for dest in listener.watched:
            if dest not in keep:
                listener.unwatch(dest)
        for dest in wanted:
            listener.watch(dest)

    async def wait_watching(self) -> None:
        """Wait until every :meth:`watch_udp` so far has taken effect (one loop tick).

        Optional: before that, sends to the destination simply use the listener.
        """
        for listener in list(self._udp.values()):
            await listener.wait_watching()

    @property
    def watched_udp(self) -> list[tuple[Endpoint, Endpoint]]:
        """Every watched ``(dest, listener)`` pair."""
        return [(d, lst.local) for lst in self._udp.values() for d in lst.watched]

    def _udp_listener(self, local: Endpoint) -> UdpListener | None:
        return self._udp.get((local.host, local.port)) or self._udp_by_host.get(local.host)

    def _report(self, dest: Endpoint) -> None:
        if self._loop is not None and not self._closed:
            self._loop.call_soon(self._sink.transport_error, dest, self._loop.time())

    def stop_listening(self) -> None:
        """Stop accepting stream connections (UDP keeps answering; used by drain)."""
        if self._streams is not None:
            self._streams.stop_listening()

    async def drain(self, timeout_s: float = 5.0) -> None:
        """Stop accepting, let queued bytes flush for up to ``timeout_s``, then close.

        Args:
            timeout_s: the bound on the wait (uvicorn-style bounded drain).
        """
        self.stop_listening()
        if self._loop is not None and self._streams is not None:
            deadline = self._loop.time() + timeout_s
            while self._streams.pending_bytes() and self._loop.time() < deadline:
                await asyncio.sleep(0.02)
        await self.aclose()

    def close(self) -> None:
        """Close every listener and connection (idempotent); await ``wait_closed``."""
        self._closed = True
        for listener in self._udp.values():
            listener.close()
        if self._streams is not None:
            self._streams.close()

    async def wait_closed(self) -> None:
        """Wait until every socket is closed."""
        for listener in self._udp.values():
            await listener.wait_closed()
        if self._streams is not None:
            await self._streams.wait_closed()

    async def aclose(self) -> None:
        """``close()`` then ``wait_closed()``."""
        self.close()
        await self.wait_closed()

    async def __aenter__(self) -> Transports:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
