"""Unit tests of sipedge.sip.message: parse strictness, accessors, transforms."""

from __future__ import annotations

import pytest

from sipedge.sip import (
    ForwardPlan,
    ParseError,
    ProtocolViolation,
    Request,
    Response,
    answer_parse_error,
    build_ack,
    build_cancel,
    build_request,
    build_response,
    call_id_of,
    forward_request,
    parse,
    strip_top_via,
)

INVITE = (
    b"INVITE sip:bob@example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.10:5060;rport;branch=z9hG4bK1\r\n"
    b"Max-Forwards: 70\r\n"
    b"Route: <sip:proxy.example.net;lr>, <sip:next.example.org;lr>\r\n"
    b"From: Alice <sip:alice@example.org>;tag=a1\r\n"
    b"To: <sip:bob@example.com>\r\n"
    b"Call-ID: c1@host\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Content-Length: 4\r\n"
    b"\r\n"
    b"abcd"
)


def req(data: bytes = INVITE) -> Request:
    msg = parse(data)
    assert isinstance(msg, Request)
    return msg


def test_parse_request_accessors() -> None:
    r = req()
    assert r.method == b"INVITE" and r.request_uri == b"sip:bob@example.com"
    assert r.max_forwards == 70 and r.call_id == b"c1@host"
    assert r.cseq.number == 1 and r.cseq.method == b"INVITE"
    assert r.top_via.branch == b"z9hG4bK1" and r.top_via.rport == b""
    assert r.from_tag == b"a1" and r.to_tag is None
    assert r.top_route == b"<sip:proxy.example.net;lr>"
    assert r.header_values(b"route") == [b"<sip:proxy.example.net;lr>", b"<sip:next.example.org;lr>"]
    assert r.body == b"abcd"


def test_parse_compact_and_case_insensitive_names() -> None:
    data = (
        b"OPTIONS sip:x@y SIP/2.0\r\nv: SIP/2.0/TCP h;branch=z9hG4bK2\r\nf: <sip:a@b>;tag=1\r\n"
        b"t: <sip:c@d>\r\ni: abc\r\ncSeQ: 2 OPTIONS\r\nl: 0\r\nMAX-FORWARDS: 5\r\n\r\n"
    )
    r = req(data)
    assert r.call_id == b"abc" and r.max_forwards == 5 and r.header(b"content-length") == b"0"


@pytest.mark.parametrize(
    ("cl", "status"),
    [(b"1_0", 400), (b" +12", 400), (b"-999", 400), (b"99", 400), (b"", 400)],
)
def test_content_length_strict(cl: bytes, status: int) -> None:
    data = INVITE.replace(b"Content-Length: 4", b"Content-Length: " + cl)
    with pytest.raises(ParseError) as exc:
        parse(data)
    assert exc.value.status == status


def test_body_beyond_content_length_is_ignored() -> None:
    r = req(INVITE + b"NOISE")
    assert r.body == b"abcd" and r.data == INVITE


def test_missing_blank_line_is_400() -> None:
    with pytest.raises(ParseError) as exc:
        parse(INVITE.split(b"\r\n\r\n")[0] + b"\r\n")
    assert exc.value.status == 400


def test_response_errors_are_drops() -> None:
    with pytest.raises(ParseError) as exc:
        parse(b"SIP/2.0 2000 OK\r\nVia: x\r\n\r\n")
    assert exc.value.drop


def test_version_505() -> None:
    with pytest.raises(ParseError) as exc:
        parse(INVITE.replace(b"SIP/2.0\r\n", b"SIP/3.0\r\n", 1))
    assert exc.value.status == 505


def test_bare_lf_rejected() -> None:
    # A structural rule, not framing: parse() frames the datagram, the first header
    # access (which validation always makes) builds the index and rejects it, and keeps
    # rejecting it on every later access.
    msg = parse(INVITE.replace(b"Call-ID: c1@host", b"Call-ID: c1\nVia: evil"))
    for access in (lambda: msg.header_lines(), lambda: msg.top_via, lambda: msg.call_id):
        with pytest.raises(ParseError) as exc:
            access()
        assert exc.value.status == 400


def test_folded_header_is_unfolded() -> None:
    r = req(INVITE.replace(b"Call-ID: c1@host", b"Call-ID:\r\n  c1@host"))
    assert r.call_id == b"c1@host"


def test_forward_request_full_plan() -> None:
    plan = ForwardPlan(
        via=b"SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKp",
        request_uri=b"sip:bob@b.example.com",
        record_route=(b"<sip:192.0.2.1;lr>",),
        pop_routes=1,
        received=b"203.0.113.9",
        rport=5999,
    )
    out = forward_request(req(), plan)
    assert out == (
        b"INVITE sip:bob@b.example.com SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKp\r\n"
        b"Record-Route: <sip:192.0.2.1;lr>\r\n"
        b"Via: SIP/2.0/UDP 192.0.2.10:5060;rport=5999;branch=z9hG4bK1;received=203.0.113.9\r\n"
        b"Max-Forwards: 69\r\n"
        b"Route: <sip:next.example.org;lr>\r\n"
        b"From: Alice <sip:alice@example.org>;tag=a1\r\n"
        b"To: <sip:bob@example.com>\r\n"
        b"Call-ID: c1@host\r\n"
        b"CSeq: 1 INVITE\r\n"
        b"Content-Length: 4\r\n"
        b"\r\n"
        b"abcd"
    )


@pytest.mark.parametrize(("mf", "out"), [(b"80", b"70"), (b"71", b"70"), (b"70", b"69"), (b"1", b"0")])
def test_forward_max_forwards_clamp(mf: bytes, out: bytes) -> None:
    data = INVITE.replace(b"Max-Forwards: 70", b"Max-Forwards: " + mf)
    fwd = forward_request(req(data), ForwardPlan(via=b"SIP/2.0/UDP h;branch=z9hG4bKx"))
    assert b"\r\nMax-Forwards: " + out + b"\r\n" in fwd


def test_forward_inserts_max_forwards_when_absent() -> None:
    data = INVITE.replace(b"Max-Forwards: 70\r\n", b"")
    fwd = parse(forward_request(req(data), ForwardPlan(via=b"SIP/2.0/UDP h;branch=z9hG4bKx")))
    assert isinstance(fwd, Request) and fwd.max_forwards == 70


def test_forward_refuses_max_forwards_zero() -> None:
    with pytest.raises(ProtocolViolation):
        forward_request(req(INVITE.replace(b"Forwards: 70", b"Forwards: 0")),
                        ForwardPlan(via=b"SIP/2.0/UDP h;branch=z9hG4bKx"))


def test_forward_pops_two_routes_across_lines() -> None:
    data = INVITE.replace(b"Route: <sip:proxy.example.net;lr>, <sip:next.example.org;lr>",
                          b"Route: <sip:p1;lr>\r\nRoute: <sip:p2;lr>, <sip:p3;lr>")
    fwd = parse(forward_request(req(data), ForwardPlan(via=b"SIP/2.0/UDP h;branch=z9hG4bKx",
                                                       pop_routes=2)))
    assert fwd.header_values(b"route") == [b"<sip:p3;lr>"]


def test_strip_top_via_from_list_and_line() -> None:
    resp = parse(b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b;branch=z9hG4bK2\r\n"
                 b"Via: SIP/2.0/UDP c;branch=z9hG4bK3\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\n"
                 b"Call-ID: x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")
    assert isinstance(resp, Response)
    once = parse(strip_top_via(resp))
    assert isinstance(once, Response)
    assert once.header_values(b"via") == [b"SIP/2.0/UDP b;branch=z9hG4bK2", b"SIP/2.0/UDP c;branch=z9hG4bK3"]
    twice = parse(strip_top_via(once))
    assert twice.header_values(b"via") == [b"SIP/2.0/UDP c;branch=z9hG4bK3"]


def test_build_response_adds_to_tag() -> None:
    out = parse(build_response(req(), 486, to_tag=b"srv"))
    assert isinstance(out, Response) and out.status == 486 and out.reason == b"Busy Here"
    assert out.to_tag == b"srv" and out.call_id == b"c1@host"
    trying = parse(build_response(req(), 100, to_tag=b"srv"))
    assert trying.to_tag is None


def test_build_cancel_and_ack() -> None:
    invite = req()
    cancel = parse(build_cancel(invite))
    assert isinstance(cancel, Request) and cancel.method == b"CANCEL"
    assert cancel.top_via.branch == b"z9hG4bK1" and cancel.cseq.number == 1
    assert cancel.header_values(b"route") == invite.header_values(b"route")
    resp = parse(build_response(invite, 487, to_tag=b"x"))
    assert isinstance(resp, Response)
    ack = parse(build_ack(invite, resp))
    assert isinstance(ack, Request) and ack.method == b"ACK" and ack.to_tag == b"x"


def test_build_request_parses() -> None:
    data = build_request(b"OPTIONS", b"sip:gw", via=b"SIP/2.0/UDP h;branch=z9hG4bKq",
                         from_=b"<sip:p@h>;tag=1", to=b"<sip:gw>", call_id=b"k", cseq=7)
    r = req(data)
    assert r.max_forwards == 70 and r.cseq.number == 7


def test_answer_parse_error() -> None:
    bad = INVITE.replace(b"Content-Length: 4", b"Content-Length: 40")
    with pytest.raises(ParseError) as exc:
        parse(bad)
    out = answer_parse_error(bad, exc.value, to_tag=b"t")
    assert out is not None
    resp = parse(out)
    assert isinstance(resp, Response) and resp.status == 400 and resp.to_tag == b"t"
    assert answer_parse_error(b"garbage", ParseError(400, "x")) is None


@pytest.mark.parametrize("vias,expected", [
    (b"Via: SIP/2.0/UDP a;branch=z9hG4bK1\r\nVia: SIP/2.0/UDP b;branch=z9hG4bK2\r\n", True),
    (b"Via: SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b;branch=z9hG4bK2\r\n", True),
    (b"Via: SIP/2.0/UDP a;branch=z9hG4bK1\r\n", False),
    (b'Via: SIP/2.0/UDP a;branch=z9hG4bK1;x="1,2"\r\n', False),  # a comma inside quotes
])
def test_has_next_via_agrees_with_via_count(vias: bytes, expected: bool) -> None:
    data = (b"SIP/2.0 180 Ringing\r\n" + vias + b"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\n"
            b"Call-ID: x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")
    msg = parse(data)
    assert msg.has_next_via is expected
    assert (msg.via_count > 1) is expected


# -- call_id_of: the Call-ID by byte search (worker steering) -------------------------------


def test_call_id_of_usual_spelling_equals_the_parsed_value() -> None:
    assert call_id_of(INVITE) == b"c1@host" == req().call_id


@pytest.mark.parametrize("line", [
    b"i: c1@host", b"I: c1@host", b"call-id: c1@host", b"CALL-ID: c1@host", b"Call-Id: c1@host",
    b"cAlL-iD: c1@host", b"Call-ID : c1@host", b"Call-ID\t:c1@host", b"i :\t c1@host \t",
    b"Call-ID:c1@host", b"Call-ID:   c1@host  ",
])
def test_call_id_of_other_spellings_and_whitespace(line: bytes) -> None:
    data = INVITE.replace(b"Call-ID: c1@host", line)
    assert call_id_of(data) == b"c1@host" == req(data).call_id


def test_call_id_of_folded_value_is_unfolded_like_the_index() -> None:
    for fold in (b"Call-ID:\r\n c1@host", b"i:\r\n\t c1@host\r\n  ", b"call-id: c1\r\n @host"):
        data = INVITE.replace(b"Call-ID: c1@host", fold)
        assert call_id_of(data) == req(data).call_id


def test_call_id_of_response() -> None:
    resp = (b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bK1\r\n"
            b"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\ni: r-7@h\r\nCSeq: 1 INVITE\r\n"
            b"Content-Length: 0\r\n\r\n")
    assert call_id_of(resp) == b"r-7@h"
    assert call_id_of(resp.replace(b"i: ", b"Call-ID: ")) == b"r-7@h"


def test_call_id_of_never_reads_the_body() -> None:
    # A message/sipfrag (or message/sip) body holds header lines of another message.
    body = b"SIP/2.0 200 OK\r\nCall-ID: other@x\r\ni: other@y\r\n"
    without = INVITE.replace(b"Call-ID: c1@host\r\n", b"").replace(
        b"Content-Length: 4\r\n\r\nabcd", b"Content-Length: %d\r\n\r\n" % len(body) + body)
    assert call_id_of(without) is None
    compact = without.replace(b"CSeq: 1 INVITE", b"i: mine\r\nCSeq: 1 INVITE")
    assert call_id_of(compact) == b"mine"
    # The same with the usual spelling in the body right after the empty line.
    assert call_id_of(b"OPTIONS sip:x SIP/2.0\r\nVia: v\r\n\r\nCall-ID: body\r\n") is None


def test_call_id_of_skips_keepalive_crlfs_like_parse() -> None:
    assert call_id_of(b"\r\n\r\n" + INVITE) == b"c1@host" == req(b"\r\n\r\n" + INVITE).call_id
    assert call_id_of(b"\r\n\r\n") is None


@pytest.mark.parametrize("data", [
    b"", b"\r\n", b"INVITE", b"INVITE sip:x SIP/2.0\r\n", b"INVITE sip:x SIP/2.0\r\nC",
    b"INVITE sip:x SIP/2.0\r\nCall-ID", b"INVITE sip:x SIP/2.0\r\nX-Call-ID: no\r\n\r\n",
    b"INVITE sip:x SIP/2.0\r\nCall-IDs: no\r\nIn-Reply-To: no\r\nid: no\r\n\r\n",
    b"Call-ID: start-line\r\n\r\n", b"\x00\xff\n\n\r",
])
def test_call_id_of_absent(data: bytes) -> None:
    assert call_id_of(data) is None


def test_call_id_of_empty_value_and_unterminated_line() -> None:
    assert call_id_of(INVITE.replace(b"Call-ID: c1@host", b"Call-ID:   ")) == b""
    assert call_id_of(b"BYE sip:x SIP/2.0\r\nCall-ID: cut") == b"cut"
    assert call_id_of(b"BYE sip:x SIP/2.0\r\ni: cut\r") == b"cut\r"


def test_call_id_of_bare_lf_lines_read_leniently() -> None:
    # parse() refuses bare LF line ends; the scan still finds the header a lenient reader
    # would, and stops at the empty line.
    data = INVITE.replace(b"\r\n", b"\n")
    with pytest.raises(ParseError):
        parse(data).call_id  # noqa: B018
    assert call_id_of(data) == b"c1@host"
    assert call_id_of(data.replace(b"Call-ID: c1@host", b"i: c2")) == b"c2"
    assert call_id_of(b"BYE sip:x SIP/2.0\nVia: v\n\ni: body\n") is None


def test_call_id_of_bare_cr_at_the_edge_stripped_as_the_index_strips_it() -> None:
    # The index strips LWS (CR included) off every value only when the block has a fold.
    plain = INVITE.replace(b"Call-ID: c1@host", b"Call-ID: c1@host\r")
    folded = plain.replace(b"Max-Forwards: 70", b"Max-Forwards:\r\n 70")
    for data in (plain, folded):
        assert call_id_of(data) == req(data).call_id
    assert call_id_of(plain) == b"c1@host\r" and call_id_of(folded) == b"c1@host"
