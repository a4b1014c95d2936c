"""The pool: priority across groups, smooth round-robin within, failover order, admin, reload."""

from __future__ import annotations

import itertools
import random
from collections import Counter

import pytest

from sipedge.gateway.health import GatewayStateChanged, Health, HealthPolicy
from sipedge.gateway.pool import Gateway, GatewayPool, gateway_id
from sipedge.gateway.probe import ProbeSchedule, Replied, SendFailed, TimedOut
from sipedge.sip.address import Endpoint

VA_DOMAIN = b"example.sip.ashburn-ix.twilio.com"
OR_DOMAIN = b"example.sip.san-jose-ix.twilio.com"


def virginia(weights: tuple[int, ...] = (1, 1, 1)) -> list[Gateway]:
    return [
        Gateway.make(
            "ashburn-ix", "Virginia", Endpoint("udp", f"127.0.0.{64 + i}", 5060), VA_DOMAIN, w
        )
        for i, w in enumerate(weights)
    ]


def oregon() -> list[Gateway]:
    return [
        Gateway.make("san-jose-ix", "Oregon", Endpoint("udp", f"127.0.1.{64 + i}", 5060), OR_DOMAIN)
        for i in range(3)
    ]


VA = [g.id for g in virginia()]
OR = [g.id for g in oregon()]


def make_pool(policy: HealthPolicy | None = None) -> GatewayPool:
    return GatewayPool([virginia(), oregon()], policy or HealthPolicy(), now=0.0)


def bring(
    pool: GatewayPool, ids: list[str], result: Replied | TimedOut, n: int, now: float
) -> list[GatewayStateChanged]:
    events = []
    for i in range(n):
        for gid in ids:
            events += pool.observe(gid, result, now + i)
    return events


OK = Replied(200, 0.01)


def all_up(pool: GatewayPool, now: float = 1.0) -> None:
    bring(pool, VA + OR, OK, 2, now)


def first(pool: GatewayPool, now: float, exclude: frozenset[str] = frozenset()) -> str | None:
    gw = next(pool.candidates(now, exclude), None)
    return gw.id if gw else None


def test_gateway_id_format() -> None:
    assert VA[0] == "ashburn-ix/127.0.0.64:5060"
    assert gateway_id("x", Endpoint("tcp", "::1", 5060)) == "x/[::1]:5060"
    with pytest.raises(ValueError):
        Gateway.make("x", "y", Endpoint("udp", "127.0.0.1", 5060), b"d", weight=0)


def test_pool_validates_groups() -> None:
    with pytest.raises(ValueError):
        GatewayPool([], HealthPolicy())
    with pytest.raises(ValueError):
        GatewayPool([virginia(), []], HealthPolicy())
    with pytest.raises(ValueError, match="duplicate"):
        GatewayPool([virginia(), virginia()], HealthPolicy())


def test_startup_all_probing_still_offers_virginia_first() -> None:
    pool = make_pool()
    assert {s.state for s in pool.snapshot()} == {Health.PROBING}
    assert not pool.any_up()
    order = [g.id for g in pool.candidates(0.0)]
    assert order[:3] == VA and sorted(order[3:]) == sorted(OR)


def test_round_robin_even_split_over_three_gateways() -> None:
    pool = make_pool()
    all_up(pool)
    picks = Counter(first(pool, 10.0) for _ in range(300))
    assert picks == Counter({gid: 100 for gid in VA})


def test_round_robin_never_repeats_with_equal_weights() -> None:
    pool = make_pool()
    all_up(pool)
    seq = [first(pool, 10.0) for _ in range(30)]
    assert all(a != b for a, b in itertools.pairwise(seq))


def test_weights_are_honoured() -> None:
    pool = GatewayPool([virginia((2, 1, 1))], HealthPolicy())
    bring(pool, VA, OK, 2, 1.0)
    picks = Counter(first(pool, 10.0) for _ in range(400))
    assert picks == Counter({VA[0]: 200, VA[1]: 100, VA[2]: 100})


def test_candidates_order_is_pick_then_rest_of_group_then_next_group() -> None:
    pool = make_pool()
    all_up(pool)
    for _ in range(5):
        order = [g.id for g in pool.candidates(10.0)]
        assert len(order) == 6
        assert sorted(order[:3]) == sorted(VA) and sorted(order[3:]) == sorted(OR)
        # the rest of a group follows in rotation after the pick
        i = VA.index(order[0])
        assert order[:3] == VA[i:] + VA[:i]


def test_failover_spreads_over_the_second_group_too() -> None:
    pool = make_pool()
    all_up(pool)
    lead = Counter([g.id for g in pool.candidates(10.0)][3] for _ in range(300))
    assert lead == Counter({gid: 100 for gid in OR})


def test_priority_failover_when_first_group_all_down_and_return() -> None:
    pool = make_pool()
    all_up(pool)
    events = bring(pool, VA, TimedOut(), 3, 20.0)
    assert [(e.gateway_id, e.new, e.reason) for e in events] == [
        (gid, Health.DOWN, "3 consecutive probe timeouts") for gid in VA
    ]
    picks = Counter(first(pool, 30.0) for _ in range(300))
    assert picks == Counter({gid: 100 for gid in OR})
    assert pool.any_up()
    # Virginia comes back only after up_after successes.
    bring(pool, VA, OK, 1, 40.0)
    assert first(pool, 41.0) in OR
    events = bring(pool, VA, OK, 1, 45.0)
    assert [e.new for e in events] == [Health.UP] * 3
    assert {first(pool, 50.0) for _ in range(3)} == set(VA)


def test_partial_group_failure_keeps_traffic_in_group() -> None:
    pool = make_pool()
    all_up(pool)
    bring(pool, [VA[1]], TimedOut(), 3, 20.0)
    picks = Counter(first(pool, 30.0) for _ in range(200))
    assert picks == Counter({VA[0]: 100, VA[2]: 100})


def test_everything_down_offers_nothing() -> None:
    pool = make_pool()
    bring(pool, VA + OR, TimedOut(), 3, 1.0)
    assert list(pool.candidates(10.0)) == []
    assert not pool.any_up()


def test_candidates_exclusions() -> None:
    pool = make_pool()
    all_up(pool)
    order = [g.id for g in pool.candidates(10.0, exclude={VA[0], OR[2]})]
    assert VA[0] not in order and OR[2] not in order and len(order) == 4
    assert [g.id for g in pool.candidates(10.0, exclude=frozenset(VA + OR))] == []


def test_probing_gateways_rank_after_every_up_gateway() -> None:
    pool = make_pool()
    bring(pool, OR, OK, 2, 1.0)  # Oregon proven, Virginia not yet
    order = [g.id for g in pool.candidates(5.0)]
    assert sorted(order[:3]) == sorted(OR) and sorted(order[3:]) == sorted(VA)


def test_iterator_rechecks_health_as_it_goes() -> None:
    pool = make_pool()
    all_up(pool)
    it = pool.candidates(10.0)
    head = next(it)
    rest_before = [g.id for g in pool.candidates(10.0)]
    assert len(rest_before) == 6
    pool.drain(OR[0], 11.0)
    pool.drain(OR[1], 11.0)
    remaining = [g.id for g in it]
    assert head.id not in remaining and OR[0] not in remaining and OR[1] not in remaining
    assert len(remaining) == 3


def test_drain_and_enable() -> None:
    pool = make_pool()
    all_up(pool)
    (ev,) = pool.drain(VA[0], 20.0)
    assert (ev.old, ev.new, ev.reason) == (Health.UP, Health.ADMIN_DOWN, "admin drain")
    assert pool.drain(VA[0], 21.0) == []
    # probes still answered 200: recorded, never bring it back
    assert bring(pool, [VA[0]], OK, 5, 22.0) == []
    assert pool.state(VA[0]) is Health.ADMIN_DOWN
    assert VA[0] not in {g.id for g in pool.candidates(30.0)}
    (ev,) = pool.enable(VA[0], 40.0)
    assert ev.new is Health.PROBING
    order = [g.id for g in pool.candidates(41.0)]
    assert order[-1] == VA[0]  # unproven: last resort only
    bring(pool, [VA[0]], OK, 2, 42.0)
    assert pool.state(VA[0]) is Health.UP
    with pytest.raises(KeyError):
        pool.drain("nope", 1.0)
    with pytest.raises(KeyError):
        pool.enable("nope", 1.0)


def test_retry_after_on_probe_holds_down() -> None:
    pool = make_pool()
    all_up(pool)
    (ev,) = pool.observe(VA[0], Replied(503, 0.02, retry_after_s=30), 100.0)
    assert (ev.new, ev.reason) == (Health.DOWN, "503 Retry-After 30s")
    bring(pool, [VA[0]], OK, 10, 101.0)
    assert pool.state(VA[0]) is Health.DOWN
    bring(pool, [VA[0]], OK, 2, 130.0)
    assert pool.state(VA[0]) is Health.UP


def test_enable_during_hold_is_not_offered_until_hold_ends() -> None:
    pool = make_pool()
    all_up(pool)
    pool.drain(VA[0], 10.0)
    pool.observe(VA[0], Replied(503, 0.02, retry_after_s=60), 11.0)
    pool.enable(VA[0], 12.0)
    assert pool.state(VA[0]) is Health.PROBING
    assert VA[0] not in {g.id for g in pool.candidates(70.9)}
    assert VA[0] in {g.id for g in pool.candidates(71.0)}


def test_call_outcomes_feed_health() -> None:
    pool = make_pool()
    all_up(pool)
    assert pool.observe_call(VA[0], False, 10.0, detail="no provisional response in 4s") == []
    assert pool.observe_call(VA[0], False, 11.0) == []
    (ev,) = pool.observe_call(VA[0], False, 12.0)
    assert ev.new is Health.DOWN and ev.reason.startswith("3 consecutive call failures")
    (ev,) = pool.observe_call(VA[1], False, 13.0, retry_after_s=20)
    assert (ev.new, ev.reason) == (Health.DOWN, "call 503 Retry-After 20s")
    assert pool.record(VA[1]).held_until == 33.0
    # a call success resets a probe failure streak
    bring(pool, [VA[2]], TimedOut(), 2, 14.0)
    pool.observe_call(VA[2], True, 16.0)
    assert bring(pool, [VA[2]], TimedOut(), 2, 17.0) == []
    assert pool.snapshot()[0].call_failures == 3


def test_unknown_ids_in_results_are_ignored() -> None:
    pool = make_pool()
    assert pool.observe("gone/1.2.3.4:5060", OK, 1.0) == []
    assert pool.observe_call("gone/1.2.3.4:5060", False, 1.0) == []
    assert "gone/1.2.3.4:5060" not in pool and VA[0] in pool


def test_snapshot_rows() -> None:
    pool = make_pool()
    pool.observe(VA[0], Replied(200, 0.012), 1.0)
    pool.observe(VA[0], Replied(200, 0.014), 2.0)
    pool.observe(VA[1], SendFailed("no route"), 2.0)
    pool.observe(VA[2], TimedOut(), 2.0)
    rows = {r.id: r for r in pool.snapshot()}
    assert [r.id for r in pool.snapshot()] == VA + OR
    r = rows[VA[0]]
    assert (r.edge, r.region, r.address, r.priority) == (
        "ashburn-ix",
        "Virginia",
        "udp:127.0.0.64:5060",
        0,
    )
    assert (r.state, r.reason, r.since) == (Health.UP, "2 consecutive 200 replies", 2.0)
    assert (r.last_code, r.last_rtt_s, r.probes, r.probe_failures) == (200, 0.014, 2, 0)
    assert (rows[VA[1]].last_code, rows[VA[1]].probe_failures) == (None, 1)
    assert rows[OR[0]].priority == 1 and rows[OR[0]].reason == "not probed yet"
    assert rows[VA[0]].state_changes == 1 and pool.state_changes == 1


def test_replace_carries_health_of_same_gateways() -> None:
    old = make_pool()
    all_up(old)
    bring(old, [VA[0]], TimedOut(), 3, 10.0)
    moved = Gateway(
        "san-jose-ix/127.0.1.64:5060",
        "san-jose-ix",
        "Oregon",
        Endpoint("tcp", "127.0.1.64", 5060),
        OR_DOMAIN,
    )
    extra = Gateway.make("ashburn-ix", "Virginia", Endpoint("udp", "127.0.0.67", 5060), VA_DOMAIN)
    new = GatewayPool([[*virginia(), extra], [moved, *oregon()[1:]]], HealthPolicy(), now=20.0)
    assert old.replace(new) is new
    assert new.state(VA[0]) is Health.DOWN
    assert new.record(VA[0]).reason == "3 consecutive probe timeouts"
    assert new.state(VA[1]) is Health.UP and new.state(OR[1]) is Health.UP
    assert new.state(extra.id) is Health.PROBING
    assert new.state(moved.id) is Health.PROBING  # same id, different endpoint: re-proven
    row = {r.id: r for r in new.snapshot()}[VA[0]]
    assert row.probes == 5 and row.probe_failures == 3


def test_simulated_virginia_outage_moves_traffic_within_down_after_intervals() -> None:
    """Probe loop on a fake clock: Virginia dies at t=100, returns at t=300."""
    policy = HealthPolicy()
    pool = make_pool(policy)
    sched = ProbeSchedule(rng=random.Random(42), interval_up_s=15.0, interval_down_s=5.0)
    for gw in pool.gateways():
        sched.add(gw.id, 0.0)

    def alive(gid: str, now: float) -> bool:
        return gid in OR or not 100.0 <= now < 300.0

    moved_at = back_at = None
    now = 0.0
    while now < 400.0:
        for gid in sched.due(now):
            result = OK if alive(gid, now) else TimedOut()
            t = now + (0.01 if alive(gid, now) else 2.0)  # probe timeout 2 s
            pool.observe(gid, result, t)
            sched.reschedule(gid, t, pool.state(gid))
        pick = first(pool, now)
        if moved_at is None and now >= 100.0 and pick in OR:
            moved_at = now
        if moved_at is not None and back_at is None and now >= 300.0 and pick in VA:
            back_at = now
        now = round(now + 0.5, 1)
    assert moved_at is not None and back_at is not None
    # down_after (3) failed probes, each at most one up-interval (+10 % jitter) plus the 2 s
    # probe timeout apart: traffic is on Oregon within down_after probe intervals.
    assert moved_at - 100.0 <= 3 * 15.0 * 1.1 + 3 * 2.0
    # return: up_after (2) successes at the down interval
    assert back_at - 300.0 <= 2 * 5.0 * 1.1 + 1.0


def test_candidates_order_cache_matches_a_fresh_evaluation() -> None:
    """The cached eligible lists follow every state change, hold-down and its end."""
    rng = random.Random(14)
    cached, fresh = make_pool(), make_pool()
    ids = VA + OR
    now = 1.0
    for step in range(3000):
        now += rng.choice((0.0, 0.01, 0.5, 3.0, 20.0))
        gid = rng.choice(ids)
        op = rng.randrange(10)
        retry_after = rng.choice((None, 5.0, 30.0))
        for pool in (cached, fresh):
            if op < 3:
                pool.observe(gid, OK, now)
            elif op == 3:
                pool.observe(gid, TimedOut(), now)
            elif op == 4:
                pool.observe_call(gid, False, now, retry_after_s=retry_after)
            elif op == 5 and step % 7 == 0:
                pool.drain(gid, now)
            elif op == 6 and pool.state(gid) is Health.ADMIN_DOWN:
                pool.enable(gid, now)
            else:
                pool.observe_call(gid, True, now)
        exclude = frozenset(rng.sample(ids, rng.randrange(3)))
        fresh._order_version = -1  # the reference never uses the cache
        got = [g.id for g in cached.candidates(now, exclude)]
        assert got == [g.id for g in fresh.candidates(now, exclude)], (step, now)
