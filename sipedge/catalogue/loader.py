"""The Twilio Interconnect catalogue: data file → frozen values, and the questions config asks.

Theory of operation: ``twilio.toml`` (shipped as package data) holds the facts copied from
Twilio's documentation, with the date they were checked. ``parse`` validates that text once and
builds a ``Catalogue``; ``load`` does it for the shipped file and caches the result, so every
caller shares one immutable value. The catalogue is sans-I/O apart from reading its own package
data: no network, no clock, no logging. Problems are reported as ``CatalogueError(reason)``,
which ``config.py`` wraps into ``ConfigError(path, key, reason)``; a warning (a legacy edge id
that was normalised) is returned as text for the caller to log, never logged here.
"""

from __future__ import annotations

import functools
import ipaddress
import tomllib
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from importlib import resources
from typing import Any, Literal

from sipedge.sip.address import TRANSPORTS, Endpoint

__all__ = [
    "Catalogue",
    "CatalogueError",
    "Edge",
    "EdgeMatch",
    "HostClass",
    "load",
    "parse",
]

#: What ``classify_twilio_host`` answers.
HostClass = Literal["interconnect", "public", "other"]

_TWILIO_SUFFIX = ".twilio.com"
# Twilio SIP domains are {d}.sip.{edge}.twilio.com; Elastic SIP Trunking uses .pstn. the same way.
_SERVICE_LABELS = frozenset({"sip", "pstn"})
_IP = ipaddress.IPv4Address | ipaddress.IPv6Address
_LDH = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


class CatalogueError(Exception):
    """A name the catalogue cannot accept, or a broken data file.

    Attributes:
        reason: one line for the operator, e.g. ``"'gll-ix' is a media-only edge ..."``.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Edge:
    """One Interconnect SIP edge and the signalling gateways behind it.

    Attributes:
        name: canonical edge name, ``"ashburn-ix"``.
        legacy_id: the old name still accepted by Twilio, ``"us1-ix"``.
        region: the gateways' region as Twilio names it, ``"Virginia"``.
        location: the exchange, for humans.
        signalling_ips: the gateways' addresses, in Twilio's order.
        ports: signalling port per transport (``udp``/``tcp`` 5060, ``tls`` 5061).
        public_names: names of the *public* edge of the same city (refused, with a hint).
        failover: Twilio's documented fallback edge, or None when Twilio documents none.
    """

    name: str
    legacy_id: str
    region: str
    location: str
    signalling_ips: tuple[ipaddress.IPv4Address, ...]
    ports: Mapping[str, int] = field(hash=False, compare=False)
    public_names: tuple[str, ...] = ()
    failover: str | None = None

    def port(self, transport: str) -> int:
        """The gateways' port for ``transport`` (``udp``, ``tcp`` or ``tls``)."""
        return self.ports[transport]

    def endpoints(self, transport: str = "udp") -> tuple[Endpoint, ...]:
        """The default gateway set of this edge as transport addresses, in Twilio's order.

        Args:
            transport: ``"udp"``, ``"tcp"`` or ``"tls"``.

        Returns:
            One ``Endpoint`` per signalling IP, on the edge's port for that transport.

        Raises:
            CatalogueError: ``transport`` is not one sipedge speaks.
        """
        if transport not in TRANSPORTS:
            raise CatalogueError(f"unknown transport {transport!r}; expected one of {TRANSPORTS}")
        port = self.port(transport)
        return tuple(Endpoint(transport, str(ip), port) for ip in self.signalling_ips)


@dataclass(frozen=True, slots=True)
class EdgeMatch:
    """The answer to ``Catalogue.edge(name)``: the canonical edge, and how it was named.

    Attributes:
        edge: the canonical edge.
        given: the name as given (stripped, lower case).
        warning: None for a canonical name; for a legacy id, the text config should log once.
    """

    edge: Edge
    given: str
    warning: str | None = None

    @property
    def is_legacy(self) -> bool:
        """True when ``given`` was a legacy id (``us1-ix``) normalised to the canonical name."""
        return self.warning is not None


@dataclass(frozen=True, slots=True)
class Catalogue:
    """Twilio's Interconnect facts, validated. Build with ``load()`` (or ``parse`` in tests).

    Attributes:
        edges: the SIP edges in Twilio's order.
        source: the documents the data was copied from.
        source_date: when they were checked, ISO 8601 (possibly reduced precision: ``"2026"``).
        domain_template: ``"{domain}.sip.{edge}.twilio.com"``.
        media_network: where Twilio's media comes from and goes to (168.86.128.0/18).
        media_ports: inclusive UDP port range of Twilio's media side (10000, 60000).
        media_since: the date that media range took effect.
        media_only_edges: edge names that exist for media only (``roaming``, ``gll-ix``).
    """

    edges: tuple[Edge, ...]
    source: str
    source_date: str
    domain_template: str
    media_network: ipaddress.IPv4Network
    media_ports: tuple[int, int]
    media_since: date
    media_only_edges: frozenset[str]
    # Lookup tables derived from `edges` in __post_init__ (excluded from eq/repr: derived data).
    _by_name: dict[str, Edge] = field(init=False, repr=False, compare=False)
    _by_ip: dict[ipaddress.IPv4Address, Edge] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_name: dict[str, Edge] = {}
        for e in self.edges:
            by_name[e.name] = e
            by_name[e.legacy_id] = e
        # object.__setattr__: the dataclass is frozen; these are caches built once here.
        object.__setattr__(self, "_by_name", by_name)
        object.__setattr__(self, "_by_ip", {ip: e for e in self.edges for ip in e.signalling_ips})

    @property
    def edge_names(self) -> tuple[str, ...]:
        """Canonical edge names in Twilio's order."""
        return tuple(e.name for e in self.edges)

    def edge(self, name: str) -> EdgeMatch:
        """Resolve an edge name from config or a URI parameter (``edge=``) to its canonical edge.

        Legacy ids (``us1-ix``) are accepted and normalised; the match carries a warning text.

        Args:
            name: ``"ashburn-ix"``, ``"us1-ix"``, ... (case and surrounding blanks ignored).

        Returns:
            The canonical edge and how it was named.

        Raises:
            CatalogueError: unknown name, a media-only edge (``roaming``/``gll-ix``), or the
                name of a public edge (``ashburn``, ``de1``), which would leave the private link.
        """
        key = name.strip().lower()
        found = self._by_name.get(key)
        if found is not None:
            if key == found.name:
                return EdgeMatch(found, key)
            return EdgeMatch(
                found,
                key,
                f"edge {key!r} is a legacy id; using its current name {found.name!r}",
            )
        if key in self.media_only_edges:
            raise CatalogueError(
                f"{key!r} is a media-only edge, not a SIP signalling edge; "
                f"use one of {', '.join(self.edge_names)}"
            )
        for e in self.edges:
            if key in e.public_names:
                raise CatalogueError(
                    f"{key!r} is a public Twilio edge, not an Interconnect edge; "
                    f"did you mean {e.name!r}?"
                )
        raise CatalogueError(f"unknown edge {name!r}; expected one of {', '.join(self.edge_names)}")

    def localized_domain(self, domain: str, edge: str) -> str:
        """The Interconnect SIP domain for ``domain`` on ``edge`` (the Request-URI host).

        Args:
            domain: the unique part of the Twilio SIP domain (``"example"``), or the whole
                ``"example.sip.twilio.com"``, which is reduced to its unique part.
            edge: an edge name; legacy ids are normalised (the result always uses the
                canonical name, which Twilio documents as current).

        Returns:
            ``"example.sip.ashburn-ix.twilio.com"``.

        Raises:
            CatalogueError: the edge is refused (see ``edge``) or ``domain`` is not one DNS label.
        """
        canonical = self.edge(edge).edge.name
        d = domain.strip().lower().rstrip(".")
        if d.endswith(".sip.twilio.com"):
            d = d[: -len(".sip.twilio.com")]
        # The unique part is a single DNS label (RFC 1035 LDH); anything else would build a
        # host that is not the customer's Twilio domain.
        if not d or len(d) > 63 or not set(d) <= _LDH or d[0] == "-" or d[-1] == "-":
            raise CatalogueError(
                f"SIP domain {domain!r} must be the unique part of <domain>.sip.twilio.com "
                "(letters, digits, hyphens)"
            )
        return self.domain_template.format(domain=d, edge=canonical)

    def classify_twilio_host(self, host: str) -> HostClass:
        """Say whether a target host keeps calls on the private link.

        ``interconnect``: ``{d}.sip.{edge}.twilio.com`` / ``{d}.pstn.{edge}.twilio.com`` for a
        known Interconnect edge (legacy ids included), or one of the catalogue's signalling IPs.
        ``public``: any other name under twilio.com (``x.sip.twilio.com``, ``x.sip.de1.twilio.com``)
        — Twilio's reference says to treat every non-``-ix`` Twilio domain as public, and we treat
        unknown ``-ix`` names (``gll-ix``) the same way because nothing proves they are private.
        ``other``: not Twilio at all (a PBX, a lab address).

        Args:
            host: a host name or IP literal (IPv6 may be bracketed); case and a trailing dot
                are ignored.

        Returns:
            ``"interconnect"``, ``"public"`` or ``"other"``.
        """
        h = host.strip().lower().rstrip(".")
        if h.startswith("[") and h.endswith("]"):
            h = h[1:-1]
        try:
            ip = ipaddress.ip_address(h)
        except ValueError:
            pass
        else:
            return "interconnect" if self.is_twilio_signalling_ip(ip) else "other"
        if h != "twilio.com" and not h.endswith(_TWILIO_SUFFIX):
            return "other"
        labels = h[: -len(_TWILIO_SUFFIX)].split(".") if h != "twilio.com" else []
        # Exactly {d}.{sip|pstn}.{edge}: the edge label must name a known Interconnect edge.
        if (
            len(labels) == 3
            and labels[0]
            and labels[1] in _SERVICE_LABELS
            and labels[2] in self._by_name
        ):
            return "interconnect"
        return "public"

    def is_twilio_signalling_ip(self, ip: str | _IP) -> bool:
        """True when ``ip`` is one of Twilio's Interconnect signalling gateways (any edge)."""
        return self.edge_for_ip(ip) is not None

    def edge_for_ip(self, ip: str | _IP) -> Edge | None:
        """The edge whose signalling gateway has address ``ip``, or None (also for garbage)."""
        if isinstance(ip, str):
            try:
                ip = ipaddress.ip_address(ip.strip())
            except ValueError:
                return None
        if isinstance(ip, ipaddress.IPv6Address):
            # An IPv4-mapped address (::ffff:a.b.c.d) from a dual-stack socket is the same host.
            if ip.ipv4_mapped is None:
                return None
            ip = ip.ipv4_mapped
        return self._by_ip.get(ip)

    def is_twilio_media(self, ip: str, port: int | None = None) -> bool:
        """True when ``ip`` (and ``port``, if given) is inside Twilio's Interconnect media range."""
        try:
            addr = ipaddress.ip_address(ip.strip())
        except ValueError:
            return False
        if addr not in self.media_network:
            return False
        return port is None or self.media_ports[0] <= port <= self.media_ports[1]


# ----------------------------------------------------------------------------------------------
# Loading and validating the data file


def _get(table: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    """``table[key]`` checked to be of ``kind``; a broken data file is a CatalogueError."""
    value = table.get(key)
    # bool is an int subclass; a port of `true` must not pass as 1.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise CatalogueError(f"catalogue {where}.{key}: expected {kind.__name__}, got {value!r}")
    return value


def _str_list(table: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    items = _get(table, key, list, where)
    if not all(isinstance(i, str) for i in items):
        raise CatalogueError(f"catalogue {where}.{key}: expected a list of strings")
    return tuple(items)


def _ipv4(text: str, where: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(text)
    except ValueError as exc:
        raise CatalogueError(f"catalogue {where}: {text!r} is not an IPv4 address") from exc


def _edge(raw: Mapping[str, Any], ports: Mapping[str, int], index: int) -> Edge:
    """One ``[[edge]]`` table → ``Edge`` (``ports`` is the shared read-only port map)."""
    where = f"edge[{index}]"
    ips = tuple(_ipv4(t, where) for t in _str_list(raw, "signalling_ips", where))
    if not ips:
        raise CatalogueError(f"catalogue {where}: no signalling_ips")
    failover = raw.get("failover")
    if failover is not None and not isinstance(failover, str):
        raise CatalogueError(f"catalogue {where}.failover: expected str")
    return Edge(
        name=_get(raw, "name", str, where),
        legacy_id=_get(raw, "legacy_id", str, where),
        region=_get(raw, "region", str, where),
        location=_get(raw, "location", str, where),
        signalling_ips=ips,
        ports=ports,
        public_names=_str_list(raw, "public", where) if "public" in raw else (),
        failover=failover,
    )


def parse(text: str) -> Catalogue:
    """Build a ``Catalogue`` from the TOML text of a catalogue data file.

    Args:
        text: the file's content.

    Returns:
        The validated catalogue.

    Raises:
        CatalogueError: invalid TOML, a missing or mistyped key, duplicate names or addresses,
            a failover naming an unknown edge.
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogueError(f"catalogue is not valid TOML: {exc}") from exc
    source = _get(doc, "source", dict, "")
    signalling = _get(doc, "signalling", dict, "")
    media = _get(doc, "media", dict, "")
    raw_ports = _get(signalling, "ports", dict, "signalling")
    # Read-only view: every Edge shares it, and Edge is meant to be immutable.
    ports = types.MappingProxyType(
        {t: _get(raw_ports, t, int, "signalling.ports") for t in TRANSPORTS}
    )
    template = _get(signalling, "domain_template", str, "signalling")
    if "{domain}" not in template or "{edge}" not in template:
        raise CatalogueError("catalogue signalling.domain_template needs {domain} and {edge}")
    raw_edges: Sequence[Any] = _get(doc, "edge", list, "")
    edges = tuple(_edge(r, ports, i) for i, r in enumerate(raw_edges) if isinstance(r, dict))
    if len(edges) != len(raw_edges) or not edges:
        raise CatalogueError("catalogue [[edge]]: expected a non-empty array of tables")

    # Names and addresses must be unique, or lookups would silently pick one of two edges.
    names = [n for e in edges for n in (e.name, e.legacy_id)]
    if len(set(names)) != len(names):
        raise CatalogueError("catalogue: duplicate edge name or legacy id")
    ips = [ip for e in edges for ip in e.signalling_ips]
    if len(set(ips)) != len(ips):
        raise CatalogueError("catalogue: a signalling IP appears under two edges")
    for e in edges:
        if e.failover is not None and e.failover not in {x.name for x in edges}:
            raise CatalogueError(f"catalogue edge {e.name!r}: unknown failover {e.failover!r}")

    try:
        network = ipaddress.IPv4Network(_get(media, "network", str, "media"))
    except ValueError as exc:
        raise CatalogueError(f"catalogue media.network: {exc}") from exc
    port_min = _get(media, "port_min", int, "media")
    port_max = _get(media, "port_max", int, "media")
    if not 0 < port_min <= port_max < 65536:
        raise CatalogueError("catalogue media: bad port range")
    since = _get(media, "since", date, "media")
    source_date = _get(source, "date", str, "source")
    try:
        # Accept reduced precision (YYYY, YYYY-MM) as ISO 8601 does; reject anything else.
        date.fromisoformat((source_date + "-01-01")[:10])
    except ValueError as exc:
        raise CatalogueError(f"catalogue source.date: {source_date!r} is not ISO 8601") from exc

    return Catalogue(
        edges=edges,
        source=_get(source, "document", str, "source"),
        source_date=source_date,
        domain_template=template,
        media_network=network,
        media_ports=(port_min, port_max),
        media_since=since,
        media_only_edges=frozenset(_str_list(media, "media_only_edges", "media")),
    )


@functools.cache
def load() -> Catalogue:
    """The shipped catalogue (``sipedge/catalogue/twilio.toml``), parsed once and cached.

    Raises:
        CatalogueError: the shipped data file is broken (a packaging bug).
    """
    text = resources.files("sipedge.catalogue").joinpath("twilio.toml").read_text("utf-8")
    return parse(text)
