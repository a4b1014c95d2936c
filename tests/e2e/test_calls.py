"""Calls through the real daemon with SIPp on both sides (issue #3 end-to-end)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.e2e.conftest import SCENARIOS, lab_config, uac, uas

pytestmark = pytest.mark.e2e

VIRGINIA = ("127.0.0.64", "127.0.0.65", "127.0.0.66")


def _messages(sipp: object) -> str:
    cwd: Path = sipp.cwd  # type: ignore[attr-defined]
    return "\n".join(p.read_text(errors="replace") for p in cwd.glob("*messages*"))


def _wait_probes(seconds: float = 1.5) -> None:
    # Give the first OPTIONS round time to mark the lab gateways UP.
    time.sleep(seconds)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_outbound_calls_complete_and_gateway_sees_rewrite(
        tmp_path: Path, daemon_factory: object, sipp_factory: object, transport: str) -> None:
    t = "u1" if transport == "udp" else "t1"
    gateways = [uas(sipp_factory, ip, transport=t) for ip in VIRGINIA]
    daemon = daemon_factory(lab_config(tmp_path, transport=transport))  # type: ignore[operator]
    _wait_probes()
    caller = uac(sipp_factory, "127.0.0.1:5080", calls=9, rate=9, transport=t)
    rc = caller.wait(40)
    assert rc == 0, caller.errors() + daemon.log()
    seen = "\n".join(_messages(g) for g in gateways)
    assert "INVITE sip:+14155550100@example.sip.ashburn-ix.twilio.com SIP/2.0" in seen
    assert f"Via: SIP/2.0/{transport.upper()} 127.0.0.3:5060;branch=z9hG4bK-se" in seen
    rr = "<sip:127.0.0.3:5060;lr>" if transport == "udp" else "<sip:127.0.0.3:5060;transport=tcp;lr>"
    assert f"Record-Route: {rr}" in seen
    assert "Max-Forwards: 69" in seen
    # Round-robin: every Virginia gateway took calls.
    for g in gateways:
        assert "INVITE sip:+14155550100@example.sip.ashburn-ix" in _messages(g)


def test_cancel_completes_with_487(tmp_path: Path, daemon_factory: object,
                                   sipp_factory: object) -> None:
    for ip in VIRGINIA:
        uas(sipp_factory, ip, scenario=SCENARIOS / "uas_cancel.xml")
    daemon = daemon_factory(lab_config(tmp_path))  # type: ignore[operator]
    _wait_probes()
    caller = uac(sipp_factory, "127.0.0.1:5080", calls=3, rate=3,
                 scenario=SCENARIOS / "uac_cancel.xml")
    rc = caller.wait(40)
    assert rc == 0, caller.errors() + daemon.log()


def test_inbound_call_reaches_pbx_and_bye_routes_back(
        tmp_path: Path, daemon_factory: object, sipp_factory: object) -> None:
    pbx = uas(sipp_factory, "127.0.0.10")
    daemon = daemon_factory(lab_config(tmp_path))  # type: ignore[operator]
    # "Twilio" calls from a Virginia gateway address to sipedge's outside listener.
    caller = uac(sipp_factory, "127.0.0.3:5060", calls=3, rate=3, ip="127.0.0.64", port=5077,
                 service="alice", scenario=SCENARIOS / "uac_inbound.xml")
    rc = caller.wait(40)
    assert rc == 0, caller.errors() + daemon.log()
    seen = _messages(pbx)
    # Passed through unchanged (strip_edge_params defaults to false).
    assert "INVITE sip:alice@127.0.0.10:5060;edge=ashburn-ix SIP/2.0" in seen
    assert "BYE " in seen
    # The BYE came through sipedge (its Via), not straight from the caller.
    assert "Via: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bK-se" in seen


def test_call_from_stranger_is_not_forwarded(tmp_path: Path, daemon_factory: object,
                                             sipp_factory: object) -> None:
    gateways = [uas(sipp_factory, ip) for ip in VIRGINIA]
    pbx = uas(sipp_factory, "127.0.0.10")
    daemon = daemon_factory(lab_config(tmp_path))  # type: ignore[operator]
    for target in ("127.0.0.1:5080", "127.0.0.3:5060"):
        caller = uac(sipp_factory, target, calls=1, rate=1, ip="127.0.0.99", port=5098,
                     timeout_s=4, name=f"stranger-{target}")
        rc = caller.wait(20)
        assert rc != 0
    seen = "\n".join(_messages(g) for g in (*gateways, pbx))
    assert "INVITE sip:" not in seen
    assert daemon.proc.poll() is None
