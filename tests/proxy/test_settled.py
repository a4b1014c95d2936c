"""Answered transactions held for their wait timers as small records (issue 14).

After the final response, RFC 3261/6026 keep a transaction 64*T1 (32 s) over UDP only to
absorb retransmissions. The core then keeps a ``_Settled`` record per server transaction
and a key per non-INVITE client transaction in Timer K; the INVITE branch goes at the 2xx
(its retransmissions take the stateless path). These tests hold the behaviour the full
transactions had: retransmissions absorbed or answered the same, a late CANCEL answered
200, 2xx retransmissions relayed; and the tables empty when the timers run out.
"""

from __future__ import annotations

import gc
import tracemalloc

from tests.helpers.wire import (
    PBX,
    VIRGINIA,
    ProxyHarness,
    calls,
    first_line,
    header,
    make_response,
    responses,
    status_of,
)
from tests.proxy.test_accounting import bye
from tests.proxy.test_core import cancel, h, invite, place  # noqa: F401 - h is a fixture

GW = VIRGINIA[0]


def answered(h: ProxyHarness) -> tuple[bytes, bytes]:  # noqa: F811 - h is the fixture's
    data, fwd = place(h)
    out = h.feed(make_response(fwd, 200, b"OK"), GW)
    assert [(s.dest, status_of(s)) for s in out] == [(PBX, 200)]
    return data, fwd


def test_answered_invite_leaves_one_small_record_and_no_context(h: ProxyHarness) -> None:  # noqa: F811
    answered(h)
    core = h.core
    assert core._contexts == {} and core._branches == {}
    assert len(core._accepted) == 1 and core._settled == {}
    assert next(iter(core._accepted.values())).startswith(b"se")  # our To tag
    h.advance(31)
    assert len(core._accepted) == 1  # Timer L: 64*T1 = 32 s
    h.advance(2)
    assert core._accepted == {} and not core._wait_lane


def test_invite_retransmitted_after_the_2xx_is_absorbed(h: ProxyHarness) -> None:  # noqa: F811
    data, _ = answered(h)
    absorbed = h.core.stats.retransmissions_absorbed
    assert h.feed(data, PBX) == []
    assert h.core.stats.retransmissions_absorbed == absorbed + 1


def test_late_cancel_gets_200_with_our_tag_and_goes_nowhere(h: ProxyHarness) -> None:  # noqa: F811
    answered(h)
    out = h.feed(cancel(), PBX)
    assert [(s.dest, first_line(s.data)) for s in out] == [(PBX, b"SIP/2.0 200 OK")]
    assert header(out[0].data, b"CSeq") == b"1 CANCEL"
    assert b";tag=" in (header(out[0].data, b"To") or b"")
    assert calls(out, b"CANCEL") == []


def test_gateway_2xx_retransmission_is_relayed_upstream(h: ProxyHarness) -> None:  # noqa: F811
    _, fwd = answered(h)
    again = h.feed(make_response(fwd, 200, b"OK"), GW)
    assert [(s.dest, status_of(s)) for s in again] == [(PBX, 200)]
    assert b"branch=z9hG4bK-pbx-1;" in (header(again[0].data, b"Via") or b"")


def test_bye_retransmission_gets_the_same_200_and_its_retransmitted_200_is_absorbed(
        h: ProxyHarness) -> None:  # noqa: F811
    answered(h)
    out = bye(h)
    fwd_bye = calls(out, b"BYE")
    assert [s.dest for s in fwd_bye] == [GW]
    ok = make_response(fwd_bye[0].data, 200, b"OK")
    relayed = responses(h.feed(ok, GW), 200)
    assert [s.dest for s in relayed] == [PBX]
    core = h.core
    assert core._contexts == {} and core._branches == {}
    assert len(core._absorbing) == 1  # the BYE's client side: Timer K
    again = bye(h)
    assert [(s.dest, s.data) for s in again] == [(PBX, relayed[0].data)]
    absorbed = core.stats.retransmissions_absorbed
    assert h.feed(ok, GW) == []
    assert core.stats.retransmissions_absorbed == absorbed + 1
    h.advance(6)  # T4 = 5 s
    assert core._absorbing == set()
    h.advance(30)
    assert core._settled == {} and core._accepted == {}
    assert h.feed(ok, GW) == []  # now a stray response: still nothing sent


def test_a_held_call_costs_under_two_kilobytes(h: ProxyHarness) -> None:  # noqa: F811
    """The whole footprint of 200 answered, hung-up calls inside their wait timers."""
    answered(h)  # warm caches (tags, the direction table, histograms)
    bye(h)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for n in range(2, 202):
            h.advance(0.05)  # 20 calls/s: under the call caps
            [sent] = calls(h.feed(invite(n), PBX))
            h.feed(make_response(sent.data, 200, b"OK"), sent.dest)
            h.sent.clear()  # the harness's own record of what went out, and the events
            h.events.clear()
        gc.collect()
        held = tracemalloc.take_snapshot().compare_to(before, "filename")
    finally:
        tracemalloc.stop()
    per_call = sum(s.size_diff for s in held) / 200
    assert len(h.core._accepted) == 201
    assert per_call < 2048, per_call
