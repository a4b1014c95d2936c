"""Plain counters of the gateway monitor, and the fixed-bucket histogram both cores use.

No prometheus objects here (house rule 11): ``sipedge.metrics`` reads these at scrape time.
``Histogram`` lives in this layer (not in ``proxy.stats``, which re-exports it) because the
monitor keeps the probe round-trip times and ``gateway`` may not import ``proxy``.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Final

__all__ = ["RTT_BUCKETS_S", "Histogram", "ProbeStats", "histogram"]

#: OPTIONS round trip over the private link, seconds.
RTT_BUCKETS_S: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0)


class Histogram:
    """Fixed buckets, Prometheus semantics (``le``); ``counts[-1]`` is the +Inf overflow.

    Buckets are stored non-cumulative (one increment per observation); the collector
    accumulates them at scrape time.
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count one observation (``value`` ≤ bound goes in that bound's bucket)."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        """Observations so far."""
        return sum(self.counts)


def histogram(table: dict[str, Histogram], key: str, bounds: tuple[float, ...]) -> Histogram:
    """``table[key]``, created with ``bounds`` on first use (keys come from the config)."""
    hist = table.get(key)
    if hist is None:
        hist = table[key] = Histogram(bounds)
    return hist


@dataclass(slots=True)
class ProbeStats:
    """Counters of one ``GatewayMonitor`` (monotonic).

    Attributes:
        probes_sent: OPTIONS probes started (retransmissions not counted).
        probe_timeouts: probes that got no final response within the probe timeout.
        probe_rtt: round-trip times of answered probes, by gateway id.
    """

    probes_sent: int = 0
    probe_timeouts: int = 0
    probe_rtt: dict[str, Histogram] = field(default_factory=dict)
