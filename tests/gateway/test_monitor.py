"""GatewayMonitor alone: due probes, retransmissions, timeout, replies, errors, reloads.

No proxy core and no socket: a pool, a schedule without jitter, a fake clock, and replies
built by ``tests.helpers.wire`` (independent of the code under test) and parsed.
"""

from __future__ import annotations

import random

import pytest

from sipedge.gateway.health import GatewayStateChanged, Health, HealthPolicy
from sipedge.gateway.monitor import GatewayMonitor, ProbeSend, ProbeSettings
from sipedge.gateway.pool import Gateway, GatewayPool
from sipedge.gateway.probe import ProbeSchedule, Replied, TimedOut
from sipedge.sip.address import Endpoint
from sipedge.sip.message import Response, parse
from sipedge.sip.timers import Timers
from tests.helpers.wire import FakeClock, first_line, header, make_response

DOMAIN = b"example.sip.ashburn-ix.twilio.com"
UDP_GW = Endpoint("udp", "127.0.14.64", 5060)
TCP_GW = Endpoint("tcp", "127.0.14.65", 5060)
SOURCES = {"udp": Endpoint("udp", "127.0.14.3", 5060), "tcp": Endpoint("tcp", "127.0.14.3", 5060),
           "tls": Endpoint("tls", "127.0.14.3", 5061)}
TIMEOUT_S = 2.0
INTERVAL_UP_S = 60.0
INTERVAL_DOWN_S = 5.0


def gateway(endpoint: Endpoint, weight: int = 1) -> Gateway:
    return Gateway.make("ashburn-ix", "Virginia", endpoint, DOMAIN, weight)


def make_pool(*endpoints: Endpoint, now: float = 1000.0, up_after: int = 2,
              down_after: int = 3) -> GatewayPool:
    return GatewayPool([[gateway(ep) for ep in endpoints]],
                       HealthPolicy(down_after=down_after, up_after=up_after), now=now)


class Rig:
    """A monitor on a fake clock, and everything it sent and reported."""

    def __init__(self, *endpoints: Endpoint, up_after: int = 2, down_after: int = 3,
                 instance: bytes = b"run1", share_results: bool = False) -> None:
        self.clock = FakeClock()
        self.pool = make_pool(*(endpoints or (UDP_GW, TCP_GW)), now=self.clock.now,
                              up_after=up_after, down_after=down_after)
        schedule = ProbeSchedule(rng=random.Random(7), interval_up_s=INTERVAL_UP_S,
                                 interval_down_s=INTERVAL_DOWN_S, jitter=0.0)
        settings = ProbeSettings(sources=SOURCES, timers=Timers(), timeout_s=TIMEOUT_S)
        self.monitor = GatewayMonitor(self.pool, schedule, settings, instance=instance,
                                      share_results=share_results)
        self.events: list[GatewayStateChanged] = []

    @property
    def now(self) -> float:
        return self.clock.now

    def collect(self) -> list[ProbeSend]:
        self.events += self.monitor.drain_events()
        return self.monitor.drain_outbox()

    def advance(self, seconds: float) -> list[ProbeSend]:
        """Move the clock, calling ``handle_timer`` at every deadline on the way."""
        target = self.now + seconds
        out: list[ProbeSend] = []
        while (due := self.monitor.next_deadline()) is not None and due <= target:
            self.clock.now = max(self.now, due)
            self.monitor.handle_timer(self.now)
            out += self.collect()
        self.clock.now = target
        self.monitor.handle_timer(self.now)
        return out + self.collect()

    def start(self) -> list[ProbeSend]:
        self.monitor.start(self.now)
        return self.advance(0.0)

    def reply(self, send: ProbeSend, status: int = 200, *, peer: Endpoint | None = None,
              headers: list[tuple[bytes, bytes]] | None = None) -> bool:
        resp = parse(make_response(send.data, status, b"Reason", headers_=headers or []))
        assert isinstance(resp, Response)
        taken = self.monitor.receive_response(resp, peer or send.dest, self.now)
        self.collect()
        return taken

    def state(self, endpoint: Endpoint) -> Health:
        return self.pool.state(gateway(endpoint).id)


def only(sends: list[ProbeSend], dest: Endpoint) -> ProbeSend:
    mine = [s for s in sends if s.dest == dest]
    assert len(mine) == 1, mine
    return mine[0]


def test_start_probes_every_gateway_from_its_transport_source() -> None:
    rig = Rig()
    assert rig.monitor.drain_outbox() == []
    rig.monitor.start(rig.now)
    assert rig.monitor.next_deadline() == rig.now  # no jitter: due at once
    sends = rig.advance(0.0)
    assert {(s.dest, s.local) for s in sends} == {(UDP_GW, SOURCES["udp"]),
                                                  (TCP_GW, SOURCES["tcp"])}
    assert len(sends) == 2
    for s in sends:
        assert first_line(s.data) == b"OPTIONS sip:" + DOMAIN + (
            b";transport=tcp" if s.dest.is_reliable else b"") + b" SIP/2.0"
        via = header(s.data, b"Via")
        assert via is not None and via.startswith(
            b"SIP/2.0/" + s.local.via_transport + b" 127.0.14.3:5060;branch=z9hG4bK-p-run1.")
        assert header(s.data, b"User-Agent") is None
    assert rig.monitor.stats.probes_sent == 2 and rig.monitor.in_flight == 2


def test_nothing_sent_before_the_next_deadline() -> None:
    rig = Rig()
    rig.start()
    due = rig.monitor.next_deadline()
    assert due is not None and due > rig.now
    assert rig.monitor.handle_timer(due - 0.001) == 0
    assert rig.collect() == []


def test_call_ids_and_branches_unique_per_probe_and_across_instances() -> None:
    # RFC 3261 §8.1.1.4: a restarted process (another instance token) must not reuse them.
    call_ids: list[bytes | None] = []
    branches: list[bytes | None] = []
    for instance in (b"run1", b"run2"):
        rig = Rig(UDP_GW, up_after=1, instance=instance)
        send = only(rig.start(), UDP_GW)
        for _ in range(3):
            call_ids.append(header(send.data, b"Call-ID"))
            branches.append(header(send.data, b"Via"))
            rig.reply(send)
            send = only(rig.advance(INTERVAL_UP_S), UDP_GW)
    assert None not in call_ids and len(set(call_ids)) == 6
    assert len(set(branches)) == 6


def test_unanswered_udp_probe_retransmits_then_times_out() -> None:
    rig = Rig(UDP_GW)
    first = only(rig.start(), UDP_GW)
    sent_at = rig.now
    # Timer E: T1, then 2·T1 (RFC 3261 §17.1.2.2), until the 2 s probe timeout.
    out = rig.advance(TIMEOUT_S - 0.01)
    assert [s.data for s in out] == [first.data, first.data]
    assert rig.monitor.stats.probe_timeouts == 0
    rig.advance(0.01)
    assert rig.monitor.stats.probe_timeouts == 1 and rig.monitor.in_flight == 0
    record = rig.pool.record(gateway(UDP_GW).id)
    assert record.failures == 1 and rig.state(UDP_GW) is Health.PROBING
    # PROBING: the next probe at the DOWN pace, counted from the timeout.
    assert rig.monitor.next_deadline() == pytest.approx(sent_at + TIMEOUT_S + INTERVAL_DOWN_S)


def test_tcp_probe_is_not_retransmitted() -> None:
    rig = Rig(TCP_GW)
    rig.start()
    assert rig.advance(TIMEOUT_S) == []
    assert rig.monitor.stats.probe_timeouts == 1


def test_silence_takes_gateway_down_after_down_after_once() -> None:
    rig = Rig(UDP_GW, down_after=3)
    rig.start()
    rig.advance(3 * (TIMEOUT_S + INTERVAL_DOWN_S))
    assert rig.state(UDP_GW) is Health.DOWN
    assert [(e.old, e.new) for e in rig.events] == [(Health.PROBING, Health.DOWN)]
    rig.advance(60)
    assert len(rig.events) == 1  # edge-triggered


def test_replies_bring_gateway_up_after_up_after() -> None:
    rig = Rig(UDP_GW, up_after=2)
    assert rig.reply(only(rig.start(), UDP_GW)) is True
    assert rig.state(UDP_GW) is Health.PROBING and rig.events == []
    assert rig.monitor.in_flight == 0
    # Still PROBING: the next probe at the DOWN pace.
    assert rig.advance(INTERVAL_DOWN_S - 0.01) == []
    second = only(rig.advance(0.01), UDP_GW)
    rig.clock.advance(0.004)
    assert rig.reply(second) is True
    assert rig.state(UDP_GW) is Health.UP
    assert [(e.gateway_id, e.old, e.new) for e in rig.events] == [
        (gateway(UDP_GW).id, Health.PROBING, Health.UP)]
    rtt = rig.monitor.stats.probe_rtt[gateway(UDP_GW).id]
    assert rtt.count == 2 and rtt.sum == pytest.approx(0.004)
    # UP: the UP pace (the monitor's own deadline may be earlier: an ended probe's
    # retransmission entry stays in its heap until it is popped, and then does nothing).
    assert rig.monitor.schedule.next_deadline() == pytest.approx(rig.now + INTERVAL_UP_S)
    assert rig.advance(INTERVAL_UP_S - 0.01) == []


def test_provisional_reply_is_taken_but_the_probe_still_times_out() -> None:
    rig = Rig(UDP_GW)
    send = only(rig.start(), UDP_GW)
    assert rig.reply(send, 100) is True
    assert rig.monitor.in_flight == 1
    rig.advance(TIMEOUT_S)
    assert rig.monitor.stats.probe_timeouts == 1


def test_reply_from_another_host_is_not_a_probes() -> None:
    rig = Rig(UDP_GW, TCP_GW)
    send = only(rig.start(), UDP_GW)
    assert rig.reply(send, peer=Endpoint("udp", "127.0.14.99", 5060)) is False
    assert rig.reply(send, peer=TCP_GW) is False
    assert rig.monitor.in_flight == 2
    assert rig.reply(send) is True


def test_reply_to_no_probe_is_not_taken() -> None:
    rig = Rig(UDP_GW)
    send = only(rig.start(), UDP_GW)
    assert rig.reply(send) is True
    assert rig.reply(send) is False  # a retransmitted final: the probe has ended


def test_503_with_retry_after_holds_down_and_delays_the_next_probe() -> None:
    rig = Rig(UDP_GW)
    send = only(rig.start(), UDP_GW)
    assert rig.reply(send, 503, headers=[(b"Retry-After", b"60 (maintenance)")])
    assert rig.state(UDP_GW) is Health.DOWN
    assert rig.pool.record(gateway(UDP_GW).id).held_until == pytest.approx(rig.now + 60)
    assert rig.advance(59.9) == []  # Retry-After is honoured strictly
    assert only(rig.advance(0.2), UDP_GW)


def test_failing_up_gateway_is_reprobed_at_the_down_pace() -> None:
    rig = Rig(UDP_GW, up_after=1)
    rig.reply(only(rig.start(), UDP_GW))
    assert rig.state(UDP_GW) is Health.UP
    rig.advance(INTERVAL_UP_S)  # the next probe goes out and is not answered
    rig.advance(TIMEOUT_S)
    assert rig.state(UDP_GW) is Health.UP  # one failure: still UP (hysteresis)
    assert rig.monitor.next_deadline() == pytest.approx(rig.now + INTERVAL_DOWN_S)


def test_transport_error_is_a_send_failure_for_that_gateway_only() -> None:
    rig = Rig(UDP_GW, TCP_GW, down_after=1)
    rig.start()
    rig.monitor.transport_error(TCP_GW, rig.now)
    rig.collect()
    assert rig.monitor.in_flight == 1
    assert rig.state(TCP_GW) is Health.DOWN and rig.state(UDP_GW) is Health.PROBING
    row = {r.id: r for r in rig.pool.snapshot()}[gateway(TCP_GW).id]
    assert (row.probes, row.probe_failures, row.last_code) == (1, 1, None)
    assert [(e.gateway_id, e.new, e.reason) for e in rig.events] == [
        (gateway(TCP_GW).id, Health.DOWN, "1 consecutive probe send failures: transport error")]
    # An error for a destination no probe went to changes nothing.
    rig.monitor.transport_error(Endpoint("udp", "127.0.14.99", 5060), rig.now)
    assert rig.collect() == [] and rig.monitor.in_flight == 1


def test_reload_removing_a_gateway_forgets_its_probe_and_ignores_its_late_reply() -> None:
    rig = Rig(UDP_GW, TCP_GW)
    sends = rig.start()
    new = make_pool(UDP_GW, now=rig.now)
    rig.monitor.reload(rig.pool.replace(new), rig.now)
    assert rig.monitor.pool is new and rig.monitor.in_flight == 1
    assert rig.reply(only(sends, TCP_GW)) is False  # late: handled as any other response
    assert rig.events == []
    # Only the gateway that stayed is probed from now on.
    out = rig.advance(10 * INTERVAL_UP_S)
    assert out and {s.dest for s in out} == {UDP_GW}
    assert rig.reply(only(sends, UDP_GW)) is False  # long timed out meanwhile


def test_reload_adding_a_gateway_probes_it() -> None:
    rig = Rig(UDP_GW)
    rig.start()
    rig.monitor.reload(rig.pool.replace(make_pool(UDP_GW, TCP_GW, now=rig.now)), rig.now)
    assert [s.dest for s in rig.advance(0.0)] == [TCP_GW]


def test_start_with_probed_ids_leaves_the_others_out() -> None:
    rig = Rig(UDP_GW, TCP_GW)
    rig.monitor.start(rig.now, [gateway(TCP_GW).id, "ashburn-ix/unknown:5060"])
    assert [s.dest for s in rig.advance(0.0)] == [TCP_GW]


def test_reconfigure_changes_the_probes_sent_from_then_on() -> None:
    rig = Rig(UDP_GW, up_after=1)
    rig.reply(only(rig.start(), UDP_GW))
    other = {**SOURCES, "udp": Endpoint("udp", "127.0.14.4", 5062)}
    rig.monitor.reconfigure(ProbeSettings(sources=other, timers=Timers(), timeout_s=1.0,
                                          user_agent=b"sipedge-test"))
    send = only(rig.advance(INTERVAL_UP_S), UDP_GW)
    assert send.local == other["udp"]
    assert header(send.data, b"User-Agent") == b"sipedge-test"
    via = header(send.data, b"Via")
    assert via is not None and b" 127.0.14.4:5062;" in via
    rig.advance(1.0)
    assert rig.monitor.stats.probe_timeouts == 1


def test_reload_changing_a_gateway_in_flight_keeps_probing_it() -> None:
    # Same id and endpoint, another weight (a DNS SRV change): the probe in flight is
    # forgotten, and the gateway must not stay marked in flight for good (it did: never
    # probed again, its health frozen).
    rig = Rig(UDP_GW, TCP_GW)
    sends = rig.start()
    changed = GatewayPool([[gateway(UDP_GW, weight=2), gateway(TCP_GW)]],
                          rig.pool.policy, now=rig.now)
    rig.monitor.reload(rig.pool.replace(changed), rig.now)
    assert rig.monitor.in_flight == 1
    assert rig.reply(only(sends, UDP_GW)) is False  # its old probe is not a probe any more
    out = rig.advance(3 * INTERVAL_DOWN_S)
    assert {s.dest for s in out} == {UDP_GW, TCP_GW}
    fresh = [s for s in out if s.dest == UDP_GW]
    assert rig.reply(fresh[-1]) is True
    assert {r.id: r.last_code for r in rig.monitor.pool.snapshot()}[gateway(UDP_GW).id] == 200


# -- shared results (issue 14: one prober for N workers) ----------------------------------------


def test_shared_results_are_every_result_applied_in_order() -> None:
    rig = Rig(UDP_GW, TCP_GW, share_results=True)
    sends = rig.start()
    rig.clock.advance(0.003)
    assert rig.reply(only(sends, UDP_GW), 200)
    rig.monitor.transport_error(TCP_GW, rig.now)  # the TCP probe: SendFailed
    results = rig.monitor.drain_results()
    assert [(gid, type(r).__name__) for gid, r in results] == [
        (gateway(UDP_GW).id, "Replied"), (gateway(TCP_GW).id, "SendFailed")]
    replied = results[0][1]
    assert isinstance(replied, Replied) and replied.code == 200
    assert replied.rtt_s == pytest.approx(0.003)
    assert rig.monitor.drain_results() == []  # handed over
    rig.advance(INTERVAL_DOWN_S + TIMEOUT_S)  # the next probes go unanswered
    assert sorted((gid, type(r)) for gid, r in rig.monitor.drain_results()) == sorted(
        [(gateway(UDP_GW).id, TimedOut), (gateway(TCP_GW).id, TimedOut)])


def test_shared_results_give_another_pool_the_same_health() -> None:
    rig = Rig(UDP_GW, TCP_GW, up_after=2, down_after=2, share_results=True)
    mirror = make_pool(UDP_GW, TCP_GW, now=rig.now, up_after=2, down_after=2)
    sends = rig.start()
    for _ in range(30):  # the UDP gateway answers at once, the TCP one never
        for send in sends:
            if send.dest == UDP_GW:
                rig.reply(send)
        sends = rig.advance(1.0)
    events = []
    for gid, result in rig.monitor.drain_results():
        events += mirror.observe(gid, result, rig.now)
    assert rig.state(UDP_GW) is Health.UP and rig.state(TCP_GW) is Health.DOWN
    for ep in (UDP_GW, TCP_GW):
        assert mirror.state(gateway(ep).id) is rig.state(ep)
    assert [(e.gateway_id, e.new) for e in events] == [(e.gateway_id, e.new) for e in rig.events]


def test_results_are_not_kept_unless_shared() -> None:
    rig = Rig(UDP_GW)
    rig.reply(only(rig.start(), UDP_GW))
    rig.advance(10 * (INTERVAL_DOWN_S + TIMEOUT_S))
    assert rig.monitor.stats.probes_sent > 5
    assert rig.monitor.drain_results() == []
