"""The composition root: config → core → transports → admin; signals; shutdown.

Everything here is wiring. Behaviour lives in the sans-I/O core (``sipedge.proxy``) and in
the transports; this module builds them from a validated ``Config`` and runs the loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal

from sipedge.config import Config
from sipedge.gateway.health import GatewayStateChanged, HealthPolicy, ReplyCodes
from sipedge.gateway.pool import Gateway, GatewayPool
from sipedge.gateway.probe import ProbeSchedule
from sipedge.logs import RateLimitedLogger
from sipedge.proxy.core import ProxyCore
from sipedge.proxy.events import (
    CallFailedOver,
    DeprecatedParameterSeen,
    Event,
    MessageDropped,
    RequestRejected,
)
from sipedge.proxy.settings import ProxySettings, RejectUnknown
from sipedge.sip.address import Endpoint, default_port
from sipedge.transport import TlsSettings, Transports
from sipedge.transport.base import TransportError
from sipedge.transport.driver import CoreDriver

__all__ = ["build_core", "run"]

log = logging.getLogger("sipedge")


def build_pool(config: Config, now: float) -> GatewayPool:
    """Gateways from config, grouped by edge in priority order."""
    groups: list[list[Gateway]] = []
    for edge in config.edges:
        group = []
        for gw in edge.gateways:
            port = gw.port if gw.port is not None else default_port(gw.transport)
            endpoint = Endpoint(gw.transport, gw.host, port)
            group.append(Gateway.make(edge.name, edge.region, endpoint,
                                      edge.localized_domain.encode("ascii"), gw.weight))
        groups.append(group)
    probe = config.probe
    policy = HealthPolicy(
        down_after=probe.down_after,
        up_after=probe.up_after,
        healthy_codes=ReplyCodes(codes=probe.healthy_codes),
        retry_after_cap_s=probe.retry_after_max_s,
    )
    return GatewayPool(groups, policy, now=now)


def build_settings(config: Config) -> ProxySettings:
    """The core's typed settings from a validated config."""
    return ProxySettings(
        inside=config.inside.listen,
        outside=config.outside.listen,
        inside_allow=tuple(config.inside.allow),
        pbx=config.inside.pbx,
        domain=config.outside.domain,
        strip_edge_params=config.inbound.strip_edge_params,
        reject_unknown=RejectUnknown(config.inbound.reject_unknown),
        timers=config.timers,
        failover_codes=config.failover.codes,
        no_provisional_timeout_s=config.failover.no_provisional_timeout_s,
        probe_timeout_s=config.probe.timeout_s,
        # About twice the down-probe interval: by then a recovered gateway is seen UP.
        retry_after_s=max(1, round(2 * config.probe.interval_down_s)),
    )


def build_core(config: Config, now: float) -> ProxyCore:
    """A ready ``ProxyCore`` for ``config`` (no I/O)."""
    schedule = ProbeSchedule(rng=random.Random(), interval_up_s=config.probe.interval_up_s,
                             interval_down_s=config.probe.interval_down_s,
                             jitter=config.probe.jitter_fraction)
    instance = os.urandom(4).hex().encode("ascii")
    core = ProxyCore(build_settings(config), build_pool(config, now), schedule,
                     instance=instance)
    core.start(now)
    return core


class EventLogger:
    """Turns core events into log lines (edge-triggered, rate-limited for floods)."""

    def __init__(self) -> None:
        self.limited = RateLimitedLogger(logging.getLogger("sipedge.events"))

    def __call__(self, event: Event) -> None:
        if isinstance(event, GatewayStateChanged):
            log.warning("gateway %s %s -> %s: %s", event.gateway_id, event.old.name,
                        event.new.name, event.reason)
        elif isinstance(event, CallFailedOver):
            self.limited.log(logging.WARNING, f"failover:{event.gateway_id}",
                             "call %s failed on %s (%s); next: %s", event.call_id,
                             event.gateway_id, event.reason, event.next_gateway_id or "none")
        elif isinstance(event, RequestRejected):
            self.limited.log(logging.INFO, f"rejected:{event.status}",
                             "answered %d to %s: %s", event.status, event.peer, event.reason)
        elif isinstance(event, MessageDropped):
            self.limited.log(logging.INFO, f"dropped:{event.reason[:24]}",
                             "dropped message from %s: %s", event.peer, event.reason)
        elif isinstance(event, DeprecatedParameterSeen):
            self.limited.log(logging.WARNING, "tnx",
                             "request from %s uses the deprecated tnx=%s URI parameter; "
                             "use edge= instead", event.peer, event.value)


def _sni_map(config: Config) -> dict[Endpoint, str]:
    sni: dict[Endpoint, str] = {}
    for edge in config.edges:
        for gw in edge.gateways:
            port = gw.port if gw.port is not None else default_port(gw.transport)
            sni[Endpoint(gw.transport, gw.host, port)] = edge.localized_domain
    return sni


async def serve(config: Config, stop: asyncio.Event) -> int:
    """Run sipedge until ``stop`` is set. Returns the process exit code."""
    loop = asyncio.get_running_loop()
    core = build_core(config, loop.time())
    driver = CoreDriver(core, loop, EventLogger())
    tls = None
    if config.tls.cafile is not None:
        tls = TlsSettings(cafile=config.tls.cafile, certfile=config.tls.certfile,
                          keyfile=config.tls.keyfile)
    sni = _sni_map(config)
    transports = Transports(driver, tls=tls, sni_for=sni.get)
    driver.attach(transports)
    try:
        await transports.start([*config.inside.listen, *config.outside.listen])
    except TransportError as exc:
        log.error("cannot listen: %s", exc)
        await transports.aclose()
        return 71  # EX_OSERR
    edges = ", ".join(f"{e.name} ({len(e.gateways)} gateways)" for e in config.edges)
    log.info("sipedge up: domain %s, edges %s", config.outside.domain, edges)
    driver.kick()
    try:
        await stop.wait()
    finally:
        log.info("sipedge stopping")
        driver.close()
        await transports.aclose()
    return 0


def run(config: Config) -> int:
    """Run the daemon in the foreground until SIGTERM/SIGINT."""
    from sipedge.transport import run as run_loop

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await serve(config, stop)

    return run_loop(main())
