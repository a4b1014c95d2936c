"""End-to-end fixtures: the real daemon as a subprocess, SIPp peers on loopback.

Addresses are the loopback lab (../shared/README.md): PBX 127.0.0.1 → sipedge inside
127.0.0.1:5080, sipedge outside 127.0.0.3:5060, gateways 127.0.0.64–66 / 127.0.1.64–66,
PBX callee 127.0.0.10:5060, stranger 127.0.0.99. Nothing leaves 127.0.0.0/8.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SHARED = Path(os.environ.get("SIPEDGE_SHARED", ROOT.parent / "shared"))
BENCH_SCENARIOS = SHARED / "bench" / "scenarios"
SCENARIOS = HERE / "scenarios"

pytestmark = pytest.mark.e2e

LAB_TOML = """
[inside]
listen = ["udp:127.0.0.1:5080", "tcp:127.0.0.1:5080"]
allow  = ["127.0.0.1/32"]
pbx    = "127.0.0.10:5060{pbx_transport}"

[outside]
listen = ["udp:127.0.0.3:5060", "tcp:127.0.0.3:5060"]
domain = "example"

[[edges]]
name     = "ashburn-ix"
gateways = {virginia}
transport = "{transport}"

[[edges]]
name     = "san-jose-ix"
gateways = {oregon}
transport = "{transport}"

[probe]
interval_up_s   = {interval_up}
interval_down_s = {interval_down}
timeout_s       = 0.5
down_after      = {down_after}
up_after        = 2

[failover]
no_provisional_timeout_s = {no_prov}

[inbound]
reject_unknown = "{reject_unknown}"
"""


def lab_config(tmp_path: Path, *, transport: str = "udp", pbx_transport: str = "",
               virginia: str = '["127.0.0.64", "127.0.0.65", "127.0.0.66"]',
               oregon: str = '["127.0.1.64", "127.0.1.65", "127.0.1.66"]',
               interval_up: float = 0.5, interval_down: float = 0.5, down_after: int = 2,
               no_prov: float = 1.0, reject_unknown: str = "drop", extra: str = "") -> Path:
    """Write a lab config with fast probes for tests; returns its path."""
    text = LAB_TOML.format(transport=transport, pbx_transport=pbx_transport,
                           virginia=virginia, oregon=oregon, interval_up=interval_up,
                           interval_down=interval_down, down_after=down_after,
                           no_prov=no_prov, reject_unknown=reject_unknown) + extra
    path = tmp_path / "sipedge.toml"
    path.write_text(text)
    return path


def udp_bound(host: str, port: int) -> bool:
    """True when something is bound to host:port/udp (probe by trying to bind)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind((host, port))
    except OSError:
        return True
    finally:
        s.close()
    return False


#: What systemd hands a service; a daemon under test gets these only when a test says so.
_SERVICE_ENV = frozenset({"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM"})


class Daemon:
    """``sipedge run`` as a subprocess; stderr captured to a file for assertions.

    Args:
        config: the config file.
        log: where the daemon's stdout/stderr go.
        env: extra environment (``NOTIFY_SOCKET``, ``WATCHDOG_USEC``…) over ours.
        log_level: ``--log-level`` (None: the config's ``[log] level`` rules, reloads too).
    """

    def __init__(self, config: Path, log: Path, *, env: Mapping[str, str] | None = None,
                 log_level: str | None = "info") -> None:
        self.config = config
        self.log_path = log
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        args = [sys.executable, "-m", "sipedge", "run", "--config", str(config)]
        if log_level is not None:
            args += ["--log-level", log_level]
        # Never the test runner's own service manager: a CI job running under systemd
        # must not get the daemon's READY=1/WATCHDOG=1 (nor its journal log format).
        inherited = {k: v for k, v in os.environ.items() if k not in _SERVICE_ENV}
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=ROOT, env={**inherited, **(env or {})})
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sipedge exited: {self.log()}")
            if udp_bound("127.0.0.1", 5080) and udp_bound("127.0.0.3", 5060):
                break
            time.sleep(0.05)
        else:
            raise RuntimeError(f"sipedge did not bind: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def send_signal(self, sig: signal.Signals) -> None:
        """Signal the daemon (SIGHUP reloads, SIGTERM drains then stops)."""
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        """The exit code once the daemon has exited (``TimeoutExpired`` after ``timeout``)."""
        return self.proc.wait(timeout)

    def wait_log(self, text: str, count: int = 1, timeout: float = 10.0) -> str:
        """Wait until ``text`` occurs ``count`` times in the log; the log."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.log()
            if log.count(text) >= count:
                return log
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"{text!r} not seen {count}x in the log:\n{log[-5000:]}")
            time.sleep(0.05)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def admin_get(path: str, *, host: str = "127.0.0.1:9191", timeout: float = 3.0) -> tuple[int, str]:
    """GET ``path`` from the daemon's admin listener (never through a proxy): status, body."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://{host}{path}", timeout=timeout) as resp:
            return int(resp.status), resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode("utf-8", "replace")


class Sipp:
    """One SIPp process (UAS in the background or UAC to completion)."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        self.cwd = cwd
        cwd.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(["sipp", *args, "-nostdin", "-trace_err"], cwd=cwd,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def errors(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in self.cwd.glob("*errors*"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stderr is not None:
            self.proc.stderr.close()


@pytest.fixture(scope="session", autouse=True)
def _need_sipp() -> None:
    if shutil.which("sipp") is None:
        pytest.fail("SIPp is not installed: `make test` installs it via ../shared/bench/install.sh")


@pytest.fixture
def sipp_factory(tmp_path: Path) -> Iterator[object]:
    started: list[Sipp] = []

    def make(name: str, args: list[str]) -> Sipp:
        s = Sipp(args, tmp_path / name)
        started.append(s)
        return s

    yield make
    for s in started:
        s.stop()


def uas(make: object, ip: str, *, transport: str = "u1", scenario: Path | None = None,
        port: int = 5060, tag: str = "") -> Sipp:
    """A SIPp gateway/PBX UAS on ip:port (``tag`` names a restarted one's own folder)."""
    scen = scenario or BENCH_SCENARIOS / "uas.xml"
    if transport == "u1" and udp_bound(ip, port):
        pytest.fail(f"{ip}:{port}/udp is taken (a bench UAS left running? "
                    "../shared/bench/uas.sh stop all)")
    sipp = make(f"uas-{ip}-{port}{tag}", ["-sf", str(scen), "-i", ip, "-p", str(port), "-t",  # type: ignore[operator]
                                     transport, "-m", "1000000", "-trace_msg",
                                     "-message_file", "messages.log"])
    deadline = time.monotonic() + 5
    while transport == "u1" and not udp_bound(ip, port) and time.monotonic() < deadline:
        time.sleep(0.05)
    return sipp  # type: ignore[no-any-return]


def uac(make: object, target: str, *, calls: int, rate: int = 10, ip: str = "127.0.0.1",
        port: int = 5099, transport: str = "u1", scenario: Path | None = None,
        service: str = "+14155550100", name: str = "uac", timeout_s: int = 30,
        extra: Sequence[str] = ()) -> Sipp:
    """A SIPp caller placing ``calls`` calls at ``rate``/s to ``target``.

    ``extra`` adds SIPp options (``-d`` hold time in ms; ``sipp_counts`` needs
    ``-trace_stat``, which ``STATS`` holds).
    """
    scen = scenario or BENCH_SCENARIOS / "uac.xml"
    return make(name, ["-sf", str(scen), "-s", service, "-i", ip, "-p", str(port), "-t",  # type: ignore[operator, no-any-return]
                       transport, "-m", str(calls), "-r", str(rate), "-timeout",
                       f"{timeout_s}s", "-recv_timeout", "10000", "-max_recv_loops", "1000",
                       "-trace_msg", "-message_file", "messages.log", *extra, target])


#: SIPp options writing its statistics CSV (``stats.csv``, final line at exit).
STATS = ("-trace_stat", "-stf", "stats.csv")


def sipp_counts(sipp: Sipp) -> dict[str, int]:
    """The cumulative call counts of a finished SIPp run with ``STATS``.

    Returns:
        ``{"total": …, "successful": …, "failed": …}`` from the CSV's last line.
    """
    lines = (sipp.cwd / "stats.csv").read_text(errors="replace").splitlines()
    header, last = lines[0].split(";"), lines[-1].split(";")
    row = dict(zip(header, last, strict=False))
    return {"total": int(row["TotalCallCreated"]),
            "successful": int(row["SuccessfulCall(C)"]),
            "failed": int(row["FailedCall(C)"])}


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[object]:
    started: list[Daemon] = []

    def make(config: Path, **kwargs: object) -> Daemon:
        d = Daemon(config, tmp_path / f"sipedge-{len(started)}.log", **kwargs)  # type: ignore[arg-type]
        started.append(d)
        return d

    yield make
    for d in started:
        d.stop()
