"""Call accounting, labelled counters and drain in the sans-I/O core (issue 11).

The metrics collector reads what these tests pin down: calls started/answered/failed by
direction and edge, failovers by from/to edge and typed reason, post-dial delay and answer
time per edge, calls in progress from the 2xx to the BYE's final response, and the drain
mode that refuses new calls while in-dialog requests keep flowing.
"""

from __future__ import annotations

import pytest

from sipedge.proxy.core import CALL_IDLE_TIMEOUT_S
from sipedge.proxy.events import (
    CallAnswered,
    CallEnded,
    CallFailed,
    CallStarted,
    DropReason,
    FailoverReason,
)
from sipedge.proxy.routing import Direction
from sipedge.proxy.stats import Histogram
from tests.helpers.wire import (
    CALLEE,
    OREGON,
    PBX,
    STRANGER,
    VIRGINIA,
    ProxyHarness,
    calls,
    header,
    make_request,
    make_response,
    responses,
    status_of,
)
from tests.proxy.test_core import in_dialog, invite, place

OUT, IN = Direction.OUTBOUND, Direction.INBOUND


@pytest.fixture
def h() -> ProxyHarness:
    harness = ProxyHarness()
    harness.bring_up()
    return harness


def answer(h: ProxyHarness, fwd: bytes, gw=VIRGINIA[0], ring_after: float = 0.3,
           answer_after: float = 1.0) -> None:
    h.advance(ring_after)
    h.feed(make_response(fwd, 180, b"Ringing"), gw)
    h.advance(answer_after)
    h.feed(make_response(fwd, 200, b"OK"), gw)


def bye(h: ProxyHarness) -> list:
    req = in_dialog(b"BYE", b"sip:gw@127.0.0.64:5060",
                    [b"<sip:127.0.0.1:5080;lr>", b"<sip:127.0.0.3:5060;lr>"],
                    b"SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-pbx-bye",
                    from_=b"<sip:pbx@127.0.0.1>;tag=pbxtag1",
                    to_=b"<sip:+14155550100@127.0.0.1>;tag=gwtag")
    return h.feed(req, PBX)


def test_answered_call_counted_by_edge_with_pdd_and_answer_time(h: ProxyHarness) -> None:
    _, fwd = place(h)
    answer(h, fwd)
    stats = h.core.stats
    assert stats.calls_started == {(OUT, "ashburn-ix"): 1}
    assert stats.calls_answered == {(OUT, "ashburn-ix"): 1}
    assert stats.calls_failed == {}
    pdd: Histogram = stats.pdd["ashburn-ix"]
    assert pdd.count == 1 and pdd.sum == pytest.approx(0.3)
    assert stats.answer_time["ashburn-ix"].sum == pytest.approx(1.3)
    kinds = [type(e) for e in h.events if isinstance(e, CallStarted | CallAnswered)]
    assert kinds == [CallStarted, CallAnswered]
    answered = next(e for e in h.events if isinstance(e, CallAnswered))
    assert (answered.call_id, answered.edge, answered.gateway) == (
        "call-1@127.0.0.1", "ashburn-ix", h.gateway_id(VIRGINIA[0]))


def test_call_in_progress_from_2xx_until_bye_final_response(h: ProxyHarness) -> None:
    _, fwd = place(h)
    assert h.core.refresh_gauges().calls_setting_up == 1
    answer(h, fwd)
    assert h.core.calls_in_progress == 1 and not h.core.is_quiescent()
    fwd_bye = calls(bye(h), b"BYE")[0].data
    assert h.core.calls_in_progress == 1  # the BYE has no final response yet
    h.feed(make_response(fwd_bye, 200, b"OK", to_tag=None), VIRGINIA[0])
    assert h.core.calls_in_progress == 0
    assert [e for e in h.events if isinstance(e, CallEnded)] == [
        CallEnded("call-1@127.0.0.1", 200)]
    assert h.core.is_quiescent()


def test_failed_call_counted_by_final_class(h: ProxyHarness) -> None:
    _, fwd = place(h)
    h.feed(make_response(fwd, 486, b"Busy Here"), VIRGINIA[0])
    assert h.core.stats.calls_failed == {(OUT, "ashburn-ix", 4): 1}
    failed = [e for e in h.events if isinstance(e, CallFailed)]
    assert [(e.code, e.edge) for e in failed] == [(486, "ashburn-ix")]
    assert h.core.calls_in_progress == 0


def test_failover_counted_by_edges_and_reason_then_answer_on_next_edge(
        h: ProxyHarness) -> None:
    _, fwd = place(h)
    out = h.feed(make_response(fwd, 503, b"Unavailable"), VIRGINIA[0])
    for gw in VIRGINIA[1:]:
        nxt = calls(out)[0]
        assert nxt.dest == gw
        out = h.feed(make_response(nxt.data, 503, b"Unavailable"), gw)
    last = calls(out)[0]
    assert last.dest in OREGON
    answer(h, last.data, gw=last.dest)
    stats = h.core.stats
    assert stats.failovers_by == {
        ("ashburn-ix", "ashburn-ix", FailoverReason.RESPONSE): 2,
        ("ashburn-ix", "san-jose-ix", FailoverReason.RESPONSE): 1,
    }
    # Started on Virginia, answered by Oregon: each edge gets its own figure.
    assert stats.calls_started == {(OUT, "ashburn-ix"): 1}
    assert stats.calls_answered == {(OUT, "san-jose-ix"): 1}
    assert "san-jose-ix" in stats.pdd


def test_no_provisional_failover_reason_is_typed(h: ProxyHarness) -> None:
    place(h)
    h.advance(4.1)
    assert h.core.stats.failovers_by == {
        ("ashburn-ix", "ashburn-ix", FailoverReason.NO_PROVISIONAL): 1}


def test_call_refused_without_gateway_counts_started_and_failed() -> None:
    h = ProxyHarness()
    h.start()
    for gw in VIRGINIA + OREGON:
        h.core.drain_gateway(h.gateway_id(gw), h.now)
    out = h.feed(invite(), PBX)
    assert [status_of(s) for s in responses(out)] == [100, 503]
    stats = h.core.stats
    assert stats.no_gateway_503 == 1
    assert stats.calls_started == {(OUT, ""): 1}
    assert stats.calls_failed == {(OUT, "", 5): 1}
    kinds = [type(e) for e in h.events if isinstance(e, CallStarted | CallFailed)]
    assert kinds == [CallStarted, CallFailed]


def test_inbound_call_counted_on_the_edge_it_came_from(h: ProxyHarness) -> None:
    data = make_request(b"INVITE", b"sip:+14155550100@127.0.0.3:5060;edge=ashburn-ix",
                        via=[b"SIP/2.0/UDP 127.0.0.65:5060;branch=z9hG4bK-gw-in"],
                        call_id=b"in-1@twilio")
    fwd = calls(h.feed(data, VIRGINIA[1]))[0]
    assert fwd.dest == CALLEE
    h.feed(make_response(fwd.data, 180, b"Ringing"), CALLEE)
    h.feed(make_response(fwd.data, 200, b"OK"), CALLEE)
    stats = h.core.stats
    assert stats.calls_started == {(IN, "ashburn-ix"): 1}
    assert stats.calls_answered == {(IN, "ashburn-ix"): 1}
    assert stats.requests_by_method[IN] == {b"INVITE": 1}
    assert stats.responses_by_class[(2, IN)] == 1  # the 200 relayed to the outside


def test_requests_counted_by_method_and_side_unknown_methods_bounded(h: ProxyHarness) -> None:
    for i in range(3):
        h.feed(make_request(b"FOO%d" % i, b"sip:x@127.0.0.1:5080",
                            via=[b"SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-m%d" % i],
                            call_id=b"m%d" % i), PBX)
    place(h)
    h.feed(invite(9), STRANGER)
    stats = h.core.stats
    assert stats.requests_by_method[OUT] == {b"OTHER": 3, b"INVITE": 1}
    assert stats.requests_by_method[Direction.UNKNOWN] == {b"INVITE": 1}
    assert stats.drops[DropReason.SOURCE_NOT_ALLOWED] == 1
    assert stats.local_replies[100] == 1  # the INVITE's 100 Trying


def test_parse_errors_counted_by_the_status_they_call_for(h: ProxyHarness) -> None:
    bad = invite().replace(b"SIP/2.0\r\n", b"SIP/3.0\r\n", 1)
    out = h.feed(bad, PBX)
    assert [status_of(s) for s in out] == [505]
    assert h.core.stats.parse_errors_by_status == {505: 1}
    assert h.core.stats.local_replies == {505: 1}


def test_drain_refuses_new_calls_with_503_retry_after_but_relays_in_dialog(
        h: ProxyHarness) -> None:
    _, fwd = place(h, 1)
    answer(h, fwd)
    h.core.set_draining(True)
    out = h.feed(invite(2), PBX)
    assert [status_of(s) for s in out] == [503]  # no 100 first, nothing forwarded
    assert header(out[0].data, b"Retry-After") is not None
    assert h.core.stats.draining_503 == 1
    # OPTIONS to sipedge itself says "not available" so health checks move away.
    ping = make_request(b"OPTIONS", b"sip:127.0.0.1:5080",
                        via=[b"SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-ping"], call_id=b"p")
    assert [status_of(s) for s in h.feed(ping, PBX)] == [503]
    # The established call's BYE still goes through, and the drain can end.
    fwd_bye = calls(bye(h), b"BYE")
    assert len(fwd_bye) == 1
    assert not h.core.is_quiescent()
    h.feed(make_response(fwd_bye[0].data, 200, b"OK", to_tag=None), VIRGINIA[0])
    assert h.core.is_quiescent()
    h.core.set_draining(False)
    assert len(calls(h.feed(invite(3), PBX))) == 1


def test_pending_request_keeps_drain_waiting_until_final(h: ProxyHarness) -> None:
    _, fwd = place(h)
    h.core.set_draining(True)
    assert h.core.pending_requests() == 1 and not h.core.is_quiescent()
    h.feed(make_response(fwd, 486, b"Busy Here"), VIRGINIA[0])
    # The INVITE server transaction waits in COMPLETED for the ACK: not pending any more.
    assert h.core.pending_requests() == 0 and h.core.is_quiescent()


def test_answered_call_without_bye_idles_out(h: ProxyHarness) -> None:
    _, fwd = place(h)
    answer(h, fwd)
    h.advance(CALL_IDLE_TIMEOUT_S + 120)
    assert h.core.calls_in_progress == 0
    assert h.core.stats.calls_idle_expired == 1
    assert CallEnded("call-1@127.0.0.1", 0) in h.events


def test_probe_rtt_histogram_per_gateway(h: ProxyHarness) -> None:
    rtt = h.core.probe_stats.probe_rtt
    assert set(rtt) == {h.gateway_id(g) for g in VIRGINIA + OREGON}
    assert all(hist.count >= 2 for hist in rtt.values())


def test_histogram_buckets_follow_prometheus_le() -> None:
    hist = Histogram((0.1, 1.0))
    for v in (0.1, 0.5, 1.0, 7.0):
        hist.observe(v)
    assert hist.counts == [1, 2, 1] and hist.count == 4 and hist.sum == pytest.approx(8.6)
