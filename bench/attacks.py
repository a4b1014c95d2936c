"""Long versions of the attack tests (tests/e2e/test_attacks.py) against the live daemon.

    .venv/bin/python bench/attacks.py stranger  [--seconds 60] [--rate 2000] [--pbx-rate 20]
    .venv/bin/python bench/attacks.py allowed   [--seconds 60] [--rate 2000]
    .venv/bin/python bench/attacks.py slowloris [--trickle 2000 --idle 1000]
    .venv/bin/python bench/attacks.py all

Each starts the six SIPp gateways (127.0.0.64-66, 127.0.1.64-66) and its own ``sipedge
run`` on the loopback lab (inside 127.0.0.1:5080, outside 127.0.0.3:5060, admin
127.0.0.1:9191), runs the attack with the PBX (127.0.0.1) placing calls meanwhile, and
prints one line of figures: rates, counts, sipedge's RSS before/after/peak, % of PBX calls
completed. Exit status 0 when every bound of the CI test held. Loopback only: this is an
attack tool. Work files go to --out (default /tmp/sipedge-attacks).
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.attack_tools import Capture, fd_count, rss_kib
from tests.e2e.conftest import (
    ROOT,
    SCENARIOS,
    STATS,
    Daemon,
    Sipp,
    admin_get,
    lab_config,
    sipp_counts,
    uac,
    uas,
)

GATEWAYS = ("127.0.0.64", "127.0.0.65", "127.0.0.66", "127.0.1.64", "127.0.1.65", "127.0.1.66")
ADMIN = '\n[admin]\nlisten = "127.0.0.1:9191"\n\n[daemon]\ndrain_timeout_s = 1.0\n'
ALLOW_PBX = 'allow  = ["127.0.0.1/32"]'


class Lab:
    """Gateways + one sipedge with ``allow`` and ``extra`` config; everything stopped at exit."""

    def __init__(self, out: Path, name: str, *, allow: str = ALLOW_PBX, extra: str = "") -> None:
        self.out = out / f"{name}-{time.strftime('%H%M%S')}"
        self.out.mkdir(parents=True, exist_ok=True)
        self.sipps: list[Sipp] = []
        self.allow, self.extra = allow, extra
        self.gateways: dict[str, Sipp] = {}
        self.daemon: Daemon | None = None

    def make(self, name: str, args: list[str]) -> Sipp:
        s = Sipp(args, self.out / name)
        self.sipps.append(s)
        return s

    @contextlib.contextmanager
    def running(self) -> Iterator[Lab]:
        try:
            self.gateways = {ip: uas(self.make, ip) for ip in GATEWAYS}
            path = lab_config(self.out, extra=ADMIN + self.extra)
            path.write_text(path.read_text().replace(ALLOW_PBX, self.allow))
            self.daemon = Daemon(path, self.out / "sipedge.log")
            wait_up(6)
            yield self
        finally:
            if self.daemon is not None:
                self.daemon.stop()
            for s in self.sipps:
                s.stop()

    def invites(self, user: str) -> int:
        return sum(1 for s in self.gateways.values() for p in s.cwd.glob("*messages*")
                   for line in p.read_text(errors="replace").splitlines()
                   if line.startswith(f"INVITE sip:{user}@"))


def scrape() -> str:
    status, body = admin_get("/metrics")
    if status != 200:
        raise RuntimeError(body)
    return body


def total(text: str, name: str, **labels: str) -> float:
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def wait_up(n: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, RuntimeError):
            if total(scrape(), "sipedge_gateway_up") >= n:
                return
        time.sleep(0.1)
    raise RuntimeError("gateways not UP")


def sipp_row(sipp: Sipp) -> dict[str, str]:
    lines = (sipp.cwd / "stats.csv").read_text(errors="replace").splitlines()
    return dict(zip(lines[0].split(";"), lines[-1].split(";"), strict=False))


class RssPeak:
    """Samples a pid's VmRSS every 0.5 s in a thread: the peak."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, rss_kib(pid), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            with contextlib.suppress(OSError):
                self.peak = max(self.peak, rss_kib(self.pid))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def flood(lab: Lab, source: str, service: str, rate: int, seconds: int) -> Sipp:
    return lab.make("flood", ["-sf", str(SCENARIOS / "flood_invite.xml"), "-s", service,
                              "-i", source, "-p", "5061", "-t", "u1", "-nr",
                              "-m", str(rate * seconds), "-r", str(rate), "-l", str(rate * 4),
                              "-timeout", f"{seconds + 60}s", "-buff_size", "4194304", *STATS,
                              "127.0.0.1:5080"])


def pbx(lab: Lab, rate: int, seconds: int, transport: str = "u1") -> Sipp:
    return uac(lab.make, "127.0.0.1:5080", calls=rate * seconds, rate=rate, name="pbx",
               extra=STATS, timeout_s=seconds + 60, transport=transport)


def stranger(args: argparse.Namespace) -> bool:
    lab = Lab(args.out, "stranger")
    with lab.running():
        assert lab.daemon is not None
        pid = lab.daemon.proc.pid
        before, rss0 = scrape(), rss_kib(pid)
        peak = RssPeak(pid)
        t0 = time.monotonic()
        with Capture("127.0.0.99/32") as back:
            f = flood(lab, "127.0.0.99", "+19005550199", args.rate, args.seconds)
            p = pbx(lab, args.pbx_rate, args.seconds)
            f.wait(args.seconds + 120)
            p.wait(args.seconds + 120)
            wall = time.monotonic() - t0
            time.sleep(0.5)
        rss1, rss_peak, after = rss_kib(pid), peak.stop(), scrape()
        row, calls = sipp_row(f), sipp_counts(p)
        sent = int(row["TotalCallCreated"])
        answered = sum(int(row[k]) for k in ("FailedCall(C)", "OutOfCallMsgs(C)",
                                               "DeadCallMsgs(C)"))
        dropped = (total(after, "sipedge_messages_dropped_total", reason="source_not_allowed")
                   - total(before, "sipedge_messages_dropped_total",
                           reason="source_not_allowed"))
        forwarded = lab.invites("+19005550199")
        done = calls["successful"] / (args.pbx_rate * args.seconds)
        print(f"stranger flood: sent={sent} in {wall:.1f}s ({sent / wall:.0f}/s offered "
              f"{args.rate}/s) dropped_source_not_allowed={dropped:.0f} "
              f"answered_to_stranger={answered} packets_to_stranger={len(back.seen())} "
              f"forwarded={forwarded} pbx={calls['successful']}/{args.pbx_rate * args.seconds}"
              f" ({done:.2%}) rss_kib={rss0}->{rss1} peak={rss_peak} "
              f"cpu_s={total(after, 'process_cpu_seconds_total') - total(before, 'process_cpu_seconds_total'):.1f}"
              f" out={lab.out}")
        return (answered == 0 and not back.seen() and forwarded == 0 and done >= 0.99
                and dropped >= 0.99 * sent and rss1 - rss0 < 50 * 1024)


def allowed(args: argparse.Namespace) -> bool:
    limits = ("\n[limits]\nsource_rate_per_s = 200\nsource_burst = 50\n"
              f"ban_s = {args.seconds + 30}\n")
    lab = Lab(args.out, "allowed", allow='allow  = ["127.0.0.1/32", "127.0.0.2/32"]',
              extra=limits)
    with lab.running():
        assert lab.daemon is not None
        before = scrape()
        f = flood(lab, "127.0.0.2", "+19005550102", args.rate, args.seconds)
        p = pbx(lab, args.pbx_rate, args.seconds)
        banned_gauge = 0.0
        for _ in range(20):
            time.sleep(0.25)
            banned_gauge = max(banned_gauge, total(scrape(), "sipedge_sources_banned"))
        f.wait(args.seconds + 120)
        p.wait(args.seconds + 120)
        time.sleep(0.5)
        after = scrape()
        sent, calls = int(sipp_row(f)["TotalCallCreated"]), sipp_counts(p)
        forwarded = lab.invites("+19005550102")
        banned = (total(after, "sipedge_messages_dropped_total", reason="banned")
                  - total(before, "sipedge_messages_dropped_total", reason="banned"))
        warned = lab.daemon.log().count("exceeded its message rate")
        done = calls["successful"] / (args.pbx_rate * args.seconds)
        print(f"allowed flood: sent={sent} from 127.0.0.2 at {args.rate}/s (limit 200/s burst "
              f"50) sources_banned={banned_gauge:.0f} warnings={warned} forwarded={forwarded}"
              f" dropped_banned={banned:.0f} pbx={calls['successful']}/"
              f"{args.pbx_rate * args.seconds} ({done:.2%}) out={lab.out}")
        return banned_gauge == 1 and warned == 1 and forwarded <= 100 and done >= 0.99


def slowloris(args: argparse.Namespace) -> bool:
    limits = "\n[limits]\ntcp_first_byte_timeout_s = 2.0\ntcp_message_timeout_s = 4.0\n"
    lab = Lab(args.out, "slowloris", extra=limits)
    with lab.running():
        assert lab.daemon is not None
        pid = lab.daemon.proc.pid
        fds0 = fd_count(pid)
        # 64 per source address by default: enough sources for ~50 connections each.
        n = args.trickle + args.idle
        sources = f"127.0.13.10-127.0.13.{min(250, 10 + n // 50)}"
        p = pbx(lab, args.pbx_rate, 15, transport="t1")
        attack = subprocess.run(
            [sys.executable, str(ROOT / "bench" / "slowloris.py"), "127.0.0.1:5080",
             "--trickle", str(args.trickle), "--idle", str(args.idle), "--interval", "0.2",
             "--sources", sources, "--wait", "30", "--pid", str(pid)],
            capture_output=True, text=True, timeout=120, check=False)
        p.wait(120)
        time.sleep(0.5)
        calls, fds1 = sipp_counts(p), fd_count(pid)
        print(attack.stdout.strip())
        closes = {r: total(scrape(), "sipedge_stream_closes_total", reason=r)
                  for r in ("first_byte_timeout", "message_timeout", "per_ip_limit")}
        done = calls["successful"] / (args.pbx_rate * 15)
        print(f"slowloris: trickle={args.trickle} idle={args.idle} sources={sources} "
              f"closes={closes} fds={fds0}->{fds1} pbx_tcp={calls['successful']}/"
              f"{args.pbx_rate * 15} ({done:.2%}) out={lab.out}")
        return attack.returncode == 0 and fds1 <= fds0 + 2 and done >= 0.99


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["stranger", "allowed", "slowloris", "all"])
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--rate", type=int, default=2000, help="flood INVITEs/s")
    ap.add_argument("--pbx-rate", type=int, default=20, help="PBX calls/s meanwhile")
    ap.add_argument("--trickle", type=int, default=2000)
    ap.add_argument("--idle", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=Path("/tmp/sipedge-attacks"))
    args = ap.parse_args()
    runs = {"stranger": stranger, "allowed": allowed, "slowloris": slowloris}
    chosen = list(runs) if args.what == "all" else [args.what]
    ok = True
    for name in chosen:
        passed = runs[name](args)
        print(f"{name}: {'PASS' if passed else 'FAIL'}")
        ok = ok and passed
    return 0 if ok else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
