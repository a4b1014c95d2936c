"""ProxyCore: the transaction-stateful, dialog-stateless SIP proxy of the edge (sans-I/O).

Theory of operation (after aioquic's ``QuicConnection``):

* Inputs: ``receive(data, peer, local, now)`` for every datagram or framed stream message,
  ``transport_error(dest, now)`` when the shell could not deliver to ``dest``,
  ``handle_timer(now)`` when ``next_deadline()`` has passed, and the admin calls.
  One query, ``is_answerable(peer, local, now)``, tells the shell whether an answer it
  builds itself (the stream transport's 513 for a message it will not read) may go to
  ``peer``: the same access rules ``receive`` applies, without a message.
* Outputs: ``drain_outbox()`` → ``Send`` records for the shell to put on the wire,
  ``drain_events()`` → operator-visible facts, ``next_deadline()`` → when to call back.
  The core never reads a clock, opens a socket or logs above DEBUG.

A new request from the PBX gets a *server transaction* (RFC 3261 §17.2) and a
``ProxyContext``. Each attempt to a gateway is a *branch*: a client transaction with its
own branch id. Branches are tried one after another (serial forking, RFC 3261 §16.6,
RFC 3263 §4.3): on a transport error, on no provisional reply within
``no_provisional_timeout_s``, or on a final response in ``failover_codes``, the next
candidate of the gateway pool gets a new branch. Never after a 2xx, never after the
caller's CANCEL. In-dialog requests (To tag or Route left after popping ours) are routed
from Route/Request-URI alone, so calls survive a restart (dialog-stateless).

OPTIONS probing is not the core's: a ``gateway.monitor.GatewayMonitor`` owns the probe
schedule, the probe transactions and their timers, and feeds the shared
``gateway.pool.GatewayPool``. A core built with one (``monitor=``) delegates to it: its
``next_deadline()`` is the sooner of both, ``handle_timer`` runs the monitor's timers after
its own, a response no branch knows is offered to the monitor before the stray path, a
transport error is reported to both, and the monitor's probes and health events come out of
this core's ``drain_outbox()``/``drain_events()`` (as ``Send`` records from the outside
listener of the gateway's transport). A core built with ``monitor=None`` sends no probe:
its pool's health comes from calls and from probe results observed elsewhere (another
process's monitor), fed in through ``observe_probe``: with N workers only worker 0 probes,
and the shell forwards what its core's ``drain_probe_results()`` returns to the others.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections.abc import Iterable, Sequence
from typing import Final, NamedTuple

from sipedge.gateway.monitor import GatewayMonitor, ProbeSettings
from sipedge.gateway.pool import Gateway, GatewayPool
from sipedge.gateway.probe import ProbeResult
from sipedge.gateway.stats import ProbeStats
from sipedge.proxy.admission import Admission, Verdict
from sipedge.proxy.events import (
    CallAnswered,
    CallEnded,
    CallFailed,
    CallFailedOver,
    CallStarted,
    DeprecatedParameterSeen,
    DropReason,
    Event,
    FailoverReason,
    MediaOutsideRange,
    MessageDropped,
    RequestRejected,
    SourceBanned,
)
from sipedge.proxy.media import check_sdp
from sipedge.proxy.rewrite import (
    BRANCH_PREFIX,
    branch_for,
    localize_request_uri,
    loop_hash,
    strip_params,
    via_value,
)
from sipedge.proxy.routing import Direction, Listeners, classify_source, uri_endpoint
from sipedge.proxy.settings import ProxySettings, RejectUnknown
from sipedge.proxy.stats import ANSWER_BUCKETS_S, PDD_BUCKETS_S, ProxyStats, histogram
from sipedge.proxy.validation import Reject, check_request, validate_response
from sipedge.sip.address import TRANSPORTS, Endpoint
from sipedge.sip.errors import ParseError, SipError
from sipedge.sip.headers import Via, parse_name_addr, parse_retry_after, parse_via
from sipedge.sip.message import (
    ForwardPlan,
    Request,
    Response,
    answer_parse_error,
    build_ack,
    build_cancel,
    build_response,
    forward_request,
    parse,
    strip_top_via,
)
from sipedge.sip.timers import ExpiryLane
from sipedge.sip.transaction import (
    Action,
    ClientTransaction,
    PassRequest,
    PassResponse,
    SendRequest,
    SendResponse,
    ServerTransaction,
    State,
    Terminated,
    TransportFailed,
    client_key,
    is_rfc3261_branch,
    server_key,
)
from sipedge.sip.transaction import (
    TimedOut as TxTimedOut,
)
from sipedge.sip.uri import Uri, parse_uri

__all__ = ["ProxyCore", "Send", "probe_settings"]

log: Final = logging.getLogger(__name__)

#: Methods whose forwarded request carries our Record-Route (dialog-creating).
_RECORD_ROUTE_METHODS: Final = frozenset({b"INVITE", b"SUBSCRIBE", b"REFER", b"NOTIFY"})
_EDGE_PARAMS: Final = (b"edge", b"tnx")
_TO_TAG_LEN: Final = 10
_DIRECTION_NAME: Final = {Direction.OUTBOUND: "outbound", Direction.INBOUND: "inbound",
                          Direction.UNKNOWN: "unknown"}

#: An answered call with no in-dialog request for this long is forgotten (its BYE was
#: lost, or it went another way): the calls-in-progress table stays bounded. Four hours
#: outlasts any sane call without a session refresh (RFC 4028 refreshes every 30 min).
CALL_IDLE_TIMEOUT_S: Final = 4 * 3600.0
#: How often the table of answered calls is swept for idle ones.
CALL_SWEEP_INTERVAL_S: Final = 60.0


class Send(NamedTuple):
    """One message for the shell to send: ``data`` to ``dest`` from listener ``local``.

    A NamedTuple rather than a frozen dataclass: one is built per message sent, and a
    tuple is built in C.
    """

    data: bytes
    dest: Endpoint
    local: Endpoint


class _Branch:
    """One attempt of a request toward one destination (a client transaction).

    A plain class rather than a dataclass (two are built per call): mypyc compiles its
    ``__init__`` natively, a dataclass's generated one stays interpreted. Compared by
    identity (the code looks branches up by key and compares them with ``is``).
    """

    __slots__ = ("abandoned", "cancel_pending", "cancel_sent", "ctx", "dest", "final",
                 "gateway", "is_cancel", "key", "local", "provisional", "request", "sent_at",
                 "silenced", "timer_c", "tx")

    def __init__(self, key: bytes, ctx: _Context, tx: ClientTransaction, request: bytes,
                 dest: Endpoint, local: Endpoint, gateway: Gateway | None, sent_at: float,
                 *, abandoned: bool = False, is_cancel: bool = False) -> None:
        self.key = key
        self.ctx = ctx
        self.tx = tx
        self.request = request
        self.dest = dest
        self.local = local
        self.gateway = gateway
        self.sent_at = sent_at
        self.provisional = False
        self.final = 0
        self.cancel_pending = False
        #: Superseded by failover: its responses no longer decide.
        self.abandoned = abandoned
        #: Our hop-by-hop CANCEL: its responses end here (§16.10).
        self.is_cancel = is_cancel
        #: Failed over before any reply: stop retransmitting the request.
        self.silenced = False
        #: RFC 3261 §16.6 step 11 deadline, armed by a 1xx (0 = not armed).
        self.timer_c = 0.0
        self.cancel_sent = False


class _Context:
    """Proxy state of one incoming request: its server transaction and its branches.

    A plain class rather than a dataclass, like :class:`_Branch` (compared by identity).
    """

    __slots__ = ("any_timeout", "best", "branches", "call_done", "cancelled", "counted",
                 "decided_by", "direction", "done", "edge", "emergency", "is_call", "key",
                 "local", "peer", "rang", "request", "server", "started_at", "to_tag",
                 "tried", "uri")

    def __init__(self, key: bytes, server: ServerTransaction, request: Request, uri: Uri,
                 peer: Endpoint, local: Endpoint, direction: Direction, *,
                 to_tag: bytes = b"") -> None:
        self.key = key
        self.server = server
        self.request = request
        #: The parsed Request-URI (validation parsed it; routing reuses it).
        self.uri = uri
        self.peer = peer
        self.local = local
        self.direction = direction
        self.branches: list[_Branch] = []
        self.tried: set[str] = set()
        self.best: Response | None = None
        self.any_timeout = False
        #: A final response went upstream.
        self.done = False
        self.cancelled = False
        self.to_tag = to_tag
        # Call accounting (initial INVITEs only): metrics, call log lines, drain.
        self.is_call = False
        #: calls_started counted.
        self.counted = False
        #: Answered or failed: counted once.
        self.call_done = False
        #: First 18x seen (post-dial delay measured).
        self.rang = False
        self.started_at = 0.0
        #: Edge of the current attempt (outbound) or of the source (inbound).
        self.edge = ""
        #: The gateway whose final answer went upstream.
        self.decided_by: Gateway | None = None
        #: An emergency number: bypasses the call caps.
        self.emergency = False


class _Settled(NamedTuple):
    """A non-INVITE server transaction in Completed (Timer J), reduced to its last answer.

    RFC 3261 Completed only re-sends the last response to a retransmitted request.
    Holding the whole context for those 32 s cost about 11 KB and 36 GC-tracked objects
    per call (issue 14); this is the response's bytes and two shared endpoints. An
    INVITE in RFC 6026 Accepted (Timer L) keeps less still: its To tag, in ``_accepted``.
    """

    reply: bytes | None  # re-sent for a retransmitted request; None: absorb silently
    dest: Endpoint
    local: Endpoint


def probe_settings(settings: ProxySettings) -> ProbeSettings:
    """The probe settings of a core with ``settings`` (applied to its monitor at build/reload).

    Probes leave from the outside listener of the gateway's transport, the one calls leave
    from (``Listeners.egress``), so Twilio's ACL sees one source address; in a worker that
    is its own endpoint for that listener (same address, its own port), so the replies come
    back to the worker whose monitor sent the probe. Timers, timeout and User-Agent are the
    core's.

    Args:
        settings: the core's settings.

    Returns:
        The monitor's ``ProbeSettings``.
    """
    listeners = _listeners(settings)
    return ProbeSettings(
        sources={t: listeners.egress(outside=True, transport=t) for t in TRANSPORTS},
        timers=settings.timers, timeout_s=settings.probe_timeout_s,
        user_agent=settings.user_agent)


def _response_dest(req: Request, peer: Endpoint) -> Endpoint:
    """Where responses to ``req`` go (RFC 3261 §18.2.2, RFC 3581 rport).

    Stream transports answer over the connection the request came in on (``peer``); UDP
    answers to the source address, and to the Via port unless the client asked for rport.
    """
    if peer.is_reliable:
        return peer
    try:
        via = req.top_via
    except SipError:
        return peer
    if via.rport is not None or not via.port or via.port == peer.port:
        # The same address as the source: reuse its Endpoint (no allocation per response).
        # A sent-by port 0 (the Via grammar admits it) names no socket: answer where the
        # request came from, as RFC 3581 does for rport, never to port 0.
        return peer
    return Endpoint(peer.transport, peer.host, via.port)


class ProxyCore:
    """The sans-I/O proxy. See the module docstring for the contract."""

    def __init__(self, settings: ProxySettings, pool: GatewayPool, *,
                 monitor: GatewayMonitor | None) -> None:
        """Build a core.

        Args:
            settings: routing and timing settings.
            pool: the gateways and their health.
            monitor: the OPTIONS prober of ``pool``, driven through this core (``start``
                schedules its first probes; its settings follow ``probe_settings(settings)``),
                or None for a core that does not probe: its pool's health is fed from
                elsewhere (``observe_probe``).

        Raises:
            ValueError: ``monitor`` watches another pool than ``pool``.
        """
        if monitor is not None and monitor.pool is not pool:
            raise ValueError("the monitor must feed the core's own pool")
        self.settings = settings
        self.pool = pool
        self.monitor = monitor
        if monitor is not None:
            monitor.reconfigure(probe_settings(settings))
        self.stats = ProxyStats()
        self.listeners = _listeners(settings)
        self._gateway_hosts = frozenset(g.endpoint.host for g in pool.gateways())
        self._gateway_edges = {g.endpoint.host: g.edge for g in pool.gateways()}
        self._direction_cache: dict[str, Direction] = {}
        #: Answered calls by Call-ID → last in-dialog activity (RFC 3261 dialog-lite:
        #: from the 2xx of the initial INVITE to the final response of its BYE).
        self._calls: dict[bytes, float] = {}
        self._sweep_armed = False
        #: SIGTERM / POST /drain: new initial INVITEs get 503, in-dialog traffic flows.
        self.draining = False
        self.admission = Admission(settings.limits)
        self._inside_only, self._outside_only = _sides(settings)
        self._now = 0.0  # the latest input's time: gauges read at scrape time use it
        self._outbox: list[Send] = []
        self._events: list[Event] = []
        self._contexts: dict[bytes, _Context] = {}
        self._branches: dict[bytes, _Branch] = {}
        self._branches_by_dest: dict[Endpoint, set[bytes]] = {}
        self._heap: list[tuple[float, int, bytes, bytes]] = []
        #: Server transactions in their wait state, by key: answered INVITEs (RFC 6026
        #: Accepted, Timer L) → our To tag, for a late CANCEL's 200 (§9.2); non-INVITEs
        #: (Timer J) → their last response. Every wait is 64*T1 from "now", so a FIFO is
        #: the timer (no heap entry). A key is never added twice while held (its
        #: retransmissions are absorbed), so the lane's release of a key is the record's.
        self._accepted: dict[bytes, bytes] = {}
        self._settled: dict[bytes, _Settled] = {}
        self._wait_lane = ExpiryLane()
        #: Non-INVITE client transactions in Timer K (T4 over UDP). A retransmitted final
        #: response is absorbed; nothing else is kept (branch keys are unique, §16.6).
        self._absorbing: set[bytes] = set()
        self._absorbing_lane = ExpiryLane()
        self._seq = itertools.count()
        self._tag_counter = itertools.count(1)

    def start(self, now: float, probed: Iterable[str] | None = None) -> None:
        """Schedule the first probe of every gateway (due within the schedule's jitter).

        Args:
            now: monotonic seconds.
            probed: the ids to probe (default: all); e.g. without DNS placeholders.
        """
        if self.monitor is not None:
            self.monitor.start(now, probed)

    # ------------------------------------------------------------------ outputs

    def drain_outbox(self) -> list[Send]:
        """Messages to send, in order; the list is handed over and reset."""
        out, self._outbox = self._outbox, []
        return out

    def drain_events(self) -> list[Event]:
        """Operator-visible facts since the last call."""
        out, self._events = self._events, []
        return out

    def next_deadline(self) -> float | None:
        """The earliest time ``handle_timer`` must run, or None."""
        heap = self._heap
        due = heap[0][0] if heap else None
        for lane in (self._wait_lane, self._absorbing_lane):
            lane_due = lane.next_due()
            if lane_due is not None and (due is None or lane_due < due):
                due = lane_due
        monitor = self.monitor
        if monitor is not None:
            probe_due = monitor.next_deadline()
            if probe_due is not None and (due is None or probe_due < due):
                return probe_due
        return due

    # ------------------------------------------------------------------ inputs

    def receive(self, data: bytes, peer: Endpoint, local: Endpoint, now: float) -> None:
        """Handle one message that arrived from ``peer`` on listener ``local``."""
        self._now = now
        settings = self.settings
        direction = self._direction(peer.host)
        if direction is Direction.OUTBOUND:
            # Admission first, before any parsing: a flooding inside source costs one
            # dict lookup and a bucket per message (proxy.admission).
            verdict = self.admission.check_source(peer.host, now)
            if verdict is not Verdict.ADMIT:
                self.stats.count_drop(DropReason.BANNED if verdict is Verdict.BANNED
                                      else DropReason.RATE_LIMITED)
                if verdict is Verdict.RATE_LIMITED:
                    self._events.append(SourceBanned(peer, self.settings.limits.ban_s))
                return
            if local in self._outside_only:
                self._drop(peer, DropReason.WRONG_SIDE)  # the PBX side on Twilio's socket
                return
        elif direction is Direction.INBOUND and local in self._inside_only:
            self._drop(peer, DropReason.WRONG_SIDE)  # a gateway on the PBX-side socket
            return
        if len(data) > settings.max_message_bytes:
            # RFC 3261 §21.5.14: answered 513 when a Via can be found in the head (the
            # scan of answer_parse_error is bounded by the limits); else dropped.
            error = ParseError(513, "message larger than max_message_bytes")
            self._parse_failed(data, error, peer, local, drop_reason=DropReason.TOO_LARGE)
            return
        try:
            msg = parse(data, settings.message_limits)
        except ParseError as exc:
            self._parse_failed(data, exc, peer, local)
            return
        try:
            if isinstance(msg, Response):
                self.stats.responses_received += 1
                if (direction is Direction.UNKNOWN
                        and not self._awaits_response_from(peer.host)):
                    # Neither a party nor a hop we sent to: _on_response would drop it
                    # anyway (branch, probe and stray checks all need one of the two), so
                    # drop it before the header index is built. A stranger's 60 KB
                    # response cost 4-8 ms of CPU against 0.1 ms for its request
                    # (measured with fuzz_core, issue 13): now both meet the ACL first.
                    self.stats.stray_responses += 1
                    self.stats.count_drop(DropReason.STRAY_RESPONSE)
                    return
                self._on_response(msg, peer, now)
            else:
                self.stats.requests_received += 1
                self._on_request(msg, peer, local, direction, now)
        except SipError as err:
            # A header we interpret lazily turned out malformed: same answer as a parse error.
            # (Not named `exc`: mypyc gives a name one type, ParseError from above.)
            error = err if isinstance(err, ParseError) else ParseError(400, str(err))
            self._parse_failed(data, error, peer, local, msg)

    def is_answerable(self, peer: Endpoint, local: Endpoint, now: float) -> bool:
        """Whether an error answer to ``peer`` on listener ``local`` may be sent at all.

        For the answers the shell makes without handing the message over: the stream
        transport does not read a request whose Content-Length passes its maximum, and
        answers 513 from the header block (RFC 3261 §21.5.14) only when this is True.
        It mirrors what ``receive`` does with a message from ``peer`` before any
        answer: a source that is neither allowed on the inside nor a gateway gets what
        ``reject_unknown`` says (``drop``, the default: silence, so a scanner learns
        nothing; ``403``: answered, as ``receive`` answers its parse errors), a source
        on the wrong side's listener and a banned inside source get nothing. Pure: no
        counter moves and no token is spent (the caller counts its close).

        Args:
            peer: where the message came from.
            local: the listener it arrived on.
            now: the shell's ``loop.time()`` (a ban ends at a time).

        Returns:
            True when ``receive`` would answer a parse error from ``peer`` on ``local``.
        """
        direction = self._direction(peer.host)
        if direction is Direction.UNKNOWN:
            return self.settings.reject_unknown is not RejectUnknown.DROP
        if direction is Direction.OUTBOUND:
            return (local not in self._outside_only
                    and not self.admission.is_banned(peer.host, now))
        return local not in self._inside_only

    def _awaits_response_from(self, host: str) -> bool:
        """True when a live branch was sent to ``host`` (an in-dialog hop a Route named).

        One pass over the destinations (gateways, the PBX and the few hops in-dialog
        requests went to), not over the branches; only non-party sources get here.
        """
        return any(dest.host == host for dest in self._branches_by_dest)

    def transport_error(self, dest: Endpoint, now: float) -> None:
        """The shell could not deliver to ``dest`` (refused, reset, TLS failure)."""
        self.stats.transport_errors += 1
        for key in list(self._branches_by_dest.get(dest, ())):
            branch = self._branches.get(key)
            if branch is not None:
                self._run_client(branch, branch.tx.transport_error(now), now)
        monitor = self.monitor
        if monitor is not None:
            monitor.transport_error(dest, now)
            self._take_monitor_output()

    def handle_timer(self, now: float) -> None:
        """Fire every timer due at or before ``now``."""
        self._now = now
        heap = self._heap
        fired = 0
        while heap and heap[0][0] <= now:
            _, _, kind, key = heapq.heappop(heap)
            fired += 1
            if kind == b"c":
                branch = self._branches.get(key)
                if branch is not None:
                    self._branch_timer(branch, now)
            elif kind == b"s":
                ctx = self._contexts.get(key)
                if ctx is not None:
                    self._run_server(ctx, ctx.server.handle_timer(now), now)
            elif kind == b"i":
                self._sweep_calls(now)
        for key in self._wait_lane.pop_due(now):
            fired += 1
            if self._accepted.pop(key, None) is None:
                self._settled.pop(key, None)
        for key in self._absorbing_lane.pop_due(now):
            fired += 1
            self._absorbing.discard(key)
        monitor = self.monitor
        if monitor is not None:
            # After the core's own timers. When probes shared the core's heap, a tie went
            # to the entry pushed first, most often the call's (a probe's entries are at
            # most probe_timeout_s old): calls act on the health from before this
            # instant's probe results, and the due probes are sent last, as then.
            fired += monitor.handle_timer(now)
            self._take_monitor_output()
        self.stats.timers_fired += fired

    def observe_probe(self, gateway_id: str, result: ProbeResult, now: float) -> None:
        """A probe result observed elsewhere (another process's monitor): health and events.

        For a core built without a monitor, whose pool's health is fed from outside: the
        pool applies the result as it would its own monitor's (``GatewayPool.observe``,
        hysteresis included; an unknown id is ignored) and the state change, if any,
        comes out of ``drain_events()``. Nothing is scheduled or sent.

        Args:
            gateway_id: the probed gateway.
            result: the probe's outcome.
            now: when it was observed.
        """
        self._events.extend(self.pool.observe(gateway_id, result, now))

    def drain_probe_results(self) -> list[tuple[str, ProbeResult]]:
        """The monitor's probe results since the last call, for the other workers.

        What the shell of the probing worker sends to the others, each of which feeds them
        to its own core's ``observe_probe`` in order. Empty for a core without a monitor,
        and for a monitor not built with ``share_results=True``.
        """
        monitor = self.monitor
        return monitor.drain_results() if monitor is not None else []

    @property
    def probe_stats(self) -> ProbeStats:
        """The monitor's probe counters (all zero for a core without a monitor)."""
        return self.monitor.stats if self.monitor is not None else ProbeStats()

    def _take_monitor_output(self) -> None:
        """Move the monitor's probes and events into this core's outputs, in order."""
        monitor = self.monitor
        assert monitor is not None
        sends = monitor.drain_outbox()
        if sends:
            self._outbox.extend([Send(p.data, p.dest, p.local) for p in sends])
        events = monitor.drain_events()
        if events:
            self._events.extend(events)

    # ------------------------------------------------------------------ admin

    def drain_gateway(self, gateway_id: str, now: float) -> None:
        """Take a gateway out of rotation (admin-down); calls in progress finish."""
        self._events.extend(self.pool.drain(gateway_id, now))

    def enable_gateway(self, gateway_id: str, now: float) -> None:
        """Return a drained gateway to probing."""
        self._events.extend(self.pool.enable(gateway_id, now))

    def refresh_gauges(self) -> ProxyStats:
        """The stats with the gauges set from the live tables (read at scrape time)."""
        stats = self.stats
        stats.server_transactions = (len(self._contexts) + len(self._settled)
                                     + len(self._accepted))
        monitor = self.monitor
        stats.client_transactions = (len(self._branches) + len(self._absorbing)
                                     + (monitor.in_flight if monitor is not None else 0))
        stats.calls_in_progress = len(self._calls)
        stats.calls_setting_up = sum(
            1 for c in self._contexts.values() if c.is_call and not c.done)
        stats.sources_banned = self.admission.banned(self._now)
        stats.timer_entries = (len(self._heap) + len(self._wait_lane)
                               + len(self._absorbing_lane)
                               + (monitor.timer_entries if monitor is not None else 0))
        return stats

    def set_draining(self, draining: bool) -> None:
        """Refuse (True) or accept again (False) new calls; in-dialog requests always flow.

        While draining, a new initial INVITE is answered 503 with Retry-After (RFC 3261
        §21.5.4: the PBX tries its next destination, e.g. the other sipedge of a pair) and
        an OPTIONS to sipedge itself is answered 503, so health checks move traffic away.
        """
        self.draining = draining

    @property
    def calls_in_progress(self) -> int:
        """Answered calls whose BYE has not had its final response yet."""
        return len(self._calls)

    def call_ids(self) -> frozenset[bytes]:
        """The Call-IDs of the calls in progress now (a reload keeps old sockets for them)."""
        return frozenset(self._calls)

    def has_any_call(self, call_ids: frozenset[bytes]) -> bool:
        """True while one of ``call_ids`` is still in progress."""
        calls = self._calls
        return any(c in calls for c in call_ids)

    def pending_requests(self) -> int:
        """Requests still waiting for their final answer (wait states not counted)."""
        return sum(1 for c in self._contexts.values() if not c.done)

    def is_quiescent(self) -> bool:
        """True when no call is in progress and every request has its final answer.

        A drain ends here: what is left (RFC 3261 wait states, Timer K/J/I) only absorbs
        retransmissions, which the peers no longer need once they have their answers.
        """
        return not self._calls and self.pending_requests() == 0

    def is_ready(self) -> bool:
        """True when at least one gateway is UP (``/readyz``, local OPTIONS)."""
        return self.pool.any_up()

    def reconfigure(self, settings: ProxySettings, pool: GatewayPool, now: float,
                    probed: Iterable[str] | None = None) -> None:
        """Swap in a reloaded config whole: settings, listeners, ACLs and the pool.

        A worker's own endpoints and its siblings' come with the settings: they are
        replaced with the listeners. Requests in flight finish on the plan they started
        with (their branches keep their destination, listener and gateway); new requests
        use the new settings. Gateway health carries over for gateways that stay
        (``reload_pool``).
        """
        self.settings = settings
        self.listeners = _listeners(settings)
        self._inside_only, self._outside_only = _sides(settings)
        self.admission.reconfigure(settings.limits, now)
        if self.monitor is not None:
            self.monitor.reconfigure(probe_settings(settings))
        self.reload_pool(pool, now, probed)

    def reload_pool(self, pool: GatewayPool, now: float,
                    probed: Iterable[str] | None = None) -> None:
        """Swap in a rebuilt gateway pool (DNS membership change, config reload).

        Health and counters of gateways with the same id and endpoint carry over
        (``GatewayPool.replace``); new ones start PROBING. The monitor, if any, probes the
        new pool (``GatewayMonitor.reload``: probes in flight to gateways that left are
        forgotten, a late reply is then a stray response). Calls in progress keep their
        branches.

        Args:
            pool: the pool built from the new membership.
            now: monotonic seconds.
            probed: the ids to probe (default: all); e.g. without DNS placeholders.
        """
        self.pool = self.pool.replace(pool)
        self._gateway_hosts = frozenset(g.endpoint.host for g in pool.gateways())
        self._gateway_edges = {g.endpoint.host: g.edge for g in pool.gateways()}
        self._direction_cache.clear()  # classifications depended on the old gateway hosts
        if self.monitor is not None:
            self.monitor.reload(self.pool, now, probed)

    # ------------------------------------------------------------------ parse errors

    def _parse_failed(self, data: bytes, exc: ParseError, peer: Endpoint, local: Endpoint,
                      msg: Request | Response | None = None,
                      drop_reason: DropReason | None = None) -> None:
        self.stats.parse_errors += 1
        if exc.status is None or isinstance(msg, Response) or data.startswith(b"SIP/"):
            self.stats.count_parse_error(None)
            self._drop(peer, drop_reason or DropReason.UNPARSEABLE, exc.reason)
            return
        self.stats.count_parse_error(exc.status)
        if (self.settings.reject_unknown is RejectUnknown.DROP
                and self._direction(peer.host) is Direction.UNKNOWN):
            # A stranger's garbage is dropped like its valid requests: scanners learn nothing.
            self.stats.unknown_source_dropped += 1
            self._drop(peer, DropReason.SOURCE_NOT_ALLOWED)
            return
        reply: bytes | None = None
        dest = peer
        if isinstance(msg, Request):
            try:
                reply = build_response(msg, exc.status, exc.phrase, headers=exc.extra_headers,
                                       to_tag=self._new_tag())
                dest = _response_dest(msg, peer)
            except SipError:
                reply = None
        if reply is None:
            # parse() itself failed or the header index did (no Request to copy from):
            # scan the raw header lines leniently for Via/From/To/Call-ID/CSeq (RFC 3261
            # §16.3, §8.2.6); a Via is enough, the phrase names what is missing.
            reply = answer_parse_error(data, exc, to_tag=self._new_tag(),
                                       limits=self.settings.message_limits)
        if reply is not None:
            self.stats.parse_errors_answered += 1
            self.stats.count_local_reply(exc.status)
            self._outbox.append(Send(reply, dest, local))
            self._events.append(RequestRejected(peer, exc.status, exc.reason))
            return
        # Without a parsable top Via there is nothing to route or match an answer by
        # (RFC 3261 §18.2.2, §17.1.3): on a stream too, a response without Via would be
        # dropped by the client, so it is not sent.
        self._drop(peer, drop_reason or DropReason.UNANSWERABLE, f"{exc.status}: {exc.reason}")

    # ------------------------------------------------------------------ requests

    def _on_request(self, req: Request, peer: Endpoint, local: Endpoint,
                    direction: Direction, now: float) -> None:
        """A request from ``peer``; ``direction`` is what ``receive`` classified it as."""
        method = req.method
        self.stats.count_request(method, direction)
        if direction is Direction.UNKNOWN:
            self._reject_stranger(req, peer, local)
            return

        key = self._server_key(req)
        if method == b"ACK":
            ctx = self._contexts.get(key)
            if ctx is not None:
                # RFC 3261 §17.2.1: the ACK for our non-2xx final ends here (COMPLETED,
                # CONFIRMED); RFC 6026 ACCEPTED passes an ACK for 2xx on (PassRequest).
                actions = ctx.server.receive_request(now, ack=True)
                if not any(isinstance(a, PassRequest) for a in actions):
                    self.stats.retransmissions_absorbed += 1
                    self._run_server(ctx, actions, now)
                    return
                self._run_server(ctx, actions, now)
            self._forward_stateless(req, peer, local, direction, now)
            return

        ctx = self._contexts.get(key)
        if ctx is not None:
            # A retransmission: the server transaction re-sends its last response.
            self.stats.retransmissions_absorbed += 1
            self._run_server(ctx, ctx.server.receive_request(now), now)
            return
        if key in self._accepted:
            # A retransmitted INVITE answered 2xx already (RFC 6026 Timer L running).
            self.stats.retransmissions_absorbed += 1
            return
        settled = self._settled.get(key)
        if settled is not None:
            # A retransmission of a request answered already (Timer J running).
            self.stats.retransmissions_absorbed += 1
            if settled.reply is not None:
                self._outbox.append(Send(settled.reply, settled.dest, settled.local))
            return

        if method == b"CANCEL":
            self._on_cancel(req, peer, local, now)
            return

        checked = check_request(req)
        if (isinstance(checked, Reject) and checked.status == 483 and method == b"OPTIONS"
                and req.top_route is None):
            # RFC 3261 §16.3 step 3: an OPTIONS with Max-Forwards 0 addressed to us is ours
            # to answer (§11) — the usual "is the proxy alive" ping, not a loop.
            try:
                uri = parse_uri(req.request_uri)
            except SipError:
                uri = None
            if uri is not None and self.listeners.is_own(uri):
                checked = uri
        if isinstance(checked, Reject):
            self._respond_stateless(req, peer, local, checked.status,
                                    checked.phrase or checked.reason.encode(),
                                    checked.extra_headers)
            return
        if len(self._contexts) >= self.settings.limits.max_transactions:
            # Bounded state: beyond the cap a new request costs a stateless 503 only.
            self.stats.transactions_cap_503 += 1
            if method != b"ACK":
                self._respond_stateless(req, peer, local, 503, b"Overloaded", self._retry_after)
            return

        server = ServerTransaction(key, req.data, invite=method == b"INVITE",
                                   reliable=peer.is_reliable, timers=self.settings.timers,
                                   now=now)
        ctx = _Context(key, server, req, checked, peer, local, direction,
                       to_tag=self._new_tag())
        self._contexts[key] = ctx
        popped, next_route = self._own_routes(req)
        in_dialog = req.to_tag is not None or next_route is not None
        if method == b"INVITE":
            if direction is Direction.INBOUND and self.settings.media is not None:
                self._check_media(req, peer)
            if not in_dialog:
                if self.draining:
                    # Draining: refuse the new call (the PBX retries elsewhere), no 100.
                    self.stats.draining_503 += 1
                    self._respond(ctx, 503, now, b"Draining", headers=self._retry_after)
                    return
                if self.admission.is_emergency(checked.user):
                    ctx.emergency = True
                    self.stats.emergency_calls += 1
                elif not self.admission.take_call(now):
                    self.stats.calls_rate_limited += 1
                    self._respond(ctx, 503, now, b"Call Rate Exceeded",
                                  headers=((b"Retry-After", b"1"),))
                    return
            # RFC 3261 §16.2: 100 Trying at once so the caller stops retransmitting.
            self._respond(ctx, 100, now)

        if (popped == 0 and not in_dialog and method == b"OPTIONS"
                and self.listeners.is_own(ctx.uri)):
            self._answer_options(ctx, now)
            return
        if in_dialog:
            calls = self._calls
            if req.call_id in calls:
                calls[req.call_id] = now  # activity keeps an answered call from idling out
            self._route_in_dialog(ctx, popped, next_route, now)
            return
        is_call = method == b"INVITE"
        if is_call:
            ctx.is_call = True
            ctx.started_at = now
        if direction is Direction.OUTBOUND:
            self.stats.calls_outbound += is_call
            self._next_attempt(ctx, popped, now)
        else:
            self.stats.calls_inbound += is_call
            ctx.edge = self._gateway_edges.get(peer.host, "")
            self._route_inbound(ctx, popped, now)

    def _reject_stranger(self, req: Request, peer: Endpoint, local: Endpoint) -> None:
        self.stats.unknown_source_dropped += 1
        if self.settings.reject_unknown is RejectUnknown.FORBIDDEN and req.method != b"ACK":
            self._respond_stateless(req, peer, local, 403, b"Forbidden", ())
        else:
            self._drop(peer, DropReason.SOURCE_NOT_ALLOWED)

    def _check_media(self, msg: Request | Response, peer: Endpoint) -> None:
        """Read (never rewrite) the SDP of an INVITE or answer from Twilio (``proxy.media``).

        Only INVITEs from gateways and 18x/2xx answers from them get here; the body is
        looked at only when there is one.
        """
        body = msg.body
        media = self.settings.media
        if not body or media is None:
            return
        content_type = msg.header(b"content-type") or b""
        if not content_type.lower().startswith(b"application/sdp"):
            return
        self.stats.sdp_checked += 1
        problem = check_sdp(body, media)
        if problem is None:
            return
        table = self.stats.media_outside_range
        table[problem.issue] = table.get(problem.issue, 0) + 1
        self._events.append(MediaOutsideRange(msg.call_id.decode("ascii", "replace"), peer,
                                              problem.issue, problem.value))

    def _drop(self, peer: Endpoint, reason: DropReason, detail: str = "") -> None:
        self.stats.count_drop(reason)
        self._events.append(MessageDropped(peer, reason, detail))

    @property
    def _retry_after(self) -> tuple[tuple[bytes, bytes], ...]:
        return ((b"Retry-After", b"%d" % self.settings.retry_after_s),)

    # ------------------------------------------------------------------ call accounting

    def _call_started(self, ctx: _Context, gateway: Gateway | None) -> None:
        """A call's first attempt is sent (or it is refused before any): counted once."""
        ctx.counted = True
        if gateway is not None:
            ctx.edge = gateway.edge
        key = (ctx.direction, ctx.edge)
        started = self.stats.calls_started
        started[key] = started.get(key, 0) + 1
        self._events.append(CallStarted(
            ctx.request.call_id.decode("ascii", "replace"), _DIRECTION_NAME[ctx.direction],
            ctx.edge, gateway.id if gateway is not None else _peer_name(ctx)))

    def _call_finished(self, ctx: _Context, status: int, now: float) -> None:
        """The final response to an initial INVITE went upstream (counted once)."""
        if not ctx.counted:
            self._call_started(ctx, None)  # refused before any attempt (no gateway, 416…)
        ctx.call_done = True
        gateway = ctx.decided_by
        if gateway is None and ctx.branches and ctx.branches[-1].gateway is not None:
            gateway = ctx.branches[-1].gateway
        edge = gateway.edge if gateway is not None else ctx.edge
        gateway_name = gateway.id if gateway is not None else _peer_name(ctx)
        call_id = ctx.request.call_id
        elapsed = now - ctx.started_at
        stats = self.stats
        if 200 <= status < 300:
            key = (ctx.direction, edge)
            stats.calls_answered[key] = stats.calls_answered.get(key, 0) + 1
            histogram(stats.answer_time, edge, ANSWER_BUCKETS_S).observe(elapsed)
            self._calls[call_id] = now
            if not self._sweep_armed:
                self._sweep_armed = True
                self._push(now + CALL_SWEEP_INTERVAL_S, b"i", b"")
            self._events.append(CallAnswered(call_id.decode("ascii", "replace"),
                                             _DIRECTION_NAME[ctx.direction], edge,
                                             gateway_name, elapsed))
            return
        fkey = (ctx.direction, edge, status // 100)
        stats.calls_failed[fkey] = stats.calls_failed.get(fkey, 0) + 1
        self._events.append(CallFailed(call_id.decode("ascii", "replace"),
                                       _DIRECTION_NAME[ctx.direction], edge, gateway_name,
                                       status, elapsed))

    def _call_rang(self, ctx: _Context, gateway: Gateway | None, now: float) -> None:
        """First 18x of a call: post-dial delay, by the edge that rang."""
        ctx.rang = True
        edge = gateway.edge if gateway is not None else ctx.edge
        histogram(self.stats.pdd, edge, PDD_BUCKETS_S).observe(now - ctx.started_at)

    def _final_upstream(self, ctx: _Context, status: int, now: float) -> None:
        """Bookkeeping when a final response to ``ctx`` goes upstream (relayed or ours)."""
        if ctx.is_call and not ctx.call_done:
            self._call_finished(ctx, status, now)
        elif ctx.request.method == b"BYE":
            call_id = ctx.request.call_id
            if self._calls.pop(call_id, None) is not None:
                self._events.append(CallEnded(call_id.decode("ascii", "replace"), status))
        # Done reading it: the request is held for the wait timers (32 s over UDP) only
        # to absorb retransmissions; its header index is rebuilt should anything look.
        ctx.request.shed()

    def _sweep_calls(self, now: float) -> None:
        """Forget answered calls idle for ``CALL_IDLE_TIMEOUT_S`` (their BYE went missing)."""
        horizon = now - CALL_IDLE_TIMEOUT_S
        calls = self._calls
        for call_id in [c for c, seen in calls.items() if seen < horizon]:
            del calls[call_id]
            self.stats.calls_idle_expired += 1
            self._events.append(CallEnded(call_id.decode("ascii", "replace"), 0))
        self._sweep_armed = bool(calls)
        if calls:
            self._push(now + CALL_SWEEP_INTERVAL_S, b"i", b"")

    def _server_key(self, req: Request, *, of_invite: bool = False) -> bytes:
        """RFC 3261 §17.2.3 key (``sip.transaction.server_key``, the one key format).

        An ACK maps to its INVITE; ``of_invite`` gives the key of the INVITE a CANCEL
        targets (§9.2: same branch, same sent-by).
        """
        via = req.top_via
        method = b"INVITE" if of_invite else req.method
        branch = via.branch
        if is_rfc3261_branch(branch):
            return server_key(branch, via.sent_by, method)
        # RFC 2543 peer: no magic cookie; match on the dialog-ish fields instead.
        return server_key(branch, via.sent_by, method, request_uri=req.request_uri,
                          to_tag=req.to_tag, from_tag=req.from_tag, call_id=req.call_id,
                          cseq=req.cseq.number, top_via=req.header_values(b"via")[0])

    def _new_tag(self) -> bytes:
        return b"se%08x" % next(self._tag_counter)

    def _direction(self, host: str) -> Direction:
        """Which way a request from ``host`` goes, cached per source address.

        The cache is bounded: a scan from many addresses must not grow memory; it is
        cleared on reload (the ACL or gateway set may change).
        """
        cache = self._direction_cache
        direction = cache.get(host)
        if direction is None:
            direction = classify_source(host, self.settings.inside_allow, self._gateway_hosts)
            if direction is Direction.UNKNOWN and host == self.settings.pbx.host:
                # The PBX that takes calls from Twilio also sends in-dialog requests
                # (its BYE) and may place calls: it is on the inside even when
                # inside.allow lists only the trunk's source addresses.
                direction = Direction.OUTBOUND
            if len(cache) >= 4096:
                cache.clear()
            cache[host] = direction
        return direction

    def _own_routes(self, req: Request) -> tuple[int, bytes | None]:
        """How many top Route values name us, and the first Route that does not."""
        if req.top_route is None:
            return 0, None
        popped = 0
        for value in req.header_values(b"route"):
            if self.listeners.is_own_route(value):
                popped += 1
                continue
            return popped, value
        return popped, None

    # ------------------------------------------------------------------ local answers

    def _respond(self, ctx: _Context, status: int, now: float, reason: bytes | None = None,
                 headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
        data = build_response(ctx.request, status, reason, to_tag=ctx.to_tag,
                              headers=tuple(headers))
        self.stats.count_local_reply(status)
        if status >= 200:
            ctx.done = True
            self.stats.local_responses += 1
            self._final_upstream(ctx, status, now)
        self._run_server(ctx, ctx.server.send_response(status, data, now), now)

    def _respond_stateless(self, req: Request, peer: Endpoint, local: Endpoint, status: int,
                           reason: bytes, headers: Iterable[tuple[bytes, bytes]]) -> None:
        self.stats.requests_rejected += 1
        self.stats.local_responses += 1
        self.stats.count_local_reply(status)
        data = build_response(req, status, reason, to_tag=self._new_tag(),
                              headers=tuple(headers))
        self._outbox.append(Send(data, _response_dest(req, peer), local))
        self._events.append(RequestRejected(peer, status, reason.decode("ascii", "replace")))

    def _answer_options(self, ctx: _Context, now: float) -> None:
        """OPTIONS to sipedge itself: 200 while a gateway is UP, else 503 (issue #4)."""
        allow = (b"Allow", b"INVITE, ACK, BYE, CANCEL, OPTIONS, UPDATE, INFO, REFER, NOTIFY")
        if self.draining:
            self._respond(ctx, 503, now, b"Draining", headers=self._retry_after)
        elif self.pool.any_up():
            self._respond(ctx, 200, now, headers=(allow,))
        else:
            self._respond(ctx, 503, now, b"No Gateway Available", headers=self._retry_after)

    # ------------------------------------------------------------------ routing

    def _route_inbound(self, ctx: _Context, popped: int, now: float) -> None:
        """Twilio → PBX: note ``edge``/``tnx``, optionally strip them, send to the PBX."""
        new_uri: bytes | None = None
        uri = ctx.uri  # validated: parsed without error
        if uri.param(b"edge") is not None:
            self.stats.edge_param_seen += 1
        tnx = uri.param(b"tnx")
        if tnx is not None:
            self.stats.tnx_deprecated += 1
            self._events.append(
                DeprecatedParameterSeen(ctx.peer, tnx.decode("ascii", "replace")))
        has_edge = tnx is not None or uri.param(b"edge") is not None
        if self.settings.strip_edge_params and has_edge:
            new_uri = strip_params(uri, _EDGE_PARAMS)
        pbx = self.settings.pbx
        local = self.listeners.egress(outside=False, transport=pbx.transport)
        self._start_branch(ctx, pbx, local, None, new_uri, popped, now)

    def _route_in_dialog(self, ctx: _Context, popped: int, next_route: bytes | None,
                         now: float) -> None:
        """Loose routing (RFC 3261 §16.12): next Route, else the Request-URI."""
        try:
            uri = ctx.uri if next_route is None else parse_uri(parse_name_addr(next_route).uri)
            dest = uri_endpoint(uri)
        except SipError:
            dest = None
        if dest is None or self.listeners.is_own_endpoint(dest):
            # Nowhere to go, or back to ourselves (an in-dialog request whose Route set
            # was lost): answering beats a loop through our own sockets.
            self._respond(ctx, 404, now, b"No Route To Target")
            return
        local = self.listeners.egress(outside=ctx.direction is Direction.OUTBOUND,
                                      transport=dest.transport)
        self._start_branch(ctx, dest, local, None, None, popped, now)

    def _forward_stateless(self, req: Request, peer: Endpoint, local: Endpoint,
                           direction: Direction, now: float) -> None:
        """ACK for a 2xx (its own transaction, RFC 3261 §17.1.1.3): route and forget."""
        popped, next_route = self._own_routes(req)
        try:
            uri_bytes = parse_name_addr(next_route).uri if next_route else req.request_uri
            dest = uri_endpoint(parse_uri(uri_bytes))
        except SipError:
            dest = None
        if dest is None or self.listeners.is_own_endpoint(dest):
            self._drop(peer, DropReason.ACK_UNROUTABLE)
            return
        egress = self.listeners.egress(outside=direction is Direction.OUTBOUND,
                                       transport=dest.transport)
        via = req.top_via
        branch = branch_for(b"ack", (via.branch or b"") + req.call_id, 0)
        received, rport = self._received(req, peer)
        plan = ForwardPlan(via=via_value(egress, branch), pop_routes=popped,
                           received=received, rport=rport)
        self._outbox.append(Send(forward_request(req, plan), dest, egress))
        self.stats.requests_forwarded += 1

    @staticmethod
    def _received(req: Request, peer: Endpoint) -> tuple[bytes | None, int | None]:
        """RFC 3261 §18.2.1 received= and RFC 3581 rport for the previous hop's Via."""
        via = req.top_via
        rport = peer.port if via.rport == b"" else None
        host = peer.host.encode("ascii")
        received = host if (via.host != host or rport is not None) else None
        return received, rport

    # ------------------------------------------------------------------ outbound attempts

    def _next_attempt(self, ctx: _Context, popped: int, now: float) -> None:
        """PBX → Twilio: send to the next usable gateway, or finish the request.

        A new INVITE takes a token of its gateway's calls/s cap (Twilio: 30 per gateway
        IP); a gateway at its cap is skipped for the next one (spilling to the next edge),
        except for emergency calls.
        """
        gateway = None
        capped = False
        capped_invite = ctx.request.method == b"INVITE" and not ctx.emergency
        admission = self.admission
        for candidate in self.pool.candidates(now, exclude=ctx.tried):
            if not capped_invite or admission.take_gateway(candidate.id, now):
                gateway = candidate
                break
            capped = True
            self.stats.gateway_cap_skips += 1
        if gateway is None:
            if capped and not ctx.done and ctx.best is None and not ctx.any_timeout:
                self.stats.gateway_cap_503 += 1
                self._respond(ctx, 503, now, b"Gateway Call Rate Exceeded",
                              headers=((b"Retry-After", b"1"),))
                return
            self._finish_exhausted(ctx, now)
            return
        ctx.tried.add(gateway.id)
        ctx.edge = gateway.edge
        try:
            new_uri = localize_request_uri(ctx.uri, gateway.domain_host)
        except SipError:
            self._respond(ctx, 416, now, b"Unsupported URI Scheme")
            return
        local = self.listeners.egress(outside=True, transport=gateway.endpoint.transport)
        self._start_branch(ctx, gateway.endpoint, local, gateway, new_uri, popped, now)

    def _finish_exhausted(self, ctx: _Context, now: float) -> None:
        """No gateway left: the best response, else 408 (timeouts) or 503 (nothing usable)."""
        if ctx.done:
            return
        if ctx.best is not None:
            self._forward_final(ctx, ctx.best, now)
        elif ctx.any_timeout:
            self._respond(ctx, 408, now, b"Request Timeout")
        else:
            self.stats.no_gateway_503 += 1
            self._respond(ctx, 503, now, b"No Gateway Available", headers=self._retry_after)

    def _start_branch(self, ctx: _Context, dest: Endpoint, local: Endpoint,
                      gateway: Gateway | None, new_uri: bytes | None, popped: int,
                      now: float) -> None:
        req = ctx.request
        out_uri = new_uri if new_uri is not None else req.request_uri
        loop = loop_hash(out_uri, req.call_id, req.from_tag, req.to_tag, req.cseq.number,
                         req.method)
        if self._is_loop(req, loop):
            self.stats.loops_detected += 1
            self._respond(ctx, 482, now, b"Loop Detected")
            return
        attempt = len(ctx.branches)
        branch = branch_for(loop, ctx.key, attempt)
        while ((key := client_key(branch, req.method)) in self._branches
               or key in self._absorbing):
            # RFC 3261 §16.6 step 8: the branch must be unique per transaction. The same
            # request again after its server transaction ended (at once over TCP, Timer J
            # = 0) while our client transaction for it lives on (Timer K on a UDP leg)
            # would get the same branch: the old branch was overwritten in the table and
            # its destination entry leaked (found by fuzz_core's drain invariant).
            attempt += 1
            branch = branch_for(loop, ctx.key, attempt)
        record_route: tuple[bytes, ...] = ()
        if req.method in _RECORD_ROUTE_METHODS and req.to_tag is None:
            rr = self.listeners.record_route
            # RFC 5658 double Record-Route when the two sides use different listeners:
            # each side then sees the address it can reach. Compared as values: a worker
            # sends from its own alias of the shared listener the request came in on, and
            # both have the alias's value (one entry, as in a single process).
            outgoing, incoming = rr(local), rr(ctx.local)
            record_route = ((outgoing,) if outgoing == incoming
                            else (outgoing, incoming))
        received, rport = self._received(req, ctx.peer)
        plan = ForwardPlan(via=via_value(local, branch), request_uri=new_uri,
                           record_route=record_route, pop_routes=popped,
                           received=received, rport=rport)
        data = forward_request(req, plan)
        key = client_key(branch, req.method)
        tx = ClientTransaction(key, data, invite=req.method == b"INVITE",
                               reliable=dest.is_reliable, timers=self.settings.timers, now=now)
        branch_state = _Branch(key, ctx, tx, data, dest, local, gateway, now)
        ctx.branches.append(branch_state)
        if ctx.is_call and not ctx.counted:
            self._call_started(ctx, gateway)
        self._branches[key] = branch_state
        self._branches_by_dest.setdefault(dest, set()).add(key)
        self.stats.requests_forwarded += 1
        self._run_client(branch_state, tx.start(), now)
        # Our failover timer: no provisional (or, for non-INVITE, no answer) in time.
        if gateway is not None:
            self._push(now + self.settings.no_provisional_timeout_s, b"c", key)

    def _is_loop(self, req: Request, loop: bytes) -> bool:
        """RFC 3261 §16.3 step 4 / RFC 5393: our Via with the same loop hash = a loop."""
        # Our branch marker + this loop hash is 26 bytes that only our own Via can carry;
        # one substring search over the bytes beats splitting and parsing every Via.
        # find, not `in`: a bytes operand makes bytes.__contains__ build a TypeError first
        return req.data.find(BRANCH_PREFIX + loop) >= 0

    # ------------------------------------------------------------------ CANCEL

    def _on_cancel(self, req: Request, peer: Endpoint, local: Endpoint, now: float) -> None:
        """RFC 3261 §16.10: 200 hop-by-hop, CANCEL the pending branches, 487 upstream."""
        self.stats.cancels += 1
        invite_key = self._server_key(req, of_invite=True)
        ctx = self._contexts.get(invite_key)
        if ctx is None:
            to_tag = self._accepted.get(invite_key)
            if to_tag is not None:
                # §9.2: the INVITE has its final answer already; the CANCEL gets its 200
                # and changes nothing.
                self.stats.count_local_reply(200)
                self._outbox.append(Send(build_response(req, 200, to_tag=to_tag),
                                         _response_dest(req, peer), local))
                return
            self._respond_stateless(req, peer, local, 481, b"Call/Transaction Does Not Exist", ())
            return
        ok = build_response(req, 200, to_tag=ctx.to_tag)
        self.stats.count_local_reply(200)
        self._outbox.append(Send(ok, _response_dest(req, peer), local))
        if ctx.done or ctx.cancelled:
            return
        ctx.cancelled = True
        any_provisional = False
        for branch_state in ctx.branches:
            if branch_state.final:
                continue
            if branch_state.provisional:
                any_provisional = True
                self._send_cancel(branch_state, now)
            else:
                # RFC 3261 §9.1: no CANCEL before a provisional; send it when one arrives.
                branch_state.cancel_pending = True
        if not any_provisional:
            self._respond(ctx, 487, now, b"Request Terminated")

    def _send_cancel(self, branch: _Branch, now: float) -> None:
        # RFC 3261 §9.1: no final response 64*T1 after the CANCEL: give the branch up.
        branch.cancel_sent = True
        self._arm_timer_c(branch, now + 64 * self.settings.timers.t1)
        try:
            data = build_cancel(parse(branch.request))  # type: ignore[arg-type]
        except SipError:
            return
        key = client_key(branch.key.rpartition(b" ")[0], b"CANCEL")
        tx = ClientTransaction(key, data, invite=False, reliable=branch.dest.is_reliable,
                               timers=self.settings.timers, now=now)
        cancel = _Branch(key, branch.ctx, tx, data, branch.dest, branch.local, None, now,
                         abandoned=True, is_cancel=True)
        self._branches[key] = cancel
        self._run_client(cancel, tx.start(), now)

    # ------------------------------------------------------------------ responses

    def _on_response(self, resp: Response, peer: Endpoint, now: float) -> None:
        via = resp.top_via
        method = resp.cseq.method
        key = client_key(via.branch or b"", method)
        branch = self._branches.get(key)
        if branch is None:
            monitor = self.monitor
            if monitor is not None and monitor.receive_response(resp, peer, now):
                self._take_monitor_output()
                return
            if key in self._absorbing:
                self.stats.retransmissions_absorbed += 1  # Timer K: a final again
                return
            self._stray_response(resp, peer, now)
            return
        if branch.dest.host != peer.host:
            # Only the hop we sent to may answer: a stranger guessing a branch must not
            # inject a response into a call (RFC 3261 §18.1.2 sends responses back to us
            # from the address we reached; DNS-named hops are resolved to that address).
            self.stats.stray_responses += 1
            self._drop(peer, DropReason.UNEXPECTED_RESPONDER)
            return
        if not branch.is_cancel and not resp.has_next_via:
            # RFC 3261 §16.7 step 3: with our Via popped no Via would remain, so the
            # response is not for the caller and MUST NOT be forwarded (it would leave
            # with no Via at all). A broken hop's answer: as if none came (the timers
            # and failover carry on). Our own CANCEL's answer has only our Via by design.
            self._drop(peer, DropReason.UNPARSEABLE, "no Via left for the caller")
            return
        ack = None
        if branch.tx.is_invite and resp.status >= 300:
            parsed = parse(branch.request)
            assert isinstance(parsed, Request)
            ack = build_ack(parsed, resp)
        self._run_client(branch, branch.tx.receive_response(resp.status, now, ack=ack), now,
                         resp)

    def _stray_response(self, resp: Response, peer: Endpoint, now: float) -> None:
        """A response no transaction knows: forward a 2xx to INVITE statelessly (§16.7)."""
        if not (200 <= resp.status < 300 and resp.cseq.method == b"INVITE"):
            self.stats.stray_responses += 1
            self.stats.count_drop(DropReason.STRAY_RESPONSE)
            return
        if not (resp.top_via.branch or b"").startswith(BRANCH_PREFIX):
            self.stats.stray_responses += 1
            self.stats.count_drop(DropReason.STRAY_RESPONSE)
            return
        values = resp.header_values(b"via")
        if len(values) < 2 or validate_response(resp) is not None:
            # RFC 4475 §3.3.10: never relay to a broadcast/unspecified address.
            self.stats.stray_responses += 1
            self.stats.count_drop(DropReason.STRAY_RESPONSE)
            return
        upstream = parse_via(values[1])
        dest = self._via_dest(upstream)
        if not (self._is_party(peer.host) and self._is_party(dest.host)):
            # Only between the PBX and Twilio: a stranger's forged 2xx must not turn
            # sipedge into a reflector toward any address named in a Via.
            self.stats.stray_responses += 1
            self.stats.count_drop(DropReason.STRAY_RESPONSE)
            return
        toward_twilio = dest.host in self._gateway_hosts
        local = self.listeners.egress(outside=toward_twilio, transport=dest.transport)
        self._outbox.append(Send(strip_top_via(resp), dest, local))
        self.stats.responses_forwarded += 1
        # A 2xx going to a gateway answers a call from Twilio. (Asked of the side rather
        # than of ``local``: a worker's egress is its own alias, in no listener tuple.)
        self.stats.count_response(resp.status, Direction.INBOUND if toward_twilio
                                  else Direction.OUTBOUND)

    def _is_party(self, host: str) -> bool:
        """True for the PBX (allowed callers and the callee) and the gateways."""
        return host == self.settings.pbx.host or classify_source(
            host, self.settings.inside_allow, self._gateway_hosts) is not Direction.UNKNOWN

    @staticmethod
    def _via_dest(via: Via) -> Endpoint:
        """Where a response goes by its Via (RFC 3261 §18.2.2, RFC 3581 rport)."""
        transport = via.transport.decode("ascii", "replace").lower()
        host_b = via.received or via.host
        host = host_b.decode("ascii", "replace").strip("[]")
        port = via.port or (5061 if transport == "tls" else 5060)
        rport = via.rport
        if rport and rport.isdigit() and len(rport) <= 5 and 0 < int(rport) < 65536:
            # RFC 3581 §4: rport is a port; 0 or 99999 (five digits) is no destination.
            port = int(rport)
        return Endpoint(transport if transport in ("udp", "tcp", "tls") else "udp", host, port)

    def _on_branch_response(self, branch: _Branch, resp: Response, now: float) -> None:
        """A response the client transaction passes up (RFC 3261 §16.7)."""
        ctx = branch.ctx
        status = resp.status
        if branch.is_cancel:
            return
        if status < 200:
            if branch.tx.is_invite and not branch.cancel_sent:
                self._arm_timer_c(branch, now + self.settings.timers.timer_c)  # §16.7 step 2
            if not branch.provisional:
                branch.provisional = True
                if branch.gateway is not None:
                    self._events.extend(self.pool.observe_call(branch.gateway.id, True, now))
            if branch.cancel_pending or (ctx.cancelled and not branch.abandoned):
                branch.cancel_pending = False
                self._send_cancel(branch, now)
                return
            if status == 100 or ctx.done or branch.abandoned:
                return  # 100 is hop-by-hop (§16.7 step 5)
            if ctx.is_call and not ctx.rang and 180 <= status < 190:
                self._call_rang(ctx, branch.gateway, now)
            if branch.gateway is not None and self.settings.media is not None:
                self._check_media(resp, branch.dest)
            self._forward_response(ctx, resp, now)
            return
        branch.final = status
        if 200 <= status < 300:
            # Always forwarded, even late or on an abandoned branch (§16.7 step 5).
            if branch.gateway is not None:
                self._events.extend(self.pool.observe_call(branch.gateway.id, True, now))
            if not ctx.call_done:
                ctx.decided_by = branch.gateway
            if (branch.gateway is not None and self.settings.media is not None
                    and branch.tx.is_invite):
                self._check_media(resp, branch.dest)
            self._forward_response(ctx, resp, now)
            ctx.done = True
            return
        if branch.abandoned or ctx.done:
            return
        retry_after = parse_retry_after(resp.header(b"retry-after")) if status == 503 else None
        if branch.gateway is not None and status in self.settings.failover_codes:
            self._events.extend(self.pool.observe_call(branch.gateway.id, False, now,
                                                       retry_after_s=retry_after))
        if ctx.best is None or _better(status, ctx.best.status):
            ctx.best = resp
            ctx.decided_by = branch.gateway
        if (branch.gateway is not None and status in self.settings.failover_codes
                and not ctx.cancelled):
            self._fail_over(branch, FailoverReason.RESPONSE, now, status)
            return
        ctx.decided_by = branch.gateway
        self._forward_final(ctx, resp, now)

    def _fail_over(self, branch: _Branch, reason: FailoverReason, now: float,
                   code: int = 0) -> None:
        ctx = branch.ctx
        branch.abandoned = True
        if not branch.provisional and not branch.final:
            # RFC 3261 §9.1: no CANCEL before a provisional, so silence the branch (no more
            # retransmissions toward a dead gateway, which could answer a revived one) and
            # CANCEL it should a late 1xx still arrive.
            branch.silenced = True
            branch.cancel_pending = True
        self.stats.failovers += 1
        before = len(ctx.branches)
        popped, _ = self._own_routes(ctx.request)
        self._next_attempt(ctx, popped, now)
        nxt = ctx.branches[-1].gateway if len(ctx.branches) > before else None
        gateway = branch.gateway
        gateway_id = gateway.id if gateway is not None else str(branch.dest)
        from_edge = gateway.edge if gateway is not None else ""
        to_edge = nxt.edge if nxt is not None else ""
        by = self.stats.failovers_by
        key = (from_edge, to_edge, reason)
        by[key] = by.get(key, 0) + 1
        self._events.append(CallFailedOver(ctx.request.call_id.decode("ascii", "replace"),
                                           gateway_id, reason,
                                           nxt.id if nxt is not None else None,
                                           from_edge, to_edge, code))

    def _forward_final(self, ctx: _Context, resp: Response, now: float) -> None:
        if ctx.done:
            return
        if resp.status == 503:
            # RFC 3261 §16.7 step 6: a lone 503 must not travel upstream (the PBX would
            # think *sipedge* is unavailable); answer 500 instead.
            self._respond(ctx, 500, now, b"Gateway Unavailable")
            return
        self._forward_response(ctx, resp, now)

    def _forward_response(self, ctx: _Context, resp: Response, now: float) -> None:
        data = strip_top_via(resp)
        status = resp.status
        stats = self.stats
        stats.responses_forwarded += 1
        stats.count_response(status, ctx.direction)
        if status >= 200:
            if not ctx.done or (ctx.is_call and not ctx.call_done):
                self._final_upstream(ctx, status, now)
            ctx.done = True
        if ctx.server.is_terminated:
            # 2xx retransmission after the server transaction ended: statelessly upstream.
            self._outbox.append(Send(data, _response_dest(ctx.request, ctx.peer), ctx.local))
            return
        self._run_server(ctx, ctx.server.send_response(resp.status, data, now), now)

    # ------------------------------------------------------------------ transaction glue

    def _run_client(self, branch: _Branch, actions: Sequence[Action], now: float,
                    resp: Response | None = None) -> None:
        for action in actions:
            if isinstance(action, SendRequest):
                if branch.silenced and action.data is branch.request:
                    continue
                self._outbox.append(Send(action.data, branch.dest, branch.local))
            elif isinstance(action, PassResponse):
                if resp is not None:
                    self._on_branch_response(branch, resp, now)
            elif isinstance(action, TxTimedOut):
                self._branch_failed(branch, FailoverReason.TIMEOUT, now)
            elif isinstance(action, TransportFailed):
                self._branch_failed(branch, FailoverReason.TRANSPORT_ERROR, now)
            elif isinstance(action, Terminated):
                self._drop_branch(branch)
                return
        tx = branch.tx
        state = tx.state
        if state is State.ACCEPTED:
            # RFC 6026 Accepted only relays the 2xx's retransmissions upstream, which
            # the stateless path does for a 2xx no branch matches (§16.7, _stray_response):
            # the branch goes now instead of 32 s later.
            self._drop_branch(branch)
            return
        deadline = tx.next_deadline()
        if state is State.COMPLETED and not tx.is_invite and deadline is not None:
            # Timer K: only retransmitted finals to absorb (T4 over UDP).
            self._drop_branch(branch)
            self._absorbing.add(branch.key)
            self._absorbing_lane.add(deadline, branch.key)
            return
        if deadline is not None:
            self._push(deadline, b"c", branch.key)

    def _run_server(self, ctx: _Context, actions: Sequence[Action], now: float) -> None:
        for action in actions:
            if isinstance(action, SendResponse):
                self._outbox.append(Send(action.data, _response_dest(ctx.request, ctx.peer),
                                         ctx.local))
            elif isinstance(action, Terminated):
                self._contexts.pop(ctx.key, None)
                self._release(ctx)
                return
        server = ctx.server
        deadline = server.next_deadline()
        if deadline is None:
            return
        state = server.state
        if ctx.done and (state is State.ACCEPTED
                         or (state is State.COMPLETED and not server.is_invite)):
            self._settle(ctx, deadline)
            return
        self._push(deadline, b"s", ctx.key)

    def _settle(self, ctx: _Context, expires: float) -> None:
        """Reduce an answered server transaction to its wait record until ``expires``.

        Branches still running (a failed-over attempt awaiting its CANCEL's answer, a
        late 2xx) keep the context object and relay through it; only the key table
        forgets it, so a retransmission finds the small record instead.
        """
        key = ctx.key
        server = ctx.server
        if self._contexts.get(key) is ctx:
            del self._contexts[key]
        if server.is_invite:
            self._accepted[key] = ctx.to_tag
        else:
            self._settled[key] = _Settled(server.last_response,
                                          _response_dest(ctx.request, ctx.peer), ctx.local)
        self._wait_lane.add(expires, key)
        self._release(ctx)

    def _arm_timer_c(self, branch: _Branch, deadline: float) -> None:
        branch.timer_c = deadline
        self._push(deadline, b"c", branch.key)

    def _timer_c_fired(self, branch: _Branch, now: float) -> None:
        """Timer C (RFC 3261 §16.6 step 11): a branch that rings forever must not leak."""
        branch.timer_c = 0.0
        if not branch.cancel_sent:
            self._send_cancel(branch, now)  # had a provisional: CANCEL it
            return
        # The CANCEL got no final response either (§9.1): end the branch as if it said 408.
        branch.final = 408
        branch.abandoned = True
        self._drop_branch(branch)
        ctx = branch.ctx
        if not ctx.done:
            if ctx.cancelled:
                self._respond(ctx, 487, now, b"Request Terminated")
            else:
                self._respond(ctx, 408, now, b"Request Timeout")

    def _branch_timer(self, branch: _Branch, now: float) -> None:
        ctx = branch.ctx
        if branch.timer_c and now >= branch.timer_c and not branch.final:
            self._timer_c_fired(branch, now)
            if branch.key not in self._branches:
                return
        if (branch.gateway is not None and not branch.abandoned and not branch.final
                and not branch.provisional and not ctx.done and not ctx.cancelled
                and now >= branch.sent_at + self.settings.no_provisional_timeout_s):
            # Twilio itself moves on after 4 s without a provisional; so do we.
            self._branch_failed(branch, FailoverReason.NO_PROVISIONAL, now)
        deadline = branch.tx.next_deadline()
        if deadline is not None and deadline <= now:
            self._run_client(branch, branch.tx.handle_timer(now), now)

    def _branch_failed(self, branch: _Branch, reason: FailoverReason, now: float) -> None:
        """Timeout or transport error on a branch: health, then failover or give up."""
        ctx = branch.ctx
        if branch.abandoned or branch.final:
            return
        if reason is not FailoverReason.TRANSPORT_ERROR:
            ctx.any_timeout = True
        if branch.gateway is not None:
            self._events.extend(self.pool.observe_call(branch.gateway.id, False, now))
        if ctx.done:
            branch.abandoned = True
            return
        if ctx.cancelled:
            branch.abandoned = True
            self._respond(ctx, 487, now, b"Request Terminated")
            return
        if branch.gateway is not None:
            self._fail_over(branch, reason, now)
            return
        branch.abandoned = True
        if reason is FailoverReason.TIMEOUT:
            self._respond(ctx, 408, now, b"Request Timeout")
        else:
            self._respond(ctx, 503, now, b"Service Unavailable", headers=self._retry_after)

    def _drop_branch(self, branch: _Branch) -> None:
        self._branches.pop(branch.key, None)
        keys = self._branches_by_dest.get(branch.dest)
        if keys is not None:
            keys.discard(branch.key)
            if not keys:
                del self._branches_by_dest[branch.dest]
        self._release(branch.ctx)

    def _release(self, ctx: _Context) -> None:
        """Break the context <-> branch cycle once neither side can be reached.

        Then reference counting frees the call's objects (messages, transactions) at
        once, instead of leaving them to the cyclic GC, which the daemon runs rarely
        (``daemon.tune_gc``): memory stays proportional to the live calls.
        """
        if self._contexts.get(ctx.key) is ctx:
            return
        branches = self._branches
        for branch in ctx.branches:
            if branches.get(branch.key) is branch:
                return
        ctx.branches = []

    def _push(self, deadline: float, kind: bytes, key: bytes) -> None:
        heapq.heappush(self._heap, (deadline, next(self._seq), kind, key))



def _listeners(settings: ProxySettings) -> Listeners:
    """The core's listeners: the shared ones and, in a worker, its own and its siblings'."""
    return Listeners(settings.inside, settings.outside, own=settings.own,
                     siblings=settings.siblings)


def _sides(settings: ProxySettings) -> tuple[frozenset[Endpoint], frozenset[Endpoint]]:
    """Listeners that face only the PBX, and only Twilio (a shared socket faces both).

    The inside accepts only ``inside.allow`` (and the PBX), the outside only the
    gateways: a source arriving on the other side's socket is dropped. A worker's own
    endpoint is on the side(s) of the shared listener it is the alias of, so a message
    arriving on it is classified exactly as one on the shared listener.
    """
    own = settings.own
    inside = frozenset([*settings.inside, *(own[ep] for ep in settings.inside if ep in own)])
    outside = frozenset([*settings.outside, *(own[ep] for ep in settings.outside if ep in own)])
    return inside - outside, outside - inside


def _peer_name(ctx: _Context) -> str:
    """The other party of a call that has no gateway (the PBX, or "" if none was tried)."""
    branch = ctx.branches[-1] if ctx.branches else None
    return branch.dest.hostport if branch is not None else ""


def _better(status: int, than: int) -> bool:
    """RFC 3261 §16.7 step 6: prefer 6xx, then the lowest class; 503 loses to anything."""
    if status // 100 == 6:
        return than // 100 != 6
    if than // 100 == 6:
        return False
    if than == 503:
        return True
    if status == 503:
        return False
    return status // 100 < than // 100
