"""The composition root: config → core → transports → admin; signals; shutdown.

Everything here is wiring. Behaviour lives in the sans-I/O core (``sipedge.proxy``) and in
the transports; this module builds them from a validated ``Config`` and runs the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import ipaddress
import logging
import os
import random
import signal
import socket
import time
from collections.abc import Coroutine, Mapping
from typing import Any

from sipedge import __version__, core_build
from sipedge.admin import AdminServer
from sipedge.config import (
    Config,
    ConfigError,
    GatewayConfig,
    build_settings,
    build_stream_settings,
    load_config,
    worker_endpoints,
)
from sipedge.eventlog import EventLogger
from sipedge.gateway.health import (
    ChangeReason,
    GatewayStateChanged,
    Health,
    HealthPolicy,
    ReplyCodes,
)
from sipedge.gateway.monitor import GatewayMonitor
from sipedge.gateway.pool import Gateway, GatewayPool
from sipedge.gateway.probe import ProbeResult, ProbeSchedule
from sipedge.lifecycle import Lifecycle, Phase
from sipedge.logs import setup_logging
from sipedge.metrics import GcPauseMonitor, LoopLagMonitor, make_registry, metrics_endpoint
from sipedge.notify import Notifier
from sipedge.proxy.core import ProxyCore, probe_settings
from sipedge.proxy.events import Event
from sipedge.proxy.settings import WorkerPlace
from sipedge.sip.address import Endpoint
from sipedge.transport import TlsSettings, Transports
from sipedge.transport.base import TransportError
from sipedge.transport.dns import (
    Answer,
    NameWatcher,
    Query,
    Rfc3263Resolver,
    hold_unresolved,
    is_placeholder,
)
from sipedge.transport.driver import CoreDriver
from sipedge.transport.steer import SteeringSink, WorkerLinks
from sipedge.workers import WorkerRole, die_with_parent

__all__ = ["Daemon", "build_core", "run", "serve", "status_line"]

log = logging.getLogger("sipedge")


def build_pool(config: Config, now: float,
               answers: Mapping[Query, Answer] | None = None) -> GatewayPool:
    """Gateways from config, grouped by edge in priority order.

    A gateway given as a name becomes its resolved targets (``answers``, RFC 3263): SRV
    targets of the best priority join the edge's group, each lower SRV priority forms one
    more group right after it (before the next edge). A name without an answer becomes a
    placeholder held DOWN with reason "dns" (``transport.dns.hold_unresolved``).
    """
    groups: list[list[Gateway]] = []
    for edge in config.edges:
        ranked: list[list[Gateway]] = []
        seen: set[Endpoint] = set()
        for gw in edge.gateways:
            for rank, endpoint, weight in _targets(gw, answers or {}):
                if endpoint in seen:  # two names (or a name and an IP) for one address
                    continue
                seen.add(endpoint)
                while len(ranked) <= rank:
                    ranked.append([])
                ranked[rank].append(Gateway.make(edge.name, edge.region, endpoint,
                                                 edge.localized_domain.encode("ascii"), weight))
        groups.extend(group for group in ranked if group)
    probe = config.probe
    policy = HealthPolicy(
        down_after=probe.down_after,
        up_after=probe.up_after,
        healthy_codes=ReplyCodes(codes=probe.healthy_codes),
        retry_after_cap_s=probe.retry_after_max_s,
    )
    pool = GatewayPool(groups, policy, now=now)
    hold_unresolved(pool, now)
    return pool


# -- DNS gateways (RFC 3263, issue 4) ---------------------------------------------------------

#: How long the start waits for the first answers; later answers rebuild the pool.
DNS_START_WAIT_S = 2.0
DNS_MIN_TTL_S = 30.0
DNS_MAX_TTL_S = 3600.0


def dns_queries(config: Config) -> list[Query]:
    """The gateway names of ``config`` to resolve (IP literals need no DNS)."""
    return [Query(gw.host, gw.port, gw.transport)
            for edge in config.edges for gw in edge.gateways if not gw.is_ip]


def _targets(gw: GatewayConfig,
             answers: Mapping[Query, Answer]) -> list[tuple[int, Endpoint, int]]:
    """(rank, endpoint, weight) of one configured gateway; rank 0 = the edge's group."""
    if gw.is_ip:
        return [(0, gw.endpoint, gw.weight)]
    answer = answers.get(Query(gw.host, gw.port, gw.transport))
    if answer is None:
        return [(0, gw.endpoint, gw.weight)]  # placeholder: the name, held DOWN (dns)
    priorities = sorted({t.priority for t in answer.targets})
    # RFC 2782: weight 0 targets get a small share; the pool needs >= 1.
    return [(priorities.index(t.priority), t.endpoint,
             max(1, t.weight) if answer.srv else gw.weight) for t in answer.targets]


def probed_ids(pool: GatewayPool) -> list[str]:
    """Gateways to probe: all but DNS placeholders (a send to a name would block)."""
    return [g.id for g in pool.gateways() if not is_placeholder(g)]


def build_core(config: Config, now: float,
               answers: Mapping[Query, Answer] | None = None,
               role: WorkerRole | None = None) -> ProxyCore:
    """A ready ``ProxyCore`` for ``config`` (no I/O); names resolved as in ``answers``.

    The core holds the gateway monitor that probes its pool (one process: one prober). As
    worker ``role`` of several, it gets the worker's own endpoints and share of the limits
    (``build_settings``), and only worker 0 probes, keeping every result for the others
    (``share_results``); the other workers' cores have no monitor and are fed with
    ``observe_probe``.
    """
    schedule = ProbeSchedule(rng=random.Random(), interval_up_s=config.probe.interval_up_s,
                             interval_down_s=config.probe.interval_down_s,
                             jitter=config.probe.jitter_fraction)
    # Probe Call-IDs and branches stay unique across restarts (RFC 3261 §8.1.1.4).
    instance = os.urandom(4).hex().encode("ascii")
    pool = build_pool(config, now, answers)
    settings = build_settings(config, worker_place(role))
    monitor = None
    if role is None or role.probes:
        monitor = GatewayMonitor(pool, schedule, probe_settings(settings), instance=instance,
                                 share_results=role is not None and role.count > 1)
    core = ProxyCore(settings, pool, monitor=monitor)
    core.start(now, probed_ids(pool))
    return core


def worker_place(role: WorkerRole | None) -> WorkerPlace | None:
    """The core's view of a worker role (None: the only process)."""
    return None if role is None else WorkerPlace(index=role.index, count=role.count)


def _sni_map(pool: GatewayPool) -> dict[Endpoint, str]:
    """TLS server name per gateway endpoint: its edge's localized domain."""
    return {g.endpoint: g.domain_host.decode("ascii") for g in pool.gateways()}


async def resolve_pbx(config: Config) -> Config:
    """The config with ``inside.pbx`` as an IP address (resolved once, at start).

    Sends must never resolve names on the event loop; a PBX is a fixed host, so one
    lookup at start is enough (re-resolution would need a restart or reload).

    Raises:
        OSError: the name does not resolve.
    """
    pbx = config.inside.pbx
    try:
        ipaddress.ip_address(pbx.host)
        return config
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(pbx.host, pbx.port, type=socket.SOCK_DGRAM)
    host = str(infos[0][4][0])
    log.info("inside.pbx %s resolved to %s", pbx.host, host)
    inside = dataclasses.replace(config.inside, pbx=Endpoint(pbx.transport, host, pbx.port))
    return dataclasses.replace(config, inside=inside)


def watch_gateways(transports: Transports, core: ProxyCore) -> None:
    """Send to each UDP gateway through a connected socket sharing the outside port.

    The kernel then reports its ICMP port/host-unreachable to us, and a call to a dead
    gateway fails over at once instead of after ``no_provisional_timeout_s``.
    """
    if not any(ep.transport == "udp" for ep in core.listeners.outside):
        return
    transports.rewatch_udp((g.endpoint for g in core.pool.gateways()),
                           core.listeners.egress(outside=True, transport="udp"))


def status_line(core: ProxyCore, phase: Phase) -> str:
    """systemd's STATUS=: "ready: 3/3 ashburn-ix up, 3/3 san-jose-ix up, 12 calls"."""
    up: dict[str, list[int]] = {}
    for row in core.pool.snapshot():
        counts = up.setdefault(row.edge, [0, 0])
        counts[1] += 1
        counts[0] += row.state is Health.UP
    edges = ", ".join(f"{n}/{total} {edge} up" for edge, (n, total) in up.items())
    calls = core.calls_in_progress
    return f"{phase.value}: {edges}, {calls} call{'s' if calls != 1 else ''}"


class Daemon:
    """One sipedge process: the core, its transports, admin API and DNS, and the lifecycle.

    The lifecycle (``sipedge.lifecycle``) is the spine: ``start`` moves STARTING → READY,
    ``request_reload`` (SIGHUP) READY → RELOADING → READY, ``request_stop`` (SIGTERM) →
    DRAINING → STOPPED, ``drain``/``undrain`` (admin API) READY ⇄ DRAINING. systemd
    notifications and the core's drain flag hang off the transitions (``_moved``).

    Args:
        config: the validated configuration (``config.path`` is re-read on reload).
        resolver: overrides the system DNS configuration (tests point it at loopback).
        notifier: systemd notifications (default: from ``NOTIFY_SOCKET``; no-op without).
        log_level: a ``--log-level`` given on the command line wins over ``[log] level``,
            on reload too.
        log_format: likewise ``--log-format`` over ``[log] format``.
        role: this process's place among ``[process] workers`` (None: the only one). A
            worker listens on the parent's shared sockets plus its own endpoints, steers
            datagrams to the worker owning their Call-ID, probes only as worker 0 and serves
            its admin API on a Unix socket for the parent (``sipedge.workers``).
    """

    def __init__(self, config: Config, *, resolver: Rfc3263Resolver | None = None,
                 notifier: Notifier | None = None, log_level: str | None = None,
                 log_format: str | None = None, role: WorkerRole | None = None) -> None:
        self.config = config
        #: Set when this process is one of several workers (``sipedge.workers``).
        self.role = role
        self.links: WorkerLinks | None = None
        self._steering: SteeringSink | None = None
        self.lifecycle = Lifecycle()
        self.lifecycle.on_move(self._moved)
        self.notifier = notifier if notifier is not None else Notifier.from_env()
        self._resolver = resolver
        self._log_level = log_level
        self._log_format = log_format
        #: Listeners a reload removed, kept open for the calls in progress at that reload
        #: (their Record-Route names these addresses): endpoint → those Call-IDs.
        self._retiring: dict[Endpoint, frozenset[bytes]] = {}
        self._stopped = asyncio.Event()
        self._hard_stop = asyncio.Event()
        self._reload_again = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._tick: asyncio.TimerHandle | None = None
        self.core: ProxyCore | None = None
        self.driver: CoreDriver | None = None
        self.transports: Transports | None = None
        self.admin: AdminServer | None = None
        self.watcher: NameWatcher | None = None
        self.lag = LoopLagMonitor()
        self.gc_pauses = GcPauseMonitor()
        self._sni: dict[Endpoint, str] = {}
        self._events = EventLogger()
        self._status = ""

    @property
    def phase(self) -> Phase:
        """The current lifecycle phase."""
        return self.lifecycle.phase

    # -- start and stop -------------------------------------------------------------------

    async def start(self) -> int | None:
        """Bind everything and send the first probes; None when READY, else an exit code."""
        loop = asyncio.get_running_loop()
        config = self.config
        build = core_build()
        if build.kind == "mypyc":
            log.info("sipedge %s: core compiled (mypyc)", __version__)
        else:
            log.info("sipedge %s: core is pure Python (%s)", __version__, build.reason)
        try:
            config = self.config = await resolve_pbx(config)
        except OSError as exc:
            log.error("%s: inside.pbx: cannot resolve %s: %s", config.path,
                      config.inside.pbx.host, exc)
            return self._failed(68)  # EX_NOHOST
        role = self.role
        core = self.core = build_core(config, loop.time(), role=role)
        driver = self.driver = CoreDriver(core, loop, self._on_event)
        tls = None
        if config.tls.cafile is not None:
            tls = TlsSettings(cafile=config.tls.cafile, certfile=config.tls.certfile,
                              keyfile=config.tls.keyfile)
        self._sni = _sni_map(core.pool)
        sink: Any = driver
        listen = list(config.listen)
        if role is not None:
            links = self.links = WorkerLinks(role.group, role.index, role.count,
                                             deliver=driver.receive,
                                             probe_result=self._probe_result)
            await links.start()
            sink = self._steering = SteeringSink(driver, links)
            listen += list(worker_endpoints(config, role.index).values())
            if role.probes and role.count > 1:
                driver.on_probe_results = self._share_probe_results
        transports = self.transports = Transports(
            sink, settings=build_stream_settings(config), tls=tls, sni_for=self._sni.get,
            inherited=role.sockets if role is not None else None)
        driver.attach(transports)
        try:
            await transports.start(listen)
        except TransportError as exc:
            log.error("cannot listen: %s", exc)
            await transports.aclose()
            if self.links is not None:
                self.links.close()
            return self._failed(71)  # EX_OSERR
        if self._steering is not None:
            self._steering.shared = frozenset(transports.inherited_udp)
        watch_gateways(transports, core)
        # DNS before the admin API: its first answers (at most DNS_START_WAIT_S) turn the
        # named gateways into addresses, so /gateways never shows the placeholders.
        await self._start_dns(config)
        if config.admin.listen is not None or role is not None:
            try:
                self.admin = await self._start_admin(config.admin.listen)
            except OSError as exc:
                where = role.admin_address[1:] if role is not None else \
                    config.admin.listen.hostport if config.admin.listen else "?"
                log.error("cannot listen on admin %s: %s", where, exc)
                if self.watcher is not None:
                    await self.watcher.aclose()
                await transports.aclose()
                return self._failed(71)  # EX_OSERR
        edges = ", ".join(f"{e.name} ({len(e.gateways)} gateways)" for e in config.edges)
        log.info("sipedge up: domain %s, edges %s", config.outside.domain, edges)
        driver.kick()
        await self._first_probes_sent(config)
        self.lag.start(loop)
        self.gc_pauses.start()
        self.lifecycle.move(Phase.READY)
        self._schedule_tick()
        return None

    async def _first_probes_sent(self, config: Config) -> None:
        """Wait until every gateway has had its first probe (READY=1 means probing).

        First probes are spread over ``jitter × interval_down_s`` (``ProbeSchedule.add``),
        so this is a fraction of a second at most.
        """
        core = self.core
        assert core is not None
        loop = asyncio.get_running_loop()
        wanted = len(probed_ids(core.pool))
        deadline = loop.time() + config.probe.jitter_fraction * config.probe.interval_down_s
        while core.probe_stats.probes_sent < wanted and loop.time() < deadline + 0.5:
            await asyncio.sleep(0.01)

    def _failed(self, code: int) -> int:
        self.lifecycle.move(Phase.STOPPED)
        return code

    async def wait_stopped(self) -> int:
        """Serve until STOPPED is due, then close everything; the exit code (0)."""
        await self._stopped.wait()
        await self._close()
        return 0

    def request_stop(self) -> None:
        """SIGTERM/SIGINT: drain, then stop; a second request stops at once."""
        if self.lifecycle.stopping:
            log.warning("second stop request: exiting now, %d calls still in progress",
                        self.core.calls_in_progress if self.core is not None else 0)
            self._hard_stop.set()
            self._stopped.set()
            return
        self.lifecycle.stopping = True
        if self.phase is Phase.RELOADING:
            return  # the reload moves on to DRAINING when it ends
        if self.phase is Phase.DRAINING:
            self.notifier.stopping()  # an admin drain becomes the stop drain
            self._spawn(self._drain_then_stop())
            return
        if self.phase is Phase.STARTING:
            self._stopped.set()
            return
        self.lifecycle.move(Phase.DRAINING)
        self._spawn(self._drain_then_stop())

    async def _drain_then_stop(self) -> None:
        """Wait for the calls in progress to end, up to ``[daemon] drain_timeout_s``."""
        core = self.core
        assert core is not None
        loop = asyncio.get_running_loop()
        timeout_s = self.config.daemon.drain_timeout_s
        deadline = loop.time() + timeout_s
        log.info("draining: new calls refused (503); %d calls in progress, %d requests "
                 "pending; waiting up to %g s", core.calls_in_progress, core.pending_requests(),
                 timeout_s)
        while not core.is_quiescent():
            if self._hard_stop.is_set():
                return  # a second stop request: request_stop logged it and stops us
            left = deadline - loop.time()
            if left <= 0:
                log.warning("drain timed out after %g s: %d calls, %d requests still open",
                            timeout_s, core.calls_in_progress, core.pending_requests())
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._hard_stop.wait(), min(left, DRAIN_POLL_S))
        else:
            log.info("drained: every call ended")
        self._stopped.set()

    async def _close(self) -> None:
        log.info("sipedge stopping")
        if self.phase is not Phase.STOPPED:
            self.lifecycle.move(Phase.STOPPED)
        if self._tick is not None:
            self._tick.cancel()
        self.lag.stop()
        self.gc_pauses.stop()
        for task in list(self._tasks):
            task.cancel()
        if self.watcher is not None:
            await self.watcher.aclose()
        if self.admin is not None:
            await self.admin.aclose()
        if self.driver is not None:
            self.driver.close()
        if self.transports is not None:
            await self.transports.aclose()
        if self.links is not None:
            self.links.close()
        self.notifier.close()

    # -- drain without stopping (admin API) ---------------------------------------------

    def drain(self) -> bool:
        """``POST /drain``: refuse new calls, keep serving in-dialog; False if not READY."""
        if self.phase is not Phase.READY:
            return self.phase is Phase.DRAINING
        self.lifecycle.move(Phase.DRAINING)
        return True

    def undrain(self) -> bool:
        """``POST /undrain``: take new calls again; False while stopping or reloading."""
        if self.phase is not Phase.DRAINING or self.lifecycle.stopping:
            return self.phase is Phase.READY
        self.lifecycle.move(Phase.READY)
        return True

    # -- reload -------------------------------------------------------------------------

    def request_reload(self) -> None:
        """SIGHUP: re-read the config file; invalid files keep the running config."""
        if self.phase is Phase.RELOADING:
            self._reload_again = True  # a second SIGHUP during a reload: once more after
            return
        if self.phase is not Phase.READY:
            log.warning("reload ignored while %s", self.phase.value)
            return
        self._spawn(self._reload())

    async def _reload(self) -> None:
        self.lifecycle.move(Phase.RELOADING)
        path = self.config.path
        try:
            new = load_config(path)
            for warning in new.warnings:
                log.warning("%s: %s", path, warning)
            if self.role is not None and (new.process != self.config.process
                                          or new.listen != self.config.listen):
                raise ConfigError(path, "process", "listeners and [process] change only at a "
                                  f"restart with {self.role.count} workers")
            try:
                new = await resolve_pbx(new)
            except OSError as exc:
                raise ConfigError(path, "inside.pbx", f"cannot resolve {new.inside.pbx.host}: "
                                  f"{exc}") from exc
            await self._apply(new)
        except ConfigError as exc:
            log.error("reload refused, still running the previous config: %s", exc)
        except (TransportError, OSError) as exc:
            log.error("reload refused, still running the previous config: %s: cannot "
                      "listen: %s", path, exc)
        except Exception:
            log.exception("reload failed, still running the previous config")
        finally:
            if self.lifecycle.stopping:
                self.lifecycle.move(Phase.DRAINING)
                self._spawn(self._drain_then_stop())
            else:
                self.lifecycle.move(Phase.READY)
                if self._reload_again:
                    self._reload_again = False
                    self.request_reload()

    async def _apply(self, new: Config) -> None:
        """Swap ``new`` in whole; on a bind failure nothing has changed (raises)."""
        old = self.config
        core, driver, transports = self.core, self.driver, self.transports
        assert core is not None and driver is not None and transports is not None
        loop = asyncio.get_running_loop()
        # 1. New sockets first: a failure here leaves everything as it was.
        added = await transports.add_listeners(new.listen)
        admin = self.admin
        if new.admin.listen != old.admin.listen and self.role is None:
            try:
                admin = await self._start_admin(new.admin.listen) if new.admin.listen else None
            except OSError:
                await transports.remove_listeners(added)
                raise
        if new.tls != old.tls:
            log.warning("%s: tls: changes take effect at the next restart", new.path)
        # 2. The core: settings, ACLs, edges and gateways (health kept), probe timing.
        self.config = new
        transports.reconfigure_streams(build_stream_settings(new))
        probe = new.probe
        if core.monitor is not None:
            core.monitor.schedule.retune(loop.time(), interval_up_s=probe.interval_up_s,
                                         interval_down_s=probe.interval_down_s,
                                         jitter=probe.jitter_fraction)
        if dns_queries(new) != dns_queries(old):
            if self.watcher is not None:
                await self.watcher.aclose()
                self.watcher = None
            await self._start_dns(new)
        answers = self.watcher.answers() if self.watcher is not None else None
        now = loop.time()
        pool = build_pool(new, now, answers)
        core.reconfigure(build_settings(new, worker_place(self.role)), pool, now,
                         probed_ids(pool))
        self._rewire()
        # 3. Old sockets last, and only once the calls set up through them have ended:
        # their in-dialog requests (BYE, re-INVITE) come to the address in their
        # Record-Route. Stream connections stay until they end in any case.
        wanted = set(new.listen)
        for endpoint in [ep for ep in self._retiring if ep in wanted]:
            del self._retiring[endpoint]  # listed again: no longer retiring
        removed = [ep for ep in old.listen if ep not in wanted]
        calls = core.call_ids()
        if removed and calls:
            for endpoint in removed:
                self._retiring[endpoint] = calls
            log.info("keeping %s open until the %d calls in progress have ended",
                     ", ".join(map(str, removed)), len(calls))
            self._spawn(self._close_retired())
        else:
            await transports.remove_listeners(removed)
        if admin is not self.admin:
            if self.admin is not None:
                await self.admin.aclose()
            self.admin = admin
        level = self._log_level or new.log.level
        if self._log_format is None and new.log.format != old.log.format:
            setup_logging(level, new.log.format)
        else:
            logging.getLogger().setLevel(level.upper())
        edges = ", ".join(e.name for e in new.edges)
        log.info("reloaded %s: edges %s, %d gateways; listeners +%d -%d", new.path, edges,
                 len(pool.gateways()), len(added), len(removed))

    async def _close_retired(self) -> None:
        """Close retiring listeners as the calls they were kept for end (polled)."""
        core, transports = self.core, self.transports
        assert core is not None and transports is not None
        while self._retiring:
            await asyncio.sleep(RETIRE_POLL_S)
            done = [ep for ep, calls in self._retiring.items() if not core.has_any_call(calls)]
            for endpoint in done:
                del self._retiring[endpoint]
            if done:
                await transports.remove_listeners(done)

    def _rewire(self) -> None:
        """After the pool changed: watched UDP gateways, TLS server names, timers."""
        core, driver, transports = self.core, self.driver, self.transports
        assert core is not None and driver is not None and transports is not None
        watch_gateways(transports, core)
        self._sni.clear()
        self._sni.update(_sni_map(core.pool))
        driver.flush()

    # -- pieces -------------------------------------------------------------------------

    def _share_probe_results(self, results: list[tuple[str, ProbeResult]]) -> None:
        """Worker 0: send the probe results its monitor applied to the other workers."""
        links = self.links
        if links is not None:
            for gateway_id, result in results:
                links.broadcast_probe(gateway_id, result)

    def _probe_result(self, gateway_id: str, result: ProbeResult, now: float) -> None:
        """A probe result worker 0 observed: into this worker's pool (same hysteresis)."""
        driver = self.driver
        if driver is None:
            return
        driver.core.observe_probe(gateway_id, result, now)
        driver.flush()

    async def _start_admin(self, listen: Endpoint | None) -> AdminServer:
        assert self.driver is not None
        registry = make_registry(lambda: self.driver, loop_lag=self.lag,  # type: ignore[arg-type, return-value]
                                 gc_pauses=self.gc_pauses,
                                 state=lambda: self.phase.value,
                                 transports=lambda: self.transports)
        admin = AdminServer(self.driver, metrics=metrics_endpoint(registry), control=self)
        if self.role is not None:
            await admin.start_unix(self.role.admin_address)  # the parent serves [admin]
        else:
            assert listen is not None
            await admin.start(listen)
        return admin

    async def _start_dns(self, config: Config) -> None:
        queries = dns_queries(config)
        if not queries:
            return

        def rebuild() -> None:
            # A name's targets changed: new pool (health carried over), probes, SNI.
            assert self.watcher is not None and self.core is not None
            now = asyncio.get_running_loop().time()
            pool = build_pool(self.config, now, self.watcher.answers())
            self.core.reload_pool(pool, now, probed_ids(pool))
            self._rewire()

        self.watcher = NameWatcher(self._resolver or Rfc3263Resolver(), queries, rebuild,
                                   min_ttl_s=DNS_MIN_TTL_S, max_ttl_s=DNS_MAX_TTL_S)
        await self.watcher.start(wait_s=DNS_START_WAIT_S)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_event(self, event: Event) -> None:
        if (isinstance(event, GatewayStateChanged) and self.role is not None
                and not self.role.probes and event.cause in _PROBE_CAUSES):
            # Worker 0 logs every probe-driven change; the others follow its results and
            # would only repeat the line. Their own call-driven changes are logged.
            log.debug("gateway %s %s -> %s (from worker 0's probes)", event.gateway_id,
                      event.old.name, event.new.name)
        else:
            self._events(event)
        if isinstance(event, GatewayStateChanged):
            self._send_status()

    def _send_status(self) -> None:
        """STATUS= when the line changed (gateway flaps must not flood the manager)."""
        if self.core is None:
            return
        text = status_line(self.core, self.phase)
        if text != self._status:
            self._status = text
            self.notifier.status(text)

    def _moved(self, old: Phase, new: Phase) -> None:
        """Lifecycle hook: systemd notifications and the core's drain flag."""
        core = self.core
        if new is Phase.RELOADING:
            self.notifier.reloading(time.monotonic_ns() // 1000)
        elif new is Phase.READY:
            if core is not None:
                core.set_draining(False)
            self.notifier.ready()
        elif new is Phase.DRAINING:
            if core is not None:
                core.set_draining(True)
            if self.lifecycle.stopping:
                self.notifier.stopping()
            else:
                log.warning("draining (admin): new calls refused with 503 until undrain")
        elif new is Phase.STOPPED and old is not Phase.DRAINING:
            self.notifier.stopping()
        if new is not Phase.STOPPED:
            self._send_status()
        if self.driver is not None:
            self.driver.flush()

    def _schedule_tick(self) -> None:
        """Watchdog pings and STATUS= from the event loop (a stuck loop stops both)."""
        loop = asyncio.get_running_loop()
        interval = self.notifier.watchdog_interval_s
        period = STATUS_INTERVAL_S if interval is None else min(interval, STATUS_INTERVAL_S)

        def tick() -> None:
            if interval is not None:
                self.notifier.watchdog()
            self._send_status()
            self._tick = loop.call_later(period, tick)

        tick()


#: Gateway state changes that come from probe results (worker 0 logs them for everyone).
_PROBE_CAUSES = frozenset({ChangeReason.PROBE_SUCCESS, ChangeReason.PROBE_FAILURE})

#: How often the drain checks whether the calls have ended.
DRAIN_POLL_S = 0.05
#: How often retiring listeners check whether their calls have ended.
RETIRE_POLL_S = 1.0
#: How often STATUS= is refreshed (and, at most, the watchdog pinged).
STATUS_INTERVAL_S = 5.0


async def serve(config: Config, stop: asyncio.Event, *,
                resolver: Rfc3263Resolver | None = None,
                notifier: Notifier | None = None) -> int:
    """Run sipedge until ``stop`` is set (then stop at once, no drain); the exit code.

    For tests and embedding; ``run`` is the process entry point with signals and drain.
    """
    daemon = Daemon(config, resolver=resolver, notifier=notifier)
    code = await daemon.start()
    if code is not None:
        return code
    waiter = asyncio.get_running_loop().create_task(stop.wait())
    stopped = asyncio.get_running_loop().create_task(daemon.wait_stopped())
    await asyncio.wait({waiter, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if not stopped.done():
        daemon.lifecycle.stopping = True
        daemon._hard_stop.set()
        daemon._stopped.set()
        await stopped
    waiter.cancel()
    return stopped.result()


#: Generation-0 threshold of the daemon's cyclic GC (CPython's default is 700).
GC_GEN0_THRESHOLD = 5000


def tune_gc() -> None:
    """Collect cyclic garbage less often, and never scan what start-up built.

    Each call allocates about a hundred GC-tracked objects (messages, transactions, the
    context <-> branch cycle), so the default threshold runs a generation-0 collection
    every seven calls or so, and full collections walk every live call: about 15 % of
    the core's time in bench/core.py. A 5000 threshold bounds uncollected garbage to a
    few hundred kilobytes; ``gc.freeze()`` moves the modules, config and pool into the
    permanent generation so full collections no longer walk them.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, 20, 20)


def run(config: Config, *, log_level: str | None = None,
        log_format: str | None = None) -> int:
    """Run the daemon in the foreground: SIGTERM/SIGINT drain then stop, SIGHUP reloads.

    One process, or, started by a supervisor (``SIPEDGE_WORKER``), one of its workers.
    With ``[process] workers`` > 1 the CLI runs the supervisor (``sipedge.workers``)
    instead, without importing this module.
    """
    from sipedge.transport import run as run_loop

    role = WorkerRole.from_env()
    if role is not None:
        die_with_parent(role.parent_pid)
    tune_gc()

    async def main() -> int:
        daemon = Daemon(config, log_level=log_level, log_format=log_format, role=role)
        loop = asyncio.get_running_loop()
        if role is None:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, daemon.request_stop)
        else:
            # A terminal's Ctrl-C reaches the whole process group: the supervisor turns
            # it into one SIGTERM per worker, so a worker's own SIGINT is ignored.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            loop.add_signal_handler(signal.SIGTERM, daemon.request_stop)
        loop.add_signal_handler(signal.SIGHUP, daemon.request_reload)
        code = await daemon.start()
        if code is not None:
            return code
        return await daemon.wait_stopped()

    return run_loop(main())
