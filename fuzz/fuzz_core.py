"""Fuzz the whole proxy core: sequences of deliveries, clock moves and answers.

Each input is a *sequence of operations* on one fresh ``ProxyCore`` built for a lab
topology with UDP and TCP listeners on both sides (the builder mirrors
``tests/helpers/wire.py``: ``Config`` → ``build_settings`` → pool, schedule, core):

* ``request``  a templated request (method, Call-ID, branch, CSeq, To tag, Route set,
               Max-Forwards, SDP… picked by the input) from one of the peers;
* ``corpus``   a message of ``../shared/corpus`` (RFC 4475/5118 torture tests, call
               flows) from one of the peers;
* ``raw``      fuzzed bytes from one of the peers (rare: garbage dies in the parser);
* ``advance``  the fake clock by 0–40 s, firing every deadline on the way, in order;
* ``error``    a transport error toward a gateway (or the PBX callee);
* ``answer``   a response from the destination of one of the requests the core sent
               (gateway, callee, PBX) with a fuzzed status: provisional, failover,
               CANCEL races, Timer C, probe replies;
* ``follow``   a caller's follow-up to a request it sent earlier: CANCEL, ACK (same
               branch, or for a 2xx with the route set), BYE, re-INVITE;
* ``again``    a retransmission of a message delivered earlier;
* ``admin``    drain mode on/off, a gateway drained/enabled, the pool reloaded without
               one gateway or with all of them (the daemon's DNS refresh and reload).

The message of every delivering op may be *mutated*: bytes spliced in, a header line
replaced or repeated, the message cut short, one byte changed. Most inputs therefore
are real SIP with a defect, not garbage.

Peers: the PBX (UDP and TCP), a UDP and a TCP gateway of each edge, the PBX callee and a
stranger (UDP and TCP); each sends on the listener facing it.

Invariants, checked after every op (any violation, like any exception out of the core,
is a crash):

1. no exception escapes ``receive`` / ``handle_timer`` / ``transport_error``;
2. every ``Send`` leaves from one of our listeners toward a valid address (IP literal,
   port 1–65535, a known transport) that is loopback or named in bytes a trusted peer
   sent; its data re-parses with ``sipedge.sip.message.parse`` and its header index
   builds (or it is the CRLF keep-alive); a request we send carries our Via on top;
3. a stranger's op produces no ``Send`` and no state (``reject_unknown`` = drop, the
   default); nothing goes to the stranger's address unless a trusted peer named it;
4. after the last op: the clock advanced 100 s with no input (table sizes recorded),
   then to +600 s (every transaction, branch, context and settled record gone, the timer
   heap back to probes and the sweep), then +4 h in one jump (answered calls swept away).

Timing (decided here): each op's time in the core is measured with
``time.perf_counter`` (wall, reported) and ``time.thread_time`` (CPU, judged: on a shared
box preemption puts 10-200 ms of other processes' work into single wall-clock readings;
a fallback run measured 225 ms wall for an op that took 1.4 ms of CPU). A delivery or
transport error is one core call; an ``advance`` counts its longest single
``handle_timer`` call, since the shell makes one call per deadline and that, not 40 s of
timers summed, is what holds its event loop. Fuzzing only *reports* (slowest op, wall
and CPU; the count over 10 ms) and, under atheris, keeps every input with an op over
10 ms of CPU in ``fuzz/slow/``; ``--check-slow [fuzz/slow]`` then replays them
uninstrumented, three times each, and fails (exit 1) when one op is over 10 ms of CPU in
all three. The budget is not judged under atheris: its coverage instrumentation slows
pure-Python byte loops up to ~30x (an op of 6.5 ms CPU measured 181 ms instrumented, and
a first version that failed there stopped on an ordinary INVITE). ``SIPEDGE_FUZZ_SLOW=
fail`` (with ``SIPEDGE_FUZZ_SLOW_MS``, default 30) restores an in-process check: the
same op over the threshold in three runs of an input is a crash.

Input format: integers come from the end of the input and byte strings from the front,
exactly as ``atheris.FuzzedDataProvider.ConsumeIntInRange`` / ``ConsumeBytes`` read them;
``BytesProvider`` is a pure-Python twin of those two calls, so an atheris crash file
replays without atheris, and ``Encoder`` writes the seed inputs.

Usage:
    python fuzz/fuzz_core.py -atheris_runs=1000000 fuzz/corpus_core   (atheris)
    python fuzz/fuzz_core.py -max_total_time=900 fuzz/corpus_core     (atheris)
    python fuzz/fuzz_core.py --fallback --seed 1 --runs 20000         (no atheris)
    python fuzz/fuzz_core.py --replay crash-<sha1>                    (no atheris)
    python fuzz/fuzz_core.py --check-slow fuzz/slow                   (10 ms budget)
    python fuzz/fuzz_core.py --make-seeds                             (fuzz/corpus_core/)
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import ipaddress
import json
import os
import random
import resource
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

try:  # atheris is optional: the fallback and the CI test run without it
    import atheris
except ImportError:  # pragma: no cover - depends on the environment
    atheris = None

_UNDER_ATHERIS = atheris is not None and __name__ == "__main__" and not any(
    a.startswith("--") for a in sys.argv[1:])
_instrument: Any = (atheris.instrument_imports(include=["sipedge"]) if _UNDER_ATHERIS
                    else contextlib.nullcontext())
with _instrument:
    from sipedge.config import Config, InsideConfig, OutsideConfig, build_settings
    from sipedge.gateway.health import HealthPolicy
    from sipedge.gateway.monitor import GatewayMonitor
    from sipedge.gateway.pool import Gateway, GatewayPool
    from sipedge.gateway.probe import ProbeSchedule
    from sipedge.proxy.core import (
        CALL_IDLE_TIMEOUT_S,
        CALL_SWEEP_INTERVAL_S,
        ProxyCore,
        Send,
        probe_settings,
    )
    from sipedge.sip.address import TRANSPORTS, Endpoint
    from sipedge.sip.errors import ParseError
    from sipedge.sip.message import Request, Response, parse

HERE = Path(__file__).resolve().parent
SEED_DIR = HERE / "corpus_core"
CORPUS = Path(os.environ.get("SIPEDGE_CORPUS", ROOT.parent / "shared" / "corpus"))

#: An op slower than this (in the core) is "slow" (issue 13).
SLOW_OP_S = 0.010
#: Ops per input at most (an input stops earlier when its bytes run out).
MAX_OPS = 64

# ---------------------------------------------------------------------------- topology

INSIDE_UDP = Endpoint("udp", "127.0.0.1", 5080)
INSIDE_TCP = Endpoint("tcp", "127.0.0.1", 5080)
OUTSIDE_UDP = Endpoint("udp", "127.0.0.3", 5060)
OUTSIDE_TCP = Endpoint("tcp", "127.0.0.3", 5060)
LISTENERS = (INSIDE_UDP, INSIDE_TCP, OUTSIDE_UDP, OUTSIDE_TCP)
CALLEE = Endpoint("udp", "127.0.0.10", 5060)
VIRGINIA = (Endpoint("udp", "127.0.0.64", 5060), Endpoint("tcp", "127.0.0.65", 5060),
            Endpoint("udp", "127.0.0.66", 5060))
OREGON = (Endpoint("udp", "127.0.1.64", 5060), Endpoint("tcp", "127.0.1.65", 5060),
          Endpoint("udp", "127.0.1.66", 5060))
GATEWAYS = VIRGINIA + OREGON
STRANGER_HOST = "127.0.0.99"
EDGE_HOST = {"ashburn-ix": b"example.sip.ashburn-ix.twilio.com",
             "san-jose-ix": b"example.sip.san-jose-ix.twilio.com"}


@dataclass(frozen=True)
class Peer:
    name: str
    endpoint: Endpoint
    listener: Endpoint
    trusted: bool


PEERS = (
    Peer("pbx-udp", Endpoint("udp", "127.0.0.1", 5060), INSIDE_UDP, True),
    Peer("pbx-tcp", Endpoint("tcp", "127.0.0.1", 41000), INSIDE_TCP, True),
    Peer("virginia-udp", VIRGINIA[0], OUTSIDE_UDP, True),
    Peer("virginia-tcp", VIRGINIA[1], OUTSIDE_TCP, True),
    Peer("oregon-udp", OREGON[0], OUTSIDE_UDP, True),
    Peer("oregon-tcp", OREGON[1], OUTSIDE_TCP, True),
    Peer("callee", CALLEE, INSIDE_UDP, True),
    Peer("stranger-udp", Endpoint("udp", STRANGER_HOST, 5060), OUTSIDE_UDP, False),
    Peer("stranger-tcp", Endpoint("tcp", STRANGER_HOST, 42000), INSIDE_TCP, False),
)
TRUSTED_HOSTS = frozenset(p.endpoint.host for p in PEERS if p.trusted)
#: Error targets: the gateways and the callee.
ERROR_TARGETS = (*GATEWAYS, CALLEE)


def build_pool(exclude: int | None = None) -> GatewayPool:
    """The two edges' gateways (``exclude``: the index in GATEWAYS of one to leave out)."""
    groups = [
        [Gateway.make("ashburn-ix", "Virginia", ep, EDGE_HOST["ashburn-ix"])
         for ep in VIRGINIA if exclude is None or ep != GATEWAYS[exclude]],
        [Gateway.make("san-jose-ix", "Oregon", ep, EDGE_HOST["san-jose-ix"])
         for ep in OREGON if exclude is None or ep != GATEWAYS[exclude]],
    ]
    # One success brings a gateway up, two failures take it down: health flaps within the
    # few ops of an input.
    return GatewayPool(groups, HealthPolicy(down_after=2, up_after=1), now=1000.0)


def build_core() -> ProxyCore:
    """A core for the fuzz topology, built the way ``tests/helpers/wire.py`` builds one."""
    config = Config(
        path="<fuzz>",
        inside=InsideConfig(listen=(INSIDE_UDP, INSIDE_TCP),
                            allow=(ipaddress.ip_network("127.0.0.1/32"),), pbx=CALLEE),
        outside=OutsideConfig(listen=(OUTSIDE_UDP, OUTSIDE_TCP), domain="example"),
        edges=(),
    )
    settings = build_settings(config)  # every other value is the config's default
    pool = build_pool()
    schedule = ProbeSchedule(rng=random.Random(7), interval_up_s=60.0, interval_down_s=20.0,
                             jitter=0.0)
    monitor = GatewayMonitor(pool, schedule, probe_settings(settings), instance=b"fuzz")
    return ProxyCore(settings, pool, monitor=monitor)


def load_corpus() -> list[bytes]:
    """Every ``.sip`` message of the shared corpus, in a stable order (empty if absent)."""
    if not CORPUS.is_dir():
        return []
    return [p.read_bytes() for p in sorted(CORPUS.rglob("*.sip"))]


CORPUS_MESSAGES = load_corpus()

# ---------------------------------------------------------------------------- input decoding


class Provider(Protocol):
    """The two ``atheris.FuzzedDataProvider`` calls the decoder uses."""

    def ConsumeIntInRange(self, lo: int, hi: int) -> int: ...
    def ConsumeBytes(self, count: int) -> bytes: ...
    def remaining_bytes(self) -> int: ...


class BytesProvider:
    """Pure-Python twin of ``atheris.FuzzedDataProvider`` for the calls in ``Provider``.

    Integers are read byte by byte from the *end* of the data, most significant first,
    as many bytes as the range needs, then taken modulo the range size; byte strings are
    read from the front (atheris ``fuzzed_data_provider.cc``).
    """

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._front = 0
        self._back = len(data)

    def remaining_bytes(self) -> int:
        return self._back - self._front

    def ConsumeIntInRange(self, lo: int, hi: int) -> int:
        delta = hi - lo
        size = delta.bit_length()
        result = 0
        offset = 0
        while offset < size and (delta >> offset) > 0 and self._back > self._front:
            self._back -= 1
            result = (result << 8) | self._data[self._back]
            offset += 8
        return lo + result % (delta + 1)

    def ConsumeBytes(self, count: int) -> bytes:
        n = min(count, self._back - self._front)
        out = self._data[self._front:self._front + n]
        self._front += n
        return out


class Encoder:
    """Writes an input that ``BytesProvider`` (and atheris) decode to the given values."""

    def __init__(self) -> None:
        self._front = bytearray()
        self._back = bytearray()  # in consumption order

    def int(self, lo: int, hi: int, value: int) -> None:
        delta = hi - lo
        n = (delta.bit_length() + 7) // 8
        self._back += (value - lo).to_bytes(n, "big") if n else b""

    def bytes(self, data: bytes) -> None:
        self._front += data

    def result(self) -> bytes:
        return bytes(self._front) + bytes(reversed(self._back))


# A field is (name, lo, hi) for an integer, or (name, None, max_len) for a byte string
# (its length is an integer field first).
Field = tuple[str, int | None, int]

MUTATION: tuple[Field, ...] = (("mut", 0, 10), ("at", 0, 0xFFFF), ("cut", 0, 24),
                               ("ins", None, 48))
METHODS = (b"INVITE", b"ACK", b"BYE", b"CANCEL", b"OPTIONS", b"INFO", b"UPDATE", b"PRACK",
           b"REFER", b"NOTIFY", b"SUBSCRIBE", b"MESSAGE", b"REGISTER", b"PUBLISH", b"FOO")
STATUSES = (100, 180, 181, 182, 183, 199, 200, 202, 204, 299, 300, 302, 401, 404, 407, 408,
            415, 480, 481, 486, 487, 488, 500, 502, 503, 504, 580, 600, 603, 604, 606, 699)

SCHEMA: dict[str, tuple[Field, ...]] = {
    "request": (("peer", 0, len(PEERS) - 1), ("method", 0, len(METHODS) - 1),
                ("call", 0, 3), ("branch", 0, 4), ("cseq", 1, 4), ("to_tag", 0, 2),
                ("route", 0, 4), ("mf", 0, 3), ("body", 0, 3), ("uri", 0, 5), ("via", 0, 3),
                *MUTATION),
    "corpus": (("peer", 0, len(PEERS) - 1), ("index", 0, 255), *MUTATION),
    "raw": (("peer", 0, len(PEERS) - 1), ("data", None, 1024), ("pad", 0, 15)),
    "advance": (("scale", 0, 2), ("amount", 0, 40000)),
    "error": (("target", 0, len(ERROR_TARGETS) - 1),),
    "answer": (("pick", 0, 7), ("calls", 0, 1), ("status", 0, 39), ("code", 0, 999),
               ("to_tag", 0, 2), ("contact", 0, 1), ("rr", 0, 1), ("retry", 0, 3), ("body", 0, 2),
               *MUTATION),
    "follow": (("pick", 0, 7), ("kind", 0, 4), *MUTATION),
    "again": (("pick", 0, 7),),
    "admin": (("what", 0, 5), ("target", 0, len(GATEWAYS) - 1)),
}
#: Op kinds by number; ``answer`` twice so that deep states come about more often.
KINDS = ("request", "corpus", "raw", "advance", "error", "answer", "follow", "again",
         "answer", "request", "advance", "corpus", "admin")


@dataclass(frozen=True)
class Op:
    kind: str
    args: dict[str, int | bytes]

    def __repr__(self) -> str:
        return f"Op({self.kind!r}, {self.args!r})"


def decode_op(p: Provider) -> Op:
    """One op from the provider (fields in ``SCHEMA`` order)."""
    kind = KINDS[p.ConsumeIntInRange(0, len(KINDS) - 1)]
    args: dict[str, int | bytes] = {}
    for name, lo, hi in SCHEMA[kind]:
        if lo is None:
            args[name] = p.ConsumeBytes(p.ConsumeIntInRange(0, hi))
        else:
            args[name] = p.ConsumeIntInRange(lo, hi)
    return Op(kind, args)


def encode(up_mask: int, ops: Sequence[Op]) -> bytes:
    """The input that decodes to ``up_mask`` and ``ops`` (for seeds and tests)."""
    enc = Encoder()
    enc.int(0, 63, up_mask)
    for op in ops:
        enc.int(0, len(KINDS) - 1, KINDS.index(op.kind))
        for name, lo, hi in SCHEMA[op.kind]:
            value = op.args.get(name, b"" if lo is None else lo)
            if lo is None:
                assert isinstance(value, bytes)
                enc.int(0, hi, len(value))
                enc.bytes(value)
            else:
                assert isinstance(value, int)
                enc.int(lo, hi, value)
    return enc.result()


def op(kind: str, /, **args: int | bytes) -> Op:
    """An op for a scripted input (seeds, regression tests); omitted fields are 0/b""."""
    return Op(kind, args)


# ---------------------------------------------------------------------------- SIP text helpers
# Deliberately independent of sipedge.sip.message: the inputs must not be produced by the
# code under test (tests/helpers/wire.py does the same).

CRLF = b"\r\n"
_VIA = (b"via", b"v")
_FROM = (b"from", b"f")
_TO = (b"to", b"t")
_CALL_ID = (b"call-id", b"i")
_CSEQ = (b"cseq",)
_RR = (b"record-route",)
_CONTACT = (b"contact", b"m")


def _head_lines(data: bytes) -> list[bytes]:
    return data.split(CRLF + CRLF, 1)[0].split(CRLF)


def _name(line: bytes) -> bytes:
    return line.split(b":", 1)[0].strip().lower()


def _values(data: bytes, names: Sequence[bytes]) -> list[bytes]:
    return [line.split(b":", 1)[1].strip() for line in _head_lines(data)[1:]
            if b":" in line and _name(line) in names]


def _value(data: bytes, names: Sequence[bytes]) -> bytes | None:
    values = _values(data, names)
    return values[0] if values else None


def _build(start: bytes, headers: Sequence[tuple[bytes, bytes]], body: bytes = b"") -> bytes:
    lines = [start, *(n + b": " + v for n, v in headers), b"Content-Length: %d" % len(body)]
    return CRLF.join(lines) + CRLF + CRLF + body


def _sdp(inside_range: bool) -> bytes:
    addr, port = (b"168.86.128.10", 20000) if inside_range else (b"192.0.2.1", 5)
    return (b"v=0\r\no=- 1 1 IN IP4 %s\r\ns=-\r\nc=IN IP4 %s\r\nt=0 0\r\n"
            b"m=audio %d RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\n"
            % (addr, addr, port))


def mutate(data: bytes, args: dict[str, int | bytes]) -> bytes:
    """Apply the op's mutation fields to ``data`` (``mut`` 0–4: unchanged).

    5 splices ``ins`` in at ``at`` over ``cut`` bytes; 6 replaces and 7 repeats a header
    line; 8 cuts the message short; 9 changes one byte; 10 inserts ``ins`` repeated
    256–6400 times (long numbers, header floods, size limits).
    """
    mut, at, cut, ins = _i(args, "mut"), _i(args, "at"), _i(args, "cut"), _b(args, "ins")
    if mut <= 4 or not data:
        return data
    pos = at % (len(data) + 1)
    if mut == 5:  # splice: cut bytes at pos, insert the fuzzed ones
        return data[:pos] + ins + data[pos + cut:]
    if mut in (6, 7):  # replace (6) or repeat (7) one header line
        head, sep, body = data.partition(CRLF + CRLF)
        lines = head.split(CRLF)
        i = at % len(lines)
        if mut == 6:
            lines[i] = ins
        else:
            lines.insert(i, lines[i])
        return CRLF.join(lines) + sep + body
    if mut == 8:  # cut short
        return data[:pos]
    if mut == 10:  # a long run: the fuzzed bytes repeated up to ~64 KB (limits, int())
        run = ins * min((cut + 1) * 256, 65536 // max(1, len(ins)))
        return data[:pos] + run + data[pos:]
    # 9: one byte changed
    i = at % len(data)
    value = ins[0] if ins else data[i] ^ 0x20
    return data[:i] + bytes([value]) + data[i + 1:]


# ---------------------------------------------------------------------------- the world


class Violation(AssertionError):
    """An invariant of the core did not hold (a crash for the fuzzer)."""


@dataclass
class Totals:
    """What a run of many inputs measured (printed as JSON)."""

    inputs: int = 0
    ops: int = 0
    ops_by_kind: dict[str, int] = field(default_factory=dict)
    sends: int = 0
    slowest_op_ms: float = 0.0
    slowest_op: str = ""
    slowest_input_sha1: str = ""
    slow_ops: int = 0  # ops over SLOW_OP_S wall time (before any re-run)
    slowest_op_cpu_ms: float = 0.0  # the same in CPU time: scheduler preemption left out
    slowest_cpu_op: str = ""
    slow_ops_cpu: int = 0
    slowest_drain_ms: float = 0.0
    max_tables_during: dict[str, int] = field(default_factory=dict)
    max_tables_after_100s: dict[str, int] = field(default_factory=dict)
    inputs_reaching: dict[str, int] = field(default_factory=dict)
    crashes: int = 0
    started: float = field(default_factory=time.monotonic)

    def as_dict(self) -> dict[str, Any]:
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out = {k: v for k, v in self.__dict__.items() if k != "started"}
        out["seconds"] = round(time.monotonic() - self.started, 1)
        out["peak_rss_mb"] = round(peak_kb / 1024, 1)
        out["slowest_op_ms"] = round(self.slowest_op_ms, 3)
        out["slowest_drain_ms"] = round(self.slowest_drain_ms, 3)
        out["slowest_op_cpu_ms"] = round(self.slowest_op_cpu_ms, 3)
        return out


TOTALS = Totals()


def _monitor(core: ProxyCore) -> GatewayMonitor:
    monitor = core.monitor
    assert monitor is not None  # build_core gives every fuzzed core its monitor
    return monitor


def _tables(core: ProxyCore) -> dict[str, int]:
    # The probe tables are the monitor's (gateway.monitor); "heap" counts both heaps.
    monitor = _monitor(core)
    return {"contexts": len(core._contexts), "branches": len(core._branches),
            "branches_by_dest": len(core._branches_by_dest), "probes": len(monitor._probes),
            "calls": len(core._calls), "heap": len(core._heap) + len(monitor._heap),
            "settled": len(core._settled) + len(core._accepted),
            "absorbing": len(core._absorbing),
            "lanes": len(core._wait_lane) + len(core._absorbing_lane),
            "direction_cache": len(core._direction_cache)}


def _merge_max(into: dict[str, int], sizes: dict[str, int]) -> None:
    for k, v in sizes.items():
        if v > into.get(k, -1):
            into[k] = v


class World:
    """One fresh core, its clock, and what the peers know of the exchange so far."""

    def __init__(self) -> None:
        self.core = build_core()
        self.now = 1000.0
        self.op_times: list[float] = []  # wall (perf_counter) seconds in the core, per op
        self.op_cpu: list[float] = []  # the same in this thread's CPU time (no preemption)
        self.trace: list[Op] = []
        #: Requests the core sent (not ACKs), newest first: what ``answer`` replies to.
        self.sent_requests: deque[Send] = deque(maxlen=8)
        #: The same without OPTIONS (probes): ``answer`` with ``calls=1`` picks here.
        self.sent_calls: deque[Send] = deque(maxlen=8)
        #: Requests trusted peers delivered, newest first: what ``follow`` builds on.
        self.delivered_requests: deque[tuple[Peer, bytes]] = deque(maxlen=8)
        #: Everything delivered, newest first: what ``again`` retransmits.
        self.delivered: deque[tuple[Peer, Endpoint, bytes]] = deque(maxlen=8)
        #: The latest response the core sent to a host, by (host, Call-ID).
        self.responses: dict[tuple[str, bytes], bytes] = {}
        self.trusted_bytes: list[bytes] = []
        self._elapsed = 0.0
        self._cpu = 0.0
        self._requester = ""  # host that delivered a request in the current op
        self._checked: set[Send] = set()

    # -- core calls (timed) -------------------------------------------------------------

    def _timed(self, fn: Callable[[], None]) -> None:
        t0, c0 = time.perf_counter(), time.thread_time()
        fn()
        self._elapsed += time.perf_counter() - t0
        self._cpu += time.thread_time() - c0

    def _advance(self, seconds: float) -> tuple[float, float]:
        """Like ``ProxyHarness.advance``: every deadline up to now+seconds, in order.

        Returns the longest single ``handle_timer`` call (wall, CPU seconds): the shell
        makes one call per deadline, so that (not the sum over 40 s of timers) is what
        blocks its loop.
        """
        core = self.core
        target = self.now + seconds
        clock, cpu = time.perf_counter, time.thread_time
        longest = longest_cpu = 0.0
        while True:
            deadline = core.next_deadline()
            final = deadline is None or deadline > target
            self.now = target if final else max(self.now, deadline)  # type: ignore[type-var]
            t0, c0 = clock(), cpu()
            core.handle_timer(self.now)
            longest = max(longest, clock() - t0)
            longest_cpu = max(longest_cpu, cpu() - c0)
            if final:
                return longest, longest_cpu

    # -- start ----------------------------------------------------------------------------

    def start(self, up_mask: int) -> None:
        """First probes; the gateways in ``up_mask`` answer 200 (one reply: UP)."""
        core = self.core
        core.start(self.now)
        core.handle_timer(self.now)
        probes = self._collect(None)
        for send in probes:
            gw = GATEWAYS.index(send.dest) if send.dest in GATEWAYS else -1
            if gw >= 0 and up_mask >> gw & 1:
                reply = respond_to(send.data, 200, to_tag=b"up")
                core.receive(reply, send.dest, send.local, self.now)
        self._collect(None)

    # -- ops ------------------------------------------------------------------------------

    def apply(self, o: Op) -> None:
        self.trace.append(o)
        self._elapsed = self._cpu = 0.0
        self._requester = ""
        before = _tables(self.core)
        peer: Peer | None = None
        a = o.args
        if o.kind == "request":
            peer = PEERS[_i(a, "peer")]
            self._deliver(peer, peer.listener, mutate(self._template(peer, a), a))
        elif o.kind == "corpus":
            peer = PEERS[_i(a, "peer")]
            if CORPUS_MESSAGES:
                data = CORPUS_MESSAGES[_i(a, "index") % len(CORPUS_MESSAGES)]
            else:
                data = self._template(peer, {})
            self._deliver(peer, peer.listener, mutate(data, a))
        elif o.kind == "raw":
            peer = PEERS[_i(a, "peer")]
            data = _b(a, "data")
            if _i(a, "pad") == 15:
                data += b" " * 70000  # beyond max_message_bytes
            self._deliver(peer, peer.listener, data)
        elif o.kind == "advance":
            limit = (1000, 5000, 40000)[_i(a, "scale")]
            seconds = (_i(a, "amount") % (limit + 1)) / 1000.0
            self._elapsed, self._cpu = self._advance(seconds)
        elif o.kind == "error":
            dest = ERROR_TARGETS[_i(a, "target")]
            self._timed(lambda: self.core.transport_error(dest, self.now))
        elif o.kind == "answer":
            self._answer(a)
        elif o.kind == "follow":
            peer = self._follow(a)
        elif o.kind == "admin":
            self._admin(_i(a, "what"), _i(a, "target"))
        elif o.kind == "again" and self.delivered:
            peer, local, data = self.delivered[_i(a, "pick") % len(self.delivered)]
            self._deliver(peer, local, data, remember=False)
        self.op_times.append(self._elapsed)
        self.op_cpu.append(self._cpu)
        sends = self._collect(o)
        after = _tables(self.core)
        _merge_max(TOTALS.max_tables_during, after)
        core = self.core
        for dest, keys in core._branches_by_dest.items():
            # The index by destination names live branches only, each under its own dest.
            for key in keys:
                branch = core._branches.get(key)
                if branch is None or branch.dest != dest:
                    raise Violation(f"_branches_by_dest[{dest}] holds {key!r}, which is "
                                    f"{'gone' if branch is None else 'elsewhere'}, "
                                    f"after {o!r}")
        if peer is not None and not peer.trusted:
            if sends:
                raise Violation(f"the stranger's {o.kind} produced sends: {sends[:2]!r}")
            for k in ("contexts", "branches", "calls", "probes"):
                if after[k] > before[k]:
                    raise Violation(f"the stranger's {o.kind} grew {k}: {before} → {after}")

    def _deliver(self, peer: Peer, local: Endpoint, data: bytes, *, remember: bool = True
                 ) -> None:
        if peer.trusted:
            self.trusted_bytes.append(data)
            if remember and not data.startswith(b"SIP/"):
                self.delivered_requests.appendleft((peer, data))
        if remember:
            self.delivered.appendleft((peer, local, data))
        if not data.startswith(b"SIP/"):
            self._requester = peer.endpoint.host
        self._timed(lambda: self.core.receive(data, peer.endpoint, local, self.now))

    def _template(self, peer: Peer, a: dict[str, int | bytes]) -> bytes:
        """A request as a peer of that side would send it, shaped by the op's fields."""
        method = METHODS[_i(a, "method")]
        ep = peer.endpoint
        inside = peer.listener in (INSIDE_UDP, INSIDE_TCP)
        proxy = peer.listener.hostport.encode()
        user = b"+1415555%04d" % (100 + _i(a, "call"))
        uri = (
            b"sip:" + user + b"@" + proxy + (b"" if inside else b";edge=ashburn-ix"),
            b"sip:" + user + b"@example.sip.twilio.com",
            b"tel:" + user,
            b"sip:" + proxy,
            b"sip:" + user + b"@" + proxy + b";tnx=1234;transport=tcp",
            b"sip:bob@" + (CALLEE.hostport if inside else VIRGINIA[0].hostport).encode(),
        )[_i(a, "uri")]
        branch = _i(a, "branch")
        bid = b"2543-%d" % branch if branch == 4 else b"z9hG4bK-fz%d" % branch
        sent_by = ep.hostport.encode()
        via = b"SIP/2.0/%s %s;branch=%s" % (ep.via_transport, sent_by, bid)
        vias = [via]
        v = _i(a, "via")
        if v == 1:
            vias = [via + b";rport"]
        elif v == 2:
            vias = [b"SIP/2.0/%s %s:5999;branch=%s;rport" % (ep.via_transport,
                                                            ep.host.encode(), bid)]
        elif v == 3:
            vias = [via, b"SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bK-up%d" % branch]
        call_id = b"fz-call-%d@fuzz" % _i(a, "call")
        to_tag = (b"", b";tag=tt1", b";tag=tt2")[_i(a, "to_tag")]
        headers: list[tuple[bytes, bytes]] = [(b"Via", x) for x in vias]
        mf = (70, 1, 0, None)[_i(a, "mf")]
        if mf is not None:
            headers.append((b"Max-Forwards", b"%d" % mf))
        own = self.core.listeners.record_route(peer.listener)
        other = self.core.listeners.record_route(OUTSIDE_UDP if inside else INSIDE_UDP)
        foreign = b"<sip:%s;lr>" % (CALLEE.hostport if inside else VIRGINIA[2].hostport).encode()
        routes = ((), (own,), (own, foreign), (foreign,), (own, other))[_i(a, "route")]
        headers += [(b"Route", r) for r in routes]
        headers += [
            (b"From", b"<sip:caller@%s>;tag=fz%d" % (ep.host.encode(), _i(a, "call"))),
            (b"To", b"<sip:" + user + b"@" + proxy + b">" + to_tag),
            (b"Call-ID", call_id),
            (b"CSeq", b"%d %s" % (_i(a, "cseq"), method)),
            (b"Contact", b"<sip:caller@%s%s>" % (
                sent_by, b";transport=tcp" if ep.transport == "tcp" else b"")),
        ]
        body = b""
        b = _i(a, "body")
        if b in (1, 2):
            headers.append((b"Content-Type", b"application/sdp"))
            body = _sdp(b == 1)
        elif b == 3:
            headers.append((b"Content-Type", b"text/plain"))
            body = b"hello"
        return _build(method + b" " + uri + b" SIP/2.0", headers, body)

    def _admin(self, what: int, target: int) -> None:
        """The shell's other inputs: drain mode, admin down/up, a pool reload (DNS)."""
        core, now = self.core, self.now
        gw_id = next((g.id for g in core.pool.gateways() if g.endpoint == GATEWAYS[target]),
                     None)
        if what == 0:
            self._timed(lambda: core.set_draining(True))
        elif what == 1:
            self._timed(lambda: core.set_draining(False))
        elif what in (2, 3) and gw_id is not None:
            fn = core.drain_gateway if what == 2 else core.enable_gateway
            self._timed(lambda: fn(gw_id, now))
        elif what == 4:  # a reload that drops one gateway (its calls in flight go on)
            pool = build_pool(exclude=target)
            self._timed(lambda: core.reload_pool(pool, now))
        elif what == 5:  # and one that brings every gateway back
            pool = build_pool()
            self._timed(lambda: core.reload_pool(pool, now))

    def _answer(self, a: dict[str, int | bytes]) -> None:
        pool = self.sent_calls if _i(a, "calls") else self.sent_requests
        if not pool:
            return
        send = pool[_i(a, "pick") % len(pool)]
        s = _i(a, "status")
        status = STATUSES[s] if s < len(STATUSES) else _i(a, "code")
        extra: list[tuple[bytes, bytes]] = []
        dest = send.dest
        if _i(a, "contact"):
            extra.append((b"Contact", b"<sip:uas@%s%s>" % (
                dest.hostport.encode(), b";transport=tcp" if dest.transport == "tcp" else b"")))
        if _i(a, "rr"):
            extra.append((b"Record-Route", b"<sip:%s;lr>" % dest.hostport.encode()))
        retry = _i(a, "retry")
        if retry:
            extra.append((b"Retry-After", (b"0", b"5", b"120000 (x);duration=1")[retry - 1]))
        body = b""
        if _i(a, "body"):
            extra.append((b"Content-Type", b"application/sdp"))
            body = _sdp(_i(a, "body") == 1)
        to_tag = (None, b"gw1", b"gw2")[_i(a, "to_tag")]
        data = mutate(respond_to(send.data, status, to_tag=to_tag, extra=extra, body=body), a)
        # The answer comes from where the request went, on the listener it left from.
        responder = Peer("responder", dest, send.local, True)
        self._deliver(responder, send.local, data)

    def _follow(self, a: dict[str, int | bytes]) -> Peer | None:
        if not self.delivered_requests:
            return None
        peer, orig = self.delivered_requests[_i(a, "pick") % len(self.delivered_requests)]
        lines = _head_lines(orig)
        parts = lines[0].split(b" ")
        if len(parts) < 3:
            return None
        ruri = parts[1]
        via = _value(orig, _VIA) or b"SIP/2.0/UDP 127.0.0.1;branch=z9hG4bK-x"
        from_ = _value(orig, _FROM) or b"<sip:x@127.0.0.1>;tag=x"
        to = _value(orig, _TO) or b"<sip:y@127.0.0.1>"
        call_id = _value(orig, _CALL_ID) or b"none"
        cseq = (_value(orig, _CSEQ) or b"1 INVITE").split(b" ", 1)[0]
        number = int(cseq) if cseq.isdigit() and len(cseq) < 9 else 1
        resp = self.responses.get((peer.endpoint.host, call_id))
        routes: list[bytes] = []
        if resp is not None:
            to = _value(resp, _TO) or to
            routes = list(reversed(_values(resp, _RR)))  # UAC route set (RFC 3261 §12.1.2)
            contact = _value(resp, _CONTACT)
            if contact and b"<" in contact and b">" in contact:
                target = contact[contact.index(b"<") + 1:contact.index(b">")]
            else:
                target = ruri
        else:
            target = ruri
        kind = _i(a, "kind")
        new_via = via.split(b";branch=")[0] + b";branch=z9hG4bK-fu%d-%d" % (kind, number)
        if kind == 0:  # CANCEL: same branch, same CSeq number, original To (RFC 3261 §9.1)
            start, hv, hto, cs, hr = b"CANCEL " + ruri, via, _value(orig, _TO) or to, (
                b"%d CANCEL" % number), []
        elif kind == 1:  # ACK for a non-2xx: same branch (§17.1.1.3)
            start, hv, hto, cs, hr = b"ACK " + ruri, via, to, b"%d ACK" % number, []
        elif kind == 2:  # ACK for a 2xx: its own transaction, along the route set (§13.2.2.4)
            start, hv, hto, cs, hr = b"ACK " + target, new_via, to, b"%d ACK" % number, routes
        elif kind == 3:
            start, hv, hto, cs, hr = b"BYE " + target, new_via, to, b"%d BYE" % (number + 1), routes
        else:
            start, hv, hto, cs, hr = (b"INVITE " + target, new_via, to,
                                      b"%d INVITE" % (number + 2), routes)
        headers = [(b"Via", hv), (b"Max-Forwards", b"70"), *((b"Route", r) for r in hr),
                   (b"From", from_), (b"To", hto), (b"Call-ID", call_id), (b"CSeq", cs)]
        data = mutate(_build(start + b" SIP/2.0", headers), a)
        self._deliver(peer, peer.listener, data)
        return peer

    # -- outputs and invariants -------------------------------------------------------------

    def _collect(self, o: Op | None) -> list[Send]:
        sends = self.core.drain_outbox()
        self.core.drain_events()
        for s in sends:
            self._check_send(s, o)
            if s.data.startswith(b"SIP/"):
                call_id = _value(s.data, _CALL_ID)
                if call_id is not None:
                    self.responses[(s.dest.host, call_id)] = s.data
            elif not s.data.startswith(b"ACK ") and s.data != CRLF + CRLF:
                self.sent_requests.appendleft(s)
                if not s.data.startswith(b"OPTIONS "):
                    self.sent_calls.appendleft(s)
        TOTALS.sends += len(sends)
        return sends

    def _check_send(self, s: Send, o: Op | None) -> None:
        if s in self._checked:  # a retransmission: the same bytes to the same place
            return
        self._checked.add(s)
        dest = s.dest
        where = f"after {o!r}" if o is not None else "at start"
        if dest.transport not in TRANSPORTS or not 0 < dest.port < 65536:
            raise Violation(f"send to an invalid address {dest} {where}")
        loopback = _loopback(dest.host)
        if loopback is None:
            raise Violation(f"send to a non-IP or non-unicast host {dest.host!r} {where}")
        if dest.host == STRANGER_HOST or not (loopback or dest.host in TRUSTED_HOSTS):
            host_b = dest.host.encode()
            if not any(host_b in data for data in self.trusted_bytes):
                raise Violation(f"send to an address no trusted peer named: {dest} {where}: "
                                f"{s.data[:80]!r}")
        if (s.local.host, s.local.port) not in _LISTENER_ADDRS:
            raise Violation(f"send from {s.local}, not one of our listeners, {where}")
        if s.data == CRLF + CRLF:
            return
        try:
            msg = parse(s.data)
            # The header index must build too, except in an answer to the request this
            # op delivered: a 400 copies the offending lines (RFC 3261 §8.2.6).
            if not (isinstance(msg, Response) and dest.host == self._requester):
                msg.header_lines()
            if isinstance(msg, Request):
                top = msg.top_via
                if (top.host.decode(), top.port) not in _LISTENER_ADDRS:
                    raise Violation(f"request sent without our Via on top {where}: "
                                    f"{s.data[:200]!r}")
        except ParseError as exc:
            raise Violation(f"sent bytes do not parse again ({exc}) {where}: "
                            f"{s.data[:300]!r}") from exc

    def drain(self) -> dict[str, int]:
        """Invariant 4: with no more input the tables empty as the timers run out."""
        core = self.core
        t0 = time.perf_counter()
        # The input is over: probe once a day from now on, so that the 700 s below cost
        # a few probes rather than a hundred (each gateway still gets its due probe).
        schedule = _monitor(core).schedule
        schedule.interval_up_s = schedule.interval_down_s = 86400.0
        self._advance(100.0)
        self._collect(None)
        after_100 = _tables(core)
        # Past Timer C (180 s) + the CANCEL's 64*T1 + Timer D/K/M: nothing may be left.
        self._advance(600.0)
        self._collect(None)
        left = _tables(core)
        if (left["contexts"] or left["branches"] or left["branches_by_dest"]
                or left["settled"] or left["absorbing"] or left["lanes"]):
            raise Violation(f"tables not drained 700 s after the last input: {left}; "
                            f"contexts {[c.request.data[:60] for c in core._contexts.values()]}")
        if left["probes"] > len(GATEWAYS) or left["heap"] > 4 * len(GATEWAYS) + 2:
            raise Violation(f"probe state grows: {left}")
        # Answered calls are forgotten after CALL_IDLE_TIMEOUT_S without activity.
        self.now += CALL_IDLE_TIMEOUT_S + 2 * CALL_SWEEP_INTERVAL_S
        core.handle_timer(self.now)
        self.now += CALL_SWEEP_INTERVAL_S
        core.handle_timer(self.now)
        self._collect(None)
        if core._calls:
            raise Violation(f"answered calls never swept: {len(core._calls)}")
        TOTALS.slowest_drain_ms = max(TOTALS.slowest_drain_ms,
                                      (time.perf_counter() - t0) * 1000)
        return after_100


_LISTENER_ADDRS = frozenset((ep.host, ep.port) for ep in LISTENERS)
_HOSTS: dict[str, bool | None] = {}


def _loopback(host: str) -> bool | None:
    """True for a loopback IP literal, False for another unicast IP, None for anything
    no request or response may go to: a name, an unspecified, multicast or broadcast
    address (cached)."""
    if host not in _HOSTS:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            _HOSTS[host] = None
        else:
            bad = (ip.is_unspecified or ip.is_multicast
                   or ip == ipaddress.IPv4Address("255.255.255.255"))
            _HOSTS[host] = None if bad else ip.is_loopback
    return _HOSTS[host]


def respond_to(request: bytes, status: int, *, to_tag: bytes | None,
               extra: Sequence[tuple[bytes, bytes]] = (), body: bytes = b"") -> bytes:
    """The response a UAS sends (RFC 3261 §8.2.6), compact header names understood."""
    reason = b"OK" if 200 <= status < 300 else b"Fuzz"
    lines = [b"SIP/2.0 %d %s" % (status, reason)]
    for line in _head_lines(request)[1:]:
        name = _name(line)
        if name in (*_VIA, *_FROM, *_CALL_ID, *_CSEQ, *_RR):
            lines.append(line)
        elif name in _TO:
            if to_tag is not None and status > 100 and b"tag=" not in line:
                line += b";tag=" + to_tag
            lines.append(line)
    lines += [n + b": " + v for n, v in extra]
    lines.append(b"Content-Length: %d" % len(body))
    return CRLF.join(lines) + CRLF + CRLF + body


def _i(args: dict[str, int | bytes], name: str) -> int:
    value = args.get(name, 0)
    assert isinstance(value, int)
    return value


def _b(args: dict[str, int | bytes], name: str) -> bytes:
    value = args.get(name, b"")
    assert isinstance(value, bytes)
    return value


# ---------------------------------------------------------------------------- one input


@dataclass
class Outcome:
    ops: list[Op]
    op_times: list[float]
    op_cpu: list[float]
    tables_after_100s: dict[str, int]
    reached: list[str]


#: ProxyStats (and ProbeStats) counters whose being non-zero says how deep an input went.
_DEPTH = ("failovers", "cancels", "retransmissions_absorbed", "stray_responses",
          "loops_detected", "no_gateway_503", "probe_timeouts", "transport_errors",
          "parse_errors_answered", "calls_idle_expired", "tnx_deprecated")


def _reached(core: ProxyCore) -> list[str]:
    st = core.stats
    counters = (st, core.probe_stats)  # probe_timeouts is the monitor's
    out = [name for name in _DEPTH if any(getattr(c, name, 0) for c in counters)]
    out += sorted({f"failover:{reason.name}" for (_, _, reason) in st.failovers_by})
    out += [f"reply:{code}" for code in st.local_replies]
    out += ["answered"] if st.calls_answered else []
    return out


def decode(data: bytes, provider: Provider | None = None) -> tuple[int, list[Op]]:
    """The start mask and the ops an input stands for (without running them)."""
    p = provider or BytesProvider(data)
    up_mask = p.ConsumeIntInRange(0, 63)
    ops = []
    while len(ops) < MAX_OPS and p.remaining_bytes() > 0:
        ops.append(decode_op(p))
    return up_mask, ops


def run_ops(up_mask: int, ops: Iterator[Op] | Sequence[Op]) -> Outcome:
    """Run one scripted input on a fresh core, checking the invariants (raises on a crash)."""
    world = World()
    world.start(up_mask)
    for o in ops:
        world.apply(o)
    after_100 = world.drain()
    return Outcome(world.trace, world.op_times, world.op_cpu, after_100, _reached(world.core))


def _lazy_ops(p: Provider) -> Iterator[Op]:
    n = 0
    while n < MAX_OPS and p.remaining_bytes() > 0:
        n += 1
        yield decode_op(p)


def run_input(data: bytes, provider: Provider | None = None) -> Outcome:
    """Decode and run one fuzz input (atheris passes its own provider over ``data``)."""
    p = provider or BytesProvider(data)
    up_mask = p.ConsumeIntInRange(0, 63)
    return run_ops(up_mask, _lazy_ops(p))


def _account(data: bytes, outcome: Outcome) -> None:
    TOTALS.inputs += 1
    TOTALS.ops += len(outcome.ops)
    for o in outcome.ops:
        TOTALS.ops_by_kind[o.kind] = TOTALS.ops_by_kind.get(o.kind, 0) + 1
    for i, c in enumerate(outcome.op_cpu):
        if c > SLOW_OP_S:
            TOTALS.slow_ops_cpu += 1
        if c * 1000 > TOTALS.slowest_op_cpu_ms:
            TOTALS.slowest_op_cpu_ms = c * 1000
            TOTALS.slowest_cpu_op = repr(outcome.ops[i])[:300]
    for i, t in enumerate(outcome.op_times):
        if t > SLOW_OP_S:
            TOTALS.slow_ops += 1
        if t * 1000 > TOTALS.slowest_op_ms:
            TOTALS.slowest_op_ms = t * 1000
            TOTALS.slowest_op = repr(outcome.ops[i])[:300]
            TOTALS.slowest_input_sha1 = hashlib.sha1(data).hexdigest()
    _merge_max(TOTALS.max_tables_after_100s, outcome.tables_after_100s)
    for name in outcome.reached:
        TOTALS.inputs_reaching[name] = TOTALS.inputs_reaching.get(name, 0) + 1


class SlowOp(AssertionError):
    """The same op was over the fail threshold in three runs of one input."""


SLOW_DIR = HERE / "slow"
_saved_slow = [0]


def fuzz_one(data: bytes, *, slow: str, provider_factory: Callable[[bytes], Provider],
             fail_s: float = SLOW_OP_S, save_slow: bool = False) -> None:
    """One input: run, account, and apply the slow-op policy.

    ``slow="fail"``: an op over ``fail_s`` makes the input run twice more, and the same
    op over ``fail_s`` all three times is a crash. With ``save_slow`` the first 50 inputs
    with an op over SLOW_OP_S go to ``fuzz/slow/`` (``--replay`` times them uninstrumented).
    """
    outcome = run_input(data, provider_factory(data))
    _account(data, outcome)
    if save_slow and _saved_slow[0] < 50 and max(outcome.op_cpu, default=0) > SLOW_OP_S:
        SLOW_DIR.mkdir(exist_ok=True)
        (SLOW_DIR / f"slow-{hashlib.sha1(data).hexdigest()}").write_bytes(data)
        _saved_slow[0] += 1
    if slow != "fail":
        return
    slow_idx = {i for i, t in enumerate(outcome.op_cpu) if t > fail_s}
    for _ in range(2):
        if not slow_idx:
            return
        again = run_input(data, provider_factory(data))
        slow_idx &= {i for i, t in enumerate(again.op_cpu) if t > fail_s}
    if slow_idx:
        i = min(slow_idx)
        raise SlowOp(f"op {i} {outcome.ops[i]!r} took > {fail_s * 1000:.0f} ms "
                     f"of CPU three times ({outcome.op_cpu[i] * 1000:.1f} ms first)")


# ---------------------------------------------------------------------------- seeds


def scenarios() -> list[tuple[int, list[Op]]]:
    """Scripted inputs that reach deep states; the seed corpus is their encoding."""
    everyone = 63
    invite = op("request", peer=0, method=0, call=0, branch=0, cseq=1, body=1)
    invite_tcp = op("request", peer=1, method=0, call=1, branch=1, cseq=1, body=1)
    inbound = op("request", peer=2, method=0, call=2, branch=2, cseq=1, body=1)

    def ans(code: int, **args: int) -> Op:
        """The answer to the latest (or ``pick``-th) call request, probes left out."""
        return op("answer", calls=1, status=STATUSES.index(code), **args)

    ack2xx, bye, cancel = op("follow", kind=2), op("follow", kind=3), op("follow", kind=0)
    wait40 = op("advance", scale=2, amount=40000)
    out: list[tuple[int, list[Op]]] = [
        # Outbound call answered, ACKed, hung up by the PBX.
        (everyone, [invite, ans(100), ans(180), ans(200, contact=1, rr=1, body=1), ack2xx, bye,
                    ans(200), wait40]),
        # Failover on 503, ringing on the next gateway, the caller's CANCEL, 487 + ACK.
        (everyone, [invite, ans(503, retry=2), ans(180), cancel, ans(200, pick=1), ans(487),
                    op("advance", scale=1, amount=5000)]),
        # No provisional: failover after 4 s, then Timer C on a branch that rings forever.
        (everyone, [invite_tcp, op("advance", scale=1, amount=4500), ans(180), *[wait40] * 6,
                    ans(487)]),
        # A transport error on the first gateway, then a busy answer from the second.
        (7, [invite, op("error", target=0), ans(486), op("follow", kind=1),
             op("again", pick=0)]),
        # Inbound call from a gateway to the PBX callee, BYE from the PBX side.
        (everyone, [inbound, ans(180), ans(200, contact=1), ack2xx, bye, ans(200)]),
        # CANCEL racing the 2xx: CANCEL first, then the 200 arrives anyway.
        (everyone, [invite, ans(180), cancel, ans(200, pick=1), ans(200), ack2xx]),
        # Every gateway down: 503 from sipedge; a probe answered, the next call times out.
        (0, [wait40, op("advance", scale=2, amount=10000), invite,
             op("answer", status=STATUSES.index(200)), invite_tcp, ans(408)]),
        # A stranger knocks on both sides.
        (everyone, [op("request", peer=7, method=0), op("request", peer=8, method=4),
                    op("raw", peer=7, data=b"OPTIONS sip:x SIP/2.0\r\n\r\n")]),
        # OPTIONS to sipedge itself, and a re-INVITE in a dialog.
        (everyone, [op("request", peer=0, method=4, uri=3),
                    op("request", peer=0, method=0, to_tag=1, route=1)]),
    ]
    # Each corpus message from the PBX and from a gateway, answered 180/200 and ended.
    for index in range(len(CORPUS_MESSAGES)):
        for peer in (0, 3):
            out.append((everyone, [op("corpus", peer=peer, index=index), ans(180), ans(200),
                                   ack2xx, bye]))
    return out


def seed_inputs() -> list[bytes]:
    return [encode(mask, ops) for mask, ops in scenarios()]


def make_seeds(directory: Path = SEED_DIR) -> int:
    """Write the encoded scenarios into ``directory`` if it holds no file yet."""
    directory.mkdir(exist_ok=True)
    if any(directory.iterdir()):
        return 0
    n = 0
    for data in seed_inputs():
        (directory / hashlib.sha1(data).hexdigest()).write_bytes(data)
        n += 1
    return n


# ---------------------------------------------------------------------------- pure-Python fallback


def mutate_input(data: bytes, rng: random.Random, others: Sequence[bytes]) -> bytes:
    """A few libFuzzer-style byte mutations (no coverage feedback here)."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        choice = rng.randrange(6)
        pos = rng.randint(0, len(buf))
        if choice == 0 and buf:  # flip a bit
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        elif choice == 1:  # insert random bytes
            buf[pos:pos] = rng.randbytes(rng.randint(1, 8))
        elif choice == 2 and buf:  # delete a range
            del buf[pos:pos + rng.randint(1, 16)]
        elif choice == 3 and buf:  # an interesting byte
            buf[rng.randrange(len(buf))] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, 0x0D, 0x0A))
        elif choice == 4 and others:  # splice with another input
            other = rng.choice(others)
            cut = rng.randint(0, len(other))
            buf = buf[:pos] + bytearray(other[cut:cut + rng.randint(1, 64)]) + buf[pos:]
        else:  # append ints (new ops at the end, where integers are read)
            buf += rng.randbytes(rng.randint(1, 24))
    return bytes(buf)


def fallback(seed: int, runs: int, max_seconds: float | None = None,
             crash_dir: Path | None = None) -> Totals:
    """Random inputs from ``random.Random(seed)`` through the same decoder and checks.

    Half mutate a seed input, half are random bytes. Raises on the first crash after
    writing its input to ``crash_dir`` (when given).
    """
    rng = random.Random(seed)
    seeds = seed_inputs()
    deadline = None if max_seconds is None else time.monotonic() + max_seconds
    for _ in range(runs):
        if deadline is not None and time.monotonic() > deadline:
            break
        if rng.random() < 0.6:
            data = mutate_input(rng.choice(seeds), rng, seeds)
        else:
            data = rng.randbytes(rng.randint(0, 1500))
        try:
            fuzz_one(data, slow="report", provider_factory=BytesProvider)
        except BaseException:
            TOTALS.crashes += 1
            if crash_dir is not None:
                crash_dir.mkdir(parents=True, exist_ok=True)
                path = crash_dir / f"crash-{hashlib.sha1(data).hexdigest()}"
                path.write_bytes(data)
                print(f"crash input written to {path}", file=sys.stderr)
            print(f"crash on input {data.hex()}", file=sys.stderr)
            raise
    return TOTALS


def check_slow(paths: Sequence[str]) -> int:
    """Time saved inputs uninstrumented: 1 when an op is over 10 ms of CPU in 3 of 3 runs.

    The 10 ms budget is judged here, not under atheris, whose instrumentation slows
    pure-Python byte loops up to ~30x (a 6.5 ms op measured 181 ms instrumented).
    """
    rc = 0
    files = [p for path in paths for p in (sorted(Path(path).iterdir()) if Path(path).is_dir()
                                           else [Path(path)])]
    for path in files:
        data = path.read_bytes()
        runs = [run_input(data) for _ in range(3)]
        worst = [min(r.op_cpu[i] for r in runs) for i in range(len(runs[0].op_cpu))]
        over = [i for i, c in enumerate(worst) if c > SLOW_OP_S]
        for i in over:
            print(f"{path}: op {i} {runs[0].ops[i].kind} {worst[i] * 1000:.1f} ms CPU "
                  f"(min of 3) > {SLOW_OP_S * 1000:.0f} ms")
            rc = 1
    print(f"check-slow: {len(files)} inputs, {'some' if rc else 'no'} op over "
          f"{SLOW_OP_S * 1000:.0f} ms of CPU")
    return rc


def replay(paths: Sequence[str]) -> int:
    """Run saved inputs without atheris, printing their ops; 1 if any crashes."""
    rc = 0
    for path in paths:
        data = Path(path).read_bytes()
        up_mask, ops = decode(data)
        print(f"{path}: up_mask={up_mask} ops={ops!r}")
        try:
            outcome = run_ops(up_mask, ops)
            for o, t, c in zip(outcome.ops, outcome.op_times, outcome.op_cpu, strict=True):
                flag = "  SLOW" if c > SLOW_OP_S else ""
                print(f"  {t * 1000:8.2f} ms wall {c * 1000:8.2f} ms CPU  {o.kind}{flag}")
        except BaseException as exc:
            print(f"  CRASH: {type(exc).__name__}: {exc}")
            rc = 1
            import traceback
            traceback.print_exc()
    return rc


# ---------------------------------------------------------------------------- main


def _report() -> None:
    print("fuzz_core totals: " + json.dumps(TOTALS.as_dict(), sort_keys=True),
          file=sys.stderr, flush=True)


def _atheris_main(argv: list[str]) -> None:
    assert atheris is not None
    slow = os.environ.get("SIPEDGE_FUZZ_SLOW", "report")
    fail_s = float(os.environ.get("SIPEDGE_FUZZ_SLOW_MS", "30")) / 1000
    if not any(not a.startswith("-") for a in argv[1:]):
        argv = [*argv, str(SEED_DIR)]  # default corpus directory
    made = make_seeds()
    if made:
        print(f"fuzz_core: wrote {made} seed inputs to {SEED_DIR}", file=sys.stderr)
    last = [time.monotonic()]

    def one_input(data: bytes) -> None:
        fuzz_one(data, slow=slow, provider_factory=atheris.FuzzedDataProvider,
                 fail_s=fail_s, save_slow=True)
        if time.monotonic() - last[0] > 30:
            last[0] = time.monotonic()
            _report()

    atexit.register(_report)
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


def _flag(argv: list[str], name: str, default: str) -> str:
    for i, a in enumerate(argv):
        if a.startswith(f"{name}="):
            return a.split("=", 1)[1]
        if a == name and i + 1 < len(argv):
            return argv[i + 1]
    return default


def main(argv: list[str]) -> int:
    if "--make-seeds" in argv:
        print(f"{make_seeds()} seed inputs written to {SEED_DIR}")
        return 0
    if "--check-slow" in argv:
        return check_slow([a for a in argv[1:] if not a.startswith("-")] or [str(SLOW_DIR)])
    if "--replay" in argv:
        return replay([a for a in argv[1:] if not a.startswith("-")])
    if "--fallback" in argv or atheris is None:
        # Accept the atheris spellings too, so one command line works either way.
        runs = int(_flag(argv, "--runs", _flag(argv, "-atheris_runs", "20000")))
        seconds = float(_flag(argv, "--seconds", _flag(argv, "-max_total_time", "0"))) or None
        seed = int(_flag(argv, "--seed", _flag(argv, "-seed", "1")))
        try:
            fallback(seed, runs, seconds, crash_dir=HERE / "crashes")
        finally:
            _report()
        return 0
    _atheris_main(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
