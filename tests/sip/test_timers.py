"""RFC 3261 Table 4 / RFC 6026 §8.4 timer values derived from T1, T2, T4."""

from __future__ import annotations

import dataclasses

import pytest

from sipedge.sip.timers import Timers


def test_defaults_are_rfc_3261_values() -> None:
    t = Timers()
    assert (t.t1, t.t2, t.t4) == (0.5, 4.0, 5.0)


def test_timer_values_unreliable_defaults() -> None:
    t = Timers()
    assert t.timer_a == 0.5  # initially T1
    assert t.timer_b == 32.0  # 64*T1
    assert t.timer_c == 180.0  # > 3 min
    assert t.timer_d == 32.0  # >= 32 s
    assert t.timer_e == 0.5
    assert t.timer_f == 32.0
    assert t.timer_g == 0.5
    assert t.timer_h == 32.0
    assert t.timer_i == 5.0  # T4
    assert t.timer_j == 32.0  # 64*T1
    assert t.timer_k == 5.0  # T4
    assert t.timer_l == 32.0  # RFC 6026: 64*T1
    assert t.timer_m == 32.0  # RFC 6026: 64*T1


def test_timers_follow_configured_t1_t4() -> None:
    t = Timers(t1=0.25, t2=2.0, t4=3.0)
    assert t.timer_a == t.timer_e == t.timer_g == 0.25
    assert t.timer_b == t.timer_f == t.timer_h == t.timer_j == 16.0
    assert t.timer_l == t.timer_m == 16.0
    assert t.timer_i == t.timer_k == 3.0
    # Timer D never drops below 32 s ...
    assert t.timer_d == 32.0


def test_timer_d_covers_timer_h_when_t1_is_large() -> None:
    # ... but grows with T1 so it still outlives the server's Timer H.
    t = Timers(t1=1.0, t2=4.0)
    assert t.timer_d == 64.0 == t.timer_h


@pytest.mark.parametrize("name", ["D", "I", "J", "K"])
def test_wait_timers_are_zero_over_reliable_transport(name: str) -> None:
    t = Timers()
    assert t.wait(name, reliable=True) == 0.0  # type: ignore[arg-type]
    assert t.wait(name, reliable=False) > 0.0  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["A", "B", "C", "E", "F", "G", "H", "L", "M"])
def test_other_timers_do_not_depend_on_transport(name: str) -> None:
    t = Timers()
    expected = getattr(t, "timer_" + name.lower())
    assert t.wait(name, reliable=True) == expected  # type: ignore[arg-type]
    assert t.wait(name, reliable=False) == expected  # type: ignore[arg-type]


def test_timers_are_frozen_and_slotted() -> None:
    t = Timers()
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.t1 = 1.0  # type: ignore[misc]
    assert not hasattr(t, "__dict__")


@pytest.mark.parametrize(
    "kwargs",
    [{"t1": 0.0}, {"t1": -1.0}, {"t2": 0.0}, {"t4": 0.0}, {"t1": 5.0, "t2": 4.0}],
)
def test_invalid_timers_are_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Timers(**kwargs)


# -- ExpiryLane --------------------------------------------------------------------------


def test_lane_releases_keys_in_order_never_early() -> None:
    from sipedge.sip.timers import LANE_GRAIN_S, ExpiryLane

    lane = ExpiryLane()
    assert lane.next_due() is None and lane.pop_due(1e9) == [] and len(lane) == 0
    lane.add(10.0, b"a")
    lane.add(10.004, b"b")  # within the grain: same bucket, whose time moves to 10.004
    lane.add(10.5, b"c")
    assert len(lane) == 3 and lane.next_due() == 10.004
    assert lane.pop_due(10.0) == []  # "a" is due, but its bucket is not: late, not early
    assert lane.pop_due(10.004) == [b"a", b"b"]
    assert len(lane) == 1 and lane.next_due() == 10.5
    lane.add(10.5 + LANE_GRAIN_S / 2, b"d")
    lane.add(10.5 + LANE_GRAIN_S * 1.5, b"e")  # past the grain of "c": a bucket of its own
    assert len(lane) == 3 and lane.pop_due(10.5 + LANE_GRAIN_S) == [b"c", b"d"]
    lane.add(3.0, b"early")  # out of order (a reload shortened T1): released with the newest
    assert lane.pop_due(100.0) == [b"e", b"early"] and len(lane) == 0


def test_lane_never_releases_a_key_before_its_time() -> None:
    from hypothesis import given
    from hypothesis import strategies as st

    from sipedge.sip.timers import LANE_GRAIN_S, ExpiryLane

    @given(st.lists(st.floats(0.0, 0.1), min_size=1, max_size=60),
           st.lists(st.floats(0.0, 0.2), min_size=1, max_size=20))
    def check(gaps: list[float], steps: list[float]) -> None:
        lane = ExpiryLane()
        t, due = 0.0, {}
        for i, gap in enumerate(gaps):
            t += gap
            due[b"%d" % i] = t
            lane.add(t, b"%d" % i)
        now, released = 0.0, set()
        for step in [*steps, 1e9]:
            now += step
            for key in lane.pop_due(now):
                assert due[key] <= now  # never early
                released.add(key)
            # never later than one grain past the key's time (keys added in time order)
            late = [k for k, t in due.items() if t + LANE_GRAIN_S <= now and k not in released]
            assert late == []
        assert released == set(due) and len(lane) == 0

    check()
