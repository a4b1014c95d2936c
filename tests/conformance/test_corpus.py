"""Every manifest row of the shared corpus through parse() + proxy validation.

The expected verdict per message is spelled out below from each manifest's ``expected``
column (RFC 4475 §3, RFC 5118 §4, the flows' descriptions).  For messages a proxy forwards,
the forwarding transform is applied too and must leave every untouched byte as it was.
"""

from __future__ import annotations

import pytest

from sipedge.proxy.validation import Decision, decide
from sipedge.sip import (
    ForwardPlan,
    ParseError,
    Request,
    Response,
    StreamFramer,
    forward_request,
    parse,
    parse_via,
    strip_top_via,
)
from tests.conftest import CorpusCase, all_cases

FORWARD = Decision("forward", None)
DROP = Decision("drop", None)


def answer(status: int) -> Decision:
    return Decision("answer", status)


#: RFC 4475: non-forward verdicts (everything else in the manifest must be forwarded).
RFC4475_REJECTS: dict[str, Decision] = {
    # §3.1.2 invalid messages
    "badinv01": answer(400),
    "clerr": answer(400),
    "ncl": answer(400),
    "scalar02": answer(400),
    "scalarlg": DROP,  # a response: discard it
    "quotbal": answer(400),
    "ltgtruri": answer(400),
    "lwsruri": answer(400),
    "lwsstart": answer(400),
    "trws": answer(400),
    "escruri": answer(400),
    "baddate": answer(400),
    "regbadct": answer(400),
    "badaspec": answer(400),
    "baddn": answer(400),
    "badvers": answer(505),
    "mismatch01": answer(400),
    "mismatch02": answer(501),  # 501 preferred at proxies
    "bigcode": DROP,
    # §3.2 transaction layer: we choose the stateless 400 the RFC prefers
    "badbranch": answer(400),
    # §3.3 application layer
    "insuf": answer(400),
    "unkscm": answer(416),
    "novelsc": answer(416),
    "bext01": answer(420),
    "multi01": answer(400),
    "mcl01": answer(400),
    "bcast": DROP,
    "zeromf": answer(483),
    # archive-only "test": malformed request line
    "test": answer(400),
}
#: RFC 5118: only §4.2 ipv6-bad is a reject.
RFC5118_REJECTS: dict[str, Decision] = {"ipv6-bad": answer(400)}

CASES = all_cases()


def expected(case: CorpusCase) -> Decision:
    if case.set == "rfc4475":
        return RFC4475_REJECTS.get(case.name, FORWARD)
    if case.set == "rfc5118":
        return RFC5118_REJECTS.get(case.name, FORWARD)
    # flows: every message is well formed and passes stateless validation; absorbing the
    # ACK of a non-2xx is the transaction layer's job, not this verdict's.
    return FORWARD


def test_manifest_sizes() -> None:
    counts: dict[str, int] = {}
    for case in CASES:
        counts[case.set] = counts.get(case.set, 0) + 1
    assert counts == {"rfc4475": 50, "rfc5118": 12, "flows": 34}


def test_reject_tables_match_manifest_categories() -> None:
    names = {c.name for c in CASES if c.set == "rfc4475"}
    assert set(RFC4475_REJECTS) <= names
    for case in CASES:
        if case.set != "rfc4475":
            continue
        category = case.row["category"]
        if category == "parse_ok" or category == "compat":
            assert case.name not in RFC4475_REJECTS, case.name
        elif category in ("parse_reject", "semantic_reject", "transaction"):
            assert case.name in RFC4475_REJECTS, case.name


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_verdict(case: CorpusCase) -> None:
    assert decide(case.data) == expected(case)


PLAN = ForwardPlan(
    via=b"SIP/2.0/UDP 192.0.2.254:5060;branch=z9hG4bKsipedge1",
    record_route=(b"<sip:192.0.2.254;lr>",),
    received=b"198.51.100.7",
)


def _subsequence(needle: list[bytes], hay: list[bytes]) -> bool:
    it = iter(hay)
    return all(any(x == y for y in it) for x in needle)


def _relayable(case: CorpusCase) -> bool:
    """Requests, and responses with a Via below ours (a single-Via response is addressed
    to the element that sent the request and is consumed there, never relayed)."""
    msg = parse(case.data)
    return isinstance(msg, Request) or msg.via_count >= 2


FORWARDED = [c for c in CASES if expected(c) == FORWARD]


@pytest.mark.parametrize("case", [c for c in FORWARDED if _relayable(c)], ids=lambda c: c.id)
def test_forward_keeps_untouched_bytes(case: CorpusCase) -> None:
    msg = parse(case.data)
    if isinstance(msg, Response):
        out = strip_top_via(msg)
        again = parse(out)
        assert again.via_count == msg.via_count - 1
        assert again.body == msg.body
        assert out.endswith(msg.body)
        return
    assert isinstance(msg, Request)
    out = forward_request(msg, PLAN)
    fwd = parse(out)
    assert isinstance(fwd, Request)
    assert fwd.top_via.branch == b"z9hG4bKsipedge1"
    assert fwd.header_values(b"via")[1:2] and fwd.body == msg.body
    assert fwd.header(b"record-route") == b"<sip:192.0.2.254;lr>"
    mf = msg.max_forwards
    assert fwd.max_forwards == (70 if mf is None else min(mf - 1, 70))
    assert fwd.request_uri == msg.request_uri and fwd.method == msg.method
    # Every header line we had no reason to touch is there, byte-exact, in order.
    touched = {b"via", b"max-forwards", b"record-route"}
    lines = msg.header_lines()  # builds the header index read below
    keys = msg._keys
    assert keys is not None
    untouched = []
    for i, line in enumerate(lines):
        owner = next((k for k in reversed(keys[: i + 1]) if k is not None), None)
        if owner not in touched:
            untouched.append(line)
    assert _subsequence(untouched, fwd.header_lines())
    # The previous hop's Via got received= and nothing else changed in it.
    assert parse_via(fwd.header_values(b"via")[1]).received == b"198.51.100.7"
    # dblreq: the trailing noise never reaches the wire.
    assert len(out) - len(fwd.body) <= len(case.data) + 200


@pytest.mark.parametrize(
    "case", [c for c in FORWARDED if parse(c.data).has_header(b"content-length")],
    ids=lambda c: c.id)
def test_stream_framer_delivers_each_message(case: CorpusCase) -> None:
    msg = parse(case.data)
    framer = StreamFramer()
    # Two keep-alive pings, the message split in two, then the message again (pipelined).
    framer.feed(b"\r\n\r\n\r\n\r\n" + msg.data[:7])
    assert framer.next_message() is None
    framer.feed(msg.data[7:] + msg.data)
    assert framer.next_message() == msg.data
    assert framer.next_message() == msg.data
    assert framer.next_message() is None
    assert framer.pings == 2


@pytest.mark.parametrize(
    "case", [c for c in CASES if expected(c)[0] != "forward"], ids=lambda c: c.id
)
def test_rejects_never_raise_anything_but_parse_error(case: CorpusCase) -> None:
    try:
        parse(case.data)
    except ParseError as exc:
        assert exc.status == expected(case).status


def test_stream_framer_refuses_message_without_content_length() -> None:
    # RFC 3261 §18.3: Content-Length is mandatory on streams; inv2543 (RFC 4475 §3.4.1)
    # only works as a datagram, where the body is the rest of the packet.
    (case,) = [c for c in CASES if c.name == "inv2543"]
    framer = StreamFramer()
    framer.feed(case.data)
    with pytest.raises(ParseError):
        framer.next_message()


def test_corpus_is_complete() -> None:
    # The manifests' counts (../shared/corpus/README.md): a missing or partial corpus
    # must fail CI, not shrink the parametrized tests to nothing.
    counts = {s: sum(1 for c in CASES if c.set == s) for s in ("rfc4475", "rfc5118", "flows")}
    assert counts == {"rfc4475": 50, "rfc5118": 12, "flows": 34}
