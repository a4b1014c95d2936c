"""Hypothesis properties of the parser and the forwarding transform.

* arbitrary bytes and every truncation of every corpus message give a message or a
  ParseError (or None from the stream framer) -- never another exception, and fast;
* generated valid requests survive forward_request() byte-exact apart from the spans a
  proxy changes, and forwarding then stripping our Via on the response is consistent;
* call_id_of() (the steering scan) says what parse().call_id says for every corpus message
  and every generated header order, casing, compact form and whitespace parse() accepts.
"""

from __future__ import annotations

import contextlib
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sipedge.sip import (
    ForwardPlan,
    Limits,
    ParseError,
    ProtocolViolation,
    Request,
    Response,
    StreamFramer,
    build_request,
    build_response,
    call_id_of,
    forward_request,
    parse,
    strip_top_via,
)
from tests.conftest import all_cases

FAST = settings(
    max_examples=300,
    deadline=timedelta(milliseconds=200),
    suppress_health_check=[HealthCheck.too_slow],
)
CASES = all_cases()


def parse_or_error(data: bytes) -> Request | Response | None:
    try:
        return parse(data)
    except ParseError as exc:
        assert not exc.reason.startswith("internal"), exc.reason
        return None


SIPISH = st.lists(
    st.sampled_from(
        [b"INVITE ", b"SIP/2.0", b" 200 OK", b"\r\n", b"\r\n\r\n", b"Via: ", b"v:", b"CSeq: ",
         b"1 INVITE", b"Call-ID: x", b"From: <sip:a@b>;tag=1", b"To: ", b"l: ", b"5",
         b"Content-Length: 3", b"Max-Forwards: 0", b" ", b"\t", b",", b";", b"\"", b"<", b">",
         b"sip:[::1]:5060", b"SIP/2.0/UDP h;branch=z9hG4bK", b"\x00", b"\xff", b"abc"]
    ),
    max_size=40,
).map(b"".join)


@FAST
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_parse_or_parse_error(data: bytes) -> None:
    parse_or_error(data)


@FAST
@given(SIPISH)
def test_sip_shaped_garbage_parse_or_parse_error(data: bytes) -> None:
    msg = parse_or_error(data)
    if isinstance(msg, Request) and msg.max_forwards != 0:
        with contextlib.suppress(ParseError):
            forward_request(msg, ForwardPlan(via=b"SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKp"))


@FAST
@given(st.binary(max_size=512), st.lists(st.integers(1, 64), max_size=8))
def test_framer_never_raises_anything_but_parse_error(data: bytes, cuts: list[int]) -> None:
    framer = StreamFramer(max_message=4096)
    pos = 0
    try:
        for cut in [*cuts, len(data)]:
            framer.feed(data[pos : pos + cut])
            pos += cut
            while framer.next_message() is not None:
                pass
    except ParseError:
        pass


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_every_truncation_of_corpus_message(case) -> None:  # type: ignore[no-untyped-def]
    data = case.data
    for n in range(len(data) + 1):
        parse_or_error(data[:n])
    framer = StreamFramer()
    try:
        for i in range(0, len(data), 97):
            framer.feed(data[i : i + 97])
            framer.next_message()
    except ParseError:
        pass


TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~",
                min_size=1, max_size=12).map(str.encode)
EXTRA = st.lists(
    st.tuples(
        st.sampled_from([b"X-Custom", b"Subject", b"User-Agent", b"Allow", b"Supported", b"P-Foo"]),
        st.lists(TOKEN, min_size=1, max_size=3).map(b", ".join),
    ),
    max_size=6,
)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from([b"INVITE", b"OPTIONS", b"BYE", b"MESSAGE"]))
    user, host, tag, cid = draw(TOKEN), draw(TOKEN), draw(TOKEN), draw(TOKEN)
    branch = b"z9hG4bK" + draw(TOKEN)
    return build_request(
        method,
        b"sip:" + user + b"@" + host + b".example.com",
        via=b"SIP/2.0/UDP " + host + b".example.net:5060;branch=" + branch,
        from_=b"<sip:a@" + host + b".example.org>;tag=" + tag,
        to=b"<sip:" + user + b"@example.com>",
        call_id=cid,
        cseq=draw(st.integers(0, 2**32 - 1)),
        max_forwards=draw(st.integers(1, 70)),
        headers=draw(EXTRA),
        body=draw(st.binary(max_size=64)),
    )


OUR_VIA = b"SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKours"


@FAST
@given(requests())
def test_forward_with_minimal_plan_is_byte_exact(data: bytes) -> None:
    req = parse(data)
    assert isinstance(req, Request)
    out = forward_request(req, ForwardPlan(via=OUR_VIA))
    mf = req.max_forwards
    assert mf is not None
    # Undo the two changes a forward must make: the pushed Via and Max-Forwards - 1.
    restored = out.replace(b"Via: " + OUR_VIA + b"\r\n", b"", 1).replace(
        b"\r\nMax-Forwards: %d\r\n" % (mf - 1), b"\r\nMax-Forwards: %d\r\n" % mf, 1
    )
    assert restored == data


@FAST
@given(requests(), st.integers(100, 699))
def test_forward_then_strip_is_consistent(data: bytes, status: int) -> None:
    req = parse(data)
    assert isinstance(req, Request)
    fwd = parse(forward_request(req, ForwardPlan(via=OUR_VIA, record_route=(b"<sip:p;lr>",))))
    assert isinstance(fwd, Request)
    upstream = parse(build_response(fwd, status, to_tag=b"t1"))
    assert isinstance(upstream, Response)
    assert upstream.top_via.branch == b"z9hG4bKours"
    assert strip_top_via(upstream) == build_response(req, status, to_tag=b"t1")


@st.composite
def shaped_requests(draw: st.DrawFn) -> bytes:
    """Valid requests in the usual shape and in the shapes the raw fast paths refuse."""
    data = draw(requests())
    via_name = draw(st.sampled_from([b"Via:", b"v:", b"VIA :", b"via:", b"Via:  "]))
    data = data.replace(b"\r\nVia: ", b"\r\n" + via_name + b" ", 1)
    mf_name = draw(st.sampled_from([b"Max-Forwards: ", b"max-forwards: ", b"Max-Forwards:",
                                    b"Max-Forwards:   ", b"MAX-FORWARDS : "]))
    data = data.replace(b"\r\nMax-Forwards: ", b"\r\n" + mf_name, 1)
    if draw(st.booleans()):
        data = data.replace(b";branch=", b";rport;branch=", 1)
    if draw(st.booleans()):
        # An existing Record-Route line above or below the top Via.
        rr = b"Record-Route: <sip:rr.example.net;lr>\r\n"
        head, _, rest = data.partition(b"\r\n")
        data = head + b"\r\n" + (rr + rest if draw(st.booleans())
                                 else rest.replace(b"\r\nCall-ID", b"\r\n" + rr[:-2] + b"\r\nCall-ID", 1))
    if draw(st.booleans()):
        # Move the top Via below From: the raw path needs it first.
        lines = data.split(b"\r\n")
        via = lines.pop(1)
        at = next(i for i, line in enumerate(lines) if line.startswith(b"From"))
        lines.insert(at + 1, via)
        data = b"\r\n".join(lines)
    return data


PLANS = st.builds(
    ForwardPlan,
    via=st.just(OUR_VIA),
    request_uri=st.one_of(st.none(), st.just(b"sip:x@gw.example.com")),
    record_route=st.sampled_from([(), (b"<sip:192.0.2.1;lr>",),
                                  (b"<sip:192.0.2.1;lr>", b"<sip:198.51.100.1;lr>")]),
    received=st.one_of(st.none(), st.just(b"198.51.100.7")),
    rport=st.one_of(st.none(), st.integers(1, 65535)),
)


@FAST
@given(shaped_requests(), PLANS)
def test_forward_raw_path_equals_index_path(data: bytes, plan: ForwardPlan) -> None:
    # forward_request splices the raw bytes when no header was accessed yet, and works
    # from the header index otherwise: both must give the same bytes.
    fresh = parse(data)
    indexed = parse(data)
    assert isinstance(fresh, Request) and isinstance(indexed, Request)
    indexed.header_lines()
    assert forward_request(fresh, plan) == forward_request(indexed, plan)


@FAST
@given(shaped_requests(), st.integers(100, 699), st.booleans())
def test_strip_raw_path_equals_index_path(data: bytes, status: int, comma: bool) -> None:
    req = parse(data)
    assert isinstance(req, Request)
    fwd = parse(forward_request(req, ForwardPlan(via=OUR_VIA)))
    assert isinstance(fwd, Request)
    resp = build_response(fwd, status, to_tag=b"t1")
    if comma:
        # Our Via and the next one as one comma list on the first header line.
        resp = resp.replace(OUR_VIA + b"\r\n", OUR_VIA + b", ", 1).replace(
            b", Via: ", b", ", 1)
    fresh = parse(resp)
    indexed = parse(resp)
    assert isinstance(fresh, Response) and isinstance(indexed, Response)
    indexed.header_lines()
    assert strip_top_via(fresh) == strip_top_via(indexed)


def _find_unquoted_reference(value: bytes, chars: bytes, start: int = 0) -> int:
    """The byte-at-a-time definition (RFC 3261 §7.3.1 quoting, §25.1 quoted-pair)."""
    n, i, in_angle = len(value), start, False
    while i < n:
        c = value[i]
        if c == 34:
            i += 1
            while i < n:
                if value[i] == 92:
                    i += 2
                    continue
                if value[i] == 34:
                    break
                i += 1
            else:
                raise ParseError(400, "unterminated quoted string")
        elif c == 60:
            in_angle = True
        elif c == 62:
            in_angle = False
        elif not in_angle and c in chars:
            return i
        i += 1
    return -1


@FAST
@given(st.lists(st.sampled_from([b"<", b">", b",", b";", b'"', b"\\", b"a", b"sip:x", b" "]),
                max_size=24).map(b"".join), st.sampled_from([b",", b";"]), st.integers(0, 4))
def test_find_unquoted_matches_reference(value: bytes, sep: bytes, start: int) -> None:
    from sipedge.sip.headers import find_unquoted

    try:
        expected: int | str = _find_unquoted_reference(value, sep, start)
    except ParseError:
        expected = "error"
    try:
        got: int | str = find_unquoted(value, sep, start)
    except ParseError:
        got = "error"
    assert got == expected


def _touch_everything(msg: Request | Response) -> None:
    """Every lazy accessor and transform; each may only raise ParseError (or 483)."""
    accessors = [
        lambda: msg.header_lines(), lambda: msg.top_via, lambda: msg.call_id,
        lambda: msg.cseq, lambda: msg.from_tag, lambda: msg.to_tag, lambda: msg.via_count,
        lambda: msg.header(b"contact"), lambda: msg.header_values(b"route"),
        lambda: msg.has_header(b"content-length"), lambda: msg.body, lambda: msg.start_line,
    ]
    if isinstance(msg, Request):
        accessors += [lambda: msg.max_forwards, lambda: msg.top_route]
    for access in accessors:
        with contextlib.suppress(ParseError):
            access()
    if isinstance(msg, Response):
        with contextlib.suppress(ParseError):
            strip_top_via(msg)


@FAST
@given(SIPISH, st.booleans())
def test_lazy_accessors_raise_only_parse_error(data: bytes, forward_first: bool) -> None:
    # "garbage → message or ParseError, nothing else" holds for the lazy accessors too,
    # whichever runs first (the raw forward path or the header index).
    msg = parse_or_error(data)
    if msg is None:
        return
    if forward_first and isinstance(msg, Request):
        with contextlib.suppress(ParseError, ProtocolViolation):
            forward_request(msg, ForwardPlan(via=OUR_VIA, received=b"192.0.2.9", rport=1))
    _touch_everything(msg)
    if isinstance(msg, Request):
        with contextlib.suppress(ParseError, ProtocolViolation):
            forward_request(msg, ForwardPlan(via=OUR_VIA, record_route=(b"<sip:p;lr>",)))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_failed_index_never_takes_the_raw_path(case) -> None:  # type: ignore[no-untyped-def]
    # Once the header index refused a message, forwarding it raises too (no raw splice).
    msg = parse_or_error(case.data)
    if not isinstance(msg, Request):
        return
    try:
        msg.header_lines()
    except ParseError:
        with pytest.raises(ParseError):
            forward_request(msg, ForwardPlan(via=OUR_VIA))


TINY = st.builds(
    Limits,
    max_headers=st.integers(0, 8),
    max_line_bytes=st.integers(0, 64),
    max_via=st.integers(0, 4),
    max_branch_bytes=st.integers(0, 16),
)


@FAST
@given(SIPISH, TINY)
def test_garbage_under_tiny_limits_parse_or_parse_error(data: bytes, limits: Limits) -> None:
    # Issue 13 limits: whatever the limits, the invariant holds -- message or ParseError --
    # and a request's limit error is answerable (513/414) while a response's is a drop.
    try:
        msg = parse(data, limits)
        msg.top_via  # noqa: B018 - index + top Via: where the limits are checked
    except ParseError as exc:
        assert not exc.reason.startswith("internal"), exc.reason
        if exc.status in (513, 414):
            assert not data.lstrip(b"\r\n").startswith(b"SIP/")


# -- call_id_of: the steering scan agrees with the parser ------------------------------------


def parsed_call_id(data: bytes) -> bytes | None:
    """``parse(data).call_id``, or None when the parser or the index refuses the message."""
    msg = parse_or_error(data)
    if msg is None:
        return None
    try:
        return msg.call_id
    except ParseError:
        return None


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_call_id_of_equals_parse_on_the_corpus(case) -> None:  # type: ignore[no-untyped-def]
    expected = parsed_call_id(case.data)
    if expected is not None:
        assert call_id_of(case.data) == expected


def test_call_id_of_corpus_is_not_vacuous() -> None:
    agreed = [c for c in CASES if parsed_call_id(c.data) is not None]
    assert len(agreed) >= len(CASES) // 2, "most corpus messages have a parsable Call-ID"


def _any_case(draw: st.DrawFn, name: bytes) -> bytes:
    flips = draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
    return bytes(c ^ 0x20 if flip and chr(c).isalpha() else c for c, flip in zip(name, flips, strict=True))


#: What may follow a header name and precede the colon (RFC 3261 §7.3.1 HCOLON), and what
#: may follow the colon (LWS, folding included) or end the value.
BEFORE_COLON = st.sampled_from([b"", b" ", b"\t", b"  ", b" \t"])
AFTER_COLON = st.sampled_from([b"", b" ", b"\t", b"   ", b"\r\n ", b"\r\n\t", b" \r\n  "])
AFTER_VALUE = st.sampled_from([b"", b" ", b"\t", b" \t "])
WORD = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~()<>:\\\"/[]?{}",
               min_size=1, max_size=16).map(str.encode)
DECOYS = [b"X-Call-ID: decoy", b"Call-Info: <http://x/decoy>", b"In-Reply-To: decoy@x",
          b"I-Am: decoy", b"Call-IDx: decoy", b"Contact: <sip:decoy@x>", b"Subject: Call-ID: decoy",
          b"CSeq-Note: i: decoy"]


@st.composite
def call_id_messages(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """A valid request or response with its Call-ID spelt and placed any way the grammar
    allows, decoy headers around it and decoy Call-IDs in its body; and the Call-ID."""
    call_id = draw(WORD) + draw(st.sampled_from([b"", b"@"])) + draw(st.sampled_from([b"", b"host.example"]))
    compact = draw(st.booleans())
    name = draw(st.sampled_from([b"i", b"I"])) if compact else _any_case(draw, b"Call-ID")
    line = name + draw(BEFORE_COLON) + b":" + draw(AFTER_COLON) + call_id + draw(AFTER_VALUE)
    method = draw(st.sampled_from([b"INVITE", b"BYE", b"OPTIONS", b"CANCEL", b"ACK"]))
    others = [b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK" + draw(TOKEN),
              b"From: <sip:a@example.org>;tag=" + draw(TOKEN), b"To: <sip:b@example.com>",
              b"CSeq: %d %s" % (draw(st.integers(0, 2**31)), method)]
    others += draw(st.lists(st.sampled_from(DECOYS), max_size=4, unique=True))
    if draw(st.booleans()):
        # A folded header elsewhere: the index then strips every value of LWS.
        others.append(b"Subject: one\r\n two")
    order = draw(st.permutations([*others, line]))
    body = draw(st.sampled_from([b"", b"Call-ID: in-body\r\n", b"\r\ni: in-body\r\nCall-ID: x\r\n"]))
    if draw(st.booleans()):
        start = b"SIP/2.0 %d Reason" % draw(st.integers(100, 699))
    else:
        start = method + b" sip:b@example.com SIP/2.0"
    head = b"\r\n".join([start, *order, b"Content-Length: %d" % len(body)])
    keepalive = draw(st.sampled_from([b"", b"\r\n", b"\r\n\r\n"]))
    return keepalive + head + b"\r\n\r\n" + body, call_id


@FAST
@given(call_id_messages())
def test_call_id_of_equals_parse_for_generated_spellings(message: tuple[bytes, bytes]) -> None:
    data, call_id = message
    assert parsed_call_id(data) == call_id  # the generator makes only valid messages
    assert call_id_of(data) == call_id


@FAST
@given(SIPISH)
def test_call_id_of_agrees_with_parse_on_sip_shaped_garbage(data: bytes) -> None:
    expected = parsed_call_id(data)
    got = call_id_of(data)  # never raises, whatever the bytes
    if expected is not None:
        assert got == expected


@FAST
@given(st.binary(max_size=1024))
def test_call_id_of_never_raises(data: bytes) -> None:
    got = call_id_of(data)
    assert got is None or isinstance(got, bytes)
