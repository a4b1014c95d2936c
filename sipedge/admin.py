"""The admin HTTP API (``sipedge.httpd``): health, readiness, gateways, drain/enable, metrics hook.

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
    ``/`` (``ashburn-ix/208.78.112.64:5060``), so the id is everything between
    ``/gateways/`` and the final segment; clients may also percent-encode it.
``GET /metrics``
    the bytes of the ``metrics`` callable (Prometheus text exposition, ``sipedge.metrics``);
    501 when the app was built without one.

Another method on one of these paths is 405; any other path is 404. The HTTP side (limits,
deadlines, one request per connection) is ``sipedge.httpd``'s.

The API is a thin view: every request reads ``core.pool`` afresh (a DNS rebuild swaps the
pool), and after a drain/enable the driver is flushed so the state-change event is logged and
the probe timer re-armed at once. Requests are not logged (no access log); drains and enables
are, at WARNING, by the daemon's event logger.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Protocol

from sipedge.gateway.pool import GatewayStatus
from sipedge.httpd import HttpServer, Reply
from sipedge.sip.address import Endpoint
from sipedge.transport.dns import is_placeholder

if TYPE_CHECKING:
    # Annotations only: the supervisor imports this module for its routes, without the core.
    from sipedge.transport.driver import CoreDriver

__all__ = [
    "AdminApi",
    "AdminServer",
    "CoreDrainControl",
    "DrainControl",
    "gateway_table",
    "row",
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


class AdminApi:
    """The routes (see the module docstring) as an ``httpd.Handler``: method, path → reply.

    Args:
        driver: runs the core (its ``core.pool`` is read per request; ``flush`` after
            commands).
        metrics: returns the Prometheus exposition bytes for ``GET /metrics``; None
            answers 501.
        control: what ``POST /drain``/``/undrain`` drive (default: the core's flag only).
    """

    def __init__(self, driver: CoreDriver, *, metrics: Callable[[], bytes] | None = None,
                 control: DrainControl | None = None) -> None:
        self.driver = driver
        self.metrics = metrics
        self.control = control if control is not None else CoreDrainControl(driver)
        self._answers: dict[str, Callable[[], Reply]] = {
            "/healthz": self._healthz,
            "/readyz": self._readyz,
            "/gateways": self._gateways,
            "/metrics": self._metrics,
            "/drain": self._drain_all,
            "/undrain": self._undrain_all,
        }

    async def __call__(self, method: str, path: str) -> Reply:
        refused = refuse(method, path)
        if refused is not None:
            return refused
        command = gateway_command(path)
        if command is not None:
            gateway_id, enable = command
            return self._gateway_command(gateway_id, enable=enable)
        return self._answers[path]()

    def _healthz(self) -> Reply:
        return Reply.text("ok\n")

    def _readyz(self) -> Reply:
        core = self.driver.core
        if core.draining:
            return Reply.text("not ready: draining\n", 503)
        if core.is_ready():
            return Reply.text("ready\n")
        return Reply.text("not ready: no gateway is up\n", 503)

    def _drain_all(self) -> Reply:
        return self._drain_answer(self.control.drain())

    def _undrain_all(self) -> Reply:
        return self._drain_answer(self.control.undrain())

    def _drain_answer(self, done: bool) -> Reply:
        self.driver.flush()
        core = self.driver.core
        body = {"draining": core.draining, "calls": core.calls_in_progress,
                "pending": core.pending_requests()}
        return Reply.json(body, 200 if done else 409)

    def _gateways(self) -> Reply:
        driver = self.driver
        now, wall = driver.loop.time(), time.time()
        return Reply.json([row(s, now, wall) for s in driver.core.pool.snapshot()])

    def _gateway_command(self, gateway_id: str, *, enable: bool) -> Reply:
        driver = self.driver
        core = driver.core
        if gateway_id not in core.pool:
            return Reply.json({"error": f"no gateway {gateway_id!r}"}, 404)
        if is_placeholder(core.pool.gateway(gateway_id)):
            return Reply.json(
                {"error": f"{gateway_id}: the name does not resolve; nothing to drain or "
                          "enable"}, 409)
        now = driver.loop.time()
        if enable:
            core.enable_gateway(gateway_id, now)
        else:
            core.drain_gateway(gateway_id, now)
        driver.flush()  # log the state change, re-arm the probe timer
        return Reply.json(_row_of(driver, gateway_id))

    def _metrics(self) -> Reply:
        if self.metrics is None:
            return Reply.text("metrics not implemented yet\n", 501)
        return Reply(200, self.metrics(), METRICS_CONTENT_TYPE)


#: The method of each fixed route (the daemon's and the supervisor's fan-out alike);
#: besides these, ``POST /gateways/{id}/drain`` and ``/enable`` (:func:`gateway_command`).
ROUTES: Final[dict[str, str]] = {
    "/healthz": "GET", "/readyz": "GET", "/gateways": "GET", "/metrics": "GET",
    "/drain": "POST", "/undrain": "POST",
}


def gateway_command(path: str) -> tuple[str, bool] | None:
    """(gateway id, True for enable) of a ``/gateways/{id}/drain|enable`` path, else None.

    Gateway ids contain '/': the id is everything up to the final segment.
    """
    if not (path.startswith("/gateways/") and path.endswith(("/drain", "/enable"))):
        return None
    gateway_id, _, command = path[len("/gateways/"):].rpartition("/")
    return (gateway_id, command == "enable") if gateway_id else None


def refuse(method: str, path: str) -> Reply | None:
    """404 for a path no route has, 405 for another method on one; None: a route takes it."""
    wanted = "POST" if gateway_command(path) is not None else ROUTES.get(path)
    if wanted is None:
        return Reply.text("not found\n", 404)
    if method != wanted:
        return Reply.text(f"method {method} not allowed here\n", 405)
    return None


class AdminServer:
    """The admin listener: ``await start(endpoint)`` … ``await aclose()``.

    Args:
        driver: see ``AdminApi``.
        metrics: see ``AdminApi``.
        control: see ``AdminApi``.
    """

    def __init__(self, driver: CoreDriver, *,
                 metrics: Callable[[], bytes] | None = None,
                 control: DrainControl | None = None) -> None:
        self._http = HttpServer(AdminApi(driver, metrics=metrics, control=control))
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
        self.bound = await self._http.start_tcp(listen)
        log.info("admin API on http://%s", self.bound.hostport)
        return self.bound

    async def start_unix(self, address: str) -> None:
        """Serve on the Unix socket ``address`` (a leading NUL: the abstract namespace).

        A worker's admin API, for its supervisor's fan-out (``sipedge.fanout``).

        Raises:
            OSError: the address cannot be bound.
        """
        await self._http.start_unix(address)
        log.debug("admin API on unix:%s", address.lstrip("\0"))

    async def aclose(self) -> None:
        """Stop listening and close open connections (idempotent)."""
        await self._http.aclose()


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
