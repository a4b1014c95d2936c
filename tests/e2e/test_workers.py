"""``[process] workers = 2``: the supervisor, two workers, one service (issue 14).

The real ``sipedge run`` with SIPp on the loopback lab. Worker ports derive from the
listeners (port + 100 × (index + 1)): inside 127.0.0.1:5180 / :5280, outside
127.0.0.3:5160 / :5260.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import SCENARIOS, STATS, admin_get, lab_config, sipp_counts, uac, uas
from tests.e2e.test_service import _NotifySocket

pytestmark = pytest.mark.e2e

VIRGINIA = ("127.0.0.64", "127.0.0.65", "127.0.0.66")
WORKERS = '\n[process]\nworkers = 2\n\n[admin]\nlisten = "127.0.0.1:9191"\n'


def _messages(sipp: object) -> str:
    cwd: Path = sipp.cwd  # type: ignore[attr-defined]
    return "\n".join(p.read_text(errors="replace") for p in cwd.glob("*messages*"))


def _metric(body: str, name: str) -> float:
    """The sum of every sample of ``name`` (any labels) in an exposition."""
    total = 0.0
    for line in body.splitlines():
        if line.startswith(name) and line[len(name)] in " {":
            total += float(line.rsplit(" ", 1)[1])
    return total


def _ready(daemon: object) -> None:
    daemon.wait_log("sipedge up: 2 workers ready", timeout=20)  # type: ignore[attr-defined]
    time.sleep(1.5)  # the first probe round marks the lab gateways UP


def _pids(log: str) -> dict[int, list[int]]:
    found: dict[int, list[int]] = {}
    for index, pid in re.findall(r"worker (\d) started \(pid (\d+)\)", log):
        found.setdefault(int(index), []).append(int(pid))
    return found


def test_two_workers_share_one_trunk_and_one_prober(
        tmp_path: Path, daemon_factory: object, sipp_factory: object) -> None:
    gateways = [uas(sipp_factory, ip) for ip in VIRGINIA]
    daemon = daemon_factory(lab_config(tmp_path, extra=WORKERS))  # type: ignore[operator]
    _ready(daemon)
    # One PBX trunk: a single source address and port for every call.
    caller = uac(sipp_factory, "127.0.0.1:5080", calls=60, rate=30)
    rc = caller.wait(60)
    assert rc == 0, caller.errors() + daemon.log()
    seen = "\n".join(_messages(g) for g in gateways)
    # Both workers carried calls, each naming its own outside port in Via and
    # Record-Route (so the gateways' answers and BYEs come back to it).
    for port in (5160, 5260):
        assert f"Via: SIP/2.0/UDP 127.0.0.3:{port};branch=z9hG4bK-se" in seen
        assert f"Record-Route: <sip:127.0.0.3:{port};lr>" in seen
    # Only worker 0 probes: no OPTIONS leaves worker 1's port.
    options = [block for block in seen.split("OPTIONS sip:")[1:]]
    assert options
    assert not any("127.0.0.3:5260" in block.split("\n\n")[0] for block in options)
    status, body = admin_get("/metrics")
    assert status == 200
    assert _metric(body, "sipedge_workers") == 2
    assert _metric(body, "sipedge_workers_ready") == 2
    assert _metric(body, "sipedge_calls_answered_total") == 60
    # Gateway states come once (from worker 0), not summed over the workers.
    assert _metric(body, "sipedge_gateway_up") == 6 - 3  # Oregon has no UAS running
    status, ready = admin_get("/readyz")
    assert (status, ready) == (200, "ready (2/2 workers)\n")
    assert daemon.stop() == 0  # type: ignore[attr-defined]
    assert "sipedge stopped" in daemon.log()  # type: ignore[attr-defined]


def test_inbound_calls_with_workers(tmp_path: Path, daemon_factory: object,
                                    sipp_factory: object) -> None:
    pbx = uas(sipp_factory, "127.0.0.10")
    daemon = daemon_factory(lab_config(tmp_path, extra=WORKERS))  # type: ignore[operator]
    _ready(daemon)
    caller = uac(sipp_factory, "127.0.0.3:5060", calls=20, rate=20, ip="127.0.0.64",
                 port=5077, service="alice", scenario=SCENARIOS / "uac_inbound.xml")
    rc = caller.wait(40)
    assert rc == 0, caller.errors() + daemon.log()
    seen = _messages(pbx)
    assert "BYE " in seen
    for port in (5180, 5280):
        assert f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-se" in seen


def test_a_killed_worker_is_restarted_and_calls_continue(
        tmp_path: Path, daemon_factory: object, sipp_factory: object) -> None:
    for ip in VIRGINIA:
        uas(sipp_factory, ip)
    daemon = daemon_factory(lab_config(tmp_path, extra=WORKERS))  # type: ignore[operator]
    _ready(daemon)
    victim = _pids(daemon.log())[1][0]  # type: ignore[attr-defined]
    os.kill(victim, signal.SIGKILL)
    log = daemon.wait_log("worker 1 started", count=2, timeout=10)  # type: ignore[attr-defined]
    assert f"worker 1 (pid {victim}) exited (killed by SIGKILL); restarting" in log
    daemon.wait_log("worker 1 ready", timeout=10)  # type: ignore[attr-defined]
    caller = uac(sipp_factory, "127.0.0.1:5080", calls=20, rate=20, name="after")
    rc = caller.wait(40)
    assert rc == 0, caller.errors() + daemon.log()  # type: ignore[attr-defined]
    _, body = admin_get("/metrics")
    assert _metric(body, "sipedge_worker_restarts_total") == 1


def test_reload_reaches_every_worker_and_listener_changes_are_refused(
        tmp_path: Path, daemon_factory: object, sipp_factory: object) -> None:
    path = lab_config(tmp_path, extra=WORKERS)
    daemon = daemon_factory(path)  # type: ignore[operator]
    _ready(daemon)
    daemon.send_signal(signal.SIGHUP)  # type: ignore[attr-defined]
    log = daemon.wait_log("reloaded: every worker runs the new config")  # type: ignore[attr-defined]
    assert log.count(" reloaded ") >= 2  # each worker logged its own reload
    path.write_text(path.read_text().replace("workers = 2", "workers = 3"))
    daemon.send_signal(signal.SIGHUP)  # type: ignore[attr-defined]
    daemon.wait_log("listeners and [process] change only at a restart")  # type: ignore[attr-defined]
    assert daemon.proc.poll() is None  # type: ignore[attr-defined]


def test_a_second_instance_cannot_take_the_ports(tmp_path: Path,
                                                 daemon_factory: object) -> None:
    path = lab_config(tmp_path, extra=WORKERS)
    daemon = daemon_factory(path)  # type: ignore[operator]
    _ready(daemon)
    second = subprocess.run(
        [os.sys.executable, "-m", "sipedge", "run", "--config", str(path)],  # type: ignore[attr-defined]
        capture_output=True, text=True, timeout=20)
    assert second.returncode == 71, second.stderr
    assert "cannot listen" in second.stderr
    assert daemon.proc.poll() is None  # type: ignore[attr-defined]


def test_cancel_finds_its_invite_in_the_worker_that_owns_the_call(
        tmp_path: Path, daemon_factory: object, sipp_factory: object) -> None:
    # The CANCEL lands on the shared socket (whichever worker reads it) and is steered by
    # its Call-ID to the worker holding the INVITE: every call ends 487, none 481.
    for ip in VIRGINIA:
        uas(sipp_factory, ip, scenario=SCENARIOS / "uas_cancel.xml")
    daemon = daemon_factory(lab_config(tmp_path, extra=WORKERS))  # type: ignore[operator]
    _ready(daemon)
    caller = uac(sipp_factory, "127.0.0.1:5080", calls=12, rate=12,
                 scenario=SCENARIOS / "uac_cancel.xml")
    rc = caller.wait(40)
    assert rc == 0, caller.errors() + daemon.log()  # type: ignore[attr-defined]


def test_tcp_calls_with_workers(tmp_path: Path, daemon_factory: object,
                                sipp_factory: object) -> None:
    # A TCP connection stays with the worker that accepted it; that worker's own TCP port
    # is in the Record-Route for the gateway's in-dialog requests.
    gateways = [uas(sipp_factory, ip, transport="t1") for ip in VIRGINIA]
    daemon = daemon_factory(lab_config(tmp_path, transport="tcp", extra=WORKERS))  # type: ignore[operator]
    _ready(daemon)
    caller = uac(sipp_factory, "127.0.0.1:5080", calls=10, rate=10, transport="t1")
    rc = caller.wait(40)
    assert rc == 0, caller.errors() + daemon.log()  # type: ignore[attr-defined]
    seen = "\n".join(_messages(g) for g in gateways)
    assert re.search(r"Record-Route: <sip:127\.0\.0\.3:5[12]60;transport=tcp;lr>", seen)


def test_systemd_sees_one_service(tmp_path: Path, daemon_factory: object,
                                  sipp_factory: object) -> None:
    # The supervisor is systemd's main process: READY=1 once both workers are ready, its
    # own watchdog pings, RELOADING=1 … READY=1 around a reload of every worker, then
    # STOPPING=1; the workers' notifications go to the supervisor, not to systemd.
    for ip in (*VIRGINIA, "127.0.1.64", "127.0.1.65", "127.0.1.66"):
        uas(sipp_factory, ip)
    notify = _NotifySocket(tmp_path / "notify.sock")
    try:
        daemon = daemon_factory(  # type: ignore[operator]
            lab_config(tmp_path, extra=WORKERS),
            env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000"})
        notify.wait_for("READY", "1", timeout=20)
        up = "ready: 2/2 workers; 3/3 ashburn-ix up, 3/3 san-jose-ix up, 0 calls"
        notify.wait_for("STATUS", up, timeout=10)
        time.sleep(1.5)  # a few of the supervisor's watchdog periods (0.5 s)
        daemon.send_signal(signal.SIGHUP)
        notify.wait_for("READY", "1", count=2)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(15) == 0, daemon.log()
    finally:
        notify.close()
    seen = notify.datagrams
    assert seen[0][1]["READY"] == "1"
    assert notify.bound_at_ready is True
    readies = notify.having("READY", "1")
    (reloading,) = notify.having("RELOADING", "1")
    (stopping,) = notify.having("STOPPING", "1")
    assert len(readies) == 2 and readies[0] < reloading < readies[1] < stopping
    pings = [t for t, f in seen if f.get("WATCHDOG") == "1"]
    assert len(pings) >= 3 and max(b - a for a, b in itertools.pairwise(pings)) < 1.0


def test_sigterm_drains_every_worker(tmp_path: Path, daemon_factory: object,
                                     sipp_factory: object) -> None:
    for ip in VIRGINIA:
        uas(sipp_factory, ip)
    daemon = daemon_factory(lab_config(tmp_path, extra=WORKERS))  # type: ignore[operator]
    _ready(daemon)
    held = uac(sipp_factory, "127.0.0.1:5080", calls=40, rate=40, name="held",
               extra=(*STATS, "-d", "3000"))
    time.sleep(1.5)  # every call set up and held
    daemon.send_signal(signal.SIGTERM)  # type: ignore[attr-defined]
    daemon.wait_log("stopping: draining 2 workers")  # type: ignore[attr-defined]
    late = uac(sipp_factory, "127.0.0.1:5080", calls=1, rate=1, port=5098, name="late",
               scenario=SCENARIOS / "uac_503.xml", extra=STATS)
    assert late.wait(15) == 0, late.errors() + daemon.log()  # type: ignore[attr-defined]
    assert held.wait(30) == 0, held.errors() + daemon.log()  # type: ignore[attr-defined]
    assert sipp_counts(held) == {"total": 40, "successful": 40, "failed": 0}
    assert daemon.wait(15) == 0  # type: ignore[attr-defined]
    log = daemon.log()  # type: ignore[attr-defined]
    assert log.count("drained: every call ended") == 2
    assert "exited (exit code 0)" in log and "killed by" not in log
