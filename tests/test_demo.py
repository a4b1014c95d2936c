"""``sipedge demo``: the real daemon in-process with simulated gateways and PBX.

Addresses: a block of their own (inside 127.0.9.1:5080, outside 127.0.9.3:5060, Virginia
127.0.9.64–66, Oregon 127.0.10.64–66, PBX 127.0.9.10:5060, admin 127.0.9.1:9093), so
these tests run beside the loopback lab (127.0.0.x / 127.0.1.x) in use.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from sipedge.cli import main
from sipedge.gateway.health import Health
from sipedge.gateway.pool import GatewayStatus
from sipedge.lab import demo
from sipedge.lab.topology import LabAddresses, demo_config
from sipedge.sip.address import Endpoint

ROOT = Path(__file__).resolve().parents[1]
BLOCK = LabAddresses(
    inside=Endpoint("udp", "127.0.9.1", 5080), outside=Endpoint("udp", "127.0.9.3", 5060),
    virginia=("127.0.9.64", "127.0.9.65", "127.0.9.66"),
    oregon=("127.0.10.64", "127.0.10.65", "127.0.10.66"),
    pbx=Endpoint("udp", "127.0.9.10", 5060), admin=Endpoint("tcp", "127.0.9.1", 9093))
ARGS = ["--inside", "127.0.9.1:5080", "--outside", "127.0.9.3:5060",
        "--virginia", "127.0.9.64,127.0.9.65,127.0.9.66",
        "--oregon", "127.0.10.64,127.0.10.65,127.0.10.66",
        "--pbx", "127.0.9.10:5060", "--admin", "127.0.9.1:9093"]


def bound(endpoint: Endpoint) -> bool:
    kind = socket.SOCK_DGRAM if endpoint.transport == "udp" else socket.SOCK_STREAM
    s = socket.socket(socket.AF_INET, kind)
    try:
        s.bind((endpoint.host, endpoint.port))
    except OSError:
        return True
    finally:
        s.close()
    return False


def open_sockets() -> int:
    """This process's socket descriptors (a loop's one-time wakeup pipe is not one)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the descriptor listdir itself used
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return count


def test_demo_answers_every_call_and_oregon_covers_virginia() -> None:
    sockets = open_sockets()
    out = io.StringIO()
    code, summary = demo.run(BLOCK, duration_s=12, rate=5, out=out, live=False)
    text = out.getvalue()
    assert code == 0, text
    assert summary.total_placed >= 50, text  # 12 s × 5 calls/s, both ways
    assert summary.placed[demo.OUT] > 20 and summary.placed[demo.IN] > 20
    assert summary.failed == 0 and summary.answered == summary.total_placed, text
    assert summary.failovers > 0, text
    oregon, virginia = summary.oregon_while_virginia_down()
    assert oregon > 0 and virginia == 0, text
    # Before the failure Virginia took everything; sipedge's own counters agree.
    first = summary.by_phase[0]
    assert first[(demo.OUT, "Oregon")] == 0 and first[(demo.OUT, "Virginia")] > 0
    assert sum(summary.sipedge_answered.values()) == summary.total_placed
    assert not summary.sipedge_failed
    # The printed summary says the same.
    assert "failed          0" in text
    assert f"Oregon took {oregon} calls and Virginia 0" in text
    assert "sockets         all closed" in text
    assert "UP -> DOWN" in text and "DOWN -> UP" in text  # one line per change, not a TTY
    assert "\x1b[" not in text
    # Nothing left bound, no socket left open.
    assert not [e for e in demo.lab_endpoints(BLOCK) if bound(e)]
    assert open_sockets() <= sockets


def test_demo_ctrl_c_exits_cleanly_with_the_summary() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "sipedge", "demo", "--duration", "60",
                             "--rate", "5", *ARGS], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if "phase 1/5" in line or not line:
                break
        time.sleep(1.5)  # calls in progress when the signal comes
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "sipedge demo interrupted after" in rest
    assert "failed          0" in rest, rest
    assert "sockets         all closed" in rest
    assert "Traceback" not in err
    assert not [e for e in demo.lab_endpoints(BLOCK) if bound(e)]


def test_demo_refuses_non_loopback_addresses(capsys: pytest.CaptureFixture[str]) -> None:
    # Twilio's real Virginia gateway: refused before anything is bound or sent.
    assert main(["demo", *ARGS[:4], "--virginia", "208.78.112.64"]) == 64
    assert "not a loopback address" in capsys.readouterr().err
    with pytest.raises(ValueError, match="loopback"):
        LabAddresses(pbx=Endpoint("udp", "10.0.0.10", 5060))


def test_demo_defaults_are_the_loopback_lab() -> None:
    config = demo_config(LabAddresses())
    assert [str(e) for e in config.listen] == ["udp:127.0.0.1:5080", "udp:127.0.0.3:5060"]
    assert [str(g.endpoint) for e in config.edges for g in e.gateways] == [
        "udp:127.0.0.64:5060", "udp:127.0.0.65:5060", "udp:127.0.0.66:5060",
        "udp:127.0.1.64:5060", "udp:127.0.1.65:5060", "udp:127.0.1.66:5060"]
    assert str(config.inside.pbx) == "udp:127.0.0.10:5060"
    assert config.admin.listen == Endpoint("tcp", "127.0.0.1", 9091)
    assert [e.localized_domain for e in config.edges] == [
        "example.sip.ashburn-ix.twilio.com", "example.sip.san-jose-ix.twilio.com"]


def _row(host: str, edge: str, state: Health) -> GatewayStatus:
    return GatewayStatus(id=f"{edge}/{host}:5060", edge=edge, region="", address=f"udp:{host}:5060",
                         priority=0, state=state, reason="", since=0.0, held_until=None,
                         last_code=None, last_rtt_s=None, probes=0, probe_failures=0,
                         call_failures=0, state_changes=0)


def test_live_table_shows_states_counts_failovers_and_pdd() -> None:
    view = demo.View(
        elapsed_s=21.0, duration_s=40, rate=4, phase=3,
        gateways=[_row("127.0.0.64", "ashburn-ix", Health.DOWN),
                  _row("127.0.1.64", "san-jose-ix", Health.UP)],
        answered_by={"127.0.0.64": 7, "127.0.1.64": 5}, placed_by={"127.0.1.64": 3},
        placed=Counter({demo.OUT: 40, demo.IN: 39}), in_progress=6, calls_per_s=4.0,
        answered=73, failed=0, failovers=9,
        failovers_by={("ashburn-ix", "san-jose-ix", "transport error"): 9},
        pdd_window=(0.021, 1.02), pdd_all=(0.02, 0.5), events=["+ 8.0 s  phase 2/5"])
    text = "\n".join(demo.render_table(view))
    assert "phase 4/5: all Virginia down" in text
    assert "udp:127.0.0.64:5060" in text and "DOWN" in text and "UP" in text
    assert "answered 73   failed 0   failovers 9" in text
    assert "ashburn-ix → san-jose-ix (transport error) 9" in text
    assert "p50 21 ms p95 1020 ms" in text
    assert "placed 79" in text


def test_live_screen_redraws_from_cursor_home() -> None:
    out = io.StringIO()
    screen = demo._Screen(out, live=True, start=0.0)
    screen.frame(["a", "b"])
    screen.frame(["c"])
    screen.line(1.0, "not printed on a terminal")
    screen.end()
    text = out.getvalue()
    assert text.startswith("\x1b[?25l\x1b[2J\x1b[H")  # first frame clears once
    assert "\x1b[Hc\x1b[K\n\x1b[J" in text  # later frames: home, line, clear to the end
    assert "not printed" not in text
    assert text.endswith("\x1b[?25h\n")  # the cursor comes back


def test_quantile_nearest_rank() -> None:
    assert demo.quantile([], 0.5) is None
    assert demo.quantile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert demo.quantile([float(i) for i in range(1, 101)], 0.95) == 95.0
