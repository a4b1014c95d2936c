"""The Prometheus collector over a real core: bytes in through ``ProxyHarness``, samples out.

Every figure asserted here comes from traffic the core really handled (answered, busy and
failed-over calls, probes, drains); the collector reads it through a real ``CoreDriver``.
The shipped operator config is checked too: ``promtool check metrics`` on the exposition,
``promtool check config/rules``, the promtool unit tests of the alerts, and every metric
name used by ``conf/alerts.yml`` and ``conf/grafana-dashboard.json`` against a live scrape.
"""

from __future__ import annotations

import asyncio
import gc
import json
import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from sipedge import __version__, core_build
from sipedge.admin import METRICS_CONTENT_TYPE, AdminServer
from sipedge.gateway.health import ChangeReason, Health
from sipedge.gateway.pool import GatewayPool
from sipedge.gateway.probe import Replied
from sipedge.metrics import (
    CONTENT_TYPE,
    LIFECYCLE_STATES,
    GcPauseMonitor,
    LoopLagMonitor,
    exposition,
    make_registry,
    metrics_endpoint,
)
from sipedge.proxy.events import DropReason
from sipedge.sip.address import Endpoint
from sipedge.transport import Transports
from sipedge.transport.base import StreamCloseReason
from sipedge.transport.driver import CoreDriver
from sipedge.transport.tls import TLS_FAILURE_REASONS, TLS_INBOUND_FAILURE_REASONS
from tests.helpers.wire import (
    CALLEE,
    INSIDE,
    OREGON,
    PBX,
    STRANGER,
    VIRGINIA,
    ProxyHarness,
    calls,
    make_request,
    make_response,
)
from tests.proxy.test_accounting import answer
from tests.proxy.test_core import invite, place

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
ADMIN_HOST = "127.0.0.212"
VA, OR = "ashburn-ix", "san-jose-ix"

Key = tuple[str, frozenset[tuple[str, str]]]


# ---------------------------------------------------------------------------- helpers


@dataclass
class Scrape:
    """One parsed exposition: families by name and samples by (name, labels)."""

    body: bytes
    types: dict[str, str]
    samples: dict[Key, float]

    def __call__(self, name: str, **labels: str) -> float:
        return self.samples[(name, frozenset(labels.items()))]

    def series(self, name: str) -> dict[frozenset[tuple[str, str]], float]:
        return {labels: v for (n, labels), v in self.samples.items() if n == name}

    def names(self) -> set[str]:
        return {n for n, _ in self.samples}


def parse(body: bytes) -> Scrape:
    types: dict[str, str] = {}
    samples: dict[Key, float] = {}
    for family in text_string_to_metric_families(body.decode("utf-8")):
        types[family.name] = family.type
        for s in family.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in samples, f"duplicate series {key}"
            samples[key] = s.value
    return Scrape(body, types, samples)


class Lab:
    """A harness with all six gateways UP, a real driver over its core, and a registry."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, bring_up: bool = True) -> None:
        self.h = ProxyHarness()
        if bring_up:
            self.h.bring_up()
        else:
            self.h.start()
        self.driver = CoreDriver(self.h.core, loop, lambda event: None)
        self.monitor = LoopLagMonitor()
        self.state = "ready"
        self.transports = Transports(self.driver)  # not started: its counters read zero
        self.registry = make_registry(lambda: self.driver, loop_lag=self.monitor,
                                      state=lambda: self.state,
                                      transports=lambda: self.transports)

    def scrape(self) -> Scrape:
        return parse(exposition(self.registry))


@pytest.fixture
async def lab() -> AsyncIterator[Lab]:
    lab = Lab(asyncio.get_running_loop())
    try:
        yield lab
    finally:
        lab.driver.close()


def gateway_ids(h: ProxyHarness, endpoints: Iterable[Endpoint] = VIRGINIA + OREGON) -> list[str]:
    return [h.gateway_id(ep) for ep in endpoints]


def drive_mixed_calls(h: ProxyHarness, n: int = 1) -> None:
    """Call n answered on Virginia; call n+1 busy (486); call n+2 refused (503) by the three
    Virginia gateways, failed over and answered by Oregon."""
    _, fwd = place(h, n)
    answer(h, fwd, gw=_dest(h, fwd))
    _, fwd = place(h, n + 1)
    h.feed(make_response(fwd, 486, b"Busy Here"), _dest(h, fwd))
    _, fwd = place(h, n + 2)
    dest = _dest(h, fwd)
    out = h.feed(make_response(fwd, 503, b"Unavailable"), dest)
    for _ in range(2):
        nxt = calls(out)[0]
        assert nxt.dest in VIRGINIA
        out = h.feed(make_response(nxt.data, 503, b"Unavailable"), nxt.dest)
    last = calls(out)[0]
    assert last.dest in OREGON
    answer(h, last.data, gw=last.dest)


def _dest(h: ProxyHarness, forwarded: bytes) -> Endpoint:
    """The gateway a forwarded INVITE went to (round-robin moves it between calls)."""
    for send in reversed(h.sent):
        if send.data == forwarded:
            return send.dest
    raise AssertionError("not sent")


def promtool() -> str:
    path = shutil.which("promtool") or ("/usr/bin/promtool" if Path("/usr/bin/promtool").exists()
                                        else None)
    if path is None:
        pytest.fail("promtool is not installed: `make tools` installs it (CI does); "
                    "these checks must not be skipped")
    return path


def run_promtool(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([promtool(), *args], input=stdin, capture_output=True, timeout=60,
                          check=False, cwd=ROOT)


# ---------------------------------------------------------------------------- calls


async def test_scrape_reports_answered_busy_and_failed_over_calls(lab: Lab) -> None:
    h = lab.h
    drive_mixed_calls(h)
    m = lab.scrape()
    assert m("sipedge_calls_started_total", direction="outbound", edge=VA) == 3
    assert m("sipedge_calls_started_total", direction="outbound", edge=OR) == 0
    # Answered on the edge that answered: one per edge.
    assert m("sipedge_calls_answered_total", direction="outbound", edge=VA) == 1
    assert m("sipedge_calls_answered_total", direction="outbound", edge=OR) == 1
    assert m("sipedge_calls_failed_total", direction="outbound", edge=VA, **{"class": "4xx"}) == 1
    started = sum(m.series("sipedge_calls_started_total").values())
    answered = sum(m.series("sipedge_calls_answered_total").values())
    failed = sum(m.series("sipedge_calls_failed_total").values())
    assert started == answered + failed == 3
    assert {dict(k)["from_edge"] + ">" + dict(k)["to_edge"] + ":" + dict(k)["reason"]: v
            for k, v in m.series("sipedge_failovers_total").items()} == {
        f"{VA}>{VA}:response": 2, f"{VA}>{OR}:response": 1}
    # Two answered calls whose BYE has not come: in progress; nothing setting up.
    assert m("sipedge_calls_in_progress") == 2
    assert m("sipedge_calls_setting_up") == 0
    assert m("sipedge_gateway_call_failures_total", gateway=gateway_ids(h)[0], edge=VA) >= 1
    # INVITE 1..3 from the inside; the 100s, 180s, 200s and the 486 relayed to the inside.
    assert m("sipedge_requests_received_total", method="INVITE", direction="inside") == 3
    assert m("sipedge_responses_relayed_total", direction="inside", **{"class": "2xx"}) == 2
    assert m("sipedge_responses_relayed_total", direction="inside", **{"class": "4xx"}) == 1
    assert m("sipedge_local_replies_total", code="100") == 3


async def test_every_gateway_up_with_one_hot_state(lab: Lab) -> None:
    m = lab.scrape()
    ids = gateway_ids(lab.h)
    up = m.series("sipedge_gateway_up")
    assert len(up) == 6 and set(up.values()) == {1}
    for gid, ep in zip(ids, VIRGINIA + OREGON, strict=True):
        edge, region = (VA, "Virginia") if ep in VIRGINIA else (OR, "Oregon")
        assert m("sipedge_gateway_up", gateway=gid, edge=edge, region=region) == 1
        states = {h.value: m("sipedge_gateway_state", gateway=gid, edge=edge, region=region,
                             state=h.value) for h in Health}
        assert states == {"up": 1, "probing": 0, "down": 0, "admin_down": 0}
        assert m("sipedge_gateway_last_probe_code", gateway=gid, edge=edge) == 200
        assert m("sipedge_gateway_probes_total", gateway=gid, edge=edge) >= 2
        assert m("sipedge_gateway_priority", gateway=gid, edge=edge) == (0 if edge == VA else 1)
        assert m("sipedge_gateway_state_changes_total", gateway=gid, edge=edge,
                 reason="probe_success") == 1
    assert m("sipedge_edge_gateways_up", edge=VA) == m("sipedge_edge_gateways", edge=VA) == 3
    assert m("sipedge_probes_sent_total") == lab.h.core.probe_stats.probes_sent >= 12


async def test_drained_edge_shows_admin_down_and_zero_gateways_up(lab: Lab) -> None:
    h = lab.h
    for ep in OREGON:
        h.core.drain_gateway(h.gateway_id(ep), h.now)
    m = lab.scrape()
    gid = h.gateway_id(OREGON[0])
    assert m("sipedge_gateway_up", gateway=gid, edge=OR, region="Oregon") == 0
    assert m("sipedge_gateway_state", gateway=gid, edge=OR, region="Oregon",
             state="admin_down") == 1
    assert m("sipedge_gateway_state_changes_total", gateway=gid, edge=OR,
             reason="admin_drain") == 1
    assert m("sipedge_edge_gateways_up", edge=OR) == 0
    assert m("sipedge_edge_gateways", edge=OR) == 3
    assert m("sipedge_edge_gateways_up", edge=VA) == 3


async def test_histograms_match_the_core_and_are_cumulative(lab: Lab) -> None:
    h = lab.h
    drive_mixed_calls(h)
    m = lab.scrape()
    stats = h.core.stats
    for name, table in (("sipedge_post_dial_delay_seconds", stats.pdd),
                        ("sipedge_answer_time_seconds", stats.answer_time)):
        for edge in (VA, OR):
            hist = table[edge]
            assert m(f"{name}_count", edge=edge) == hist.count == 1
            assert m(f"{name}_sum", edge=edge) == pytest.approx(hist.sum)
            assert m(f"{name}_bucket", edge=edge, le="+Inf") == hist.count
    # Call 1 rang after 0.3 s: not in le=0.25, in le=0.5 and every bucket above.
    assert m("sipedge_post_dial_delay_seconds_bucket", edge=VA, le="0.25") == 0
    assert m("sipedge_post_dial_delay_seconds_bucket", edge=VA, le="0.5") == 1
    assert m("sipedge_post_dial_delay_seconds_bucket", edge=VA, le="30.0") == 1
    for gid in gateway_ids(h):
        edge = gid.partition("/")[0]
        assert m("sipedge_probe_rtt_seconds_count", gateway=gid, edge=edge) == \
            h.core.probe_stats.probe_rtt[gid].count >= 2
    # Every histogram series: buckets cumulative in le order, +Inf equal to _count.
    series: dict[tuple[str, frozenset[tuple[str, str]]], list[tuple[float, float]]] = {}
    for (name, labels), value in m.samples.items():
        if name.endswith("_bucket"):
            rest = frozenset(kv for kv in labels if kv[0] != "le")
            series.setdefault((name, rest), []).append((float(dict(labels)["le"]), value))
    assert len(series) >= 2 * 2 + 6
    for (name, rest), buckets in series.items():
        counts = [v for _, v in sorted(buckets)]
        assert counts == sorted(counts), f"{name}{dict(rest)} not cumulative"
        assert counts[-1] == m.samples[(name[:-len("_bucket")] + "_count", rest)]


async def test_label_sets_exist_at_zero_before_any_traffic() -> None:
    lab = Lab(asyncio.get_running_loop(), bring_up=False)
    try:
        m = lab.scrape()
    finally:
        lab.driver.close()
    for edge in (VA, OR):
        for direction in ("outbound", "inbound"):
            assert m("sipedge_calls_started_total", direction=direction, edge=edge) == 0
            assert m("sipedge_calls_answered_total", direction=direction, edge=edge) == 0
            assert m("sipedge_calls_failed_total", direction=direction, edge=edge,
                     **{"class": "5xx"}) == 0
        assert m("sipedge_post_dial_delay_seconds_count", edge=edge) == 0
        assert m("sipedge_answer_time_seconds_bucket", edge=edge, le="+Inf") == 0
    assert m("sipedge_calls_failed_total", direction="outbound", edge="none",
             **{"class": "5xx"}) == 0
    for gid in gateway_ids(lab.h):
        edge = gid.partition("/")[0]
        assert m("sipedge_probe_rtt_seconds_count", gateway=gid, edge=edge) == 0
        assert {dict(k)["reason"] for k in m.series("sipedge_gateway_state_changes_total")
                if dict(k)["gateway"] == gid} == {r.value for r in ChangeReason}
        assert m("sipedge_gateway_state", gateway=gid, edge=edge,
                 region="Virginia" if edge == VA else "Oregon", state="probing") == 1
        assert m("sipedge_gateway_last_probe_code", gateway=gid, edge=edge) == 0
    assert {dict(k)["reason"] for k in m.series("sipedge_messages_dropped_total")} == {
        r.value for r in DropReason}


async def test_core_without_monitor_exports_probe_families_at_zero() -> None:
    # A worker that does not probe: the gateway health it was told is exported, its own
    # probe counters read zero (the prober's process exports those).
    h = ProxyHarness(probing=False, up_after=1)
    gid = h.gateway_id(VIRGINIA[0])
    h.core.observe_probe(gid, Replied(200, 0.003), h.now)
    driver = CoreDriver(h.core, asyncio.get_running_loop(), lambda event: None)
    try:
        m = parse(exposition(make_registry(lambda: driver, process=False)))
    finally:
        driver.close()
    assert m("sipedge_probes_sent_total") == 0
    assert m("sipedge_probe_rtt_seconds_count", gateway=gid, edge=VA) == 0
    assert m("sipedge_gateway_up", gateway=gid, edge=VA, region="Virginia") == 1
    assert m("sipedge_gateway_probes_total", gateway=gid, edge=VA) == 1
    assert m("sipedge_transactions_in_progress", kind="client") == 0


async def test_refused_call_without_gateway_is_labelled_edge_none() -> None:
    lab = Lab(asyncio.get_running_loop(), bring_up=False)
    try:
        h = lab.h
        for ep in VIRGINIA + OREGON:
            h.core.drain_gateway(h.gateway_id(ep), h.now)
        h.feed(invite(), PBX)
        m = lab.scrape()
    finally:
        lab.driver.close()
    assert m("sipedge_calls_started_total", direction="outbound", edge="none") == 1
    assert m("sipedge_calls_failed_total", direction="outbound", edge="none",
             **{"class": "5xx"}) == 1
    assert m("sipedge_calls_no_gateway_total") == 1
    assert m("sipedge_local_replies_total", code="503") == 1
    assert sum(m.series("sipedge_gateway_up").values()) == 0


# ---------------------------------------------------------------------------- traffic


async def test_request_sides_parse_errors_drops_and_inbound_calls(lab: Lab) -> None:
    h = lab.h
    h.feed(invite(9), STRANGER)  # not in inside.allow: dropped
    h.feed(invite(8).replace(b"SIP/2.0\r\n", b"SIP/3.0\r\n", 1), PBX)  # 505
    data = make_request(b"INVITE", b"sip:+14155550100@127.0.0.3:5060;edge=ashburn-ix;tnx=1",
                        via=[b"SIP/2.0/UDP 127.0.0.65:5060;branch=z9hG4bK-gw-in"],
                        call_id=b"in-1@twilio")
    fwd = calls(h.feed(data, VIRGINIA[1]))[0]
    h.feed(make_response(fwd.data, 200, b"OK"), CALLEE)
    m = lab.scrape()
    assert m("sipedge_requests_received_total", method="INVITE", direction="unknown") == 1
    assert m("sipedge_messages_dropped_total", reason="source_not_allowed") == 1
    assert m("sipedge_parse_errors_total", status="505") == 1
    assert m("sipedge_requests_received_total", method="INVITE", direction="outside") == 1
    assert m("sipedge_responses_relayed_total", direction="outside", **{"class": "2xx"}) == 1
    assert m("sipedge_calls_started_total", direction="inbound", edge=VA) == 1
    assert m("sipedge_calls_answered_total", direction="inbound", edge=VA) == 1
    assert m("sipedge_tnx_parameter_total") == h.core.stats.tnx_deprecated == 1


async def test_internal_errors_come_from_the_driver(lab: Lab) -> None:
    assert lab.scrape()("sipedge_internal_errors_total") == 0
    # No peer where an Endpoint belongs makes the core raise (a stand-in for a bug): the
    # driver counts it and keeps serving.
    lab.driver.receive(invite(), None, INSIDE, lab.h.now)  # type: ignore[arg-type]
    assert lab.driver.internal_errors == 1
    assert lab.scrape()("sipedge_internal_errors_total") == 1


async def test_draining_state_and_build_info(lab: Lab) -> None:
    m = lab.scrape()
    assert m("sipedge_draining") == 0
    assert m.series("sipedge_state") == {
        frozenset({("state", s)}): (1 if s == "ready" else 0) for s in LIFECYCLE_STATES}
    build = m.series("sipedge_build_info")
    assert list(build.values()) == [1]
    labels = dict(next(iter(build)))
    assert labels["version"] == __version__
    assert labels["core"] == core_build().kind  # "python" here; "mypyc" from a wheel
    lab.h.core.set_draining(True)
    lab.state = "draining"
    m = lab.scrape()
    assert m("sipedge_draining") == 1
    assert m("sipedge_state", state="draining") == 1 and m("sipedge_state", state="ready") == 0
    lab.h.feed(invite(5), PBX)
    assert lab.scrape()("sipedge_calls_refused_draining_total") == 1


async def test_transactions_in_progress_by_kind(lab: Lab) -> None:
    place(lab.h, 1)
    m = lab.scrape()
    assert m("sipedge_transactions_in_progress", kind="server") == 1
    assert m("sipedge_transactions_in_progress", kind="client") >= 1
    assert m("sipedge_calls_setting_up") == 1
    assert m("sipedge_timer_entries") >= 2  # the server's and the branch's deadlines
    fired = m("sipedge_timers_fired_total")
    lab.h.advance(40)
    m = lab.scrape()
    assert m("sipedge_timers_fired_total") > fired


async def test_counters_never_decrease_across_scrapes(lab: Lab) -> None:
    h = lab.h
    _, fwd = place(h, 1)
    answer(h, fwd)
    first = lab.scrape()
    drive_mixed_calls(h, 2)  # more calls, a failover, call failures
    h.feed(invite(7), STRANGER)
    h.advance(700)  # probe rounds (and their RTTs), idle calls stay
    second = lab.scrape()
    checked = 0
    for (name, labels), value in first.samples.items():
        family = re.sub(r"_(total|bucket|count|sum)$", "", name)
        if first.types.get(family) not in ("counter", "histogram"):
            continue
        assert (name, labels) in second.samples, f"{name}{dict(labels)} disappeared"
        assert second.samples[(name, labels)] >= value, f"{name}{dict(labels)} went down"
        checked += 1
    assert checked > 200
    assert second("sipedge_probes_sent_total") > first("sipedge_probes_sent_total")
    assert second("sipedge_calls_started_total", direction="outbound", edge=VA) == 4


async def test_collector_reads_the_current_driver_and_pool_each_scrape(lab: Lab) -> None:
    h = lab.h
    _, fwd = place(h, 1)
    answer(h, fwd)
    # A reload that keeps only Virginia: the pool is swapped inside the core.
    groups = [g for g in h.pool.groups if g[0].edge == VA]
    h.core.reload_pool(GatewayPool(groups, h.pool.policy, now=h.now), h.now)
    m = lab.scrape()
    assert {dict(k)["edge"] for k in m.series("sipedge_gateway_up")} == {VA}
    assert m("sipedge_calls_answered_total", direction="outbound", edge=VA) == 1
    # The daemon swapped the driver (a new core): the next scrape follows it.
    fresh = ProxyHarness()
    old = lab.driver
    lab.driver = CoreDriver(fresh.core, old.loop, lambda event: None)
    try:
        m = lab.scrape()
        assert m("sipedge_calls_answered_total", direction="outbound", edge=VA) == 0
        assert len(m.series("sipedge_gateway_up")) == 6
    finally:
        lab.driver.close()
        lab.driver = old


# ---------------------------------------------------------------------------- exposition


async def test_exposition_is_byte_for_byte_generate_latest(lab: Lab) -> None:
    drive_mixed_calls(lab.h)
    registry = make_registry(lambda: lab.driver, loop_lag=lab.monitor, state=lambda: "ready",
                             process=False)
    assert exposition(registry) == generate_latest(registry)
    assert metrics_endpoint(registry)() == generate_latest(registry)


def test_exposition_of_foreign_families_matches_generate_latest() -> None:
    class Foreign:
        def collect(self) -> list[Metric]:
            odd = GaugeMetricFamily("odd_values", "Quotes \\ and\nnewlines.", labels=["v"])
            odd.add_metric(['a"b\\c\nd'], 1.5e9)
            odd.add_metric(["plain"], float("nan"))
            odd.add_metric(["big"], 12_345_678)
            created = CounterMetricFamily("with_created", "Has _created.", labels=["x"],
                                          created=1.0)
            created.add_metric(["y"], 3, created=2.0)
            return [odd, created]

    registry = CollectorRegistry()
    registry.register(Foreign())
    assert exposition(registry) == generate_latest(registry)


async def test_promtool_check_metrics_is_clean(lab: Lab) -> None:
    drive_mixed_calls(lab.h)
    body = exposition(lab.registry)
    result = run_promtool("check", "metrics", stdin=body)
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")


async def test_process_and_platform_collectors_are_included(lab: Lab) -> None:
    names = lab.scrape().names()
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds",
            "python_info"} <= names


async def test_loop_lag_monitor_sees_a_blocked_loop() -> None:
    loop = asyncio.get_running_loop()
    monitor = LoopLagMonitor(interval_s=0.01)
    monitor.start(loop)
    assert monitor.running
    await asyncio.sleep(0.03)
    time.sleep(0.08)  # block the loop: the next tick runs >= 70 ms late
    await asyncio.sleep(0.03)
    monitor.stop()
    assert not monitor.running
    count = monitor.histogram.count
    assert count >= 2
    assert monitor.histogram.sum >= 0.07
    assert max(monitor.last_lag_s, monitor.histogram.sum) >= 0.07
    await asyncio.sleep(0.03)
    assert monitor.histogram.count == count  # stopped means stopped
    h = ProxyHarness()
    driver = CoreDriver(h.core, loop, lambda event: None)
    try:
        m = parse(exposition(make_registry(lambda: driver, loop_lag=monitor, process=False)))
    finally:
        driver.close()
    assert m("sipedge_event_loop_lag_seconds_count") == count
    assert m("sipedge_event_loop_lag_seconds_bucket", le="0.05") < count  # the late tick
    assert m("sipedge_event_loop_lag_seconds_bucket", le="+Inf") == count
    assert "sipedge_state_total" not in m.names() and not m.series("sipedge_state")


async def test_gc_pause_monitor_times_each_collection_by_generation() -> None:
    monitor = GcPauseMonitor()
    monitor.start()
    monitor.start()  # idempotent: one callback, one observation per collection
    try:
        assert monitor.running
        junk = [[i] for i in range(200_000)]  # something for a full collection to walk
        gc.collect(2)
        gc.collect(0)
        del junk
    finally:
        monitor.stop()
    assert not monitor.running
    full, young = monitor.histograms[2], monitor.histograms[0]
    assert full.count >= 1 and young.count >= 1
    assert full.sum > 0 and monitor.longest_s >= full.sum / full.count
    gc.collect(2)
    assert monitor.histograms[2].count == full.count  # stopped means stopped
    loop = asyncio.get_running_loop()
    h = ProxyHarness()
    driver = CoreDriver(h.core, loop, lambda event: None)
    try:
        m = parse(exposition(make_registry(lambda: driver, gc_pauses=monitor, process=False)))
    finally:
        driver.close()
    assert m("sipedge_gc_pause_seconds_count", generation="2") == full.count
    assert m("sipedge_gc_pause_seconds_bucket", generation="2", le="+Inf") == full.count
    assert m("sipedge_gc_pause_seconds_count", generation="1") == monitor.histograms[1].count
    assert m("sipedge_gc_longest_pause_seconds") == monitor.longest_s
    assert m("sipedge_timer_entries") == 0  # nothing started on this core
    assert m("sipedge_timers_fired_total") == 0


def test_loop_lag_monitor_rejects_a_bad_interval() -> None:
    with pytest.raises(ValueError, match="interval_s"):
        LoopLagMonitor(interval_s=0)


async def test_admin_listener_serves_the_collector(lab: Lab) -> None:
    drive_mixed_calls(lab.h)
    server = AdminServer(lab.driver, metrics=metrics_endpoint(lab.registry))
    bound = await server.start(Endpoint("tcp", ADMIN_HOST, 0))
    try:
        async with aiohttp.ClientSession() as session, \
                session.get(f"http://{bound.hostport}/metrics") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == METRICS_CONTENT_TYPE == CONTENT_TYPE
            body = await resp.read()
    finally:
        await server.aclose()
    m = parse(body)
    assert m("sipedge_calls_started_total", direction="outbound", edge=VA) == 3


# ---------------------------------------------------------------------------- operator config


IDENT = re.compile(r"\b((?:sipedge|process)_[a-z0-9_]+)")


def used_names(text: str) -> set[str]:
    return set(IDENT.findall(text))


async def test_alert_and_dashboard_metric_names_exist_in_a_live_scrape(lab: Lab) -> None:
    # After traffic: failovers have no series until the first one (their label sets are
    # edge pairs x reasons, too many to pre-initialise).
    drive_mixed_calls(lab.h)
    live = lab.scrape().names()
    alerts = (CONF / "alerts.yml").read_text(encoding="utf-8")
    in_alerts = used_names(alerts)
    assert {"sipedge_edge_gateways_up", "sipedge_failovers_total",
            "sipedge_post_dial_delay_seconds_bucket"} <= in_alerts
    assert in_alerts - live == set()
    dashboard = json.loads((CONF / "grafana-dashboard.json").read_text(encoding="utf-8"))
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    # Query variables have a definition; the datasource variable (DS_PROMETHEUS) has none.
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    in_dashboard = used_names("\n".join(exprs))
    assert len(in_dashboard) >= 20
    assert in_dashboard - live == set()


def test_dashboard_panels_have_datasource_and_targets() -> None:
    dashboard = json.loads((CONF / "grafana-dashboard.json").read_text(encoding="utf-8"))
    assert dashboard["schemaVersion"] >= 39
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and target["refId"]
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in ("calls/s", "answer-seizure", "failovers", "gateway state", "post-dial",
                  "answer time", "probe rtt", "transactions", "loop lag", "memory", "cpu",
                  "internal errors"):
        assert topic in titles


def test_promtool_check_config_and_rules() -> None:
    config = run_promtool("check", "config", "conf/prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr
    assert b"1 rule files found" in config.stdout
    rules = run_promtool("check", "rules", "conf/alerts.yml")
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert b"SUCCESS: 9 rules found" in rules.stdout


def test_promtool_alert_unit_tests_pass() -> None:
    result = run_promtool("test", "rules", "tests/promtool/alerts_test.yml")
    assert result.returncode == 0, (result.stdout + result.stderr).decode()
    assert b"SUCCESS" in result.stdout


def test_alerts_have_for_severity_and_summary() -> None:
    text = (CONF / "alerts.yml").read_text(encoding="utf-8")
    blocks = re.split(r"\n\s+- alert: ", text)[1:]
    names = [b.split("\n", 1)[0].strip() for b in blocks]
    assert names == ["SipedgeDown", "EdgeDown", "AllGatewaysDown", "HighFailoverRate",
                     "HighPostDialDelay", "NoCallsAnswered", "CallsFailing", "InternalErrors",
                     "SipedgeDrainingLong"]
    for name, block in zip(names, blocks, strict=True):
        assert re.search(r"severity: (critical|warning|info)\b", block), name
        assert "summary:" in block and "description:" in block, name
        if name != "InternalErrors":  # fires on the first error
            assert re.search(r"\n\s+for: \d+m", block), name


async def test_stream_and_tls_families_are_present_at_zero(lab: Lab) -> None:
    scrape = lab.scrape()
    closes = scrape.series("sipedge_stream_closes_total")
    assert {dict(k)["reason"] for k in closes} == {r.value for r in StreamCloseReason}
    assert set(closes.values()) == {0.0}
    tls = scrape.series("sipedge_tls_failures_total")
    assert {dict(k)["reason"] for k in tls} == set(TLS_FAILURE_REASONS)
    inbound = scrape.series("sipedge_tls_inbound_failures_total")
    assert {dict(k)["reason"] for k in inbound} == set(TLS_INBOUND_FAILURE_REASONS)
    assert set(inbound.values()) == {0.0}
    assert scrape.series("sipedge_stream_connections") == {frozenset(): 0.0}
