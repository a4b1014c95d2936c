"""The Twilio catalogue: shipped data matches the reference, names resolve, public targets refused."""

from __future__ import annotations

import ipaddress
from datetime import date
from pathlib import Path

import pytest

from sipedge.catalogue import CatalogueError, load, parse
from sipedge.catalogue.loader import Catalogue
from sipedge.sip.address import Endpoint

EDGES = {
    # name: (legacy id, region, signalling IPs from ../shared/reference)
    "ashburn-ix": ("us1-ix", "Virginia", ("208.78.112.64", "208.78.112.65", "208.78.112.66")),
    "san-jose-ix": ("us2-ix", "Oregon", ("67.213.136.64", "67.213.136.65", "67.213.136.66")),
    "london-ix": ("ie1-ix", "London", ("185.187.132.68", "185.187.132.69", "185.187.132.70")),
    "frankfurt-ix": ("de1-ix", "Frankfurt", ("185.194.136.64", "185.194.136.65", "185.194.136.66")),
    "singapore-ix": ("sg1-ix", "Singapore", ("103.75.151.68", "103.75.151.69", "103.75.151.70")),
    "tokyo-ix": ("jp1-ix", "Tokyo", ("103.144.142.68", "103.144.142.69", "103.144.142.70")),
    "sydney-ix": ("au1-ix", "Sydney", ("103.146.214.68", "103.146.214.69", "103.146.214.70")),
    "sao-paulo-ix": ("br1-ix", "São Paulo", ("159.183.255.68", "159.183.255.69", "159.183.255.70")),
}

DATA = Path(__file__).parents[2] / "sipedge" / "catalogue" / "twilio.toml"


@pytest.fixture(scope="module")
def cat() -> Catalogue:
    return load()


def test_load_is_cached(cat: Catalogue) -> None:
    assert load() is cat


def test_catalogue_has_the_eight_edges_in_twilio_order(cat: Catalogue) -> None:
    assert cat.edge_names == tuple(EDGES)


@pytest.mark.parametrize("name", list(EDGES))
def test_edge_facts_match_reference(cat: Catalogue, name: str) -> None:
    legacy, region, ips = EDGES[name]
    m = cat.edge(name)
    assert not m.is_legacy and m.warning is None
    e = m.edge
    assert (e.name, e.legacy_id, e.region) == (name, legacy, region)
    assert tuple(str(ip) for ip in e.signalling_ips) == ips
    assert (e.port("udp"), e.port("tcp"), e.port("tls")) == (5060, 5060, 5061)


def test_virginia_and_oregon_ips_match_reference(cat: Catalogue) -> None:
    virginia = [str(ip) for ip in cat.edge("ashburn-ix").edge.signalling_ips]
    oregon = [str(ip) for ip in cat.edge("san-jose-ix").edge.signalling_ips]
    assert virginia == ["208.78.112.64", "208.78.112.65", "208.78.112.66"]
    assert oregon == ["67.213.136.64", "67.213.136.65", "67.213.136.66"]


def test_failover_partner_only_where_twilio_documents_one(cat: Catalogue) -> None:
    assert {e.name: e.failover for e in cat.edges if e.failover} == {"ashburn-ix": "san-jose-ix"}


@pytest.mark.parametrize("name", list(EDGES))
def test_legacy_id_normalised_with_warning(cat: Catalogue, name: str) -> None:
    legacy = EDGES[name][0]
    m = cat.edge(legacy.upper() + " ")
    assert m.edge.name == name
    assert m.is_legacy and m.given == legacy
    assert m.warning is not None and legacy in m.warning and name in m.warning


@pytest.mark.parametrize("name", ["roaming", "gll-ix", "GLL-IX"])
def test_media_only_edge_refused(cat: Catalogue, name: str) -> None:
    with pytest.raises(CatalogueError, match="not a SIP signalling edge") as info:
        cat.edge(name)
    assert "media-only" in info.value.reason


@pytest.mark.parametrize(
    ("name", "hint"),
    [("de1", "frankfurt-ix"), ("ashburn", "ashburn-ix"), ("umatilla", "san-jose-ix")],
)
def test_public_edge_name_refused_with_hint(cat: Catalogue, name: str, hint: str) -> None:
    with pytest.raises(CatalogueError, match="public") as info:
        cat.edge(name)
    assert hint in info.value.reason


def test_unknown_edge_refused(cat: Catalogue) -> None:
    with pytest.raises(CatalogueError, match="unknown edge 'mars-ix'"):
        cat.edge("mars-ix")


@pytest.mark.parametrize(
    ("domain", "edge", "expected"),
    [
        ("example", "ashburn-ix", "example.sip.ashburn-ix.twilio.com"),
        ("Example.sip.twilio.com", "san-jose-ix", "example.sip.san-jose-ix.twilio.com"),
        ("example", "us2-ix", "example.sip.san-jose-ix.twilio.com"),
        ("acme-1", "de1-ix", "acme-1.sip.frankfurt-ix.twilio.com"),
    ],
)
def test_localized_domain(cat: Catalogue, domain: str, edge: str, expected: str) -> None:
    assert cat.localized_domain(domain, edge) == expected


@pytest.mark.parametrize("domain", ["", "a.b", "-x", "x_y", "ex ample", "a" * 64])
def test_localized_domain_rejects_bad_unique_part(cat: Catalogue, domain: str) -> None:
    with pytest.raises(CatalogueError, match="unique part"):
        cat.localized_domain(domain, "ashburn-ix")


def test_localized_domain_refuses_media_only_edge(cat: Catalogue) -> None:
    with pytest.raises(CatalogueError):
        cat.localized_domain("example", "gll-ix")


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("example.sip.ashburn-ix.twilio.com", "interconnect"),
        ("EXAMPLE.SIP.SAO-PAULO-IX.TWILIO.COM.", "interconnect"),
        ("x.sip.us1-ix.twilio.com", "interconnect"),  # legacy Interconnect form
        ("x.pstn.frankfurt-ix.twilio.com", "interconnect"),  # Elastic SIP Trunking
        ("208.78.112.64", "interconnect"),
        ("::ffff:67.213.136.66", "interconnect"),
        ("x.sip.de1.twilio.com", "public"),  # legacy *public* Frankfurt, not Interconnect
        ("x.sip.twilio.com", "public"),
        ("x.sip.us1.twilio.com", "public"),
        ("x.pstn.twilio.com", "public"),
        ("x.sip.gll-ix.twilio.com", "public"),  # media-only edge: nothing proves it private
        ("sip.ashburn-ix.twilio.com", "public"),
        ("twilio.com", "public"),
        ("pbx.example.com", "other"),
        ("nottwilio.com", "other"),
        ("127.0.0.64", "other"),
        ("[::1]", "other"),
    ],
)
def test_classify_twilio_host(cat: Catalogue, host: str, expected: str) -> None:
    assert cat.classify_twilio_host(host) == expected


def test_signalling_ip_lookup(cat: Catalogue) -> None:
    assert cat.is_twilio_signalling_ip("185.187.132.69")
    assert cat.is_twilio_signalling_ip(ipaddress.IPv4Address("103.75.151.70"))
    assert not cat.is_twilio_signalling_ip("208.78.112.67")
    assert not cat.is_twilio_signalling_ip("garbage")
    edge = cat.edge_for_ip("67.213.136.65")
    assert edge is not None and edge.region == "Oregon"


def test_media_range(cat: Catalogue) -> None:
    assert cat.media_network == ipaddress.IPv4Network("168.86.128.0/18")
    assert cat.media_ports == (10000, 60000)
    assert cat.media_since == date(2024, 2, 21)
    assert cat.is_twilio_media("168.86.191.255", 60000)
    assert not cat.is_twilio_media("168.86.192.0")
    assert not cat.is_twilio_media("168.86.128.1", 9999)
    assert not cat.is_twilio_media("nope")


def test_source_date_present(cat: Catalogue) -> None:
    assert cat.source_date == "2026"
    assert "Interconnect" in cat.source
    assert 'date = "2026"' in DATA.read_text("utf-8")


def test_edge_endpoints_per_transport(cat: Catalogue) -> None:
    e = cat.edge("ashburn-ix").edge
    assert e.endpoints("tls") == tuple(
        Endpoint("tls", f"208.78.112.{n}", 5061) for n in (64, 65, 66)
    )
    assert e.endpoints()[0] == Endpoint("udp", "208.78.112.64", 5060)
    with pytest.raises(CatalogueError):
        e.endpoints("sctp")


def _mutate(old: str, new: str) -> str:
    text = DATA.read_text("utf-8")
    assert old in text
    return text.replace(old, new, 1)


@pytest.mark.parametrize(
    ("old", "new", "match"),
    [
        ('date = "2026"', 'date = "last spring"', "ISO 8601"),
        ('legacy_id = "us2-ix"', 'legacy_id = "us1-ix"', "duplicate"),
        ('"67.213.136.64"', '"208.78.112.64"', "two edges"),
        ('failover = "san-jose-ix"', 'failover = "mars-ix"', "unknown failover"),
        ('"67.213.136.64"', '"67.213.136"', "not an IPv4"),
        ("tls = 5061", "tls = true", "expected int"),
        ("[media]", "[media\n", "not valid TOML"),
        ('domain_template = "{domain}.sip.{edge}.twilio.com"', 'domain_template = "x"', "needs"),
    ],
)
def test_parse_rejects_broken_data(old: str, new: str, match: str) -> None:
    with pytest.raises(CatalogueError, match=match):
        parse(_mutate(old, new))
