"""A restart keeps dialogs (issue 12, high availability).

sipedge holds transaction state only: an in-dialog request is routed from its Route
header (our Record-Route) alone (RFC 3261 §16.12, loose routing). So calls set up through
one sipedge process survive its loss: a new process on the same addresses — a restart,
or the other instance of a pair taking over a shared address — relays their BYEs, and the
far end answers them.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import STATS, Daemon, lab_config, sipp_counts, uac, uas

pytestmark = pytest.mark.e2e

VIRGINIA = ("127.0.0.64", "127.0.0.65", "127.0.0.66")


def _messages(sipp: object) -> str:
    cwd: Path = sipp.cwd  # type: ignore[attr-defined]
    return "\n".join(p.read_text(errors="replace") for p in cwd.glob("*messages*"))


def test_calls_set_up_before_a_restart_hang_up_through_the_new_process(
        tmp_path: Path, daemon_factory: object, sipp_factory: object) -> None:
    gateways = [uas(sipp_factory, ip) for ip in VIRGINIA]
    config = lab_config(tmp_path, oregon='["127.0.1.64"]')
    first: Daemon = daemon_factory(config)  # type: ignore[operator]
    time.sleep(1.2)  # the gateways UP
    # 10 calls in one second, each held 7 s after its ACK, then BYE from the caller.
    caller = uac(sipp_factory, "127.0.0.1:5080", calls=10, rate=10, name="held",
                 extra=(*STATS, "-d", "7000"))
    deadline = time.monotonic() + 5
    while sum(_messages(g).count("\nACK sip:") for g in gateways) < 10:
        assert time.monotonic() < deadline, "the 10 calls were not all answered and ACKed"
        time.sleep(0.05)
    # The process dies without a drain (a crash, a kill -9, a lost host)...
    first.send_signal(signal.SIGKILL)
    assert first.wait(5) == -signal.SIGKILL
    # ... and a new one binds the same addresses while the calls are still up.
    second: Daemon = daemon_factory(config)  # type: ignore[operator]
    assert caller.wait(30) == 0, caller.errors() + second.log()
    assert sipp_counts(caller) == {"total": 10, "successful": 10, "failed": 0}
    # Every BYE crossed the new process to a gateway and its 200 came back.
    assert sum(_messages(g).count("\nBYE sip:") for g in gateways) == 10
    assert second.proc.poll() is None
