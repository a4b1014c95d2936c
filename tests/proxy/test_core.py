"""ProxyCore fed bytes and a fake clock; assertions on the bytes that leave and where.

RFC 3261 §16 (proxy behaviour), §17 (transactions), issue #3 (routing both ways) and issue #4
(per-call failover, probes). No socket, no mock: ``tests.helpers.wire.ProxyHarness`` drives
the real core.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from sipedge.config import ProcessConfig, build_settings
from sipedge.gateway.health import GatewayStateChanged, Health
from sipedge.gateway.pool import GatewayPool
from sipedge.gateway.probe import Replied, TimedOut
from sipedge.proxy.core import ProxyCore
from sipedge.proxy.events import (
    CallFailedOver,
    DeprecatedParameterSeen,
    DropReason,
    FailoverReason,
    MessageDropped,
    RequestRejected,
)
from sipedge.proxy.settings import RejectUnknown, WorkerPlace
from sipedge.sip.address import Endpoint
from tests.helpers.wire import (
    CALLEE,
    INSIDE,
    OREGON,
    OUTSIDE,
    PBX,
    STRANGER,
    VIRGINIA,
    ProxyHarness,
    branch_of,
    calls,
    first_line,
    header,
    headers,
    make_request,
    make_response,
    responses,
    status_of,
    to,
)

ASHBURN = b"example.sip.ashburn-ix.twilio.com"
SAN_JOSE = b"example.sip.san-jose-ix.twilio.com"
SDP = b"v=0\r\no=pbx 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"


def pbx_via(n: int = 1, port: int = 5060, rport: bool = True) -> bytes:
    return b"SIP/2.0/UDP 127.0.0.1:%d;branch=z9hG4bK-pbx-%d%s" % (port, n, b";rport" if rport else b"")


def invite(n: int = 1, *, ruri: bytes = b"sip:+14155550100@127.0.0.1:5080;user=phone",
           via: bytes | None = None, **kw: object) -> bytes:
    """An outbound INVITE as the PBX sends it to sipedge's inside listener."""
    kw.setdefault("headers", [(b"Contact", b"<sip:pbx@127.0.0.1:5060>"),
                              (b"X-Custom", b"Keep  Me ;exactly"),
                              (b"Content-Type", b"application/sdp")])
    kw.setdefault("body", SDP)
    return make_request(b"INVITE", ruri, via=[via or pbx_via(n)],
                        call_id=b"call-%d@127.0.0.1" % n, **kw)  # type: ignore[arg-type]


@pytest.fixture
def h() -> ProxyHarness:
    """A harness whose six gateways are all UP."""
    harness = ProxyHarness()
    harness.bring_up()
    return harness


def place(h: ProxyHarness, n: int = 1, **kw: object) -> tuple[bytes, bytes]:
    """PBX sends INVITE n; returns (the INVITE, what the first gateway received)."""
    data = invite(n, **kw)
    out = calls(h.feed(data, PBX))
    assert len(out) == 1, out
    return data, out[0].data


def only_invite_to(sends: list, dest: Endpoint) -> bytes:
    out = calls(sends)
    assert [s.dest for s in out] == [dest], [s.dest for s in out]
    assert out[0].local == OUTSIDE
    return out[0].data


# ---------------------------------------------------------------------------- outbound INVITE


def test_invite_answered_100_trying_to_caller(h: ProxyHarness) -> None:
    out = h.feed(invite(), PBX)
    trying = responses(out, 100)
    assert len(trying) == 1
    assert trying[0].dest == PBX and trying[0].local == INSIDE
    assert header(trying[0].data, b"Via") == pbx_via()
    assert header(trying[0].data, b"Call-ID") == b"call-1@127.0.0.1"
    assert header(trying[0].data, b"CSeq") == b"1 INVITE"


def test_invite_forwarded_to_first_virginia_gateway_with_localized_uri(h: ProxyHarness) -> None:
    out = h.feed(invite(), PBX)
    data = only_invite_to(out, VIRGINIA[0])
    assert first_line(data) == b"INVITE sip:+14155550100@" + ASHBURN + b";user=phone SIP/2.0"


def test_invite_forwarded_with_our_via_on_top(h: ProxyHarness) -> None:
    _, fwd = place(h)
    vias = headers(fwd, b"Via")
    assert len(vias) == 2
    assert vias[0].startswith(b"SIP/2.0/UDP 127.0.0.3:5060;branch=z9hG4bK-se")
    assert vias[1].startswith(b"SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-pbx-1")


def test_invite_forwarded_with_max_forwards_decremented(h: ProxyHarness) -> None:
    _, fwd = place(h)
    assert headers(fwd, b"Max-Forwards") == [b"69"]


def test_invite_forwarded_with_double_record_route_outside_then_inside(h: ProxyHarness) -> None:
    _, fwd = place(h)
    assert headers(fwd, b"Record-Route") == [b"<sip:127.0.0.3:5060;lr>", b"<sip:127.0.0.1:5080;lr>"]


def test_invite_forwarded_with_rport_and_received_when_source_port_differs(
        h: ProxyHarness) -> None:
    caller = Endpoint("udp", "127.0.0.1", 40000)
    out = h.feed(invite(), caller)
    fwd = calls(out)[0].data
    assert headers(fwd, b"Via")[1] == pbx_via(rport=False) + b";rport=40000;received=127.0.0.1"
    # RFC 3581 §4: the response goes back to the source port.
    assert responses(out, 100)[0].dest == caller


def test_invite_forwarded_without_received_when_via_matches_source(h: ProxyHarness) -> None:
    out = h.feed(invite(via=pbx_via(rport=False)), PBX)
    assert headers(calls(out)[0].data, b"Via")[1] == pbx_via(rport=False)


def test_invite_forwarded_other_bytes_unchanged(h: ProxyHarness) -> None:
    original, fwd = place(h)
    vias = headers(fwd, b"Via")
    # Undo exactly the spans sipedge may change; what is left must be the original bytes.
    undone = fwd.replace(b"Via: " + vias[0] + b"\r\n", b"", 1)
    for rr in headers(fwd, b"Record-Route"):
        undone = undone.replace(b"Record-Route: " + rr + b"\r\n", b"", 1)
    undone = undone.replace(b"sip:+14155550100@" + ASHBURN, b"sip:+14155550100@127.0.0.1:5080", 1)
    undone = undone.replace(b"Max-Forwards: 69", b"Max-Forwards: 70", 1)
    undone = undone.replace(vias[1], pbx_via(), 1)
    assert undone == original
    assert fwd.endswith(b"\r\n\r\n" + SDP)


def test_invite_user_part_and_params_kept_port_dropped(h: ProxyHarness) -> None:
    _, fwd = place(h, ruri=b"sip:alice;ext=12@10.1.2.3:5999;transport=udp;foo=bar")
    assert first_line(fwd) == b"INVITE sip:alice;ext=12@" + ASHBURN + b";transport=udp;foo=bar SIP/2.0"


def test_invite_tel_uri_mapped_to_sip_uri_at_interconnect_domain(h: ProxyHarness) -> None:
    # RFC 3261 §19.1.6: a tel URI becomes sip:<number>@host;user=phone.
    _, fwd = place(h, ruri=b"tel:+14155550100")
    assert first_line(fwd) == b"INVITE sip:+14155550100@" + ASHBURN + b";user=phone SIP/2.0"


def test_invite_round_robin_across_virginia_gateways(h: ProxyHarness) -> None:
    dests = []
    for n in range(1, 7):
        out = calls(h.feed(invite(n), PBX))
        dests.append(out[0].dest)
    assert dests == [*VIRGINIA, *VIRGINIA]


def test_invite_branches_differ_per_call(h: ProxyHarness) -> None:
    _, a = place(h, 1)
    _, b = place(h, 2)
    assert branch_of(headers(a, b"Via")[0]) != branch_of(headers(b, b"Via")[0])


# ---------------------------------------------------------------------------- responses


def test_180_forwarded_upstream_with_our_via_stripped(h: ProxyHarness) -> None:
    _, fwd = place(h)
    ringing = make_response(fwd, 180, b"Ringing")
    out = h.feed(ringing, VIRGINIA[0])
    assert len(out) == 1
    assert out[0].dest == PBX and out[0].local == INSIDE
    assert first_line(out[0].data) == b"SIP/2.0 180 Ringing"
    assert headers(out[0].data, b"Via") == [pbx_via(rport=False) + b";rport=5060;received=127.0.0.1"]
    # Only our Via line is gone; everything else byte-exact.
    assert out[0].data == ringing.replace(b"Via: " + headers(fwd, b"Via")[0] + b"\r\n", b"")


def test_200_forwarded_upstream(h: ProxyHarness) -> None:
    _, fwd = place(h)
    ok = make_response(fwd, 200, b"OK", headers_=[(b"Contact", b"<sip:gw@127.0.0.64>")], body=SDP)
    out = h.feed(ok, VIRGINIA[0])
    assert [(s.dest, first_line(s.data)) for s in out] == [(PBX, b"SIP/2.0 200 OK")]
    assert out[0].data.endswith(SDP)
    assert headers(out[0].data, b"Record-Route") == headers(fwd, b"Record-Route")


def test_100_from_gateway_absorbed(h: ProxyHarness) -> None:
    _, fwd = place(h)
    assert h.feed(make_response(fwd, 100, b"Trying"), VIRGINIA[0]) == []


def test_invite_retransmission_answered_with_last_response(h: ProxyHarness) -> None:
    original, fwd = place(h)
    h.feed(make_response(fwd, 180, b"Ringing"), VIRGINIA[0])
    out = h.feed(original, PBX)
    assert [(s.dest, status_of(s)) for s in out] == [(PBX, 180)]
    assert calls(out) == []


def test_invite_retransmission_before_response_answered_100(h: ProxyHarness) -> None:
    original, _ = place(h)
    out = h.feed(original, PBX)
    assert [(s.dest, status_of(s)) for s in out] == [(PBX, 100)]


def test_final_response_retransmitted_until_ack(h: ProxyHarness) -> None:
    _, fwd = place(h)
    h.feed(make_response(fwd, 486, b"Busy Here"), VIRGINIA[0])
    # RFC 3261 §17.2.1 Timer G: the 486 is re-sent to the PBX until it ACKs.
    out = h.advance(0.6)
    assert [status_of(s) for s in to(out, PBX)] == [486]


# ---------------------------------------------------------------------------- failover


def test_failover_after_no_provisional_timeout_uses_new_branch(h: ProxyHarness) -> None:
    _, first = place(h)
    out = h.advance(3.9)
    assert calls(out) == [] or {s.dest for s in calls(out)} == {VIRGINIA[0]}  # Timer A only
    out = h.advance(0.2)
    second = only_invite_to([s for s in out if s.dest != VIRGINIA[0]], VIRGINIA[1])
    assert header(second, b"Call-ID") == header(first, b"Call-ID")
    assert header(second, b"CSeq") == header(first, b"CSeq")
    assert branch_of(headers(second, b"Via")[0]) != branch_of(headers(first, b"Via")[0])
    assert first_line(second) == first_line(first)
    assert any(isinstance(e, CallFailedOver) and e.reason is FailoverReason.NO_PROVISIONAL
               for e in h.events)


def test_failover_stops_retransmitting_to_abandoned_gateway(h: ProxyHarness) -> None:
    place(h)
    h.advance(4.1)
    out = h.advance(10)
    assert to(calls(out), VIRGINIA[0]) == []


@pytest.mark.parametrize("status,extra", [
    (503, []), (503, [(b"Retry-After", b"30")]), (500, []), (408, []), (504, []),
])
def test_failover_on_final_response_moves_to_next_gateway(
        h: ProxyHarness, status: int, extra: list[tuple[bytes, bytes]]) -> None:
    _, fwd = place(h)
    out = h.feed(make_response(fwd, status, b"Failed", headers_=extra), VIRGINIA[0])
    # Hop-by-hop ACK for the non-2xx (RFC 3261 §17.1.1.3) back to the failed gateway.
    acks = calls(out, b"ACK")
    assert [s.dest for s in acks] == [VIRGINIA[0]]
    assert branch_of(headers(acks[0].data, b"Via")[0]) == branch_of(headers(fwd, b"Via")[0])
    second = only_invite_to(out, VIRGINIA[1])
    assert header(second, b"Call-ID") == b"call-1@127.0.0.1"
    assert responses(out) == []  # nothing upstream yet


def test_failover_503_retry_after_marks_gateway_down_for_that_long(h: ProxyHarness) -> None:
    _, fwd = place(h)
    h.feed(make_response(fwd, 503, b"Busy", headers_=[(b"Retry-After", b"30")]), VIRGINIA[0])
    gid = h.gateway_id(VIRGINIA[0])
    assert h.state(VIRGINIA[0]) is Health.DOWN
    held = h.pool.record(gid).held_until
    assert held is not None and held == pytest.approx(h.now + 30)
    assert next(e for e in h.events if isinstance(e, GatewayStateChanged)).gateway_id == gid
    # New calls skip it while held.
    dests = [calls(h.feed(invite(n), PBX))[0].dest for n in range(2, 6)]
    assert VIRGINIA[0] not in dests


def test_failover_503_without_retry_after_does_not_hold_gateway(h: ProxyHarness) -> None:
    _, fwd = place(h)
    h.feed(make_response(fwd, 503, b"Busy"), VIRGINIA[0])
    assert h.state(VIRGINIA[0]) is Health.UP
    assert h.pool.record(h.gateway_id(VIRGINIA[0])).held_until is None


def test_failover_on_transport_error_is_immediate(h: ProxyHarness) -> None:
    place(h)
    out = h.transport_error(VIRGINIA[0])
    only_invite_to(out, VIRGINIA[1])


def test_failover_after_virginia_exhausted_goes_to_oregon_domain(h: ProxyHarness) -> None:
    _, fwd = place(h)
    for gw in VIRGINIA:
        out = h.feed(make_response(fwd, 503, b"Unavailable"), gw)
        nxt = calls(out)
        assert len(nxt) == 1
        fwd = nxt[0].data
    assert calls(out)[0].dest == OREGON[0]
    assert first_line(fwd) == b"INVITE sip:+14155550100@" + SAN_JOSE + b";user=phone SIP/2.0"


def test_invite_routed_to_oregon_when_virginia_down() -> None:
    h = ProxyHarness()
    h.bring_up(OREGON)  # Virginia never answers its probes
    h.advance(30)
    assert {h.state(gw) for gw in VIRGINIA} == {Health.DOWN}
    out = h.feed(invite(), PBX)
    data = only_invite_to(out, OREGON[0])
    assert first_line(data) == b"INVITE sip:+14155550100@" + SAN_JOSE + b";user=phone SIP/2.0"


def test_no_failover_after_2xx(h: ProxyHarness) -> None:
    _, fwd = place(h)
    h.feed(make_response(fwd, 200, b"OK"), VIRGINIA[0])
    out = h.advance(40)
    assert calls(out) == []
    assert not any(isinstance(e, CallFailedOver) for e in h.events)


def test_no_failover_after_cancel_on_failover_code(h: ProxyHarness) -> None:
    _, fwd = place(h)
    h.feed(make_response(fwd, 180, b"Ringing"), VIRGINIA[0])
    h.feed(make_request(b"CANCEL", b"sip:+14155550100@127.0.0.1:5080;user=phone",
                        via=[pbx_via()], call_id=b"call-1@127.0.0.1"), PBX)
    out = h.feed(make_response(fwd, 503, b"Unavailable"), VIRGINIA[0])
    assert calls(out) == []


def test_no_failover_after_cancel_before_provisional(h: ProxyHarness) -> None:
    place(h)
    h.feed(make_request(b"CANCEL", b"sip:+14155550100@127.0.0.1:5080;user=phone",
                        via=[pbx_via()], call_id=b"call-1@127.0.0.1"), PBX)
    out = h.advance(10)
    assert [s for s in calls(out) if s.dest != VIRGINIA[0]] == []


@pytest.mark.parametrize("status", [404, 486, 603])
def test_no_failover_on_final_response_not_in_failover_codes(h: ProxyHarness, status: int) -> None:
    _, fwd = place(h)
    out = h.feed(make_response(fwd, status, b"No"), VIRGINIA[0])
    assert calls(out) == []
    assert [(s.dest, status_of(s)) for s in responses(out)] == [(PBX, status)]


def test_all_gateways_503_answered_500_upstream(h: ProxyHarness) -> None:
    _, fwd = place(h)
    for gw in (*VIRGINIA, *OREGON):
        out = h.feed(make_response(fwd, 503, b"Unavailable"), gw)
        if gw != OREGON[-1]:
            fwd = calls(out)[0].data
    final = responses(out)
    assert [(s.dest, status_of(s)) for s in final] == [(PBX, 500)]


def test_best_response_forwarded_when_all_fail(h: ProxyHarness) -> None:
    # 408 beats 503 (RFC 3261 §16.7 step 6: 503 is never the best).
    _, fwd = place(h)
    codes = [503, 408, 503, 500, 503, 503]
    for gw, code in zip((*VIRGINIA, *OREGON), codes, strict=True):
        out = h.feed(make_response(fwd, code, b"X"), gw)
        if gw != OREGON[-1]:
            fwd = calls(out)[0].data
    assert [status_of(s) for s in responses(out)] == [408]


def test_no_usable_gateway_answers_503_with_retry_after_at_once() -> None:
    h = ProxyHarness()
    h.bring_up(())  # nobody answers: all go DOWN
    h.advance(30)
    assert {h.state(gw) for gw in (*VIRGINIA, *OREGON)} == {Health.DOWN}
    out = h.feed(invite(), PBX)
    assert calls(out) == []
    final = [s for s in responses(out) if status_of(s) >= 200]
    assert [(s.dest, status_of(s)) for s in final] == [(PBX, 503)]
    assert header(final[0].data, b"Retry-After") is not None
    assert h.core.stats.no_gateway_503 == 1


def test_all_attempts_timing_out_answers_408(h: ProxyHarness) -> None:
    place(h)
    out = h.advance(6 * 4 + 1)
    invites = calls(out)
    assert {s.dest for s in invites} == set(VIRGINIA) | set(OREGON)  # incl. Timer A to the 1st
    final = [s for s in responses(out) if status_of(s) >= 200]
    # 408, then its Timer G retransmissions until the PBX ACKs.
    assert {(s.dest, status_of(s)) for s in final} == {(PBX, 408)}


# ---------------------------------------------------------------------------- CANCEL


def cancel(n: int = 1) -> bytes:
    return make_request(b"CANCEL", b"sip:+14155550100@127.0.0.1:5080;user=phone",
                        via=[pbx_via(n)], call_id=b"call-%d@127.0.0.1" % n)


def test_cancel_answered_200_and_sent_to_gateway_with_provisional(h: ProxyHarness) -> None:
    _, fwd = place(h)
    h.feed(make_response(fwd, 180, b"Ringing"), VIRGINIA[0])
    out = h.feed(cancel(), PBX)
    assert [(s.dest, first_line(s.data)) for s in responses(out)] == [(PBX, b"SIP/2.0 200 OK")]
    assert header(responses(out)[0].data, b"CSeq") == b"1 CANCEL"
    downstream = calls(out, b"CANCEL")
    assert [(s.dest, s.local) for s in downstream] == [(VIRGINIA[0], OUTSIDE)]
    # RFC 3261 §9.1: same R-URI and top Via branch as the INVITE it cancels.
    assert first_line(downstream[0].data).split()[1] == first_line(fwd).split()[1]
    assert headers(downstream[0].data, b"Via") == [headers(fwd, b"Via")[0]]


def test_cancel_487_from_gateway_forwarded_upstream(h: ProxyHarness) -> None:
    _, fwd = place(h)
    h.feed(make_response(fwd, 180, b"Ringing"), VIRGINIA[0])
    out = h.feed(cancel(), PBX)
    h.feed(make_response(calls(out, b"CANCEL")[0].data, 200, b"OK"), VIRGINIA[0])
    out = h.feed(make_response(fwd, 487, b"Request Terminated"), VIRGINIA[0])
    assert [(s.dest, status_of(s)) for s in responses(out)] == [(PBX, 487)]
    assert [s.dest for s in calls(out, b"ACK")] == [VIRGINIA[0]]


def test_cancel_before_provisional_answers_487_and_cancels_on_1xx(h: ProxyHarness) -> None:
    _, fwd = place(h)
    out = h.feed(cancel(), PBX)
    assert sorted(status_of(s) for s in responses(out)) == [200, 487]
    assert calls(out, b"CANCEL") == []
    out = h.feed(make_response(fwd, 180, b"Ringing"), VIRGINIA[0])
    assert [s.dest for s in calls(out, b"CANCEL")] == [VIRGINIA[0]]
    assert responses(out) == []  # the 180 does not follow the 487 upstream


def test_cancel_without_matching_transaction_answered_481(h: ProxyHarness) -> None:
    out = h.feed(cancel(9), PBX)
    assert [(s.dest, status_of(s)) for s in out] == [(PBX, 481)]


# ---------------------------------------------------------------------------- ACK and in-dialog


def test_ack_for_non_2xx_absorbed(h: ProxyHarness) -> None:
    _, fwd = place(h)
    h.feed(make_response(fwd, 486, b"Busy Here"), VIRGINIA[0])
    ack = make_request(b"ACK", b"sip:+14155550100@127.0.0.1:5080;user=phone", via=[pbx_via()],
                       to=b"<sip:+14155550100@127.0.0.1:5080>;tag=gwtag",
                       call_id=b"call-1@127.0.0.1")
    assert h.feed(ack, PBX) == []  # not forwarded: the gateway got our own ACK already
    assert [s.dest for s in calls(h.sent, b"ACK")] == [VIRGINIA[0]]
    # The ACK matched the server transaction: the 486 is no longer retransmitted (Timer G).
    assert responses(h.advance(5)) == []


def in_dialog(method: bytes, ruri: bytes, routes: list[bytes], via: bytes, *,
              from_: bytes, to_: bytes, cseq: int = 2) -> bytes:
    return make_request(method, ruri, via=[via], from_=from_, to=to_,
                        call_id=b"call-1@127.0.0.1", cseq=cseq,
                        headers=[(b"Route", r) for r in routes])


def test_ack_for_2xx_routed_by_route_to_request_uri(h: ProxyHarness) -> None:
    ack = in_dialog(b"ACK", b"sip:gw@127.0.0.64:5060",
                    [b"<sip:127.0.0.1:5080;lr>", b"<sip:127.0.0.3:5060;lr>"],
                    b"SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-pbx-ack",
                    from_=b"<sip:pbx@127.0.0.1>;tag=pbxtag1",
                    to_=b"<sip:+14155550100@127.0.0.1>;tag=gwtag", cseq=1)
    out = h.feed(ack, PBX)
    assert [(s.dest, s.local) for s in out] == [(VIRGINIA[0], OUTSIDE)]
    data = out[0].data
    assert first_line(data) == b"ACK sip:gw@127.0.0.64:5060 SIP/2.0"
    assert headers(data, b"Route") == []
    assert headers(data, b"Via")[0].startswith(b"SIP/2.0/UDP 127.0.0.3:5060;branch=z9hG4bK-se")
    assert headers(data, b"Record-Route") == []


def test_bye_from_pbx_routed_to_twilio_from_outside_listener(h: ProxyHarness) -> None:
    bye = in_dialog(b"BYE", b"sip:gw@127.0.0.65:5060",
                    [b"<sip:127.0.0.1:5080;lr>", b"<sip:127.0.0.3:5060;lr>"],
                    b"SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-pbx-bye",
                    from_=b"<sip:pbx@127.0.0.1>;tag=pbxtag1",
                    to_=b"<sip:+14155550100@127.0.0.1>;tag=gwtag")
    out = h.feed(bye, PBX)
    fwd = calls(out, b"BYE")
    assert [(s.dest, s.local) for s in fwd] == [(VIRGINIA[1], OUTSIDE)]
    assert headers(fwd[0].data, b"Route") == []
    assert headers(fwd[0].data, b"Max-Forwards") == [b"69"]
    # The 200 comes back through us to the PBX.
    out = h.feed(make_response(fwd[0].data, 200, b"OK", to_tag=None), VIRGINIA[1])
    assert [(s.dest, s.local, status_of(s)) for s in out] == [(PBX, INSIDE, 200)]


def test_bye_from_twilio_routed_to_pbx_from_inside_listener(h: ProxyHarness) -> None:
    bye = in_dialog(b"BYE", b"sip:pbx@127.0.0.10:5060",
                    [b"<sip:127.0.0.3:5060;lr>", b"<sip:127.0.0.1:5080;lr>"],
                    b"SIP/2.0/UDP 127.0.0.64:5060;branch=z9hG4bK-gw-bye",
                    from_=b"<sip:+14155550100@twilio>;tag=gwtag",
                    to_=b"<sip:pbx@127.0.0.1>;tag=pbxtag1")
    out = h.feed(bye, VIRGINIA[0])
    fwd = calls(out, b"BYE")
    assert [(s.dest, s.local) for s in fwd] == [(CALLEE, INSIDE)]
    assert headers(fwd[0].data, b"Via")[0].startswith(b"SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bK-se")
    out = h.feed(make_response(fwd[0].data, 200, b"OK", to_tag=None), CALLEE)
    assert [(s.dest, s.local, status_of(s)) for s in out] == [(VIRGINIA[0], OUTSIDE, 200)]


# ---------------------------------------------------------------------------- inbound


def inbound_invite(ruri: bytes = b"sip:+14155550100@127.0.0.3:5060;edge=ashburn-ix") -> bytes:
    return make_request(b"INVITE", ruri, via=[b"SIP/2.0/UDP 127.0.0.64:5060;branch=z9hG4bK-gw-1"],
                        from_=b"<sip:+12125550100@example.sip.twilio.com>;tag=tw1",
                        to=b"<sip:+14155550100@example.sip.twilio.com>",
                        call_id=b"tw-call-1", headers=[(b"Content-Type", b"application/sdp")],
                        body=SDP)


def test_inbound_invite_sent_to_pbx_with_request_uri_unchanged(h: ProxyHarness) -> None:
    out = h.feed(inbound_invite(), VIRGINIA[0])
    assert [(s.dest, s.local, status_of(s)) for s in responses(out)] == [(VIRGINIA[0], OUTSIDE, 100)]
    fwd = calls(out)
    assert [(s.dest, s.local) for s in fwd] == [(CALLEE, INSIDE)]
    data = fwd[0].data
    assert first_line(data) == b"INVITE sip:+14155550100@127.0.0.3:5060;edge=ashburn-ix SIP/2.0"
    assert headers(data, b"Record-Route") == [b"<sip:127.0.0.1:5080;lr>", b"<sip:127.0.0.3:5060;lr>"]
    assert headers(data, b"Via")[0].startswith(b"SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bK-se")
    assert h.core.stats.edge_param_seen == 1
    # And the answer travels back to the gateway.
    out = h.feed(make_response(data, 180, b"Ringing"), CALLEE)
    assert [(s.dest, s.local, status_of(s)) for s in out] == [(VIRGINIA[0], OUTSIDE, 180)]


def test_inbound_tnx_param_reports_deprecated_parameter(h: ProxyHarness) -> None:
    out = h.feed(inbound_invite(b"sip:+14155550100@127.0.0.3;tnx=ie1-ix"), VIRGINIA[0])
    assert first_line(calls(out)[0].data) == b"INVITE sip:+14155550100@127.0.0.3;tnx=ie1-ix SIP/2.0"
    seen = [e for e in h.events if isinstance(e, DeprecatedParameterSeen)]
    assert seen == [DeprecatedParameterSeen(VIRGINIA[0], "ie1-ix")]


def test_inbound_edge_and_tnx_removed_when_strip_edge_params() -> None:
    h = ProxyHarness(settings_overrides={"strip_edge_params": True})
    h.bring_up()
    out = h.feed(inbound_invite(b"sip:+14155550100@127.0.0.3;edge=ashburn-ix;user=phone;tnx=x"),
                 VIRGINIA[0])
    assert first_line(calls(out)[0].data) == b"INVITE sip:+14155550100@127.0.0.3;user=phone SIP/2.0"


# ---------------------------------------------------------------------------- strangers


def test_stranger_dropped_silently_and_counted(h: ProxyHarness) -> None:
    out = h.feed(invite(), STRANGER)
    assert out == []
    assert h.core.stats.unknown_source_dropped == 1
    assert [e for e in h.events if isinstance(e, MessageDropped)] == [
        MessageDropped(STRANGER, DropReason.SOURCE_NOT_ALLOWED)]


def test_stranger_answered_403_when_reject_unknown_forbidden() -> None:
    h = ProxyHarness(settings_overrides={"reject_unknown": RejectUnknown.FORBIDDEN})
    h.bring_up()
    out = h.feed(invite(), STRANGER)
    assert [(s.dest, s.local, status_of(s)) for s in out] == [(STRANGER, INSIDE, 403)]


# ---------------------------------------------------------------------------- §16.3 checks


def test_max_forwards_zero_answered_483(h: ProxyHarness) -> None:
    out = h.feed(invite(max_forwards=0), PBX)
    assert [(s.dest, status_of(s)) for s in out] == [(PBX, 483)]


def test_proxy_require_answered_420_with_unsupported(h: ProxyHarness) -> None:
    out = h.feed(invite(headers=[(b"Proxy-Require", b"foo, bar")]), PBX)
    assert [(s.dest, status_of(s)) for s in out] == [(PBX, 420)]
    assert header(out[0].data, b"Unsupported") == b"foo, bar"


def test_unknown_uri_scheme_answered_416(h: ProxyHarness) -> None:
    out = h.feed(invite(ruri=b"soap.beep://example.com/x"), PBX)
    assert [(s.dest, status_of(s)) for s in out] == [(PBX, 416)]


def test_sips_uri_forwarded_with_scheme_kept(h: ProxyHarness) -> None:
    _, fwd = place(h, ruri=b"sips:+14155550100@127.0.0.1:5080")
    assert first_line(fwd) == b"INVITE sips:+14155550100@" + ASHBURN + b" SIP/2.0"


def test_loop_answered_482(h: ProxyHarness) -> None:
    _, fwd = place(h)
    # The forwarded INVITE comes back to us unchanged (a misrouted PBX trunk).
    out = h.feed(fwd, PBX)
    final = [s for s in responses(out) if status_of(s) >= 200]
    assert [(s.dest, status_of(s)) for s in final] == [(PBX, 482)]
    assert calls(out) == []
    assert h.core.stats.loops_detected == 1


# ---------------------------------------------------------------------------- OPTIONS to us


def options_to_us() -> bytes:
    return make_request(b"OPTIONS", b"sip:127.0.0.1:5080", via=[pbx_via(7)],
                        to=b"<sip:127.0.0.1:5080>", call_id=b"opt-1")


def test_options_to_sipedge_answered_200_when_gateway_up(h: ProxyHarness) -> None:
    out = h.feed(options_to_us(), PBX)
    assert [(s.dest, status_of(s)) for s in out] == [(PBX, 200)]
    assert header(out[0].data, b"Allow") is not None


def test_options_to_sipedge_answered_503_when_no_gateway_up() -> None:
    h = ProxyHarness()
    out = h.feed(options_to_us(), PBX)
    assert [(s.dest, status_of(s)) for s in out] == [(PBX, 503)]


def test_options_to_sipedge_with_max_forwards_0_answered_not_483(h: ProxyHarness) -> None:
    # RFC 3261 §16.3 step 3: the proxy may act as the final recipient of such an OPTIONS.
    req = make_request(b"OPTIONS", b"sip:127.0.0.1:5080", via=[pbx_via(8)],
                       to=b"<sip:127.0.0.1:5080>", call_id=b"opt-mf0", max_forwards=0)
    out = h.feed(req, PBX)
    assert [(s.dest, status_of(s)) for s in out] == [(PBX, 200)]


def test_options_elsewhere_with_max_forwards_0_gets_483(h: ProxyHarness) -> None:
    req = make_request(b"OPTIONS", b"sip:+14155550100@127.0.0.1:5080;user=phone",
                       via=[pbx_via(9)], call_id=b"opt-mf0-b", max_forwards=0)
    req = req.replace(b"OPTIONS sip:+14155550100@127.0.0.1:5080;user=phone",
                      b"OPTIONS sip:+14155550100@example.com")
    out = h.feed(req, PBX)
    assert [(s.dest, status_of(s)) for s in out] == [(PBX, 483)]


def test_options_to_sipedge_from_twilio_answered_locally(h: ProxyHarness) -> None:
    req = make_request(b"OPTIONS", b"sip:127.0.0.3:5060",
                       via=[b"SIP/2.0/UDP 127.0.0.64:5060;branch=z9hG4bK-twping"],
                       to=b"<sip:127.0.0.3>", call_id=b"tw-opt")
    out = h.feed(req, VIRGINIA[0])
    assert [(s.dest, s.local, status_of(s)) for s in out] == [(VIRGINIA[0], OUTSIDE, 200)]


# ---------------------------------------------------------------------------- probes


def test_start_probes_every_gateway_from_outside_listener() -> None:
    h = ProxyHarness()
    out = h.start()
    probes = calls(out, b"OPTIONS")
    assert sorted(s.dest.host for s in probes) == sorted(g.host for g in (*VIRGINIA, *OREGON))
    assert {s.local for s in probes} == {OUTSIDE}
    by_dest = {s.dest: s.data for s in probes}
    for gw in VIRGINIA:
        assert first_line(by_dest[gw]) == b"OPTIONS sip:" + ASHBURN + b" SIP/2.0"
    for gw in OREGON:
        assert first_line(by_dest[gw]) == b"OPTIONS sip:" + SAN_JOSE + b" SIP/2.0"
    assert all(header(d, b"Via").startswith(b"SIP/2.0/UDP 127.0.0.3:5060;") for d in by_dest.values())


def test_probe_replies_bring_gateway_up_after_up_after() -> None:
    h = ProxyHarness()
    out = h.start()
    h.answer_probes(out, only=[VIRGINIA[0]])
    assert h.state(VIRGINIA[0]) is Health.PROBING
    out = h.advance(5)
    h.answer_probes(out, only=[VIRGINIA[0]])
    assert h.state(VIRGINIA[0]) is Health.UP
    changes = [e for e in h.events if isinstance(e, GatewayStateChanged)
               and e.gateway_id == h.gateway_id(VIRGINIA[0])]
    assert [(e.old, e.new) for e in changes] == [(Health.PROBING, Health.UP)]


def test_probe_silence_takes_gateway_down_after_down_after() -> None:
    h = ProxyHarness()
    h.start()
    h.advance(2.5)  # first probe timed out (probe_timeout_s = 2)
    assert h.state(VIRGINIA[0]) is Health.PROBING
    assert h.core.probe_stats.probe_timeouts == 6
    h.advance(15)
    assert h.state(VIRGINIA[0]) is Health.DOWN
    changes = [e for e in h.events if isinstance(e, GatewayStateChanged)]
    assert sorted(e.gateway_id for e in changes) == sorted(h.gateway_id(g) for g in (*VIRGINIA, *OREGON))
    assert {(e.old, e.new) for e in changes} == {(Health.PROBING, Health.DOWN)}
    h.advance(30)
    assert [e for e in h.events if isinstance(e, GatewayStateChanged)] == changes  # once


def test_probe_503_retry_after_holds_gateway_down() -> None:
    h = ProxyHarness(interval_up_s=1.0)
    h.bring_up()
    out = h.advance(1.1)
    for s in calls(out, b"OPTIONS"):
        if s.dest == VIRGINIA[2]:
            h.feed(make_response(s.data, 503, b"Overloaded", headers_=[(b"Retry-After", b"60")]),
                   s.dest)
    assert h.state(VIRGINIA[2]) is Health.DOWN
    held = h.pool.record(h.gateway_id(VIRGINIA[2])).held_until
    assert held == pytest.approx(h.now + 60)
    # Retry-After is honoured strictly: no probe to it during the hold-down.
    out = h.advance(59)
    assert to(calls(out, b"OPTIONS"), VIRGINIA[2]) == []


# ---------------------------------------------------------------------------- without a monitor


def test_core_without_monitor_sends_no_probe_and_arms_no_timer() -> None:
    h = ProxyHarness(probing=False)
    assert h.core.monitor is None
    assert h.start() == []
    assert h.core.next_deadline() is None
    assert h.advance(600) == []
    assert h.core.probe_stats.probes_sent == 0
    gauges = h.core.refresh_gauges()
    assert (gauges.client_transactions, gauges.timer_entries) == (0, 0)
    assert all(h.state(gw) is Health.PROBING for gw in (*VIRGINIA, *OREGON))


def test_core_without_monitor_takes_health_observed_elsewhere() -> None:
    # A worker that does not probe: another process's monitor reports its results.
    h = ProxyHarness(probing=False, up_after=2)
    h.start()
    gid = h.gateway_id(OREGON[1])
    h.core.observe_probe(gid, Replied(200, 0.004), h.now)
    assert h.state(OREGON[1]) is Health.PROBING and h.core.drain_events() == []
    h.core.observe_probe(gid, Replied(200, 0.005), h.now)
    assert h.state(OREGON[1]) is Health.UP
    assert [(e.gateway_id, e.old, e.new) for e in h.core.drain_events()] == [
        (gid, Health.PROBING, Health.UP)]
    h.core.observe_probe("ashburn-ix/192.0.2.1:5060", TimedOut(), h.now)  # unknown: ignored
    # The only UP gateway takes the call, ahead of every PROBING one.
    out = h.feed(invite(), PBX)
    assert only_invite_to(out, OREGON[1])
    assert h.core.probe_stats.probes_sent == 0  # nothing of that was ours


def test_core_without_monitor_drops_what_looks_like_a_probe_reply() -> None:
    h = ProxyHarness(probing=False)
    probe = make_request(b"OPTIONS", b"sip:" + ASHBURN, via=[
        b"SIP/2.0/UDP 127.0.0.3:5060;branch=z9hG4bK-p-other.1;rport"], call_id=b"other.1@x")
    assert h.feed(make_response(probe, 200, b"OK"), VIRGINIA[0]) == []
    assert h.core.stats.stray_responses == 1
    assert h.state(VIRGINIA[0]) is Health.PROBING


def test_core_without_monitor_reloads_and_drains_gateways() -> None:
    h = ProxyHarness(probing=False, up_after=1)
    for gw in VIRGINIA:
        h.core.observe_probe(h.gateway_id(gw), Replied(200, 0.01), h.now)
    h.core.drain_gateway(h.gateway_id(VIRGINIA[0]), h.now)
    assert h.state(VIRGINIA[0]) is Health.ADMIN_DOWN
    pool = GatewayPool(h.pool.groups, h.pool.policy, now=h.now)
    h.core.reload_pool(pool, h.now)
    h.core.transport_error(VIRGINIA[1], h.now)  # nothing in flight: only counted
    assert h.core.pool is pool and h.core.next_deadline() is None
    assert pool.state(h.gateway_id(VIRGINIA[1])) is Health.UP  # carried over by the reload
    assert only_invite_to(h.feed(invite(), PBX), VIRGINIA[1])


def test_core_refuses_a_monitor_of_another_pool() -> None:
    h = ProxyHarness()
    other = GatewayPool(h.pool.groups, h.pool.policy, now=h.now)
    with pytest.raises(ValueError, match="own pool"):
        ProxyCore(h.settings, other, monitor=h.monitor)


# ---------------------------------------------------------------------------- malformed input


@pytest.mark.parametrize("mutate,status", [
    (lambda d: d.replace(b"SIP/2.0\r\n", b"SIP/7.0\r\n", 1), 505),
    (lambda d: d.replace(b"CSeq: 1 INVITE", b"CSeq: 1 OPTIONS"), 400),
    (lambda d: d.replace(b"Content-Length: %d" % len(SDP), b"Content-Length: 9999"), 400),
])
def test_malformed_request_answered_with_error_status(h: ProxyHarness, mutate, status) -> None:  # type: ignore[no-untyped-def]
    data = invite()
    out = h.feed(mutate(data), PBX)
    assert [(s.dest, status_of(s)) for s in out] == [(PBX, status)]
    assert calls(out) == []
    assert [type(e) for e in h.events] == [RequestRejected]


def test_malformed_request_from_stranger_dropped_silently(h: ProxyHarness) -> None:
    bad = invite().replace(b"SIP/2.0\r\n", b"SIP/7.0\r\n", 1)
    assert h.feed(bad, STRANGER) == []
    assert h.core.stats.unknown_source_dropped == 1


def test_request_without_mandatory_headers_answered_400_naming_them(h: ProxyHarness) -> None:
    # Issue 13: a Via is enough to answer (it was dropped before); tests/proxy/test_malformed.py
    # has every header removed in turn.
    data = b"INVITE sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bK-x\r\n\r\n"
    out = h.feed(data, PBX)
    assert [(s.dest, first_line(s.data)) for s in out] == [
        (PBX, b"SIP/2.0 400 Missing To, From, Call-ID, CSeq")]
    assert h.core.stats.parse_errors == 1


def test_request_without_any_via_dropped(h: ProxyHarness) -> None:
    data = (b"INVITE sip:x@127.0.0.1 SIP/2.0\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:x@127.0.0.1>\r\n"
            b"Call-ID: nv\r\nCSeq: 1 INVITE\r\n\r\n")
    assert h.feed(data, PBX) == []
    assert h.core.stats.parse_errors == 1


def test_unparseable_response_dropped_and_counted(h: ProxyHarness) -> None:
    out = h.feed(b"SIP/2.0 4294967301 Huge\r\nVia: SIP/2.0/UDP 127.0.0.3:5060\r\n\r\n", VIRGINIA[0])
    assert out == []
    assert h.core.stats.parse_errors == 1
    assert isinstance(h.events[-1], MessageDropped)


def _corpus_root() -> Path:
    env = os.environ.get("SIPEDGE_CORPUS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "corpus"


CORPUS = sorted((_corpus_root() / "rfc4475").rglob("*.sip")) + sorted(
    (_corpus_root() / "rfc5118").glob("*/*.sip"))


@pytest.mark.parametrize("peer", [PBX, VIRGINIA[0]], ids=["pbx", "gateway"])
def test_corpus_messages_never_raise_from_receive(peer: Endpoint) -> None:
    h = ProxyHarness()
    h.bring_up()
    for path in CORPUS:
        h.feed(path.read_bytes(), peer)
        h.advance(1)
    h.advance(100)
    assert not any(isinstance(e, Exception) for e in h.events)


# ---------------------------------------------------------------------------- memory


def test_tables_empty_after_calls_complete_and_timers_run_out(h: ProxyHarness) -> None:
    # A completed call, a rejected one, a failed-over one, a cancelled one, an inbound one.
    def placed(n: int) -> tuple[bytes, Endpoint]:
        out = calls(h.feed(invite(n), PBX))
        assert len(out) == 1, out
        return out[0].data, out[0].dest

    fwd, gw = placed(1)
    h.feed(make_response(fwd, 180, b"Ringing"), gw)
    h.feed(make_response(fwd, 200, b"OK"), gw)
    fwd, gw = placed(2)
    h.feed(make_response(fwd, 486, b"Busy"), gw)
    fwd, gw = placed(3)
    out = h.feed(make_response(fwd, 500, b"Err"), gw)
    retry = calls(out)[0]
    h.feed(make_response(retry.data, 200, b"OK"), retry.dest)
    fwd4, gw4 = placed(4)
    h.feed(make_response(fwd4, 180, b"Ringing"), gw4)
    out = h.feed(cancel(4), PBX)
    h.feed(make_response(calls(out, b"CANCEL")[0].data, 200, b"OK"), gw4)
    h.feed(make_response(fwd4, 487, b"Terminated"), gw4)
    out = h.feed(inbound_invite(), VIRGINIA[0])
    h.feed(make_response(calls(out)[0].data, 603, b"Decline"), CALLEE)
    h.feed(options_to_us(), PBX)
    h.advance(64 * 0.5 + 40)
    core = h.core
    assert core._contexts == {}
    assert core._branches == {}
    assert core._branches_by_dest == {}
    monitor = h.monitor
    assert monitor is not None
    assert monitor.in_flight <= 6  # at most one probe per gateway
    assert len(core._heap) + monitor.timer_entries <= 6


def test_timer_c_cancels_branch_ringing_without_final(h: ProxyHarness) -> None:
    # RFC 3261 §16.6 step 11: Timer C (> 3 min) then CANCEL; no final 64*T1 later → 408.
    _, fwd = place(h)
    h.feed(make_response(fwd, 180, b"Ringing"), VIRGINIA[0])
    out = h.advance(179)
    assert calls(out, b"CANCEL") == []
    out = h.advance(2)
    assert [s.dest for s in calls(out, b"CANCEL")][:1] == [VIRGINIA[0]]
    out = h.advance(40)
    assert {status_of(s) for s in responses(out) if s.dest == PBX} == {408}
    h.advance(40)
    assert h.core._contexts == {} and h.core._branches == {}


def test_cancel_without_487_from_gateway_answers_487_after_64_t1(h: ProxyHarness) -> None:
    # RFC 3261 §9.1: no final response 64*T1 after the CANCEL ends the branch.
    _, fwd = place(h)
    h.feed(make_response(fwd, 180, b"Ringing"), VIRGINIA[0])
    h.feed(cancel(), PBX)
    out = h.advance(31)
    assert responses(out) == []
    out = h.advance(2)
    assert {status_of(s) for s in responses(out) if s.dest == PBX} == {487}
    h.advance(40)
    assert h.core._contexts == {} and h.core._branches == {}


def test_late_provisional_on_abandoned_branch_is_cancelled(h: ProxyHarness) -> None:
    _, first = place(h)
    h.advance(4.1)  # failed over to the second gateway
    out = h.feed(make_response(first, 180, b"Ringing"), VIRGINIA[0])
    assert [s.dest for s in calls(out, b"CANCEL")] == [VIRGINIA[0]]
    assert responses(out) == []  # the abandoned branch's 180 does not go upstream


def test_2xx_retransmission_after_transaction_end_relayed_statelessly(h: ProxyHarness) -> None:
    _, fwd = place(h)
    ok = make_response(fwd, 200, b"OK")
    h.feed(ok, VIRGINIA[0])
    h.advance(64 * 0.5 + 40)
    assert h.core._contexts == {}
    out = h.feed(ok, VIRGINIA[0])  # the gateway still has not seen the ACK
    assert [(s.dest, s.local, status_of(s)) for s in out] == [(PBX, INSIDE, 200)]


def _forged_2xx(upstream: bytes) -> bytes:
    return (b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.3:5060;branch=z9hG4bK-seforged\r\n"
            b"Via: SIP/2.0/UDP " + upstream + b";branch=z9hG4bKx\r\n"
            b"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: forged\r\n"
            b"CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")


@pytest.mark.parametrize("peer,upstream", [
    (STRANGER, b"127.0.0.1:5060"),  # forged by a stranger
    (VIRGINIA[0], b"198.51.100.7:5060"),  # toward an address that is no party of ours
    (VIRGINIA[0], b"255.255.255.255"),  # RFC 4475 §3.3.10 bcast
])
def test_stray_2xx_not_relayed_for_strangers_or_foreign_targets(
        h: ProxyHarness, peer: Endpoint, upstream: bytes) -> None:
    assert h.feed(_forged_2xx(upstream), peer) == []
    assert h.core.stats.stray_responses == 1


def test_bye_from_pbx_callee_routed_to_twilio(h: ProxyHarness) -> None:
    bye = in_dialog(b"BYE", b"sip:+1@127.0.0.64:5060",
                    [b"<sip:127.0.0.1:5080;lr>", b"<sip:127.0.0.3:5060;lr>"],
                    b"SIP/2.0/UDP 127.0.0.10:5060;branch=z9hG4bK-callee-bye",
                    from_=b"<sip:pbx@127.0.0.10>;tag=a", to_=b"<sip:x@y>;tag=b")
    out = h.feed(bye, CALLEE)
    assert [(s.dest, s.local) for s in calls(out, b"BYE")] == [(VIRGINIA[0], OUTSIDE)]


def test_gauges_count_live_transactions(h: ProxyHarness) -> None:
    _, fwd = place(h, 41)
    stats = h.core.refresh_gauges()
    assert stats.server_transactions == 1 and stats.client_transactions >= 1
    h.feed(make_response(fwd, 486, b"Busy"), VIRGINIA[0])
    h.advance(64 * 0.5 + 40)
    stats = h.core.refresh_gauges()
    assert stats.server_transactions == 0


def test_probe_results_of_a_sharing_monitor_give_a_monitorless_core_the_same_health() -> None:
    # N workers: worker 0's core probes and its shell forwards the results to the others.
    prober = ProxyHarness(share_results=True)
    worker = ProxyHarness(probing=False, clock=prober.clock)
    prober.bring_up(VIRGINIA[:2])
    results = prober.core.drain_probe_results()
    assert results and prober.core.drain_probe_results() == []
    for gateway_id, result in results:
        worker.core.observe_probe(gateway_id, result, prober.now)
    for gw in (*VIRGINIA, *OREGON):
        assert worker.state(gw) is prober.state(gw), gw
    assert worker.state(VIRGINIA[0]) is Health.UP
    assert worker.core.drain_probe_results() == []  # no monitor: nothing to share


def test_probe_results_not_kept_without_share_results() -> None:
    h = ProxyHarness()
    h.bring_up(VIRGINIA)
    assert h.core.drain_probe_results() == []


# ---------------------------------------------------------------------------- a worker of N

#: Worker 0 of 2 (port_stride 100): its own endpoints, and worker 1's.
OWN_INSIDE = Endpoint("udp", "127.0.0.1", 5180)
OWN_OUTSIDE = Endpoint("udp", "127.0.0.3", 5160)
SIBLING_OUTSIDE = Endpoint("udp", "127.0.0.3", 5260)
SIBLING_INSIDE = Endpoint("udp", "127.0.0.1", 5280)


@pytest.fixture
def w() -> ProxyHarness:
    """Worker 0 of 2, its gateways all UP (it is the worker that probes)."""
    harness = ProxyHarness(worker=WorkerPlace(0, 2))
    harness.bring_up()
    return harness


def test_worker_settings_name_its_own_endpoints_and_its_siblings(w: ProxyHarness) -> None:
    assert dict(w.settings.own) == {INSIDE: OWN_INSIDE, OUTSIDE: OWN_OUTSIDE}
    assert set(w.settings.siblings) == {OWN_INSIDE, OWN_OUTSIDE, SIBLING_INSIDE, SIBLING_OUTSIDE}


def test_worker_forwards_invite_from_its_own_port_named_in_via_and_record_route(
        w: ProxyHarness) -> None:
    out = w.feed(invite(), PBX)  # on the shared inside listener
    trying = responses(out, 100)
    assert [(s.dest, s.local) for s in trying] == [(PBX, INSIDE)]  # answered where it came in
    fwd = calls(out)
    assert [(s.dest, s.local) for s in fwd] == [(VIRGINIA[0], OWN_OUTSIDE)]
    assert headers(fwd[0].data, b"Via")[0].startswith(b"SIP/2.0/UDP 127.0.0.3:5160;branch=z9hG4bK-se")
    # Both entries of the double Record-Route name this worker: Twilio's in-dialog requests
    # come to 5160, the PBX's to 5180.
    assert headers(fwd[0].data, b"Record-Route") == [b"<sip:127.0.0.3:5160;lr>",
                                                     b"<sip:127.0.0.1:5180;lr>"]


def test_worker_matches_a_response_arriving_on_its_own_port(w: ProxyHarness) -> None:
    _, fwd = place(w)
    out = w.feed(make_response(fwd, 180, b"Ringing"), VIRGINIA[0], local=OWN_OUTSIDE)
    assert [(s.dest, s.local, status_of(s)) for s in out] == [(PBX, INSIDE, 180)]
    out = w.feed(make_response(fwd, 200, b"OK"), VIRGINIA[0], local=OWN_OUTSIDE)
    assert [(s.dest, s.local, status_of(s)) for s in out] == [(PBX, INSIDE, 200)]
    assert w.core.stats.stray_responses == 0
    assert w.core.calls_in_progress == 1


def test_worker_inbound_invite_goes_to_the_pbx_from_its_own_inside_port(w: ProxyHarness) -> None:
    out = w.feed(inbound_invite(), VIRGINIA[0])
    fwd = calls(out)
    assert [(s.dest, s.local) for s in fwd] == [(CALLEE, OWN_INSIDE)]
    assert headers(fwd[0].data, b"Via")[0].startswith(b"SIP/2.0/UDP 127.0.0.1:5180;branch=z9hG4bK-se")
    assert headers(fwd[0].data, b"Record-Route") == [b"<sip:127.0.0.1:5180;lr>",
                                                     b"<sip:127.0.0.3:5160;lr>"]
    out = w.feed(make_response(fwd[0].data, 180, b"Ringing"), CALLEE, local=OWN_INSIDE)
    assert [(s.dest, s.local, status_of(s)) for s in out] == [(VIRGINIA[0], OUTSIDE, 180)]


def test_worker_takes_a_bye_routed_through_a_siblings_port_as_ours(w: ProxyHarness) -> None:
    # A BYE from Twilio for a call worker 1 Record-Routed, arriving here (steered, or a
    # stale path): worker 1's endpoints are this proxy, popped like our own.
    bye = in_dialog(b"BYE", b"sip:pbx@127.0.0.10:5060",
                    [b"<sip:127.0.0.3:5260;lr>", b"<sip:127.0.0.1:5280;lr>"],
                    b"SIP/2.0/UDP 127.0.0.64:5060;branch=z9hG4bK-gw-bye",
                    from_=b"<sip:+14155550100@twilio>;tag=gwtag",
                    to_=b"<sip:pbx@127.0.0.1>;tag=pbxtag1")
    out = w.feed(bye, VIRGINIA[0], local=OWN_OUTSIDE)
    fwd = calls(out, b"BYE")
    assert [(s.dest, s.local) for s in fwd] == [(CALLEE, OWN_INSIDE)]
    assert headers(fwd[0].data, b"Route") == []
    assert w.core.stats.loops_detected == 0


def test_worker_refuses_to_route_to_a_siblings_port(w: ProxyHarness) -> None:
    # Nothing left to route by but worker 1's own address: that is ourselves, not a hop.
    bye = in_dialog(b"BYE", b"sip:127.0.0.3:5260", [],
                    b"SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-pbx-bye2",
                    from_=b"<sip:pbx@127.0.0.1>;tag=pbxtag1",
                    to_=b"<sip:+14155550100@127.0.0.1>;tag=gwtag")
    out = w.feed(bye, PBX)
    assert calls(out, b"BYE") == []
    assert [(s.dest, status_of(s)) for s in responses(out)] == [(PBX, 404)]


def test_worker_own_ports_are_on_the_side_of_their_shared_listener(w: ProxyHarness) -> None:
    # The PBX on the worker's outside port, a gateway on its inside port: wrong side, as on
    # the shared listeners.
    assert w.feed(invite(2), PBX, local=OWN_OUTSIDE) == []
    assert w.feed(inbound_invite(), VIRGINIA[0], local=OWN_INSIDE) == []
    assert w.core.stats.drops[DropReason.WRONG_SIDE] == 2
    assert w.core.is_answerable(PBX, OWN_INSIDE, w.now)
    assert not w.core.is_answerable(PBX, OWN_OUTSIDE, w.now)
    assert w.core.is_answerable(VIRGINIA[0], OWN_OUTSIDE, w.now)
    assert not w.core.is_answerable(VIRGINIA[0], OWN_INSIDE, w.now)
    assert calls(w.feed(invite(3), PBX, local=OWN_INSIDE))  # the right side: forwarded


def test_worker_probes_leave_from_its_own_outside_port() -> None:
    harness = ProxyHarness(worker=WorkerPlace(0, 2))
    probes = calls(harness.start(), b"OPTIONS")
    assert {s.local for s in probes} == {OWN_OUTSIDE} and len(probes) == 6
    for s in probes:
        assert headers(s.data, b"Via")[0].startswith(b"SIP/2.0/UDP 127.0.0.3:5160;")


def test_worker_reconfigure_applies_new_own_endpoints(w: ProxyHarness) -> None:
    other = build_settings(replace(w.config, process=ProcessConfig(workers=2, port_stride=7)),
                           WorkerPlace(1, 2))
    w.core.reconfigure(other, w.pool, w.now)
    assert w.core.listeners.egress(outside=True, transport="udp") == Endpoint("udp", "127.0.0.3", 5074)
    assert w.monitor is not None
    assert w.monitor.settings.sources["udp"] == Endpoint("udp", "127.0.0.3", 5074)
    _, fwd = place(w, 4)
    assert headers(fwd, b"Via")[0].startswith(b"SIP/2.0/UDP 127.0.0.3:5074;")
    assert headers(fwd, b"Record-Route") == [b"<sip:127.0.0.3:5074;lr>", b"<sip:127.0.0.1:5094;lr>"]
    # The old ports are no longer ours: a Route naming one is a hop like any other.
    assert not w.core.listeners.is_own_endpoint(OWN_OUTSIDE)
    assert w.core.listeners.is_own_endpoint(Endpoint("udp", "127.0.0.3", 5067))  # worker 0 now


def test_worker_on_a_listener_facing_both_sides_record_routes_once() -> None:
    # One shared socket for the PBX and Twilio: the request comes in on it and leaves from
    # the worker's alias of it, which Record-Routes with the alias's value: one entry, as a
    # single process on one socket makes.
    alias = Endpoint("udp", "127.0.0.1", 5180)
    harness = ProxyHarness(probing=False, settings_overrides={
        "outside": (INSIDE,), "own": {INSIDE: alias}, "siblings": (alias,)})
    for gw in VIRGINIA:
        harness.core.observe_probe(harness.gateway_id(gw), Replied(200, 0.01), harness.now)
        harness.core.observe_probe(harness.gateway_id(gw), Replied(200, 0.01), harness.now)
    fwd = calls(harness.feed(invite(), PBX))
    assert [(s.dest, s.local) for s in fwd] == [(VIRGINIA[0], alias)]
    assert headers(fwd[0].data, b"Record-Route") == [b"<sip:127.0.0.1:5180;lr>"]


def test_single_process_settings_have_no_own_endpoints(h: ProxyHarness) -> None:
    assert h.settings.own == {} and h.settings.siblings == ()
    assert h.core.listeners.egress(outside=True, transport="udp") == OUTSIDE
