"""Unit tests of sipedge.proxy.validation (RFC 3261 §16.3 decisions)."""

from __future__ import annotations

from sipedge.proxy.validation import Decision, Reject, decide, validate_request
from sipedge.sip import Request, parse

BASE = (
    b"OPTIONS sip:x@example.com SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n"
    b"Max-Forwards: 5\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:x@example.com>\r\nCall-ID: k\r\n"
    b"CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
)


def validate(data: bytes) -> Reject | None:
    req = parse(data)
    assert isinstance(req, Request)
    return validate_request(req)


def test_valid_request_passes() -> None:
    assert validate(BASE) is None
    assert decide(BASE) == Decision("forward", None)


def test_tel_scheme_ok_unknown_scheme_416() -> None:
    assert validate(BASE.replace(b"OPTIONS sip:x@example.com", b"OPTIONS tel:+14155550100")) is None
    reject = validate(BASE.replace(b"OPTIONS sip:x@example.com", b"OPTIONS im:x@example.com"))
    assert reject is not None and reject.status == 416


def test_max_forwards_zero_483() -> None:
    reject = validate(BASE.replace(b"Max-Forwards: 5", b"Max-Forwards: 0"))
    assert reject is not None and reject.status == 483


def test_proxy_require_420_lists_unsupported() -> None:
    reject = validate(BASE.replace(b"Content-Length", b"Proxy-Require: foo, bar\r\nContent-Length"))
    assert reject == Reject(420, "unsupported Proxy-Require", ((b"Unsupported", b"foo, bar"),))


def test_bad_from_400() -> None:
    reject = validate(BASE.replace(b"From: <sip:a@b>;tag=1", b'From: "a <sip:a@b>;tag=1'))
    assert reject is not None and reject.status == 400


def test_garbage_and_bad_response_verdicts() -> None:
    assert decide(b"\x00\x01") == Decision("answer", 400)
    assert decide(b"SIP/2.0 200 OK\r\n\r\n") == Decision("drop", None)


def test_structural_rules_checked_at_validation() -> None:
    # parse() only frames; the structural rules (bare LF, singletons, mandatory headers,
    # CSeq, Max-Forwards digits) are enforced by the first header access, which
    # validate_request makes: together they answer what parse() alone used to.
    cases = {
        BASE.replace(b"Call-ID: k", b"Call-ID: k\nVia: evil"): 400,
        BASE.replace(b"Call-ID: k", b"Call-ID: k\r\nCall-ID: k2"): 400,
        BASE.replace(b"Call-ID: k\r\n", b""): 400,
        BASE.replace(b"CSeq: 1 OPTIONS", b"CSeq: 1 INVITE"): 400,
        BASE.replace(b"CSeq: 1 OPTIONS", b"CSeq: x OPTIONS"): 400,
        BASE.replace(b"Max-Forwards: 5", b"Max-Forwards: five"): 400,
    }
    for data, status in cases.items():
        reject = validate(data)
        assert reject is not None and reject.status == status, data
        assert decide(data) == Decision("answer", status)
