"""Gateway health: one state machine with hysteresis, as data (house rules 5 and 7).

Theory of operation
-------------------
Every gateway has a ``HealthRecord`` (a frozen value). Each fact learnt about it — a probe
result, a call outcome, an operator command — becomes an ``Observation`` carrying one of five
``Signal``s, and ``next_state`` applies ``TRANSITIONS[(state, signal)]`` to produce the next
record and, when the state changed, exactly one ``GatewayStateChanged`` event (edge-triggered,
after Kamailio's dst-up/dst-down, but returned as a value: this module never logs, never reads a
clock, never raises on peer behaviour).

The states::

    PROBING     unknown: just configured, or just re-enabled. Usable only as a last resort
                (the pool offers PROBING gateways after every UP one), so the first calls after a
                start or an enable still go somewhere, yet an unproven gateway never takes
                traffic from a proven one.
    UP          proven alive: `up_after` consecutive successes seen.
    DOWN        proven dead: `down_after` consecutive failures, or a 503 with Retry-After.
    ADMIN_DOWN  drained by the operator. Beats everything: results are still recorded by the
                pool (last code, RTT) but never move the state; only ENABLE leaves it.

Hysteresis (Kamailio ``ds_inactive_threshold`` / ``ds_probing_threshold``): a gateway changes
state only after N *consecutive* results of the other kind; a result of the same kind as the
state resets the opposite streak. Alternating success/failure therefore never flips a state,
which is what stops flapping. A 503 with Retry-After (RFC 3261 §21.5.4) is the peer telling us
explicitly it is overloaded, so it skips the threshold: DOWN at once, *held down* until
``now + min(Retry-After, retry_after_cap_s)``. While held, successes are not counted (the peer
asked us to stay away; an OPTIONS 200 during that window says little about its ability to take
calls), so the gateway needs `up_after` fresh successes after the hold ends. Probes keep
running during the hold so ``last code``/RTT stay current for the operator; the scheduler may
also be told to wait for the hold's end (``ProbeSchedule.reschedule(not_before=...)``).

Per-call outcomes use the same machine: a call failure (transport error, no provisional
response in time, a configured 408/5xx) counts exactly like a probe failure toward
`down_after`. We do not copy Kamailio's ``ds_mark_dst`` marking a destination down on one
failed call: one lost INVITE under load is common and would make the pool flap; instead the
proxy core skips that gateway for the rest of *that* call (``candidates(exclude=...)``), which
saves the call without condemning the gateway for all others. Any answer on a call is a success
and resets the failure streak, so a gateway carrying traffic is not taken down by a few probe
timeouts in a row unless calls also fail.

The full table is rendered in ``docs/health.md``; tests cover every (state, signal) pair.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

__all__ = [
    "TRANSITIONS",
    "ChangeReason",
    "GatewayStateChanged",
    "Health",
    "HealthPolicy",
    "HealthRecord",
    "Observation",
    "ReplyCodes",
    "Rule",
    "Signal",
    "Streak",
    "call_observation",
    "next_state",
]


class Health(enum.Enum):
    """The state of one gateway. Values are the lower-case names used in JSON and metrics."""

    # Members are singletons: identity hashing is C-level, unlike Enum.__hash__,
    # and these key the transition tables looked up on every step.
    __hash__ = object.__hash__

    PROBING = "probing"
    UP = "up"
    DOWN = "down"
    ADMIN_DOWN = "admin_down"


class Signal(enum.Enum):
    """The inputs of the health machine."""

    # Members are singletons: identity hashing is C-level, unlike Enum.__hash__,
    # and these key the transition tables looked up on every step.
    __hash__ = object.__hash__

    SUCCESS = "success"  # healthy probe reply, or any answer on a call
    FAILURE = "failure"  # probe timeout / send failure / unhealthy reply, or a failed call
    OVERLOAD = "overload"  # 503 with Retry-After (probe or call): hold down
    DRAIN = "drain"  # operator: take out of service
    ENABLE = "enable"  # operator: back into service (re-proven from PROBING)


class ChangeReason(enum.Enum):
    """Why a gateway changed state, as a metric label (the text ``reason`` is for humans)."""

    __hash__ = object.__hash__

    PROBE_SUCCESS = "probe_success"  # up_after healthy probe replies
    PROBE_FAILURE = "probe_failure"  # down_after failed probes
    CALL_SUCCESS = "call_success"  # answers on calls proved it alive
    CALL_FAILURE = "call_failure"  # down_after failed call attempts
    RETRY_AFTER = "retry_after"  # a 503 with Retry-After (probe or call): held down
    ADMIN_DRAIN = "admin_drain"
    ADMIN_ENABLE = "admin_enable"


class Streak(enum.Enum):
    """Which consecutive-results counter an input extends (the other one resets)."""

    # Members are singletons: identity hashing is C-level, unlike Enum.__hash__,
    # and these key the transition tables looked up on every step.
    __hash__ = object.__hash__

    SUCCESS = "success"
    FAILURE = "failure"


@dataclass(frozen=True, slots=True)
class Rule:
    """One cell of the transition table.

    Attributes:
        streak: the counter this input extends (and the opposite one resets); None = counters
            untouched (operator commands, results recorded while ADMIN_DOWN).
        target: the state entered. With a ``streak``, only when that streak reaches its
            threshold (`up_after` for successes, `down_after` for failures); without, at once.
            None = stay.
        hold: start (or extend) a Retry-After hold-down.
    """

    streak: Streak | None
    target: Health | None
    hold: bool = False


_P, _U, _D, _A = Health.PROBING, Health.UP, Health.DOWN, Health.ADMIN_DOWN
_S, _F = Streak.SUCCESS, Streak.FAILURE

#: The whole machine. Every (state, signal) pair has an entry; tests enumerate them.
TRANSITIONS: Final[Mapping[tuple[Health, Signal], Rule]] = MappingProxyType(
    {
        # PROBING: unknown, so either kind of evidence can decide it.
        (_P, Signal.SUCCESS): Rule(_S, _U),
        (_P, Signal.FAILURE): Rule(_F, _D),
        (_P, Signal.OVERLOAD): Rule(None, _D, hold=True),
        (_P, Signal.DRAIN): Rule(None, _A),
        (_P, Signal.ENABLE): Rule(None, None),
        # UP: successes only reset the failure streak; down_after failures take it down.
        (_U, Signal.SUCCESS): Rule(_S, None),
        (_U, Signal.FAILURE): Rule(_F, _D),
        (_U, Signal.OVERLOAD): Rule(None, _D, hold=True),
        (_U, Signal.DRAIN): Rule(None, _A),
        (_U, Signal.ENABLE): Rule(None, None),
        # DOWN: up_after successes (not counted while held) bring it back.
        (_D, Signal.SUCCESS): Rule(_S, _U),
        (_D, Signal.FAILURE): Rule(_F, None),
        (_D, Signal.OVERLOAD): Rule(None, None, hold=True),
        (_D, Signal.DRAIN): Rule(None, _A),
        (_D, Signal.ENABLE): Rule(None, None),
        # ADMIN_DOWN: results recorded by the pool, state untouched. A Retry-After is still
        # remembered so that an ENABLE during the hold does not send calls into it.
        (_A, Signal.SUCCESS): Rule(None, None),
        (_A, Signal.FAILURE): Rule(None, None),
        (_A, Signal.OVERLOAD): Rule(None, None, hold=True),
        (_A, Signal.DRAIN): Rule(None, None),
        (_A, Signal.ENABLE): Rule(None, _P),
    }
)


@dataclass(frozen=True, slots=True)
class ReplyCodes:
    """A set of SIP response codes given as exact codes and/or classes (``2xx``).

    Attributes:
        codes: exact codes, e.g. ``{404, 405}``.
        classes: leading digits of whole classes, e.g. ``{2}`` for ``2xx``.
    """

    codes: frozenset[int] = frozenset()
    classes: frozenset[int] = frozenset()

    def __contains__(self, code: object) -> bool:
        return isinstance(code, int) and (code in self.codes or code // 100 in self.classes)

    def __str__(self) -> str:
        parts = [f"{c}xx" for c in sorted(self.classes)] + [str(c) for c in sorted(self.codes)]
        return ", ".join(parts)

    @classmethod
    def parse(cls, items: Iterable[object]) -> ReplyCodes:
        """Build from config items such as ``["2xx", "404", 405]``.

        Args:
            items: ``"Nxx"`` for a class (N in 1–6), or a code 100–699 as int or digits.
                Typed ``object``: any TOML value is checked here (compiled with mypyc, a
                narrower type would raise TypeError before the check).

        Returns:
            The set.

        Raises:
            ValueError: an item is neither; config wraps it into ``ConfigError``.
        """
        codes: set[int] = set()
        classes: set[int] = set()
        for item in items:
            # bool is an int: `true` in TOML must not become code 1.
            if isinstance(item, int) and not isinstance(item, bool):
                text = str(item)
            elif isinstance(item, str):
                text = item.strip().lower()
            else:
                raise ValueError(f"reply code {item!r}: expected a code or a class like '2xx'")
            if len(text) == 3 and text.endswith("xx") and text[0] in "123456":
                classes.add(int(text[0]))
            elif len(text) == 3 and text.isdigit() and 100 <= int(text) <= 699:
                codes.add(int(text))
            else:
                raise ValueError(f"reply code {item!r}: expected 100-699 or a class like '2xx'")
        if not codes and not classes:
            raise ValueError("reply codes: at least one code or class is needed")
        return cls(frozenset(codes), frozenset(classes))


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    """The knobs of the health machine (config ``[probe]``).

    Attributes:
        down_after: consecutive failures that take a gateway DOWN (Kamailio
            ``ds_probing_threshold``).
        up_after: consecutive successes that bring it UP (``ds_inactive_threshold``).
        healthy_codes: probe reply codes that mean alive; 2xx only by default, because a 404
            or 483 to OPTIONS proves only that *something* answered (Kamailio's
            ``ds_ping_reply_codes`` warning). Add 404/405 for peers that reject OPTIONS.
        retry_after_cap_s: longest hold-down a Retry-After may impose, so a peer's typo
            (Retry-After: 86400) cannot park a gateway for a day.
    """

    down_after: int = 3
    up_after: int = 2
    healthy_codes: ReplyCodes = field(default_factory=lambda: ReplyCodes(classes=frozenset({2})))
    retry_after_cap_s: float = 300.0

    def __post_init__(self) -> None:
        # Programming errors: config validates these with file/key context before building.
        if self.down_after < 1 or self.up_after < 1:
            raise ValueError("down_after and up_after must be at least 1")
        if not self.retry_after_cap_s >= 0:
            raise ValueError("retry_after_cap_s must be >= 0")

    def threshold(self, streak: Streak) -> int:
        """`up_after` for a success streak, `down_after` for a failure streak."""
        return self.up_after if streak is Streak.SUCCESS else self.down_after


@dataclass(frozen=True, slots=True)
class Observation:
    """One fact about a gateway, as the health machine sees it.

    Attributes:
        signal: the input.
        label: singular noun phrase naming the kind of fact (``"probe timeout"``,
            ``"200 reply"``, ``"call failure"``, ``"503 Retry-After"``); reasons are built
            from it ("3 consecutive probe timeouts").
        detail: optional extra text for the reason (a send error, the call's final code).
        retry_after_s: the Retry-After of an OVERLOAD, seconds.
        from_call: the fact came from a call attempt, not a probe (for ``ChangeReason``).
    """

    signal: Signal
    label: str
    detail: str = ""
    retry_after_s: float | None = None
    from_call: bool = False


@dataclass(frozen=True, slots=True)
class HealthRecord:
    """The health of one gateway at one moment (a value; ``next_state`` makes the next one).

    Attributes:
        state: the current state.
        since: when it was entered (``now`` of the causing observation).
        reason: why, for the operator ("3 consecutive probe timeouts").
        successes: current consecutive-success streak.
        failures: current consecutive-failure streak.
        streak_label: the label every observation of the current streak shared; None when
            mixed (then the reason says "failures"/"successes" and names the last one).
        held_until: end of a Retry-After hold-down, or None.
    """

    state: Health = Health.PROBING
    since: float = 0.0
    reason: str = "not probed yet"
    successes: int = 0
    failures: int = 0
    streak_label: str | None = None
    held_until: float | None = None

    def is_held(self, now: float) -> bool:
        """True while a Retry-After hold-down is in force."""
        return self.held_until is not None and now < self.held_until


@dataclass(frozen=True, slots=True)
class GatewayStateChanged:
    """Event: a gateway changed state. Emitted once per change, never repeated.

    Attributes:
        gateway_id: ``"ashburn-ix/208.78.112.64:5060"``.
        old: the state left.
        new: the state entered.
        reason: why, for the log line and the admin API.
        now: when.
        cause: why, as a typed value (metrics count state changes by it).
    """

    gateway_id: str
    old: Health
    new: Health
    reason: str
    now: float
    cause: ChangeReason


def call_observation(
    ok: bool, *, retry_after_s: float | None = None, detail: str = ""
) -> Observation:
    """Turn a per-call outcome from the proxy core into an observation.

    Args:
        ok: the gateway answered the call (any provisional or final response that is not a
            configured failover code).
        retry_after_s: the Retry-After of a 503 final response, if any (ignored when ``ok``).
        detail: what happened, for the reason ("no provisional response in 4s", "408").

    Returns:
        SUCCESS, FAILURE or, for a 503 with Retry-After, OVERLOAD.
    """
    if ok:
        if detail:
            return Observation(Signal.SUCCESS, "call success", detail, from_call=True)
        return _CALL_SUCCESS
    if retry_after_s is not None:
        return Observation(Signal.OVERLOAD, "call 503 Retry-After", detail, retry_after_s,
                           from_call=True)
    return Observation(Signal.FAILURE, "call failure", detail, from_call=True)


# A value like any other: shared, since every answered call reports one (twice).
_CALL_SUCCESS: Final = Observation(Signal.SUCCESS, "call success", from_call=True)


def _cause(obs: Observation) -> ChangeReason:
    """The typed reason of a state change caused by ``obs``."""
    signal = obs.signal
    if signal is Signal.SUCCESS:
        return ChangeReason.CALL_SUCCESS if obs.from_call else ChangeReason.PROBE_SUCCESS
    if signal is Signal.FAILURE:
        return ChangeReason.CALL_FAILURE if obs.from_call else ChangeReason.PROBE_FAILURE
    if signal is Signal.OVERLOAD:
        return ChangeReason.RETRY_AFTER
    return ChangeReason.ADMIN_DRAIN if signal is Signal.DRAIN else ChangeReason.ADMIN_ENABLE


def _plural(label: str) -> str:
    """English plural of a label's last word: timeout→timeouts, reply→replies."""
    if label.endswith("y") and label[-2:-1] not in ("a", "e", "o", "u"):
        return label[:-1] + "ies"
    if label.endswith("s"):
        return label + "es"
    return label + "s"


def _streak_reason(streak: Streak, count: int, label: str | None, obs: Observation) -> str:
    if label is not None:
        text = f"{count} consecutive {_plural(label)}"
    else:
        kind = "successes" if streak is Streak.SUCCESS else "failures"
        text = f"{count} consecutive {kind} (last: {obs.label})"
    return f"{text}: {obs.detail}" if obs.detail else text


def next_state(
    gateway_id: str,
    record: HealthRecord,
    obs: Observation,
    now: float,
    policy: HealthPolicy,
) -> tuple[HealthRecord, GatewayStateChanged | None]:
    """Apply one observation to a gateway's health.

    Args:
        gateway_id: for the event.
        record: the current health.
        obs: the observation.
        now: monotonic seconds.
        policy: thresholds and the Retry-After cap.

    Returns:
        The next record, and the event when the state changed (else None).
    """
    rule = TRANSITIONS[(record.state, obs.signal)]
    held_until = record.held_until
    hold_reason = ""
    if rule.hold:
        # RFC 3261 §21.5.4; a negative/NaN value (garbage from the peer) counts as 0.
        asked = obs.retry_after_s if obs.retry_after_s is not None else 0.0
        asked = asked if math.isfinite(asked) and asked > 0 else 0.0
        held_s = min(asked, policy.retry_after_cap_s)
        held_until = max(held_until or now, now + held_s)
        hold_reason = f"{obs.label} {asked:g}s"
        if held_s < asked:
            hold_reason += f" (held {held_s:g}s, the cap)"

    successes, failures, label = record.successes, record.failures, record.streak_label
    if rule.hold and successes:
        # An overload report breaks a recovery in progress: the count restarts after the hold.
        successes, label = 0, None
    reached = False
    if rule.streak is Streak.SUCCESS:
        failures = 0
        if record.is_held(now):
            # The hold has priority: evidence of life does not count until it ends.
            successes, label = 0, None
        else:
            label = obs.label if successes == 0 or label == obs.label else None
            successes += 1
            reached = successes >= policy.up_after
    elif rule.streak is Streak.FAILURE:
        label = obs.label if failures == 0 or label == obs.label else None
        successes = 0
        failures += 1
        reached = failures >= policy.down_after

    # The constructor, not dataclasses.replace(): this runs for every answered call, and
    # replace() introspects the fields each time (about twice the cost).
    nxt = HealthRecord(
        record.state, record.since, record.reason, successes, failures, label, held_until
    )
    if rule.target is None or (rule.streak is not None and not reached):
        return nxt, None
    if rule.target is record.state:
        return nxt, None

    if rule.streak is not None:
        count = successes if rule.streak is Streak.SUCCESS else failures
        reason = _streak_reason(rule.streak, count, label, obs)
    elif rule.hold:
        reason = hold_reason
    elif obs.signal is Signal.DRAIN:
        reason = "admin drain"
    else:
        reason = "admin enable"
    if obs.detail and rule.streak is None:
        reason = f"{reason}: {obs.detail}"
    # Every state change starts both streaks afresh: hysteresis counts from the new state.
    nxt = HealthRecord(
        state=rule.target,
        since=now,
        reason=reason,
        held_until=held_until if held_until is not None and now < held_until else None,
    )
    return nxt, GatewayStateChanged(gateway_id, record.state, rule.target, reason, now,
                                    _cause(obs))
