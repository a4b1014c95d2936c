"""systemd's sd_notify protocol in plain socket code (no python-systemd dependency).

Theory of operation: systemd passes ``NOTIFY_SOCKET`` (an ``AF_UNIX`` datagram socket, a
filesystem path or ``@name`` in the abstract namespace) and, with ``WatchdogSec=``,
``WATCHDOG_USEC`` and ``WATCHDOG_PID`` to the service. A notification is one datagram of
newline-separated ``KEY=value`` assignments (sd_notify(3)). With ``NotifyAccess=main`` systemd
accepts datagrams only from the main PID; the kernel attaches the sender's credentials, so
nothing else needs to be sent.

``Notifier.from_env()`` reads the environment once and opens one socket (non-blocking,
close-on-exec). Without ``NOTIFY_SOCKET`` (tests, ``sipedge run`` in a terminal, Docker)
every method is a cheap no-op. A failed send never raises into the daemon: it is logged once
at WARNING and later failures stay quiet, because a lost notification must not cost a call.

The watchdog (``WatchdogSec=``) expects ``WATCHDOG=1`` at least once per ``WATCHDOG_USEC``;
``watchdog_loop`` pings at half that period from the event loop itself, so a loop that is
stuck (a blocking call, a busy hot path) stops the pings and systemd restarts the service.

The environment is left as it is (sd_notify's ``unset_environment=0``): sipedge spawns no
child processes that could pick the socket up.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Mapping

__all__ = ["Notifier", "start_watchdog", "watchdog_loop"]

log = logging.getLogger(__name__)


class Notifier:
    """Sends sd_notify(3) datagrams to the service manager, or does nothing.

    Build it with ``Notifier.from_env()``. All methods are safe to call from the event loop
    (the socket is non-blocking) and never raise on a send failure.

    Attributes:
        address: The socket address in the form ``socket.sendto`` takes (a path, or a
            leading NUL byte for the abstract namespace), or None when notifications are
            disabled.
        watchdog_usec: ``WATCHDOG_USEC`` if the watchdog applies to this process, else None.
    """

    __slots__ = ("_sock", "_warned", "address", "watchdog_usec")

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        """Opens the notification socket for ``address``.

        Args:
            address: A ``NOTIFY_SOCKET`` value: an absolute path, or ``@name`` for the
                abstract namespace. None or an unsupported form disables notifications
                (an unsupported form, e.g. ``vsock:``, is logged once at WARNING).
            watchdog_usec: The watchdog period in microseconds, or None for no watchdog.
        """
        self._sock: socket.socket | None = None
        self._warned = False
        self.address = _sockaddr(address)
        self.watchdog_usec = watchdog_usec
        if address and self.address is None:
            self._warn_once("NOTIFY_SOCKET=%r is not a path or @name: notifications off",
                            address)
        if self.address is not None:
            try:
                self._sock = socket.socket(
                    socket.AF_UNIX,
                    socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
            except OSError as exc:
                self._warn_once("cannot open the systemd notification socket: %s", exc)
                self.address = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """A notifier for ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID``.

        The watchdog applies only when ``WATCHDOG_USEC`` is a positive integer and
        ``WATCHDOG_PID`` is unset or equals ``os.getpid()`` (as sd_watchdog_enabled(3)).

        Args:
            environ: The environment to read; ``os.environ`` by default. It is not modified.

        Returns:
            A notifier; a no-op one when ``NOTIFY_SOCKET`` is unset or empty.
        """
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET") or None, _watchdog_usec(env))

    @property
    def enabled(self) -> bool:
        """True while notifications are sent (``NOTIFY_SOCKET`` set and not closed)."""
        return self._sock is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often to send ``WATCHDOG=1``: half of ``WATCHDOG_USEC`` in seconds.

        None when there is no watchdog for this process or no socket to ping.
        """
        if self.watchdog_usec is None or not self.enabled:
            return None
        return self.watchdog_usec / 2_000_000

    def notify(self, **fields: str | int) -> bool:
        """Sends one datagram of ``KEY=value`` lines, in the order given.

        Keys are upper-cased (``notify(ready=1, status="up")`` sends
        ``READY=1\\nSTATUS=up``). A newline inside a value would start a new assignment, so
        it is replaced by a space.

        Args:
            **fields: The assignments to send.

        Returns:
            True if the datagram was handed to the kernel; False when disabled or the send
            failed (logged once at WARNING, never raised).
        """
        sock, address = self._sock, self.address
        if sock is None or address is None or not fields:
            return False
        data = "\n".join(f"{key.upper()}={str(value).replace(chr(10), ' ')}"
                         for key, value in fields.items()).encode("utf-8")
        try:
            sock.sendto(data, address)
        except OSError as exc:  # ENOENT, ECONNREFUSED, EAGAIN (queue full), EPERM …
            self._warn_once("systemd notification %r not sent: %s", data[:60], exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1``: the listeners are bound and the first probes sent.

        Args:
            status: Optional ``STATUS=`` text sent in the same datagram.

        Returns:
            See ``notify``.
        """
        return self.notify(ready=1, **_status(status))

    def reloading(self, monotonic_usec: int | None = None, status: str | None = None) -> bool:
        """``RELOADING=1`` + ``MONOTONIC_USEC``; send ``ready()`` when the reload is done.

        ``MONOTONIC_USEC`` is what ``Type=notify-reload`` (systemd ≥ 253) needs to match
        the reload to the request; ``Type=notify`` accepts it as well.

        Args:
            monotonic_usec: ``CLOCK_MONOTONIC`` in microseconds when the reload began; now
                by default.
            status: Optional ``STATUS=`` text sent in the same datagram.

        Returns:
            See ``notify``.
        """
        if monotonic_usec is None:
            monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify(reloading=1, monotonic_usec=monotonic_usec, **_status(status))

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``: the drain has begun; the process exits when it ends.

        Args:
            status: Optional ``STATUS=`` text sent in the same datagram.

        Returns:
            See ``notify``.
        """
        return self.notify(stopping=1, **_status(status))

    def status(self, text: str) -> bool:
        """``STATUS=text``: the one line ``systemctl status sipedge`` shows.

        Args:
            text: A short, single-line description of the current state.

        Returns:
            See ``notify``.
        """
        return self.notify(status=text)

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: the keep-alive ping for ``WatchdogSec=``.

        Returns:
            See ``notify``.
        """
        return self.notify(watchdog=1)

    def close(self) -> None:
        """Closes the socket; later calls are no-ops. Idempotent."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def _warn_once(self, msg: str, *args: object) -> None:
        if not self._warned:
            self._warned = True
            log.warning(msg + " (further notification errors are not logged)", *args)


async def watchdog_loop(notifier: Notifier, interval_s: float | None = None) -> None:
    """Sends ``WATCHDOG=1`` every ``interval_s`` seconds until cancelled.

    The pings come from the event loop itself: a loop that is stuck stops them and systemd
    restarts the service (``WatchdogSec=``). Keep it running until the process exits,
    drain included. The first ping is sent at once.

    Args:
        notifier: Where to send the pings.
        interval_s: The period; ``notifier.watchdog_interval_s`` by default. When both are
            None (no watchdog configured) the coroutine returns at once.
    """
    if interval_s is None:
        interval_s = notifier.watchdog_interval_s
    if interval_s is None:
        return
    while True:
        notifier.watchdog()
        await asyncio.sleep(interval_s)


def start_watchdog(notifier: Notifier) -> asyncio.Task[None] | None:
    """Starts ``watchdog_loop`` on the running loop, if the watchdog applies.

    Must be called from a coroutine (it needs the running loop). Keep the returned task and
    ``cancel()`` it just before the process exits.

    Args:
        notifier: Where to send the pings.

    Returns:
        The task, or None when there is no watchdog (nothing to cancel).
    """
    if notifier.watchdog_interval_s is None:
        return None
    return asyncio.get_running_loop().create_task(watchdog_loop(notifier),
                                                  name="sd-watchdog")


def _sockaddr(value: str | None) -> str | None:
    """``NOTIFY_SOCKET`` → a ``sendto`` address, or None when unsupported."""
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]  # Linux abstract namespace (unix(7))
    if value.startswith("/"):
        return value
    return None  # relative paths and vsock:CID:PORT (systemd ≥ 254) are not supported


def _watchdog_usec(env: Mapping[str, str]) -> int | None:
    """``WATCHDOG_USEC`` if the watchdog is meant for this process (sd_watchdog_enabled)."""
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    return usec


def _status(text: str | None) -> dict[str, str]:
    return {} if text is None else {"status": text}
