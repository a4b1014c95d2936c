"""RFC 3261 §17 transaction timers, derived from T1, T2 and T4.

One frozen value holds the three base intervals; every named timer (A…M) is a property
computed from them, so there are no module-level knobs to mutate (house rule 10) and a
config reload simply builds a new ``Timers``. Values are float seconds.

The properties give the RFC 3261 Table 4 values for an *unreliable* transport (UDP).
Over a reliable transport (TCP/TLS) the "wait" timers D, I, J and K are zero (Table 4,
right-hand column); :meth:`Timers.wait` returns the per-transport value. The
retransmission timers A, E and G are simply never armed over a reliable transport;
that decision belongs to the transaction (``transaction.py``), not to this table.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Final, Literal

__all__ = ["LANE_GRAIN_S", "ExpiryLane", "TimerName", "Timers"]

#: The names of the timers of RFC 3261 §17 (Table 4) and RFC 6026 §8.4 (L, M).
TimerName = Literal["A", "B", "C", "D", "E", "F", "G", "H", "I", "J", "K", "L", "M"]

#: RFC 3261 §16.6 step 11: Timer C "MUST be larger than 3 minutes".
_TIMER_C: Final = 180.0

#: RFC 3261 §17.1.1.2: Timer D is "at least 32 seconds" for unreliable transports.
_TIMER_D_MIN: Final = 32.0


@dataclass(frozen=True, slots=True)
class Timers:
    """The base intervals of RFC 3261 §17.1.1.1 and the timers derived from them.

    Attributes:
        t1: RTT estimate, default 500 ms (RFC 3261 §17.1.1.1).
        t2: maximum retransmit interval for non-INVITE requests and INVITE responses,
            default 4 s.
        t4: maximum time a message remains in the network, default 5 s.

    Raises:
        ValueError: on construction, if an interval is not positive or ``t2 < t1``.
    """

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0

    def __post_init__(self) -> None:
        # A zero T1 would make the retransmission timers spin; T2 < T1 would make the
        # "doubling capped at T2" sequences shrink. Both are configuration mistakes.
        if not (self.t1 > 0 and self.t2 > 0 and self.t4 > 0):
            raise ValueError(f"timers must be positive: t1={self.t1} t2={self.t2} t4={self.t4}")
        if self.t2 < self.t1:
            raise ValueError(f"t2 ({self.t2}) must not be smaller than t1 ({self.t1})")

    # -- client INVITE, RFC 3261 §17.1.1.2 ------------------------------------------------

    @property
    def timer_a(self) -> float:
        """INVITE request retransmit interval, initially T1, doubling (unreliable only)."""
        return self.t1

    @property
    def timer_b(self) -> float:
        """INVITE transaction timeout: 64*T1."""
        return 64 * self.t1

    @property
    def timer_c(self) -> float:
        """Proxy INVITE transaction timeout (§16.6 step 11): > 3 min. Not a §17 timer."""
        return _TIMER_C

    @property
    def timer_d(self) -> float:
        """Wait time for response retransmits: >= 32 s (unreliable), 0 (reliable).

        It is ``max(32, 64*T1)`` so that it still covers the server's Timer H when T1 is
        configured above its default.
        """
        return max(_TIMER_D_MIN, 64 * self.t1)

    # -- client non-INVITE, RFC 3261 §17.1.2.2 --------------------------------------------

    @property
    def timer_e(self) -> float:
        """Non-INVITE request retransmit interval, initially T1, doubling up to T2."""
        return self.t1

    @property
    def timer_f(self) -> float:
        """Non-INVITE transaction timeout: 64*T1."""
        return 64 * self.t1

    # -- server INVITE, RFC 3261 §17.2.1 --------------------------------------------------

    @property
    def timer_g(self) -> float:
        """INVITE final response retransmit interval, initially T1, doubling up to T2."""
        return self.t1

    @property
    def timer_h(self) -> float:
        """Wait time for ACK receipt: 64*T1."""
        return 64 * self.t1

    @property
    def timer_i(self) -> float:
        """Wait time for ACK retransmits: T4 (unreliable), 0 (reliable)."""
        return self.t4

    # -- server non-INVITE, RFC 3261 §17.2.2 ----------------------------------------------

    @property
    def timer_j(self) -> float:
        """Wait time for non-INVITE request retransmits: 64*T1 (unreliable), 0 (reliable)."""
        return 64 * self.t1

    # -- client non-INVITE, RFC 3261 §17.1.2.2 --------------------------------------------

    @property
    def timer_k(self) -> float:
        """Wait time for non-INVITE response retransmits: T4 (unreliable), 0 (reliable)."""
        return self.t4

    # -- RFC 6026 §8.4 (Accepted state) ---------------------------------------------------

    @property
    def timer_l(self) -> float:
        """Server INVITE: wait time for INVITE retransmits after a 2xx: 64*T1."""
        return 64 * self.t1

    @property
    def timer_m(self) -> float:
        """Client INVITE: wait time for 2xx retransmits (and forked 2xx): 64*T1."""
        return 64 * self.t1

    def wait(self, name: TimerName, *, reliable: bool) -> float:
        """The value of timer ``name`` for the given transport.

        Args:
            name: the timer's letter, ``"A"`` … ``"M"``.
            reliable: True for TCP/TLS. RFC 3261 Table 4 sets D, I, J and K to zero there;
                every other timer keeps its value.

        Returns:
            The duration in seconds.
        """
        if reliable and name in ("D", "I", "J", "K"):
            return 0.0
        value: float = getattr(self, "timer_" + name.lower())
        return value


#: Keys due within this many seconds of each other share one entry of an ``ExpiryLane``.
LANE_GRAIN_S: Final = 0.01


class _Bucket:
    __slots__ = ("expires", "keys", "opened")

    def __init__(self, expires: float, key: bytes) -> None:
        self.opened = expires  # the first key's time: the bucket spans one grain from it
        self.expires = expires  # the latest key's time: when the bucket is released
        self.keys = [key]


class ExpiryLane:
    """Keys with expiry times that arrive in (about) time order: a FIFO instead of a heap.

    The core's wait records (64*T1 over UDP, T4 for Timer K) all get "now + the same
    duration", so the order they are added in is the order they expire in. Keys due
    within ``LANE_GRAIN_S`` of the newest bucket's first key join it, and the bucket is
    released at the latest of their times: a record lives up to 10 ms past its timer,
    never less (the grain is measured from the first key, so a steady stream of keys
    opens a new bucket every 10 ms instead of stretching one), and a held
    call costs a pointer here instead of a (float, key) tuple and a float (about 70 bytes
    each, issue 14). A key added out of order (a reload changed T1) is only released late,
    with the bucket it is put in.
    """

    __slots__ = ("_buckets",)

    def __init__(self) -> None:
        self._buckets: deque[_Bucket] = deque()

    def add(self, expires: float, key: bytes) -> None:
        """Release ``key`` at ``expires`` (or up to ``LANE_GRAIN_S`` later)."""
        buckets = self._buckets
        if buckets:
            last = buckets[-1]
            if expires <= last.opened + LANE_GRAIN_S:
                if expires > last.expires:
                    last.expires = expires
                last.keys.append(key)
                return
        buckets.append(_Bucket(expires, key))

    def next_due(self) -> float | None:
        """When the oldest bucket is due, or None when empty."""
        return self._buckets[0].expires if self._buckets else None

    def pop_due(self, now: float) -> list[bytes]:
        """The keys due by ``now``, removed (oldest first)."""
        buckets = self._buckets
        if not buckets or buckets[0].expires > now:
            return []
        due: list[bytes] = []
        while buckets and buckets[0].expires <= now:
            due.extend(buckets.popleft().keys)
        return due

    def __len__(self) -> int:
        """Keys held (read at scrape time, not per packet: it walks the buckets)."""
        return sum(len(bucket.keys) for bucket in self._buckets)

    def __bool__(self) -> bool:
        return bool(self._buckets)
