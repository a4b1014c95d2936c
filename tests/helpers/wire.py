"""ProxyHarness: drive a real ``ProxyCore`` with bytes and a fake clock (no sockets, no mocks).

The lab topology of ``conf/lab.toml`` on UDP only:

* inside listener ``udp:127.0.0.1:5080`` (the PBX side), PBX allowed from 127.0.0.1/32,
  calls from Twilio go to the PBX callee ``udp:127.0.0.10:5060``;
* outside listener ``udp:127.0.0.3:5060`` (the Twilio side);
* gateways: ashburn-ix (Virginia) 127.0.0.64-66, then san-jose-ix (Oregon) 127.0.1.64-66.

This is the analogue of h11's ``ConnectionPair`` / aioquic's ``roundtrip``: a test feeds the
datagram a peer would send (``feed``), moves the ``FakeClock`` (``advance``, which calls
``handle_timer`` at every ``next_deadline`` on the way) and asserts on the ``Send`` records
that come out: their bytes, destination and listener.

The SIP builders here are deliberately independent of ``sipedge.sip.message``: a test input
must not be produced by the code under test.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from sipedge.config import Config, InsideConfig, OutsideConfig, ProcessConfig, build_settings
from sipedge.gateway.health import Health, HealthPolicy
from sipedge.gateway.monitor import GatewayMonitor
from sipedge.gateway.pool import Gateway, GatewayPool
from sipedge.gateway.probe import ProbeSchedule
from sipedge.proxy.core import ProxyCore, Send, probe_settings
from sipedge.proxy.events import Event
from sipedge.proxy.settings import WorkerPlace
from sipedge.sip.address import Endpoint

__all__ = [
    "CALLEE",
    "DOMAIN",
    "INSIDE",
    "OREGON",
    "OUTSIDE",
    "PBX",
    "STRANGER",
    "VIRGINIA",
    "FakeClock",
    "ProxyHarness",
    "branch_of",
    "calls",
    "first_line",
    "header",
    "headers",
    "make_request",
    "make_response",
    "responses",
    "status_of",
    "to",
]

INSIDE = Endpoint("udp", "127.0.0.1", 5080)
OUTSIDE = Endpoint("udp", "127.0.0.3", 5060)
#: The PBX as a caller (its UDP source port is not the listener port: rport matters).
PBX = Endpoint("udp", "127.0.0.1", 5060)
#: Where calls from Twilio go (``inside.pbx``).
CALLEE = Endpoint("udp", "127.0.0.10", 5060)
STRANGER = Endpoint("udp", "127.0.0.99", 5060)
VIRGINIA = tuple(Endpoint("udp", f"127.0.0.{n}", 5060) for n in (64, 65, 66))
OREGON = tuple(Endpoint("udp", f"127.0.1.{n}", 5060) for n in (64, 65, 66))
DOMAIN = "example"
EDGE_HOST = {"ashburn-ix": b"example.sip.ashburn-ix.twilio.com",
             "san-jose-ix": b"example.sip.san-jose-ix.twilio.com"}

CRLF = b"\r\n"


class FakeClock:
    """Monotonic seconds that only move when a test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------------------- SIP builders


def make_request(method: bytes, request_uri: bytes, *, via: Sequence[bytes],
                 from_: bytes = b"<sip:pbx@127.0.0.1>;tag=pbxtag1",
                 to: bytes = b"<sip:+14155550100@127.0.0.1:5080>",
                 call_id: bytes = b"call-1@127.0.0.1", cseq: int = 1,
                 cseq_method: bytes | None = None, max_forwards: int | None = 70,
                 headers: Iterable[tuple[bytes, bytes]] = (), body: bytes = b"") -> bytes:
    """A request as a UA would put it on the wire (full header names, CRLF, Content-Length)."""
    lines = [method + b" " + request_uri + b" SIP/2.0"]
    lines += [b"Via: " + v for v in via]
    if max_forwards is not None:
        lines.append(b"Max-Forwards: %d" % max_forwards)
    lines += [b"From: " + from_, b"To: " + to, b"Call-ID: " + call_id,
              b"CSeq: %d %s" % (cseq, cseq_method or method)]
    lines += [name + b": " + value for name, value in headers]
    lines.append(b"Content-Length: %d" % len(body))
    return CRLF.join(lines) + CRLF + CRLF + body


def _head_lines(data: bytes) -> list[bytes]:
    return data.split(CRLF + CRLF, 1)[0].split(CRLF)


def first_line(data: bytes) -> bytes:
    """The start line."""
    return data.split(CRLF, 1)[0]


def headers(data: bytes, name: bytes) -> list[bytes]:
    """Every value of header ``name`` (one entry per header *line*, full names only)."""
    want = name.lower() + b":"
    out = []
    for line in _head_lines(data)[1:]:
        if line.lower().startswith(want):
            out.append(line[len(want):].strip())
    return out


def header(data: bytes, name: bytes) -> bytes | None:
    """The top-most value of header ``name``, or None."""
    values = headers(data, name)
    return values[0] if values else None


def branch_of(via: bytes) -> bytes:
    """The ``branch`` parameter of a Via value."""
    for param in via.split(b";")[1:]:
        if param.strip().lower().startswith(b"branch="):
            return param.strip()[7:]
    raise AssertionError(f"no branch in {via!r}")


def make_response(request: bytes, status: int, reason: bytes = b"Reason", *,
                  to_tag: bytes | None = b"gwtag", headers_: Iterable[tuple[bytes, bytes]] = (),
                  body: bytes = b"") -> bytes:
    """The response a UAS sends to ``request`` (RFC 3261 §8.2.6: Vias, From, To, Call-ID, CSeq)."""
    lines = [b"SIP/2.0 %d %s" % (status, reason)]
    for line in _head_lines(request)[1:]:
        lower = line.lower()
        if lower.startswith((b"via:", b"from:", b"call-id:", b"cseq:", b"record-route:")):
            lines.append(line)
        elif lower.startswith(b"to:"):
            if to_tag is not None and status > 100 and b";tag=" not in line:
                line += b";tag=" + to_tag
            lines.append(line)
    lines += [name + b": " + value for name, value in headers_]
    lines.append(b"Content-Length: %d" % len(body))
    return CRLF.join(lines) + CRLF + CRLF + body


# ---------------------------------------------------------------------------- the harness


@dataclass
class ProxyHarness:
    """A ``ProxyCore`` for the lab topology, its fake clock, and what it sent.

    Every input helper returns the ``Send`` records the core produced for that input (and
    keeps them in ``sent`` too); events accumulate in ``events``. ``probing=False`` builds
    the core without a gateway monitor (``monitor`` is then None): nothing probes, and
    health comes in through ``core.observe_probe``; ``share_results=True`` builds the
    monitor so (``core.drain_probe_results``, the prober of N workers). ``worker`` builds
    the settings of that worker of ``worker.count`` (``[process] workers``, with
    ``port_stride``): the core then has its own endpoint per listener (``own``).
    """

    clock: FakeClock = field(default_factory=FakeClock)
    settings_overrides: dict[str, object] = field(default_factory=dict)
    down_after: int = 3
    up_after: int = 2
    interval_up_s: float = 600.0
    interval_down_s: float = 5.0
    probing: bool = True
    share_results: bool = False
    worker: WorkerPlace | None = None
    port_stride: int = 100
    sent: list[Send] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    def __post_init__(self) -> None:
        # The settings the daemon would build from a file giving only the lab's sockets:
        # every other value is the config's default (one source, sipedge.config).
        config = Config(
            path="<harness>",
            inside=InsideConfig(listen=(INSIDE,), allow=(ipaddress.ip_network("127.0.0.1/32"),),
                                pbx=CALLEE),
            outside=OutsideConfig(listen=(OUTSIDE,), domain=DOMAIN),
            edges=(),
            process=ProcessConfig(workers=self.worker.count if self.worker else 1,
                                  port_stride=self.port_stride),
        )
        self.config = config
        settings = build_settings(config, self.worker)
        self.settings = replace(settings, **self.settings_overrides)  # type: ignore[arg-type]
        groups = [
            [Gateway.make("ashburn-ix", "Virginia", ep, EDGE_HOST["ashburn-ix"]) for ep in VIRGINIA],
            [Gateway.make("san-jose-ix", "Oregon", ep, EDGE_HOST["san-jose-ix"]) for ep in OREGON],
        ]
        policy = HealthPolicy(down_after=self.down_after, up_after=self.up_after)
        self.pool = GatewayPool(groups, policy, now=self.clock.now)
        self.monitor: GatewayMonitor | None = None
        if self.probing:
            schedule = ProbeSchedule(rng=random.Random(7), interval_up_s=self.interval_up_s,
                                     interval_down_s=self.interval_down_s, jitter=0.0)
            self.monitor = GatewayMonitor(self.pool, schedule, probe_settings(self.settings),
                                          instance=b"test", share_results=self.share_results)
        self.core = ProxyCore(self.settings, self.pool, monitor=self.monitor)

    # -- plumbing ---------------------------------------------------------------------------

    @property
    def now(self) -> float:
        return self.clock.now

    def _collect(self) -> list[Send]:
        out = self.core.drain_outbox()
        self.sent.extend(out)
        self.events.extend(self.core.drain_events())
        return out

    def start(self) -> list[Send]:
        """``core.start(now)`` and run what is due at once (the first probes)."""
        self.core.start(self.now)
        self.core.handle_timer(self.now)
        return self._collect()

    def feed(self, data: bytes, peer: Endpoint, local: Endpoint | None = None) -> list[Send]:
        """Deliver one datagram from ``peer`` on listener ``local`` (by default the listener
        facing that peer: outside for gateways, inside otherwise)."""
        if local is None:
            local = OUTSIDE if peer in VIRGINIA or peer in OREGON else INSIDE
        self.core.receive(data, peer, local, self.now)
        return self._collect()

    def transport_error(self, dest: Endpoint) -> list[Send]:
        self.core.transport_error(dest, self.now)
        return self._collect()

    def advance(self, seconds: float) -> list[Send]:
        """Move the clock by ``seconds``, firing every deadline on the way, in order."""
        target = self.now + seconds
        out: list[Send] = []
        while True:
            deadline = self.core.next_deadline()
            if deadline is None or deadline > target:
                break
            self.clock.now = max(self.now, deadline)
            self.core.handle_timer(self.now)
            out += self._collect()
        self.clock.now = target
        self.core.handle_timer(self.now)
        out += self._collect()
        return out

    def take_events(self) -> list[Event]:
        out, self.events = self.events, []
        return out

    # -- gateways ---------------------------------------------------------------------------

    def answer_probes(self, sends: Iterable[Send], status: int = 200,
                      only: Iterable[Endpoint] | None = None) -> list[Send]:
        """Reply ``status`` to every OPTIONS probe in ``sends`` (from ``only`` gateways)."""
        allowed = None if only is None else set(only)
        out: list[Send] = []
        for s in list(sends):
            if (not s.data.startswith(b"OPTIONS ")
                    or s.local != self.core.listeners.alias(OUTSIDE)):
                continue
            if allowed is not None and s.dest not in allowed:
                continue
            out += self.feed(make_response(s.data, status, b"OK"), s.dest)
        return out

    def bring_up(self, gateways: Iterable[Endpoint] = VIRGINIA + OREGON) -> None:
        """Start probing and answer 200 for ``gateways`` until each of them is UP; the
        others stay silent (their probes time out)."""
        wanted = set(gateways)
        pending = self.start()
        for _ in range(50):
            self.answer_probes(pending, only=wanted)
            if all(self.state(ep) is Health.UP for ep in wanted):
                break
            deadline = self.core.next_deadline()
            assert deadline is not None
            pending = self.advance(deadline - self.now)
        else:
            raise AssertionError("gateways did not come up")
        self.sent.clear()
        self.events.clear()

    def gateway_id(self, endpoint: Endpoint) -> str:
        for gw in self.pool.gateways():
            if gw.endpoint == endpoint:
                return gw.id
        raise KeyError(endpoint)

    def state(self, endpoint: Endpoint) -> Health:
        return self.pool.state(self.gateway_id(endpoint))


# ---------------------------------------------------------------------------- selectors


def to(sends: Iterable[Send], dest: Endpoint) -> list[Send]:
    """The sends addressed to ``dest``."""
    return [s for s in sends if s.dest == dest]


def calls(sends: Iterable[Send], method: bytes = b"INVITE") -> list[Send]:
    """The requests of ``method`` among ``sends`` (probes are OPTIONS, so INVITE skips them)."""
    return [s for s in sends if s.data.startswith(method + b" ")]


def responses(sends: Iterable[Send], status: int | None = None) -> list[Send]:
    """The responses among ``sends`` (optionally of one status)."""
    prefix = b"SIP/2.0 " if status is None else b"SIP/2.0 %d " % status
    return [s for s in sends if s.data.startswith(prefix)]


def status_of(send: Send) -> int:
    return int(send.data[8:11])
