"""Plain counters the core bumps on the hot path and a collector reads at scrape time.

No prometheus objects here (house rule 11): an attribute increment costs a few
nanoseconds; the metrics layer turns these into samples when Prometheus asks.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

__all__ = ["ProxyStats"]


@dataclass(slots=True)
class ProxyStats:
    """Counters (monotonic) and gauges of one proxy core."""

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
    cancels: int = 0
    probes_sent: int = 0
    probe_timeouts: int = 0
    transport_errors: int = 0
    tnx_deprecated: int = 0
    edge_param_seen: int = 0
    # gauges, refreshed by the core
    server_transactions: int = 0
    client_transactions: int = 0

    def as_dict(self) -> dict[str, int]:
        """All counters by name (for the metrics collector and tests)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}
