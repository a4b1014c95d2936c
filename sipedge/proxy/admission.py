"""Admission control: who may send how much, consulted before any parsing (sans-I/O).

Theory of operation (after Kamailio's ``pike``, ``ratelimit`` and ``dispatcher`` limits,
driven by ``now`` like the rest of the core, so every rule is tested with a fake clock):

* **Per-source rate with a temporary ban** (inside only: the PBX side is where a
  misbehaving allowed host — a looping PBX, a compromised phone behind the trunk, a
  dialer gone wild — comes from; the outside is Twilio's gateways only). Each source IP
  has a token bucket of ``source_rate_per_s`` refilled continuously, ``source_burst``
  deep; a message that finds it empty bans the source for ``ban_s``: everything from it
  is dropped, counted, before parsing. Kamailio's sample ``pike`` (16 requests per 2 s)
  suits a phone, not a trunk: a busy PBX trunk at 200 calls/s sends ~5 messages per call
  (INVITE, ACK, BYE, the responses to calls from Twilio, retransmissions) ≈ 1,000/s with
  bursts at the top of a minute, so the default (``[limits]``) is 2,000/s with a 4,000
  burst: a ban means a real flood, never a busy hour.
* **A global cap on new calls**: new initial INVITEs take a token from one bucket of
  ``call_rate_per_s``; without one they get ``503`` + Retry-After (the PBX retries, or
  tries its other proxy), protecting Twilio and the proxy alike.
* **Per gateway**: Twilio documents 30 new calls per second per gateway IP for
  Interconnect; a gateway whose bucket is empty is skipped, so the call spills to the
  next gateway of its group, then to the next edge. Only when every usable gateway is at
  its cap is the call refused (503, Retry-After 1).
* **Emergency numbers** (911, 933, 112, 999 — configurable) bypass both call caps: an
  emergency call is never the one refused.
* Every table is bounded (``max_sources``): a spoofed-source flood cannot grow memory.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["Admission", "AdmissionLimits", "TokenBucket", "Verdict"]


@dataclass(frozen=True, slots=True)
class AdmissionLimits:
    """The limits; ``sipedge.config``'s ``[limits]`` section builds these (and holds the
    defaults, with the reasons for them).

    Attributes:
        source_rate_per_s: sustained messages per second from one inside source IP.
        source_burst: how many above the rate a source may send at once.
        ban_s: how long a source that exceeded its rate is dropped.
        call_rate_per_s: new initial INVITEs per second for the whole proxy (0 = no cap).
        call_burst: burst of that bucket.
        gateway_calls_per_s: new calls per second per gateway IP (Twilio: 30; 0 = no cap).
        emergency_numbers: Request-URI user parts (digits, a leading ``+`` ignored) that
            bypass the call caps.
        max_sources: entries kept in the per-source table.
        max_transactions: server transactions in progress; beyond, new requests get 503.
    """

    source_rate_per_s: float
    source_burst: float
    ban_s: float
    call_rate_per_s: float
    call_burst: float
    gateway_calls_per_s: float
    emergency_numbers: frozenset[bytes]
    max_sources: int
    max_transactions: int


class TokenBucket:
    """``rate`` tokens per second, at most ``burst``; ``take(now)`` spends one."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def take(self, now: float) -> bool:
        """Spend one token if there is one (refilled for the time since the last call)."""
        tokens = self.tokens + (now - self.stamp) * self.rate
        self.stamp = now
        if tokens > self.burst:
            tokens = self.burst
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return True
        self.tokens = tokens
        return False

    def is_full(self, now: float) -> bool:
        """True when the bucket would be full now (an idle source: safe to forget)."""
        return self.tokens + (now - self.stamp) * self.rate >= self.burst


class Verdict(enum.Enum):
    """What admission says about one message from an inside source."""

    __hash__ = object.__hash__

    ADMIT = "admit"
    BANNED = "banned"  # the source is serving a ban
    RATE_LIMITED = "rate_limited"  # this message emptied the bucket: the ban starts


class _Source:
    __slots__ = ("banned_until", "bucket")

    def __init__(self, bucket: TokenBucket) -> None:
        self.bucket = bucket
        self.banned_until = 0.0


class Admission:
    """The per-source, per-proxy and per-gateway buckets of one core."""

    def __init__(self, limits: AdmissionLimits, now: float = 0.0) -> None:
        self.limits = limits
        self._sources: dict[str, _Source] = {}
        self._calls = TokenBucket(limits.call_rate_per_s, limits.call_burst, now)
        self._gateways: dict[str, TokenBucket] = {}

    def reconfigure(self, limits: AdmissionLimits, now: float) -> None:
        """New limits from a reload; sources and bans are kept, buckets resized."""
        self.limits = limits
        self._calls = TokenBucket(limits.call_rate_per_s, limits.call_burst, now)
        self._gateways.clear()
        for source in self._sources.values():
            source.bucket.rate = limits.source_rate_per_s
            source.bucket.burst = limits.source_burst

    def banned(self, now: float) -> int:
        """Sources serving a ban at ``now`` (a gauge; O(sources), for scrapes)."""
        return sum(1 for s in self._sources.values() if now < s.banned_until)

    def check_source(self, host: str, now: float) -> Verdict:
        """One message from inside source ``host``: admit it, or drop it (ban)."""
        source = self._sources.get(host)
        if source is None:
            if len(self._sources) >= self.limits.max_sources:
                self._evict(now)
            limits = self.limits
            source = self._sources[host] = _Source(
                TokenBucket(limits.source_rate_per_s, limits.source_burst, now))
        if source.banned_until:
            if now < source.banned_until:
                return Verdict.BANNED
            source.banned_until = 0.0
            source.bucket.tokens = source.bucket.burst  # the ban served: a fresh start
            source.bucket.stamp = now
        if source.bucket.take(now):
            return Verdict.ADMIT
        source.banned_until = now + self.limits.ban_s
        return Verdict.RATE_LIMITED

    def is_banned(self, host: str, now: float) -> bool:
        """True while inside source ``host`` serves a ban (a query: no token is spent)."""
        source = self._sources.get(host)
        return source is not None and now < source.banned_until

    def take_call(self, now: float) -> bool:
        """A new initial INVITE: False when the proxy-wide call rate is exhausted."""
        if self.limits.call_rate_per_s <= 0:
            return True
        return self._calls.take(now)

    def take_gateway(self, gateway_id: str, now: float) -> bool:
        """A new call to ``gateway_id``: False when that gateway is at its cap."""
        rate = self.limits.gateway_calls_per_s
        if rate <= 0:
            return True
        bucket = self._gateways.get(gateway_id)
        if bucket is None:
            # One second's worth of burst: Twilio's limit is per second.
            bucket = self._gateways[gateway_id] = TokenBucket(rate, rate, now)
        return bucket.take(now)

    def is_emergency(self, user: bytes | None) -> bool:
        """True when a Request-URI user part is an emergency number."""
        if not user:
            return False
        number = user[1:] if user.startswith(b"+") else user
        return number in self.limits.emergency_numbers

    def _evict(self, now: float) -> None:
        """Make room: forget idle sources (full bucket, no ban), else the oldest half."""
        sources = self._sources
        idle = [h for h, s in sources.items()
                if not s.banned_until and s.bucket.is_full(now)]
        for host in idle:
            del sources[host]
        if len(sources) >= self.limits.max_sources:
            for host in list(sources)[: len(sources) // 2]:
                del sources[host]
