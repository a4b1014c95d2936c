"""``sipedge demo``: the real daemon on the loopback lab, calls both ways, Virginia failing.

Theory of operation
-------------------
:class:`Lab` starts seven simulated user agents (``sipedge.lab.agent``: three Virginia
and three Oregon gateways, the PBX callee) plus the PBX caller, then the real
:class:`sipedge.daemon.Daemon` in this process on a config built in memory
(:func:`sipedge.lab.topology.demo_config`). :func:`run_demo` then

1. waits until sipedge's probes have every gateway UP;
2. places ``rate`` calls a second, alternately PBX → Twilio (the PBX caller to
   sipedge's inside listener) and Twilio → PBX (a gateway of the first edge still up
   to the outside listener, Request-URI ``;edge=<its edge>``); each is answered, held
   briefly and hung up;
3. walks the :data:`PHASES` (fractions of ``duration_s``): all up; one Virginia
   gateway's port closed (ICMP); a second one black-holed; all three down, so Oregon
   takes the calls; Virginia back;
4. stops placing calls, lets the calls in progress end, stops the daemon (its drain),
   closes every socket and prints the summary.

What is shown comes from sipedge itself (``core.stats``: calls answered/failed,
failovers by edge and reason; ``core.pool.snapshot()``: gateway states) and from the
callers (calls placed, which gateway answered, post-dial delay as the caller saw it).
On a terminal a table is redrawn twice a second (cursor home, no curses); otherwise one
timestamped line per phase and per gateway state change. SIGINT/SIGTERM end the run
early, with the summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import signal
import socket
import time
from collections import Counter, deque
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TextIO

from sipedge.daemon import Daemon
from sipedge.gateway.pool import GatewayStatus
from sipedge.lab.agent import CallResult, UserAgent
from sipedge.lab.topology import LabAddresses, demo_config
from sipedge.notify import Notifier
from sipedge.proxy.routing import Direction
from sipedge.proxy.stats import ProxyStats
from sipedge.sip.address import Endpoint

__all__ = ["PHASES", "CallRecord", "DemoSummary", "Lab", "Phase", "quantile", "render_summary",
           "render_table", "run_demo"]

OUT = "PBX → Twilio"
IN = "Twilio → PBX"
#: Live table refresh period (s) and how far back its post-dial delay looks.
REFRESH_S = 0.5
WINDOW_S = 5.0
#: After the last call is placed: how long the calls in progress may take to end.
SETTLE_S = 6.0

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Phase:
    """One step of the demo's script, from ``start`` (a fraction of the duration) on."""

    start: float
    title: str
    #: (index of a Virginia gateway, "close" | "blackhole" | "up") applied when it begins.
    actions: tuple[tuple[int, str], ...] = ()


PHASES: tuple[Phase, ...] = (
    Phase(0.0, "all gateways up"),
    Phase(0.2, "Virginia gateway 1 fails: port closed (ICMP unreachable)", ((0, "close"),)),
    Phase(0.35, "Virginia gateway 2 fails too: black hole (no answer at all)",
          ((1, "blackhole"),)),
    Phase(0.5, "all Virginia down (gateway 3 port closed): Oregon takes the calls",
          ((2, "close"),)),
    Phase(0.75, "Virginia back", ((0, "up"), (1, "up"), (2, "up"))),
)
#: The phase whose calls must all go to Oregon.
ALL_DOWN = 3


@dataclass(slots=True)
class CallRecord:
    """One call the demo placed."""

    direction: str
    phase: int
    started: float
    caller: str
    result: CallResult | None = None


@dataclass(slots=True)
class DemoSummary:
    """What ``sipedge demo`` ends with (also what the tests check).

    Attributes:
        placed: calls placed, by direction.
        answered: of those, answered (the caller got a 2xx).
        failed: of those, not answered (a final non-2xx, or nothing).
        bye_unanswered: answered calls whose BYE got no answer (their gateway died).
        failovers: sipedge's failover count.
        failovers_by: (from edge, to edge, reason text) → count, from sipedge.
        by_phase: phase index → (direction, region) → answered calls (outbound: the
            region of the gateway that answered; inbound: the region that placed it).
        sipedge_answered / sipedge_failed: sipedge's own call counters, by direction
            and edge.
        pdd_p50_s / pdd_p95_s: post-dial delay as the callers saw it.
        interrupted: the run was ended early (SIGINT/SIGTERM).
        sockets_free: every lab address could be bound again after the run.
    """

    placed: Counter[str] = field(default_factory=Counter)
    answered: int = 0
    failed: int = 0
    bye_unanswered: int = 0
    failovers: int = 0
    failovers_by: dict[tuple[str, str, str], int] = field(default_factory=dict)
    by_phase: dict[int, Counter[tuple[str, str]]] = field(default_factory=dict)
    sipedge_answered: dict[tuple[str, str], int] = field(default_factory=dict)
    sipedge_failed: dict[tuple[str, str], int] = field(default_factory=dict)
    pdd_p50_s: float | None = None
    pdd_p95_s: float | None = None
    duration_s: float = 0.0
    rate: float = 0.0
    interrupted: bool = False
    sockets_free: bool = False

    @property
    def total_placed(self) -> int:
        """Calls placed in both directions."""
        return sum(self.placed.values())

    def oregon_while_virginia_down(self) -> tuple[int, int]:
        """(calls answered via Oregon, via Virginia) in the all-Virginia-down phase."""
        counts = self.by_phase.get(ALL_DOWN, Counter())
        oregon = sum(n for (_, region), n in counts.items() if region == "Oregon")
        virginia = sum(n for (_, region), n in counts.items() if region == "Virginia")
        return oregon, virginia


def quantile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (nearest rank) of ``values``, None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))
    return ordered[rank]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f} ms"


_DIRECTION = {Direction.OUTBOUND: OUT, Direction.INBOUND: IN, Direction.UNKNOWN: "unknown"}


class Lab:
    """sipedge plus its simulated peers on the loopback lab (see the module docstring)."""

    def __init__(self, addresses: LabAddresses, *, hold_s: float) -> None:
        self.addresses = addresses
        self.hold_s = hold_s
        self.region: dict[str, str] = {}  # gateway host → region
        self.edge: dict[str, str] = {}  # gateway host → edge
        self.gateways: list[UserAgent] = []
        for i, (edge, region, endpoint) in enumerate(addresses.gateways()):
            agent = UserAgent(endpoint.host, endpoint, media_host=f"168.86.128.{10 + i}",
                              user="twilio", bye_timeout_s=max(2.0, hold_s * 2))
            self.gateways.append(agent)
            self.region[endpoint.host] = region
            self.edge[endpoint.host] = edge
        self.virginia = [g for g in self.gateways if self.region[g.local.host] == "Virginia"]
        self.oregon = [g for g in self.gateways if self.region[g.local.host] == "Oregon"]
        self.pbx = UserAgent("pbx", addresses.pbx, media_host=addresses.pbx.host, user="pbx")
        self.caller = UserAgent("pbx-caller", Endpoint("udp", addresses.inside.host, 0),
                                media_host=addresses.inside.host, user="pbx",
                                bye_timeout_s=max(2.0, hold_s * 2))
        self.daemon: Daemon | None = None
        self._numbers = itertools.count(1)
        self._rr = itertools.count()

    @property
    def agents(self) -> list[UserAgent]:
        return [*self.gateways, self.pbx, self.caller]

    async def start(self) -> int | None:
        """Bind the agents, then start sipedge; None when running, else its exit code."""
        for agent in self.agents:
            await agent.start()
        self.daemon = Daemon(demo_config(self.addresses), notifier=Notifier(None))
        code = await self.daemon.start()
        if code is not None:
            self.daemon = None
            await self.close_agents()
        return code

    async def close_agents(self) -> None:
        for agent in self.agents:
            await agent.close()

    async def stop(self) -> None:
        """Stop sipedge (drain, then at once) and close every agent."""
        daemon, self.daemon = self.daemon, None
        if daemon is not None:
            daemon.request_stop()  # drain: [daemon] drain_timeout_s is 1 s in the demo
            stopped = asyncio.get_running_loop().create_task(daemon.wait_stopped())
            done, _ = await asyncio.wait({stopped}, timeout=3.0)
            if not done:
                daemon.request_stop()  # the second request stops at once
            await stopped
        await self.close_agents()

    @property
    def stats(self) -> ProxyStats | None:
        core = None if self.daemon is None else self.daemon.core
        return None if core is None else core.stats

    def snapshot(self) -> list[GatewayStatus]:
        core = None if self.daemon is None else self.daemon.core
        return [] if core is None else core.pool.snapshot()

    def all_up(self) -> bool:
        rows = self.snapshot()
        return bool(rows) and all(r.state.name == "UP" for r in rows)

    def place(self, direction: str) -> tuple[str, Awaitable[CallResult]] | None:
        """Start one call; (caller name, its result) or None when nobody can place it."""
        n = next(self._numbers)
        a = self.addresses
        if direction == OUT:
            uri = f"sip:+1415555{n % 10000:04d}@{a.inside.hostport}".encode()
            return "pbx", self.caller.call(a.inside, uri, hold_s=self.hold_s)
        # Twilio places a call from a gateway of the first edge that has one up (its
        # own failover is Virginia → Oregon too); edge= names the interconnect edge.
        for group in (self.virginia, self.oregon):
            up = [g for g in group if g.is_up]
            if up:
                sender = up[next(self._rr) % len(up)]
                edge = self.edge[sender.local.host]
                uri = f"sip:+1206555{n % 10000:04d}@{a.pbx.hostport};edge={edge}".encode()
                return sender.local.host, sender.call(a.outside, uri, hold_s=self.hold_s)
        return None

    async def apply(self, phase: Phase) -> None:
        for index, what in phase.actions:
            if index >= len(self.virginia):
                continue
            agent = self.virginia[index]
            if what == "up":
                await agent.come_back()
            else:
                await agent.go_down("close" if what == "close" else "blackhole")


# -- rendering (pure) ----------------------------------------------------------------------


@dataclass(slots=True)
class View:
    """Everything one frame of the live table shows."""

    elapsed_s: float
    duration_s: float
    rate: float
    phase: int
    gateways: list[GatewayStatus]
    answered_by: dict[str, int]  # gateway host → calls it answered (UAS)
    placed_by: dict[str, int]  # gateway host → calls it placed (inbound)
    placed: Counter[str]
    in_progress: int
    calls_per_s: float
    answered: int
    failed: int
    failovers: int
    failovers_by: dict[tuple[str, str, str], int]
    pdd_window: tuple[float | None, float | None]
    pdd_all: tuple[float | None, float | None]
    events: list[str]
    title: str = "sipedge demo"


def _failover_text(by: dict[tuple[str, str, str], int]) -> str:
    parts = []
    for (src, dst, why), n in sorted(by.items(), key=lambda kv: -kv[1]):
        parts.append(f"{src} → {dst or 'none'} ({why}) {n}")
    return ", ".join(parts)


def render_table(view: View) -> list[str]:
    """The live table's lines (no ANSI codes; the caller positions them)."""
    phase = PHASES[view.phase]
    lines = [
        f"{view.title} · loopback lab · {view.rate:g} calls/s · "
        f"{view.elapsed_s:5.1f} / {view.duration_s:g} s",
        f"phase {view.phase + 1}/{len(PHASES)}: {phase.title}",
        "",
        f"  {'edge':<12} {'gateway':<22} {'state':<11} {'answered':>8} {'placed':>7}",
    ]
    for row in view.gateways:
        host = row.address.split(":")[1] if ":" in row.address else row.address
        mark = {"UP": "●", "DOWN": "✗", "PROBING": "…", "ADMIN_DOWN": "‖"}.get(row.state.name, "")
        lines.append(f"  {row.edge:<12} {row.address:<22} {mark} {row.state.name:<9} "
                     f"{view.answered_by.get(host, 0):>8} {view.placed_by.get(host, 0):>7}")
    total = sum(view.placed.values())
    p50, p95 = view.pdd_window
    a50, a95 = view.pdd_all
    lines += [
        "",
        f"  calls      {view.calls_per_s:4.1f}/s   placed {total} ({view.placed[OUT]} "
        f"{OUT}, {view.placed[IN]} {IN})   in progress {view.in_progress}",
        f"  sipedge    answered {view.answered}   failed {view.failed}   "
        f"failovers {view.failovers}",
        f"  failovers  {_failover_text(view.failovers_by) or '-'}",
        f"  post-dial  last {WINDOW_S:g} s p50 {_ms(p50)} p95 {_ms(p95)}   "
        f"whole run p50 {_ms(a50)} p95 {_ms(a95)}",
        "",
        "  recent changes:",
    ]
    lines += [f"    {e}" for e in view.events[-6:]] or ["    -"]
    lines += ["", "  Ctrl-C stops (the summary is still printed)"]
    return lines


def render_summary(s: DemoSummary) -> list[str]:
    """The summary's lines."""
    how = "interrupted" if s.interrupted else "done"
    lines = [
        f"sipedge demo {how} after {s.duration_s:.1f} s at {s.rate:g} calls/s",
        f"  calls placed    {s.total_placed} ({s.placed[OUT]} {OUT}, {s.placed[IN]} {IN})",
        f"  answered        {s.answered}",
        f"  failed          {s.failed}",
    ]
    if s.bye_unanswered:
        lines.append(f"  BYE unanswered  {s.bye_unanswered} (the gateway went down during "
                     "the call)")
    lines.append(f"  failovers       {s.failovers}"
                 + (f": {_failover_text(s.failovers_by)}" if s.failovers_by else ""))
    lines.append(f"  post-dial delay p50 {_ms(s.pdd_p50_s)}, p95 {_ms(s.pdd_p95_s)} "
                 "(INVITE → 180, as the callers saw it)")
    lines.append("  where the answered calls went, by phase "
                 f"({OUT}: region that answered; {IN}: region that placed it):")
    lines.append(f"    {'phase':<68} {OUT + ' V/O':>17} {IN + ' V/O':>17}")
    for i, phase in enumerate(PHASES):
        c = s.by_phase.get(i, Counter())
        out = f"{c[(OUT, 'Virginia')]}/{c[(OUT, 'Oregon')]}"
        inb = f"{c[(IN, 'Virginia')]}/{c[(IN, 'Oregon')]}"
        lines.append(f"    {i + 1} {phase.title:<66} {out:>17} {inb:>17}")
    oregon, virginia = s.oregon_while_virginia_down()
    lines.append(f"  while Virginia was down, Oregon took {oregon} calls and Virginia "
                 f"{virginia}")
    for label, table in (("answered", s.sipedge_answered), ("failed", s.sipedge_failed)):
        text = ", ".join(f"{d} via {e or '(none)'} {n}" for (d, e), n in sorted(table.items()))
        lines.append(f"  sipedge {label:<8} {text or '-'}")
    lines.append("  sockets         " + ("all closed" if s.sockets_free
                                         else "SOME LAB ADDRESS STILL BOUND"))
    return lines


# -- the run -------------------------------------------------------------------------------


class _Screen:
    """Live table (TTY: cursor-home redraw) or plain timestamped lines."""

    def __init__(self, out: TextIO, live: bool, start: float) -> None:
        self.out = out
        self.live = live
        self.start = start
        self.shown = False

    def line(self, now: float, text: str) -> None:
        if self.live:
            return
        stamp = time.strftime("%H:%M:%S")
        self.out.write(f"{stamp} +{now - self.start:5.1f}s  {text}\n")
        self.out.flush()

    def frame(self, lines: list[str]) -> None:
        if not self.live:
            return
        prefix = "\x1b[?25l\x1b[2J\x1b[H" if not self.shown else "\x1b[H"
        self.shown = True
        self.out.write(prefix + "".join(f"{line}\x1b[K\n" for line in lines) + "\x1b[J")
        self.out.flush()

    def end(self) -> None:
        if self.live and self.shown:
            self.out.write("\x1b[?25h\n")
            self.out.flush()


def _bound(endpoint: Endpoint) -> bool:
    kind = socket.SOCK_DGRAM if endpoint.transport == "udp" else socket.SOCK_STREAM
    s = socket.socket(socket.AF_INET, kind)
    try:
        s.bind((endpoint.host, endpoint.port))
    except OSError:
        return True
    finally:
        s.close()
    return False


def lab_endpoints(addresses: LabAddresses) -> list[Endpoint]:
    """Every fixed address the demo binds (the PBX caller's port is ephemeral)."""
    out = [addresses.inside, addresses.outside, addresses.pbx,
           *(e for _, _, e in addresses.gateways())]
    if addresses.admin is not None:
        out.append(addresses.admin)
    return out


class _LogTap(logging.Handler):
    """sipedge's log records during the demo: kept, not printed over the table."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: deque[logging.LogRecord] = deque(maxlen=200)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def run_demo(addresses: LabAddresses, *, duration_s: float = 40.0, rate: float = 4.0,
                   out: TextIO, live: bool) -> tuple[int, DemoSummary]:
    """Run the demo; (exit status, summary). See the module docstring.

    Exit status: 0 every call answered; 1 some call failed; 130 interrupted; 71 or 78
    when sipedge cannot start (its own exit code).
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    handled: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
    root = logging.getLogger("sipedge")
    tap = _LogTap()
    saved = (root.level, root.propagate, root.handlers[:])
    root.handlers[:] = [tap]
    root.propagate = False
    root.setLevel(logging.WARNING)
    hold_s = min(2.0, max(0.5, duration_s / 20))
    lab = Lab(addresses, hold_s=hold_s)
    summary = DemoSummary(duration_s=0.0, rate=rate)
    drove = False
    try:
        try:
            code = await lab.start()
        except OSError as exc:
            await lab.close_agents()
            out.write(f"sipedge demo: cannot bind the lab addresses: {exc}\n")
            return 71, summary
        if code is not None:
            for record in tap.records:
                out.write(f"sipedge: {record.getMessage()}\n")
            return code, summary
        drove = True
        status = await _drive(lab, duration_s, rate, out, live, stop, summary)
        return status, summary
    finally:
        await lab.stop()
        root.handlers[:] = saved[2]
        root.propagate = saved[1]
        root.setLevel(saved[0])
        for sig in handled:
            loop.remove_signal_handler(sig)
        if drove:
            summary.sockets_free = not any(_bound(e) for e in lab_endpoints(addresses))
            for line in render_summary(summary):
                out.write(line + "\n")
            out.flush()


async def _drive(lab: Lab, duration_s: float, rate: float, out: TextIO, live: bool,
                 stop: asyncio.Event, summary: DemoSummary) -> int:
    loop = asyncio.get_running_loop()
    start = loop.time()
    screen = _Screen(out, live, start)
    events: list[str] = []

    def note(text: str) -> None:
        now = loop.time()
        events.append(f"+{now - start:5.1f} s  {text}")
        screen.line(now, text)

    a = lab.addresses
    note(f"sipedge up: inside {a.inside}, outside {a.outside}, {len(lab.gateways)} gateways, "
         f"PBX {a.pbx}" + (f", admin http://{a.admin.hostport}" if a.admin else ""))
    while not lab.all_up() and loop.time() - start < 10 and not stop.is_set():
        await asyncio.sleep(0.05)
    note("every gateway UP after its first probes" if lab.all_up()
         else "not every gateway is UP; going on")
    states = {r.id: r.state for r in lab.snapshot()}
    records: list[CallRecord] = []
    tasks: set[asyncio.Task[None]] = set()
    placed_by: Counter[str] = Counter()
    directions = itertools.cycle((OUT, IN))
    begin = loop.time()
    phase = -1
    credit = 1.0
    last_tick = begin
    next_frame = begin

    async def follow(record: CallRecord, call: Awaitable[CallResult]) -> None:
        record.result = await call

    def view(now: float) -> View:
        stats = lab.stats
        pdds = [r.result.pdd_s for r in records if r.result and r.result.pdd_s is not None]
        recent = [r.result.pdd_s for r in records if r.result and r.result.pdd_s is not None
                  and now - r.started < WINDOW_S]
        answered_by = {g.local.host: g.answered for g in lab.gateways}
        return View(
            elapsed_s=now - begin, duration_s=duration_s, rate=rate, phase=max(phase, 0),
            gateways=lab.snapshot(), answered_by=answered_by, placed_by=dict(placed_by),
            placed=Counter(r.direction for r in records),
            in_progress=sum(r.result is None for r in records),
            calls_per_s=sum(now - r.started < 2.0 for r in records) / 2.0,
            answered=sum(stats.calls_answered.values()) if stats else 0,
            failed=sum(stats.calls_failed.values()) if stats else 0,
            failovers=stats.failovers if stats else 0,
            failovers_by=_failovers(stats), pdd_window=(quantile(recent, 0.5),
                                                        quantile(recent, 0.95)),
            pdd_all=(quantile(pdds, 0.5), quantile(pdds, 0.95)), events=events)

    while not stop.is_set():
        now = loop.time()
        elapsed = now - begin
        if elapsed >= duration_s:
            break
        while phase + 1 < len(PHASES) and elapsed >= PHASES[phase + 1].start * duration_s:
            phase += 1
            v = view(now)
            note(f"phase {phase + 1}/{len(PHASES)}: {PHASES[phase].title}  [placed "
                 f"{sum(v.placed.values())}, sipedge answered {v.answered}, failed "
                 f"{v.failed}, failovers {v.failovers}]")
            applying = loop.create_task(lab.apply(PHASES[phase]))
            tasks.add(applying)
            applying.add_done_callback(tasks.discard)
        credit += (now - last_tick) * rate
        last_tick = now
        while credit >= 1.0:
            credit -= 1.0
            direction = next(directions)
            placed = lab.place(direction)
            if placed is None:
                continue
            caller, call = placed
            record = CallRecord(direction, phase, now, caller)
            records.append(record)
            if direction == IN:
                placed_by[caller] += 1
            task = loop.create_task(follow(record, call))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        for row in lab.snapshot():
            if states.get(row.id) is not row.state:
                note(f"gateway {row.id} {states.get(row.id, row.state).name} -> "
                     f"{row.state.name}: {row.reason}")
                states[row.id] = row.state
        if now >= next_frame:
            next_frame = now + REFRESH_S
            screen.frame(render_table(view(now)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.05)

    interrupted = stop.is_set()
    note("interrupted: letting the calls in progress end" if interrupted
         else "last call placed: letting the calls in progress end")
    settle = loop.time() + (2.0 if interrupted else SETTLE_S)
    while tasks and loop.time() < settle:
        screen.frame(render_table(view(loop.time())))
        await asyncio.sleep(0.1 if interrupted or not live else REFRESH_S / 2)
    for task in list(tasks):
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    screen.frame(render_table(view(loop.time())))
    screen.end()
    _summarise(lab, records, summary, loop.time() - begin, interrupted)
    if interrupted:
        return 130
    return 0 if summary.failed == 0 and summary.total_placed else 1


def _failovers(stats: ProxyStats | None) -> dict[tuple[str, str, str], int]:
    if stats is None:
        return {}
    out: dict[tuple[str, str, str], int] = {}
    for (src, dst, reason), n in stats.failovers_by.items():
        key = (src, dst, reason.value.replace("_", " "))
        out[key] = out.get(key, 0) + n
    return out


def _summarise(lab: Lab, records: list[CallRecord], s: DemoSummary, elapsed: float,
               interrupted: bool) -> None:
    s.duration_s = elapsed
    s.interrupted = interrupted
    pdds: list[float] = []
    for r in records:
        s.placed[r.direction] += 1
        res = r.result
        if res is None or not res.answered:
            s.failed += 1
            continue
        s.answered += 1
        if res.bye_code is None:
            s.bye_unanswered += 1
        if res.pdd_s is not None:
            pdds.append(res.pdd_s)
        where = res.answered_by if r.direction == OUT else r.caller
        region = lab.region.get(where or "", "?")
        s.by_phase.setdefault(r.phase, Counter())[(r.direction, region)] += 1
    s.pdd_p50_s, s.pdd_p95_s = quantile(pdds, 0.5), quantile(pdds, 0.95)
    stats = lab.stats
    if stats is not None:
        s.failovers = stats.failovers
        s.failovers_by = _failovers(stats)
        s.sipedge_answered = {(_DIRECTION[d], e): n for (d, e), n in stats.calls_answered.items()}
        failed: dict[tuple[str, str], int] = {}
        for (d, e, _klass), n in stats.calls_failed.items():
            failed[(_DIRECTION[d], e)] = failed.get((_DIRECTION[d], e), 0) + n
        s.sipedge_failed = failed


def run(addresses: LabAddresses, *, duration_s: float, rate: float, out: TextIO,
        live: bool | None = None) -> tuple[int, DemoSummary]:
    """``sipedge demo`` in the foreground (its own event loop); (exit status, summary)."""
    from sipedge.transport import run as run_loop

    if live is None:
        live = out.isatty()
    return run_loop(run_demo(addresses, duration_s=duration_s, rate=rate, out=out, live=live))
