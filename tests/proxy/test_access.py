"""Access control (issue 13): each side's socket takes only that side's sources; no
product string leaves sipedge unless configured."""

from __future__ import annotations

from sipedge.proxy.events import DropReason
from sipedge.proxy.settings import RejectUnknown
from tests.helpers.wire import (
    CALLEE,
    INSIDE,
    OUTSIDE,
    PBX,
    STRANGER,
    VIRGINIA,
    ProxyHarness,
    calls,
    header,
    make_request,
)
from tests.proxy.test_admission import harness, options
from tests.proxy.test_core import invite


def test_pbx_request_on_the_outside_socket_is_dropped() -> None:
    h = ProxyHarness()
    h.bring_up()
    assert h.feed(invite(), PBX, local=OUTSIDE) == []
    assert h.core.stats.drops[DropReason.WRONG_SIDE] == 1
    assert len(calls(h.feed(invite(2), PBX, local=INSIDE))) == 1  # its own side works


def test_gateway_request_on_the_inside_socket_is_dropped() -> None:
    h = ProxyHarness()
    h.bring_up()
    data = make_request(b"INVITE", b"sip:+14155550100@127.0.0.3:5060",
                        via=[b"SIP/2.0/UDP 127.0.0.64:5060;branch=z9hG4bK-gw-side"],
                        call_id=b"side@twilio")
    assert h.feed(data, VIRGINIA[0], local=INSIDE) == []
    assert h.core.stats.drops[DropReason.WRONG_SIDE] == 1
    assert len(calls(h.feed(data, VIRGINIA[0], local=OUTSIDE))) == 1


def test_stranger_gets_nothing_on_either_socket() -> None:
    h = ProxyHarness()
    h.bring_up()
    for local in (INSIDE, OUTSIDE):
        assert h.feed(invite(3), STRANGER, local=local) == []
    assert h.core.stats.drops[DropReason.SOURCE_NOT_ALLOWED] == 2


def test_probes_carry_no_user_agent_by_default() -> None:
    h = ProxyHarness()
    probes = [s for s in h.start() if s.data.startswith(b"OPTIONS ")]
    h.advance(10)
    probes += [s for s in h.sent if s.data.startswith(b"OPTIONS ")]
    assert probes and all(header(s.data, b"User-Agent") is None for s in probes)
    assert all(header(s.data, b"Server") is None for s in h.sent)


def test_control_characters_in_call_id_are_answered_400() -> None:
    h = ProxyHarness()
    h.bring_up()
    for n, bad in enumerate((b"x\x1b[2J", b"x\x7f", b"x\xc3\xa9", b"x y")):
        data = make_request(b"INVITE", b"sip:+14155550100@127.0.0.1:5080",
                            via=[b"SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-cid%d" % n],
                            call_id=b"call" + bad)
        out = h.feed(data, PBX)
        assert calls(out) == [], bad
        assert [s.data.split(b"\r\n", 1)[0] for s in out] == [b"SIP/2.0 400 Bad Call-ID"], bad


def test_a_route_set_longer_than_any_path_is_answered_513_cheaply() -> None:
    h = ProxyHarness()
    h.bring_up()
    own = b", ".join([b"<sip:127.0.0.1:5080;lr>"] * 71)
    data = make_request(b"INVITE", b"sip:+14155550100@127.0.0.1:5080",
                        via=[b"SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-routes"],
                        call_id=b"routes", headers=[(b"Route", own)])
    out = h.feed(data, PBX)
    assert calls(out) == []
    assert [s.data.split(b"\r\n", 1)[0] for s in out] == [b"SIP/2.0 513 Too Many Route"]
    seventy = own.rsplit(b", ", 1)[0]
    ok = data.replace(own, seventy).replace(b"z9hG4bK-routes", b"z9hG4bK-routes70")
    assert len(calls(h.feed(ok, PBX))) == 1  # 70 (all ours, popped) still routes


def test_is_answerable_follows_the_side_rules_and_reject_unknown() -> None:
    # The query the stream transport asks before its own 513: the same verdicts as
    # receive() gives a message from that source on that listener, and no side effect.
    h = ProxyHarness()
    h.bring_up()
    now = h.now
    before = (dict(h.core.stats.drops), h.core.stats.unknown_source_dropped)
    assert h.core.is_answerable(PBX, INSIDE, now)
    assert not h.core.is_answerable(PBX, OUTSIDE, now)  # wrong side
    assert h.core.is_answerable(VIRGINIA[0], OUTSIDE, now)
    assert not h.core.is_answerable(VIRGINIA[0], INSIDE, now)  # wrong side
    assert not h.core.is_answerable(STRANGER, INSIDE, now)  # reject_unknown = "drop"
    assert not h.core.is_answerable(STRANGER, OUTSIDE, now)
    assert (dict(h.core.stats.drops), h.core.stats.unknown_source_dropped) == before
    assert h.core.drain_events() == [] and h.core.drain_outbox() == []
    forbidden = ProxyHarness(settings_overrides={"reject_unknown": RejectUnknown.FORBIDDEN})
    forbidden.bring_up()
    # As receive() answers a stranger's malformed request under "403" (the parse error).
    assert forbidden.core.is_answerable(STRANGER, INSIDE, forbidden.now)


def test_is_answerable_false_while_the_source_serves_a_ban() -> None:
    h = harness(source_rate_per_s=10.0, source_burst=2.0, ban_s=30.0)
    for i in range(3):
        h.feed(options(i), PBX)  # the third empties the bucket: banned
    assert not h.core.is_answerable(PBX, INSIDE, h.now)
    assert h.core.is_answerable(CALLEE, INSIDE, h.now)  # another inside source
    assert h.core.is_answerable(PBX, INSIDE, h.now + 31)  # the ban served
