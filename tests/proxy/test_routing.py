"""proxy.routing: source classification, URI → endpoint, our listeners (RFC 3261 §16.4, §16.12)."""

from __future__ import annotations

import ipaddress

import pytest

from sipedge.proxy.routing import Direction, Listeners, classify_source, is_allowed, uri_endpoint
from sipedge.sip.address import Endpoint
from sipedge.sip.uri import parse_uri

ALLOW = (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("10.0.0.0/8"),
         ipaddress.ip_network("2001:db8::/32"))
GATEWAYS = frozenset({"127.0.0.64", "127.0.1.64"})
INSIDE = (Endpoint("udp", "127.0.0.1", 5080), Endpoint("tcp", "127.0.0.1", 5080))
OUTSIDE = (Endpoint("udp", "127.0.0.3", 5060),)


@pytest.mark.parametrize("host,direction", [
    ("127.0.0.1", Direction.OUTBOUND),
    ("10.9.8.7", Direction.OUTBOUND),
    ("2001:db8::5", Direction.OUTBOUND),
    ("127.0.0.64", Direction.INBOUND),
    ("127.0.1.64", Direction.INBOUND),
    ("127.0.0.99", Direction.UNKNOWN),
    ("2001:db9::1", Direction.UNKNOWN),
    ("not-an-ip", Direction.UNKNOWN),
])
def test_classify_source_by_address(host: str, direction: Direction) -> None:
    assert classify_source(host, ALLOW, GATEWAYS) is direction


def test_classify_source_gateway_wins_over_allow_list() -> None:
    assert classify_source("127.0.0.64", (ipaddress.ip_network("127.0.0.0/8"),), GATEWAYS) \
        is Direction.INBOUND


def test_is_allowed_rejects_other_ip_version() -> None:
    assert not is_allowed("::ffff:127.0.0.1", (ipaddress.ip_network("127.0.0.1/32"),))


@pytest.mark.parametrize("uri,endpoint", [
    (b"sip:127.0.0.64", Endpoint("udp", "127.0.0.64", 5060)),
    (b"sip:gw@127.0.0.64:5070", Endpoint("udp", "127.0.0.64", 5070)),
    (b"sip:127.0.0.64;transport=tcp", Endpoint("tcp", "127.0.0.64", 5060)),
    (b"sip:127.0.0.64;transport=TLS", Endpoint("tls", "127.0.0.64", 5061)),
    (b"sips:127.0.0.64", Endpoint("tls", "127.0.0.64", 5061)),
    (b"sip:[2001:db8::1]:5062", Endpoint("udp", "2001:db8::1", 5062)),
    (b"sip:127.0.0.64;transport=sctp", Endpoint("udp", "127.0.0.64", 5060)),
])
def test_uri_endpoint_for_ip_literals(uri: bytes, endpoint: Endpoint) -> None:
    assert uri_endpoint(parse_uri(uri)) == endpoint


@pytest.mark.parametrize("uri", [b"sip:example.sip.twilio.com", b"tel:+14155550100"])
def test_uri_endpoint_none_for_names_and_tel(uri: bytes) -> None:
    assert uri_endpoint(parse_uri(uri)) is None


@pytest.mark.parametrize("uri,own", [
    (b"sip:127.0.0.1:5080;lr", True),
    (b"sip:127.0.0.3;lr", True),  # no port = 5060, where the outside listens
    (b"sip:127.0.0.3:5060;transport=tcp;lr", True),
    (b"sip:127.0.0.1;lr", False),  # 5060 on the inside address is the PBX, not us
    (b"sips:127.0.0.3;lr", False),  # 5061 by default
    (b"sip:127.0.0.64:5060;lr", False),
])
def test_listeners_is_own(uri: bytes, own: bool) -> None:
    assert Listeners(INSIDE, OUTSIDE).is_own(parse_uri(uri)) is own


def test_listeners_is_own_route_parses_name_addr() -> None:
    listeners = Listeners(INSIDE, OUTSIDE)
    assert listeners.is_own_route(b"<sip:127.0.0.3:5060;lr>")
    assert listeners.is_own_route(b'"edge" <sip:127.0.0.1:5080;lr>;x=y')
    assert not listeners.is_own_route(b"<sip:127.0.0.64;lr>")
    assert not listeners.is_own_route(b"<garbage")


def test_listeners_is_own_endpoint_ignores_transport() -> None:
    listeners = Listeners(INSIDE, OUTSIDE)
    assert listeners.is_own_endpoint(Endpoint("tcp", "127.0.0.3", 5060))
    assert not listeners.is_own_endpoint(Endpoint("udp", "127.0.0.10", 5060))


def test_listeners_egress_picks_side_and_transport() -> None:
    listeners = Listeners(INSIDE, OUTSIDE)
    assert listeners.egress(outside=True, transport="udp") == OUTSIDE[0]
    assert listeners.egress(outside=False, transport="udp") == INSIDE[0]
    assert listeners.egress(outside=False, transport="tcp") == INSIDE[1]
    # No TLS listener outside: connect out from the outside address.
    assert listeners.egress(outside=True, transport="tls") == Endpoint("tls", "127.0.0.3", 5060)
