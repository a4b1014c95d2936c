"""Plain counters the core bumps on the hot path and a collector reads at scrape time.

No prometheus objects here (house rule 11): an attribute increment or a dict update costs
tens of nanoseconds; ``sipedge.metrics`` turns these into samples when Prometheus asks.
Nothing here takes a lock or formats a label: keys are enums, method bytes, ints and the
edge names the pool already holds. Every keyed table is bounded by construction (methods
outside ``METHODS`` count as ``OTHER``; status classes are 1–6; edges and gateways come
from the config).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from sipedge.gateway.stats import RTT_BUCKETS_S, Histogram, histogram
from sipedge.proxy.events import DropReason, FailoverReason
from sipedge.proxy.media import MediaIssue
from sipedge.proxy.routing import Direction

__all__ = [
    "ANSWER_BUCKETS_S",
    "METHODS",
    "PDD_BUCKETS_S",
    "RTT_BUCKETS_S",
    "Histogram",
    "ProxyStats",
    "histogram",
]

#: Methods counted by name; anything else is ``b"OTHER"`` (an attacker's random method
#: names must not grow the table).
METHODS: Final = frozenset({
    b"INVITE", b"ACK", b"BYE", b"CANCEL", b"OPTIONS", b"REGISTER", b"UPDATE", b"INFO",
    b"PRACK", b"REFER", b"NOTIFY", b"SUBSCRIBE", b"MESSAGE", b"PUBLISH",
})
OTHER_METHOD: Final = b"OTHER"

#: Post-dial delay (INVITE → first 18x), seconds: Twilio's own no-provisional limit is 4 s.
PDD_BUCKETS_S: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0, 30.0)
#: INVITE → 200, seconds: includes the callee's ringing time.
ANSWER_BUCKETS_S: Final = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
# RTT_BUCKETS_S (OPTIONS round trip) and Histogram live in gateway.stats, with the
# monitor that keeps the probe RTTs; they are re-exported here for the proxy's tables.


def _by_direction() -> dict[Direction, dict[bytes, int]]:
    return {d: {} for d in Direction}


@dataclass(slots=True)
class ProxyStats:
    """Counters (monotonic) and gauges of one proxy core.

    Direction keys: for requests, the side a request came from (``OUTBOUND`` = the inside,
    the PBX; ``INBOUND`` = the outside, Twilio; ``UNKNOWN`` = a stranger); for relayed
    responses, the side the response was sent to. Call tables are keyed by call direction
    (``OUTBOUND`` = PBX → Twilio) and edge name (``""`` when no gateway was usable).

    The probe counters (probes sent, timeouts, RTTs) are the gateway monitor's
    (``gateway.stats.ProbeStats``, ``ProxyCore.probe_stats``): a core without a monitor
    sends no probe. ``timers_fired`` and the ``client_transactions``/``timer_entries``
    gauges include the monitor's held by this core.
    """

    requests_received: int = 0
    responses_received: int = 0
    requests_forwarded: int = 0
    responses_forwarded: int = 0
    parse_errors: int = 0
    parse_errors_answered: int = 0
    requests_rejected: int = 0
    unknown_source_dropped: int = 0
    retransmissions_absorbed: int = 0
    stray_responses: int = 0
    local_responses: int = 0
    loops_detected: int = 0
    calls_outbound: int = 0
    calls_inbound: int = 0
    failovers: int = 0
    no_gateway_503: int = 0
    draining_503: int = 0
    cancels: int = 0
    transport_errors: int = 0
    tnx_deprecated: int = 0
    edge_param_seen: int = 0
    calls_idle_expired: int = 0
    calls_rate_limited: int = 0  # new INVITEs refused 503: the proxy-wide call cap
    gateway_cap_skips: int = 0  # a gateway at its calls/s cap skipped for the next
    gateway_cap_503: int = 0  # every usable gateway at its cap: 503
    emergency_calls: int = 0  # calls to emergency numbers (they bypass the call caps)
    transactions_cap_503: int = 0  # new requests refused: too many transactions
    timers_fired: int = 0  # timer-heap entries popped by handle_timer (live or stale)
    sources_banned: int = 0  # gauge, refreshed at scrape time
    # labelled counters
    requests_by_method: dict[Direction, dict[bytes, int]] = field(default_factory=_by_direction)
    responses_by_class: dict[tuple[int, Direction], int] = field(default_factory=dict)
    local_replies: dict[int, int] = field(default_factory=dict)
    drops: dict[DropReason, int] = field(default_factory=dict)
    parse_errors_by_status: dict[int, int] = field(default_factory=dict)  # 0 = dropped
    calls_started: dict[tuple[Direction, str], int] = field(default_factory=dict)
    calls_answered: dict[tuple[Direction, str], int] = field(default_factory=dict)
    calls_failed: dict[tuple[Direction, str, int], int] = field(default_factory=dict)
    failovers_by: dict[tuple[str, str, FailoverReason], int] = field(default_factory=dict)
    pdd: dict[str, Histogram] = field(default_factory=dict)  # by edge
    answer_time: dict[str, Histogram] = field(default_factory=dict)  # by edge
    sdp_checked: int = 0
    media_outside_range: dict[MediaIssue, int] = field(default_factory=dict)
    # gauges, refreshed by the core at scrape time (ProxyCore.refresh_gauges)
    server_transactions: int = 0
    client_transactions: int = 0
    calls_in_progress: int = 0
    calls_setting_up: int = 0
    timer_entries: int = 0  # the timer heap's length (stale entries included)

    def count_request(self, method: bytes, direction: Direction) -> None:
        """One request received from ``direction``'s side."""
        table = self.requests_by_method[direction]
        if method not in METHODS:
            method = OTHER_METHOD
        table[method] = table.get(method, 0) + 1

    def count_response(self, status: int, toward: Direction) -> None:
        """One response relayed toward ``toward``'s side."""
        key = (status // 100, toward)
        table = self.responses_by_class
        table[key] = table.get(key, 0) + 1

    def count_drop(self, reason: DropReason) -> None:
        """One message dropped without an answer."""
        self.drops[reason] = self.drops.get(reason, 0) + 1

    def count_local_reply(self, status: int) -> None:
        """One response sipedge built itself (final or provisional)."""
        self.local_replies[status] = self.local_replies.get(status, 0) + 1

    def count_parse_error(self, status: int | None) -> None:
        """One parse error; ``status`` is the answer it calls for (None: dropped)."""
        key = status or 0
        self.parse_errors_by_status[key] = self.parse_errors_by_status.get(key, 0) + 1
