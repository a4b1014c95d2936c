"""Gateway health and per-call failover through the real daemon (issue #4 end-to-end).

Failover timers are shortened by the test config (no_provisional_timeout_s = 1 s, probes
every 0.5 s, down_after = 2), the behaviour is the production one.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import SCENARIOS, lab_config, uac, uas

pytestmark = pytest.mark.e2e

VIRGINIA = ("127.0.0.64", "127.0.0.65", "127.0.0.66")
OREGON = ("127.0.1.64", "127.0.1.65", "127.0.1.66")


def _invites(sipp: object) -> list[str]:
    cwd: Path = sipp.cwd  # type: ignore[attr-defined]
    text = "\n".join(p.read_text(errors="replace") for p in cwd.glob("*messages*"))
    return [line for line in text.splitlines() if line.startswith("INVITE sip:")]


def test_black_hole_gateway_is_failed_over_within_the_call(
        tmp_path: Path, daemon_factory: object, sipp_factory: object) -> None:
    hole = uas(sipp_factory, "127.0.0.64")
    oregon = uas(sipp_factory, "127.0.1.64")
    daemon = daemon_factory(lab_config(  # type: ignore[operator]
        tmp_path, virginia='["127.0.0.64"]', oregon='["127.0.1.64"]',
        interval_up=5, interval_down=5))
    time.sleep(1.2)  # both UP
    os.kill(hole.proc.pid, signal.SIGSTOP)  # a silent dead host, port still bound
    try:
        caller = uac(sipp_factory, "127.0.0.1:5080", calls=1, rate=1)
        rc = caller.wait(30)
    finally:
        os.kill(hole.proc.pid, signal.SIGCONT)
    assert rc == 0, caller.errors() + daemon.log()
    assert _invites(oregon) == [
        "INVITE sip:+14155550100@example.sip.san-jose-ix.twilio.com SIP/2.0"]
    assert "no provisional response" in daemon.log()


def test_503_retry_after_fails_over_and_holds_the_gateway_down(
        tmp_path: Path, daemon_factory: object, sipp_factory: object) -> None:
    busy = uas(sipp_factory, "127.0.0.65", scenario=SCENARIOS / "uas_503.xml")
    oregon = uas(sipp_factory, "127.0.1.65")
    daemon = daemon_factory(lab_config(  # type: ignore[operator]
        tmp_path, virginia='["127.0.0.65"]', oregon='["127.0.1.65"]'))
    time.sleep(1.2)
    caller = uac(sipp_factory, "127.0.0.1:5080", calls=3, rate=1)
    rc = caller.wait(30)
    assert rc == 0, caller.errors() + daemon.log()
    # One 503, then Retry-After: 30 keeps the gateway out of rotation for the next calls.
    assert len(_invites(busy)) == 1
    assert len(_invites(oregon)) == 3
    assert "503 Retry-After 30" in daemon.log()


def test_group_death_under_load_loses_no_call_and_traffic_returns(
        tmp_path: Path, daemon_factory: object, sipp_factory: object) -> None:
    virginia = [uas(sipp_factory, ip) for ip in VIRGINIA]
    oregon = [uas(sipp_factory, ip) for ip in OREGON]
    daemon = daemon_factory(lab_config(tmp_path))  # type: ignore[operator]
    time.sleep(1.2)
    caller = uac(sipp_factory, "127.0.0.1:5080", calls=40, rate=10, name="load")
    time.sleep(1.0)
    for g in virginia[:1]:
        g.stop()  # one gateway dies
    time.sleep(1.0)
    for g in virginia[1:]:
        g.stop()  # then the whole group
    rc = caller.wait(40)
    assert rc == 0, caller.errors() + daemon.log()
    # After the group died, calls went to Oregon with its own localized domain.
    moved = [i for g in oregon for i in _invites(g)]
    assert moved and all("example.sip.san-jose-ix.twilio.com" in i for i in moved)
    assert "ashburn-ix/127.0.0.64:5060 UP -> DOWN" in daemon.log()

    # Virginia comes back: after up_after good probes traffic returns to it.
    back = [uas(sipp_factory, ip, tag="-back") for ip in VIRGINIA]
    time.sleep(2.0)
    caller2 = uac(sipp_factory, "127.0.0.1:5080", calls=6, rate=6, name="after")
    assert caller2.wait(30) == 0, caller2.errors() + daemon.log()
    returned = [i for g in back for i in _invites(g)]
    assert len(returned) == 6
    assert all("example.sip.ashburn-ix.twilio.com" in i for i in returned)


def test_killed_gateway_fails_over_on_icmp_not_on_the_timer(
        tmp_path: Path, daemon_factory: object, sipp_factory: object) -> None:
    # A dead gateway process makes the kernel answer ICMP port-unreachable; sipedge sends
    # to each UDP gateway through a connected socket so it hears it and fails over at once.
    dead = uas(sipp_factory, "127.0.0.66")
    oregon = uas(sipp_factory, "127.0.1.66")
    daemon = daemon_factory(lab_config(  # type: ignore[operator]
        tmp_path, virginia='["127.0.0.66"]', oregon='["127.0.1.66"]',
        interval_up=30, interval_down=30, no_prov=20.0))
    time.sleep(1.0)  # first probes answered: both UP, no further probe for 30 s
    dead.stop()
    caller = uac(sipp_factory, "127.0.0.1:5080", calls=1, rate=1)
    # With no_provisional_timeout_s = 20 only the ICMP path can save the call in time.
    rc = caller.wait(15)
    assert rc == 0, caller.errors() + daemon.log()
    assert len(_invites(oregon)) == 1
    assert "(transport error)" in daemon.log()
