"""Probe results → observations, the probe schedule (intervals, jitter, one in flight), OPTIONS bytes."""

from __future__ import annotations

import random

import pytest
import sipmessage

from sipedge.gateway.health import Health, HealthPolicy, Signal
from sipedge.gateway.pool import Gateway
from sipedge.gateway.probe import (
    ProbeSchedule,
    Replied,
    SendFailed,
    TimedOut,
    build_probe,
    parse_healthy_codes,
    probe_observation,
)
from sipedge.sip.address import Endpoint

POLICY = HealthPolicy()


# -- results → observations ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("result", "signal", "label"),
    [
        (Replied(200, 0.012), Signal.SUCCESS, "200 reply"),
        (Replied(202, 0.012), Signal.SUCCESS, "202 reply"),
        (Replied(404, 0.01), Signal.FAILURE, "404 reply"),
        (Replied(483, 0.01), Signal.FAILURE, "483 reply"),
        (Replied(503, 0.01), Signal.FAILURE, "503 reply"),  # no Retry-After: a plain failure
        (Replied(503, 0.01, retry_after_s=30), Signal.OVERLOAD, "503 Retry-After"),
        (Replied(500, 0.01, retry_after_s=30), Signal.FAILURE, "500 reply"),
        (TimedOut(), Signal.FAILURE, "probe timeout"),
        (SendFailed("connection refused"), Signal.FAILURE, "probe send failure"),
    ],
)
def test_probe_observation(
    result: Replied | TimedOut | SendFailed, signal: Signal, label: str
) -> None:
    obs = probe_observation(result, POLICY)
    assert (obs.signal, obs.label) == (signal, label)


def test_timeout_never_counts_as_a_reply_whatever_the_codes() -> None:
    everything = HealthPolicy(
        healthy_codes=parse_healthy_codes(["1xx", "2xx", "3xx", "4xx", "5xx", "6xx"])
    )
    assert probe_observation(TimedOut(), everything).signal is Signal.FAILURE
    assert probe_observation(SendFailed("x"), everything).signal is Signal.FAILURE


def test_configured_healthy_codes() -> None:
    policy = HealthPolicy(healthy_codes=parse_healthy_codes(["2xx", "404", "405"]))
    assert probe_observation(Replied(404, 0.1), policy).signal is Signal.SUCCESS
    assert probe_observation(Replied(405, 0.1), policy).signal is Signal.SUCCESS
    assert probe_observation(Replied(403, 0.1), policy).signal is Signal.FAILURE


def test_503_retry_after_is_overload_even_if_5xx_healthy() -> None:
    policy = HealthPolicy(healthy_codes=parse_healthy_codes(["2xx", "5xx"]))
    obs = probe_observation(Replied(503, 0.1, retry_after_s=10), policy)
    assert obs.signal is Signal.OVERLOAD and obs.retry_after_s == 10


def test_send_failure_reason_is_detail() -> None:
    assert probe_observation(SendFailed("no route"), POLICY).detail == "no route"


# -- schedule --------------------------------------------------------------------------------


def make_schedule(seed: int = 7, **kw: float) -> ProbeSchedule:
    return ProbeSchedule(rng=random.Random(seed), **kw)


def test_first_probe_is_soon_and_staggered() -> None:
    s = make_schedule()
    for i in range(50):
        s.add(f"g{i}", 100.0)
    deadline = s.next_deadline()
    assert deadline is not None and 100.0 <= deadline <= 100.5
    due = s.due(100.5)
    assert sorted(due) == sorted(f"g{i}" for i in range(50))


def test_add_is_idempotent() -> None:
    s = make_schedule()
    s.add("a", 0.0)
    first = s.next_deadline()
    s.add("a", 50.0)
    assert s.next_deadline() == first


def test_one_probe_in_flight_per_gateway() -> None:
    s = make_schedule(jitter=0.0)
    s.add("a", 0.0)
    assert s.due(0.0) == ["a"] and s.is_in_flight("a")
    assert s.due(100.0) == []  # no result yet: never a second probe
    assert s.next_deadline() is None
    s.reschedule("a", 2.0, Health.UP)
    assert not s.is_in_flight("a")
    assert s.next_deadline() == 17.0
    assert s.due(16.9) == [] and s.due(17.0) == ["a"]


@pytest.mark.parametrize(
    ("health", "interval"),
    [(Health.UP, 15.0), (Health.ADMIN_DOWN, 15.0), (Health.DOWN, 5.0), (Health.PROBING, 5.0)],
)
def test_interval_follows_health(health: Health, interval: float) -> None:
    s = make_schedule(jitter=0.0)
    assert s.interval(health) == interval
    s.add("a", 0.0)
    s.due(0.0)
    assert s.reschedule("a", 10.0, health) == 10.0 + interval


@pytest.mark.parametrize(("health", "nominal"), [(Health.UP, 15.0), (Health.DOWN, 5.0)])
def test_jitter_stays_within_bounds_and_spreads(health: Health, nominal: float) -> None:
    s = make_schedule(seed=1234)
    s.add("a", 0.0)
    gaps = []
    now = 0.0
    for _ in range(2000):
        s.due(now)
        nxt = s.reschedule("a", now, health)
        assert nxt is not None
        gaps.append(nxt - now)
        now = nxt
    assert min(gaps) >= nominal * 0.9 and max(gaps) <= nominal * 1.1
    # Spread, not a constant: both halves of the band are used.
    assert min(gaps) < nominal * 0.95 and max(gaps) > nominal * 1.05
    assert abs(sum(gaps) / len(gaps) - nominal) < nominal * 0.01


def test_seeded_schedule_is_reproducible() -> None:
    def run(seed: int) -> list[float]:
        s = make_schedule(seed=seed)
        s.add("a", 0.0)
        out = []
        for i in range(10):
            s.due(1e9)
            out.append(s.reschedule("a", float(i), Health.UP) or 0.0)
        return out

    assert run(3) == run(3) and run(3) != run(4)


def test_due_orders_by_time_and_next_deadline_is_the_earliest() -> None:
    s = make_schedule(jitter=0.0)
    for gid in ("c", "b", "a"):
        s.add(gid, 0.0)
        s.due(0.0)
    s.reschedule("c", 1.0, Health.DOWN)  # due 6
    s.reschedule("b", 2.0, Health.UP)  # due 17
    s.reschedule("a", 0.5, Health.DOWN)  # due 5.5
    assert s.next_deadline() == 5.5
    assert s.due(20.0) == ["a", "c", "b"]


def test_not_before_honours_a_hold_down() -> None:
    s = make_schedule(jitter=0.0)
    s.add("a", 0.0)
    s.due(0.0)
    assert s.reschedule("a", 1.0, Health.DOWN, not_before=120.0) == 120.0
    s.due(120.0)
    assert s.reschedule("a", 121.0, Health.DOWN, not_before=10.0) == 126.0


def test_sync_keeps_known_adds_new_drops_gone() -> None:
    s = make_schedule(jitter=0.0)
    s.add("keep", 0.0)
    s.add("gone", 0.0)
    s.due(0.0)
    s.reschedule("keep", 1.0, Health.UP)
    s.sync(["keep", "new"], 2.0)
    assert s.due(2.0) == ["new"]
    assert s.next_deadline() == 16.0
    assert s.reschedule("gone", 3.0, Health.UP) is None  # late result of a removed gateway
    assert s.due(1e9) == ["keep"]


@pytest.mark.parametrize(
    "kw", [{"interval_up_s": 0.0}, {"interval_down_s": -1.0}, {"jitter": 1.0}, {"jitter": -0.1}]
)
def test_schedule_rejects_nonsense(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ProbeSchedule(rng=random.Random(0), **kw)


# -- OPTIONS bytes ---------------------------------------------------------------------------

DOMAIN = b"example.sip.ashburn-ix.twilio.com"


def gateway(transport: str = "udp", host: str = "208.78.112.64") -> Gateway:
    port = 5061 if transport == "tls" else 5060
    return Gateway.make("ashburn-ix", "Virginia", Endpoint(transport, host, port), DOMAIN)


def headers(data: bytes) -> tuple[bytes, dict[bytes, bytes]]:
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep and body == b""
    start, *lines = head.split(b"\r\n")
    return start, dict(line.split(b": ", 1) for line in lines)


def test_probe_is_a_correct_options_request() -> None:
    local = Endpoint("udp", "10.0.0.5", 5060)
    probe = build_probe(gateway(), local, 42, instance=b"i7")
    start, h = headers(probe.data)
    assert start == b"OPTIONS sip:example.sip.ashburn-ix.twilio.com SIP/2.0"
    assert h[b"Via"] == b"SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK-p-i7.2a;rport"
    assert probe.branch == b"z9hG4bK-p-i7.2a" and probe.branch.startswith(b"z9hG4bK")
    assert h[b"Max-Forwards"] == b"70"
    assert h[b"From"] == b"<sip:sipedge@10.0.0.5:5060>;tag=i7.2a"
    assert h[b"To"] == b"<sip:example.sip.ashburn-ix.twilio.com>"
    assert h[b"Call-ID"] == b"i7.2a@10.0.0.5"
    assert h[b"CSeq"] == b"1 OPTIONS"
    assert h[b"Content-Length"] == b"0"
    assert h[b"User-Agent"] == b"sipedge"


def test_probe_parses_with_an_independent_parser() -> None:
    probe = build_probe(gateway("tls"), Endpoint("tls", "10.0.0.5", 5061), 7, cseq=9)
    msg = sipmessage.Message.parse(probe.data)
    assert isinstance(msg, sipmessage.Request)
    assert msg.method == "OPTIONS"
    assert msg.uri.host == "example.sip.ashburn-ix.twilio.com"
    assert msg.uri.parameters["transport"] == "tls"
    assert msg.headers["Max-Forwards"] == "70"
    assert msg.headers["CSeq"] == "9 OPTIONS"
    assert msg.via[0].transport == "TLS"
    branch = msg.via[0].parameters["branch"]
    assert branch is not None and branch.startswith("z9hG4bK")


def test_probe_transport_tcp_and_ipv6() -> None:
    probe = build_probe(
        gateway("tcp"), Endpoint("tcp", "2001:db8::5", 5060), b"n1", user_agent=None
    )
    start, h = headers(probe.data)
    assert start == b"OPTIONS sip:example.sip.ashburn-ix.twilio.com;transport=tcp SIP/2.0"
    assert h[b"Via"].startswith(b"SIP/2.0/TCP [2001:db8::5]:5060;branch=")
    assert b"User-Agent" not in h


def test_probe_ids_unique_per_nonce_and_instance() -> None:
    local = Endpoint("udp", "10.0.0.5", 5060)
    probes = [
        build_probe(gateway(), local, n, instance=i) for n in range(100) for i in (b"a", b"b")
    ]
    assert len({p.branch for p in probes}) == 200
    assert len({headers(p.data)[1][b"Call-ID"] for p in probes}) == 200
    data, branch = probes[0]  # unpacks as the proxy core uses it
    assert branch in data


@pytest.mark.parametrize(
    ("nonce", "instance"), [(b"", b""), (b"a b", b""), (b"x", b"a;b"), (-1, b"")]
)
def test_probe_rejects_bad_nonce(nonce: int | bytes, instance: bytes) -> None:
    with pytest.raises(ValueError):
        build_probe(gateway(), Endpoint("udp", "10.0.0.5", 5060), nonce, instance=instance)
