"""Malformed and oversized requests through the real core: the answer RFC 3261 gives.

Issue 13 (hardening).  Every class of defect that Kamailio's ``sanity`` module and the CVE
history of SIP stacks care about -- missing or duplicate mandatory headers, bad header
names, control bytes and NUL, bad Content-Length, header floods, huge Via stacks and
branches -- is fed as a UDP datagram and as a framed stream message, and must get the
exact status and reason phrase (RFC 3261 §21.4.1: the phrase "SHOULD identify the syntax
problem"), be counted, and leave the core able to take the next legitimate request.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from sipedge.proxy.events import DropReason, MessageDropped, RequestRejected
from sipedge.sip.address import Endpoint
from sipedge.sip.message import Limits
from tests.helpers.wire import (
    INSIDE,
    PBX,
    ProxyHarness,
    calls,
    first_line,
    header,
    headers,
    make_request,
    responses,
    status_of,
)

#: A stream peer (the PBX over TCP) and the listener it reached: answers go back over the
#: connection itself (RFC 3261 §18.2.2), whatever the Via says.
TCP_PBX = Endpoint("tcp", "127.0.0.1", 40001)
TCP_INSIDE = Endpoint("tcp", "127.0.0.1", 5080)
PEERS = [pytest.param((PBX, INSIDE), id="udp"), pytest.param((TCP_PBX, TCP_INSIDE), id="tcp")]
#: Where sipedge forwards the test INVITE (sip.twilio.com, Virginia first).
RURI = b"sip:+14155550100@127.0.0.1:5080;user=phone"

Mutation = Callable[[bytes], bytes]


def invite(n: int) -> bytes:
    return make_request(b"INVITE", RURI,
                        via=[b"SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-mal-%d;rport" % n],
                        call_id=b"mal-%d@127.0.0.1" % n,
                        headers=[(b"Contact", b"<sip:pbx@127.0.0.1:5060>")])


def without(name: bytes) -> Mutation:
    def mutate(data: bytes) -> bytes:
        lines = data.split(b"\r\n")
        return b"\r\n".join(line for line in lines if not line.startswith(name + b":"))
    return mutate


def twice(name: bytes, value: bytes) -> Mutation:
    def mutate(data: bytes) -> bytes:
        return data.replace(b"\r\n" + name + b":", b"\r\n%s: %s\r\n%s:" % (name, value, name), 1)
    return mutate


def sub(old: bytes, new: bytes) -> Mutation:
    def mutate(data: bytes) -> bytes:
        assert old in data
        return data.replace(old, new, 1)
    return mutate


def extra_lines(lines: list[bytes]) -> Mutation:
    """Insert header lines right below the start line's Via (above Max-Forwards)."""
    return sub(b"\r\nMax-Forwards:", b"".join(b"\r\n" + line for line in lines) + b"\r\nMax-Forwards:")


@pytest.fixture
def h() -> ProxyHarness:
    harness = ProxyHarness()
    harness.bring_up()
    return harness


def feed(h: ProxyHarness, data: bytes, peer: tuple[Endpoint, Endpoint]) -> list:  # type: ignore[type-arg]
    return h.feed(data, peer[0], peer[1])


def assert_next_request_works(h: ProxyHarness, peer: tuple[Endpoint, Endpoint], n: int) -> None:
    out = feed(h, invite(n), peer)
    assert len(calls(out)) == 1, out
    assert [status_of(s) for s in responses(out)] == [100]


def answered(h: ProxyHarness, out: list, peer: tuple[Endpoint, Endpoint]) -> tuple[int, bytes]:  # type: ignore[type-arg]
    """The one response in ``out``: sent back to the peer (over its connection on TCP)."""
    assert calls(out) == []
    assert len(out) == 1, out
    assert out[0].dest == peer[0] and out[0].local == peer[1]
    line = first_line(out[0].data)
    return status_of(out[0]), line[12:]


# ------------------------------------------------------------------- mandatory headers

#: RFC 3261 §8.1.1: each mandatory header removed in turn.  Before issue 13 all five were
#: dropped silently (the lenient answer builder wanted every one of them present).
MISSING = [
    (b"From", 400, b"Missing From"),
    (b"To", 400, b"Missing To"),
    (b"Call-ID", 400, b"Missing Call-ID"),
    (b"CSeq", 400, b"Missing CSeq"),
]


@pytest.mark.parametrize("peer", PEERS)
@pytest.mark.parametrize(("name", "status", "phrase"), MISSING, ids=[m[0].decode() for m in MISSING])
def test_missing_mandatory_header_answered_400_naming_it(
        h: ProxyHarness, peer: tuple[Endpoint, Endpoint], name: bytes, status: int,
        phrase: bytes) -> None:
    data = without(name)(invite(1))
    out = feed(h, data, peer)
    assert answered(h, out, peer) == (status, phrase)
    reply = out[0].data
    # RFC 3261 §8.2.6.2: the Via is copied (the answer is matched by it), the header that
    # was missing stays missing, the others are copied.
    assert headers(reply, b"Via") == headers(data, b"Via")
    assert headers(reply, name) == []
    for other in (b"From", b"Call-ID", b"CSeq"):
        if other != name:
            assert header(reply, other) == header(data, other)
    assert h.core.stats.parse_errors_by_status == {400: 1}
    assert h.core.stats.local_replies == {400: 1}
    assert [(type(e), e.status) for e in h.events] == [(RequestRejected, 400)]  # type: ignore[union-attr]
    assert_next_request_works(h, peer, 2)


@pytest.mark.parametrize("peer", PEERS)
def test_missing_via_dropped_nothing_to_answer_to(
        h: ProxyHarness, peer: tuple[Endpoint, Endpoint]) -> None:
    # No Via: a response could be neither routed (§18.2.2) nor matched (§17.1.3) -- on a
    # stream a response without Via is dropped by the client too, so none is sent.
    out = feed(h, without(b"Via")(invite(1)), peer)
    assert out == []
    assert h.core.stats.parse_errors_by_status == {400: 1}
    assert [e.reason for e in h.events if isinstance(e, MessageDropped)] == [
        DropReason.UNANSWERABLE]
    assert_next_request_works(h, peer, 2)


@pytest.mark.parametrize("peer", PEERS)
def test_missing_max_forwards_forwarded_with_70(
        h: ProxyHarness, peer: tuple[Endpoint, Endpoint]) -> None:
    # RFC 3261 §16.6 step 3: a proxy adds Max-Forwards 70 when it is absent (it is
    # mandatory for a UAC, §8.1.1.6, not a reason to refuse the request at a proxy).
    out = feed(h, without(b"Max-Forwards")(invite(1)), peer)
    fwd = calls(out)
    assert len(fwd) == 1
    assert headers(fwd[0].data, b"Max-Forwards") == [b"70"]


def test_several_missing_headers_all_named(h: ProxyHarness) -> None:
    data = b"INVITE sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bK-x\r\n\r\n"
    out = h.feed(data, PBX)
    assert answered(h, out, (PBX, INSIDE)) == (400, b"Missing To, From, Call-ID, CSeq")


def test_missing_header_with_unparsable_via_dropped(h: ProxyHarness) -> None:
    data = without(b"Call-ID")(invite(1)).replace(b"Via: SIP/2.0/UDP 127.0.0.1:5060",
                                                  b"Via: SIP/2.0/UDP <127.0.0.1>")
    assert h.feed(data, PBX) == []
    assert h.core.stats.parse_errors_by_status == {400: 1}


# ------------------------------------------------------------------- every class

#: (id, mutation, status, reason phrase): the answer to each class of defect.
CLASSES: list[tuple[str, Mutation, int, bytes]] = [
    # RFC 4475 §3.3.8-9 / RFC 3261 §7.3.1: singletons appear once.
    ("dup-call-id", twice(b"Call-ID", b"other@127.0.0.1"), 400, b"Duplicate Call-ID"),
    ("dup-cseq", twice(b"CSeq", b"2 INVITE"), 400, b"Duplicate CSeq"),
    ("dup-from", twice(b"From", b"<sip:x@127.0.0.1>;tag=2"), 400, b"Duplicate From"),
    ("dup-to", twice(b"To", b"<sip:y@127.0.0.1>"), 400, b"Duplicate To"),
    ("dup-max-forwards", twice(b"Max-Forwards", b"10"), 400, b"Duplicate Max-Forwards"),
    ("dup-content-length-differ", twice(b"Content-Length", b"5"), 400,
     b"Duplicate Content-Length"),
    # Equal values too: a downstream that frames by the other one must never be given two.
    ("dup-content-length-same", twice(b"Content-Length", b"0"), 400, b"Duplicate Content-Length"),
    # RFC 3261 §7.3.1 / §25.1: a header name is a token.
    ("nul-in-name", sub(b"\r\nContact:", b"\r\nCon\x00tact:"), 400, b"NUL In Header"),
    ("ctl-in-name", sub(b"\r\nContact:", b"\r\nCon\x01tact:"), 400, b"Bad Header Name"),
    ("esc-in-name", sub(b"\r\nContact:", b"\r\nCon\x1btact:"), 400, b"Bad Header Name"),
    ("del-in-name", sub(b"\r\nContact:", b"\r\nCon\x7ftact:"), 400, b"Bad Header Name"),
    ("8bit-in-name", sub(b"\r\nContact:", b"\r\nCon\xfftact:"), 400, b"Bad Header Name"),
    ("space-in-name", sub(b"\r\nContact:", b"\r\nCon tact:"), 400, b"Bad Header Name"),
    ("empty-name", sub(b"\r\nContact:", b"\r\n:"), 400, b"Bad Header Name"),
    ("no-colon", sub(b"\r\nContact:", b"\r\nX-Flag\r\nContact:"), 400, b"Bad Header Line"),
    ("fold-first", sub(b"\r\nVia:", b"\r\n  folded\r\nVia:"), 400, b"Bad Header Line"),
    # A bare LF (a lenient downstream's line end: header injection).
    ("bare-lf", sub(b"\r\nContact:", b"\nContact:"), 400, b"Bad Line Ending"),
    # NUL in a value outside a quoted-pair (C stacks end the string there).
    ("nul-in-value", sub(b"\r\nContact: <sip:pbx@127.0.0.1:5060>", b"\r\nSubject: a\x00b"),
     400, b"NUL In Header"),
    # RFC 3261 §20.14 Content-Length = 1*DIGIT; §18.3 a datagram shorter than it: 400.
    ("cl-negative", sub(b"Content-Length: 0", b"Content-Length: -1"), 400, b"Bad Content-Length"),
    ("cl-non-digit", sub(b"Content-Length: 0", b"Content-Length: 0x10"), 400,
     b"Bad Content-Length"),
    ("cl-empty", sub(b"Content-Length: 0", b"Content-Length: "), 400, b"Bad Content-Length"),
    ("cl-2^32", sub(b"Content-Length: 0", b"Content-Length: 4294967296"), 400,
     b"Bad Content-Length"),
    # 2^32 + 1 would wrap to 1 in a 32-bit stack and frame one byte of body.
    ("cl-2^32-wrap", lambda d: d.replace(b"Content-Length: 0", b"Content-Length: 4294967297") + b"x",
     400, b"Bad Content-Length"),
    ("cl-2^64", sub(b"Content-Length: 0", b"Content-Length: 18446744073709551616"), 400,
     b"Bad Content-Length"),
    ("cl-over-datagram", sub(b"Content-Length: 0", b"Content-Length: 10"), 400, b"Truncated Body"),
    ("cseq-method-mismatch", sub(b"CSeq: 1 INVITE", b"CSeq: 1 OPTIONS"), 400,
     b"CSeq Method Mismatch"),
    ("cseq-not-digits", sub(b"CSeq: 1 INVITE", b"CSeq: x INVITE"), 400, b"Bad CSeq"),
    ("max-forwards-not-digits", sub(b"Max-Forwards: 70", b"Max-Forwards: -1"), 400,
     b"Bad Max-Forwards"),
    # Issue 13 limits (sip.message.Limits): beyond them 513 (§21.5.14), 414 for the R-URI.
    ("too-many-headers", extra_lines([b"X-H%d: v" % i for i in range(130)]), 513,
     b"Too Many Headers"),
    ("header-too-long", extra_lines([b"X-Long: " + b"a" * 9000]), 513, b"Header Too Long"),
    ("too-many-via-lines",
     extra_lines([b"Via: SIP/2.0/UDP 10.0.0.%d;branch=z9hG4bK%d" % (i, i) for i in range(70)]),
     513, b"Too Many Via"),
    ("too-many-via-values",
     extra_lines([b"Via: " + b", ".join(b"SIP/2.0/UDP 10.0.0.%d;branch=z9hG4bK%d" % (i, i)
                                          for i in range(70))]),
     513, b"Too Many Via"),
    ("branch-too-long", sub(b"branch=z9hG4bK-mal", b"branch=z9hG4bK" + b"b" * 300), 513,
     b"Branch Too Long"),
    ("request-uri-too-long", sub(RURI + b" SIP/2.0", RURI + b";x=" + b"a" * 9000 + b" SIP/2.0"),
     414, b"Request-URI Too Long"),
    ("message-too-large", extra_lines([b"X-Big-%d: " % i + b"a" * 7000 for i in range(10)]),
     513, b"Message Too Large"),
]


@pytest.mark.parametrize("peer", PEERS)
@pytest.mark.parametrize(("mutate", "status", "phrase"), [c[1:] for c in CLASSES],
                         ids=[c[0] for c in CLASSES])
def test_malformed_class_answered_with_specific_reason(
        h: ProxyHarness, peer: tuple[Endpoint, Endpoint], mutate: Mutation, status: int,
        phrase: bytes) -> None:
    data = mutate(invite(1))
    out = feed(h, data, peer)
    assert answered(h, out, peer) == (status, phrase)
    reply = out[0].data
    assert header(reply, b"Via") == b"SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-mal-1;rport" or (
        status == 513 and phrase == b"Branch Too Long")
    # Counted by the status it called for, and as a local reply (metrics read both).
    assert h.core.stats.parse_errors_by_status == {status: 1}
    assert h.core.stats.local_replies == {status: 1}
    assert [(type(e), e.status) for e in h.events] == [(RequestRejected, status)]  # type: ignore[union-attr]
    assert_next_request_works(h, peer, 2)


@pytest.mark.parametrize(("mutate", "status", "phrase"), [c[1:] for c in CLASSES],
                         ids=[c[0] for c in CLASSES])
def test_reason_phrase_is_short_ascii_literal(mutate: Mutation, status: int,
                                              phrase: bytes) -> None:
    # RFC 3261 §25.1 Reason-Phrase is TEXT-UTF8; ours are printable ASCII and short.
    assert all(0x20 <= c < 0x7F for c in phrase) and 0 < len(phrase) <= 32


def test_reason_phrase_does_not_echo_the_peer(h: ProxyHarness) -> None:
    evil = b"X-\x01<script>\r\n"[:-2]
    out = h.feed(invite(1).replace(b"\r\nContact:", b"\r\n" + evil + b": v\r\nContact:"), PBX)
    line = first_line(out[0].data)
    assert line == b"SIP/2.0 400 Bad Header Name"
    assert b"script" not in out[0].data.split(b"\r\n\r\n")[0].split(b"\r\n", 1)[0]


def test_limits_come_from_the_settings() -> None:
    h = ProxyHarness(settings_overrides={"message_limits": Limits(max_headers=7)})
    h.bring_up()
    out = h.feed(invite(1), PBX)  # 8 header lines
    assert answered(h, out, (PBX, INSIDE)) == (513, b"Too Many Headers")
    h2 = ProxyHarness(settings_overrides={"message_limits": Limits(max_headers=8)})
    h2.bring_up()
    assert len(calls(h2.feed(invite(1), PBX))) == 1


def test_oversized_response_dropped_not_answered(h: ProxyHarness) -> None:
    resp = (b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bK-se-x\r\n"
            + b"".join(b"X-H%d: v\r\n" % i for i in range(200))
            + b"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\n"
            b"Content-Length: 0\r\n\r\n")
    assert h.feed(resp, PBX) == []
    assert h.core.stats.parse_errors_by_status == {0: 1}


# ------------------------------------------------------------------- loops (§16.3 steps 3-4)


@pytest.mark.parametrize(("mf", "forwarded"), [(b"1000", b"70"), (b"71", b"70"), (b"70", b"69"),
                                               (b"1", b"0"), (b"99999999999999999999", b"70")])
def test_max_forwards_decremented_and_capped_at_70(h: ProxyHarness, mf: bytes,
                                                   forwarded: bytes) -> None:
    # RFC 3261 §16.6 step 3 decrements; RFC 5393 §4 (amplification is exponential in
    # Max-Forwards) lets a proxy reduce a value above 70 (Kamailio maxfwd max_limit).
    out = h.feed(invite(1).replace(b"Max-Forwards: 70", b"Max-Forwards: " + mf), PBX)
    fwd = calls(out)
    assert len(fwd) == 1
    assert headers(fwd[0].data, b"Max-Forwards") == [forwarded]


def test_max_forwards_zero_answered_483_and_counted(h: ProxyHarness) -> None:
    out = h.feed(invite(1).replace(b"Max-Forwards: 70", b"Max-Forwards: 0"), PBX)
    assert answered(h, out, (PBX, INSIDE)) == (483, b"Max-Forwards is 0")
    assert h.core.stats.local_replies == {483: 1}
    assert_next_request_works(h, (PBX, INSIDE), 2)


def test_in_dialog_request_routed_to_ourselves_answered_404(h: ProxyHarness) -> None:
    # A BYE whose Request-URI is our own listener and that has no Route left: forwarding
    # it would loop through our own sockets.
    bye = make_request(b"BYE", b"sip:127.0.0.3:5060", via=[b"SIP/2.0/UDP 127.0.0.1:5060;"
                       b"branch=z9hG4bK-own-1"], to=b"<sip:+14155550100@127.0.0.1>;tag=gw1",
                       call_id=b"own-1")
    out = h.feed(bye, PBX)
    assert answered(h, out, (PBX, INSIDE)) == (404, b"No Route To Target")


def test_ack_routed_to_ourselves_dropped(h: ProxyHarness) -> None:
    ack = make_request(b"ACK", b"sip:127.0.0.1:5080", via=[b"SIP/2.0/UDP 127.0.0.1:5060;"
                       b"branch=z9hG4bK-own-2"], to=b"<sip:+14155550100@127.0.0.1>;tag=gw1",
                       call_id=b"own-2")
    assert h.feed(ack, PBX) == []
    assert [e.reason for e in h.events if isinstance(e, MessageDropped)] == [
        DropReason.ACK_UNROUTABLE]
