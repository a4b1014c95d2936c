"""The daemon as a service (issue 11 end-to-end): reload, drain, metrics, systemd notify.

Everything runs against the real ``sipedge run`` subprocess over loopback sockets, with SIPp
as the PBX and the gateways, signals sent the way systemd sends them (ExecReload=HUP,
KillSignal=TERM), the admin listener on 127.0.0.1:9191 and, for the notify protocol, a fake
``NOTIFY_SOCKET``. Bounds on time are generous on purpose (CI machines are noisy); what is
asserted exactly is what must never vary: failed calls, exit codes, the order of events.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import (
    BENCH_SCENARIOS,
    SCENARIOS,
    STATS,
    Daemon,
    Sipp,
    admin_get,
    lab_config,
    sipp_counts,
    uac,
    uas,
    udp_bound,
)

pytestmark = pytest.mark.e2e

VIRGINIA = ("127.0.0.64", "127.0.0.65", "127.0.0.66")
OREGON = ("127.0.1.64", "127.0.1.65", "127.0.1.66")
ADMIN = '\n[admin]\nlisten = "127.0.0.1:9191"\n'
#: Virginia's domain and Oregon's in the Request-URI the gateways see (rewritten by sipedge).
ASHBURN_URI = "INVITE sip:+14155550100@example.sip.ashburn-ix.twilio.com SIP/2.0"
SAN_JOSE_URI = "INVITE sip:+14155550100@example.sip.san-jose-ix.twilio.com SIP/2.0"


def _log_level(level: str) -> str:
    return f'\n[log]\nlevel = "{level}"\n'


def _messages(sipp: Sipp) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sipp.cwd.glob("*messages*"))


def _invites(sipp: Sipp) -> list[str]:
    return [line for line in _messages(sipp).splitlines() if line.startswith("INVITE sip:")]


def _received(sipp: Sipp) -> Iterator[tuple[float, str]]:
    """(wall time, text) of each message SIPp received, from its ``-trace_msg`` log."""
    blocks = re.split(r"^-{20,} (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)\n", _messages(sipp),
                      flags=re.M)
    for stamp, body in zip(blocks[1::2], blocks[2::2], strict=True):
        if " message received " in body.split("\n", 1)[0]:
            when = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f").timestamp()
            yield when, body.split("\n", 1)[1].lstrip("\n")


def _wait_up(expected: int, timeout: float = 8.0) -> None:
    """Until ``expected`` gateways are UP (``sipedge_gateway_up``), via the admin API."""
    deadline = time.monotonic() + timeout
    up = -1
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            up = sum(int(v) for _, v in _samples(_scrape(), "sipedge_gateway_up"))
            if up >= expected:
                return
        time.sleep(0.1)
    raise AssertionError(f"{up} gateways UP, expected {expected}")


def _scrape() -> str:
    status, body = admin_get("/metrics")
    assert status == 200, body
    return body


def _samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of every sample called ``name`` in an exposition."""
    return [(dict(s.labels), s.value) for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == name]


def _total(text: str, name: str, **labels: str) -> float:
    return sum(v for ls, v in _samples(text, name)
               if all(ls.get(k) == want for k, want in labels.items()))


# -- 1. reload under load -------------------------------------------------------------------


def _swap_edges(path: Path) -> None:
    """Rewrite the lab config with its two [[edges]] blocks in the other order."""
    text = path.read_text()
    first = text.index("[[edges]]")
    second = text.index("[[edges]]", first + 1)
    end = text.index("[probe]")
    path.write_text(text[:first] + text[second:end] + text[first:second] + text[end:])


def _segments(log: str, marker: str) -> list[str]:
    """The log cut at each line containing ``marker`` (the marker lines dropped)."""
    parts: list[list[str]] = [[]]
    for line in log.splitlines():
        if marker in line:
            parts.append([])
        else:
            parts[-1].append(line)
    return ["\n".join(p) for p in parts]


def test_reload_under_load_loses_no_call_and_follows_the_new_edges(
        tmp_path: Path, daemon_factory: object, sipp_factory: object) -> None:
    gateways = {ip: uas(sipp_factory, ip) for ip in (*VIRGINIA, *OREGON)}
    lab_config(tmp_path, extra=ADMIN + _log_level("info"))  # probes every 0.5 s
    # No --log-level: the file's [log] level applies, on reload too.
    daemon: Daemon = daemon_factory(tmp_path / "sipedge.toml", log_level=None)  # type: ignore[operator]
    started = time.monotonic()
    _wait_up(6)
    caller = uac(sipp_factory, "127.0.0.1:5080", calls=300, rate=30, name="load", extra=STATS,
                 timeout_s=60)

    time.sleep(2.5)
    # (a) probes every 2 s instead of 0.5 s, debug logging, and a spare Oregon gateway not
    # online yet (nothing listens on 127.0.1.67: its refused probes are DEBUG lines).
    before = _scrape()
    probes_a0 = _total(before, "sipedge_probes_sent_total")
    rate_before = probes_a0 / (time.monotonic() - started)
    oregon_spare = '["127.0.1.64", "127.0.1.65", "127.0.1.66", "127.0.1.67"]'
    lab_config(tmp_path, interval_up=2.0, interval_down=2.0, oregon=oregon_spare,
               extra=ADMIN + _log_level("debug"))
    daemon.send_signal(signal.SIGHUP)
    daemon.wait_log("reloaded", 1)
    time.sleep(0.5)
    t_a, probes_a = time.monotonic(), _total(_scrape(), "sipedge_probes_sent_total")

    time.sleep(2.5)
    # (b) Oregon (san-jose-ix) first, Virginia second.
    rate_after = (_total(_scrape(), "sipedge_probes_sent_total") - probes_a) / (
        time.monotonic() - t_a)
    _swap_edges(lab_config(tmp_path, interval_up=2.0, interval_down=2.0, oregon=oregon_spare,
                           extra=ADMIN + _log_level("debug")))
    daemon.send_signal(signal.SIGHUP)
    daemon.wait_log("reloaded", 2)

    time.sleep(3.0)
    # (c) back to the file the daemon started with.
    lab_config(tmp_path, extra=ADMIN + _log_level("info"))
    daemon.send_signal(signal.SIGHUP)
    daemon.wait_log("reloaded", 3)

    rc = caller.wait(60)
    log = daemon.log()
    assert rc == 0, caller.errors() + log[-5000:]
    assert sipp_counts(caller) == {"total": 300, "successful": 300, "failed": 0}
    # Three reloads reset no counter (the same gateways keep their figures too).
    _assert_not_decreased(_counters(before), _counters(_scrape()), "across the reloads")
    # A few more calls on the final config (however late (c) came on a slow machine).
    tail = uac(sipp_factory, "127.0.0.1:5080", calls=6, rate=6, name="tail", extra=STATS)
    assert tail.wait(30) == 0, tail.errors() + daemon.log()
    log = daemon.log()
    reloads = [line for line in log.splitlines() if "reloaded" in line]
    assert len(reloads) == 3, reloads
    assert "edges ashburn-ix, san-jose-ix, 7 gateways" in reloads[0]
    assert "edges san-jose-ix, ashburn-ix, 7 gateways" in reloads[1]
    assert "edges ashburn-ix, san-jose-ix, 6 gateways" in reloads[2]
    assert "reload refused" not in log and "Traceback" not in log

    # The probe interval took effect (12 probes/s before; 7 gateways / 2 s after).
    assert rate_after < rate_before / 2, (rate_before, rate_after)
    # The log level took effect: DEBUG lines only while the file said debug.
    before_a, a_to_b, b_to_c, after_c = _segments(log, "reloaded")
    assert " DEBUG " not in before_a and " DEBUG " not in after_c
    assert " DEBUG " in a_to_b + b_to_c

    # Calls followed the edge list in force when they started: Virginia, then Oregon
    # between (b) and (c), then Virginia again (the daemon's own call lines, in order).
    def edges_of(segment: str) -> set[str]:
        return set(re.findall(r"call \S+ started outbound via (\S+)", segment))

    assert edges_of(before_a) == edges_of(a_to_b) == edges_of(after_c) == {"ashburn-ix"}
    assert len(re.findall(r"call \S+ started outbound", after_c)) >= 6
    assert edges_of(b_to_c) == {"san-jose-ix"}
    moved = len(re.findall(r"call \S+ started outbound via san-jose-ix", b_to_c))
    assert moved >= 30, moved  # ~3 s of 30 calls/s
    # ... and on the wire: each side's gateways got exactly their calls, rewritten.
    virginia_invites = [i for ip in VIRGINIA for i in _invites(gateways[ip])]
    oregon_invites = [i for ip in OREGON for i in _invites(gateways[ip])]
    assert set(virginia_invites) == {ASHBURN_URI}
    assert set(oregon_invites) == {SAN_JOSE_URI}
    assert len(oregon_invites) == moved
    assert len(virginia_invites) == 300 + 6 - moved
    assert all(_invites(gateways[ip]) for ip in OREGON)  # round-robin inside Oregon too
    print(f"reload: 300 offered, 300 completed, 0 failed; {moved} via san-jose-ix after (b); "
          f"probes {rate_before:.1f}/s before (a), {rate_after:.1f}/s after")


# -- 2. invalid reload ----------------------------------------------------------------------


def test_invalid_reload_keeps_the_running_config(
        tmp_path: Path, daemon_factory: object, sipp_factory: object) -> None:
    for ip in VIRGINIA:
        uas(sipp_factory, ip)
    path = lab_config(tmp_path, oregon='["127.0.1.64"]', extra=ADMIN)
    daemon: Daemon = daemon_factory(path)  # type: ignore[operator]
    _wait_up(3)

    path.write_text(path.read_text() + 'lisen = "127.0.0.1:9192"\n')  # typo under [admin]
    daemon.send_signal(signal.SIGHUP)
    log = daemon.wait_log("reload refused", 1)
    assert (f"reload refused, still running the previous config: {path}: admin.lisen: "
            "unknown key; expected one of listen") in log

    path.write_text(path.read_text() + "[probe\n")  # not TOML at all
    daemon.send_signal(signal.SIGHUP)
    log = daemon.wait_log("reload refused", 2)
    refused = [line for line in log.splitlines() if "reload refused" in line]
    assert re.search(rf"config: {re.escape(str(path))}: \S+: \S", refused[1]), refused[1]
    assert "reloaded" not in log

    # Still serving on the old config: calls complete, ready, same gateways.
    caller = uac(sipp_factory, "127.0.0.1:5080", calls=10, rate=10, extra=STATS)
    assert caller.wait(30) == 0, caller.errors() + daemon.log()
    assert sipp_counts(caller) == {"total": 10, "successful": 10, "failed": 0}
    assert admin_get("/readyz") == (200, "ready\n")
    metrics = _scrape()
    assert _total(metrics, "sipedge_state", state="ready") == 1
    assert _total(metrics, "sipedge_edge_gateways") == 4
    assert daemon.proc.poll() is None


# -- 3. drain -------------------------------------------------------------------------------


def _wait_metric(name: str, at_least: float, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    value = 0.0
    while time.monotonic() < deadline:
        value = _total(_scrape(), name)
        if value >= at_least:
            break
        time.sleep(0.1)
    return value


def _wait_exit(daemon: Daemon, timeout: float) -> tuple[int, float]:
    """The daemon's exit code and the wall time it was seen to exit (20 ms polls)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rc = daemon.proc.poll()
        if rc is not None:
            return rc, time.time()
        time.sleep(0.02)
    raise AssertionError(f"sipedge still running after {timeout} s:\n{daemon.log()[-3000:]}")


def test_sigterm_drains_held_calls_then_exits_0(
        tmp_path: Path, daemon_factory: object, sipp_factory: object) -> None:
    gateways = [uas(sipp_factory, ip) for ip in VIRGINIA]
    daemon: Daemon = daemon_factory(lab_config(tmp_path, oregon='["127.0.1.64"]', extra=ADMIN))  # type: ignore[operator]
    _wait_up(3)
    # 60 calls in one second, each held 4 s after its ACK, then BYE.
    held = uac(sipp_factory, "127.0.0.1:5080", calls=60, rate=60, name="held",
               extra=(*STATS, "-d", "4000"))
    in_progress = _wait_metric("sipedge_calls_in_progress", 60, timeout=3.0)
    assert in_progress >= 50, in_progress
    daemon.send_signal(signal.SIGTERM)
    sigterm_at = time.time()

    # /readyz says 503 during the drain (from the moment the signal is handled) ...
    deadline = time.monotonic() + 2.0
    ready = admin_get("/readyz")
    while ready[0] != 503 and time.monotonic() < deadline:
        time.sleep(0.02)
        ready = admin_get("/readyz")
    assert ready == (503, "not ready: draining\n")
    # ... and a new call is refused with 503 + Retry-After, never reaching a gateway.
    late = uac(sipp_factory, "127.0.0.1:5080", calls=1, rate=1, port=5098, name="late",
               scenario=SCENARIOS / "uac_503.xml", extra=STATS)
    assert late.wait(15) == 0, late.errors() + daemon.log()
    assert sipp_counts(late) == {"total": 1, "successful": 1, "failed": 0}
    assert "SIP/2.0 503 Draining" in _messages(late)
    metrics = _scrape()
    assert _total(metrics, "sipedge_calls_refused_draining_total") == 1
    assert _total(metrics, "sipedge_state", state="draining") == 1
    assert _total(metrics, "sipedge_calls_in_progress") >= 1  # the held calls still are
    assert admin_get("/readyz") == (503, "not ready: draining\n")
    assert daemon.proc.poll() is None

    # Every held call completes its BYE/200 through sipedge.
    assert held.wait(30) == 0, held.errors() + daemon.log()
    assert sipp_counts(held) == {"total": 60, "successful": 60, "failed": 0}
    bye_oks = [when for when, text in _received(held)
               if text.startswith("SIP/2.0 200") and "CSeq: 2 BYE" in text]
    assert len(bye_oks) == 60
    assert sum(len(_invites(g)) for g in gateways) == 60  # the refused call went nowhere
    assert sum(_messages(g).count("\nBYE sip:") for g in gateways) == 60

    # Then the daemon exits 0, promptly, long before drain_timeout_s (30 s).
    rc, exited_at = _wait_exit(daemon, timeout=15)
    log = daemon.log()
    assert rc == 0, log[-3000:]
    assert "drained: every call ended" in log
    assert "drain timed out" not in log
    last_bye = max(bye_oks)
    assert exited_at - last_bye < 3.0, (exited_at - last_bye)
    assert exited_at - sigterm_at < 15.0
    print(f"drain: {in_progress:g} calls in progress at SIGTERM; 60/60 completed; "
          f"exit {rc} {exited_at - last_bye:.2f} s after the last BYE's 200, "
          f"{exited_at - sigterm_at:.2f} s after SIGTERM")


def test_second_sigterm_during_drain_exits_at_once(
        tmp_path: Path, daemon_factory: object, sipp_factory: object) -> None:
    for ip in VIRGINIA:
        uas(sipp_factory, ip)
    daemon: Daemon = daemon_factory(lab_config(tmp_path, oregon='["127.0.1.64"]', extra=ADMIN))  # type: ignore[operator]
    _wait_up(3)
    uac(sipp_factory, "127.0.0.1:5080", calls=1, rate=1, name="held",
        extra=("-d", "60000"), timeout_s=90)
    assert _wait_metric("sipedge_calls_in_progress", 1, timeout=5.0) == 1
    daemon.send_signal(signal.SIGTERM)
    daemon.wait_log("draining: new calls refused")
    time.sleep(1.0)
    assert daemon.proc.poll() is None  # waiting for the held call
    daemon.send_signal(signal.SIGTERM)
    second_at = time.time()
    rc, exited_at = _wait_exit(daemon, timeout=5)
    assert rc == 0
    assert exited_at - second_at < 3.0
    log = daemon.log()
    assert "second stop request: exiting now, 1 calls still in progress" in log
    assert "drained: every call ended" not in log


# -- 4. metrics under load ------------------------------------------------------------------


def _counters(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every counter and histogram sample (``_total``, ``_count``, ``_sum``, ``_bucket``)."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        if family.type not in ("counter", "histogram"):
            continue
        for s in family.samples:
            if s.name.endswith(("_total", "_count", "_sum", "_bucket")):
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _assert_not_decreased(old: dict[tuple[str, tuple[tuple[str, str], ...]], float],
                          new: dict[tuple[str, tuple[tuple[str, str], ...]], float],
                          where: str) -> None:
    for key, value in old.items():
        assert key in new, f"{where}: {key} vanished"
        assert new[key] >= value, f"{where}: {key} went {value} -> {new[key]}"


def _assert_histograms_consistent(text: str) -> None:
    """Buckets cumulative in ``le``, and the +Inf bucket equal to ``_count``."""
    for family in text_string_to_metric_families(text):
        if family.type != "histogram":
            continue
        series: dict[tuple[tuple[str, str], ...], list[tuple[float, float]]] = {}
        counts: dict[tuple[tuple[str, str], ...], float] = {}
        for s in family.samples:
            labels = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
            if s.name.endswith("_bucket"):
                series.setdefault(labels, []).append((float(s.labels["le"]), s.value))
            elif s.name.endswith("_count"):
                counts[labels] = s.value
        for labels, buckets in series.items():
            values = [v for _, v in sorted(buckets)]
            assert values == sorted(values), (family.name, labels, buckets)
            assert sorted(buckets)[-1] == (float("inf"), counts[labels]), (family.name, labels)


def test_metrics_under_load_are_monotonic_consistent_and_lint_clean(
        tmp_path: Path, daemon_factory: object, sipp_factory: object) -> None:
    # The ringing gateway sends 180 before 200, so post-dial delay is measured too.
    for ip in VIRGINIA:
        uas(sipp_factory, ip, scenario=BENCH_SCENARIOS / "uas_ringing.xml")
    daemon: Daemon = daemon_factory(lab_config(tmp_path, oregon='["127.0.1.64"]', extra=ADMIN))  # type: ignore[operator]
    _wait_up(3)
    # Each call is held 0.5 s, so about 20 are in progress at any time.
    caller = uac(sipp_factory, "127.0.0.1:5080", calls=200, rate=40,
                 extra=(*STATS, "-d", "500"))
    scrapes: list[str] = []
    while caller.proc.poll() is None:
        scrapes.append(_scrape())
        time.sleep(0.3)
    assert caller.wait(5) == 0, caller.errors() + daemon.log()
    assert sipp_counts(caller) == {"total": 200, "successful": 200, "failed": 0}
    time.sleep(0.3)
    scrapes.append(_scrape())
    assert len(scrapes) >= 10

    previous: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for i, text in enumerate(scrapes):
        now = _counters(text)
        _assert_not_decreased(previous, now, f"scrape {i}")
        _assert_histograms_consistent(text)
        previous = now
        started = _total(text, "sipedge_calls_started_total")
        answered = _total(text, "sipedge_calls_answered_total")
        assert started >= answered, (i, started, answered)
    assert max(_total(t, "sipedge_calls_in_progress") for t in scrapes) >= 5
    last = scrapes[-1]
    assert _total(last, "sipedge_calls_answered_total") == 200
    assert _total(last, "sipedge_calls_answered_total", direction="outbound",
                  edge="ashburn-ix") == 200
    assert _total(last, "sipedge_requests_received_total", method="INVITE",
                  direction="inside") >= 200
    assert _total(last, "sipedge_post_dial_delay_seconds_count", edge="ashburn-ix") == 200
    assert _total(last, "sipedge_calls_in_progress") == 0

    # One scrape taken under load passes promtool's lint: exit 0, nothing printed.
    busy = [t for t in scrapes[:-1]
            if 20 <= _total(t, "sipedge_calls_answered_total") <= 180] or scrapes[:-1]
    sample = busy[len(busy) // 2]
    (tmp_path / "scrape.txt").write_text(sample)
    lint = subprocess.run(["promtool", "check", "metrics"], input=sample.encode(),
                          capture_output=True, timeout=30, check=False)
    assert (lint.returncode, lint.stdout, lint.stderr) == (0, b"", b"")
    excerpt = [line for line in sample.splitlines()
               if line.startswith(("sipedge_calls_", "sipedge_gateway_up",
                                   "sipedge_post_dial_delay_seconds"))]
    (tmp_path / "excerpt.txt").write_text("\n".join(excerpt) + "\n")


# -- 5. systemd notify ----------------------------------------------------------------------


class _NotifySocket:
    """A fake systemd ``NOTIFY_SOCKET``: records (monotonic time, fields) per datagram."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.datagrams: list[tuple[float, dict[str, str]]] = []
        self.bound_at_ready: bool | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            if fields.get("READY") == "1" and self.bound_at_ready is None:
                # What READY=1 promises: every listener is bound at this moment.
                self.bound_at_ready = (udp_bound("127.0.0.1", 5080)
                                       and udp_bound("127.0.0.3", 5060) and _tcp_open(9191))
            self.datagrams.append((time.monotonic(), fields))

    def wait_for(self, key: str, value: str | None = None, count: int = 1,
                 timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.having(key, value)) >= count:
                return
            time.sleep(0.02)
        raise AssertionError(f"no {count}x {key}={value}: {self.datagrams}")

    def having(self, key: str, value: str | None = None) -> list[int]:
        """Indexes of the datagrams with ``key`` (set to ``value`` when given)."""
        return [i for i, (_, f) in enumerate(list(self.datagrams))
                if key in f and (value is None or f[key] == value)]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def _tcp_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def test_systemd_notifications_from_the_live_daemon(
        tmp_path: Path, daemon_factory: object, sipp_factory: object) -> None:
    for ip in (*VIRGINIA, *OREGON):
        uas(sipp_factory, ip)
    notify = _NotifySocket(tmp_path / "notify.sock")
    try:
        daemon: Daemon = daemon_factory(  # type: ignore[operator]
            lab_config(tmp_path, extra=ADMIN),
            env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000"})
        notify.wait_for("READY", "1")
        all_up = "ready: 3/3 ashburn-ix up, 3/3 san-jose-ix up, 0 calls"
        notify.wait_for("STATUS", all_up)
        time.sleep(1.5)  # a few watchdog periods

        sighup_at = time.monotonic_ns() // 1000
        daemon.send_signal(signal.SIGHUP)
        notify.wait_for("READY", "1", count=2)
        daemon.wait_log("reloaded")
        notify.wait_for("STATUS", all_up, count=2)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(10) == 0, daemon.log()
        time.sleep(0.2)
    finally:
        notify.close()

    seen = notify.datagrams
    assert seen, "no notification at all"
    # READY=1 first, sent once the listeners (SIP and admin) were bound.
    assert seen[0][1] == {"READY": "1"}, seen[:3]
    assert notify.bound_at_ready is True
    # The watchdog: WATCHDOG=1 about every WATCHDOG_USEC / 2 = 0.5 s, reload and drain too.
    pings = [t for t, f in seen if f.get("WATCHDOG") == "1"]
    assert len(pings) >= 4, seen
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert 0.3 <= sum(gaps) / len(gaps) <= 0.8, gaps
    assert max(gaps) < 1.0, gaps  # never a whole watchdog period without a ping
    # SIGHUP: RELOADING=1 with MONOTONIC_USEC (CLOCK_MONOTONIC, µs), then READY=1 again.
    (reloading,) = notify.having("RELOADING", "1")
    fields = seen[reloading][1]
    assert set(fields) == {"RELOADING", "MONOTONIC_USEC"}, fields
    usec = int(fields["MONOTONIC_USEC"])
    assert 0 <= usec - sighup_at < 5_000_000
    readies = notify.having("READY", "1")
    assert readies[0] == 0 and len(readies) == 2 and readies[1] > reloading
    # STATUS= lines: the one-line summary systemctl status shows.
    statuses = [f["STATUS"] for _, f in seen if "STATUS" in f]
    assert all(re.fullmatch(r"(ready|reloading|draining): \d/3 ashburn-ix up, "
                            r"\d/3 san-jose-ix up, \d+ calls?", s) for s in statuses), statuses
    assert all_up in statuses
    assert any(s.startswith("reloading: ") for s in statuses)
    # SIGTERM: STOPPING=1 is the last lifecycle notification; only the drain's STATUS= and
    # watchdog pings may follow it.
    (stopping,) = notify.having("STOPPING", "1")
    assert stopping > readies[1]
    (tmp_path / "notify.txt").write_text("".join(f"{t - seen[0][0]:7.3f} {f}\n" for t, f in seen))
    after = [f for _, f in seen[stopping + 1:]]
    assert all(f == {"WATCHDOG": "1"} or f.get("STATUS", "").startswith("draining: ")
               for f in after), after
