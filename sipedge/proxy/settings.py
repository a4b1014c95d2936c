"""Typed settings the proxy core runs on.

``sipedge.config`` builds these from TOML; the core never sees file paths, key names or
dicts (house rule 10). A whole ``ProxySettings`` can be swapped on reload.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from enum import Enum

from sipedge.sip.address import Endpoint
from sipedge.sip.timers import Timers

__all__ = ["Network", "ProxySettings", "RejectUnknown"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class RejectUnknown(Enum):
    """What to do with a request from an address that is neither the PBX nor Twilio."""

    DROP = "drop"  # silent: scanners learn nothing (the default)
    FORBIDDEN = "403"


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """Everything the core needs to route and time calls.

    Attributes:
        inside: listeners facing the PBX.
        outside: listeners facing Twilio.
        inside_allow: networks allowed to place calls through sipedge.
        pbx: where calls from Twilio go.
        domain: the unique part of ``{domain}.sip.twilio.com``.
        strip_edge_params: remove ``edge``/``tnx`` from inbound Request-URIs.
        reject_unknown: drop or 403 requests from strangers.
        timers: RFC 3261 T1/T2/T4.
        failover_codes: final responses that move a call to the next gateway.
        no_provisional_timeout_s: fail over when no 1xx arrives within this time.
        probe_timeout_s: an OPTIONS probe without a reply in this time is ``TimedOut``.
        retry_after_s: Retry-After on the 503 sent when no gateway is usable.
        max_message_bytes: larger messages are refused with 513.
    """

    inside: tuple[Endpoint, ...]
    outside: tuple[Endpoint, ...]
    inside_allow: tuple[Network, ...]
    pbx: Endpoint
    domain: str
    strip_edge_params: bool = False
    reject_unknown: RejectUnknown = RejectUnknown.DROP
    timers: Timers = field(default_factory=Timers)
    failover_codes: frozenset[int] = frozenset({408, 500, 503, 504})
    no_provisional_timeout_s: float = 4.0
    probe_timeout_s: float = 2.0
    retry_after_s: int = 10
    max_message_bytes: int = 65535
    user_agent: bytes = b"sipedge"
