"""proxy.rewrite: what the forwarding splices (RFC 3261 §16.6): Via, Record-Route, R-URI host."""

from __future__ import annotations

import pytest

from sipedge.proxy.rewrite import (
    BRANCH_PREFIX,
    branch_for,
    localize_request_uri,
    loop_hash,
    record_route_value,
    strip_params,
    via_value,
)
from sipedge.sip.address import Endpoint
from sipedge.sip.uri import parse_uri

HOST = b"example.sip.ashburn-ix.twilio.com"


def _loop(**kw: object) -> bytes:
    args: dict[str, object] = {"request_uri": b"sip:a@" + HOST, "call_id": b"c1",
                               "from_tag": b"f", "to_tag": None, "cseq": 1, "method": b"INVITE"}
    args.update(kw)
    return loop_hash(**args)  # type: ignore[arg-type]


def test_loop_hash_stable_for_same_request() -> None:
    assert _loop() == _loop()
    assert len(_loop()) == 12 and _loop().isalnum()


@pytest.mark.parametrize("change", [
    {"request_uri": b"sip:b@" + HOST}, {"call_id": b"c2"}, {"from_tag": b"g"},
    {"to_tag": b"t"}, {"cseq": 2}, {"method": b"BYE"},
])
def test_loop_hash_differs_when_request_changes(change: dict[str, object]) -> None:
    assert _loop(**change) != _loop()


def test_loop_hash_fields_are_delimited() -> None:
    assert _loop(call_id=b"ab", from_tag=b"c") != _loop(call_id=b"a", from_tag=b"bc")


def test_branch_for_has_magic_cookie_and_our_mark() -> None:
    branch = branch_for(b"abc", b"key", 0)
    assert branch.startswith(b"z9hG4bK") and branch.startswith(BRANCH_PREFIX + b"abc")


def test_branch_for_unique_per_attempt_and_transaction_stable_otherwise() -> None:
    assert branch_for(b"l", b"k", 0) == branch_for(b"l", b"k", 0)
    assert branch_for(b"l", b"k", 0) != branch_for(b"l", b"k", 1)
    assert branch_for(b"l", b"k1", 0) != branch_for(b"l", b"k2", 0)


@pytest.mark.parametrize("listener,via", [
    (Endpoint("udp", "127.0.0.3", 5060), b"SIP/2.0/UDP 127.0.0.3:5060;branch=z9hG4bK-sex"),
    (Endpoint("tcp", "127.0.0.1", 5080), b"SIP/2.0/TCP 127.0.0.1:5080;branch=z9hG4bK-sex"),
    (Endpoint("tls", "::1", 5061), b"SIP/2.0/TLS [::1]:5061;branch=z9hG4bK-sex"),
])
def test_via_value_names_the_egress_listener(listener: Endpoint, via: bytes) -> None:
    assert via_value(listener, b"z9hG4bK-sex") == via


@pytest.mark.parametrize("listener,rr", [
    (Endpoint("udp", "127.0.0.3", 5060), b"<sip:127.0.0.3:5060;lr>"),
    (Endpoint("tcp", "127.0.0.1", 5080), b"<sip:127.0.0.1:5080;transport=tcp;lr>"),
    (Endpoint("tls", "127.0.0.3", 5061), b"<sips:127.0.0.3:5061;lr>"),
])
def test_record_route_value_is_loose_route_for_transport(listener: Endpoint, rr: bytes) -> None:
    assert record_route_value(listener) == rr


@pytest.mark.parametrize("uri,out", [
    (b"sip:+14155550100@10.0.0.5:5080;user=phone", b"sip:+14155550100@" + HOST + b";user=phone"),
    (b"sip:alice@pbx.example.com", b"sip:alice@" + HOST),
    (b"sip:alice:secret@10.0.0.5", b"sip:alice:secret@" + HOST),
    (b"sip:10.0.0.5:5080", b"sip:" + HOST),
    (b"sip:bob@[2001:db8::1]:5070;transport=tcp?X=y", b"sip:bob@" + HOST + b";transport=tcp?X=y"),
    (b"sips:bob@10.0.0.5", b"sips:bob@" + HOST),
    (b"tel:+14155550100", b"sip:+14155550100@" + HOST + b";user=phone"),
    (b"tel:+358-555-1234567;postd=pp22",
     b"sip:+358-555-1234567;postd=pp22@" + HOST + b";user=phone"),
])
def test_localize_request_uri_keeps_user_and_params(uri: bytes, out: bytes) -> None:
    assert localize_request_uri(parse_uri(uri), HOST) == out


@pytest.mark.parametrize("uri,out", [
    (b"sip:+1@127.0.0.3;edge=ashburn-ix", b"sip:+1@127.0.0.3"),
    (b"sip:+1@127.0.0.3;user=phone;tnx=x;EDGE=y;lr", b"sip:+1@127.0.0.3;user=phone;lr"),
    (b"sip:+1@127.0.0.3;user=phone", b"sip:+1@127.0.0.3;user=phone"),
    (b"sip:+1@127.0.0.3", b"sip:+1@127.0.0.3"),
])
def test_strip_params_removes_edge_and_tnx_only(uri: bytes, out: bytes) -> None:
    assert strip_params(parse_uri(uri), (b"edge", b"tnx")) == out
