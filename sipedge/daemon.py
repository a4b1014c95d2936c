"""The composition root: config → core → transports → admin; signals; shutdown.

Everything here is wiring. Behaviour lives in the sans-I/O core (``sipedge.proxy``) and in
the transports; this module builds them from a validated ``Config`` and runs the loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import ipaddress
import logging
import os
import random
import signal
import socket
from collections.abc import Mapping

from sipedge.admin import AdminServer
from sipedge.config import Config, GatewayConfig, build_settings
from sipedge.eventlog import EventLogger
from sipedge.gateway.health import HealthPolicy, ReplyCodes
from sipedge.gateway.pool import Gateway, GatewayPool
from sipedge.gateway.probe import ProbeSchedule
from sipedge.proxy.core import ProxyCore
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

__all__ = ["build_core", "run"]

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
               answers: Mapping[Query, Answer] | None = None) -> ProxyCore:
    """A ready ``ProxyCore`` for ``config`` (no I/O); names resolved as in ``answers``."""
    schedule = ProbeSchedule(rng=random.Random(), interval_up_s=config.probe.interval_up_s,
                             interval_down_s=config.probe.interval_down_s,
                             jitter=config.probe.jitter_fraction)
    instance = os.urandom(4).hex().encode("ascii")
    pool = build_pool(config, now, answers)
    core = ProxyCore(build_settings(config), pool, schedule, instance=instance)
    core.start(now)
    core.schedule.sync(probed_ids(pool), now)
    return core


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


async def serve(config: Config, stop: asyncio.Event, *,
                resolver: Rfc3263Resolver | None = None) -> int:
    """Run sipedge until ``stop`` is set. Returns the process exit code.

    ``resolver`` overrides the system DNS configuration (tests point it at loopback).
    """
    loop = asyncio.get_running_loop()
    try:
        config = await resolve_pbx(config)
    except OSError as exc:
        log.error("%s: inside.pbx: cannot resolve %s: %s", config.path,
                  config.inside.pbx.host, exc)
        return 68  # EX_NOHOST
    core = build_core(config, loop.time())
    driver = CoreDriver(core, loop, EventLogger())
    tls = None
    if config.tls.cafile is not None:
        tls = TlsSettings(cafile=config.tls.cafile, certfile=config.tls.certfile,
                          keyfile=config.tls.keyfile)
    sni = _sni_map(core.pool)
    transports = Transports(driver, tls=tls, sni_for=sni.get)
    driver.attach(transports)
    try:
        await transports.start([*config.inside.listen, *config.outside.listen])
    except TransportError as exc:
        log.error("cannot listen: %s", exc)
        await transports.aclose()
        return 71  # EX_OSERR
    watch_gateways(transports, core)
    admin: AdminServer | None = None
    if config.admin.listen is not None:
        admin = AdminServer(driver)
        try:
            await admin.start(config.admin.listen)
        except OSError as exc:
            log.error("cannot listen on admin %s: %s", config.admin.listen.hostport, exc)
            await transports.aclose()
            return 71  # EX_OSERR
    watcher: NameWatcher | None = None
    queries = dns_queries(config)
    if queries:
        def rebuild() -> None:
            # A name's targets changed: new pool (health carried over), probes, SNI.
            assert watcher is not None
            now = loop.time()
            pool = build_pool(config, now, watcher.answers())
            core.reload_pool(pool, now, probed_ids(pool))
            watch_gateways(transports, core)
            sni.clear()
            sni.update(_sni_map(core.pool))
            driver.flush()

        watcher = NameWatcher(resolver or Rfc3263Resolver(), queries, rebuild,
                              min_ttl_s=DNS_MIN_TTL_S, max_ttl_s=DNS_MAX_TTL_S)
        await watcher.start(wait_s=DNS_START_WAIT_S)
    edges = ", ".join(f"{e.name} ({len(e.gateways)} gateways)" for e in config.edges)
    log.info("sipedge up: domain %s, edges %s", config.outside.domain, edges)
    driver.kick()
    try:
        await stop.wait()
    finally:
        log.info("sipedge stopping")
        if watcher is not None:
            await watcher.aclose()
        if admin is not None:
            await admin.aclose()
        driver.close()
        await transports.aclose()
    return 0


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


def run(config: Config) -> int:
    """Run the daemon in the foreground until SIGTERM/SIGINT."""
    from sipedge.transport import run as run_loop

    tune_gc()

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await serve(config, stop)

    return run_loop(main())
