"""The whole-core fuzz harness (fuzz/fuzz_core.py) as a short, deterministic CI run.

The long runs are coverage-guided (atheris, ``python fuzz/fuzz_core.py
-max_total_time=900 fuzz/corpus_core``); here the harness's pure-Python fallback feeds a
fixed number of inputs from ``random.Random(1)`` through the same op decoder and the same
invariants (nothing escapes the core, every Send is addressed and parses again, strangers
get nothing, the tables drain once the timers run out). The count is fixed, not the time:
about 20-30 s on a loaded 2-core box. Timing is only reported, never asserted (CI boxes
are noisy); ``make fuzz`` mode is where a slow op fails.
"""

from __future__ import annotations

import random

import pytest

from fuzz import fuzz_core

#: Inputs for the CI run (about 15-20 thousand ops).
CI_INPUTS = 3000


def test_bytes_provider_is_atherises_twin() -> None:
    """A crash file found by atheris decodes to the same ops without atheris."""
    import atheris  # a test dependency (pyproject [test]); make test installs it
    rng = random.Random(3)
    for _ in range(500):
        data = rng.randbytes(rng.randint(0, 400))
        ours = fuzz_core.decode(data, fuzz_core.BytesProvider(data))
        theirs = fuzz_core.decode(data, atheris.FuzzedDataProvider(data))
        assert repr(ours) == repr(theirs)


def test_encoder_round_trips_every_seed_scenario() -> None:
    for mask, ops in fuzz_core.scenarios():
        data = fuzz_core.encode(mask, ops)
        got_mask, got = fuzz_core.decode(data)
        assert got_mask == mask
        assert [o.kind for o in got] == [o.kind for o in ops]
        for want, have in zip(ops, got, strict=True):
            assert {k: v for k, v in have.args.items() if k in want.args} == want.args


def test_seed_scenarios_reach_deep_states() -> None:
    """The seeds start atheris off inside calls: failover, CANCEL, Timer C, answered."""
    reached: set[str] = set()
    for mask, ops in fuzz_core.scenarios()[:9]:
        reached.update(fuzz_core.run_ops(mask, ops).reached)
    assert {"answered", "cancels", "failover:RESPONSE", "failover:NO_PROVISIONAL",
            "failover:TRANSPORT_ERROR", "no_gateway_503", "reply:408"} <= reached


def test_every_seed_scenario_holds_the_invariants() -> None:
    for mask, ops in fuzz_core.scenarios():
        fuzz_core.run_ops(mask, ops)


def test_fuzz_core_fallback_fixed_seed() -> None:
    totals = fuzz_core.fallback(seed=1, runs=CI_INPUTS)
    report = totals.as_dict()
    print("fuzz_core CI run:", report)
    assert totals.crashes == 0
    assert totals.inputs == CI_INPUTS
    assert totals.ops > 5 * CI_INPUTS


def _crashers() -> dict[str, list[fuzz_core.Op]]:
    """The harness inputs that broke an invariant before the fixes (see
    tests/proxy/test_fuzz_regressions.py for the datagrams themselves)."""
    op, world = fuzz_core.op, fuzz_core.World()
    opts = world._template(fuzz_core.PEERS[0], {"method": 4})
    invite = world._template(fuzz_core.PEERS[0], {"method": 0})
    bye = world._template(fuzz_core.PEERS[0], {"method": 2, "to_tag": 1, "route": 3})
    ringing = fuzz_core.STATUSES.index(180)
    return {
        # ValueError out of receive(): 5120 zeros in front of the CSeq number.
        "cseq_zeros": [op("request", method=4, mut=10, at=opts.index(b"CSeq: ") + 6, cut=19,
                          ins=b"0")],
        # 100 Trying sent to port 0: Via sent-by 127.0.0.1:0.
        "via_port_0": [op("request", method=0, mut=5, at=invite.index(b"5060;branch"), cut=4,
                          ins=b"0")],
        # BYE relayed to port 0: Route <sip:127.0.0.10:0;lr>.
        "route_port_0": [op("request", method=2, to_tag=1, route=3, mut=5,
                            at=bye.index(b"5060;lr"), cut=4, ins=b"0")],
        # 180 relayed with no Via: the caller's Via line (line 4) of the answer replaced.
        "only_our_via": [op("request", method=0),
                         op("answer", calls=1, status=ringing, mut=6, at=4, ins=b"X-Gone: 1")],
        # Branch reused, _branches_by_dest leaked: atheris crash-5a7d35d4…, minimised. An
        # INFO over TCP (peer 1), answered 584, then the same INFO again.
        "branch_reuse": [op("request", peer=1, method=5, call=3, branch=2, cseq=1, mf=1,
                            body=3, uri=2),
                         op("answer", pick=6, calls=1, status=33, code=584, contact=1),
                         op("request", peer=1, method=5, call=3, branch=2, cseq=1, mf=1,
                            body=3, uri=2)],
    }


@pytest.mark.parametrize("name", sorted(_crashers()))
def test_former_crasher_inputs_hold_the_invariants(name: str) -> None:
    ops = _crashers()[name]
    data = fuzz_core.encode(0 if name == "branch_reuse" else 63, ops)
    fuzz_core.run_input(data)  # the encoded input, exactly as atheris would run it
