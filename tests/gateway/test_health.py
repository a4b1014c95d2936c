"""The health machine: every (state, signal) pair, hysteresis, flapping, Retry-After, admin."""

from __future__ import annotations

import itertools
import math

import pytest

from sipedge.gateway.health import (
    TRANSITIONS,
    ChangeReason,
    GatewayStateChanged,
    Health,
    HealthPolicy,
    HealthRecord,
    Observation,
    ReplyCodes,
    Signal,
    call_observation,
    next_state,
)

GW = "ashburn-ix/127.0.0.64:5060"
P, U, D, A = Health.PROBING, Health.UP, Health.DOWN, Health.ADMIN_DOWN

OK = Observation(Signal.SUCCESS, "200 reply")
TIMEOUT = Observation(Signal.FAILURE, "probe timeout")
DRAIN = Observation(Signal.DRAIN, "admin drain")
ENABLE = Observation(Signal.ENABLE, "admin enable")


def overload(after: float) -> Observation:
    return Observation(Signal.OVERLOAD, "503 Retry-After", retry_after_s=after)


SAMPLE = {
    Signal.SUCCESS: OK,
    Signal.FAILURE: TIMEOUT,
    Signal.OVERLOAD: overload(30),
    Signal.DRAIN: DRAIN,
    Signal.ENABLE: ENABLE,
}

# With both thresholds at 1, one observation is enough to cross them: the expected next state
# of every (state, signal) pair, independent of the table in the module under test.
EXPECTED_ONE_STEP = {
    (P, Signal.SUCCESS): U, (P, Signal.FAILURE): D, (P, Signal.OVERLOAD): D,
    (P, Signal.DRAIN): A, (P, Signal.ENABLE): P,
    (U, Signal.SUCCESS): U, (U, Signal.FAILURE): D, (U, Signal.OVERLOAD): D,
    (U, Signal.DRAIN): A, (U, Signal.ENABLE): U,
    (D, Signal.SUCCESS): U, (D, Signal.FAILURE): D, (D, Signal.OVERLOAD): D,
    (D, Signal.DRAIN): A, (D, Signal.ENABLE): D,
    (A, Signal.SUCCESS): A, (A, Signal.FAILURE): A, (A, Signal.OVERLOAD): A,
    (A, Signal.DRAIN): A, (A, Signal.ENABLE): P,
}  # fmt: skip

DEFAULT = HealthPolicy()
HAIR_TRIGGER = HealthPolicy(down_after=1, up_after=1)


def feed(
    record: HealthRecord, obs: Observation, n: int, now: float, policy: HealthPolicy = DEFAULT
) -> tuple[HealthRecord, list[GatewayStateChanged]]:
    events = []
    for i in range(n):
        record, ev = next_state(GW, record, obs, now + i, policy)
        if ev is not None:
            events.append(ev)
    return record, events


def test_table_covers_every_state_signal_pair() -> None:
    assert set(TRANSITIONS) == set(itertools.product(Health, Signal))
    assert set(EXPECTED_ONE_STEP) == set(TRANSITIONS)


@pytest.mark.parametrize(("state", "signal"), list(EXPECTED_ONE_STEP))
def test_every_transition_one_step(state: Health, signal: Signal) -> None:
    record = HealthRecord(state=state, since=0.0)
    nxt, ev = next_state(GW, record, SAMPLE[signal], 10.0, HAIR_TRIGGER)
    expected = EXPECTED_ONE_STEP[(state, signal)]
    assert nxt.state is expected
    if expected is state:
        assert ev is None  # edge-triggered: no event without a change
        assert nxt.since == 0.0
    else:
        assert ev == GatewayStateChanged(GW, state, expected, nxt.reason, 10.0, ev.cause)
        assert nxt.since == 10.0 and nxt.successes == 0 and nxt.failures == 0


def test_initial_record_is_probing() -> None:
    assert HealthRecord().state is P


def test_up_goes_down_after_down_after_consecutive_failures() -> None:
    rec = HealthRecord(state=U)
    rec, events = feed(rec, TIMEOUT, 2, 0.0)
    assert rec.state is U and rec.failures == 2 and events == []
    rec, ev = next_state(GW, rec, TIMEOUT, 5.0, DEFAULT)
    assert rec.state is D
    assert ev == GatewayStateChanged(GW, U, D, "3 consecutive probe timeouts", 5.0,
                               ChangeReason.PROBE_FAILURE)


def test_down_comes_up_after_up_after_consecutive_successes() -> None:
    rec = HealthRecord(state=D)
    rec, events = feed(rec, OK, 1, 0.0)
    assert rec.state is D and events == []
    rec, ev = next_state(GW, rec, OK, 9.0, DEFAULT)
    assert ev == GatewayStateChanged(GW, D, U, "2 consecutive 200 replies", 9.0,
                               ChangeReason.PROBE_SUCCESS)


@pytest.mark.parametrize(("obs", "n", "target"), [(OK, 2, U), (TIMEOUT, 3, D)])
def test_probing_decided_by_thresholds(obs: Observation, n: int, target: Health) -> None:
    rec, events = feed(HealthRecord(), obs, n - 1, 0.0)
    assert rec.state is P and events == []
    rec, events = feed(rec, obs, 1, 10.0)
    assert rec.state is target and len(events) == 1


def test_custom_thresholds() -> None:
    policy = HealthPolicy(down_after=5, up_after=4)
    rec, events = feed(HealthRecord(state=U), TIMEOUT, 5, 0.0, policy)
    assert [e.new for e in events] == [D] and events[0].reason == "5 consecutive probe timeouts"
    rec, events = feed(rec, OK, 3, 10.0, policy)
    assert rec.state is D
    rec, events = feed(rec, OK, 1, 20.0, policy)
    assert rec.state is U


@pytest.mark.parametrize("start", [P, U, D])
def test_flapping_input_never_flips_state(start: Health) -> None:
    rec = HealthRecord(state=start)
    for i in range(200):
        rec, ev = next_state(GW, rec, OK if i % 2 else TIMEOUT, float(i), DEFAULT)
        assert ev is None
    assert rec.state is start


def test_flapping_with_two_failures_between_successes_never_goes_down() -> None:
    rec = HealthRecord(state=U)
    for i, obs in enumerate([TIMEOUT, TIMEOUT, OK] * 50):
        rec, ev = next_state(GW, rec, obs, float(i), DEFAULT)
        assert ev is None
    assert rec.state is U


def test_success_resets_failure_streak_and_vice_versa() -> None:
    rec, _ = feed(HealthRecord(state=U), TIMEOUT, 2, 0.0)
    rec, _ = feed(rec, OK, 1, 3.0)
    assert (rec.failures, rec.successes) == (0, 1)
    rec, _ = feed(HealthRecord(state=D), OK, 1, 0.0)
    rec, _ = feed(rec, TIMEOUT, 1, 1.0)
    assert (rec.failures, rec.successes) == (1, 0)


def test_mixed_failures_reason_names_the_last() -> None:
    rec = HealthRecord(state=U)
    for obs in (
        TIMEOUT,
        Observation(Signal.FAILURE, "probe send failure", "no route"),
        Observation(Signal.FAILURE, "500 reply"),
    ):
        rec, ev = next_state(GW, rec, obs, 1.0, DEFAULT)
    assert ev is not None and ev.reason == "3 consecutive failures (last: 500 reply)"


def test_uniform_failures_reason_carries_detail() -> None:
    obs = Observation(Signal.FAILURE, "probe send failure", "no route to host")
    _, events = feed(HealthRecord(state=U), obs, 3, 0.0)
    assert events[0].reason == "3 consecutive probe send failures: no route to host"


def test_call_failures_count_like_probe_failures() -> None:
    rec = HealthRecord(state=U)
    rec, _ = feed(rec, call_observation(False, detail="no provisional response in 4s"), 1, 0.0)
    rec, _ = feed(rec, TIMEOUT, 1, 1.0)
    assert rec.state is U
    rec, ev = next_state(GW, rec, call_observation(False, detail="408"), 2.0, DEFAULT)
    assert ev is not None and ev.new is D
    assert ev.reason == "3 consecutive failures (last: call failure): 408"


def test_call_success_resets_probe_failure_streak() -> None:
    rec, _ = feed(HealthRecord(state=U), TIMEOUT, 2, 0.0)
    rec, _ = feed(rec, call_observation(True), 1, 2.0)
    rec, events = feed(rec, TIMEOUT, 2, 3.0)
    assert rec.state is U and events == []


def test_call_observation_kinds() -> None:
    assert call_observation(True).signal is Signal.SUCCESS
    assert call_observation(True, retry_after_s=5).signal is Signal.SUCCESS
    assert call_observation(False).signal is Signal.FAILURE
    o = call_observation(False, retry_after_s=20, detail="503")
    assert (o.signal, o.retry_after_s) == (Signal.OVERLOAD, 20)


# -- Retry-After hold-down -------------------------------------------------------------------


@pytest.mark.parametrize("start", [P, U])
def test_retry_after_marks_down_immediately(start: Health) -> None:
    rec, ev = next_state(GW, HealthRecord(state=start), overload(30), 100.0, DEFAULT)
    assert rec.state is D and rec.held_until == 130.0
    assert ev == GatewayStateChanged(GW, start, D, "503 Retry-After 30s", 100.0,
                               ChangeReason.RETRY_AFTER)


def test_retry_after_hold_blocks_recovery_until_it_ends() -> None:
    rec, _ = next_state(GW, HealthRecord(state=U), overload(30), 100.0, DEFAULT)
    # Probes keep answering 200 during the hold: none of them count.
    rec, events = feed(rec, OK, 20, 105.0)
    assert rec.state is D and events == [] and rec.successes == 0
    assert rec.is_held(129.9) and not rec.is_held(130.0)
    rec, events = feed(rec, OK, 1, 130.0)
    assert rec.state is D
    rec, events = feed(rec, OK, 1, 131.0)
    assert rec.state is U and events[0].reason == "2 consecutive 200 replies"
    assert rec.held_until is None


def test_retry_after_is_capped() -> None:
    rec, ev = next_state(GW, HealthRecord(state=U), overload(3600), 0.0, DEFAULT)
    assert rec.held_until == 300.0
    assert ev is not None and ev.reason == "503 Retry-After 3600s (held 300s, the cap)"
    small_cap = HealthPolicy(retry_after_cap_s=10)
    rec, _ = next_state(GW, HealthRecord(state=U), overload(30), 0.0, small_cap)
    assert rec.held_until == 10.0


@pytest.mark.parametrize("after", [-5.0, math.nan, math.inf, 0.0])
def test_garbage_retry_after_is_zero_hold(after: float) -> None:
    rec, ev = next_state(GW, HealthRecord(state=U), overload(after), 50.0, DEFAULT)
    assert rec.state is D and ev is not None
    assert not rec.is_held(50.0)


def test_retry_after_while_down_extends_hold_without_event() -> None:
    rec, _ = next_state(GW, HealthRecord(state=U), overload(10), 0.0, DEFAULT)
    rec, ev = next_state(GW, rec, overload(60), 5.0, DEFAULT)
    assert ev is None and rec.held_until == 65.0
    rec, ev = next_state(GW, rec, overload(1), 6.0, DEFAULT)
    assert rec.held_until == 65.0  # a shorter one never shortens the hold


def test_retry_after_breaks_recovery_in_progress() -> None:
    rec, _ = feed(HealthRecord(state=D), OK, 1, 0.0)
    rec, _ = next_state(GW, rec, overload(0), 1.0, DEFAULT)
    assert rec.successes == 0


# -- administrative state --------------------------------------------------------------------


@pytest.mark.parametrize("start", [P, U, D])
def test_drain_wins_from_any_state(start: Health) -> None:
    rec, ev = next_state(GW, HealthRecord(state=start), DRAIN, 1.0, DEFAULT)
    assert rec.state is A
    assert ev == GatewayStateChanged(GW, start, A, "admin drain", 1.0, ChangeReason.ADMIN_DRAIN)


def test_admin_down_beats_probes() -> None:
    rec, _ = next_state(GW, HealthRecord(state=U), DRAIN, 0.0, DEFAULT)
    for obs in (OK, TIMEOUT, overload(5), DRAIN) * 10:
        rec, ev = next_state(GW, rec, obs, 1.0, DEFAULT)
        assert ev is None and rec.state is A


def test_enable_returns_to_probing_then_reproven() -> None:
    rec, _ = next_state(GW, HealthRecord(state=U), DRAIN, 0.0, DEFAULT)
    rec, ev = next_state(GW, rec, ENABLE, 10.0, DEFAULT)
    assert ev == GatewayStateChanged(GW, A, P, "admin enable", 10.0, ChangeReason.ADMIN_ENABLE)
    rec, events = feed(rec, OK, 2, 11.0)
    assert rec.state is U and len(events) == 1


def test_retry_after_seen_while_drained_holds_after_enable() -> None:
    rec, _ = next_state(GW, HealthRecord(state=U), DRAIN, 0.0, DEFAULT)
    rec, _ = next_state(GW, rec, overload(60), 10.0, DEFAULT)
    rec, _ = next_state(GW, rec, ENABLE, 20.0, DEFAULT)
    assert rec.state is P and rec.is_held(69.0)
    rec, events = feed(rec, OK, 5, 21.0)
    assert rec.state is P and events == []


def test_enable_when_not_drained_is_a_no_op() -> None:
    for start in (P, U, D):
        rec, ev = next_state(GW, HealthRecord(state=start), ENABLE, 1.0, DEFAULT)
        assert ev is None and rec.state is start


def test_no_repeated_events_while_staying_down() -> None:
    _, events = feed(HealthRecord(state=U), TIMEOUT, 30, 0.0)
    assert len(events) == 1


# -- policy values ---------------------------------------------------------------------------


def test_reply_codes_parse_classes_and_codes() -> None:
    codes = ReplyCodes.parse(["2xx", "404", 405, " 3XX "])
    for c in (200, 202, 299, 301, 404, 405):
        assert c in codes
    for c in (100, 403, 406, 500):
        assert c not in codes
    assert "200" not in codes  # only ints are codes
    assert str(codes) == "2xx, 3xx, 404, 405"


def test_default_healthy_codes_are_2xx_only() -> None:
    healthy = HealthPolicy().healthy_codes
    assert 200 in healthy and 299 in healthy
    assert 404 not in healthy and 183 not in healthy and 503 not in healthy


@pytest.mark.parametrize("bad", [["7xx"], ["20"], [99], [700], [True], ["abc"], [], [2.0]])
def test_reply_codes_reject_garbage(bad: list[object]) -> None:
    with pytest.raises(ValueError, match="reply code"):
        ReplyCodes.parse(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs", [{"down_after": 0}, {"up_after": 0}, {"retry_after_cap_s": -1.0}]
)
def test_policy_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        HealthPolicy(**kwargs)  # type: ignore[arg-type]
