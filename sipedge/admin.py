"""The admin HTTP API (aiohttp): health, readiness, gateways, drain/enable, metrics hook.

One listener at ``[admin] listen`` (off when unset). Routes:

``GET /healthz``
    200 ``ok`` while the process runs.
``GET /readyz``
    200 ``ready`` when at least one gateway is UP and sipedge is not draining, else 503
    ``not ready: …`` (a load balancer or keepalived check moves traffic away).
``POST /drain`` and ``POST /undrain``
    the daemon-wide drain without exiting (new calls answered 503 + Retry-After,
    in-dialog requests relayed) and its end; 200 with ``{"state": …, "calls": n}``, 409
    when the daemon is stopping or reloading.
``GET /gateways``
    JSON list, one object per gateway in priority then config order (see :func:`row`).
``POST /gateways/{id}/drain`` and ``POST /gateways/{id}/enable``
    200 with the gateway's new row; 404 for an unknown id; 409 for the placeholder of a
    gateway name that never resolved (it has no address to drain or probe). Ids contain
    ``/`` (``ashburn-ix/208.78.112.64:5060``), so the route matches ``{id:.+}``; clients
    may also percent-encode it.
``GET /metrics``
    the bytes of the ``metrics`` callable (Prometheus text exposition, ``sipedge.metrics``);
    501 when the app was built without one.

The API is a thin view: every request reads ``core.pool`` afresh (a DNS rebuild swaps the
pool), and after a drain/enable the driver is flushed so the state-change event is logged and
the probe timer re-armed at once. Requests are not logged (no access log); drains and enables
are, at WARNING, by the daemon's event logger.
"""

from __future__ import annotations

import logging
import socket
import time
import warnings
from collections.abc import Callable
from typing import Any, Protocol

from aiohttp import web

from sipedge.gateway.pool import GatewayStatus
from sipedge.sip.address import Endpoint
from sipedge.transport.dns import is_placeholder
from sipedge.transport.driver import CoreDriver

__all__ = [
    "AdminServer",
    "CoreDrainControl",
    "DrainControl",
    "gateway_table",
    "make_app",
    "row",
    "serve_tcp",
]

log = logging.getLogger(__name__)

#: Prometheus text exposition format content type.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

class DrainControl(Protocol):
    """What ``POST /drain`` and ``/undrain`` drive: the daemon (``sipedge.daemon.Daemon``)."""

    def drain(self) -> bool:
        """Refuse new calls; False when not possible now (stopping, reloading)."""
        ...

    def undrain(self) -> bool:
        """Take new calls again; False when not possible now."""
        ...


class CoreDrainControl:
    """A ``DrainControl`` acting on the core alone (an app without a daemon: tests)."""

    def __init__(self, driver: CoreDriver) -> None:
        self._driver = driver

    def drain(self) -> bool:
        self._driver.core.set_draining(True)
        return True

    def undrain(self) -> bool:
        self._driver.core.set_draining(False)
        return True


_DRIVER = web.AppKey("driver", CoreDriver)
_METRICS: web.AppKey[Callable[[], bytes] | None] = web.AppKey("metrics")
_CONTROL: web.AppKey[DrainControl] = web.AppKey("control")


def row(status: GatewayStatus, now: float, wall: float) -> dict[str, Any]:
    """One ``GET /gateways`` object.

    Times: ``since_s`` is how long the gateway has been in its state (seconds, from the
    monotonic clock); ``since_unix`` is the same instant as Unix time (wall clock, for
    humans and dashboards); ``held_for_s`` is what is left of a Retry-After hold-down.

    Args:
        status: the pool's row.
        now: ``loop.time()``, the clock ``status`` is on.
        wall: ``time.time()`` taken together with ``now``.

    Returns:
        JSON-ready dict: id, edge, region, address, priority, state (``up``, ``down``,
        ``probing``, ``admin_down``), reason, last_code, last_rtt_ms, since_s, since_unix,
        held_for_s, probes, probe_failures, call_failures, state_changes.
    """
    ago = max(0.0, now - status.since)
    held = None if status.held_until is None else max(0.0, status.held_until - now)
    return {
        "id": status.id,
        "edge": status.edge,
        "region": status.region,
        "address": status.address,
        "priority": status.priority,
        "state": status.state.value,
        "reason": status.reason,
        "last_code": status.last_code,
        "last_rtt_ms": None if status.last_rtt_s is None else round(status.last_rtt_s * 1e3, 1),
        "since_s": round(ago, 3),
        "since_unix": round(wall - ago, 3),
        "held_for_s": None if held is None or held == 0 else round(held, 3),
        "probes": status.probes,
        "probe_failures": status.probe_failures,
        "call_failures": status.call_failures,
        "state_changes": status.state_changes,
    }


def _row_of(driver: CoreDriver, gateway_id: str) -> dict[str, Any]:
    now = driver.loop.time()
    for status in driver.core.pool.snapshot():
        if status.id == gateway_id:
            return row(status, now, time.time())
    raise KeyError(gateway_id)


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def _readyz(request: web.Request) -> web.Response:
    core = request.app[_DRIVER].core
    if core.draining:
        return web.Response(status=503, text="not ready: draining\n")
    if core.is_ready():
        return web.Response(text="ready\n")
    return web.Response(status=503, text="not ready: no gateway is up\n")


async def _drain_all(request: web.Request) -> web.Response:
    return _drain_answer(request, request.app[_CONTROL].drain())


async def _undrain_all(request: web.Request) -> web.Response:
    return _drain_answer(request, request.app[_CONTROL].undrain())


def _drain_answer(request: web.Request, done: bool) -> web.Response:
    driver = request.app[_DRIVER]
    driver.flush()
    core = driver.core
    body = {"draining": core.draining, "calls": core.calls_in_progress,
            "pending": core.pending_requests()}
    return web.json_response(body, status=200 if done else 409)


async def _gateways(request: web.Request) -> web.Response:
    driver = request.app[_DRIVER]
    now, wall = driver.loop.time(), time.time()
    return web.json_response([row(s, now, wall) for s in driver.core.pool.snapshot()])


async def _admin_command(request: web.Request, enable: bool) -> web.Response:
    driver = request.app[_DRIVER]
    gateway_id = request.match_info["id"]
    core = driver.core
    if gateway_id not in core.pool:
        return web.json_response({"error": f"no gateway {gateway_id!r}"}, status=404)
    if is_placeholder(core.pool.gateway(gateway_id)):
        return web.json_response(
            {"error": f"{gateway_id}: the name does not resolve; nothing to drain or enable"},
            status=409)
    now = driver.loop.time()
    if enable:
        core.enable_gateway(gateway_id, now)
    else:
        core.drain_gateway(gateway_id, now)
    driver.flush()  # log the state change, re-arm the probe timer
    return web.json_response(_row_of(driver, gateway_id))


async def _drain(request: web.Request) -> web.Response:
    return await _admin_command(request, enable=False)


async def _enable(request: web.Request) -> web.Response:
    return await _admin_command(request, enable=True)


async def _metrics(request: web.Request) -> web.Response:
    # Hook for the metrics issue: ``make_app(driver, metrics=collector_exposition)``.
    metrics = request.app[_METRICS]
    if metrics is None:
        return web.Response(status=501, text="metrics not implemented yet\n")
    return web.Response(body=metrics(), headers={"Content-Type": METRICS_CONTENT_TYPE})


def make_app(driver: CoreDriver, *, metrics: Callable[[], bytes] | None = None,
             control: DrainControl | None = None) -> web.Application:
    """The admin application.

    Args:
        driver: runs the core (its ``core.pool`` is read per request; ``flush`` after
            commands).
        metrics: returns the Prometheus exposition bytes for ``GET /metrics``; None
            answers 501.
        control: what ``POST /drain``/``/undrain`` drive (default: the core's flag only).

    Returns:
        An aiohttp application (no access log is configured by it).
    """
    app = web.Application()
    app[_DRIVER] = driver
    app[_METRICS] = metrics
    app[_CONTROL] = control if control is not None else CoreDrainControl(driver)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/gateways", _gateways)
    # Gateway ids contain '/', so match greedily up to the final segment.
    app.router.add_post("/gateways/{id:.+}/drain", _drain)
    app.router.add_post("/gateways/{id:.+}/enable", _enable)
    app.router.add_get("/metrics", _metrics)
    app.router.add_post("/drain", _drain_all)
    app.router.add_post("/undrain", _undrain_all)
    return app


async def serve_tcp(app: web.Application, listen: Endpoint) -> tuple[web.AppRunner, Endpoint]:
    """Serve ``app`` on ``listen`` (tcp; port 0 picks one): its runner and bound endpoint.

    No access log, no signal handling (the daemon owns the signals), a 1 s shutdown.

    Raises:
        OSError: the address cannot be bound (nothing is left running).
    """
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, listen.host, listen.port)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    port = listen.port
    for addr in runner.addresses:
        port = int(addr[1])
        break
    return runner, Endpoint("tcp", listen.host, port)


class AdminServer:
    """The admin listener: ``await start(endpoint)`` … ``await aclose()``.

    Args:
        driver: see ``make_app``.
        metrics: see ``make_app``.
    """

    def __init__(self, driver: CoreDriver, *,
                 metrics: Callable[[], bytes] | None = None,
                 control: DrainControl | None = None) -> None:
        self._app = make_app(driver, metrics=metrics, control=control)
        self._runner: web.AppRunner | None = None
        self.bound: Endpoint | None = None

    async def start(self, listen: Endpoint) -> Endpoint:
        """Bind and serve.

        Args:
            listen: ``tcp`` endpoint; port 0 picks an ephemeral port.

        Returns:
            The bound endpoint (real port filled in).

        Raises:
            OSError: the address cannot be bound (the daemon exits 71).
        """
        self._runner, self.bound = await serve_tcp(self._app, listen)
        log.info("admin API on http://%s", self.bound.hostport)
        return self.bound

    async def start_unix(self, address: str) -> None:
        """Serve on the Unix socket ``address`` (a leading NUL: the abstract namespace).

        A worker's admin API, for its supervisor's fan-out (``sipedge.fanout``); the
        socket is bound here, so aiohttp never treats the abstract name as a file.

        Raises:
            OSError: the address cannot be bound.
        """
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.bind(address)
            sock.listen(64)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        runner = web.AppRunner(self._app, access_log=None, handle_signals=False,
                               shutdown_timeout=1.0)
        await runner.setup()
        try:
            with warnings.catch_warnings():
                # aiohttp names the site with str(getsockname()), which is bytes for an
                # abstract address (a BytesWarning under `python -bb`); the name is unused.
                warnings.simplefilter("ignore", BytesWarning)
                site = web.SockSite(runner, sock)
            await site.start()
        except OSError:
            sock.close()
            await runner.cleanup()
            raise
        self._runner = runner
        log.debug("admin API on unix:%s", address.lstrip("\0"))

    async def aclose(self) -> None:
        """Stop listening and close open connections (idempotent)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()


# -- `sipedge gateways` -------------------------------------------------------------------------

_COLUMNS = ("ID", "EDGE", "REGION", "STATE", "REASON", "LAST CODE", "RTT", "SINCE")


def _ago(seconds: float) -> str:
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def gateway_table(rows: list[dict[str, Any]]) -> str:
    """The ``sipedge gateways`` table from ``GET /gateways`` rows (no trailing newline)."""
    lines: list[tuple[str, ...]] = [_COLUMNS]
    for r in rows:
        rtt = r.get("last_rtt_ms")
        code = r.get("last_code")
        lines.append((
            str(r.get("id", "")),
            str(r.get("edge", "")),
            str(r.get("region", "")),
            str(r.get("state", "")).upper(),
            str(r.get("reason", "")),
            "-" if code is None else str(code),
            "-" if rtt is None else f"{rtt:g} ms",
            _ago(float(r.get("since_s") or 0.0)),
        ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(_COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )
