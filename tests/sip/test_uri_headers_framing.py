"""Unit tests of sipedge.sip.uri, .headers and .framing."""

from __future__ import annotations

import pytest

from sipedge.sip import (
    ParseError,
    StreamFramer,
    make_branch,
    parse_name_addr,
    parse_uri,
    parse_via,
    uri_equal,
)
from sipedge.sip.headers import parse_retry_after


def test_uri_parts_and_exact_round_trip() -> None:
    raw = b"sips:alice:pw@[2001:db8::1]:5061;transport=tls;lr;edge=ashburn?subject=hi"
    u = parse_uri(raw)
    assert bytes(u) == raw
    assert (u.scheme, u.user, u.password, u.host, u.port) == (b"sips", b"alice", b"pw", b"[2001:db8::1]", 5061)
    assert u.param(b"transport") == b"tls" and u.has_param(b"lr") and u.param(b"edge") == b"ashburn"
    assert u.headers == ((b"subject", b"hi"),)


def test_uri_with_host_splices() -> None:
    u = parse_uri(b"sip:+14155550142@example.sip.twilio.com;user=phone")
    assert u.with_host(b"example.sip.ashburn-ix.twilio.com") == (
        b"sip:+14155550142@example.sip.ashburn-ix.twilio.com;user=phone"
    )
    assert u.with_host(b"h", 5080) == b"sip:+14155550142@h:5080;user=phone"
    assert parse_uri(b"sip:h;lr;tnx=1;edge=x").without_params(frozenset({b"tnx", b"edge"})) == b"sip:h;lr"


@pytest.mark.parametrize("raw", [b"sip:2001:db8::10", b"sip:a@b c", b"sip:a@[::1", b"sip:h;;lr", b"x"])
def test_uri_rejects(raw: bytes) -> None:
    with pytest.raises(ParseError):
        parse_uri(raw)


def test_tel_uri() -> None:
    u = parse_uri(b"tel:+1-415-555-0100;phone-context=example.com")
    assert u.user == b"+1-415-555-0100" and u.param(b"phone-context") == b"example.com"


@pytest.mark.parametrize(
    ("a", "b", "eq"),
    [
        (b"sip:%61lice@atlanta.com;transport=TCP", b"sip:alice@AtLanTa.CoM;Transport=tcp", True),
        (b"sip:carol@chicago.com", b"sip:carol@chicago.com;newparam=5", True),
        (b"sip:alice@atlanta.com", b"sip:alice@atlanta.com:5060", False),
        (b"sip:ALICE@AtLanTa.CoM", b"sip:alice@atlanta.com", False),
        (b"sip:bob@biloxi.com", b"sips:bob@biloxi.com", False),
        (b"sip:carol@chicago.com", b"sip:carol@chicago.com;security=on", True),
        (b"sip:carol@chicago.com;security=off", b"sip:carol@chicago.com;security=on", False),
        (b"sip:bob@biloxi.com;transport=udp", b"sip:bob@biloxi.com", False),
        (b"sip:carol@chicago.com?Subject=next%20meeting", b"sip:carol@chicago.com?Subject=next meeting2", False),
    ],
)
def test_uri_equal_rfc3261_19_1_4(a: bytes, b: bytes, eq: bool) -> None:
    assert uri_equal(a, b) is eq


def test_via_with_lws_and_ipv6() -> None:
    v = parse_via(b"SIP  / 2.0  / TCP     spindle.example.com   ;\r\n  branch  =   z9hG4bK9ikj8  ")
    assert v.transport == b"TCP" and v.host == b"spindle.example.com" and v.branch == b"z9hG4bK9ikj8"
    v6 = parse_via(b"SIP/2.0/UDP [2001:db8::9:1]:5070;received=[2001:db8::9:255];branch=z9hG4bKx")
    assert v6.host == b"[2001:db8::9:1]" and v6.port == 5070 and v6.sent_by == b"[2001:db8::9:1]:5070"


@pytest.mark.parametrize("value", [b"SIP/2.0/UDP 192.0.2.15;;", b"SIP/2.0/UDP", b"SIP/3.0/UDP h", b"SIP/2.0/UDP h;branch="])
def test_via_rejects(value: bytes) -> None:
    with pytest.raises(ParseError):
        parse_via(value)


def test_name_addr_forms() -> None:
    assert parse_name_addr(b'"A \\"B\\"" <sip:a@b>;tag=x').tag == b"x"
    assert parse_name_addr(b"caller<sip:caller@example.com>;tag=323").display == b"caller"
    assert parse_name_addr(b"sip:a@b ; tag = 9").tag == b"9"
    for bad in (b'"open <sip:a@b>', b"Bell, Alexander <sip:a@b>", b"< sip:a@b >", b"sip:a@b?x=y"):
        with pytest.raises(ParseError):
            parse_name_addr(bad)


@pytest.mark.parametrize(("value", "seconds"), [
    (b"120", 120.0), (b" 18000 (maintenance) ", 18000.0), (b"5;duration=3600", 5.0),
    (b"0", 0.0), (b"999999999", 999999999.0),
    (None, None), (b"", None), (b"soon", None), (b"-5", None), (b"1.5", None),
    (b"1000000000", None),  # ten digits: a typo, not advice to follow
])
def test_retry_after_is_delta_seconds_or_nothing(value: bytes | None,
                                                 seconds: float | None) -> None:
    # RFC 3261 §20.33: delta-seconds [comment] *(;param); advice, so malformed reads as absent.
    assert parse_retry_after(value) == seconds


def test_make_branch_is_stable_and_has_cookie() -> None:
    a = make_branch(b"z9hG4bK1", b"call", b"1")
    assert a.startswith(b"z9hG4bK") and a == make_branch(b"z9hG4bK1", b"call", b"1")
    assert a != make_branch(b"z9hG4bK1", b"cal", b"l1")


MSG = (b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\n"
       b"To: <sip:x>\r\nCall-ID: k\r\nCSeq: 1 OPTIONS\r\nContent-Length: 3\r\n\r\nabc")


def test_framer_pipelined_pings_and_partial() -> None:
    f = StreamFramer()
    f.feed(b"\r\n\r\n" + MSG + MSG[:10])
    assert f.next_message() == MSG and f.pings == 1
    assert f.next_message() is None
    f.feed(MSG[10:])
    assert f.next_message() == MSG
    assert f.next_message() is None


def test_framer_byte_at_a_time_is_linear() -> None:
    f = StreamFramer()
    out = []
    for b in MSG * 3:
        f.feed(bytes([b]))
        m = f.next_message()
        if m is not None:
            out.append(m)
    assert out == [MSG] * 3


@pytest.mark.parametrize(("msg", "status"), [
    (MSG.replace(b"Content-Length: 3\r\n", b""), 400),
    (MSG.replace(b"Content-Length: 3", b"Content-Length: -3"), 400),
    (MSG.replace(b"Content-Length: 3", b"Content-Length: 3\r\nl: 4"), 400),
])
def test_framer_unrecoverable(msg: bytes, status: int) -> None:
    f = StreamFramer()
    f.feed(msg)
    with pytest.raises(ParseError) as exc:
        f.next_message()
    assert exc.value.status == status


def test_framer_max_size() -> None:
    f = StreamFramer(max_message=64)
    f.feed(b"X" * 100)
    with pytest.raises(ParseError):
        f.next_message()


def test_framer_header_block_without_end_past_max_raises_and_stays_bounded() -> None:
    # Slowloris with a header block that never ends: the buffer must not grow past max.
    f = StreamFramer(max_message=256)
    f.feed(b"OPTIONS sip:x SIP/2.0\r\n")
    assert f.next_message() is None and f.in_message
    raised = None
    for _ in range(100):
        f.feed(b"X-Pad: " + b"a" * 25 + b"\r\n")
        try:
            assert f.next_message() is None
        except ParseError as exc:
            raised = exc
            break
        assert f.buffered <= 256
    assert raised is not None and raised.status == 513
    assert f.pending_head() is None  # no CRLF CRLF: no header block to answer from


def test_framer_content_length_past_max_raises_with_head_known() -> None:
    f = StreamFramer(max_message=256)
    big = MSG.replace(b"Content-Length: 3", b"Content-Length: 100000")[:-3]
    f.feed(big)
    with pytest.raises(ParseError) as exc:
        f.next_message()
    assert exc.value.status == 513
    assert f.pending_head() == big  # the whole header block, to copy Via/From/To… from


def test_framer_in_message_only_between_first_byte_and_last() -> None:
    f = StreamFramer()
    f.feed(b"\r\n\r\n\r")  # keep-alives (and half a CRLF) are not a message
    assert f.next_message() is None and not f.in_message and f.pending_head() is None
    f.feed(b"\n" + MSG[:5])
    assert f.next_message() is None and f.in_message
    f.feed(MSG[5:-1])
    assert f.next_message() is None and f.in_message
    assert f.pending_head() == MSG[:-3]
    f.feed(MSG[-1:])
    assert f.next_message() == MSG and not f.in_message and f.pending_head() is None
