"""OPTIONS probing: typed results, the reply-code policy, the schedule and the request bytes.

Theory of operation
-------------------
``gateway.monitor.GatewayMonitor`` runs the probes (each an ordinary non-INVITE client
transaction, RFC 3261 §17.1.2), and this module supplies the pieces around it:

* ``ProbeSchedule`` says *when* each gateway is due. The monitor asks ``due(now)`` in
  ``handle_timer``, sends one probe per id returned, and folds ``next_deadline()`` into its own
  deadline. At most one probe is in flight per gateway: a due gateway is not returned again
  until ``reschedule`` reports its result, so a slow gateway is never probed in parallel with
  itself (Twilio asks for no more than one ping per 10–15 s per IP).
* ``build_probe`` makes the OPTIONS bytes. The Request-URI host is the localized domain
  (``example.sip.ashburn-ix.twilio.com``) because that is how Twilio identifies the customer;
  the packet itself goes to the gateway's address.
* The transaction's outcome becomes a ``ProbeResult``: ``Replied`` (a final response arrived),
  ``TimedOut`` (Timer F fired: *no* reply, never confused with one — house rule 7) or
  ``SendFailed`` (the transport could not send). ``probe_observation`` turns it into the health
  machine's input using the configured healthy codes.

Nothing here reads a clock, draws from the global random generator or does I/O: time comes in
as ``now``, randomness from an injected ``random.Random``, uniqueness from a caller's nonce.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, NamedTuple, Protocol

from sipedge.gateway.health import Health, HealthPolicy, Observation, ReplyCodes, Signal
from sipedge.sip.address import Endpoint

__all__ = [
    "KEEPALIVE_PING",
    "KEEPALIVE_PONG",
    "ProbeRequest",
    "ProbeResult",
    "ProbeSchedule",
    "ProbeTarget",
    "Replied",
    "SendFailed",
    "TimedOut",
    "build_probe",
    "parse_healthy_codes",
    "probe_observation",
]

#: RFC 5626 §3.5.1: on an idle TCP/TLS flow, a double-CRLF "ping" answered by a CRLF "pong".
KEEPALIVE_PING: Final = b"\r\n\r\n"
KEEPALIVE_PONG: Final = b"\r\n"

# RFC 3261 §25.1 token characters: nonces go into branch, tag and Call-ID unescaped.
_TOKEN: Final = frozenset(
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~")


@dataclass(frozen=True, slots=True)
class Replied:
    """A final response to the probe arrived.

    Attributes:
        code: its status code.
        rtt_s: seconds from the first transmission to the response.
        retry_after_s: its Retry-After in seconds, if any (meaningful with 503).
    """

    code: int
    rtt_s: float
    retry_after_s: float | None = None


@dataclass(frozen=True, slots=True)
class TimedOut:
    """No final response before the transaction timed out (RFC 3261 Timer F)."""


@dataclass(frozen=True, slots=True)
class SendFailed:
    """The probe could not be sent (no route, connection refused, TLS handshake failed).

    Attributes:
        reason: the transport's text, for the operator.
    """

    reason: str


#: What the monitor reports for one probe.
ProbeResult = Replied | TimedOut | SendFailed


def parse_healthy_codes(items: Iterable[str | int]) -> ReplyCodes:
    """Parse config ``healthy_codes`` (``["2xx", "404", "405"]``) into a code set.

    Raises:
        ValueError: an item is not a code 100–699 or a class ``Nxx``.
    """
    return ReplyCodes.parse(items)


def probe_observation(result: ProbeResult, policy: HealthPolicy) -> Observation:
    """Classify a probe result for the health machine.

    A 503 carrying Retry-After is an explicit overload report (RFC 3261 §21.5.4) and becomes
    OVERLOAD even when 5xx is configured healthy; other replies are SUCCESS exactly when their
    code is in ``policy.healthy_codes``. ``TimedOut`` and ``SendFailed`` are always FAILURE.

    Args:
        result: the probe's outcome.
        policy: supplies the healthy codes.

    Returns:
        The observation to feed ``health.next_state``.
    """
    match result:
        case Replied(code=503, retry_after_s=after) if after is not None:
            return Observation(Signal.OVERLOAD, "503 Retry-After", retry_after_s=after)
        case Replied(code=code) if code in policy.healthy_codes:
            return Observation(Signal.SUCCESS, f"{code} reply")
        case Replied(code=code):
            return Observation(Signal.FAILURE, f"{code} reply")
        case TimedOut():
            return Observation(Signal.FAILURE, "probe timeout")
        case SendFailed(reason=reason):
            return Observation(Signal.FAILURE, "probe send failure", reason)


class ProbeSchedule:
    """When each gateway is next due for a probe.

    Intervals follow the health: ``interval_up_s`` while UP (and while ADMIN_DOWN: the operator
    parked it, so keep Twilio's guidance of one ping per 10–15 s), ``interval_down_s`` while
    DOWN or PROBING, to notice recovery quickly. Each interval is spread by ±``jitter`` (a
    fraction) so probes to the gateways of one edge do not lock into step.
    """

    __slots__ = (
        "_due", "_in_flight", "_next", "_next_valid", "_rng", "interval_down_s", "interval_up_s",
        "jitter",
    )

    def __init__(
        self,
        *,
        rng: random.Random,
        interval_up_s: float = 15.0,
        interval_down_s: float = 5.0,
        jitter: float = 0.1,
    ) -> None:
        """Create an empty schedule.

        Args:
            rng: the random source for jitter (seed it in tests).
            interval_up_s: seconds between probes while UP or ADMIN_DOWN.
            interval_down_s: seconds between probes while DOWN or PROBING.
            jitter: relative spread, 0 ≤ jitter < 1 (0.1 = ±10 %).

        Raises:
            ValueError: a non-positive interval or a jitter outside [0, 1).
        """
        if not (interval_up_s > 0 and interval_down_s > 0):
            raise ValueError("probe intervals must be > 0")
        if not 0 <= jitter < 1:
            raise ValueError("jitter must be in [0, 1)")
        self._rng = rng
        self.interval_up_s = interval_up_s
        self.interval_down_s = interval_down_s
        self.jitter = jitter
        self._due: dict[str, float] = {}
        self._in_flight: set[str] = set()
        # next_deadline() runs after every datagram (the shell re-arms its one timer) but
        # the schedule changes only a few times a minute: cache the answer, and let every
        # method that touches _due/_in_flight drop it.
        self._next: float | None = None
        self._next_valid = False

    def retune(self, now: float, *, interval_up_s: float, interval_down_s: float,
               jitter: float) -> None:
        """New intervals from a reloaded config; timing of each gateway otherwise kept.

        A gateway due later than the longest new interval is pulled in to it, so shorter
        intervals take effect within one of them rather than after the old, long one.

        Raises:
            ValueError: as the constructor.
        """
        if not (interval_up_s > 0 and interval_down_s > 0):
            raise ValueError("probe intervals must be > 0")
        if not 0 <= jitter < 1:
            raise ValueError("jitter must be in [0, 1)")
        self.interval_up_s, self.interval_down_s, self.jitter = (
            interval_up_s, interval_down_s, jitter)
        latest = now + max(interval_up_s, interval_down_s)
        for gid, due in self._due.items():
            if due > latest:
                self._due[gid] = latest
        self._next_valid = False

    def interval(self, health: Health) -> float:
        """The nominal (un-jittered) interval for a gateway in ``health``."""
        if health in (Health.UP, Health.ADMIN_DOWN):
            return self.interval_up_s
        return self.interval_down_s

    def add(self, gateway_id: str, now: float) -> None:
        """Start probing a gateway (no-op if already scheduled).

        The first probe is due within ``jitter × interval_down_s`` of ``now``: soon, because a
        new gateway is PROBING and only becomes preferred once proven, but staggered so a start
        does not fire every probe in the same millisecond.
        """
        if gateway_id not in self._due:
            self._next_valid = False
            self._due[gateway_id] = now + self._rng.uniform(0.0, self.jitter * self.interval_down_s)

    def remove(self, gateway_id: str) -> None:
        """Stop probing a gateway (a late result for it is then the monitor's to drop)."""
        self._next_valid = False
        self._due.pop(gateway_id, None)
        self._in_flight.discard(gateway_id)

    def sync(self, gateway_ids: Iterable[str], now: float) -> None:
        """Match the schedule to a reloaded pool: keep known ids' timing, add new, drop gone."""
        wanted = set(gateway_ids)
        for gone in [g for g in self._due if g not in wanted]:
            self.remove(gone)
        for gid in sorted(wanted):
            self.add(gid, now)

    def due(self, now: float) -> list[str]:
        """Gateways to probe now, earliest first; they are marked in flight.

        Returns:
            Ids whose due time is ≤ ``now`` and that have no probe in flight. The caller must
            send a probe to each and later call ``reschedule`` with the result's time.
        """
        ready = sorted(
            (t, gid) for gid, t in self._due.items() if t <= now and gid not in self._in_flight
        )
        ids = [gid for _, gid in ready]
        if ids:
            self._next_valid = False
            self._in_flight.update(ids)
        return ids

    def is_in_flight(self, gateway_id: str) -> bool:
        """True between ``due`` returning the id and the matching ``reschedule``."""
        return gateway_id in self._in_flight

    def next_deadline(self) -> float | None:
        """Earliest due time of a gateway without a probe in flight, or None."""
        if self._next_valid:
            return self._next
        times = [t for gid, t in self._due.items() if gid not in self._in_flight]
        self._next = min(times) if times else None
        self._next_valid = True
        return self._next

    def reschedule(
        self, gateway_id: str, now: float, health: Health, *, not_before: float | None = None
    ) -> float | None:
        """Record that a gateway's probe finished and plan the next one.

        Args:
            gateway_id: the gateway.
            now: when the result arrived (or the probe was abandoned).
            health: its state *after* the result was applied (sets the interval).
            not_before: optional earliest time, e.g. the end of a Retry-After hold-down, to
                honour Retry-After strictly by not probing during it.

        Returns:
            The next due time, or None if the gateway is not scheduled (removed by a reload).
        """
        self._next_valid = False
        self._in_flight.discard(gateway_id)
        if gateway_id not in self._due:
            return None
        spread = self._rng.uniform(-self.jitter, self.jitter)
        nxt = now + self.interval(health) * (1.0 + spread)
        if not_before is not None:
            nxt = max(nxt, not_before)
        self._due[gateway_id] = nxt
        return nxt


class ProbeTarget(Protocol):
    """What ``build_probe`` needs of a gateway (``pool.Gateway`` satisfies it)."""

    @property
    def endpoint(self) -> Endpoint: ...

    @property
    def domain_host(self) -> bytes: ...


class ProbeRequest(NamedTuple):
    """An OPTIONS probe ready to send, with the id the monitor keys its transaction on.

    A 2-tuple on purpose: ``data, branch = build_probe(...)``.

    Attributes:
        data: the request bytes.
        branch: the Via branch (RFC 3261 §17.1.3 transaction key, with the method).
    """

    data: bytes
    branch: bytes


def build_probe(
    target: ProbeTarget,
    local: Endpoint,
    nonce: int | bytes,
    *,
    instance: bytes = b"",
    cseq: int = 1,
    from_user: bytes = b"sipedge",
    user_agent: bytes | None = b"sipedge",
) -> ProbeRequest:
    """Build an OPTIONS probe (RFC 3261 §11) for one gateway.

    The packet goes to ``target.endpoint`` from the listener ``local`` (the same outside
    address calls use, so Twilio's ACL sees one source). Its Request-URI and To host are the
    localized domain, ``sip:example.sip.ashburn-ix.twilio.com``: Twilio identifies the
    customer by that host, not by the IP the packet is sent to.

    Args:
        target: the gateway (its endpoint's transport goes into the Request-URI for TCP/TLS).
        local: our listener: Via sent-by and From host; its transport is the Via's.
        nonce: unique per probe within this process, e.g. a counter; token characters if
            bytes. With ``instance`` it makes the branch, the From tag and the Call-ID unique.
        instance: token characters unique per process run (the shell draws it once at start),
            so Call-IDs stay globally unique across restarts (RFC 3261 §8.1.1.4); empty
            means the caller accepts reuse after a restart.
        cseq: the CSeq number.
        from_user: user part of the From URI.
        user_agent: the User-Agent value, or None to omit it.

    Returns:
        The bytes (``Content-Length: 0``) and the branch.

    Raises:
        ValueError: ``nonce``/``instance`` has non-token characters, or ``nonce`` is empty or
            negative (a caller bug: it would corrupt the branch, tag and Call-ID).
    """
    if isinstance(nonce, int):
        if nonce < 0:
            raise ValueError("probe nonce must be >= 0")
        nonce = b"%x" % nonce
    if not nonce or not set(nonce) <= _TOKEN or not set(instance) <= _TOKEN:
        raise ValueError("probe nonce and instance must be token characters")
    unique = instance + b"." + nonce if instance else nonce
    branch = b"z9hG4bK-p-" + unique
    host = local.hostport.encode("ascii")
    call_id = unique + b"@" + local.host.encode("ascii")
    request_uri = b"sip:" + target.domain_host
    transport = target.endpoint.transport
    if transport != "udp":
        # RFC 3261 §19.1.1: without transport=, the gateway's answer would be expected on UDP.
        request_uri += b";transport=" + transport.encode("ascii")
    lines = [
        b"OPTIONS " + request_uri + b" SIP/2.0",
        # RFC 3261 §8.1.1.7: the magic cookie marks an RFC 3261 branch; RFC 3581 rport makes
        # the reply come back to our source port through any NAT on the private link.
        b"Via: SIP/2.0/" + local.via_transport + b" " + host + b";branch=" + branch + b";rport",
        b"Max-Forwards: 70",  # §8.1.1.6; Twilio asks for 70
        b"From: <sip:" + from_user + b"@" + host + b">;tag=" + unique,
        b"To: <sip:" + target.domain_host + b">",  # §11.1: To = the Request-URI, no tag
        b"Call-ID: " + call_id,
        b"CSeq: " + str(cseq).encode("ascii") + b" OPTIONS",
        b"Accept: application/sdp",  # §11.1: what a UA would send; some gateways expect it
    ]
    if user_agent is not None:
        lines.append(b"User-Agent: " + user_agent)
    lines.append(b"Content-Length: 0")
    return ProbeRequest(b"\r\n".join(lines) + b"\r\n\r\n", branch)
