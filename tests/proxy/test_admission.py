"""Admission control (issue 13): per-source rate and ban, call caps, emergency bypass.

Token buckets driven by ``now``: the FakeClock makes every rule exact. Through the real
core (``ProxyHarness``) for the behaviour, and on ``Admission`` alone for the buckets.
"""

from __future__ import annotations

import dataclasses

from sipedge.proxy.admission import Admission, AdmissionLimits, TokenBucket, Verdict
from sipedge.proxy.events import DropReason, SourceBanned
from sipedge.sip.address import Endpoint
from tests.helpers.wire import (
    CALLEE,
    OREGON,
    PBX,
    VIRGINIA,
    ProxyHarness,
    calls,
    header,
    make_request,
    responses,
    status_of,
)
from tests.proxy.test_core import invite

BASE = AdmissionLimits(source_rate_per_s=2000.0, source_burst=4000.0, ban_s=30.0,
                       call_rate_per_s=0.0, call_burst=1.0, gateway_calls_per_s=0.0,
                       emergency_numbers=frozenset({b"911", b"112"}), max_sources=100,
                       max_transactions=1000)


def harness(**limits: object) -> ProxyHarness:
    h = ProxyHarness()
    h.bring_up()
    h.core.admission.reconfigure(dataclasses.replace(BASE, **limits), h.now)  # type: ignore[arg-type]
    h.core.settings = dataclasses.replace(
        h.core.settings, limits=h.core.admission.limits)
    return h


def options(n: int, source: Endpoint = PBX) -> bytes:
    return make_request(b"OPTIONS", b"sip:127.0.0.1:5080",
                        via=[b"SIP/2.0/UDP %s:%d;branch=z9hG4bK-o%d" % (
                            source.host.encode(), source.port, n)], call_id=b"o%d" % n)


def test_token_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    bucket = TokenBucket(rate=2.0, burst=3.0, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.5) and not bucket.take(0.5)  # one token per 0.5 s
    assert not bucket.is_full(1.0) and bucket.is_full(10.0)


def test_source_over_its_rate_is_banned_then_forgiven() -> None:
    adm = Admission(dataclasses.replace(BASE, source_rate_per_s=1.0, source_burst=3.0,
                                        ban_s=10.0))
    assert [adm.check_source("10.0.0.5", 0.0) for _ in range(4)] == [
        Verdict.ADMIT, Verdict.ADMIT, Verdict.ADMIT, Verdict.RATE_LIMITED]
    assert adm.check_source("10.0.0.5", 5.0) is Verdict.BANNED  # tokens refilled: still banned
    assert adm.check_source("10.0.0.6", 5.0) is Verdict.ADMIT  # another source unaffected
    assert adm.banned(5.0) == 1 and adm.banned(11.0) == 0
    assert adm.check_source("10.0.0.5", 10.5) is Verdict.ADMIT  # ban served, fresh bucket


def test_source_table_is_bounded() -> None:
    adm = Admission(dataclasses.replace(BASE, max_sources=50))
    for i in range(10_000):
        adm.check_source(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", float(i))
    assert len(adm._sources) <= 50


def test_flooding_pbx_is_banned_before_parsing_and_another_source_is_not() -> None:
    h = harness(source_rate_per_s=10.0, source_burst=5.0, ban_s=30.0)
    answered = [len(responses(h.feed(options(i), PBX))) for i in range(8)]
    assert answered == [1, 1, 1, 1, 1, 0, 0, 0]
    stats = h.core.stats
    assert stats.drops[DropReason.RATE_LIMITED] == 1 and stats.drops[DropReason.BANNED] == 2
    assert [e.peer for e in h.events if isinstance(e, SourceBanned)] == [PBX]
    garbage_before = stats.parse_errors
    h.feed(b"\x00garbage", PBX)
    assert stats.parse_errors == garbage_before  # dropped before the parser saw it
    # The PBX callee, another inside source, still gets through; the ban ends after 30 s.
    assert len(responses(h.feed(options(20, CALLEE), CALLEE))) == 1
    h.advance(31)
    assert len(responses(h.feed(options(30), PBX))) == 1
    assert h.core.refresh_gauges().sources_banned == 0


def test_proxy_wide_call_cap_answers_503_retry_after_but_not_emergency_calls() -> None:
    h = harness(call_rate_per_s=1.0, call_burst=2.0)
    assert len(calls(h.feed(invite(1), PBX))) == 1
    assert len(calls(h.feed(invite(2), PBX))) == 1
    out = h.feed(invite(3), PBX)
    assert calls(out) == [] and [status_of(s) for s in responses(out)] == [503]
    assert header(out[0].data, b"Retry-After") == b"1"
    assert h.core.stats.calls_rate_limited == 1
    sos = h.feed(invite(4, ruri=b"sip:911@127.0.0.1:5080;user=phone"), PBX)
    assert len(calls(sos)) == 1 and h.core.stats.emergency_calls == 1
    h.advance(1.0)
    assert len(calls(h.feed(invite(5), PBX))) == 1  # refilled


def test_gateway_cap_spills_to_the_next_gateway_then_the_next_edge() -> None:
    h = harness(gateway_calls_per_s=1.0)
    dests = [calls(h.feed(invite(n), PBX))[0].dest for n in range(1, 7)]
    assert sorted(dests[:3], key=str) == sorted(VIRGINIA, key=str)  # one each, Virginia first
    assert sorted(dests[3:], key=str) == sorted(OREGON, key=str)  # then Oregon
    assert h.core.stats.gateway_cap_skips > 0
    out = h.feed(invite(7), PBX)  # every gateway at its cap
    assert calls(out) == [] and [status_of(s) for s in responses(out)] == [100, 503]
    assert h.core.stats.gateway_cap_503 == 1
    # An emergency call is never the one refused.
    sos = h.feed(invite(8, ruri=b"sip:+112@127.0.0.1:5080"), PBX)
    assert len(calls(sos)) == 1
    h.advance(1.0)
    assert len(calls(h.feed(invite(9), PBX))) == 1


def test_transactions_cap_answers_503_statelessly() -> None:
    h = harness(max_transactions=2)
    assert len(calls(h.feed(invite(1), PBX))) == 1
    assert len(calls(h.feed(invite(2), PBX))) == 1
    out = h.feed(invite(3), PBX)
    assert calls(out) == [] and [status_of(s) for s in out] == [503]
    assert h.core.stats.transactions_cap_503 == 1
