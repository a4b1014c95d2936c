"""RFC 3261 §17 transactions (with RFC 6026), sans-I/O.

Theory of operation
-------------------
A transaction is a small state machine that owns exactly one request and the retransmission
work around it. It never touches a socket or a clock and never parses a message: the caller
(the proxy core) feeds it *inputs* and gets back a list of *actions* to perform.

- Inputs arrive through a handful of methods: ``start()`` (client), ``receive_response()``
  (client), ``receive_request()`` (server: a retransmission, or the ACK for our non-2xx),
  ``send_response()`` (server: the TU answers), ``transport_error()`` and
  ``handle_timer(now)``. Each method maps its argument to one :class:`Input` (sipgo's
  vocabulary: ``RESPONSE_1XX``, ``TU_300_699``, ``TIMER_A`` …) and runs one step.
- One step is one lookup in the machine's transition table, a ``dict`` keyed by
  ``(State, Input)`` whose value is ``(next_state, effects)``. The table is the whole
  behaviour: there is no ``if state == …`` anywhere else. A pair that is not in the table is
  ignored (RFC 3261 repeatedly says "absorbed" or "discarded"); it never raises.
- Effects (:class:`Effect`) are the verbs a table entry may use: send or re-send, pass up to
  the TU, report a timeout or a transport failure, arm a timer. Applying them produces the
  :data:`Action` values handed back to the caller.
- Timers are absolute deadlines (``now + duration``) kept per transaction. On a state change
  every timer that the new state has no table entry for is cancelled, so "leaving Calling
  stops Timers A and B" is read off the table rather than coded by hand. ``next_deadline()``
  is the earliest deadline and ``handle_timer(now)`` fires every timer due at ``now``.
- Over a reliable transport the retransmission timers A, E, G are never armed, and the wait
  timers D, I, J, K are zero (RFC 3261 Table 4): a zero-length timer fires within the same
  call, so the caller sees ``Terminated()`` at once instead of a deadline at ``now``.
- Entering TERMINATED always cancels every timer and emits ``Terminated()``: the caller then
  drops the transaction from its table (the proxy core keeps the table and one timer heap).

Four machines, one table each (rendered in ``docs/transactions.md``):

- INVITE client, RFC 3261 §17.1.1 as amended by RFC 6026 §7.2 (ACCEPTED, Timer M).
- non-INVITE client, RFC 3261 §17.1.2.
- INVITE server, RFC 3261 §17.2.1 as amended by RFC 6026 §7.1 (ACCEPTED, Timer L).
- non-INVITE server, RFC 3261 §17.2.2.

Matching a message to its transaction uses :func:`client_key` (§17.1.3) and
:func:`server_key` (§17.2.3); both are pure functions over header bytes the caller already
extracted, so this module does not depend on the message parser. They are the one key
format: the proxy core matches requests and responses through them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType
from typing import Final

from .timers import TimerName, Timers

__all__ = [
    "INVITE_CLIENT",
    "INVITE_SERVER",
    "MACHINES",
    "MAGIC_COOKIE",
    "NON_INVITE_CLIENT",
    "NON_INVITE_SERVER",
    "Action",
    "ClientTransaction",
    "Effect",
    "Input",
    "Machine",
    "PassRequest",
    "PassResponse",
    "SendRequest",
    "SendResponse",
    "ServerTransaction",
    "State",
    "Terminated",
    "TimedOut",
    "Transaction",
    "TransportFailed",
    "client_key",
    "is_rfc3261_branch",
    "server_key",
]


# ── vocabulary ──────────────────────────────────────────────────────────────────────────


class State(Enum):
    """Transaction states, named as in RFC 3261 §17 figures 5–8 and RFC 6026 §7."""

    # Members are singletons: identity hashing is C-level, unlike Enum.__hash__,
    # and these key the transition tables looked up on every step.
    __hash__ = object.__hash__

    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    ACCEPTED = "Accepted"
    TERMINATED = "Terminated"


class Input(Enum):
    """What can happen to a transaction (sipgo's input vocabulary).

    ``REQUEST`` is a retransmission of the request that created a server transaction;
    ``ACK`` is an ACK matched to an INVITE server transaction. ``RESPONSE_*`` come from the
    wire (client side), ``TU_*`` from the transaction user (server side). Timer C is not here:
    it is a proxy timer (RFC 3261 §16.6 step 11) run by the proxy core.
    """

    # Members are singletons: identity hashing is C-level, unlike Enum.__hash__,
    # and these key the transition tables looked up on every step.
    __hash__ = object.__hash__

    REQUEST = "request"
    ACK = "ack"
    RESPONSE_1XX = "1xx"
    RESPONSE_2XX = "2xx"
    RESPONSE_300_699 = "300-699"
    TU_1XX = "1xx from TU"
    TU_2XX = "2xx from TU"
    TU_300_699 = "300-699 from TU"
    TIMER_A = "Timer A"
    TIMER_B = "Timer B"
    TIMER_D = "Timer D"
    TIMER_E = "Timer E"
    TIMER_F = "Timer F"
    TIMER_G = "Timer G"
    TIMER_H = "Timer H"
    TIMER_I = "Timer I"
    TIMER_J = "Timer J"
    TIMER_K = "Timer K"
    TIMER_L = "Timer L"
    TIMER_M = "Timer M"
    TRANSPORT_ERROR = "transport error"


class Effect(Enum):
    """The verbs a transition-table entry may use (the "action kinds")."""

    # Members are singletons: identity hashing is C-level, unlike Enum.__hash__,
    # and these key the transition tables looked up on every step.
    __hash__ = object.__hash__

    SEND_REQUEST = "send request"  # client: retransmit the request
    SEND_ACK = "send ACK"  # INVITE client: (re)send the ACK for a non-2xx final
    SEND_RESPONSE = "send response"  # server: send the TU's response, remember it
    RESEND_RESPONSE = "resend last response"  # server: re-send the last response, if any
    PASS_RESPONSE = "pass response to TU"
    PASS_REQUEST = "pass ACK to TU"  # RFC 6026 §7.1: ACK in Accepted
    TIMED_OUT = "inform TU: timeout"
    TRANSPORT_FAILED = "inform TU: transport error"
    BACKOFF_A = "A = 2*A"  # §17.1.1.2: doubles, no cap
    BACKOFF_E = "E = min(2*E, T2)"  # §17.1.2.2 (Trying)
    ARM_E_T2 = "E = T2"  # §17.1.2.2 (Proceeding)
    ARM_G = "start G = T1"  # §17.2.1
    BACKOFF_G = "G = min(2*G, T2)"  # §17.2.1
    ARM_D = "start D"
    ARM_H = "start H"
    ARM_I = "start I"
    ARM_J = "start J"
    ARM_K = "start K"
    ARM_L = "start L"
    ARM_M = "start M"


# ── actions handed back to the caller ───────────────────────────────────────────────────


class SendRequest:
    """Put ``data`` on the wire towards the next hop: the request, a retransmission, an ACK."""

    # A plain class, not a frozen dataclass: mypyc compiles its ``__init__``, ``__eq__``
    # and ``__hash__`` natively (a dataclass's generated methods stay interpreted).
    # Same semantics: Final (read-only) fields, value equality and hash, the repr.
    __slots__ = ("data",)

    data: Final[bytes]

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SendRequest):
            return NotImplemented
        return self.data == other.data

    def __hash__(self) -> int:
        return hash((self.data,))

    def __repr__(self) -> str:
        return f"{type(self).__qualname__}(data={self.data!r})"


class SendResponse:
    """Put ``data`` (a response) on the wire towards the previous hop."""

    # A plain class, not a frozen dataclass: mypyc compiles its ``__init__``, ``__eq__``
    # and ``__hash__`` natively (a dataclass's generated methods stay interpreted).
    # Same semantics: Final (read-only) fields, value equality and hash, the repr.
    __slots__ = ("data",)

    data: Final[bytes]

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SendResponse):
            return NotImplemented
        return self.data == other.data

    def __hash__(self) -> int:
        return hash((self.data,))

    def __repr__(self) -> str:
        return f"{type(self).__qualname__}(data={self.data!r})"


class PassResponse:
    """Hand the response the caller just fed in (status ``status``) up to the TU."""

    # A plain class, not a frozen dataclass: mypyc compiles its ``__init__``, ``__eq__``
    # and ``__hash__`` natively (a dataclass's generated methods stay interpreted).
    # Same semantics: Final (read-only) fields, value equality and hash, the repr.
    __slots__ = ("status",)

    status: Final[int]

    def __init__(self, status: int) -> None:
        self.status = status

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PassResponse):
            return NotImplemented
        return self.status == other.status

    def __hash__(self) -> int:
        return hash((self.status,))

    def __repr__(self) -> str:
        return f"{type(self).__qualname__}(status={self.status!r})"


@dataclass(frozen=True, slots=True)
class PassRequest:
    """Hand the request the caller just fed in (an ACK in ACCEPTED) up to the TU."""


class TimedOut:
    """Timer ``timer`` (``"B"``, ``"F"`` or ``"H"``) fired: tell the TU (RFC 3261 §17.1.1.2)."""

    # A plain class, not a frozen dataclass: mypyc compiles its ``__init__``, ``__eq__``
    # and ``__hash__`` natively (a dataclass's generated methods stay interpreted).
    # Same semantics: Final (read-only) fields, value equality and hash, the repr.
    __slots__ = ("timer",)

    timer: Final[str]

    def __init__(self, timer: str) -> None:
        self.timer = timer

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TimedOut):
            return NotImplemented
        return self.timer == other.timer

    def __hash__(self) -> int:
        return hash((self.timer,))

    def __repr__(self) -> str:
        return f"{type(self).__qualname__}(timer={self.timer!r})"


@dataclass(frozen=True, slots=True)
class TransportFailed:
    """The transport reported a fatal error: tell the TU (RFC 3261 §17.1.4, §17.2.4)."""


@dataclass(frozen=True, slots=True)
class Terminated:
    """The transaction reached TERMINATED: remove it from the transaction table."""


Action = (
    SendRequest
    | SendResponse
    | PassResponse
    | PassRequest
    | TimedOut
    | TransportFailed
    | Terminated
)

# Field-less actions are values; sharing one instance each saves an allocation per step.
_PASS_REQUEST: Final = PassRequest()
_TRANSPORT_FAILED: Final = TransportFailed()
_TERMINATED: Final = Terminated()


# ── the four machines ───────────────────────────────────────────────────────────────────

S = State
In = Input
E = Effect
Table = Mapping[tuple[State, Input], tuple[State, tuple[Effect, ...]]]

# RFC 3261 §17.1.1.2 figure 5, amended by RFC 6026 §7.2 figure 5.
# Timer B runs in Calling only: once a provisional arrives the call may ring for minutes,
# and bounding that is the proxy's Timer C (§16.6 step 11), not the transaction's.
_INVITE_CLIENT: Final[dict[tuple[State, Input], tuple[State, tuple[Effect, ...]]]] = {
    (S.CALLING, In.TIMER_A): (S.CALLING, (E.SEND_REQUEST, E.BACKOFF_A)),
    (S.CALLING, In.TIMER_B): (S.TERMINATED, (E.TIMED_OUT,)),
    (S.CALLING, In.TRANSPORT_ERROR): (S.TERMINATED, (E.TRANSPORT_FAILED,)),
    (S.CALLING, In.RESPONSE_1XX): (S.PROCEEDING, (E.PASS_RESPONSE,)),
    (S.CALLING, In.RESPONSE_2XX): (S.ACCEPTED, (E.PASS_RESPONSE, E.ARM_M)),
    (S.CALLING, In.RESPONSE_300_699): (S.COMPLETED, (E.SEND_ACK, E.PASS_RESPONSE, E.ARM_D)),
    (S.PROCEEDING, In.RESPONSE_1XX): (S.PROCEEDING, (E.PASS_RESPONSE,)),
    (S.PROCEEDING, In.RESPONSE_2XX): (S.ACCEPTED, (E.PASS_RESPONSE, E.ARM_M)),
    (S.PROCEEDING, In.RESPONSE_300_699): (S.COMPLETED, (E.SEND_ACK, E.PASS_RESPONSE, E.ARM_D)),
    # §17.1.1.2: a retransmitted final in Completed is ACKed again, not passed up.
    (S.COMPLETED, In.RESPONSE_300_699): (S.COMPLETED, (E.SEND_ACK,)),
    (S.COMPLETED, In.TRANSPORT_ERROR): (S.TERMINATED, (E.TRANSPORT_FAILED,)),
    (S.COMPLETED, In.TIMER_D): (S.TERMINATED, ()),
    # RFC 6026 §7.2: every 2xx (retransmission or another fork) goes to the TU, which
    # forwards it statelessly; the transaction lingers for Timer M to absorb nothing else.
    (S.ACCEPTED, In.RESPONSE_2XX): (S.ACCEPTED, (E.PASS_RESPONSE,)),
    (S.ACCEPTED, In.TIMER_M): (S.TERMINATED, ()),
}

# RFC 3261 §17.1.2.2 figure 6. Final responses are 200-699 alike for non-INVITE.
_NON_INVITE_CLIENT: Final[dict[tuple[State, Input], tuple[State, tuple[Effect, ...]]]] = {
    (S.TRYING, In.TIMER_E): (S.TRYING, (E.SEND_REQUEST, E.BACKOFF_E)),
    (S.TRYING, In.TIMER_F): (S.TERMINATED, (E.TIMED_OUT,)),
    (S.TRYING, In.TRANSPORT_ERROR): (S.TERMINATED, (E.TRANSPORT_FAILED,)),
    (S.TRYING, In.RESPONSE_1XX): (S.PROCEEDING, (E.PASS_RESPONSE,)),
    (S.TRYING, In.RESPONSE_2XX): (S.COMPLETED, (E.PASS_RESPONSE, E.ARM_K)),
    (S.TRYING, In.RESPONSE_300_699): (S.COMPLETED, (E.PASS_RESPONSE, E.ARM_K)),
    # §17.1.2.2: in Proceeding, Timer E fires every T2.
    (S.PROCEEDING, In.TIMER_E): (S.PROCEEDING, (E.SEND_REQUEST, E.ARM_E_T2)),
    (S.PROCEEDING, In.TIMER_F): (S.TERMINATED, (E.TIMED_OUT,)),
    (S.PROCEEDING, In.TRANSPORT_ERROR): (S.TERMINATED, (E.TRANSPORT_FAILED,)),
    (S.PROCEEDING, In.RESPONSE_1XX): (S.PROCEEDING, (E.PASS_RESPONSE,)),
    (S.PROCEEDING, In.RESPONSE_2XX): (S.COMPLETED, (E.PASS_RESPONSE, E.ARM_K)),
    (S.PROCEEDING, In.RESPONSE_300_699): (S.COMPLETED, (E.PASS_RESPONSE, E.ARM_K)),
    # Completed buffers (absorbs) response retransmissions until Timer K.
    (S.COMPLETED, In.TIMER_K): (S.TERMINATED, ()),
}

# RFC 3261 §17.2.1 figure 7, amended by RFC 6026 §7.1 figure 7. The transaction starts in
# Proceeding; sending 100 Trying is the TU's job (the proxy core does it, §16.2).
_INVITE_SERVER: Final[dict[tuple[State, Input], tuple[State, tuple[Effect, ...]]]] = {
    (S.PROCEEDING, In.REQUEST): (S.PROCEEDING, (E.RESEND_RESPONSE,)),
    (S.PROCEEDING, In.TU_1XX): (S.PROCEEDING, (E.SEND_RESPONSE,)),
    (S.PROCEEDING, In.TU_2XX): (S.ACCEPTED, (E.SEND_RESPONSE, E.ARM_L)),
    (S.PROCEEDING, In.TU_300_699): (S.COMPLETED, (E.SEND_RESPONSE, E.ARM_G, E.ARM_H)),
    (S.PROCEEDING, In.TRANSPORT_ERROR): (S.TERMINATED, (E.TRANSPORT_FAILED,)),
    (S.COMPLETED, In.REQUEST): (S.COMPLETED, (E.RESEND_RESPONSE,)),
    (S.COMPLETED, In.TIMER_G): (S.COMPLETED, (E.RESEND_RESPONSE, E.BACKOFF_G)),
    (S.COMPLETED, In.TIMER_H): (S.TERMINATED, (E.TIMED_OUT,)),
    (S.COMPLETED, In.ACK): (S.CONFIRMED, (E.ARM_I,)),
    (S.COMPLETED, In.TRANSPORT_ERROR): (S.TERMINATED, (E.TRANSPORT_FAILED,)),
    # §17.2.1: Confirmed absorbs ACK retransmissions (and late INVITEs) until Timer I.
    (S.CONFIRMED, In.REQUEST): (S.CONFIRMED, ()),
    (S.CONFIRMED, In.ACK): (S.CONFIRMED, ()),
    (S.CONFIRMED, In.TIMER_I): (S.TERMINATED, ()),
    # RFC 6026 §7.1: INVITE retransmissions are absorbed (the 2xx is the TU's to
    # retransmit), 2xx from the TU are sent, an ACK that matched is passed to the TU.
    (S.ACCEPTED, In.REQUEST): (S.ACCEPTED, ()),
    (S.ACCEPTED, In.ACK): (S.ACCEPTED, (E.PASS_REQUEST,)),
    (S.ACCEPTED, In.TU_2XX): (S.ACCEPTED, (E.SEND_RESPONSE,)),
    (S.ACCEPTED, In.TIMER_L): (S.TERMINATED, ()),
}

# RFC 3261 §17.2.2 figure 8.
_NON_INVITE_SERVER: Final[dict[tuple[State, Input], tuple[State, tuple[Effect, ...]]]] = {
    # §17.2.2: in Trying, request retransmissions are discarded (nothing to re-send yet).
    (S.TRYING, In.REQUEST): (S.TRYING, ()),
    (S.TRYING, In.TU_1XX): (S.PROCEEDING, (E.SEND_RESPONSE,)),
    (S.TRYING, In.TU_2XX): (S.COMPLETED, (E.SEND_RESPONSE, E.ARM_J)),
    (S.TRYING, In.TU_300_699): (S.COMPLETED, (E.SEND_RESPONSE, E.ARM_J)),
    (S.PROCEEDING, In.REQUEST): (S.PROCEEDING, (E.RESEND_RESPONSE,)),
    (S.PROCEEDING, In.TU_1XX): (S.PROCEEDING, (E.SEND_RESPONSE,)),
    (S.PROCEEDING, In.TU_2XX): (S.COMPLETED, (E.SEND_RESPONSE, E.ARM_J)),
    (S.PROCEEDING, In.TU_300_699): (S.COMPLETED, (E.SEND_RESPONSE, E.ARM_J)),
    (S.PROCEEDING, In.TRANSPORT_ERROR): (S.TERMINATED, (E.TRANSPORT_FAILED,)),
    # §17.2.2: further finals from the TU are discarded; request retransmissions re-send.
    (S.COMPLETED, In.REQUEST): (S.COMPLETED, (E.RESEND_RESPONSE,)),
    (S.COMPLETED, In.TRANSPORT_ERROR): (S.TERMINATED, (E.TRANSPORT_FAILED,)),
    (S.COMPLETED, In.TIMER_J): (S.TERMINATED, ()),
}


@dataclass(frozen=True, slots=True)
class Machine:
    """One transaction state machine as data: what the docs render and the tests walk.

    Attributes:
        name: human name, e.g. ``"INVITE client"``.
        rfc: where the behaviour is specified.
        initial: the state a new transaction starts in.
        states: every state the machine can be in, initial first, TERMINATED last.
        table: ``(state, input) -> (next_state, effects)``; absent pairs are ignored.
    """

    name: str
    rfc: str
    initial: State
    states: tuple[State, ...]
    table: Table


INVITE_CLIENT: Final = Machine(
    "INVITE client",
    "RFC 3261 §17.1.1, RFC 6026 §7.2",
    S.CALLING,
    (S.CALLING, S.PROCEEDING, S.COMPLETED, S.ACCEPTED, S.TERMINATED),
    MappingProxyType(_INVITE_CLIENT),
)
NON_INVITE_CLIENT: Final = Machine(
    "non-INVITE client",
    "RFC 3261 §17.1.2",
    S.TRYING,
    (S.TRYING, S.PROCEEDING, S.COMPLETED, S.TERMINATED),
    MappingProxyType(_NON_INVITE_CLIENT),
)
INVITE_SERVER: Final = Machine(
    "INVITE server",
    "RFC 3261 §17.2.1, RFC 6026 §7.1",
    S.PROCEEDING,
    (S.PROCEEDING, S.COMPLETED, S.CONFIRMED, S.ACCEPTED, S.TERMINATED),
    MappingProxyType(_INVITE_SERVER),
)
NON_INVITE_SERVER: Final = Machine(
    "non-INVITE server",
    "RFC 3261 §17.2.2",
    S.TRYING,
    (S.TRYING, S.PROCEEDING, S.COMPLETED, S.TERMINATED),
    MappingProxyType(_NON_INVITE_SERVER),
)
MACHINES: Final = (INVITE_CLIENT, NON_INVITE_CLIENT, INVITE_SERVER, NON_INVITE_SERVER)

# The timer input each ARM_*/BACKOFF_* effect schedules, and the timer letter for Timers.wait.
_TIMER_OF: Final[Mapping[Effect, Input]] = MappingProxyType(
    {
        E.BACKOFF_A: In.TIMER_A,
        E.BACKOFF_E: In.TIMER_E,
        E.ARM_E_T2: In.TIMER_E,
        E.ARM_G: In.TIMER_G,
        E.BACKOFF_G: In.TIMER_G,
        E.ARM_D: In.TIMER_D,
        E.ARM_H: In.TIMER_H,
        E.ARM_I: In.TIMER_I,
        E.ARM_J: In.TIMER_J,
        E.ARM_K: In.TIMER_K,
        E.ARM_L: In.TIMER_L,
        E.ARM_M: In.TIMER_M,
    }
)
_FIXED_TIMERS: Final = frozenset({E.ARM_D, E.ARM_H, E.ARM_I, E.ARM_J, E.ARM_K, E.ARM_L, E.ARM_M})

del S, In, E  # short aliases for the tables only


def _letter(timer: Input) -> TimerName:
    """``Input.TIMER_B`` → ``"B"``."""
    letter: TimerName = timer.name[-1]  # type: ignore[assignment]
    return letter


# ── transactions ────────────────────────────────────────────────────────────────────────


class Transaction:
    """What client and server transactions share: identity, state, timers, the step engine.

    Not instantiated directly; see :class:`ClientTransaction` and :class:`ServerTransaction`.
    """

    __slots__ = (
        "_deadlines",
        "_immediate",
        "_interval",
        "_invite",
        "_key",
        "_machine",
        "_reliable",
        "_request",
        "_state",
        "_table",
        "_timers",
    )

    def __init__(
        self,
        machine: Machine,
        key: bytes,
        request: bytes,
        *,
        invite: bool,
        reliable: bool,
        timers: Timers,
    ) -> None:
        self._machine = machine
        self._table = machine.table
        self._state = machine.initial
        self._key = key
        self._request = request
        self._invite = invite
        self._reliable = reliable
        self._timers = timers
        # Running timers: timer input → absolute deadline. At most three at a time.
        self._deadlines: dict[Input, float] = {}
        # Zero-length timers (reliable D/I/J/K) armed during a step, fired at its end.
        self._immediate: list[Input] = []
        # Current interval of the one retransmission timer (A, E or G) this machine has.
        self._interval = timers.t1

    # -- read-only surface ----------------------------------------------------------------

    @property
    def key(self) -> bytes:
        """The transaction key (see :func:`client_key`, :func:`server_key`)."""
        return self._key

    @property
    def state(self) -> State:
        """The current state."""
        return self._state

    @property
    def machine(self) -> Machine:
        """The state machine (transition table) this transaction runs."""
        return self._machine

    @property
    def is_invite(self) -> bool:
        """True for an INVITE transaction."""
        return self._invite

    @property
    def is_reliable(self) -> bool:
        """True when the transport is reliable (TCP/TLS): no retransmissions."""
        return self._reliable

    @property
    def is_terminated(self) -> bool:
        """True once TERMINATED was reached (``Terminated()`` has been emitted)."""
        return self._state is State.TERMINATED

    @property
    def request(self) -> bytes:
        """The request that created the transaction, as given."""
        return self._request

    def next_deadline(self) -> float | None:
        """The earliest running timer's deadline, or None when no timer runs."""
        deadlines = self._deadlines
        if not deadlines:
            return None
        return min(deadlines.values())

    def timer_deadline(self, timer: Input) -> float | None:
        """The deadline of ``timer`` (``Input.TIMER_A`` …) if it is running, else None."""
        return self._deadlines.get(timer)

    # -- inputs shared by both sides ------------------------------------------------------

    def step(self, inp: Input, now: float, *, status: int = 0, data: bytes = b"") -> list[Action]:
        """Feed one raw :class:`Input` to the state machine (the table's entry point).

        The typed methods (``receive_response``, ``send_response`` …) are the normal way in;
        this one exists for callers and tests that speak the table's vocabulary. A pair that
        is not in the table returns ``[]`` and changes nothing.

        Args:
            inp: the input.
            now: the current time.
            status: for ``RESPONSE_*``/``TU_*``: the status code to report or send.
            data: for ``TU_*``: the response bytes to send.

        Returns:
            The actions to perform.
        """
        out: list[Action] = []
        self._step(inp, now, out, status, data)
        return out

    def transport_error(self, now: float) -> list[Action]:
        """The transport failed to send for this transaction (RFC 3261 §17.1.4, §17.2.4).

        Args:
            now: the current time.

        Returns:
            The actions to perform (``TransportFailed()``, ``Terminated()`` where the table
            says so; nothing in states where the RFC does not expect a transport error).
        """
        out: list[Action] = []
        self._step(Input.TRANSPORT_ERROR, now, out)
        return out

    def handle_timer(self, now: float) -> list[Action]:
        """Fire every timer whose deadline is at or before ``now``, earliest first.

        A retransmission timer is re-armed from ``now`` (not from its old deadline), so a
        late wake-up produces one retransmission, not a burst.

        Args:
            now: the current time.

        Returns:
            The actions to perform.
        """
        out: list[Action] = []
        deadlines = self._deadlines
        while deadlines:
            timer = min(deadlines, key=deadlines.__getitem__)
            if deadlines[timer] > now:
                break
            del deadlines[timer]
            self._step(timer, now, out)
        return out

    # -- the engine -----------------------------------------------------------------------

    def _step(
        self, inp: Input, now: float, out: list[Action], status: int = 0, data: bytes = b""
    ) -> None:
        """Run one table entry: apply its effects, then change state."""
        entry = self._table.get((self._state, inp))
        if entry is None:
            return  # not in the table: absorbed / ignored, by definition
        next_state, effects = entry
        for effect in effects:
            self._apply(effect, inp, now, out, status, data)
        if next_state is not self._state:
            self._enter(next_state, out)
        if self._immediate:
            fire, self._immediate = self._immediate, []
            for timer in fire:
                self._step(timer, now, out)

    def _enter(self, state: State, out: list[Action]) -> None:
        """Change state; cancel the timers the new state has no transition for."""
        self._state = state
        if state is State.TERMINATED:
            self._deadlines.clear()
            self._immediate.clear()
            out.append(_TERMINATED)
            return
        table = self._table
        for timer in [t for t in self._deadlines if (state, t) not in table]:
            del self._deadlines[timer]

    def _arm(self, timer: Input, duration: float, now: float) -> None:
        if duration <= 0.0:
            self._immediate.append(timer)
        else:
            self._deadlines[timer] = now + duration

    def _apply(
        self, effect: Effect, inp: Input, now: float, out: list[Action], status: int, data: bytes
    ) -> None:
        """Turn one effect into actions and timer changes (overridden for I/O effects)."""
        timers = self._timers
        if effect in _FIXED_TIMERS:
            timer = _TIMER_OF[effect]
            self._arm(timer, timers.wait(_letter(timer), reliable=self._reliable), now)
        elif effect is Effect.TIMED_OUT:
            out.append(TimedOut(_letter(inp)))
        elif effect is Effect.TRANSPORT_FAILED:
            out.append(_TRANSPORT_FAILED)
        elif self._reliable:
            # A, E and G are retransmission timers: never over TCP/TLS (§17.1.1.2, §17.2.1).
            return
        elif effect is Effect.BACKOFF_A:
            # §17.1.1.2: "intervals that double after each transmission" (no T2 cap).
            self._interval *= 2
            self._arm(Input.TIMER_A, self._interval, now)
        elif effect is Effect.BACKOFF_E or effect is Effect.BACKOFF_G:
            # §17.1.2.2 / §17.2.1: min(2*previous, T2).
            self._interval = min(2 * self._interval, timers.t2)
            self._arm(_TIMER_OF[effect], self._interval, now)
        elif effect is Effect.ARM_E_T2:
            self._interval = timers.t2
            self._arm(Input.TIMER_E, self._interval, now)
        elif effect is Effect.ARM_G:
            self._interval = timers.timer_g
            self._arm(Input.TIMER_G, self._interval, now)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._key!r} {self._state.name}>"


class ClientTransaction(Transaction):
    """An INVITE or non-INVITE client transaction (RFC 3261 §17.1).

    Args:
        key: the transaction key, normally ``client_key(branch, method)``.
        request: the request bytes to send and retransmit.
        invite: True for an INVITE transaction.
        reliable: True over TCP/TLS (no retransmissions; Timers D and K are zero).
        timers: T1/T2/T4.
        now: creation time; Timers A/B/E/F run from here.
    """

    __slots__ = ("_ack", "_created", "_started")

    def __init__(
        self,
        key: bytes,
        request: bytes,
        *,
        invite: bool,
        reliable: bool,
        timers: Timers,
        now: float,
    ) -> None:
        super().__init__(
            INVITE_CLIENT if invite else NON_INVITE_CLIENT,
            key,
            request,
            invite=invite,
            reliable=reliable,
            timers=timers,
        )
        self._created = now
        self._started = False
        self._ack: bytes | None = None

    def start(self) -> list[Action]:
        """Send the request and start the timers (RFC 3261 §17.1.1.2, §17.1.2.2).

        INVITE: Timer A (unreliable only) and Timer B. Non-INVITE: Timer E (unreliable
        only) and Timer F. Calling it again does nothing.

        Returns:
            ``[SendRequest(request)]`` the first time, ``[]`` afterwards.
        """
        if self._started:
            return []
        self._started = True
        timers, now = self._timers, self._created
        retransmit, timeout = (
            (Input.TIMER_A, Input.TIMER_B) if self._invite else (Input.TIMER_E, Input.TIMER_F)
        )
        if not self._reliable:
            self._interval = timers.t1
            self._arm(retransmit, self._interval, now)
        self._arm(timeout, 64 * timers.t1, now)  # Timer B = Timer F = 64*T1
        return [SendRequest(self._request)]

    def receive_response(
        self, status: int, now: float, *, ack: bytes | None = None
    ) -> list[Action]:
        """A response matched this transaction (RFC 3261 §17.1.3).

        Args:
            status: its status code. Codes outside 100–699 are ignored.
            now: the current time.
            ack: for an INVITE transaction and a 300–699 final, the ACK to send
                (RFC 3261 §17.1.1.3; the caller builds it). It is kept and re-sent for
                every retransmitted final while COMPLETED; later calls may omit it.

        Returns:
            The actions to perform.

        Raises:
            ValueError: a non-2xx final for an INVITE must be ACKed and no ACK was ever
                given (a bug in the caller, not something a peer can cause).
        """
        if 100 <= status <= 199:
            inp = Input.RESPONSE_1XX
        elif 200 <= status <= 299:
            inp = Input.RESPONSE_2XX
        elif 300 <= status <= 699:
            inp = Input.RESPONSE_300_699
        else:
            return []
        if ack is not None and self._invite and inp is Input.RESPONSE_300_699:
            self._ack = ack
        return self.step(inp, now, status=status)

    def step(self, inp: Input, now: float, *, status: int = 0, data: bytes = b"") -> list[Action]:
        """See :meth:`Transaction.step`.

        Raises:
            ValueError: the entry sends an ACK and none was ever given.
        """
        entry = self._table.get((self._state, inp))
        if entry is not None and Effect.SEND_ACK in entry[1] and self._ack is None:
            raise ValueError("an INVITE non-2xx final needs the ACK bytes (ack=...)")
        return super().step(inp, now, status=status, data=data)

    def _apply(
        self, effect: Effect, inp: Input, now: float, out: list[Action], status: int, data: bytes
    ) -> None:
        if effect is Effect.PASS_RESPONSE:
            out.append(PassResponse(status))
        elif effect is Effect.SEND_REQUEST:
            out.append(SendRequest(self._request))
        elif effect is Effect.SEND_ACK:
            assert self._ack is not None  # checked in receive_response before the step
            out.append(SendRequest(self._ack))
        else:
            super()._apply(effect, inp, now, out, status, data)


class ServerTransaction(Transaction):
    """An INVITE or non-INVITE server transaction (RFC 3261 §17.2).

    Args:
        key: the transaction key, normally from :func:`server_key`.
        request: the request that created the transaction, as received.
        invite: True for an INVITE transaction (starts in PROCEEDING, else TRYING).
        reliable: True over TCP/TLS (no Timer G; Timers I and J are zero).
        timers: T1/T2/T4.
        now: creation time (no server timer runs before the TU answers).
    """

    __slots__ = ("_last_response",)

    def __init__(
        self,
        key: bytes,
        request: bytes,
        *,
        invite: bool,
        reliable: bool,
        timers: Timers,
        now: float,
    ) -> None:
        super().__init__(
            INVITE_SERVER if invite else NON_INVITE_SERVER,
            key,
            request,
            invite=invite,
            reliable=reliable,
            timers=timers,
        )
        self._last_response: bytes | None = None

    @property
    def last_response(self) -> bytes | None:
        """The last response sent through this transaction, or None."""
        return self._last_response

    def receive_request(self, now: float, *, ack: bool = False) -> list[Action]:
        """A request matched this transaction (RFC 3261 §17.2.3).

        Args:
            now: the current time.
            ack: True when the request is an ACK (INVITE transactions only; an ACK that
                matches a non-INVITE transaction is ignored). False: a retransmission of
                the original request.

        Returns:
            The actions to perform: typically a re-sent response, or nothing (absorbed).
        """
        out: list[Action] = []
        self._step(Input.ACK if ack else Input.REQUEST, now, out)
        return out

    def send_response(self, status: int, data: bytes, now: float) -> list[Action]:
        """The TU answers: send ``data`` (a response with status ``status``).

        Args:
            status: the response's status code, 100–699.
            data: the response bytes.
            now: the current time.

        Returns:
            The actions to perform; empty when the state does not accept a response from
            the TU (e.g. a second final, RFC 3261 §17.2.2 "MUST be discarded").

        Raises:
            ValueError: ``status`` is outside 100–699 (a bug in the caller).
        """
        if 100 <= status <= 199:
            inp = Input.TU_1XX
        elif 200 <= status <= 299:
            inp = Input.TU_2XX
        elif 300 <= status <= 699:
            inp = Input.TU_300_699
        else:
            raise ValueError(f"status {status} is not a SIP status code (100-699)")
        out: list[Action] = []
        self._step(inp, now, out, status, data)
        return out

    def _apply(
        self, effect: Effect, inp: Input, now: float, out: list[Action], status: int, data: bytes
    ) -> None:
        if effect is Effect.SEND_RESPONSE:
            self._last_response = data
            out.append(SendResponse(data))
        elif effect is Effect.RESEND_RESPONSE:
            if self._last_response is not None:
                out.append(SendResponse(self._last_response))
        elif effect is Effect.PASS_REQUEST:
            out.append(_PASS_REQUEST)
        else:
            super()._apply(effect, inp, now, out, status, data)


# ── transaction keys (RFC 3261 §17.1.3, §17.2.3) ────────────────────────────────────────

#: RFC 3261 §8.1.1.7: branches of RFC 3261 elements start with this cookie.
MAGIC_COOKIE: Final = b"z9hG4bK"


def is_rfc3261_branch(branch: bytes | None) -> bool:
    """True if ``branch`` carries the magic cookie (and something after it).

    A bare ``z9hG4bK`` cannot be unique, so it is treated as an RFC 2543 request.
    """
    return (
        branch is not None and len(branch) > len(MAGIC_COOKIE) and branch.startswith(MAGIC_COOKIE)
    )


def client_key(branch: bytes, method: bytes) -> bytes:
    """The key a response is matched on (RFC 3261 §17.1.3).

    A response matches a client transaction when the branch of its top Via and the method
    of its CSeq equal those of the request. The method keeps a CANCEL (which reuses the
    INVITE's branch, §9.1) apart from the INVITE.

    Args:
        branch: the branch of the Via we pushed (top Via of the response).
        method: the request method (the CSeq method of the response).

    Returns:
        ``branch SP method``, branch first so the key can be routed by its prefix.
    """
    return branch + b" " + method


def server_key(
    branch: bytes | None,
    sent_by: bytes,
    method: bytes,
    *,
    request_uri: bytes = b"",
    to_tag: bytes | None = None,
    from_tag: bytes | None = None,
    call_id: bytes = b"",
    cseq: int = 0,
    top_via: bytes = b"",
) -> bytes:
    """The key a request is matched on (RFC 3261 §17.2.3).

    With a magic-cookie branch the key is ``branch SP sent-by SP method``, the method of
    an ACK being INVITE (the ACK for a non-2xx belongs to the INVITE transaction); CANCEL
    keeps its own method and therefore its own transaction.

    Without one (RFC 2543 peers), the key is built from the Request-URI, From tag, To tag,
    Call-ID, CSeq number and method, and the whole top Via. For INVITE and ACK the To tag
    is left out: the ACK carries the tag of our response, which the INVITE did not have,
    and §17.2.3 matches the ACK on everything else plus that tag.

    Args:
        branch: the top Via's branch parameter, or None.
        sent_by: the top Via's sent-by (``host[:port]``); compared case-insensitively.
        method: the request method (``b"ACK"`` maps to ``b"INVITE"``).
        request_uri: RFC 2543 fallback: the Request-URI as received.
        to_tag: RFC 2543 fallback: the To tag, if any.
        from_tag: RFC 2543 fallback: the From tag, if any.
        call_id: RFC 2543 fallback: the Call-ID.
        cseq: RFC 2543 fallback: the CSeq number.
        top_via: RFC 2543 fallback: the whole top Via value.

    Returns:
        The key; for magic-cookie requests it starts with the branch.
    """
    if method == b"ACK":
        method = b"INVITE"
    if branch is not None and is_rfc3261_branch(branch):
        return b" ".join((branch, sent_by.lower(), method))
    # §17.2.3, RFC 2543 rules. Every field but the last is a token (no spaces), and the top
    # Via goes last, so the space-joined key is unambiguous. "2543" cannot start a branch
    # with the magic cookie, so the two key spaces never collide.
    to = b"" if method == b"INVITE" else (to_tag or b"")
    return b" ".join(
        (b"2543", request_uri, from_tag or b"", to, call_id, b"%d" % cseq, method, top_via)
    )
