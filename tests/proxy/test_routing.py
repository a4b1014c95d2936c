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


# -- a worker's own endpoints (issue 14) ------------------------------------------------------

#: Worker 0 of 2 with port_stride 100: its own alias of every listener, and both workers'.
OWN = {INSIDE[0]: Endpoint("udp", "127.0.0.1", 5180), INSIDE[1]: Endpoint("tcp", "127.0.0.1", 5180),
       OUTSIDE[0]: Endpoint("udp", "127.0.0.3", 5160)}
SIBLINGS = (*OWN.values(), Endpoint("udp", "127.0.0.1", 5280), Endpoint("tcp", "127.0.0.1", 5280),
            Endpoint("udp", "127.0.0.3", 5260))


def worker_listeners() -> Listeners:
    return Listeners(INSIDE, OUTSIDE, own=OWN, siblings=SIBLINGS)


def test_worker_egress_is_the_own_alias_of_the_listener_used_before() -> None:
    listeners = worker_listeners()
    assert listeners.egress(outside=True, transport="udp") == OWN[OUTSIDE[0]]
    assert listeners.egress(outside=False, transport="udp") == OWN[INSIDE[0]]
    assert listeners.egress(outside=False, transport="tcp") == OWN[INSIDE[1]]
    # No TLS listener outside: connect out from the outside alias's address.
    assert listeners.egress(outside=True, transport="tls") == Endpoint("tls", "127.0.0.3", 5160)
    assert listeners.egress(outside=True, transport="sctp") == Endpoint("sctp", "127.0.0.3", 5160)


def test_worker_egress_allocates_nothing_per_call() -> None:
    listeners = worker_listeners()
    assert listeners.egress(outside=True, transport="udp") is listeners.egress(
        outside=True, transport="udp")
    assert listeners.egress(outside=True, transport="tls") is listeners.egress(
        outside=True, transport="tls")


def test_worker_record_route_of_a_shared_listener_names_its_alias() -> None:
    listeners = worker_listeners()
    assert listeners.record_route(OUTSIDE[0]) == b"<sip:127.0.0.3:5160;lr>"
    assert listeners.record_route(INSIDE[1]) == b"<sip:127.0.0.1:5180;transport=tcp;lr>"
    # Shared and alias give the very same value: a double Record-Route collapses to one.
    assert listeners.record_route(INSIDE[0]) is listeners.record_route(OWN[INSIDE[0]])
    assert listeners.record_route(SIBLINGS[-1]) == b"<sip:127.0.0.3:5260;lr>"
    assert listeners.alias(OUTSIDE[0]) == OWN[OUTSIDE[0]]
    assert listeners.alias(Endpoint("udp", "127.0.0.9", 1)) == Endpoint("udp", "127.0.0.9", 1)


@pytest.mark.parametrize("uri,own", [
    (b"sip:127.0.0.3:5160;lr", True),  # this worker
    (b"sip:127.0.0.3:5260;lr", True),  # worker 1
    (b"sip:127.0.0.1:5280;transport=tcp;lr", True),
    (b"sip:127.0.0.3:5060;lr", True),  # the shared listener
    (b"sip:127.0.0.3:5360;lr", False),  # no worker 2
    (b"sip:127.0.0.64:5160;lr", False),
])
def test_worker_is_own_counts_every_sibling(uri: bytes, own: bool) -> None:
    listeners = worker_listeners()
    assert listeners.is_own(parse_uri(uri)) is own
    assert listeners.is_own_route(b"<" + uri + b">") is own
    assert listeners.is_own_endpoint(uri_endpoint(parse_uri(uri)) or Endpoint("udp", "-", 0)) is own


def test_worker_is_own_route_knows_every_record_route_value_exactly() -> None:
    listeners = worker_listeners()
    for ep in (*INSIDE, *OUTSIDE, *SIBLINGS):
        assert listeners.is_own_route(listeners.record_route(ep))


def test_single_process_listeners_have_no_aliases() -> None:
    listeners = Listeners(INSIDE, OUTSIDE)
    assert listeners.own == {} and listeners.siblings == ()
    assert listeners.record_route(OUTSIDE[0]) == b"<sip:127.0.0.3:5060;lr>"
    assert not listeners.is_own_endpoint(Endpoint("udp", "127.0.0.3", 5160))
