"""Regressions found by fuzzing the whole core (fuzz/fuzz_core.py), exact bytes.

Each test feeds the datagram that broke an invariant of the harness, through the same lab
harness the other core tests use, and asserts the fixed behaviour. The invariants: nothing
escapes ``ProxyCore.receive`` (house rule 6: peers cause values, not exceptions), and
every ``Send`` goes to an address a socket can send to (unicast IP, port 1-65535).
"""

from __future__ import annotations

import pytest

from sipedge.sip.headers import parse_cseq
from sipedge.sip.message import parse
from tests.helpers.wire import (
    PBX,
    STRANGER,
    ProxyHarness,
    status_of,
)


@pytest.fixture
def h() -> ProxyHarness:
    harness = ProxyHarness()
    harness.bring_up()
    return harness


# ---------------------------------------------------------------------------- 1. CSeq int()
# A CSeq number with more than 4300 digits of leading zeros (legal: RFC 4475 §3.1.1.1
# allows leading zeros) made CPython's int() raise ValueError (int_max_str_digits) out of
# the header index. Found with the fuzz harness's long-run mutation (mut=10, ins=b"0").

LONG_CSEQ = b"0" * 5000 + b"1"

OPTIONS_LONG_CSEQ = (
    b"OPTIONS sip:+14155550100@127.0.0.1:5080 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-fz0\r\n"
    b"Max-Forwards: 70\r\n"
    b"From: <sip:caller@127.0.0.1>;tag=fz0\r\n"
    b"To: <sip:+14155550100@127.0.0.1:5080>\r\n"
    b"Call-ID: fz-call-0@fuzz\r\n"
    b"CSeq: " + LONG_CSEQ + b" OPTIONS\r\n"
    b"Contact: <sip:caller@127.0.0.1:5060>\r\n"
    b"Content-Length: 0\r\n\r\n"
)

#: The same defect in a response: reachable by *anyone*, since responses are matched
#: before the source ACL (a stranger's datagram raised out of receive()).
RESPONSE_LONG_CSEQ = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.3:5060;branch=z9hG4bK-sefuzz\r\n"
    b"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: fuzz\r\n"
    b"CSeq: " + LONG_CSEQ + b" INVITE\r\nContent-Length: 0\r\n\r\n"
)


def test_cseq_with_5000_leading_zeros_parses_to_its_number() -> None:
    assert parse_cseq(LONG_CSEQ + b" INVITE").number == 1
    assert parse(OPTIONS_LONG_CSEQ).cseq.number == 1  # type: ignore[union-attr]
    assert parse(RESPONSE_LONG_CSEQ).cseq.number == 1  # type: ignore[union-attr]


def test_request_with_5000_digit_cseq_forwarded_not_raised(h: ProxyHarness) -> None:
    out = h.feed(OPTIONS_LONG_CSEQ, PBX)  # addressed to sipedge itself: answered
    assert [(s.dest, status_of(s)) for s in out] == [(PBX, 200)]
    assert b"CSeq: " + LONG_CSEQ + b" OPTIONS\r\n" in out[0].data  # copied as received


def test_response_with_5000_digit_cseq_from_stranger_dropped_not_raised(
        h: ProxyHarness) -> None:
    assert h.feed(RESPONSE_LONG_CSEQ, STRANGER) == []
    assert h.core.stats.stray_responses == 1
