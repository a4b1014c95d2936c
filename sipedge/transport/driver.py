"""Binds a sans-I/O ``ProxyCore`` to the asyncio loop (aioquic's ``transmit()`` pattern).

Every input is fed with ``loop.time()``; after each input the outbox is drained into the
transports, events go to the event handler, and ONE ``loop.call_at`` is (re-)armed for
``core.next_deadline()``. The timer is only moved earlier, never cancelled for a later
deadline: a timer that fires early finds nothing due and re-arms itself, which is cheaper
than a cancel + call_at per packet on the hot path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from sipedge.gateway.probe import ProbeResult
from sipedge.logs import RateLimitedLogger
from sipedge.proxy.core import ProxyCore
from sipedge.proxy.events import Event
from sipedge.sip.address import Endpoint

__all__ = ["CoreDriver", "Sender"]


class Sender(Protocol):
    """What the driver needs from the transports: a non-blocking send."""

    def send(self, data: bytes, dest: Endpoint, local: Endpoint) -> None: ...


class CoreDriver:
    """A ``MessageSink`` that runs a ``ProxyCore``."""

    def __init__(self, core: ProxyCore, loop: asyncio.AbstractEventLoop,
                 on_event: Callable[[Event], None]) -> None:
        self.core = core
        self.loop = loop
        self.sender: Sender | None = None
        self._on_event = on_event
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self.internal_errors = 0
        #: Worker 0 of several: gets every probe result its monitor applied, to send to
        #: the other workers (``sipedge.workers``); None in a single process.
        self.on_probe_results: Callable[[list[tuple[str, ProbeResult]]], None] | None = None
        self._limited = RateLimitedLogger(logging.getLogger(__name__))

    def attach(self, sender: Sender) -> None:
        """Give the driver its transports (they are built with the driver as their sink)."""
        self.sender = sender

    # MessageSink
    def receive(self, data: bytes, peer: Endpoint, local: Endpoint, now: float) -> None:
        try:
            self.core.receive(data, peer, local, now)
        except Exception:
            # A bug must cost one message, not the worker (house rule 6): count it, log it
            # (rate-limited), and keep serving; the outbox still goes out below.
            self._internal_error("receive", peer)
        self.flush()

    def transport_error(self, dest: Endpoint, now: float) -> None:
        try:
            self.core.transport_error(dest, now)
        except Exception:
            self._internal_error("transport_error", dest)
        self.flush()

    def is_answerable(self, peer: Endpoint, local: Endpoint, now: float) -> bool:
        try:
            return self.core.is_answerable(peer, local, now)
        except Exception:
            # A bug must not answer a stranger: say no (silence is the safe default).
            self._internal_error("is_answerable", peer)
            return False

    def _internal_error(self, where: str, endpoint: Endpoint) -> None:
        self.internal_errors += 1
        self._limited.log(logging.ERROR, f"internal:{where}",
                          "internal error in core.%s (%s); message dropped", where, endpoint,
                          exc_info=True)

    def kick(self) -> None:
        """Run due timers now (start-up probes) and flush."""
        self.core.handle_timer(self.loop.time())
        self.flush()

    def flush(self) -> None:
        """Send the outbox, hand over events, re-arm the one timer."""
        core = self.core
        sender = self.sender
        out = core.drain_outbox()
        if out and sender is not None:
            for item in out:
                sender.send(item.data, item.dest, item.local)
        events = core.drain_events()
        if events:
            for event in events:
                self._on_event(event)
        share = self.on_probe_results
        if share is not None:
            results = core.drain_probe_results()
            if results:
                share(results)
        deadline = core.next_deadline()
        if deadline is not None and (self._timer_at is None or deadline < self._timer_at):
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = deadline
            self._timer = self.loop.call_at(deadline, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._timer_at = None
        try:
            self.core.handle_timer(self.loop.time())
        except Exception:
            self.internal_errors += 1
            self._limited.log(logging.ERROR, "internal:timer", "internal error in timers",
                              exc_info=True)
        self.flush()

    def close(self) -> None:
        """Cancel the timer."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_at = None
