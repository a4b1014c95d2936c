"""The gateway pool: priority groups, round-robin, health per gateway, failover order.

Theory of operation
-------------------
A ``GatewayPool`` is built from config as priority groups, one per configured edge, in config
order (Virginia/ashburn-ix first, then Oregon/san-jose-ix). Each gateway carries its own
``HealthRecord`` (see ``health.py``); the pool feeds it probe results (``observe``, from the
gateway monitor), per-call outcomes (``observe_call``, from the proxy core) and operator
commands (``drain``/``enable``), and hands each state change back as one
``GatewayStateChanged`` event for its caller to queue.

``candidates(now)`` gives the failover order for one call (RFC 3261 §16.6 serial forking;
Kamailio's ``ds_select_dst`` + ``ds_next_dst``):

1. **UP gateways, by group priority.** Within a group the first is the next *smooth weighted
   round-robin* pick (nginx's algorithm: even spread, no bursts, weights honoured), then the
   rest of that group's UP gateways in rotation after it; then the next group the same way.
   Spreading matters beyond fairness: Twilio accepts at most 30 new calls/s from one source
   to one of its IPs, and a failover burst into Oregon must not pile onto one gateway.
2. **PROBING gateways, same order, as a last resort.** Unproven gateways (just started, just
   added by a reload, just re-enabled) never take traffic from a proven one. At startup,
   before any probe has answered, every gateway is PROBING, so this tier is what keeps the
   first calls flowing; and offering it after every UP gateway fails within a call is better
   than answering 503.

DOWN and ADMIN_DOWN gateways, and any gateway in a Retry-After hold-down, are never offered.
``exclude`` removes gateways already tried by this call. The order is fixed when
``candidates`` is called (that call advances the round-robin once per group), and each
gateway is re-checked as the iterator reaches it, so one that went DOWN meanwhile is skipped.

The pool is not thread-safe and needs no lock: the core runs on one event loop.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from sipedge.gateway.health import (
    ChangeReason,
    GatewayStateChanged,
    Health,
    HealthPolicy,
    HealthRecord,
    Observation,
    Signal,
    call_observation,
    next_state,
)
from sipedge.gateway.probe import ProbeResult, Replied, probe_observation
from sipedge.sip.address import Endpoint

__all__ = ["Gateway", "GatewayPool", "GatewayStatus", "gateway_id"]

# States a call may be sent to, in the order the tiers are offered.
_TIERS: Final = (Health.UP, Health.PROBING)


def gateway_id(edge: str, endpoint: Endpoint) -> str:
    """The stable id of a gateway: ``"ashburn-ix/208.78.112.64:5060"`` (admin API, metrics)."""
    return f"{edge}/{endpoint.hostport}"


@dataclass(frozen=True, slots=True)
class Gateway:
    """One signalling gateway of one edge.

    Attributes:
        id: stable id, see ``gateway_id``; survives reloads, keys health and metrics.
        edge: canonical edge name, ``"ashburn-ix"``.
        region: ``"Virginia"``.
        endpoint: where requests go (transport, IP, port).
        domain_host: the Request-URI host for calls and probes sent here: the localized
            domain of *this gateway's* edge, ``b"example.sip.ashburn-ix.twilio.com"``.
        weight: relative share of calls within its group (≥ 1).
    """

    id: str
    edge: str
    region: str
    endpoint: Endpoint
    domain_host: bytes
    weight: int = 1

    def __post_init__(self) -> None:
        # Config validates weights with file/key context; reaching here is a programming error.
        if self.weight < 1:
            raise ValueError(f"gateway {self.id}: weight must be >= 1")

    @classmethod
    def make(
        cls, edge: str, region: str, endpoint: Endpoint, domain_host: bytes, weight: int = 1
    ) -> Gateway:
        """A gateway with its id derived from ``edge`` and ``endpoint``."""
        return cls(gateway_id(edge, endpoint), edge, region, endpoint, domain_host, weight)


@dataclass(frozen=True, slots=True)
class GatewayStatus:
    """One row of ``GET /gateways`` and of the metrics collector's view.

    Attributes:
        id, edge, region: as in ``Gateway``.
        address: ``"udp:208.78.112.64:5060"``.
        priority: group index, 0 = preferred.
        state: current health.
        reason: why it is in that state.
        since: when it entered that state (monotonic seconds).
        held_until: end of a Retry-After hold-down, or None.
        last_code: status code of the last probe result (None after a timeout/send failure,
            or before any probe).
        last_rtt_s: round-trip time of the last replied probe, or None.
        probes: probe results observed.
        probe_failures: of those, failures (timeouts, send failures, unhealthy codes, 503s).
        call_failures: per-call failures reported by the core.
        state_changes: state changes of this gateway.
        changes_by_reason: the same, by typed reason (only reasons seen).
    """

    id: str
    edge: str
    region: str
    address: str
    priority: int
    state: Health
    reason: str
    since: float
    held_until: float | None
    last_code: int | None
    last_rtt_s: float | None
    probes: int
    probe_failures: int
    call_failures: int
    state_changes: int
    changes_by_reason: Mapping[ChangeReason, int] = field(default_factory=dict)


class _Slot:
    """Mutable per-gateway bookkeeping: the health value plus plain int counters for metrics."""

    __slots__ = (
        "call_failures",
        "changes_by_reason",
        "gateway",
        "last_code",
        "last_rtt_s",
        "priority",
        "probe_failures",
        "probes",
        "record",
        "state_changes",
    )

    def __init__(self, gateway: Gateway, priority: int, now: float) -> None:
        self.gateway = gateway
        self.priority = priority
        self.record = HealthRecord(since=now)
        self.last_code: int | None = None
        self.last_rtt_s: float | None = None
        self.probes = 0
        self.probe_failures = 0
        self.call_failures = 0
        self.state_changes = 0
        self.changes_by_reason: dict[ChangeReason, int] = {}

    def offerable(self, now: float) -> bool:
        return self.record.state in _TIERS and not self.record.is_held(now)


class GatewayPool:
    """Gateways in priority groups with health, round-robin and failover order.

    See the module docstring for the selection policy.
    """

    __slots__ = ("_groups", "_order", "_order_until", "_order_version", "_rr", "_slots",
                 "_version", "policy")

    def __init__(
        self, groups: Sequence[Sequence[Gateway]], policy: HealthPolicy, *, now: float = 0.0
    ) -> None:
        """Build a pool; every gateway starts PROBING.

        Args:
            groups: priority groups, preferred first (config order of the edges).
            policy: the health policy.
            now: the time the pool is created (``since`` of the initial PROBING state).

        Raises:
            ValueError: no groups, an empty group, or a duplicate gateway id (config bugs
                that config validation should have reported).
        """
        if not groups or any(not g for g in groups):
            raise ValueError("a gateway pool needs at least one non-empty group")
        self.policy = policy
        self._groups: tuple[tuple[_Slot, ...], ...] = tuple(
            tuple(_Slot(gw, prio, now) for gw in group) for prio, group in enumerate(groups)
        )
        self._slots: dict[str, _Slot] = {}
        for group in self._groups:
            for slot in group:
                if slot.gateway.id in self._slots:
                    raise ValueError(f"duplicate gateway id {slot.gateway.id!r}")
                self._slots[slot.gateway.id] = slot
        # Smooth weighted round-robin "current weight" per (group, tier), keyed by gateway id.
        self._rr: dict[tuple[int, Health], dict[str, int]] = {}
        # What ``candidates`` offers changes only with a state or a hold-down, not with
        # every call's success (each a new record): the eligible slots per (tier, group)
        # are kept until ``_version`` moves or the first hold-down among them ends.
        self._version = 0
        self._order: list[tuple[int, Health, list[_Slot]]] = []
        self._order_version = -1
        self._order_until = 0.0

    # -- read side ---------------------------------------------------------------------------

    @property
    def groups(self) -> tuple[tuple[Gateway, ...], ...]:
        """The gateways by priority group."""
        return tuple(tuple(s.gateway for s in group) for group in self._groups)

    def gateways(self) -> tuple[Gateway, ...]:
        """All gateways, preferred group first, in config order."""
        return tuple(s.gateway for group in self._groups for s in group)

    def __contains__(self, gateway_id: object) -> bool:
        return gateway_id in self._slots

    def gateway(self, gateway_id: str) -> Gateway:
        """The gateway with this id. Raises ``KeyError`` if unknown (admin API: 404)."""
        return self._slots[gateway_id].gateway

    def state(self, gateway_id: str) -> Health:
        """Its current health. Raises ``KeyError`` if unknown."""
        return self._slots[gateway_id].record.state

    def record(self, gateway_id: str) -> HealthRecord:
        """Its full health record (streaks, hold-down). Raises ``KeyError`` if unknown."""
        return self._slots[gateway_id].record

    def any_up(self) -> bool:
        """True when at least one gateway is UP (``/readyz``; OPTIONS to sipedge → 200)."""
        return any(s.record.state is Health.UP for s in self._slots.values())

    @property
    def state_changes(self) -> int:
        """State changes of all gateways since the pool (and those it replaced) started."""
        return sum(s.state_changes for s in self._slots.values())

    def snapshot(self) -> list[GatewayStatus]:
        """One status row per gateway, in priority then config order."""
        return [
            GatewayStatus(
                id=s.gateway.id,
                edge=s.gateway.edge,
                region=s.gateway.region,
                address=str(s.gateway.endpoint),
                priority=s.priority,
                state=s.record.state,
                reason=s.record.reason,
                since=s.record.since,
                held_until=s.record.held_until,
                last_code=s.last_code,
                last_rtt_s=s.last_rtt_s,
                probes=s.probes,
                probe_failures=s.probe_failures,
                call_failures=s.call_failures,
                state_changes=s.state_changes,
                changes_by_reason=dict(s.changes_by_reason),
            )
            for group in self._groups
            for s in group
        ]

    # -- selection ---------------------------------------------------------------------------

    def candidates(
        self, now: float, exclude: frozenset[str] | set[str] = frozenset()
    ) -> Iterator[Gateway]:
        """The failover order for one call: UP by priority, then PROBING as a last resort.

        Calling this advances the round-robin of each group that contributes, once; the
        returned iterator re-checks each gateway's health as it reaches it.

        Args:
            now: monotonic seconds (for Retry-After hold-downs).
            exclude: ids not to offer (already tried by this call).

        Returns:
            An iterator of gateways; empty when none is usable (the core answers 503).
        """
        order: list[_Slot] = []
        for prio, tier, eligible in self._eligible(now):
            if exclude:
                eligible = [s for s in eligible if s.gateway.id not in exclude]
                if not eligible:
                    continue
            first = eligible.index(self._pick(prio, tier, eligible))
            order.extend(eligible[first:])
            order.extend(eligible[:first])
        return self._offer(order, now)

    def _eligible(self, now: float) -> list[tuple[int, Health, list[_Slot]]]:
        """(group, tier, its offerable slots in config order), UP groups first; cached."""
        if self._order_version == self._version and now < self._order_until:
            return self._order
        order: list[tuple[int, Health, list[_Slot]]] = []
        until = float("inf")
        for tier in _TIERS:
            for prio, group in enumerate(self._groups):
                eligible: list[_Slot] = []
                for slot in group:
                    record = slot.record
                    if record.state is not tier:
                        continue
                    held_until = record.held_until
                    if held_until is not None and now < held_until:
                        until = min(until, held_until)
                    else:
                        eligible.append(slot)
                if eligible:
                    order.append((prio, tier, eligible))
        self._order, self._order_version, self._order_until = order, self._version, until
        return order

    def _pick(self, prio: int, tier: Health, eligible: list[_Slot]) -> _Slot:
        """Smooth weighted round-robin (nginx): add weights, take the max, subtract the total.

        Over any window of sum(weights) picks each gateway is chosen exactly weight times, and
        never in a long run. Gateways that are not eligible keep their accumulated credit.
        """
        current = self._rr.setdefault((prio, tier), {})
        total = 0
        best: _Slot | None = None
        best_value = 0
        for slot in eligible:
            value = current.get(slot.gateway.id, 0) + slot.gateway.weight
            current[slot.gateway.id] = value
            total += slot.gateway.weight
            if best is None or value > best_value:  # ties: config order
                best, best_value = slot, value
        assert best is not None  # eligible is never empty here
        current[best.gateway.id] -= total
        return best

    @staticmethod
    def _offer(order: list[_Slot], now: float) -> Iterator[Gateway]:
        for slot in order:
            # Health may have changed since the order was fixed (a probe or another call's
            # failure took it DOWN, or an operator drained it): never offer it then.
            if slot.offerable(now):
                yield slot.gateway

    # -- inputs ------------------------------------------------------------------------------

    def observe(
        self, gateway_id: str, result: ProbeResult, now: float
    ) -> list[GatewayStateChanged]:
        """Feed one probe result.

        Args:
            gateway_id: the probed gateway. An unknown id (removed by a reload while its probe
                was in flight) is ignored.
            result: the outcome.
            now: when it arrived.

        Returns:
            The state change it caused, if any (zero or one event).
        """
        slot = self._slots.get(gateway_id)
        if slot is None:
            return []
        slot.probes += 1
        if isinstance(result, Replied):
            slot.last_code, slot.last_rtt_s = result.code, result.rtt_s
        else:
            slot.last_code, slot.last_rtt_s = None, None
        obs = probe_observation(result, self.policy)
        if obs.signal is not Signal.SUCCESS:
            slot.probe_failures += 1
        return self._apply(slot, obs, now)

    def observe_call(
        self,
        gateway_id: str,
        ok: bool,
        now: float,
        *,
        retry_after_s: float | None = None,
        detail: str = "",
    ) -> list[GatewayStateChanged]:
        """Feed one per-call outcome (see ``health.call_observation``).

        A failure counts toward `down_after` like a probe failure; the core should also
        exclude the gateway for the rest of that call. ``retry_after_s`` (from a 503) holds the
        gateway down at once. Unknown ids are ignored.

        Returns:
            The state change it caused, if any.
        """
        slot = self._slots.get(gateway_id)
        if slot is None:
            return []
        if not ok:
            slot.call_failures += 1
        return self._apply(
            slot, call_observation(ok, retry_after_s=retry_after_s, detail=detail), now
        )

    def drain(self, gateway_id: str, now: float) -> list[GatewayStateChanged]:
        """Operator: take a gateway out of service (ADMIN_DOWN). Raises ``KeyError`` if unknown."""
        return self._apply(self._slots[gateway_id], Observation(Signal.DRAIN, "admin drain"), now)

    def enable(self, gateway_id: str, now: float) -> list[GatewayStateChanged]:
        """Operator: return a drained gateway to PROBING. Raises ``KeyError`` if unknown."""
        return self._apply(self._slots[gateway_id], Observation(Signal.ENABLE, "admin enable"), now)

    def mark_down(self, gateway_id: str, reason: str, now: float) -> None:
        """Set a gateway DOWN with ``reason``, outside the state machine, without an event.

        For the placeholder of a gateway name that does not resolve (``transport.dns``): it
        has no address to probe, so no observation could ever take it there.
        """
        self._set_record(self._slots[gateway_id],
                         HealthRecord(state=Health.DOWN, since=now, reason=reason))

    def _set_record(self, slot: _Slot, record: HealthRecord) -> None:
        old = slot.record
        if record.state is not old.state or record.held_until != old.held_until:
            self._version += 1
        slot.record = record

    def _apply(self, slot: _Slot, obs: Observation, now: float) -> list[GatewayStateChanged]:
        record, event = next_state(slot.gateway.id, slot.record, obs, now, self.policy)
        self._set_record(slot, record)
        if event is None:
            return []
        slot.state_changes += 1
        by_reason = slot.changes_by_reason
        by_reason[event.cause] = by_reason.get(event.cause, 0) + 1
        return [event]

    # -- reload ------------------------------------------------------------------------------

    def replace(self, new: GatewayPool) -> GatewayPool:
        """Carry health and counters over to a reloaded pool; return ``new``.

        A gateway keeps its health (state, streaks, hold-down, reason, since) and counters when
        the new pool has one with the same id *and* the same endpoint; a gateway that is new or
        moved starts PROBING. Round-robin restarts. No events are emitted: nothing changed state.

        Args:
            new: the pool built from the new config.

        Returns:
            ``new``, updated in place.
        """
        for gid, slot in new._slots.items():
            old = self._slots.get(gid)
            if old is None or old.gateway.endpoint != slot.gateway.endpoint:
                continue
            slot.record = old.record
            slot.last_code, slot.last_rtt_s = old.last_code, old.last_rtt_s
            slot.probes, slot.probe_failures = old.probes, old.probe_failures
            slot.call_failures, slot.state_changes = old.call_failures, old.state_changes
            slot.changes_by_reason = old.changes_by_reason
        new._version += 1  # records were set behind _set_record's back
        return new
