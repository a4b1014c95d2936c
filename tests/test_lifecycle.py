"""The daemon lifecycle table: every (phase, phase) pair, and the hooks."""

from __future__ import annotations

import itertools

import pytest

from sipedge.lifecycle import MOVES, Lifecycle, LifecycleError, Phase

ALLOWED = {
    (Phase.STARTING, Phase.READY), (Phase.STARTING, Phase.STOPPED),
    (Phase.READY, Phase.RELOADING), (Phase.READY, Phase.DRAINING), (Phase.READY, Phase.STOPPED),
    (Phase.RELOADING, Phase.READY), (Phase.RELOADING, Phase.DRAINING),
    (Phase.RELOADING, Phase.STOPPED),
    (Phase.DRAINING, Phase.READY), (Phase.DRAINING, Phase.STOPPED),
}


def _at(phase: Phase) -> Lifecycle:
    life = Lifecycle()
    life.phase = phase  # place it directly: the table, not the path, is under test
    return life


@pytest.mark.parametrize(("old", "new"), list(itertools.product(Phase, Phase)))
def test_every_pair_follows_the_table(old: Phase, new: Phase) -> None:
    life = _at(old)
    seen: list[tuple[Phase, Phase]] = []
    life.on_move(lambda a, b: seen.append((a, b)))
    if (old, new) in ALLOWED:
        assert life.can_move(new)
        life.move(new)
        assert life.phase is new and seen == [(old, new)]
    else:
        assert not life.can_move(new)
        with pytest.raises(LifecycleError):
            life.move(new)
        assert life.phase is old and seen == []


def test_table_is_exactly_the_documented_one() -> None:
    assert {(a, b) for a, targets in MOVES.items() for b in targets} == ALLOWED
    assert MOVES[Phase.STOPPED] == frozenset()


def test_hooks_run_in_registration_order() -> None:
    life = Lifecycle()
    order: list[str] = []
    life.on_move(lambda a, b: order.append("first"))
    life.on_move(lambda a, b: order.append("second"))
    life.move(Phase.READY)
    assert order == ["first", "second"]
