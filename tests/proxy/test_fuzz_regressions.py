"""Regressions found by fuzzing the whole core (fuzz/fuzz_core.py), exact bytes.

Each test feeds the datagram that broke an invariant of the harness, through the same lab
harness the other core tests use, and asserts the fixed behaviour. The invariants: nothing
escapes ``ProxyCore.receive`` (house rule 6: peers cause values, not exceptions), and
every ``Send`` goes to an address a socket can send to (unicast IP, port 1-65535).
"""

from __future__ import annotations

import pytest

from sipedge.sip.address import Endpoint
from sipedge.sip.headers import parse_cseq
from sipedge.sip.message import parse
from tests.helpers.wire import (
    CALLEE,
    INSIDE,
    PBX,
    STRANGER,
    VIRGINIA,
    ProxyHarness,
    calls,
    header,
    responses,
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
# the header index. Found probing long runs through the harness: its long-run mutation
# (mut=10, ins=b"0" repeated 5120 times in front of the CSeq number of its templated
# OPTIONS) reproduces it; its 48-byte splices alone could never reach 4300 digits.

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


# ---------------------------------------------------------------------------- 2. port 0
# The Via grammar admits port 0 (split_host_port: 0..65535); a response went to the
# sent-by port 0. RFC 3261 §18.2.2 answers to the sent-by port, but port 0 names no
# socket: the answer goes where the request came from (as RFC 3581 rport does).

INVITE_VIA_PORT_0 = (
    b"INVITE sip:+14155550100@127.0.0.1:5080 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:0;branch=z9hG4bK-fz0\r\n"
    b"Max-Forwards: 70\r\n"
    b"From: <sip:caller@127.0.0.1>;tag=fz0\r\n"
    b"To: <sip:+14155550100@127.0.0.1:5080>\r\n"
    b"Call-ID: fz-call-0@fuzz\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Contact: <sip:caller@127.0.0.1:5060>\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def test_response_to_via_port_0_goes_to_source_port(h: ProxyHarness) -> None:
    out = h.feed(INVITE_VIA_PORT_0, PBX)
    assert [(s.dest, status_of(s)) for s in responses(out)] == [(PBX, 100)]


# ---------------------------------------------------------------------------- 3. next hop
# An in-dialog request or 2xx ACK from a trusted peer whose Route / Request-URI named
# port 0, 0.0.0.0 (this very host), a multicast or the broadcast address was sent there.

def _in_dialog(method: bytes, ruri: bytes, route: bytes | None) -> bytes:
    lines = [method + b" " + ruri + b" SIP/2.0",
             b"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-fz%s" % method.lower(),
             b"Max-Forwards: 70"]
    if route is not None:
        lines.append(b"Route: " + route)
    lines += [b"From: <sip:caller@127.0.0.1>;tag=fz0",
              b"To: <sip:+14155550100@127.0.0.1:5080>;tag=tt1",
              b"Call-ID: fz-call-0@fuzz",
              b"CSeq: %d %s" % (1 if method == b"ACK" else 2, method),
              b"Content-Length: 0"]
    return b"\r\n".join(lines) + b"\r\n\r\n"


#: Exact bytes the harness found (Route, then the Request-URI variants).
BYE_ROUTE_PORT_0 = _in_dialog(b"BYE", b"sip:+14155550100@127.0.0.1:5080",
                              b"<sip:127.0.0.10:0;lr>")

UNROUTABLE = [b"sip:bob@127.0.0.10:0", b"sip:bob@0.0.0.0:5060", b"sip:bob@224.0.0.1",
              b"sip:bob@255.255.255.255", b"sip:bob@[::]:5060", b"sip:bob@[ff02::1]"]


def test_in_dialog_route_to_port_0_answered_404(h: ProxyHarness) -> None:
    out = h.feed(BYE_ROUTE_PORT_0, PBX)
    assert [(s.dest, status_of(s)) for s in out] == [(PBX, 404)]


@pytest.mark.parametrize("ruri", UNROUTABLE)
def test_in_dialog_request_to_unsendable_address_answered_404(
        h: ProxyHarness, ruri: bytes) -> None:
    out = h.feed(_in_dialog(b"BYE", ruri, None), PBX)
    assert [(s.dest, status_of(s)) for s in out] == [(PBX, 404)]


@pytest.mark.parametrize("ruri", UNROUTABLE)
def test_ack_to_unsendable_address_dropped(h: ProxyHarness, ruri: bytes) -> None:
    assert h.feed(_in_dialog(b"ACK", ruri, None), PBX) == []


def test_in_dialog_request_to_callee_still_routed(h: ProxyHarness) -> None:
    """The control: the same request toward a real unicast hop goes out."""
    out = h.feed(_in_dialog(b"BYE", b"sip:bob@127.0.0.10:5060", None), PBX)
    assert [s.dest for s in calls(out, b"BYE")] == [CALLEE]


# ---------------------------------------------------------------------------- 4. stray rport
# A stray 2xx is relayed to its second Via (RFC 3261 §16.7 step 5 / §18.2.2); rport=0 or
# a five-digit rport above 65535 became the destination port.

def _stray_2xx(upstream_params: bytes) -> bytes:
    return (b"SIP/2.0 200 OK\r\n"
            b"Via: SIP/2.0/UDP 127.0.0.3:5060;branch=z9hG4bK-sestray\r\n"
            b"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKx" + upstream_params + b"\r\n"
            b"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: stray\r\n"
            b"CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")


@pytest.mark.parametrize("params", [b";rport=0", b";rport=99999", b";rport=00000"])
def test_stray_2xx_with_impossible_rport_relayed_to_sent_by_port(
        h: ProxyHarness, params: bytes) -> None:
    out = h.feed(_stray_2xx(params), VIRGINIA[0])
    assert [(s.dest, status_of(s)) for s in out] == [(PBX, 200)]


def test_stray_2xx_with_rport_relayed_to_it(h: ProxyHarness) -> None:
    out = h.feed(_stray_2xx(b";rport=5072"), VIRGINIA[0])
    assert [s.dest for s in out] == [Endpoint("udp", "127.0.0.1", 5072)]


# ---------------------------------------------------------------------------- 5. no Via left
# A gateway's response that carries only our Via (its copy of the caller's Via lost) was
# forwarded upstream with no Via at all. RFC 3261 §16.7 step 3: when no Via remains after
# ours is removed, the response MUST NOT be forwarded. Found by a directed run of the
# fuzz_core World (an answer whose caller Via line is replaced: its mut=6); the harness's
# invariant flagged it (what sipedge sends must index again; a response without Via does
# not).

INVITE_FROM_PBX = (
    b"INVITE sip:+14155550100@127.0.0.1:5080 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-fz0\r\n"
    b"Max-Forwards: 70\r\n"
    b"From: <sip:caller@127.0.0.1>;tag=fz0\r\n"
    b"To: <sip:+14155550100@127.0.0.1:5080>\r\n"
    b"Call-ID: fz-call-0@fuzz\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def _only_our_via(forwarded: bytes, status: int) -> bytes:
    """The gateway's answer with exactly one Via: ours (its branch from ``forwarded``)."""
    our_via = header(forwarded, b"Via")
    assert our_via is not None
    return (b"SIP/2.0 %d Fuzz\r\nVia: %s\r\n" % (status, our_via)
            + b"From: <sip:caller@127.0.0.1>;tag=fz0\r\n"
              b"To: <sip:+14155550100@127.0.0.1:5080>;tag=gw\r\n"
              b"Call-ID: fz-call-0@fuzz\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")


@pytest.mark.parametrize("status", [180, 200, 486])
def test_response_with_only_our_via_not_forwarded(h: ProxyHarness, status: int) -> None:
    fwd = calls(h.feed(INVITE_FROM_PBX, PBX))[0]
    out = h.feed(_only_our_via(fwd.data, status), fwd.dest)
    assert out == []
    # As if no answer came: retransmissions (Timer A), then the failover once the
    # no-provisional timer runs out.
    later = [s.dest for s in calls(h.advance(5))]
    assert later[0] == VIRGINIA[0] and VIRGINIA[1] in later
    assert [status_of(s) for s in responses(h.sent)] == [100]  # only our 100 Trying


# ---------------------------------------------------------------------------- 6. ACL first
# Responses were matched before any source check, so a stranger's response had its header
# index built (4-8 ms of CPU for 60 KB of headers, against 0.1 ms for a stranger's request:
# measured with fuzz_core's CPU timing). A response from a host that is neither a party
# nor a hop we sent to is now dropped before the index: a malformed header block there
# no longer even counts as a parse error.

STRANGER_RESPONSE_BAD_BLOCK = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.3:5060;branch=z9hG4bK-sefuzz\r\n"
    b"From: <sip:a@b>;tag=1\nTo: <sip:c@d>;tag=2\r\n"  # a bare LF: the index would refuse
    b"Call-ID: fuzz\r\nCSeq: 1 INVITE\r\n" + b"X: y\r\n" * 9000 + b"Content-Length: 0\r\n\r\n"
)


def test_stranger_response_dropped_before_its_headers_are_read(h: ProxyHarness) -> None:
    parse_errors = h.core.stats.parse_errors
    assert h.feed(STRANGER_RESPONSE_BAD_BLOCK, STRANGER) == []
    assert h.core.stats.stray_responses == 1
    assert h.core.stats.parse_errors == parse_errors


def test_response_from_foreign_in_dialog_hop_still_relayed(h: ProxyHarness) -> None:
    """A hop no ACL lists but a Route named (loose routing) may still answer."""
    bye = _in_dialog(b"BYE", b"sip:bob@192.0.2.10:5060", None)
    fwd = calls(h.feed(bye, PBX), b"BYE")
    assert [s.dest for s in fwd] == [Endpoint("udp", "192.0.2.10", 5060)]
    ok = _answer(fwd[0].data, 200)
    out = h.feed(ok, Endpoint("udp", "192.0.2.10", 5060))
    assert [(s.dest, status_of(s)) for s in out] == [(PBX, 200)]


def _answer(request: bytes, status: int) -> bytes:
    """A UAS's answer: the request's Via lines, From, To (tagged), Call-ID, CSeq."""
    keep = (b"via:", b"from:", b"to:", b"call-id:", b"cseq:")
    lines = [ln for ln in request.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]
             if ln.lower().startswith(keep)]
    return b"SIP/2.0 %d OK\r\n" % status + b"\r\n".join(lines) + b"\r\nContent-Length: 0\r\n\r\n"


# ---------------------------------------------------------------------------- 7. branch reuse
# Found by fuzz_core's drain invariant (atheris, crash-5a7d35d4…; minimised to 3 ops).
# Over TCP a non-INVITE server transaction ends with its final response (Timer J = 0),
# while our client transaction toward a UDP gateway waits in Completed (Timer K, 5 s).
# The same request again is then a new request; its branch was derived from the same
# inputs, so it was *the same branch*: the live client transaction was overwritten in the
# table and its destination entry never left _branches_by_dest (RFC 3261 §16.6 step 8:
# a branch is unique per transaction).

PBX_TCP = Endpoint("tcp", "127.0.0.1", 41000)

INFO_OVER_TCP = (
    b"INFO tel:+14155550103 SIP/2.0\r\n"
    b"Via: SIP/2.0/TCP 127.0.0.1:41000;branch=z9hG4bK-fz2\r\n"
    b"Max-Forwards: 1\r\n"
    b"From: <sip:caller@127.0.0.1>;tag=fz3\r\n"
    b"To: <sip:+14155550103@127.0.0.1:5080>\r\n"
    b"Call-ID: fz-call-3@fuzz\r\n"
    b"CSeq: 1 INFO\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def test_same_request_after_tcp_server_transaction_ended_gets_a_new_branch(
        h: ProxyHarness) -> None:
    first = calls(h.feed(INFO_OVER_TCP, PBX_TCP, INSIDE), b"INFO")
    assert [s.dest for s in first] == [VIRGINIA[0]]
    out = h.feed(_answer(first[0].data, 486), VIRGINIA[0])
    assert [(s.dest, status_of(s)) for s in out] == [(PBX_TCP, 486)]
    assert h.core._contexts == {}  # reliable: Timer J is 0, the server side is gone
    again = calls(h.feed(INFO_OVER_TCP, PBX_TCP, INSIDE), b"INFO")
    assert len(again) == 1
    assert header(again[0].data, b"Via") != header(first[0].data, b"Via")
    h.advance(100)
    assert h.core._branches == {} and h.core._branches_by_dest == {}
