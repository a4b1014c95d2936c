"""Typed settings the proxy core runs on.

``sipedge.config`` builds these from TOML; the core never sees file paths, key names or
dicts (house rule 10). A whole ``ProxySettings`` can be swapped on reload.

With N worker processes (issue 14, ``[process] workers``) each worker's core runs on
settings built for its :class:`WorkerPlace`: the shared listeners, plus the worker's own
endpoint for each of them (``ProxySettings.own``), where what it forwards leaves from and
what answers it comes back to, and every worker's endpoints (``siblings``), which are all
"us" for loop detection and Route popping.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

from sipedge.proxy.admission import AdmissionLimits
from sipedge.proxy.media import MediaRange
from sipedge.sip.address import Endpoint
from sipedge.sip.message import Limits
from sipedge.sip.timers import Timers

__all__ = ["Network", "ProxySettings", "RejectUnknown", "WorkerPlace"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class RejectUnknown(Enum):
    """What to do with a request from an address that is neither the PBX nor Twilio."""

    DROP = "drop"  # silent: scanners learn nothing (the default)
    FORBIDDEN = "403"


@dataclass(frozen=True, slots=True)
class WorkerPlace:
    """Which of the worker processes a core runs in.

    Attributes:
        index: this worker, ``0 .. count - 1`` (worker 0 probes the gateways).
        count: how many workers run (``[process] workers``).

    Raises:
        ValueError: ``count`` below 1 or ``index`` outside ``0 .. count - 1``.
    """

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"worker {self.index} of {self.count}: expected 0 <= index < count")


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxySettings:
    """Everything the core needs to route and time calls.

    The fields that come from the config file have no defaults here: their defaults
    live once, in ``sipedge.config``'s dataclasses, and ``config.build_settings`` is
    the one place that fills them (tests build theirs through it too). Only the
    fields no file sets keep a default.

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
        limits: admission control (``proxy.admission``; ``[limits]``).
        message_limits: the parser's header count / line length / Via count / branch
            length limits (``sip.message.Limits``; past one a request gets 513).
        media: Twilio's media range for the SDP check of INVITEs and answers from the
            gateways (``proxy.media``); None turns the check off.
        user_agent: the User-Agent of requests sipedge originates (OPTIONS probes), or
            None for none (the default: no product string for an attacker to read).
        own: shared listener → this worker's own endpoint for it (same transport and
            host, its own port), for every listener of ``inside`` and ``outside``; empty
            in a single process (the default). Forwarded requests leave from, and name in
            their Via and Record-Route, the own endpoint of the listener they would have
            used, so responses and in-dialog requests come straight back to this worker.
        siblings: every worker's own endpoints, this worker's included: a Route or
            Request-URI naming any of them is us (``proxy.routing.Listeners``). Empty in
            a single process.
    """

    inside: tuple[Endpoint, ...]
    outside: tuple[Endpoint, ...]
    inside_allow: tuple[Network, ...]
    pbx: Endpoint
    domain: str
    strip_edge_params: bool
    limits: AdmissionLimits
    reject_unknown: RejectUnknown
    timers: Timers
    failover_codes: frozenset[int]
    no_provisional_timeout_s: float
    probe_timeout_s: float
    retry_after_s: int
    media: MediaRange | None = None
    max_message_bytes: int = 65535
    user_agent: bytes | None
    message_limits: Limits
    own: Mapping[Endpoint, Endpoint] = field(default_factory=dict)
    siblings: tuple[Endpoint, ...] = ()
