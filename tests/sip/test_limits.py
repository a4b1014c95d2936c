"""sip.message.Limits: header count, line length, Via count, branch length (issue 13).

Past a limit the parser raises at once -- 513 for a request (RFC 3261 §21.5.14), 414 for a
long Request-URI (§21.4.12), drop (status None) for a response -- and the work done is
bounded by the limit: the header split stops after ``max_headers + 1`` lines, so bytes
past that point are never looked at.  That is what the properties below check, by
counting, not by timing: whatever garbage follows the limit, the verdict is the same.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipedge.sip import DEFAULT_LIMITS, Limits, ParseError, Request, Response, parse
from sipedge.sip.message import (
    MAX_BRANCH_BYTES,
    MAX_HEADERS,
    MAX_LINE_BYTES,
    MAX_VIA,
    answer_parse_error,
)

VIA = b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-lim"
MANDATORY = [VIA, b"Max-Forwards: 70", b"From: <sip:a@example.com>;tag=1",
             b"To: <sip:b@example.com>", b"Call-ID: lim@192.0.2.1", b"CSeq: 1 OPTIONS"]


def request(extra: list[bytes] = (), *, ruri: bytes = b"sip:b@example.com",  # type: ignore[assignment]
            top: list[bytes] = ()) -> bytes:  # type: ignore[assignment]
    """OPTIONS with the mandatory headers, ``top`` lines first, ``extra`` lines last."""
    lines = [b"OPTIONS " + ruri + b" SIP/2.0", *top, *MANDATORY, *extra, b"Content-Length: 0"]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def response(extra: list[bytes]) -> bytes:
    lines = [b"SIP/2.0 200 OK", VIA, *MANDATORY[2:], *extra, b"Content-Length: 0"]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def error_of(data: bytes, limits: Limits = DEFAULT_LIMITS) -> ParseError:
    """The ParseError of parse + first header accesses (index, top Via)."""
    with pytest.raises(ParseError) as exc:
        msg = parse(data, limits)
        msg.top_via  # noqa: B018 - builds the index, parses the top Via
    return exc.value


def accepted(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Request | Response:
    msg = parse(data, limits)
    msg.top_via  # noqa: B018
    return msg


N_BASE = len(MANDATORY) + 1  # header lines of request([]) (Content-Length included)


def test_defaults_are_the_module_constants() -> None:
    assert Limits(MAX_HEADERS, MAX_LINE_BYTES, MAX_VIA, MAX_BRANCH_BYTES) == DEFAULT_LIMITS
    assert (MAX_HEADERS, MAX_LINE_BYTES, MAX_VIA, MAX_BRANCH_BYTES) == (128, 8192, 70, 256)
    with pytest.raises(AttributeError):
        DEFAULT_LIMITS.max_headers = 1  # type: ignore[misc]  # frozen


# ---------------------------------------------------------------------------- header count


def test_header_count_at_the_limit_accepted() -> None:
    extra = [b"X-H%d: v" % i for i in range(MAX_HEADERS - N_BASE)]
    assert len(accepted(request(extra)).header_lines()) == MAX_HEADERS


def test_header_count_over_the_limit_is_513() -> None:
    extra = [b"X-H%d: v" % i for i in range(MAX_HEADERS - N_BASE + 1)]
    exc = error_of(request(extra))
    assert (exc.status, exc.phrase) == (513, b"Too Many Headers")


def test_header_count_over_the_limit_in_a_response_is_dropped() -> None:
    exc = error_of(response([b"X-H%d: v" % i for i in range(MAX_HEADERS)]))
    assert exc.status is None


def test_folded_lines_count_as_lines() -> None:
    limits = Limits(max_headers=N_BASE + 1)
    assert accepted(request([b"Subject: a"]), limits)
    exc = error_of(request([b"Subject: a", b" b"]), limits)
    assert exc.phrase == b"Too Many Headers"


# ---------------------------------------------------------------------------- line length


def test_header_line_at_the_limit_accepted() -> None:
    line = b"X-Long: " + b"a" * (MAX_LINE_BYTES - 8)
    assert len(line) == MAX_LINE_BYTES
    assert accepted(request([line])).header(b"x-long") == b"a" * (MAX_LINE_BYTES - 8)


def test_header_line_over_the_limit_is_513() -> None:
    exc = error_of(request([b"X-Long: " + b"a" * (MAX_LINE_BYTES - 7)]))
    assert (exc.status, exc.phrase) == (513, b"Header Too Long")


def test_long_request_uri_is_414() -> None:
    exc = error_of(request(ruri=b"sip:b@example.com;x=" + b"a" * MAX_LINE_BYTES))
    assert exc.status == 414 and exc.phrase is None  # the default phrase names it


def test_long_method_is_513_not_414() -> None:
    data = request().replace(b"OPTIONS sip", b"X" * MAX_LINE_BYTES + b" sip", 1)
    data = data.replace(b"CSeq: 1 OPTIONS", b"CSeq: 1 " + b"X" * MAX_LINE_BYTES)
    exc = error_of(data)
    assert (exc.status, exc.phrase) == (513, b"Request Line Too Long")


def test_long_status_line_dropped() -> None:
    data = response([]).replace(b"200 OK", b"200 " + b"O" * MAX_LINE_BYTES, 1)
    assert error_of(data).status is None


# ---------------------------------------------------------------------------- Via count


def vias(n: int) -> list[bytes]:
    return [b"SIP/2.0/UDP 10.0.%d.%d;branch=z9hG4bK-v%d" % (i // 256, i % 256, i) for i in range(n)]


@pytest.mark.parametrize("shape", ["lines", "one-line", "mixed"])
def test_via_count_at_and_over_the_limit(shape: str) -> None:
    def build(n: int) -> bytes:
        values = vias(n - 1)  # + the VIA of MANDATORY
        if shape == "lines":
            top = [b"Via: " + v for v in values]
        elif shape == "one-line":
            top = [b"Via: " + b", ".join(values)]
        else:
            top = [b"Via: " + b", ".join(values[: n // 2]), *[b"Via: " + v for v in values[n // 2 :]]]
        return request(top=top)

    assert accepted(build(MAX_VIA)).via_count == MAX_VIA
    exc = error_of(build(MAX_VIA + 1))
    assert (exc.status, exc.phrase) == (513, b"Too Many Via")


def test_commas_elsewhere_do_not_count_as_vias() -> None:
    extra = [b"Allow: " + b", ".join([b"INVITE"] * 200)]
    assert accepted(request(extra)).via_count == 1


def test_quoted_comma_in_via_is_not_a_value() -> None:
    top = [b'Via: SIP/2.0/UDP h;x="a,b", ' + b", ".join(vias(MAX_VIA - 2))]
    assert accepted(request(top=top)).via_count == MAX_VIA


def test_rfc4475_longreq_has_34_vias_and_is_accepted() -> None:
    # Why MAX_VIA is not 32: RFC 4475 §3.1.1.7 (valid) carries 34 Via values.
    assert MAX_VIA >= 34


def test_too_many_vias_in_a_response_dropped() -> None:
    data = response([b"Via: " + v for v in vias(MAX_VIA)])
    assert error_of(data).status is None


# ---------------------------------------------------------------------------- branch


def test_branch_at_the_limit_accepted() -> None:
    branch = b"z9hG4bK" + b"b" * (MAX_BRANCH_BYTES - 7)
    data = request().replace(b"branch=z9hG4bK-lim", b"branch=" + branch)
    assert accepted(data).top_via.branch == branch


def test_branch_over_the_limit_is_513() -> None:
    data = request().replace(b"branch=z9hG4bK-lim", b"branch=z9hG4bK" + b"b" * (MAX_BRANCH_BYTES - 6))
    exc = error_of(data)
    assert (exc.status, exc.phrase) == (513, b"Branch Too Long")


def test_long_branch_below_the_top_via_is_not_ours_to_judge() -> None:
    top = [b"Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK-short"]
    data = request(top=top).replace(b"branch=z9hG4bK-lim", b"branch=z9hG4bK" + b"b" * 1000)
    assert accepted(data).via_count == 2


# ---------------------------------------------------------------------------- custom limits


def test_limits_are_per_call() -> None:
    data = request([b"X-A: 1", b"X-B: 2"])
    assert accepted(data)
    assert error_of(data, Limits(max_headers=N_BASE + 1)).phrase == b"Too Many Headers"
    assert error_of(data, Limits(max_line_bytes=40)).phrase == b"Header Too Long"
    assert error_of(data, Limits(max_line_bytes=32)).status == 414  # the start line is 33
    assert error_of(data, Limits(max_branch_bytes=10)).phrase == b"Branch Too Long"
    assert error_of(request(top=[b"Via: " + vias(1)[0]]), Limits(max_via=1)).phrase == b"Too Many Via"


# ---------------------------------------------------------------------------- bounded work

#: What a careless parser would trip on if it looked at it: bare LF, NUL, a non-token name,
#: a line without colon, a duplicate Call-ID, a line over any line limit.
POISON = st.sampled_from([b"bare\nLF: x", b"N\x00L: x", b"sp ace: x", b"no colon here",
                          b"Call-ID: second", b"X-Huge: " + b"h" * 20000, b"\x01\x02: y"])


@settings(max_examples=150, deadline=None)
@given(max_headers=st.integers(N_BASE, 40), over=st.integers(1, 200),
       poison=st.lists(POISON, min_size=1, max_size=20))
def test_header_flood_never_scanned_past_the_limit(max_headers: int, over: int,
                                                   poison: list[bytes]) -> None:
    limits = Limits(max_headers=max_headers)
    # Exactly max_headers + 1 well-formed header lines, then poison: the verdict can only
    # be "Too Many Headers" if nothing after line max_headers + 1 was examined.
    good = [b"X-H%d: v" % i for i in range(max_headers + 1 - N_BASE)]
    data = request(good).replace(b"\r\nContent-Length: 0\r\n\r\n", b"\r\nContent-Length: 0\r\n")
    data += b"\r\n".join(poison * over) + b"\r\n\r\n"
    exc = error_of(data, limits)
    assert (exc.status, exc.phrase) == (513, b"Too Many Headers")
    # The best-effort answer is bounded by the same limit.
    answer = answer_parse_error(data, exc, limits=limits)
    assert answer is not None and answer.count(b"\r\n") <= max_headers + 4


@settings(max_examples=150, deadline=None)
@given(n=st.integers(0, 3 * MAX_HEADERS), width=st.integers(1, 3 * MAX_LINE_BYTES // 2))
def test_verdict_follows_the_limits_exactly(n: int, width: int) -> None:
    extra = [b"X-H%d: " % i + b"a" * width for i in range(n)]
    data = request(extra)
    lines = N_BASE + n
    line_len = max(len(x) for x in extra) if extra else 0
    try:
        msg = accepted(data)
    except ParseError as exc:
        assert exc.status == 513
        if lines > MAX_HEADERS:
            assert exc.phrase == b"Too Many Headers"
        else:
            assert exc.phrase == b"Header Too Long" and line_len > MAX_LINE_BYTES
        return
    assert lines <= MAX_HEADERS and line_len <= MAX_LINE_BYTES
    assert len(msg.header_lines()) == lines


@settings(max_examples=100, deadline=None)
@given(per_line=st.lists(st.integers(1, 12), min_size=1, max_size=12),
       max_via=st.integers(1, 40))
def test_via_verdict_matches_the_count(per_line: list[int], max_via: int) -> None:
    top: list[bytes] = []
    k = 0
    for count in per_line:
        top.append(b"Via: " + b", ".join(vias(k + count)[k:]))
        k += count
    total = k + 1
    data = request(top=top)
    limits = Limits(max_via=max_via)
    if total <= max_via:
        assert accepted(data, limits).via_count == total
    else:
        assert error_of(data, limits).phrase == b"Too Many Via"
