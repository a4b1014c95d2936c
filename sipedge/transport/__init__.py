"""The asyncio shell: UDP, TCP and TLS transports behind one :class:`Transports` object.

``Transports`` composes ``udp``, ``tcp`` and ``tls`` (which import only ``base``), so it
lives here, above them, rather than in ``base`` (which they import). The daemon wires
it to the driver:

    transports = Transports(driver, tls=settings, sni_for=domain_of_gateway)
    listeners = await transports.start(config_listen_endpoints)
    ...
    transports.send(data, dest, local)   # the driver, for each Send in the outbox
    ...
    await transports.drain(timeout_s=5)  # or: await transports.aclose()
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Iterable
from types import TracebackType

from sipedge.sip.address import Endpoint
from sipedge.transport.base import (
    MessageSink,
    Sender,
    StreamSettings,
    TlsSettings,
    TransportError,
    TransportErrorReason,
    new_event_loop,
    run,
)
from sipedge.transport.tcp import StreamTable
from sipedge.transport.tls import client_context, server_context
from sipedge.transport.udp import UdpListener, open_udp_listener

__all__ = [
    "MessageSink",
    "Sender",
    "StreamSettings",
    "TlsSettings",
    "TransportError",
    "TransportErrorReason",
    "Transports",
    "new_event_loop",
    "run",
]

_log = logging.getLogger(__name__)


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
    """

    def __init__(
        self,
        sink: MessageSink,
        *,
        settings: StreamSettings | None = None,
        tls: TlsSettings | None = None,
        sni_for: Callable[[Endpoint], str | None] | None = None,
    ) -> None:
        self._sink = sink
        self._settings = settings or StreamSettings()
        self._tls = tls
        self._sni_for = sni_for
        self._loop: asyncio.AbstractEventLoop | None = None
        self._udp: dict[tuple[str, int], UdpListener] = {}
        self._udp_by_host: dict[str, UdpListener] = {}
        self._streams: StreamTable | None = None
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
        server_ssl: ssl.SSLContext | None = None
        try:
            for local in dict.fromkeys(listen):
                if local.transport == "udp":
                    listener = await open_udp_listener(self._sink, local, loop)
                    self._udp[(listener.local.host, listener.local.port)] = listener
                    self._udp_by_host.setdefault(listener.local.host, listener)
                    bound.append(listener.local)
                elif local.transport == "tcp":
                    bound.append(await self._streams.listen(local))
                elif local.transport == "tls":
                    if self._tls is None:
                        raise TransportError(
                            TransportErrorReason.TLS_CONFIG, f"{local}: no TLS settings"
                        )
                    server_ssl = server_ssl or server_context(self._tls)
                    bound.append(await self._streams.listen(local, server_ssl))
                else:
                    raise TransportError(TransportErrorReason.UNSUPPORTED, str(local))
        except TransportError:
            await self.aclose()
            raise
        _log.info("listening on %s", ", ".join(map(str, bound)))
        return bound

    @property
    def listeners(self) -> list[Endpoint]:
        """The bound listener endpoints (UDP first, then streams); empty once closed."""
        if self._closed:
            return []
        udp = [listener.local for listener in self._udp.values()]
        return udp + (self._streams.listeners if self._streams is not None else [])

    @property
    def connection_count(self) -> int:
        """Stream connections currently in the table."""
        return len(self._streams.connections) if self._streams is not None else 0

    def send(self, data: bytes, dest: Endpoint, local: Endpoint) -> None:
        """Send one message; never blocks, never raises for peer problems.

        UDP leaves from the socket bound to ``local`` (or, if the core named a stream
        listener, the UDP socket on the same host). TCP/TLS reuses the connection keyed
        by ``dest`` or opens one from ``local.host``. Every failure, now or later, is
        reported as ``sink.transport_error(dest, now)`` from the event loop.

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
            await listener.closed.wait()
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
