"""RFC 3261 §17 / RFC 6026 transactions, driven with a fake clock (plain floats).

Three layers of tests:

1. The tables themselves: every (state, input) pair of every machine. Pairs in the table
   are fed to a transaction brought into that state and must produce the entry's next
   state and actions; pairs not in the table must be no-ops (no actions, no state or timer
   change), including the ones the typed API can produce.
2. Scenarios read straight off the RFC: retransmission schedules, timeouts at 64*T1,
   reliable transports, ACK re-sending, RFC 6026 ACCEPTED.
3. Keys.

``python tests/sip/test_transaction.py --write`` regenerates the tables in
``docs/transactions.md``; ``test_docs_render_every_table`` keeps them in sync.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from sipedge.sip.timers import Timers
from sipedge.sip.transaction import (
    INVITE_CLIENT,
    INVITE_SERVER,
    MACHINES,
    NON_INVITE_CLIENT,
    NON_INVITE_SERVER,
    Action,
    ClientTransaction,
    Effect,
    Input,
    Machine,
    PassRequest,
    PassResponse,
    SendRequest,
    SendResponse,
    ServerTransaction,
    State,
    Terminated,
    TimedOut,
    Transaction,
    TransportFailed,
    client_key,
    is_rfc3261_branch,
    server_key,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "transactions.md"

REQ = b"INVITE sip:bob@example.com SIP/2.0\r\n...\r\n\r\n"
ACK = b"ACK sip:bob@example.com SIP/2.0\r\n...\r\n\r\n"
TIMERS = Timers()
T0 = 100.0  # creation time: deliberately not 0 so absolute deadlines are checked

# A status / response for every wire and TU input.
STATUS = {
    Input.RESPONSE_1XX: 180,
    Input.RESPONSE_2XX: 200,
    Input.RESPONSE_300_699: 486,
    Input.TU_1XX: 180,
    Input.TU_2XX: 200,
    Input.TU_300_699: 486,
}


def resp(status: int) -> bytes:
    return b"SIP/2.0 %d X\r\n\r\n" % status


# ── bringing a transaction into a given state ───────────────────────────────────────────

# The inputs that lead from the initial state to each state (always at T0 + 1).
PATHS: dict[str, dict[State, list[Input]]] = {
    INVITE_CLIENT.name: {
        State.CALLING: [],
        State.PROCEEDING: [Input.RESPONSE_1XX],
        State.COMPLETED: [Input.RESPONSE_300_699],
        State.ACCEPTED: [Input.RESPONSE_2XX],
        State.TERMINATED: [Input.TRANSPORT_ERROR],
    },
    NON_INVITE_CLIENT.name: {
        State.TRYING: [],
        State.PROCEEDING: [Input.RESPONSE_1XX],
        State.COMPLETED: [Input.RESPONSE_2XX],
        State.TERMINATED: [Input.TRANSPORT_ERROR],
    },
    INVITE_SERVER.name: {
        # The TU (proxy) sends 100 Trying first, so there is a provisional to re-send.
        State.PROCEEDING: [Input.TU_1XX],
        State.COMPLETED: [Input.TU_1XX, Input.TU_300_699],
        State.CONFIRMED: [Input.TU_1XX, Input.TU_300_699, Input.ACK],
        State.ACCEPTED: [Input.TU_1XX, Input.TU_2XX],
        State.TERMINATED: [Input.TRANSPORT_ERROR],
    },
    NON_INVITE_SERVER.name: {
        State.TRYING: [],
        State.PROCEEDING: [Input.TU_1XX],
        State.COMPLETED: [Input.TU_2XX],
        State.TERMINATED: [Input.TU_1XX, Input.TRANSPORT_ERROR],
    },
}


def new_tx(machine: Machine, *, reliable: bool = False, timers: Timers = TIMERS) -> Transaction:
    invite = machine in (INVITE_CLIENT, INVITE_SERVER)
    if machine in (INVITE_CLIENT, NON_INVITE_CLIENT):
        tx: Transaction = ClientTransaction(
            b"k", REQ, invite=invite, reliable=reliable, timers=timers, now=T0
        )
        assert tx.start() == [SendRequest(REQ)]  # type: ignore[attr-defined]
        return tx
    return ServerTransaction(b"k", REQ, invite=invite, reliable=reliable, timers=timers, now=T0)


def feed(tx: Transaction, inp: Input, now: float) -> list[Action]:
    """Feed ``inp`` through the typed API where one exists, else through ``step``."""
    responses = (Input.RESPONSE_1XX, Input.RESPONSE_2XX, Input.RESPONSE_300_699)
    if isinstance(tx, ClientTransaction) and inp in responses:
        return tx.receive_response(STATUS[inp], now, ack=ACK)
    if isinstance(tx, ServerTransaction):
        if inp in (Input.REQUEST, Input.ACK):
            return tx.receive_request(now, ack=inp is Input.ACK)
        if inp in (Input.TU_1XX, Input.TU_2XX, Input.TU_300_699):
            return tx.send_response(STATUS[inp], resp(STATUS[inp]), now)
    if inp is Input.TRANSPORT_ERROR:
        return tx.transport_error(now)
    return tx.step(inp, now, status=STATUS.get(inp, 0))


def bring(machine: Machine, state: State) -> Transaction:
    tx = new_tx(machine)
    for inp in PATHS[machine.name][state]:
        feed(tx, inp, T0 + 1)
    assert tx.state is state
    return tx


def expected_actions(
    tx: Transaction, inp: Input, next_state: State, effects: tuple[Effect, ...]
) -> list[Action]:
    """The actions an entry must produce, derived from its effects."""
    out: list[Action] = []
    last = tx.last_response if isinstance(tx, ServerTransaction) else None
    for effect in effects:
        if effect is Effect.SEND_REQUEST:
            out.append(SendRequest(REQ))
        elif effect is Effect.SEND_ACK:
            out.append(SendRequest(ACK))
        elif effect is Effect.SEND_RESPONSE:
            out.append(SendResponse(resp(STATUS[inp])))
        elif effect is Effect.RESEND_RESPONSE:
            assert last is not None
            out.append(SendResponse(last))
        elif effect is Effect.PASS_RESPONSE:
            out.append(PassResponse(STATUS[inp]))
        elif effect is Effect.PASS_REQUEST:
            out.append(PassRequest())
        elif effect is Effect.TIMED_OUT:
            out.append(TimedOut(inp.name[-1]))
        elif effect is Effect.TRANSPORT_FAILED:
            out.append(TransportFailed())
    if next_state is State.TERMINATED:
        out.append(Terminated())
    return out


def _machine_id(m: Machine) -> str:
    return m.name.replace(" ", "_")


TABLE_CASES = [
    pytest.param(m, state, inp, id=f"{_machine_id(m)}-{state.name}-{inp.name}")
    for m in MACHINES
    for (state, inp) in m.table
]
ABSENT_CASES = [
    pytest.param(m, state, inp, id=f"{_machine_id(m)}-{state.name}-{inp.name}")
    for m in MACHINES
    for state in m.states
    for inp in Input
    if (state, inp) not in m.table
]


# ── 1. the tables ───────────────────────────────────────────────────────────────────────


def test_every_pair_is_covered_exactly_once() -> None:
    pairs = {c.id for c in TABLE_CASES + ABSENT_CASES}
    assert len(pairs) == len(TABLE_CASES) + len(ABSENT_CASES)
    assert len(pairs) == sum(len(m.states) for m in MACHINES) * len(Input)


@pytest.mark.parametrize("machine", MACHINES, ids=_machine_id)
def test_table_is_well_formed(machine: Machine) -> None:
    assert machine.states[0] is machine.initial
    assert machine.states[-1] is State.TERMINATED
    assert set(PATHS[machine.name]) == set(machine.states)
    for (state, _inp), (next_state, effects) in machine.table.items():
        assert state in machine.states and next_state in machine.states
        assert state is not State.TERMINATED  # TERMINATED ignores everything
        for effect in effects:
            # A timer armed by an entry must be one the destination state reacts to;
            # otherwise entering that state would cancel it at once.
            timer = {
                Effect.BACKOFF_A: Input.TIMER_A,
                Effect.BACKOFF_E: Input.TIMER_E,
                Effect.ARM_E_T2: Input.TIMER_E,
                Effect.ARM_G: Input.TIMER_G,
                Effect.BACKOFF_G: Input.TIMER_G,
            }.get(effect)
            if effect.name.startswith("ARM_") and timer is None:
                timer = Input["TIMER_" + effect.name[-1]]
            if timer is not None:
                assert (next_state, timer) in machine.table, (state, effect)


@pytest.mark.parametrize(("machine", "state", "inp"), TABLE_CASES)
def test_table_entry(machine: Machine, state: State, inp: Input) -> None:
    tx = bring(machine, state)
    next_state, effects = machine.table[(state, inp)]
    expected = expected_actions(tx, inp, next_state, effects)
    assert feed(tx, inp, T0 + 2) == expected
    assert tx.state is next_state
    assert tx.is_terminated is (next_state is State.TERMINATED)
    if tx.is_terminated:
        assert tx.next_deadline() is None
    else:
        # Only timers the current state reacts to may still run.
        for timer in Input:
            if tx.timer_deadline(timer) is not None:
                assert (tx.state, timer) in machine.table


@pytest.mark.parametrize(("machine", "state", "inp"), ABSENT_CASES)
def test_absent_pair_is_a_no_op(machine: Machine, state: State, inp: Input) -> None:
    tx = bring(machine, state)
    before = {t: tx.timer_deadline(t) for t in Input}
    last = tx.last_response if isinstance(tx, ServerTransaction) else None
    assert tx.step(inp, T0 + 2, status=STATUS.get(inp, 0), data=b"x") == []
    assert feed(tx, inp, T0 + 2) == []  # and through the typed API where it applies
    assert tx.state is state
    assert {t: tx.timer_deadline(t) for t in Input} == before
    if isinstance(tx, ServerTransaction):
        assert tx.last_response == last


# ── 2. scenarios: INVITE client ─────────────────────────────────────────────────────────


def run_timers(tx: Transaction, until: float) -> list[tuple[float, list[Action]]]:
    """Fire timers exactly at their deadlines, like the shell's one loop.call_at would."""
    fired = []
    while (deadline := tx.next_deadline()) is not None and deadline <= until:
        fired.append((deadline, tx.handle_timer(deadline)))
    return fired


def test_invite_client_timer_a_doubles_without_cap_until_timer_b() -> None:
    tx = new_tx(INVITE_CLIENT)
    assert tx.timer_deadline(Input.TIMER_A) == T0 + 0.5
    assert tx.timer_deadline(Input.TIMER_B) == T0 + 32.0
    fired = run_timers(tx, T0 + 100)
    times = [round(t - T0, 6) for t, _ in fired]
    # Retransmissions after 0.5, 1, 2, 4, 8, 16 s (intervals double past T2 = 4 s) ...
    assert times == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5, 32.0]
    for _, actions in fired[:-1]:
        assert actions == [SendRequest(REQ)]
    # ... then Timer B at 64*T1.
    assert fired[-1][1] == [TimedOut("B"), Terminated()]
    assert tx.state is State.TERMINATED and tx.next_deadline() is None


def test_invite_client_timer_b_follows_t1() -> None:
    tx = new_tx(INVITE_CLIENT, timers=Timers(t1=0.25, t2=4.0))
    fired = run_timers(tx, T0 + 100)
    assert fired[-1] == (T0 + 16.0, [TimedOut("B"), Terminated()])


def test_invite_client_provisional_stops_a_and_b() -> None:
    tx = new_tx(INVITE_CLIENT)
    assert isinstance(tx, ClientTransaction)
    assert feed(tx, Input.RESPONSE_1XX, T0 + 0.2) == [PassResponse(180)]
    assert tx.next_deadline() is None  # §17.1.1.2: no retransmission; Timer C is the proxy's
    assert tx.receive_response(183, T0 + 1) == [PassResponse(183)]
    assert tx.receive_response(100, T0 + 2) == [PassResponse(100)]
    assert tx.state is State.PROCEEDING


def test_invite_client_non_2xx_final_sends_ack_and_resends_it_on_retransmissions() -> None:
    tx = new_tx(INVITE_CLIENT)
    assert isinstance(tx, ClientTransaction)
    assert tx.receive_response(486, T0 + 1, ack=ACK) == [SendRequest(ACK), PassResponse(486)]
    assert tx.state is State.COMPLETED
    assert tx.next_deadline() == T0 + 1 + 32.0  # Timer D
    # Retransmitted finals: the stored ACK goes out again, the TU hears nothing.
    assert tx.receive_response(486, T0 + 2) == [SendRequest(ACK)]
    assert tx.receive_response(486, T0 + 3, ack=ACK) == [SendRequest(ACK)]
    assert tx.receive_response(180, T0 + 4) == []
    assert tx.receive_response(200, T0 + 4) == []
    assert tx.handle_timer(T0 + 32.9) == []
    assert tx.handle_timer(T0 + 33.0) == [Terminated()]


def test_invite_client_non_2xx_final_without_ack_is_a_caller_bug() -> None:
    tx = new_tx(INVITE_CLIENT)
    assert isinstance(tx, ClientTransaction)
    with pytest.raises(ValueError):
        tx.receive_response(503, T0 + 1)
    assert tx.state is State.CALLING  # nothing happened


def test_invite_client_2xx_enters_accepted_and_passes_every_2xx() -> None:
    # RFC 6026 §7.2
    tx = new_tx(INVITE_CLIENT)
    assert isinstance(tx, ClientTransaction)
    assert tx.receive_response(180, T0 + 1) == [PassResponse(180)]
    assert tx.receive_response(200, T0 + 2) == [PassResponse(200)]
    assert tx.state is State.ACCEPTED
    assert tx.next_deadline() == T0 + 2 + 32.0  # Timer M
    assert tx.receive_response(200, T0 + 3) == [PassResponse(200)]  # retransmission / fork
    assert tx.receive_response(486, T0 + 3, ack=ACK) == []  # stray non-2xx: not forwarded
    assert tx.receive_response(183, T0 + 3) == []
    assert tx.transport_error(T0 + 3) == []
    assert tx.handle_timer(T0 + 34.0) == [Terminated()]
    assert tx.receive_response(200, T0 + 35) == []


def test_invite_client_reliable_has_no_timer_a_and_zero_timer_d() -> None:
    tx = new_tx(INVITE_CLIENT, reliable=True)
    assert isinstance(tx, ClientTransaction)
    assert tx.timer_deadline(Input.TIMER_A) is None
    assert tx.next_deadline() == T0 + 32.0  # only Timer B
    assert tx.receive_response(486, T0 + 1, ack=ACK) == [
        SendRequest(ACK),
        PassResponse(486),
        Terminated(),
    ]


def test_invite_client_reliable_times_out_with_timer_b_without_retransmitting() -> None:
    tx = new_tx(INVITE_CLIENT, reliable=True)
    assert run_timers(tx, T0 + 100) == [(T0 + 32.0, [TimedOut("B"), Terminated()])]


def test_invite_client_transport_error_in_calling() -> None:
    tx = new_tx(INVITE_CLIENT)
    assert tx.transport_error(T0 + 0.1) == [TransportFailed(), Terminated()]
    assert tx.transport_error(T0 + 0.2) == []
    assert tx.handle_timer(T0 + 100) == []


def test_client_start_twice_sends_once() -> None:
    tx = ClientTransaction(b"k", REQ, invite=True, reliable=False, timers=TIMERS, now=T0)
    assert tx.start() == [SendRequest(REQ)]
    assert tx.start() == []


def test_client_before_start_runs_no_timer() -> None:
    tx = ClientTransaction(b"k", REQ, invite=False, reliable=False, timers=TIMERS, now=T0)
    assert tx.next_deadline() is None
    assert tx.handle_timer(T0 + 100) == []


@pytest.mark.parametrize("status", [0, 99, 700, 999, -1])
def test_client_ignores_impossible_status(status: int) -> None:
    tx = new_tx(INVITE_CLIENT)
    assert isinstance(tx, ClientTransaction)
    assert tx.receive_response(status, T0 + 1, ack=ACK) == []
    assert tx.state is State.CALLING


def test_late_wakeup_retransmits_once_not_in_a_burst() -> None:
    tx = new_tx(INVITE_CLIENT)
    # The loop woke 10 s late: A (due at 0.5) fires once and is re-armed from now.
    assert tx.handle_timer(T0 + 10.5) == [SendRequest(REQ)]
    assert tx.timer_deadline(Input.TIMER_A) == T0 + 10.5 + 1.0
    # Far too late: A and B are both due; B ends it.
    assert tx.handle_timer(T0 + 40) == [SendRequest(REQ), TimedOut("B"), Terminated()]


# ── scenarios: non-INVITE client ────────────────────────────────────────────────────────


def test_non_invite_client_timer_e_doubles_capped_at_t2_until_timer_f() -> None:
    tx = new_tx(NON_INVITE_CLIENT)
    fired = run_timers(tx, T0 + 100)
    times = [round(t - T0, 6) for t, _ in fired]
    # Intervals 0.5, 1, 2, 4, 4, 4, ... (capped at T2), Timer F at 64*T1 = 32 s.
    assert times == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5, 32.0]
    assert all(actions == [SendRequest(REQ)] for _, actions in fired[:-1])
    assert fired[-1][1] == [TimedOut("F"), Terminated()]


def test_non_invite_client_timer_e_cap_follows_t2() -> None:
    tx = new_tx(NON_INVITE_CLIENT, timers=Timers(t1=0.5, t2=1.0))
    times = [round(t - T0, 6) for t, _ in run_timers(tx, T0 + 5)]
    assert times == [0.5, 1.5, 2.5, 3.5, 4.5]


def test_non_invite_client_proceeding_retransmits_every_t2() -> None:
    tx = new_tx(NON_INVITE_CLIENT)
    assert feed(tx, Input.RESPONSE_1XX, T0 + 0.2) == [PassResponse(180)]
    assert tx.state is State.PROCEEDING
    # Timer E keeps its deadline; once it fires it is reset to T2 (§17.1.2.2).
    times = [round(t - T0, 6) for t, _ in run_timers(tx, T0 + 100)]
    assert times == [0.5, 4.5, 8.5, 12.5, 16.5, 20.5, 24.5, 28.5, 32.0]


@pytest.mark.parametrize("status", [200, 202, 404, 408, 500, 603])
def test_non_invite_client_final_then_timer_k(status: int) -> None:
    tx = new_tx(NON_INVITE_CLIENT)
    assert isinstance(tx, ClientTransaction)
    assert tx.receive_response(status, T0 + 1) == [PassResponse(status)]
    assert tx.state is State.COMPLETED
    assert tx.next_deadline() == T0 + 1 + 5.0  # Timer K = T4
    assert tx.receive_response(status, T0 + 2) == []  # absorbed
    assert tx.handle_timer(T0 + 6) == [Terminated()]


def test_non_invite_client_reliable() -> None:
    tx = new_tx(NON_INVITE_CLIENT, reliable=True)
    assert isinstance(tx, ClientTransaction)
    assert tx.timer_deadline(Input.TIMER_E) is None
    assert tx.timer_deadline(Input.TIMER_F) == T0 + 32.0
    assert tx.receive_response(100, T0 + 1) == [PassResponse(100)]
    assert tx.receive_response(200, T0 + 2) == [PassResponse(200), Terminated()]  # K = 0


def test_non_invite_client_reliable_times_out_with_timer_f() -> None:
    tx = new_tx(NON_INVITE_CLIENT, reliable=True)
    assert run_timers(tx, T0 + 100) == [(T0 + 32.0, [TimedOut("F"), Terminated()])]


# ── scenarios: INVITE server ────────────────────────────────────────────────────────────


def new_server(*, invite: bool = True, reliable: bool = False) -> ServerTransaction:
    return ServerTransaction(b"k", REQ, invite=invite, reliable=reliable, timers=TIMERS, now=T0)


def test_invite_server_absorbs_retransmissions_by_resending_last_provisional() -> None:
    tx = new_server()
    assert tx.state is State.PROCEEDING and tx.next_deadline() is None
    assert tx.receive_request(T0 + 0.1) == []  # nothing sent yet: nothing to re-send
    assert tx.send_response(100, resp(100), T0 + 0.1) == [SendResponse(resp(100))]
    assert tx.receive_request(T0 + 0.5) == [SendResponse(resp(100))]
    assert tx.send_response(180, resp(180), T0 + 1) == [SendResponse(resp(180))]
    assert tx.receive_request(T0 + 1.5) == [SendResponse(resp(180))]
    assert tx.last_response == resp(180)
    assert tx.receive_request(T0 + 1.6, ack=True) == []  # stray ACK: ignored


def test_invite_server_timer_g_doubles_capped_at_t2_until_timer_h() -> None:
    tx = new_server()
    assert tx.send_response(486, resp(486), T0) == [SendResponse(resp(486))]
    assert tx.state is State.COMPLETED
    fired = run_timers(tx, T0 + 100)
    times = [round(t - T0, 6) for t, _ in fired]
    assert times == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5, 32.0]
    assert all(actions == [SendResponse(resp(486))] for _, actions in fired[:-1])
    assert fired[-1][1] == [TimedOut("H"), Terminated()]


def test_invite_server_ack_confirms_and_timer_i_terminates() -> None:
    tx = new_server()
    tx.send_response(486, resp(486), T0)
    assert tx.receive_request(T0 + 1) == [SendResponse(resp(486))]  # INVITE retransmission
    assert tx.send_response(500, resp(500), T0 + 1) == []  # a second final is discarded
    assert tx.receive_request(T0 + 2, ack=True) == []  # absorbed, not passed up
    assert tx.state is State.CONFIRMED
    assert tx.next_deadline() == T0 + 2 + 5.0  # Timer I = T4; G and H stopped
    assert tx.timer_deadline(Input.TIMER_G) is None
    assert tx.timer_deadline(Input.TIMER_H) is None
    assert tx.receive_request(T0 + 3, ack=True) == []
    assert tx.receive_request(T0 + 3) == []
    assert tx.handle_timer(T0 + 7) == [Terminated()]


def test_invite_server_reliable_no_timer_g_and_zero_timer_i() -> None:
    tx = new_server(reliable=True)
    assert tx.send_response(486, resp(486), T0) == [SendResponse(resp(486))]
    assert tx.timer_deadline(Input.TIMER_G) is None
    assert tx.next_deadline() == T0 + 32.0  # Timer H still runs
    assert tx.receive_request(T0 + 1, ack=True) == [Terminated()]


def test_invite_server_reliable_timer_h() -> None:
    tx = new_server(reliable=True)
    tx.send_response(603, resp(603), T0)
    assert run_timers(tx, T0 + 100) == [(T0 + 32.0, [TimedOut("H"), Terminated()])]


def test_invite_server_accepted_absorbs_invites_and_passes_ack() -> None:
    # RFC 6026 §7.1
    tx = new_server()
    tx.send_response(100, resp(100), T0)
    assert tx.send_response(200, resp(200), T0 + 1) == [SendResponse(resp(200))]
    assert tx.state is State.ACCEPTED
    assert tx.next_deadline() == T0 + 1 + 32.0  # Timer L
    assert tx.receive_request(T0 + 2) == []  # INVITE retransmission absorbed, no 2xx re-sent
    assert tx.send_response(200, resp(200), T0 + 2) == [SendResponse(resp(200))]  # TU re-sends
    assert tx.send_response(486, resp(486), T0 + 2) == []
    assert tx.send_response(180, resp(180), T0 + 2) == []
    assert tx.receive_request(T0 + 3, ack=True) == [PassRequest()]
    assert tx.last_response == resp(200)
    assert tx.handle_timer(T0 + 33) == [Terminated()]


def test_invite_server_accepted_timer_l_is_not_transport_dependent() -> None:
    tx = new_server(reliable=True)
    assert tx.send_response(200, resp(200), T0) == [SendResponse(resp(200))]
    assert tx.next_deadline() == T0 + 32.0


def test_invite_server_transport_error() -> None:
    tx = new_server()
    tx.send_response(486, resp(486), T0)
    assert tx.transport_error(T0 + 1) == [TransportFailed(), Terminated()]


@pytest.mark.parametrize("status", [0, 99, 700])
def test_server_rejects_impossible_status_from_tu(status: int) -> None:
    with pytest.raises(ValueError):
        new_server().send_response(status, b"x", T0)


# ── scenarios: non-INVITE server ────────────────────────────────────────────────────────


def test_non_invite_server_trying_discards_retransmissions() -> None:
    tx = new_server(invite=False)
    assert tx.state is State.TRYING
    assert tx.receive_request(T0 + 0.5) == []
    assert tx.transport_error(T0 + 0.5) == []  # figure 8: no transport error in Trying


def test_non_invite_server_proceeding_and_completed_resend_last_response() -> None:
    tx = new_server(invite=False)
    assert tx.send_response(100, resp(100), T0) == [SendResponse(resp(100))]
    assert tx.receive_request(T0 + 0.5) == [SendResponse(resp(100))]
    assert tx.send_response(200, resp(200), T0 + 1) == [SendResponse(resp(200))]
    assert tx.state is State.COMPLETED
    assert tx.next_deadline() == T0 + 1 + 32.0  # Timer J = 64*T1
    assert tx.receive_request(T0 + 2) == [SendResponse(resp(200))]
    assert tx.send_response(500, resp(500), T0 + 2) == []  # discarded
    assert tx.receive_request(T0 + 2, ack=True) == []
    assert tx.handle_timer(T0 + 33) == [Terminated()]


def test_non_invite_server_reliable_timer_j_is_zero() -> None:
    tx = new_server(invite=False, reliable=True)
    assert tx.send_response(200, resp(200), T0) == [SendResponse(resp(200)), Terminated()]
    assert tx.last_response == resp(200)


# ── properties and repr ─────────────────────────────────────────────────────────────────


def test_transaction_properties() -> None:
    c = ClientTransaction(b"key1", REQ, invite=True, reliable=True, timers=TIMERS, now=T0)
    assert (c.key, c.is_invite, c.is_reliable, c.request) == (b"key1", True, True, REQ)
    assert c.machine is INVITE_CLIENT and c.state is State.CALLING
    assert "CALLING" in repr(c)
    s = ServerTransaction(b"key2", REQ, invite=False, reliable=False, timers=TIMERS, now=T0)
    assert (s.key, s.is_invite, s.last_response) == (b"key2", False, None)
    assert s.machine is NON_INVITE_SERVER and not s.is_terminated


# ── 3. keys ─────────────────────────────────────────────────────────────────────────────


def test_server_key_rfc3261_branch() -> None:
    k = server_key(b"z9hG4bK776asdhds", b"pc33.atlanta.com", b"INVITE")
    assert k.startswith(b"z9hG4bK776asdhds")
    assert server_key(b"z9hG4bK776asdhds", b"PC33.Atlanta.COM", b"INVITE") == k
    # §17.2.3: the ACK for a non-2xx matches the INVITE; CANCEL is its own transaction.
    assert server_key(b"z9hG4bK776asdhds", b"pc33.atlanta.com", b"ACK") == k
    assert server_key(b"z9hG4bK776asdhds", b"pc33.atlanta.com", b"CANCEL") != k
    assert server_key(b"z9hG4bK776asdhds", b"pc33.atlanta.com:5070", b"INVITE") != k
    assert server_key(b"z9hG4bK776asdhdX", b"pc33.atlanta.com", b"INVITE") != k


def test_server_key_rfc2543_fallback() -> None:
    fields = {
        "request_uri": b"sip:bob@biloxi.com",
        "from_tag": b"1928301774",
        "call_id": b"a84b4c76e66710",
        "cseq": 314159,
        "top_via": b"SIP/2.0/UDP pc33.atlanta.com;branch=1234",
    }
    invite = server_key(b"1234", b"pc33.atlanta.com", b"INVITE", **fields)  # type: ignore[arg-type]
    assert invite.startswith(b"2543 ")
    assert server_key(None, b"pc33.atlanta.com", b"INVITE", **fields) == invite  # type: ignore[arg-type]
    # The ACK carries our response's To tag; it still matches the INVITE.
    ack = server_key(b"1234", b"x", b"ACK", to_tag=b"ours", **fields)  # type: ignore[arg-type]
    assert ack == invite
    # Other methods match on the To tag and their own CSeq method.
    bye = server_key(None, b"x", b"BYE", to_tag=b"t1", **fields)  # type: ignore[arg-type]
    assert bye != server_key(None, b"x", b"BYE", to_tag=b"t2", **fields)  # type: ignore[arg-type]
    assert server_key(None, b"x", b"CANCEL", **fields) != invite  # type: ignore[arg-type]
    other = dict(fields, cseq=314160)
    assert server_key(None, b"x", b"INVITE", **other) != invite  # type: ignore[arg-type]


def test_bare_magic_cookie_is_not_an_rfc3261_branch() -> None:
    assert is_rfc3261_branch(b"z9hG4bKx")
    assert not is_rfc3261_branch(b"z9hG4bK")
    assert not is_rfc3261_branch(b"Z9HG4BKx")
    assert not is_rfc3261_branch(None)
    assert server_key(b"z9hG4bK", b"h", b"INVITE").startswith(b"2543 ")


def test_client_key() -> None:
    k = client_key(b"z9hG4bKabc", b"INVITE")
    assert k.startswith(b"z9hG4bKabc")
    # §9.1: the CANCEL reuses the INVITE's branch; the method keeps them apart.
    assert client_key(b"z9hG4bKabc", b"CANCEL") != k
    assert client_key(b"z9hG4bKabd", b"INVITE") != k


# ── docs: the tables rendered ───────────────────────────────────────────────────────────


def render_machine(m: Machine) -> str:
    lines = [
        f"### {m.name} ({m.rfc})",
        "",
        f"Initial state: **{m.initial.name}**. Every pair not listed is ignored.",
        "",
        "| State | Input | Next state | Effects |",
        "|---|---|---|---|",
    ]
    for (state, inp), (next_state, effects) in m.table.items():
        parts = [e.value for e in effects]
        if next_state is State.TERMINATED:
            parts.append("Terminated()")
        shown = ", ".join(parts) or "— (absorbed)"
        lines.append(f"| {state.name} | {inp.name} | {next_state.name} | {shown} |")
    return "\n".join(lines)


def render_docs() -> str:
    return "\n\n".join(render_machine(m) for m in MACHINES) + "\n"


BEGIN, END = "<!-- BEGIN GENERATED TABLES -->\n", "<!-- END GENERATED TABLES -->"


def test_docs_render_every_table() -> None:
    text = DOCS.read_text(encoding="utf-8")
    generated = text.split(BEGIN, 1)[1].split(END, 1)[0]
    assert generated == render_docs(), "run: python tests/sip/test_transaction.py --write"


def _write_docs(write: Callable[[str], object]) -> None:
    text = DOCS.read_text(encoding="utf-8")
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    write(head + BEGIN + render_docs() + END + tail)


if __name__ == "__main__":  # pragma: no cover
    if "--write" in sys.argv:
        _write_docs(lambda s: DOCS.write_text(s, encoding="utf-8"))
    else:
        sys.stdout.write(render_docs())
