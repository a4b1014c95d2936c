"""Where a request comes from and where it goes: the routing policy of the edge.

Theory of operation: sipedge sits between exactly two parties. A request is classified by
its *source address* (not by the socket it arrived on, so one shared listener works too):

* from a network in ``inside.allow``  → ``Direction.OUTBOUND`` (PBX → Twilio);
* from a gateway address               → ``Direction.INBOUND``  (Twilio → PBX);
* anything else                        → ``Direction.UNKNOWN``  (dropped or 403).

Loose routing (RFC 3261 §16.4, §16.12): Route values that name one of our listeners are
popped; the next hop of an in-dialog request is the next Route, else the Request-URI.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from enum import Enum
from typing import Final

from sipedge.proxy.rewrite import record_route_value
from sipedge.proxy.settings import Network
from sipedge.sip.address import Endpoint, default_port
from sipedge.sip.errors import SipError
from sipedge.sip.headers import parse_name_addr
from sipedge.sip.uri import Uri, parse_uri

__all__ = [
    "Direction",
    "Listeners",
    "classify_source",
    "is_allowed",
    "uri_endpoint",
]


class Direction(Enum):
    """Which way a request travels through the edge."""

    # Members are singletons: identity hashing is C-level, unlike Enum.__hash__,
    # and these key the transition tables looked up on every step.
    __hash__ = object.__hash__

    OUTBOUND = "outbound"  # PBX → Twilio
    INBOUND = "inbound"  # Twilio → PBX
    UNKNOWN = "unknown"


@functools.lru_cache(maxsize=1024)
def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    # Cached: every in-dialog request checks its next hop, and ip_address() is slow
    # Python; the handful of peer addresses of an edge proxy fit the cache.
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


@functools.lru_cache(maxsize=1024)
def _unicast(host: str) -> bool:
    # Cached like _ip: the address properties below are slow Python (network lookups).
    ip = _ip(host)
    if ip is None or ip.is_unspecified or ip.is_multicast:
        return False
    return not (ip.version == 4 and ip == _LIMITED_BROADCAST)


_LIMITED_BROADCAST: Final = ipaddress.IPv4Address("255.255.255.255")


def is_allowed(host: str, networks: Iterable[Network]) -> bool:
    """True when ``host`` (an IP literal) lies in one of ``networks``."""
    ip = _ip(host)
    if ip is None:
        return False
    return any(ip in net for net in networks if net.version == ip.version)


def classify_source(
    host: str, inside_allow: Iterable[Network], gateway_hosts: frozenset[str]
) -> Direction:
    """Classify a request by its source address (see the module docstring)."""
    if host in gateway_hosts:
        return Direction.INBOUND
    if is_allowed(host, inside_allow):
        return Direction.OUTBOUND
    return Direction.UNKNOWN


def uri_endpoint(uri: Uri) -> Endpoint | None:
    """The transport address a SIP URI points at (RFC 3263 §4 for IP literals).

    Returns None for a tel URI or a host name (the caller resolves names elsewhere), and
    for an address no request may be sent to: port 0, or an unspecified, multicast or
    limited-broadcast host. A trusted peer's Route or Request-URI can name one (a typo,
    or a fuzzer found it): 0.0.0.0 reaches this very host, port 0 no socket can send to,
    and a proxy has no business flooding a segment (RFC 4475 §3.3.10 drops a response
    whose Via names a broadcast address for the same reason; RFC 3261 §18.1.1 multicast
    goes through ``maddr``, which sipedge does not implement).
    """
    if uri.scheme not in (b"sip", b"sips"):
        return None
    transport_param = uri.param(b"transport")
    if uri.scheme == b"sips":
        transport = "tls"
    elif transport_param:
        transport = transport_param.decode("ascii", "replace").lower()
        if transport not in ("udp", "tcp", "tls"):
            transport = "udp"
    else:
        transport = "udp"
    host = uri.host.decode("ascii", "replace")
    if host.startswith("["):
        host = host[1:-1]
    if not _unicast(host):
        return None
    port = uri.port if uri.port is not None else default_port(transport)
    if port == 0:
        return None
    return Endpoint(transport, host, port)


class Listeners:
    """Our own addresses on both sides, for "is this Route/URI me?" and egress choice."""

    __slots__ = ("_needles", "_own", "_own_values", "_rr", "inside", "outside")

    def __init__(self, inside: tuple[Endpoint, ...], outside: tuple[Endpoint, ...]) -> None:
        self.inside = inside
        self.outside = outside
        own: set[tuple[str, int]] = set()
        for ep in (*inside, *outside):
            own.add((ep.host, ep.port))
        self._own = frozenset(own)
        # Substrings one of our Route/URI values must contain: a cheap pre-check that
        # spares a full name-addr/URI parse for the (common) foreign values.
        self._needles = tuple({ep.host.encode("ascii") for ep in (*inside, *outside)})
        # The exact values we Record-Route with: in-dialog Routes are copies of them.
        self._rr = {ep: record_route_value(ep) for ep in (*inside, *outside)}
        self._own_values = frozenset(self._rr.values())

    def is_own(self, uri: Uri) -> bool:
        """True when ``uri``'s host:port is one of our listeners (RFC 3261 §16.4)."""
        host = uri.host.decode("ascii", "replace")
        if host.startswith("["):
            host = host[1:-1]
        if uri.port is None:
            tls = uri.scheme == b"sips" or uri.param(b"transport") in (b"tls", b"TLS")
            port = default_port("tls" if tls else "udp")
            # A Route without a port still names us when we listen on the default port.
            return (host, port) in self._own
        return (host, uri.port) in self._own

    def is_own_endpoint(self, endpoint: Endpoint) -> bool:
        """True when ``endpoint`` is one of our listeners' host:port."""
        return (endpoint.host, endpoint.port) in self._own

    def is_own_route(self, value: bytes) -> bool:
        """True when a Route value (name-addr) names one of our listeners."""
        if value in self._own_values:
            return True
        if not any(needle in value for needle in self._needles):
            return False
        try:
            return self.is_own(parse_uri(parse_name_addr(value).uri))
        except SipError:
            return False

    def record_route(self, listener: Endpoint) -> bytes:
        """Our Record-Route value for ``listener`` (precomputed for our listeners)."""
        value = self._rr.get(listener)
        if value is None:
            value = record_route_value(listener)
        return value

    def egress(self, outside: bool, transport: str) -> Endpoint:
        """The listener a message to the given side leaves from."""
        side = self.outside if outside else self.inside
        for ep in side:
            if ep.transport == transport:
                return ep
        first = side[0]
        # No listener of that transport on this side: connect out from the side's address.
        return Endpoint(transport, first.host, first.port)
