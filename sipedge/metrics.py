"""Prometheus metrics: a custom collector that reads the core's plain counters at scrape time.

Theory of operation
-------------------
The hot path never touches a prometheus_client object (house rule 11). The core bumps slotted
ints and small dicts in ``proxy.stats.ProxyStats``, its gateway monitor in
``gateway.stats.ProbeStats`` (probes sent, RTTs); the gateway pool keeps per-gateway ints
(``GatewayPool.snapshot()``). When Prometheus scrapes ``GET /metrics`` on the admin listener,
``SipedgeCollector.collect()`` asks for the current driver (the daemon may swap the core or
its pool on reload, so nothing is cached between scrapes), reads ``core.refresh_gauges()``,
``core.probe_stats`` and ``core.pool.snapshot()`` once, and turns them into metric families.
A scrape therefore costs the collector's loop over ~30 samples per gateway plus the text
formatting; ``bench/scrape.py`` measures it for 200 gateways.

Label sets the config already names (edges, gateways, health states, change reasons, drop
reasons) are exposed at zero before their first event, so ``rate()`` and alerts work from the
first scrape instead of missing the first increment.

``LoopLagMonitor`` lives here too: a self-rescheduling ``loop.call_at`` that records how late
it ran, the plainest measure of how long the event loop was blocked. ``GcPauseMonitor`` times
each cyclic-GC collection (``gc.callbacks``), the commonest cause of such a block in a Python
process that holds many live objects (issue 14's stall timeline reads both).

Wiring (daemon)::

    monitor = LoopLagMonitor()
    monitor.start(loop)
    registry = make_registry(lambda: driver, loop_lag=monitor, state=lambda: lifecycle_name)
    AdminServer(driver, metrics=metrics_endpoint(registry))
"""

from __future__ import annotations

import asyncio
import gc
import platform
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Final, Protocol

from prometheus_client import (
    CollectorRegistry,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from sipedge import __version__, core_build
from sipedge.gateway.health import ChangeReason, Health
from sipedge.gateway.pool import GatewayStatus
from sipedge.gateway.stats import ProbeStats
from sipedge.proxy.events import DropReason
from sipedge.proxy.media import MediaIssue
from sipedge.proxy.routing import Direction
from sipedge.proxy.stats import (
    ANSWER_BUCKETS_S,
    PDD_BUCKETS_S,
    RTT_BUCKETS_S,
    Histogram,
    ProxyStats,
)
from sipedge.transport.base import StreamCloseReason
from sipedge.transport.tls import TLS_FAILURE_REASONS, TLS_INBOUND_FAILURE_REASONS

if TYPE_CHECKING:
    from sipedge.proxy.core import ProxyCore

__all__ = [
    "CONTENT_TYPE",
    "LIFECYCLE_STATES",
    "LOOP_LAG_BUCKETS_S",
    "DriverView",
    "GcPauseMonitor",
    "LoopLagMonitor",
    "SipedgeCollector",
    "exposition",
    "make_registry",
    "metrics_endpoint",
]

#: Prometheus text exposition format 0.0.4 (what ``sipedge.admin`` serves ``/metrics`` as).
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

#: The daemon's lifecycle table, in order (``sipedge_state`` is one-hot over these).
LIFECYCLE_STATES: Final = ("starting", "ready", "reloading", "draining", "stopped")

#: How late the loop-lag timer ran, seconds: 1 ms is noise, 2.5 s is a stalled worker.
LOOP_LAG_BUCKETS_S: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
#: One cyclic-GC collection, seconds (the event loop is blocked for all of it).
GC_PAUSE_BUCKETS_S: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                             1.0, 2.5)

#: Label value for an empty edge (a call refused before any gateway was chosen, a failover
#: with no gateway left): Prometheus drops a label whose value is "", which would merge
#: those series with the unlabelled ones.
NO_EDGE: Final = "none"

# Where a request came from / a response was sent to: the listener side, not the call direction.
_SIDE: Final = {Direction.OUTBOUND: "inside", Direction.INBOUND: "outside",
                Direction.UNKNOWN: "unknown"}
# Which way a call goes (PBX → Twilio is outbound).
_CALL_DIRECTION: Final = {Direction.OUTBOUND: "outbound", Direction.INBOUND: "inbound",
                          Direction.UNKNOWN: "unknown"}
_CALL_CLASSES: Final = (3, 4, 5, 6)  # final non-2xx classes pre-initialised per edge


class TransportView(Protocol):
    """What the collector reads from the transports (``sipedge.transport.Transports``)."""

    @property
    def stream_closes(self) -> Mapping[StreamCloseReason, int]: ...

    @property
    def tls_failures(self) -> dict[str, int]: ...

    @property
    def tls_inbound_failures(self) -> Mapping[str, int]: ...

    @property
    def connection_count(self) -> int: ...


class DriverView(Protocol):
    """What the collector reads from the driver (``transport.driver.CoreDriver`` fits)."""

    @property
    def core(self) -> ProxyCore: ...

    @property
    def internal_errors(self) -> int: ...


def _edge(name: str) -> str:
    return name or NO_EDGE


# ``le`` strings per bound tuple, formatted once; repr() writes them the way client_python
# does (1.0 → "1.0", 0.0025 → "0.0025").
_LES: dict[tuple[float, ...], tuple[str, ...]] = {}


def _les(bounds: tuple[float, ...]) -> tuple[str, ...]:
    les = _LES.get(bounds)
    if les is None:
        les = _LES[bounds] = (*(repr(float(b)) for b in bounds), "+Inf")
    return les


class _Family(Metric):
    """A metric family that keeps its samples as rows of label values.

    A 200-gateway scrape has ~6,600 samples. Building a ``Sample`` and a label dict for each
    (what ``CounterMetricFamily.add_metric`` does), then sorting, validating and escaping
    every label of every sample again in ``generate_latest``, costs more than the 50 ms a
    scrape may block the event loop. Rows are ``(sample name, label values, value)``;
    ``exposition`` renders each series' ``name{labels}`` head once and reuses it on later
    scrapes. ``samples`` builds ordinary ``Sample``s on demand, so the family is still a
    normal ``Metric`` for any other consumer (``generate_latest``, restricted registries).
    """

    def __init__(self, name: str, documentation: str, typ: str,
                 labels: tuple[str, ...] = ()) -> None:
        self.rows: list[tuple[str, tuple[str, ...], float]] = []
        Metric.__init__(self, name, documentation, typ)
        self.sample_name = name + "_total" if typ == "counter" else name
        #: label names by sample name (``_bucket`` has ``le`` too).
        self.names_of = {self.sample_name: labels}
        if typ == "histogram":
            self.names_of = {name + "_bucket": (*labels, "le"), name + "_count": labels,
                             name + "_sum": labels}

    @classmethod
    def single(cls, name: str, documentation: str, typ: str, value: float) -> _Family:
        """A family of one unlabelled sample."""
        family = cls(name, documentation, typ)
        family.add_metric((), value)
        return family

    @classmethod
    def counter(cls, name: str, documentation: str, *, labels: tuple[str, ...] = (),
                value: float | None = None) -> _Family:
        """A counter family (``name`` without ``_total``; samples get it)."""
        if value is not None:
            return cls.single(name, documentation, "counter", value)
        return cls(name, documentation, "counter", labels)

    @classmethod
    def gauge(cls, name: str, documentation: str, *, labels: tuple[str, ...] = (),
              value: float | None = None) -> _Family:
        """A gauge family."""
        if value is not None:
            return cls.single(name, documentation, "gauge", value)
        return cls(name, documentation, "gauge", labels)

    @classmethod
    def histogram(cls, name: str, documentation: str, *,
                  labels: tuple[str, ...] = ()) -> _Family:
        """A histogram family (fill it with ``add_histogram``)."""
        return cls(name, documentation, "histogram", labels)

    @property  # a view over rows, not a list attribute
    def samples(self) -> list[Sample]:
        names = self.names_of
        return [Sample(sname, dict(zip(names[sname], values, strict=True)), value)
                for sname, values, value in self.rows]

    @samples.setter
    def samples(self, value: list[Sample]) -> None:
        # Metric.__init__ assigns []; samples are only ever added as rows.
        if value:
            raise AttributeError("add rows with add_metric/add_histogram")

    def add_metric(self, values: tuple[str, ...], value: float) -> None:
        """One counter/gauge sample with these label values (in ``labels`` order)."""
        self.rows.append((self.sample_name, values, value))

    def add_histogram(self, values: tuple[str, ...], hist: Histogram | None,
                      bounds: tuple[float, ...]) -> None:
        """One histogram from a ``proxy.stats.Histogram`` (None: all zero).

        ``proxy.stats.Histogram`` stores non-cumulative counts with ``counts[-1]`` the +Inf
        overflow; Prometheus ``le`` buckets are cumulative, so they are summed here.
        """
        name = self.name
        bucket = name + "_bucket"
        append = self.rows.append
        acc = 0
        if hist is None:
            for le in _les(bounds):
                append((bucket, (*values, le), 0))
            total = 0.0
        else:
            for le, count in zip(_les(hist.bounds), hist.counts, strict=True):
                acc += count
                append((bucket, (*values, le), acc))
            total = hist.sum
        append((name + "_count", values, acc))
        append((name + "_sum", values, total))


class LoopLagMonitor:
    """Measures event-loop lag: how late a timer due every ``interval_s`` actually ran.

    A blocked loop (a slow scrape, a GC pause, a CPU-bound bug) delays every datagram by the
    same amount; this shows it without instrumenting the hot path. Each tick is scheduled with
    ``loop.call_at`` for an exact due time, so the lag is ``loop.time() - due`` (clamped at
    zero: asyncio may run a handle up to its clock resolution early).
    """

    def __init__(self, interval_s: float = 0.5,
                 buckets: tuple[float, ...] = LOOP_LAG_BUCKETS_S) -> None:
        """Build a stopped monitor.

        Args:
            interval_s: seconds between ticks.
            buckets: histogram bounds, seconds.

        Raises:
            ValueError: ``interval_s`` is not positive.
        """
        if not interval_s > 0:
            raise ValueError("interval_s must be > 0")
        self.interval_s = interval_s
        self.histogram = Histogram(buckets)
        #: Lag of the latest tick, seconds.
        self.last_lag_s = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0

    @property
    def running(self) -> bool:
        """True between ``start`` and ``stop``."""
        return self._handle is not None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start ticking on ``loop`` (a second call while running is a no-op)."""
        if self._handle is not None:
            return
        self._loop = loop
        self._schedule(loop)

    def stop(self) -> None:
        """Stop ticking (idempotent); the figures so far stay readable."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        self._due = loop.time() + self.interval_s
        self._handle = loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        loop = self._loop
        assert loop is not None
        lag = max(0.0, loop.time() - self._due)
        self.last_lag_s = lag
        self.histogram.observe(lag)
        self._schedule(loop)


class GcPauseMonitor:
    """Times every collection of CPython's cyclic GC, by generation.

    ``gc.callbacks`` runs a callback at the start and the end of each collection; the
    difference is the time the interpreter (and so the event loop) was stopped for it.
    prometheus_client's ``python_gc_*`` families count collections and objects but not
    their duration, which is what a latency stall is made of.
    """

    def __init__(self, buckets: tuple[float, ...] = GC_PAUSE_BUCKETS_S) -> None:
        """Build a stopped monitor with one histogram per generation (0, 1, 2)."""
        self.histograms = (Histogram(buckets), Histogram(buckets), Histogram(buckets))
        #: The longest collection so far, seconds.
        self.longest_s = 0.0
        self._started = 0.0

    @property
    def running(self) -> bool:
        """True between ``start`` and ``stop``."""
        return self._callback in gc.callbacks

    def start(self) -> None:
        """Install the callback (idempotent)."""
        if not self.running:
            gc.callbacks.append(self._callback)

    def stop(self) -> None:
        """Remove the callback (idempotent); the figures so far stay readable."""
        if self.running:
            gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        pause = time.perf_counter() - self._started
        generation = info.get("generation", 2)
        self.histograms[min(max(generation, 0), 2)].observe(pause)
        if pause > self.longest_s:
            self.longest_s = pause


def _by_reason(name: str, documentation: str, reasons: Iterable[str],
               counts: Mapping[str, int]) -> _Family:
    """A counter labelled ``reason`` with every known reason present from zero."""
    family = _Family.counter(name, documentation, labels=("reason",))
    for why in reasons:
        family.add_metric((why,), counts.get(why, 0))
    return family


class SipedgeCollector(Collector):
    """Turns the core's stats and the pool's snapshot into metric families at scrape time.

    Args:
        driver: returns the current driver (called once per scrape; ``.core`` is read afresh).
        loop_lag: the loop-lag monitor, or None (then its families are absent).
        gc_pauses: the GC pause monitor, or None (then its families are absent).
        build_info: labels of ``sipedge_build_info``; default version, python and core
            (``mypyc`` when the sans-I/O core runs compiled, else ``python``).
        state: returns the daemon's lifecycle state name (``LIFECYCLE_STATES``), or None
            (then ``sipedge_state`` is absent).
        transports: returns the transports (stream closes by reason, TLS failures), or
            None (then those families are absent).
    """

    def __init__(self, driver: Callable[[], DriverView], *,
                 loop_lag: LoopLagMonitor | None = None,
                 gc_pauses: GcPauseMonitor | None = None,
                 build_info: Mapping[str, str] | None = None,
                 state: Callable[[], str] | None = None,
                 transports: Callable[[], TransportView | None] | None = None) -> None:
        self._driver = driver
        self._gc_pauses = gc_pauses
        self._transports = transports
        self._loop_lag = loop_lag
        info = build_info if build_info is not None else {
            "version": __version__, "python": platform.python_version(),
            "core": core_build().kind}
        self._build_info = dict(info)
        self._state = state

    def collect(self) -> Iterator[Metric]:
        """One scrape's families (prometheus_client calls this per ``generate_latest``)."""
        driver = self._driver()
        core = driver.core
        stats = core.refresh_gauges()
        probes = core.probe_stats
        snapshot = core.pool.snapshot()
        edges = list(dict.fromkeys(s.edge for s in snapshot))  # config order
        yield from self._traffic(stats, probes, driver.internal_errors)
        yield from self._calls(stats, edges)
        yield from self._latency(stats, probes, snapshot, edges)
        yield from self._gateways(snapshot, edges)
        yield from self._gauges(stats, core.draining)
        transports = self._transports() if self._transports is not None else None
        if transports is not None:
            yield from self._streams(transports)

    @staticmethod
    def _streams(transports: TransportView) -> Iterator[Metric]:
        closes = _Family.counter(
            "sipedge_stream_closes",
            "TCP/TLS connections refused or closed by sipedge, by reason (total_limit, "
            "per_ip_limit, first_byte_timeout and message_timeout: slowloris, too_large: "
            "answered 513, too_large_dropped: the same from a stranger, closed unanswered, "
            "headers_too_large, framing_error, idle_timeout, write_stalled).",
            labels=("reason",))
        for reason, count in transports.stream_closes.items():
            closes.add_metric((reason.value,), count)
        yield closes
        yield _by_reason(
            "sipedge_tls_failures",
            "Outbound TLS handshakes to gateways that failed, by reason (untrusted, expired, "
            "hostname_mismatch, protocol_version...): the call failed over.",
            TLS_FAILURE_REASONS, transports.tls_failures)
        yield _by_reason(
            "sipedge_tls_inbound_failures",
            "TLS handshakes of peers connecting to sipedge's TLS listeners that failed, by "
            "reason (protocol_version: TLS 1.0/1.1 only, not_tls: plain text such as SIP "
            "over TCP to the TLS port, certificate: the client refused ours, timeout, "
            "closed: gone mid-handshake, handshake_failed: other).",
            TLS_INBOUND_FAILURE_REASONS, transports.tls_inbound_failures)
        yield _Family.gauge("sipedge_stream_connections",
                            "Open TCP/TLS connections (inbound and outbound).",
                            value=transports.connection_count)

    # -- families ---------------------------------------------------------------------------

    @staticmethod
    def _traffic(stats: ProxyStats, probes: ProbeStats,
                 internal_errors: int) -> Iterator[Metric]:
        requests = _Family.counter(
            "sipedge_requests_received",
            "SIP requests received, by method (unlisted methods count as OTHER) and by the "
            "side they came from: direction=inside (the PBX), outside (Twilio), unknown "
            "(a source in neither allow list).",
            labels=("method", "direction"))
        for direction, table in stats.requests_by_method.items():
            side = _SIDE[direction]
            for method, count in table.items():
                requests.add_metric((method.decode("ascii"), side), count)
        yield requests

        relayed = _Family.counter(
            "sipedge_responses_relayed",
            "SIP responses relayed by sipedge, by status class and by the side they were sent "
            "to: direction=inside (toward the PBX) or outside (toward Twilio).",
            labels=("class", "direction"))
        for (klass, toward), count in stats.responses_by_class.items():
            relayed.add_metric((f"{klass}xx", _SIDE[toward]), count)
        yield relayed

        local = _Family.counter(
            "sipedge_local_replies",
            "SIP responses sipedge built itself (100 Trying, 503 no gateway, 483, parse-error "
            "answers...), by status code.",
            labels=("code",))
        for code, count in sorted(stats.local_replies.items()):
            local.add_metric((str(code),), count)
        yield local

        dropped = _Family.counter(
            "sipedge_messages_dropped",
            "SIP messages dropped without an answer, by reason.", labels=("reason",))
        for reason in DropReason:
            dropped.add_metric((reason.value,), stats.drops.get(reason, 0))
        yield dropped

        media = _Family.counter(
            "sipedge_sdp_media_outside_range",
            "SDP from Twilio whose media is outside Twilio's Interconnect media range "
            "(issue=address: a c= address outside 168.86.128.0/18 or not IPv4; issue=port: "
            "an m= port outside UDP 10000-60000): public-path media or a stale range.",
            labels=("issue",))
        for issue in MediaIssue:
            media.add_metric((issue.value,), stats.media_outside_range.get(issue, 0))
        yield media

        parse = _Family.counter(
            "sipedge_parse_errors",
            "Messages that failed to parse, by the status sipedge answered (status=drop: "
            "not answerable, dropped).", labels=("status",))
        for status, count in sorted(stats.parse_errors_by_status.items()):
            parse.add_metric((str(status) if status else "drop",), count)
        yield parse

        for name, doc, value in (
            ("sipedge_retransmissions_absorbed",
             "Request retransmissions absorbed by a server transaction (not forwarded again).",
             stats.retransmissions_absorbed),
            ("sipedge_loops_detected",
             "Requests answered 482 because sipedge's own Via branch showed a loop.",
             stats.loops_detected),
            ("sipedge_cancels", "CANCEL requests received.", stats.cancels),
            ("sipedge_probes_sent", "OPTIONS health probes sent to gateways.",
             probes.probes_sent),
            ("sipedge_transport_errors",
             "Sends the transport could not deliver (refused, reset, TLS failure).",
             stats.transport_errors),
            ("sipedge_tnx_parameter",
             "Requests from Twilio carrying the deprecated tnx URI parameter.",
             stats.tnx_deprecated),
            ("sipedge_sdp_checked",
             "SDP bodies of INVITEs and answers from Twilio read by the media check.",
             stats.sdp_checked),
            ("sipedge_internal_errors",
             "Bugs caught by the driver: an exception in the core cost one message.",
             internal_errors),
        ):
            yield _Family.single(name, doc, "counter", value)

    @staticmethod
    def _calls(stats: ProxyStats, edges: list[str]) -> Iterator[Metric]:
        label_edges = [_edge(e) for e in edges]
        doc_dir = ("direction=outbound (PBX to Twilio) or inbound (Twilio to PBX); edge = the "
                   "Twilio edge of the gateway (none: no gateway was usable)")
        started = _Family.counter(
            "sipedge_calls_started",
            f"Initial INVITEs accepted (the call's first attempt); {doc_dir}, for the first "
            "attempt.", labels=("direction", "edge"))
        answered = _Family.counter(
            "sipedge_calls_answered",
            f"Calls answered (a 2xx to the initial INVITE relayed upstream); {doc_dir} that "
            "answered.", labels=("direction", "edge"))
        for family, table in ((started, stats.calls_started), (answered, stats.calls_answered)):
            values = {(d, e): 0 for d in ("outbound", "inbound") for e in label_edges}
            for (direction, edge), count in table.items():
                values[(_CALL_DIRECTION[direction], _edge(edge))] = count
            for labels, count in values.items():
                family.add_metric(labels, count)
            yield family

        failed = _Family.counter(
            "sipedge_calls_failed",
            f"Calls that failed (a non-2xx final response went upstream, relayed or sipedge's "
            f"own), by class of that response; {doc_dir} that gave the last answer.",
            labels=("direction", "edge", "class"))
        fvalues = {(d, e, f"{c}xx"): 0 for d in ("outbound", "inbound") for e in label_edges
                   for c in _CALL_CLASSES}
        fvalues[("outbound", NO_EDGE, "5xx")] = 0  # 503 when no gateway is usable
        for (direction, edge, klass), count in stats.calls_failed.items():
            fvalues[(_CALL_DIRECTION[direction], _edge(edge), f"{klass}xx")] = count
        for flabels, count in fvalues.items():
            failed.add_metric(flabels, count)
        yield failed

        for name, doc, value in (
            ("sipedge_calls_no_gateway",
             "Initial INVITEs answered 503 because no gateway was usable.",
             stats.no_gateway_503),
            ("sipedge_calls_refused_draining",
             "Initial INVITEs answered 503 with Retry-After while draining.",
             stats.draining_503),
            ("sipedge_calls_idle_expired",
             "Answered calls forgotten after a long idle time (their BYE never completed).",
             stats.calls_idle_expired),
            ("sipedge_calls_rate_limited",
             "New initial INVITEs answered 503 by the proxy-wide call cap "
             "([limits] call_rate_per_s).", stats.calls_rate_limited),
            ("sipedge_gateway_cap_skips",
             "Gateways skipped for a new call because they were at their calls/s cap "
             "([limits] gateway_calls_per_s; Twilio: 30 per gateway IP).",
             stats.gateway_cap_skips),
            ("sipedge_calls_gateway_cap",
             "New calls answered 503 because every usable gateway was at its calls/s cap.",
             stats.gateway_cap_503),
            ("sipedge_calls_emergency",
             "Calls to emergency numbers (they bypass the call caps).", stats.emergency_calls),
            ("sipedge_transactions_cap",
             "New requests answered 503 because max_transactions were in progress.",
             stats.transactions_cap_503),
        ):
            yield _Family.single(name, doc, "counter", value)

        failovers = _Family.counter(
            "sipedge_failovers",
            "Call attempts moved off a gateway, by its edge (from_edge), the next gateway's "
            "edge (to_edge; none: no gateway left, the call failed) and reason (transport_error,"
            " timeout, no_provisional, response).",
            labels=("from_edge", "to_edge", "reason"))
        for (from_edge, to_edge, reason), count in stats.failovers_by.items():
            failovers.add_metric((_edge(from_edge), _edge(to_edge), reason.value), count)
        yield failovers

    @staticmethod
    def _latency(stats: ProxyStats, probes: ProbeStats, snapshot: list[GatewayStatus],
                 edges: list[str]) -> Iterator[Metric]:
        for name, doc, table, bounds in (
            ("sipedge_post_dial_delay_seconds",
             "Post-dial delay: initial INVITE received to the first 18x relayed, by the edge "
             "that rang.", stats.pdd, PDD_BUCKETS_S),
            ("sipedge_answer_time_seconds",
             "Initial INVITE received to the 2xx relayed (includes ringing), by the edge that "
             "answered.", stats.answer_time, ANSWER_BUCKETS_S),
        ):
            family = _Family.histogram(name, doc, labels=("edge",))
            keys = dict.fromkeys([*edges, *table])  # configured edges first, then any other
            for edge in keys:
                family.add_histogram((_edge(edge),), table.get(edge), bounds)
            yield family

        rtt = _Family.histogram(
            "sipedge_probe_rtt_seconds",
            "Round-trip time of answered OPTIONS probes, by gateway.",
            labels=("gateway", "edge"))
        gw_edges = {s.id: s.edge for s in snapshot}
        table = probes.probe_rtt
        for gateway_id in dict.fromkeys([*gw_edges, *table]):
            edge = gw_edges.get(gateway_id) or gateway_id.partition("/")[0]
            rtt.add_histogram((gateway_id, _edge(edge)), table.get(gateway_id), RTT_BUCKETS_S)
        yield rtt

    @staticmethod
    def _gateways(snapshot: list[GatewayStatus], edges: list[str]) -> Iterator[Metric]:
        gl = ("gateway", "edge")
        up = _Family.gauge("sipedge_gateway_up",
                               "1 if the gateway is UP (takes calls first), else 0.",
                               labels=("gateway", "edge", "region"))
        state = _Family.gauge(
            "sipedge_gateway_state",
            "Gateway health, one-hot: 1 for the current state (probing, up, down, admin_down).",
            labels=("gateway", "edge", "region", "state"))
        changes = _Family.counter(
            "sipedge_gateway_state_changes",
            "Gateway health state changes, by typed reason.", labels=(*gl, "reason"))
        code = _Family.gauge(
            "sipedge_gateway_last_probe_code",
            "Status code of the last OPTIONS probe reply (0: timed out, send failed, or not "
            "probed yet).", labels=gl)
        probes = _Family.counter("sipedge_gateway_probes",
                                     "OPTIONS probe results observed per gateway.", labels=gl)
        probe_failures = _Family.counter(
            "sipedge_gateway_probe_failures",
            "Probe results that counted as failures (timeouts, send failures, unhealthy "
            "codes, 503).", labels=gl)
        call_failures = _Family.counter(
            "sipedge_gateway_call_failures",
            "Call attempts that failed on the gateway (failover reasons).", labels=gl)
        priority = _Family.gauge(
            "sipedge_gateway_priority",
            "Priority group of the gateway's edge (0 = preferred).", labels=gl)
        per_edge_up = dict.fromkeys(edges, 0)
        per_edge_all = dict.fromkeys(edges, 0)
        # (member, label value) pairs: Enum.value is a descriptor call, 1,400 per scrape here.
        healths = tuple((h, h.value) for h in Health)
        reasons = tuple((r, r.value) for r in ChangeReason)
        for s in snapshot:
            gid, edge, region, current = s.id, _edge(s.edge), s.region, s.state
            is_up = current is Health.UP
            up.add_metric((gid, edge, region), 1 if is_up else 0)
            for h, h_value in healths:
                state.add_metric((gid, edge, region, h_value), 1 if current is h else 0)
            by_reason = s.changes_by_reason
            for r, r_value in reasons:
                changes.add_metric((gid, edge, r_value), by_reason.get(r, 0))
            labels = (gid, edge)
            code.add_metric(labels, s.last_code or 0)
            probes.add_metric(labels, s.probes)
            probe_failures.add_metric(labels, s.probe_failures)
            call_failures.add_metric(labels, s.call_failures)
            priority.add_metric(labels, s.priority)
            per_edge_up[s.edge] += is_up
            per_edge_all[s.edge] += 1
        yield from (up, state, changes, code, probes, probe_failures, call_failures, priority)

        edge_up = _Family.gauge(
            "sipedge_edge_gateways_up",
            "Gateways of the edge that are UP (0: the edge is down, calls fail over).",
            labels=("edge",))
        edge_all = _Family.gauge("sipedge_edge_gateways",
                                     "Gateways configured for the edge.", labels=("edge",))
        for edge in edges:
            edge_up.add_metric((_edge(edge),), per_edge_up[edge])
            edge_all.add_metric((_edge(edge),), per_edge_all[edge])
        yield edge_up
        yield edge_all

    def _gauges(self, stats: ProxyStats, draining: bool) -> Iterator[Metric]:
        tx = _Family.gauge(
            "sipedge_transactions_in_progress",
            "SIP transactions held: kind=server (requests received), client (requests sent, "
            "probes included).", labels=("kind",))
        tx.add_metric(("server",), stats.server_transactions)
        tx.add_metric(("client",), stats.client_transactions)
        yield tx
        yield _Family.counter(
            "sipedge_timers_fired",
            "Timer-heap entries the core popped (RFC 3261 timers, probes, sweeps; stale "
            "entries of finished transactions included).", value=stats.timers_fired)
        yield _Family.gauge(
            "sipedge_timer_entries",
            "Entries in the core's timer heap (stale ones included until they are due).",
            value=stats.timer_entries)
        yield _Family.gauge(
            "sipedge_calls_in_progress",
            "Answered calls whose BYE has not had its final response yet.",
            value=stats.calls_in_progress)
        yield _Family.gauge(
            "sipedge_calls_setting_up",
            "Initial INVITEs still waiting for their final response.",
            value=stats.calls_setting_up)
        yield _Family.gauge(
            "sipedge_sources_banned",
            "Inside source IPs dropped for exceeding [limits] source_rate_per_s (bans "
            "started: sipedge_messages_dropped_total{reason=\"rate_limited\"}).",
            value=stats.sources_banned)
        yield _Family.gauge(
            "sipedge_draining",
            "1 while draining (new calls refused with 503, in-dialog requests relayed), else 0.",
            value=1 if draining else 0)
        if self._state is not None:
            current = self._state()
            family = _Family.gauge(
                "sipedge_state",
                "Daemon lifecycle state, one-hot: starting, ready, reloading, draining, "
                "stopped.", labels=("state",))
            for name in LIFECYCLE_STATES:
                family.add_metric((name,), 1 if name == current else 0)
            if current not in LIFECYCLE_STATES:
                family.add_metric((current,), 1)  # visible rather than all zeros
            yield family
        monitor = self._loop_lag
        if monitor is not None:
            hist = monitor.histogram
            lag = _Family.histogram(
                "sipedge_event_loop_lag_seconds",
                "How late the event loop ran a timer due every "
                f"{monitor.interval_s:g}s (time the loop was blocked).")
            lag.add_histogram((), hist, hist.bounds)
            yield lag
            yield _Family.gauge(
                "sipedge_event_loop_last_lag_seconds",
                "Lag of the latest event-loop timer tick.", value=monitor.last_lag_s)
        pauses = self._gc_pauses
        if pauses is not None:
            family = _Family.histogram(
                "sipedge_gc_pause_seconds",
                "Duration of each cyclic garbage collection, by generation (the process "
                "runs nothing else meanwhile).", labels=("generation",))
            for generation, hist in enumerate(pauses.histograms):
                family.add_histogram((str(generation),), hist, hist.bounds)
            yield family
            yield _Family.gauge("sipedge_gc_longest_pause_seconds",
                                "The longest cyclic garbage collection since start.",
                                value=pauses.longest_s)
        info = self._build_info
        build = _Family.gauge("sipedge_build_info",
                              "Always 1; the labels say which sipedge and Python run, and "
                              "whether the core is compiled (core=mypyc) or pure Python.",
                              labels=tuple(info))
        build.add_metric(tuple(info.values()), 1)
        yield build


def make_registry(driver: Callable[[], DriverView], *,
                  loop_lag: LoopLagMonitor | None = None,
                  gc_pauses: GcPauseMonitor | None = None,
                  build_info: Mapping[str, str] | None = None,
                  state: Callable[[], str] | None = None,
                  transports: Callable[[], TransportView | None] | None = None,
                  process: bool = True) -> CollectorRegistry:
    """A fresh registry with sipedge's collector and the process/platform/GC collectors.

    Never the global ``prometheus_client.REGISTRY``: tests build many, and a reload must not
    collide with an earlier registration.

    Args:
        driver, loop_lag, gc_pauses, build_info, state: see ``SipedgeCollector``.
        process: include ``ProcessCollector`` (process_cpu_seconds_total,
            process_resident_memory_bytes, process_open_fds...), ``PlatformCollector``
            (python_info) and ``GCCollector`` (python_gc_*).

    Returns:
        The registry.
    """
    registry = CollectorRegistry()
    registry.register(SipedgeCollector(driver, loop_lag=loop_lag, gc_pauses=gc_pauses,
                                       build_info=build_info,
                                       transports=transports,
                                       state=state))
    if process:
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
    return registry


def exposition(registry: Collector) -> bytes:
    """The registry's samples in the Prometheus text format 0.0.4 (``CONTENT_TYPE``).

    Byte for byte what ``prometheus_client.generate_latest`` writes (tests compare the two),
    about four times faster (``bench/scrape.py`` prints both): a 200-gateway pool has ~6,600
    samples, and generate_latest sorts, validates and escapes every label of every sample on
    every scrape, ~70 ms here, while the admin handler runs on the event loop that carries
    the SIP traffic. Here a series' ``name{labels}`` head is rendered the first time it is
    seen and reused (it only changes when the series does), and integer values skip the
    float formatting. Families this fast path does not handle (info, summary, stateset,
    ``_created`` samples, names outside the legacy charset) go through generate_latest.
    """
    out: list[str] = []
    append = out.append
    for metric in registry.collect():
        lines = _render_rows(metric) if isinstance(metric, _Family) else _fast_family(metric)
        if lines is None:
            append(generate_latest(_Single(metric)).decode("utf-8"))
        else:
            out.extend(lines)
    return "".join(out).encode("utf-8")


class _Single:
    """A collector of one family (the generate_latest fallback of ``exposition``)."""

    __slots__ = ("metric",)

    def __init__(self, metric: Metric) -> None:
        self.metric = metric

    def collect(self) -> list[Metric]:
        return [self.metric]


_LEGACY_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LEGACY_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_SUFFIXES: Final = {"counter": ("_total",), "gauge": ("",),
                    "histogram": ("_bucket", "_count", "_sum")}
#: Rendered ``name{label="value",...}`` of other collectors' samples by (sample name, *label
#: items): a series' head is the same on every scrape, and rendering it (sort, validate,
#: escape, join) is most of the cost. Both caches are bounded by the series count.
_HEADS: dict[tuple[object, ...], str] = {}
_HEADS_MAX: Final = 100_000


def _render_head(name: str, labels: dict[str, str]) -> str | None:
    """``name{k="v",...}`` with sorted, escaped labels; None if a label name is invalid."""
    parts = []
    for key in sorted(labels):
        if not _LEGACY_LABEL.match(key):
            return None
        value = labels[key]
        if "\\" in value or '"' in value or "\n" in value:
            value = value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r'\"')
        parts.append(f'{key}="{value}"')
    return name + "{" + ",".join(parts) + "}"


#: ``name{labels}`` of our own rows by (sample name, label values).
_ROW_HEADS: dict[tuple[str, tuple[str, ...]], str] = {}


def _value_text(value: float) -> str:
    if value.__class__ is int and -1_000_000 < value < 1_000_000:
        return f"{value}.0"  # what floatToGoString gives for these
    return floatToGoString(value)  # type: ignore[no-untyped-call, no-any-return]  # untyped upstream


def _render_rows(family: _Family) -> list[str] | None:
    """The text lines of one of our families (names and labels are ours: valid)."""
    name = family.sample_name
    doc = family.documentation.replace("\\", r"\\").replace("\n", r"\n")
    lines = [f"# HELP {name} {doc}\n# TYPE {name} {family.type}\n"]
    append = lines.append
    heads = _ROW_HEADS
    names_of = family.names_of
    for sname, values, value in family.rows:
        if values:
            key = (sname, values)
            head = heads.get(key)
            if head is None:
                head = _render_head(sname, dict(zip(names_of[sname], values, strict=True)))
                if head is None:
                    return None
                if len(heads) >= _HEADS_MAX:
                    heads.clear()  # series churned (reloads): start over, stay bounded
                heads[key] = head
        else:
            head = sname
        if value.__class__ is int and -1_000_000 < value < 1_000_000:
            append(f"{head} {value}.0\n")  # _value_text inlined: most values are counts
        else:
            append(f"{head} {_value_text(value)}\n")
    return lines


def _fast_family(metric: Metric) -> list[str] | None:
    """The text lines of one family, or None when ``generate_latest`` must write it."""
    suffixes = _SUFFIXES.get(metric.type)
    name = metric.name
    if suffixes is None or not _LEGACY_NAME.match(name):
        return None
    shown = name + "_total" if metric.type == "counter" else name
    doc = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
    lines = [f"# HELP {shown} {doc}\n# TYPE {shown} {metric.type}\n"]
    append = lines.append
    allowed = {name + suffix for suffix in suffixes}
    heads = _HEADS
    for sample in metric.samples:
        sname = sample.name
        if sname not in allowed:
            return None  # _created, _gsum...: generate_latest moves those into families
        labels = sample.labels
        if labels:
            key = (sname, *labels.items())
            head = heads.get(key)
            if head is None:
                head = _render_head(sname, labels)
                if head is None:
                    return None
                if len(heads) >= _HEADS_MAX:
                    heads.clear()  # series churned (reloads): start over, stay bounded
                heads[key] = head
        else:
            head = sname
        text = _value_text(sample.value)
        if sample.timestamp is not None:
            append(f"{head} {text} {int(float(sample.timestamp) * 1000):d}\n")
        else:
            append(f"{head} {text}\n")
    return lines


def metrics_endpoint(registry: Collector) -> Callable[[], bytes]:
    """The ``metrics=`` callable of ``AdminServer``/``make_app``: one exposition per call."""
    def scrape() -> bytes:
        return exposition(registry)
    return scrape

