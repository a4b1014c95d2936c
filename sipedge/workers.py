"""The worker supervisor: one systemd service, ``[process] workers`` processes (issue 14).

Theory of operation. One CPython process tops out near one core, so with ``workers = N``
``sipedge run`` becomes a small parent that does no SIP at all:

1. **Shared listeners.** It binds every configured listener once (``transport.bind_shared``:
   the same plain bind that makes a second sipedge fail with EADDRINUSE) and hands the
   sockets to each worker as inherited file descriptors. All workers read the same UDP
   socket and accept on the same TCP/TLS socket, so one PBX trunk (one source address and
   port) is spread over the workers: ``SO_REUSEPORT`` groups would hash it to one of them.
   A worker restart needs no re-bind, so no datagram is refused meanwhile.
2. **Own endpoints.** Each worker also binds its own address per listener (port +
   ``port_stride`` × (index + 1), ``config.worker_endpoints``) and names it in its Via and
   Record-Route: responses and in-dialog requests come straight back to the worker that
   holds the transaction. A request that lands on a shared UDP socket is steered by its
   Call-ID to the worker that owns it (``transport.steer``); stream connections stay with
   the worker that accepted them.
3. **One prober.** Worker 0 probes the gateways and sends every probe result to the
   others (``GatewayMonitor(share_results=True)`` → ``WorkerLinks.broadcast_probe`` →
   ``ProxyCore.observe_probe``), so Twilio sees one OPTIONS per gateway per interval and
   every worker's pool runs the same hysteresis on the same results.
4. **Supervision.** Workers send their sd_notify datagrams (``READY=1``, ``WATCHDOG=1``,
   ``STOPPING=1``…) to a socket of the parent (their ``NOTIFY_SOCKET``); the parent tells
   systemd ``READY=1`` once every worker is, pings systemd's watchdog while every worker
   pings its own, kills a worker whose pings stop (``WATCHDOG_USEC``, 10 s by default) and
   restarts any worker that exits, with a back-off; a worker that keeps dying (more than
   ``CRASH_LIMIT`` exits in ``CRASH_WINDOW_S``) stops the service with exit code 1, for
   systemd's ``Restart=on-failure``.
5. **Signals.** SIGTERM/SIGINT: ``STOPPING=1`` and SIGTERM to each worker, which drains
   (new calls 503, calls in progress finish); the parent exits when they all have. A second
   SIGTERM is forwarded too (the workers stop at once). SIGHUP: the parent validates the
   file, then forwards SIGHUP; ``READY=1`` again when every worker has reloaded. Listener
   and ``[process]`` changes need a restart in this mode (the sockets are the parent's).
6. **One admin API.** Workers serve their admin API on abstract Unix sockets; the parent
   serves ``[admin] listen`` and fans requests out (``sipedge.fanout``): ``/metrics`` is
   the sum of the workers' (gateway states and other per-service values once).

Workers are ordinary ``sipedge run`` processes that find ``SIPEDGE_WORKER`` in their
environment (``WorkerRole``). They die with the parent (``PR_SET_PDEATHSIG``) and ignore
SIGINT: a terminal's Ctrl-C reaches the whole process group, and the parent turns it into
one orderly drain of every worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import json
import logging
import os
import re
import signal
import socket
import struct
import sys
import time
from collections.abc import Coroutine, Mapping
from typing import TYPE_CHECKING, Any

from sipedge.config import Config, ConfigError, load_config
from sipedge.notify import Notifier
from sipedge.sip.address import Endpoint

if TYPE_CHECKING:
    from sipedge.fanout import FanoutServer

__all__ = ["ENV", "Supervisor", "WorkerRole", "notify_address", "supervise"]

log = logging.getLogger("sipedge.workers")

#: The environment variable that makes ``sipedge run`` a worker (JSON, ``WorkerRole``).
ENV = "SIPEDGE_WORKER"
#: A worker's watchdog period: one silent this long is killed and restarted.
WORKER_WATCHDOG_USEC = 10_000_000
#: A worker that exits more often than this within the window stops the service.
CRASH_LIMIT = 5
CRASH_WINDOW_S = 60.0
#: Back-off before restarting a worker: doubled per recent crash, capped.
RESTART_DELAY_S = 0.25
RESTART_DELAY_MAX_S = 5.0
#: How long the start waits for every worker's READY=1.
START_TIMEOUT_S = 60.0
#: How long a failed start waits for the workers it started to exit.
ABORT_WAIT_S = 5.0
#: How often the parent checks its workers' watchdog pings and refreshes STATUS=.
TICK_S = 1.0


def notify_address(group: str) -> str:
    """The parent's notification socket for the workers of ``group`` (abstract)."""
    return f"\0sipedge-{group}-notify"


def admin_address(group: str, index: int) -> str:
    """Worker ``index``'s admin API socket (abstract Unix name)."""
    return f"\0sipedge-{group}-admin-{index}"


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerRole:
    """What a worker process is told by its parent (``SIPEDGE_WORKER``).

    Attributes:
        group: names this service's sockets (the parent's pid).
        index: this worker, 0-based; worker 0 probes the gateways.
        count: how many workers there are.
        parent_pid: the supervisor's pid (a worker whose parent is gone exits).
        sockets: the shared listeners, bound by the parent, by endpoint.
    """

    group: str
    index: int
    count: int
    parent_pid: int
    sockets: Mapping[Endpoint, socket.socket]

    @property
    def admin_address(self) -> str:
        """Where this worker serves its admin API for the parent."""
        return admin_address(self.group, self.index)

    @property
    def probes(self) -> bool:
        """True for the one worker that probes the gateways."""
        return self.index == 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WorkerRole | None:
        """The role in ``SIPEDGE_WORKER``, or None for an ordinary process.

        Raises:
            ValueError: the variable is set but malformed (a worker must not guess).
        """
        env = os.environ if environ is None else environ
        text = env.get(ENV)
        if not text:
            return None
        try:
            data = json.loads(text)
            sockets = {Endpoint(str(t), str(h), int(p)): socket.socket(fileno=int(fd))
                       for t, h, p, fd in data["fds"]}
            return cls(group=str(data["group"]), index=int(data["index"]),
                       count=int(data["count"]), parent_pid=int(data["parent"]),
                       sockets=sockets)
        except (ValueError, KeyError, TypeError, OSError) as exc:
            raise ValueError(f"{ENV}: {exc}") from exc

    @staticmethod
    def encode(group: str, index: int, count: int, parent_pid: int,
               fds: Mapping[Endpoint, int]) -> str:
        """The ``SIPEDGE_WORKER`` value for worker ``index``."""
        return json.dumps({"group": group, "index": index, "count": count,
                           "parent": parent_pid,
                           "fds": [[e.transport, e.host, e.port, fd] for e, fd in fds.items()]})


def worker_tag(environ: Mapping[str, str] | None = None) -> str | None:
    """``w<index>`` when this process is a worker (for its log lines), else None."""
    env = os.environ if environ is None else environ
    text = env.get(ENV)
    if not text:
        return None
    try:
        return f"w{int(json.loads(text)['index'])}"
    except (ValueError, KeyError, TypeError):
        return None


def die_with_parent(parent_pid: int) -> None:
    """Ask the kernel for SIGTERM when the parent dies; exit now if it already has.

    Without it a SIGKILLed supervisor would leave workers holding the SIP sockets.
    """
    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent_pid:
        log.error("supervisor %d is gone; exiting", parent_pid)
        raise SystemExit(1)


@dataclasses.dataclass(slots=True)
class _Worker:
    """The parent's view of one worker slot."""

    index: int
    proc: asyncio.subprocess.Process | None = None
    ready: bool = False
    reloading: bool = False
    stopping: bool = False
    status: str = ""
    last_ping: float = 0.0
    started: float = 0.0
    exits: list[float] = dataclasses.field(default_factory=list)
    restarts: int = 0
    terms: int = 0  # SIGTERMs sent to the running process


class Supervisor:
    """The parent process of ``workers = N`` (see the module docstring).

    Args:
        config: the validated configuration (``config.process.workers`` > 1).
        log_level, log_format: command-line overrides, passed on to the workers.
        notifier: systemd notifications (default: from ``NOTIFY_SOCKET``).
        executable: the command that starts a worker (default: this Python,
            ``-m sipedge``); tests may point it elsewhere.
    """

    def __init__(self, config: Config, *, log_level: str | None = None,
                 log_format: str | None = None, notifier: Notifier | None = None,
                 executable: tuple[str, ...] | None = None) -> None:
        self.config = config
        self.count = config.process.workers
        self.group = str(os.getpid())
        self.notifier = notifier if notifier is not None else Notifier.from_env()
        self._log_level = log_level
        self._log_format = log_format
        self._command = executable or (sys.executable, "-m", "sipedge")
        self.workers = [_Worker(i) for i in range(self.count)]
        self._sockets: dict[Endpoint, socket.socket] = {}
        self._notify: socket.socket | None = None
        self._stopping = False
        self._stop_requests = 0
        self._reloading = False
        self._done = asyncio.Event()
        self._exit_code = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._tick: asyncio.TimerHandle | None = None
        self._last_status = ""
        self.admin: FanoutServer | None = None
        # The workers' own watchdog, independent of systemd's (which guards this loop): a
        # short WatchdogSec= must not get a worker killed for one slow second under load.
        self.worker_watchdog_usec = WORKER_WATCHDOG_USEC

    # -- start ---------------------------------------------------------------------------

    async def start(self) -> int | None:
        """Bind, spawn, wait for every worker's READY=1; None when serving, else a code."""
        from sipedge.transport import bind_shared
        from sipedge.transport.base import TransportError

        loop = asyncio.get_running_loop()
        try:
            for endpoint in self.config.listen:
                self._sockets[endpoint] = bind_shared(endpoint)
        except TransportError as exc:
            log.error("cannot listen: %s", exc)
            self._close_sockets()
            return 71  # EX_OSERR
        self._open_notify_socket(loop)
        log.info("sipedge supervisor: %d workers on %s", self.count,
                 ", ".join(map(str, self._sockets)))
        for worker in self.workers:
            await self._spawn(worker)
        deadline = loop.time() + START_TIMEOUT_S
        while not all(w.ready for w in self.workers):
            if self._done.is_set():  # a worker failed at start: its code is ours
                return await self._abort(self._exit_code or 1)
            if loop.time() > deadline:
                log.error("workers not ready after %g s: %s", START_TIMEOUT_S,
                          ", ".join(str(w.index) for w in self.workers if not w.ready))
                return await self._abort(70)  # EX_SOFTWARE
            await asyncio.sleep(0.02)
        if self.config.admin.listen is not None:
            from sipedge.fanout import FanoutServer

            admin = FanoutServer(self)
            try:
                await admin.start(self.config.admin.listen)
            except OSError as exc:
                log.error("cannot listen on admin %s: %s", self.config.admin.listen.hostport,
                          exc)
                return await self._abort(71)
            self.admin = admin
        self.notifier.ready(self.status_line())
        log.info("sipedge up: %d workers ready", self.count)
        self._schedule_tick()
        return None

    async def _abort(self, code: int) -> int:
        """A failed start: stop the workers already running, close everything; ``code``."""
        self._stopping = True
        await self._stop_all(hard=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._gone(), ABORT_WAIT_S)
        await self._close()
        return code

    async def _gone(self) -> None:
        while any(w.proc is not None for w in self.workers):
            await asyncio.sleep(0.02)

    def _open_notify_socket(self, loop: asyncio.AbstractEventLoop) -> None:
        sock = socket.socket(socket.AF_UNIX,
                             socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        sock.bind(notify_address(self.group))
        self._notify = sock
        loop.add_reader(sock.fileno(), self._on_notify)

    async def _spawn(self, worker: _Worker) -> None:
        fds = {endpoint: sock.fileno() for endpoint, sock in self._sockets.items()}
        env = dict(os.environ)
        env[ENV] = WorkerRole.encode(self.group, worker.index, self.count, os.getpid(), fds)
        env["NOTIFY_SOCKET"] = "@" + notify_address(self.group)[1:]
        env["WATCHDOG_USEC"] = str(self.worker_watchdog_usec)
        env.pop("WATCHDOG_PID", None)
        args = [*self._command, "run", "--config", str(self.config.path)]
        if self._log_level is not None:
            args += ["--log-level", self._log_level]
        if self._log_format is not None:
            args += ["--log-format", self._log_format]
        worker.ready = worker.reloading = worker.stopping = False
        worker.terms = 0
        worker.status = ""
        worker.started = worker.last_ping = time.monotonic()
        worker.proc = await asyncio.create_subprocess_exec(
            *args, env=env, pass_fds=tuple(fds.values()), stdin=asyncio.subprocess.DEVNULL)
        log.info("worker %d started (pid %d)", worker.index, worker.proc.pid)
        self._spawn_task(self._watch(worker, worker.proc))

    async def _watch(self, worker: _Worker, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        if worker.proc is not proc:
            return
        worker.proc = None
        worker.ready = False
        if self._stopping:
            log.info("worker %d (pid %d) exited (%s)", worker.index, proc.pid, _how(code))
            if all(w.proc is None for w in self.workers):
                self._done.set()
            return
        if not self._serving:
            # A worker that fails during the start (bad config, a port taken) fails the
            # start: restarting it would only fail again. Its exit code is ours.
            log.error("worker %d (pid %d) failed to start (%s)", worker.index, proc.pid,
                      _how(code))
            self._exit_code = code if code > 0 else 1
            self._done.set()
            return
        now = time.monotonic()
        worker.exits = [t for t in worker.exits if now - t < CRASH_WINDOW_S] + [now]
        if len(worker.exits) > CRASH_LIMIT:
            log.error("worker %d exited %d times in %g s (last: %s): stopping the service",
                      worker.index, len(worker.exits), CRASH_WINDOW_S, _how(code))
            self._exit_code = 1
            self.request_stop(hard=True)
            return
        delay = min(RESTART_DELAY_MAX_S, RESTART_DELAY_S * 2 ** (len(worker.exits) - 1))
        log.error("worker %d (pid %d) exited (%s); restarting in %g s", worker.index, proc.pid,
                  _how(code), delay)
        await asyncio.sleep(delay)
        if self._stopping:
            return
        worker.restarts += 1
        await self._spawn(worker)

    @property
    def _serving(self) -> bool:
        return self._tick is not None

    # -- notifications from the workers ----------------------------------------------------

    def _on_notify(self) -> None:
        sock = self._notify
        if sock is None:
            return
        creds = struct.calcsize("3i")
        while True:
            try:
                data, ancillary, _flags, _addr = sock.recvmsg(4096, socket.CMSG_SPACE(creds))
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("notify socket: %s", exc)
                return
            pid = None
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("3i", payload[:creds])[0]
            worker = next((w for w in self.workers
                           if w.proc is not None and w.proc.pid == pid), None)
            if worker is None:
                continue
            self._apply_notification(worker, data.decode("utf-8", "replace"))

    def _apply_notification(self, worker: _Worker, text: str) -> None:
        fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
        worker.last_ping = time.monotonic()
        if "STATUS" in fields:
            worker.status = fields["STATUS"]
        if fields.get("RELOADING") == "1":
            worker.reloading = True
        if fields.get("STOPPING") == "1":
            worker.stopping = True
        if fields.get("READY") == "1":
            first = not worker.ready
            worker.ready = True
            worker.reloading = False
            if first and self._serving:
                log.info("worker %d ready (pid %s)", worker.index,
                         worker.proc.pid if worker.proc else "?")
            if self._reloading and not any(w.reloading for w in self.workers):
                self._reloading = False
                self.notifier.ready(self.status_line())
                log.info("reloaded: every worker runs the new config")

    # -- periodic: watchdog, STATUS= --------------------------------------------------------

    def _schedule_tick(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.notifier.watchdog_interval_s
        period = TICK_S if interval is None else min(interval, TICK_S)

        def tick() -> None:
            now = time.monotonic()
            limit = self.worker_watchdog_usec / 1e6
            for worker in self.workers:
                proc = worker.proc
                if proc is not None and worker.ready and now - worker.last_ping > limit:
                    log.error("worker %d (pid %d) is stuck: no watchdog ping for %.1f s; "
                              "killing it", worker.index, proc.pid, now - worker.last_ping)
                    worker.last_ping = now
                    with contextlib.suppress(ProcessLookupError):
                        proc.send_signal(signal.SIGABRT)
            if interval is not None:
                self.notifier.watchdog()
            text = self.status_line()
            if text != self._last_status:
                self._last_status = text
                self.notifier.status(text)
            self._tick = loop.call_later(period, tick)

        tick()

    def status_line(self) -> str:
        """systemd's STATUS=: "ready: 2/2 workers; 3/3 ashburn-ix up, …, 12 calls".

        The gateway part is worker 0's (every worker follows its probes); the calls are
        the sum over the workers' own STATUS= lines.
        """
        ready = sum(w.ready for w in self.workers)
        phase = "stopping" if self._stopping else "reloading" if self._reloading else "ready"
        first = self.workers[0].status
        detail = first.split(": ", 1)[1] if ": " in first else first
        counts = [_CALLS.search(w.status) for w in self.workers]
        if detail and _CALLS.search(detail):
            calls = sum(int(m.group(1)) for m in counts if m is not None)
            detail = _CALLS.sub(f"{calls} call{'s' if calls != 1 else ''}", detail)
        return f"{phase}: {ready}/{self.count} workers" + (f"; {detail}" if detail else "")

    # -- signals ---------------------------------------------------------------------------

    def request_stop(self, *, hard: bool = False) -> None:
        """SIGTERM/SIGINT: drain every worker, then exit; a second one stops them now."""
        self._stop_requests += 1
        if self._stopping and not hard and self._stop_requests > 1:
            log.warning("second stop request: workers stop now")
        elif not self._stopping:
            log.info("stopping: draining %d workers", self.count)
            self.notifier.stopping(self.status_line())
        self._stopping = True
        self._spawn_task(self._stop_all(hard=hard))

    async def _stop_all(self, *, hard: bool) -> None:
        self._stopping = True
        # A worker drains on its first SIGTERM and stops at once on its second; a third
        # would find its handlers gone (it is closing) and kill it mid-close.
        wanted = 2 if hard else 1
        for worker in self.workers:
            proc = worker.proc
            while proc is not None and worker.terms < wanted:
                worker.terms += 1
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        if all(w.proc is None for w in self.workers):
            self._done.set()

    def request_reload(self) -> None:
        """SIGHUP: validate the file here, then have every worker reload it."""
        if self._stopping or not self._serving:
            log.warning("reload ignored while %s", "stopping" if self._stopping else "starting")
            return
        path = self.config.path
        try:
            new = load_config(path)
        except ConfigError as exc:
            log.error("reload refused, still running the previous config: %s", exc)
            return
        if new.process != self.config.process or new.listen != self.config.listen:
            log.error("reload refused, still running the previous config: %s: listeners "
                      "and [process] change only at a restart with %d workers", path,
                      self.count)
            return
        self.config = new
        self._reloading = True
        self.notifier.reloading(status=self.status_line())
        for worker in self.workers:
            if worker.proc is not None:
                worker.reloading = True
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.send_signal(signal.SIGHUP)
        if not any(w.reloading for w in self.workers):
            self._reloading = False
            self.notifier.ready(self.status_line())

    # -- run and close ---------------------------------------------------------------------

    async def wait_stopped(self) -> int:
        """Serve until every worker has exited after a stop; the exit code."""
        await self._done.wait()
        await self._close()
        return self._exit_code

    async def _close(self) -> None:
        if self._tick is not None:
            self._tick.cancel()
        if self.admin is not None:
            await self.admin.aclose()
        for worker in self.workers:
            if worker.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.kill()
        for task in list(self._tasks):
            task.cancel()
        if self._notify is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._notify.fileno())
            self._notify.close()
            self._notify = None
        self._close_sockets()
        self.notifier.close()
        log.info("sipedge stopped")

    def _close_sockets(self) -> None:
        for sock in self._sockets.values():
            sock.close()
        self._sockets.clear()

    def _spawn_task(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def live_workers(self) -> list[int]:
        """Indexes of the workers running now (the fan-out asks these)."""
        return [w.index for w in self.workers if w.proc is not None and w.ready]

    def restarts(self) -> int:
        """Worker restarts since the start (``sipedge_worker_restarts_total``)."""
        return sum(w.restarts for w in self.workers)


#: The call count at the end of a worker's STATUS= line (``daemon.status_line``).
_CALLS = re.compile(r"(\d+) calls?$")


def _how(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def supervise(config: Config, *, log_level: str | None = None,
              log_format: str | None = None) -> int:
    """``sipedge run`` with ``workers`` > 1: run the supervisor until stopped."""
    from sipedge.transport import run as run_loop

    async def main() -> int:
        supervisor = Supervisor(config, log_level=log_level, log_format=log_format)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, supervisor.request_stop)
        loop.add_signal_handler(signal.SIGHUP, supervisor.request_reload)
        code = await supervisor.start()
        if code is not None:
            return code
        return await supervisor.wait_stopped()

    return run_loop(main())

