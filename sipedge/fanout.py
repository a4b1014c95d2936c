"""The supervisor's admin API: one ``[admin] listen`` for all workers (issue 14).

Each worker serves the ordinary admin API (``sipedge.admin``) on an abstract Unix socket
(``workers.admin_address``); this server, in the parent, answers on ``[admin] listen`` and
fans each request out:

``GET /metrics``
    every worker's exposition merged (:func:`merge_expositions`) plus the parent's own
    process figures and ``sipedge_workers``, ``sipedge_workers_ready``,
    ``sipedge_worker_restarts_total``. Counters, histograms and per-call gauges are summed;
    what every worker holds a copy of (gateway states and priorities, build info, the
    lifecycle state) comes once, from the lowest-numbered worker that has it; the worst
    loop lag and GC pause are the maximum over workers. So dashboards and alert rules
    written for one process read the same names with the same meaning.
``GET /healthz``
    200 while the parent runs and at least one worker is up.
``GET /readyz``
    200 when at least one worker answers ready (a restarting worker's share of the
    traffic is handled by the others, so one restart must not pull the VIP away); else
    503 with the first worker's reason.
``GET /gateways``
    worker 0's table: it is the one that probes.
``POST /drain``, ``/undrain``, ``/gateways/{id}/drain|enable``
    sent to every worker; the answer is the lowest-numbered worker's, with the highest
    status any worker gave (a 409 from one is a 409).

The parent talks to the workers with a few lines of HTTP/1.0 over the Unix socket
(``request``): no connection pool to manage, one connection per request, which is fine
at scrape and operator rates.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING
from urllib.parse import quote

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.process_collector import ProcessCollector

from sipedge.admin import METRICS_CONTENT_TYPE, refuse
from sipedge.httpd import HttpServer, Reply
from sipedge.sip.address import Endpoint

if TYPE_CHECKING:
    from sipedge.workers import Supervisor

__all__ = ["FanoutServer", "merge_expositions", "request"]

log = logging.getLogger(__name__)

#: How long the parent waits for one worker's answer.
WORKER_TIMEOUT_S = 3.0

#: Families every worker holds a copy of: taken once (lowest-numbered source that has it).
FIRST: frozenset[str] = frozenset({
    "sipedge_gateway_up", "sipedge_gateway_state", "sipedge_gateway_last_probe_code",
    "sipedge_gateway_priority", "sipedge_gateway_state_changes", "sipedge_edge_gateways_up",
    "sipedge_edge_gateways", "sipedge_build_info", "sipedge_state", "python_info",
    "process_start_time_seconds", "process_max_fds",
})
#: Families whose meaningful merge is the maximum (a worst case, or a flag).
MAXIMUM: frozenset[str] = frozenset({
    "sipedge_event_loop_last_lag_seconds", "sipedge_gc_longest_pause_seconds",
    "sipedge_draining",
})


def merge_expositions(texts: Sequence[str]) -> list[Metric]:
    """The families of several Prometheus text expositions merged into one set.

    Args:
        texts: expositions in source order (the first source wins for ``FIRST``).

    Returns:
        Metric families: samples with the same name and labels summed (or taken once,
        or maximised, by family; see the module docstring). ``_created`` samples are
        dropped: a sum of creation times means nothing.
    """
    merged: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    owner: dict[str, int] = {}
    for source, text in enumerate(texts):
        for family in text_string_to_metric_families(text):
            name = family.name
            if name not in merged:
                merged[name] = Metric(name, family.documentation, family.type)
                values[name] = {}
                owner[name] = source
            elif name in FIRST and owner[name] != source:
                continue
            table = values[name]
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                key = (sample.name, tuple(sorted(sample.labels.items())))
                old = table.get(key)
                if old is None:
                    table[key] = sample.value
                elif name in MAXIMUM:
                    table[key] = max(old, sample.value)
                else:
                    table[key] = old + sample.value
    for name, family in merged.items():
        for (sample_name, labels), value in values[name].items():
            family.add_sample(sample_name, dict(labels), value)
    return list(merged.values())


class _Merged:
    """A collector yielding fixed families (one scrape's merge)."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self._families


async def request(address: str, method: str, path: str,
                  timeout_s: float = WORKER_TIMEOUT_S) -> tuple[int, str, bytes]:
    """One HTTP/1.0 request to a worker's admin socket: (status, content type, body).

    Raises:
        OSError: the worker does not answer (not running, timed out, bad answer).
    """
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(loop.sock_connect(sock, address), timeout_s)
        reader, writer = await asyncio.open_unix_connection(sock=sock)
    except (OSError, TimeoutError) as exc:
        sock.close()
        raise OSError(f"worker admin {address[1:]!r}: {exc}") from exc
    try:
        writer.write(f"{method} {path} HTTP/1.0\r\nHost: worker\r\nContent-Length: 0\r\n"
                     "\r\n".encode("ascii"))
        raw = await asyncio.wait_for(reader.read(), timeout_s)
    except (OSError, TimeoutError) as exc:
        raise OSError(f"worker admin {address[1:]!r}: {exc}") from exc
    finally:
        writer.close()
    head, sep, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError) as exc:
        raise OSError(f"worker admin {address[1:]!r}: bad answer {raw[:40]!r}") from exc
    if not sep:
        raise OSError(f"worker admin {address[1:]!r}: truncated answer")
    content_type = "text/plain"
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-type":
            content_type = value.strip().decode("latin-1")
    return status, content_type, body


class FanoutServer:
    """The parent's admin listener (see the module docstring)."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self._process = CollectorRegistry()
        ProcessCollector(registry=self._process)
        self.bound: Endpoint | None = None
        self._http = HttpServer(self._route)

    async def start(self, listen: Endpoint) -> Endpoint:
        """Bind and serve ``listen`` (tcp); the bound endpoint.

        Raises:
            OSError: the address cannot be bound.
        """
        self.bound = await self._http.start_tcp(listen)
        log.info("admin API on http://%s (%d workers)", self.bound.hostport,
                 self.supervisor.count)
        return self.bound

    async def aclose(self) -> None:
        """Stop listening (idempotent)."""
        await self._http.aclose()

    async def _route(self, method: str, path: str) -> Reply:
        refused = refuse(method, path)
        if refused is not None:
            return refused
        if path == "/metrics":
            return await self._metrics()
        if path == "/healthz":
            return self._healthz()
        if path == "/readyz":
            return await self._readyz()
        if path == "/gateways":
            return await self._first(path)
        return await self._every(quote(path, safe="/:@[]"))

    # -- fan-out -----------------------------------------------------------------------------

    async def _ask(self, method: str, path: str,
                   indexes: Sequence[int]) -> list[tuple[int, str, bytes] | None]:
        from sipedge.workers import admin_address

        group = self.supervisor.group

        async def one(index: int) -> tuple[int, str, bytes] | None:
            try:
                return await request(admin_address(group, index), method, path)
            except OSError as exc:
                log.warning("%s %s: worker %d: %s", method, path, index, exc)
                return None

        return list(await asyncio.gather(*(one(i) for i in indexes)))

    async def _metrics(self) -> Reply:
        answers = await self._ask("GET", "/metrics", self.supervisor.live_workers())
        texts = [generate_latest(self._process).decode("utf-8")]
        texts += [body.decode("utf-8") for a in answers if a is not None and a[0] == 200
                  for body in (a[2],)]
        registry = CollectorRegistry()
        registry.register(_Merged(merge_expositions(texts) + self._own_families()))
        return Reply(200, generate_latest(registry), METRICS_CONTENT_TYPE)

    def _own_families(self) -> list[Metric]:
        sup = self.supervisor
        workers = Metric("sipedge_workers", "Worker processes configured ([process] workers).",
                         "gauge")
        workers.add_sample("sipedge_workers", {}, float(sup.count))
        ready = Metric("sipedge_workers_ready", "Worker processes running and ready.", "gauge")
        ready.add_sample("sipedge_workers_ready", {}, float(len(sup.live_workers())))
        restarts = Metric("sipedge_worker_restarts",
                          "Workers the supervisor restarted after they exited or hung.",
                          "counter")
        restarts.add_sample("sipedge_worker_restarts_total", {}, float(sup.restarts()))
        return [workers, ready, restarts]

    def _healthz(self) -> Reply:
        live = self.supervisor.live_workers()
        if not live:
            return Reply.text("no worker is running\n", 503)
        return Reply.text(f"ok ({len(live)}/{self.supervisor.count} workers)\n")

    async def _readyz(self) -> Reply:
        answers = await self._ask("GET", "/readyz", self.supervisor.live_workers())
        ready = [a for a in answers if a is not None and a[0] == 200]
        if ready:
            return Reply.text(f"ready ({len(ready)}/{self.supervisor.count} workers)\n")
        first = next((a for a in answers if a is not None), None)
        text = first[2].decode("utf-8", "replace") if first else "not ready: no worker\n"
        return Reply.text(text, 503)

    async def _first(self, path: str) -> Reply:
        live = self.supervisor.live_workers()
        return _answer(await self._ask("GET", path, live[:1]))

    async def _every(self, path: str) -> Reply:
        return _answer(await self._ask("POST", path, self.supervisor.live_workers()))


def _answer(answers: Sequence[tuple[int, str, bytes] | None]) -> Reply:
    """The first worker's answer with the worst status of all (502 when none answered)."""
    got = [a for a in answers if a is not None]
    if not got:
        return Reply.json({"error": "no worker answered"}, 502)
    status = max(a[0] for a in got)
    if len(got) < len(answers):
        status = max(status, 502)
    _, content_type, body = got[0]
    return Reply(status, body, content_type)
