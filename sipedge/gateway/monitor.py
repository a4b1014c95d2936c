"""GatewayMonitor: OPTIONS probing of the gateways as its own sans-I/O object.

Theory of operation
-------------------
The monitor has the same shape as the proxy core (after aioquic's ``QuicConnection``):

* Inputs: ``start(now, probed)``, ``handle_timer(now)`` once ``next_deadline()`` has passed,
  ``receive_response(resp, peer, now)`` for a response that may answer a probe (True when it
  did), ``transport_error(dest, now)`` when the shell could not deliver to ``dest``, and
  ``reload(pool, now, probed)`` / ``reconfigure(settings)``.
* Outputs: ``drain_outbox()`` → ``ProbeSend(data, dest, local)`` records,
  ``drain_events()`` → the ``GatewayStateChanged`` events the results caused,
  ``next_deadline()`` → when to call ``handle_timer``, and with ``share_results=True``
  ``drain_results()`` → every ``(gateway_id, ProbeResult)`` it applied to its pool. It never
  reads a clock or does I/O.

``ProbeSchedule`` says when each gateway is due; at most one probe is in flight per gateway.
A probe is an ordinary non-INVITE client transaction (RFC 3261 §17.1.2, Timer E
retransmissions over UDP) whose Via branch, From tag and Call-ID carry the run's
``instance`` token and a counter, so they stay unique across restarts (§8.1.1.4). It ends in
one of three typed results (house rule 7): a final response is ``Replied(code, rtt,
retry_after)``; no final response within ``ProbeSettings.timeout_s`` is ``TimedOut`` (a
provisional response does not stop that clock); a transport error reported for its gateway
is ``SendFailed``. The result goes to ``GatewayPool.observe`` — health and its hysteresis
stay in the pool — and the schedule plans the next probe from the health after it: the UP
pace, the DOWN pace for a gateway that is DOWN, PROBING or UP but failing (so a dead group
is noticed in about ``down_after × interval_down_s``), and never inside a Retry-After
hold-down.

The pool is shared with whatever routes calls by it. In one process the ``ProxyCore`` holds
the monitor and delegates to it (its outbox and deadline are folded into the core's). With N
worker processes only one of them (worker 0) has a monitor, so each gateway is probed once
between them, as Twilio asks (about one OPTIONS per 10 s per gateway): built with
``share_results=True`` it keeps every result it applies, the shell of that worker drains them
(``ProxyCore.drain_probe_results``) and sends them to the other workers, whose monitor-less
cores apply them to their own pools (``ProxyCore.observe_probe``) with the same hysteresis.
Without ``share_results`` nothing is kept: a single process grows no list.

The monitor writes its own address into each probe (Via sent-by, From, Call-ID host), so it
is told which listener to send from per transport (``ProbeSettings.sources``) and says so in
each ``ProbeSend``: the shell must send from exactly that address, or the reply goes
elsewhere.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from sipedge.gateway.health import GatewayStateChanged, Health
from sipedge.gateway.pool import Gateway, GatewayPool
from sipedge.gateway.probe import (
    ProbeResult,
    ProbeSchedule,
    Replied,
    SendFailed,
    TimedOut,
    build_probe,
)
from sipedge.gateway.stats import RTT_BUCKETS_S, ProbeStats, histogram
from sipedge.sip.address import Endpoint
from sipedge.sip.errors import SipError
from sipedge.sip.headers import parse_retry_after
from sipedge.sip.message import Response
from sipedge.sip.timers import Timers
from sipedge.sip.transaction import Action, ClientTransaction, SendRequest, client_key

__all__ = ["GatewayMonitor", "ProbeSend", "ProbeSettings"]


class ProbeSend(NamedTuple):
    """One probe datagram for the shell: ``data`` to the gateway ``dest`` from ``local``.

    ``local`` is the listener whose address the probe's Via names (``ProbeSettings.sources``).
    """

    data: bytes
    dest: Endpoint
    local: Endpoint


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeSettings:
    """How probes are sent (the schedule's intervals live in ``ProbeSchedule``).

    Attributes:
        sources: the listener a probe leaves from, by the gateway's transport (``"udp"``,
            ``"tcp"``, ``"tls"``): the outside listener calls use, so Twilio's ACL sees one
            source. Every transport of the pool's gateways needs an entry.
        timers: RFC 3261 T1/T2/T4 of the probe transactions (Timer E retransmissions).
        timeout_s: a probe without a final response this long after it was sent is
            ``TimedOut``.
        user_agent: the User-Agent of the probes, or None for none.
    """

    sources: Mapping[str, Endpoint]
    timers: Timers
    timeout_s: float
    user_agent: bytes | None = None


@dataclass(slots=True)
class _Probe:
    gateway: Gateway
    tx: ClientTransaction
    local: Endpoint
    sent_at: float
    deadline: float


class GatewayMonitor:
    """OPTIONS probes to every gateway of a pool. See the module docstring for the contract."""

    __slots__ = ("_counter", "_events", "_heap", "_outbox", "_probes", "_results", "_seq",
                 "instance", "pool", "schedule", "settings", "share_results", "stats")

    def __init__(self, pool: GatewayPool, schedule: ProbeSchedule, settings: ProbeSettings,
                 *, instance: bytes = b"", share_results: bool = False) -> None:
        """Build a monitor; ``start`` schedules the first probes.

        Args:
            pool: the gateways; probe results feed their health.
            schedule: when each gateway is due (``start`` fills it).
            settings: listeners, timers, timeout and User-Agent of the probes.
            instance: token characters unique per process run (drawn once by the shell), so
                probe Call-IDs and branches stay unique across restarts (RFC 3261 §8.1.1.4).
            share_results: keep every probe result applied to ``pool`` for
                ``drain_results`` (the prober of N workers shares them); off, none is kept.
        """
        self.pool = pool
        self.schedule = schedule
        self.settings = settings
        self.instance = instance
        self.stats = ProbeStats()
        self._probes: dict[bytes, _Probe] = {}  # in flight, by client transaction key
        #: (deadline, seq, key): a probe's next retransmission or its timeout. Entries of
        #: ended probes stay until popped (cheaper than removing them; at most one each).
        self._heap: list[tuple[float, int, bytes]] = []
        self._seq = itertools.count()
        self._counter = itertools.count(1)  # the probe nonce (with ``instance``)
        self._outbox: list[ProbeSend] = []
        self._events: list[GatewayStateChanged] = []
        self.share_results = share_results
        #: (gateway id, result) in the order applied; only filled with share_results.
        self._results: list[tuple[str, ProbeResult]] = []

    # ------------------------------------------------------------------ outputs

    def drain_outbox(self) -> list[ProbeSend]:
        """Probes to send, in order; the list is handed over and reset."""
        out, self._outbox = self._outbox, []
        return out

    def drain_events(self) -> list[GatewayStateChanged]:
        """Health changes the probe results caused since the last call."""
        out, self._events = self._events, []
        return out

    def drain_results(self) -> list[tuple[str, ProbeResult]]:
        """The probe results applied to the pool since the last call, oldest first.

        Always empty unless the monitor was built with ``share_results=True``. Feeding them,
        in order, to another pool's ``observe`` (``ProxyCore.observe_probe``) gives it the
        health this pool has.
        """
        out, self._results = self._results, []
        return out

    def next_deadline(self) -> float | None:
        """The earliest time ``handle_timer`` must run, or None."""
        due = self.schedule.next_deadline()  # cached by the schedule
        heap = self._heap
        if heap and (due is None or heap[0][0] < due):
            return heap[0][0]
        return due

    @property
    def in_flight(self) -> int:
        """Probes sent and not ended (client transactions, for the gauges)."""
        return len(self._probes)

    @property
    def timer_entries(self) -> int:
        """Entries in the probe timer heap, stale ones included (for the gauges)."""
        return len(self._heap)

    # ------------------------------------------------------------------ inputs

    def start(self, now: float, probed: Iterable[str] | None = None) -> None:
        """Schedule the first probe of every gateway (due within the schedule's jitter).

        Args:
            now: monotonic seconds.
            probed: the ids to probe (default: all); e.g. without DNS placeholders.
        """
        self._sync(now, probed)

    def handle_timer(self, now: float) -> int:
        """Retransmit, time out and send every probe due at or before ``now``.

        Returns:
            The timer entries that fired (the core counts them with its own).
        """
        due = self.next_deadline()
        if due is None or due > now:
            return 0
        heap = self._heap
        fired = 0
        while heap and heap[0][0] <= now:
            key = heapq.heappop(heap)[2]
            fired += 1
            probe = self._probes.get(key)
            if probe is not None:
                self._probe_timer(key, probe, now)
        for gateway_id in self.schedule.due(now):
            self._send(gateway_id, now)
        return fired

    def receive_response(self, resp: Response, peer: Endpoint, now: float) -> bool:
        """Take a response if it answers one of our probes.

        Only the gateway probed may answer (a stranger guessing a branch must not make a
        gateway look alive). A provisional response is taken and changes nothing: the probe
        still needs its final response before the timeout.

        Args:
            resp: a parsed response.
            peer: where it came from.
            now: monotonic seconds.

        Returns:
            True when it was a probe's (consumed here), False otherwise (including a
            response whose Via or CSeq does not parse, and a late reply to a probe that a
            reload forgot): the caller handles it as any other response.
        """
        probes = self._probes
        if not probes:
            return False
        try:
            key = client_key(resp.top_via.branch or b"", resp.cseq.method)
        except SipError:
            return False
        probe = probes.get(key)
        if probe is None or probe.gateway.endpoint.host != peer.host:
            return False
        status = resp.status
        if status < 200:
            return True
        del probes[key]
        retry_after = parse_retry_after(resp.header(b"retry-after")) if status == 503 else None
        rtt = now - probe.sent_at
        histogram(self.stats.probe_rtt, probe.gateway.id, RTT_BUCKETS_S).observe(rtt)
        self._result(probe.gateway, Replied(status, rtt, retry_after), now)
        return True

    def transport_error(self, dest: Endpoint, now: float) -> None:
        """The shell could not deliver to ``dest``: a probe in flight to it is ``SendFailed``."""
        for key, probe in list(self._probes.items()):
            if probe.gateway.endpoint == dest:
                del self._probes[key]
                self._result(probe.gateway, SendFailed("transport error"), now)

    def reload(self, pool: GatewayPool, now: float, probed: Iterable[str] | None = None) -> None:
        """Probe a rebuilt pool (the caller carried health over: ``GatewayPool.replace``).

        A probe in flight to a gateway that left, or whose definition changed (endpoint,
        domain, weight), is forgotten: a late reply is then not a probe's. Its gateway is
        also taken off the schedule, so that a gateway that stays is scheduled again as new
        (its first probe due within the jitter) instead of staying marked in flight for
        good. The schedule is then synced to the new ids.

        Args:
            pool: the new pool.
            now: monotonic seconds.
            probed: the ids to probe (default: all of ``pool``).
        """
        self.pool = pool
        for key, probe in list(self._probes.items()):
            gateway = probe.gateway
            if gateway.id not in pool or pool.gateway(gateway.id) != gateway:
                del self._probes[key]
                # ProbeSchedule.sync keeps a known id's state, in flight included: without
                # this the gateway would never be due again (no result will come for it).
                self.schedule.remove(gateway.id)
        self._sync(now, probed)

    def reconfigure(self, settings: ProbeSettings) -> None:
        """New listeners, timers, timeout or User-Agent for the probes sent from now on."""
        self.settings = settings

    # ------------------------------------------------------------------ probes

    def _sync(self, now: float, probed: Iterable[str] | None) -> None:
        pool = self.pool
        if probed is None:
            ids = [g.id for g in pool.gateways()]
        else:
            ids = [gid for gid in probed if gid in pool]
        self.schedule.sync(ids, now)

    def _send(self, gateway_id: str, now: float) -> None:
        gateway = self.pool.gateway(gateway_id)
        settings = self.settings
        local = settings.sources[gateway.endpoint.transport]
        data, branch = build_probe(gateway, local, next(self._counter), instance=self.instance,
                                   user_agent=settings.user_agent)
        key = client_key(branch, b"OPTIONS")
        tx = ClientTransaction(key, data, invite=False, reliable=gateway.endpoint.is_reliable,
                               timers=settings.timers, now=now)
        probe = _Probe(gateway, tx, local, now, now + settings.timeout_s)
        self._probes[key] = probe
        self.stats.probes_sent += 1
        self._transmit(probe, tx.start())
        self._arm(key, probe)

    def _transmit(self, probe: _Probe, actions: Sequence[Action]) -> None:
        for action in actions:
            if isinstance(action, SendRequest):
                self._outbox.append(ProbeSend(action.data, probe.gateway.endpoint, probe.local))

    def _arm(self, key: bytes, probe: _Probe) -> None:
        # The sooner of the transaction's next retransmission (Timer E) and our timeout.
        tx_deadline = probe.tx.next_deadline()
        deadline = probe.deadline if tx_deadline is None else min(tx_deadline, probe.deadline)
        heapq.heappush(self._heap, (deadline, next(self._seq), key))

    def _probe_timer(self, key: bytes, probe: _Probe, now: float) -> None:
        if now >= probe.deadline:
            del self._probes[key]
            self.stats.probe_timeouts += 1
            self._result(probe.gateway, TimedOut(), now)
            return
        self._transmit(probe, probe.tx.handle_timer(now))
        self._arm(key, probe)

    def _result(self, gateway: Gateway, result: ProbeResult, now: float) -> None:
        pool = self.pool
        self._events.extend(pool.observe(gateway.id, result, now))
        if self.share_results:
            self._results.append((gateway.id, result))
        record = pool.record(gateway.id)
        health = record.state
        if health is Health.UP and record.failures:
            # A failing UP gateway is re-probed at the DOWN pace, so a dead group is
            # noticed in about down_after × interval_down_s, not × interval_up_s.
            health = Health.PROBING
        # Honour Retry-After strictly: no probe before the hold-down ends.
        self.schedule.reschedule(gateway.id, now, health, not_before=record.held_until)
