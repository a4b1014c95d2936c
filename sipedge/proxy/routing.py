"""Where a request comes from and where it goes: the routing policy of the edge.

Theory of operation: sipedge sits between exactly two parties. A request is classified by
its *source address* (not by the socket it arrived on, so one shared listener works too):

* from a network in ``inside.allow``  → ``Direction.OUTBOUND`` (PBX → Twilio);
* from a gateway address               → ``Direction.INBOUND``  (Twilio → PBX);
* anything else                        → ``Direction.UNKNOWN``  (dropped or 403).

Loose routing (RFC 3261 §16.4, §16.12): Route values that name one of our listeners are
popped; the next hop of an in-dialog request is the next Route, else the Request-URI. With N
worker processes, "our listeners" are the shared ones and every worker's own endpoints
(``Listeners``).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Mapping
from enum import Enum
from types import MappingProxyType
from typing import Final

from sipedge.proxy.rewrite import record_route_value
from sipedge.proxy.settings import Network
from sipedge.sip.address import TRANSPORTS, Endpoint, default_port
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
#: ``Listeners(own=...)`` of a single process: no aliases.
_NO_ALIASES: Final[Mapping[Endpoint, Endpoint]] = MappingProxyType({})


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
    """Our own addresses on both sides, for "is this Route/URI me?" and egress choice.

    In a single process the listeners are the configured sockets. A worker of N (issue 14)
    also owns an endpoint per listener (``own``: shared listener → its own alias, same
    transport and host, another port): what it forwards leaves from the alias and names it
    in Via and Record-Route (:meth:`egress`, :meth:`record_route`), so that responses and
    in-dialog requests come back to the worker holding the transaction, not to whichever
    worker the kernel picks on the shared socket. Every worker's aliases (``siblings``)
    count as ours for :meth:`is_own`, :meth:`is_own_endpoint` and :meth:`is_own_route`: a
    Route naming worker 1's port reached worker 0 only through a stale or steered path, and
    it is still this proxy (pop it, do not route to it, it is no loop target either).

    Everything is precomputed here, once per (re)configuration: the methods run per
    message and allocate nothing for our own listeners.
    """

    __slots__ = ("_egress_inside", "_egress_outside", "_needles", "_own", "_own_values", "_rr",
                 "inside", "outside", "own", "siblings")

    def __init__(self, inside: tuple[Endpoint, ...], outside: tuple[Endpoint, ...], *,
                 own: Mapping[Endpoint, Endpoint] = _NO_ALIASES,
                 siblings: tuple[Endpoint, ...] = ()) -> None:
        """Precompute the tables.

        Args:
            inside: the listeners facing the PBX (shared between workers).
            outside: the listeners facing Twilio (shared between workers).
            own: shared listener → this worker's own endpoint for it (empty: none).
            siblings: every worker's own endpoints, this worker's included.
        """
        self.inside = inside
        self.outside = outside
        self.own = dict(own)
        self.siblings = siblings
        aliases = tuple(self.own.values())
        everything = (*inside, *outside, *aliases, *siblings)
        self._own = frozenset((ep.host, ep.port) for ep in everything)
        # Substrings one of our Route/URI values must contain: a cheap pre-check that
        # spares a full name-addr/URI parse for the (common) foreign values.
        self._needles = tuple({ep.host.encode("ascii") for ep in everything})
        # The exact values we Record-Route with: in-dialog Routes are copies of them. A
        # shared listener Record-Routes with its alias (the very same bytes object), so
        # both entries of a double Record-Route name this worker and compare equal.
        rr: dict[Endpoint, bytes] = {ep: record_route_value(ep) for ep in everything}
        for shared, alias in self.own.items():
            rr[shared] = rr[alias]
        self._rr = rr
        # Every name of us a Route can carry: shared listeners too (a dialog set up before
        # the workers started, or by a single process) and every worker's.
        self._own_values = frozenset(
            [*rr.values(), *(record_route_value(ep) for ep in (*inside, *outside))])
        self._egress_inside = _egress_table(inside, self.own)
        self._egress_outside = _egress_table(outside, self.own)

    def alias(self, listener: Endpoint) -> Endpoint:
        """This worker's own endpoint for shared ``listener`` (``listener`` itself if none)."""
        return self.own.get(listener, listener)

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
        """True when ``endpoint`` is one of our listeners' (or workers') host:port."""
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
        """Our Record-Route value for ``listener``: a shared listener's names its alias."""
        value = self._rr.get(listener)
        if value is None:
            value = record_route_value(listener)
        return value

    def egress(self, outside: bool, transport: str) -> Endpoint:
        """The endpoint a message to the given side leaves from: the first listener of
        that side and transport, as this worker's alias of it."""
        table = self._egress_outside if outside else self._egress_inside
        endpoint = table.get(transport)
        if endpoint is None:
            # Not one of TRANSPORTS, or a side without listeners: what the loop did.
            side = self.outside if outside else self.inside
            first = self.alias(side[0])
            endpoint = Endpoint(transport, first.host, first.port)
        return endpoint


def _egress_table(side: tuple[Endpoint, ...],
                  own: Mapping[Endpoint, Endpoint]) -> dict[str, Endpoint]:
    """Transport → the endpoint messages to ``side`` leave from (``Listeners.egress``)."""
    table: dict[str, Endpoint] = {}
    for ep in side:
        table.setdefault(ep.transport, own.get(ep, ep))  # the first of its transport
    if side:
        first = own.get(side[0], side[0])
        for transport in TRANSPORTS:
            if transport not in table:
                # No listener of that transport on this side: connect out from the side's
                # address.
                table[transport] = Endpoint(transport, first.host, first.port)
    return table
