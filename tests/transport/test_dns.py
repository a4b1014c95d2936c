"""RFC 3263 resolution against a real DNS server on loopback (no mock resolver).

The server is a small dnspython responder (``dns.zone`` + ``dns.message``) on an asyncio
datagram endpoint at 127.0.0.210, port 0; each test loads its zone text, may swap it while
running (TTL refresh) or stop answering (last good answer kept).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import cast

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.zone
import pytest

from sipedge.config import parse_config
from sipedge.daemon import build_core, build_pool, probed_ids
from sipedge.gateway.health import Health
from sipedge.sip.address import Endpoint
from sipedge.transport.dns import (
    DNS_REASON,
    Answer,
    NameWatcher,
    Query,
    Rfc3263Resolver,
    Unresolved,
)
from tests.transport.conftest import free_port, until

DNS_HOST = "127.0.0.210"
ORIGIN = "example.net."

ZONE = """
$TTL 1
@        IN SOA ns hostmaster 1 60 60 60 1
@        IN NS  ns
ns       IN A   127.0.0.210
; RFC 3263 §4.1: NAPTR per transport → SRV → A
gw       IN NAPTR 10 50 "s" "SIP+D2T" "" _sip._tcp.gw.example.net.
gw       IN NAPTR 20 50 "s" "SIP+D2U" "" _sip._udp.gw.example.net.
gw       IN NAPTR 30 50 "s" "SIPS+D2T" "" _sips._tcp.gw.example.net.
_sip._udp.gw  IN SRV 10 10 5060 b.example.net.
_sip._udp.gw  IN SRV 10 30 5070 a.example.net.
_sip._udp.gw  IN SRV 20 0  5080 c.example.net.
_sip._tcp.gw  IN SRV 10 10 5060 c.example.net.
_sips._tcp.gw IN SRV 10 10 5061 a.example.net.
; no NAPTR here: SRV straight from the transport
srvonly  IN A 127.0.0.219
_sip._udp.srvonly IN SRV 5 1 5090 b.example.net.
; no NAPTR, no SRV: A at the default port
plain    IN A   127.0.0.213
a        IN A   127.0.0.212
b        IN A   127.0.0.214
b        IN A   127.0.0.215
c        IN A   127.0.0.216
"""


class ZoneServer(asyncio.DatagramProtocol):
    """An authoritative responder for one zone (UDP only; answers carry the record TTLs)."""

    def __init__(self, text: str) -> None:
        self.load(text)
        self.answering = True
        self.queries: list[tuple[str, str]] = []
        self.transport: asyncio.DatagramTransport | None = None

    def load(self, text: str) -> None:
        self.zone = dns.zone.from_text(text, origin=ORIGIN, relativize=False)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = dns.message.from_wire(data)
        question = query.question[0]
        self.queries.append((question.name.to_text(), dns.rdatatype.to_text(question.rdtype)))
        if not self.answering:
            return
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        node = self.zone.get_node(question.name)
        if not question.name.is_subdomain(self.zone.origin):
            response.set_rcode(dns.rcode.REFUSED)
        elif node is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
        else:
            rdataset = node.get_rdataset(dns.rdataclass.IN, question.rdtype)
            if rdataset is not None:
                rrset = response.find_rrset(response.answer, question.name,
                                            dns.rdataclass.IN, question.rdtype, create=True)
                rrset.update(rdataset)
        assert self.transport is not None
        self.transport.sendto(response.to_wire(), addr)

    def count(self, name: str, rdtype: str) -> int:
        return sum(1 for q in self.queries if q == (name, rdtype))


@pytest.fixture
async def server() -> AsyncIterator[tuple[ZoneServer, int]]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: ZoneServer(ZONE), local_addr=(DNS_HOST, 0))
    port = transport.get_extra_info("sockname")[1]
    try:
        yield protocol, port
    finally:
        transport.close()


def resolver_for(port: int, timeout_s: float = 0.5) -> Rfc3263Resolver:
    return Rfc3263Resolver([(DNS_HOST, port)], timeout_s=timeout_s)


def hosts(answer: Answer | Unresolved) -> list[tuple[str, int, int, int]]:
    assert isinstance(answer, Answer), answer
    return [(t.endpoint.host, t.endpoint.port, t.priority, t.weight) for t in answer.targets]


# ------------------------------------------------------------------------- resolution


async def test_naptr_srv_a_udp_uses_all_srv_targets_by_priority_then_weight(server) -> None:
    _, port = server
    answer = await resolver_for(port).resolve(Query("gw.example.net", None, "udp"))
    # NAPTR SIP+D2U → _sip._udp.gw: weight 30 before weight 10 in priority 10, then prio 20;
    # b has two A records, each a target.
    assert hosts(answer) == [
        ("127.0.0.212", 5070, 10, 30),
        ("127.0.0.214", 5060, 10, 10),
        ("127.0.0.215", 5060, 10, 10),
        ("127.0.0.216", 5080, 20, 0),
    ]
    assert isinstance(answer, Answer)
    assert all(t.endpoint.transport == "udp" for t in answer.targets)
    assert answer.ttl_s == 1


@pytest.mark.parametrize(("transport", "expected"), [
    ("tcp", [("127.0.0.216", 5060, 10, 10)]),
    ("tls", [("127.0.0.212", 5061, 10, 10)]),
])
async def test_naptr_selects_service_of_configured_transport(server, transport, expected) -> None:
    _, port = server
    answer = await resolver_for(port).resolve(Query("gw.example.net", None, transport))
    assert hosts(answer) == expected
    assert isinstance(answer, Answer) and answer.targets[0].endpoint.transport == transport


async def test_srv_without_naptr_and_a_without_srv(server) -> None:
    zone, port = server
    resolver = resolver_for(port)
    srv = await resolver.resolve(Query("srvonly.example.net", None, "udp"))
    assert hosts(srv) == [("127.0.0.214", 5090, 5, 1), ("127.0.0.215", 5090, 5, 1)]
    plain = await resolver.resolve(Query("plain.example.net", None, "tls"))
    assert hosts(plain) == [("127.0.0.213", 5061, 0, 0)]
    # The lookups followed RFC 3263 §4.1: NAPTR, then SRV for the transport, then A/AAAA.
    assert zone.count("plain.example.net.", "NAPTR") == 1
    assert zone.count("_sips._tcp.plain.example.net.", "SRV") == 1
    assert zone.count("plain.example.net.", "A") == 1


async def test_explicit_port_means_address_records_only(server) -> None:
    zone, port = server
    answer = await resolver_for(port).resolve(Query("gw.example.net", 5099, "udp"))
    # RFC 3263 §4.2: no NAPTR/SRV; gw itself has no A record.
    assert isinstance(answer, Unresolved)
    assert zone.count("gw.example.net.", "NAPTR") == 0
    direct = await resolver_for(port).resolve(Query("b.example.net", 5099, "tcp"))
    assert hosts(direct) == [("127.0.0.214", 5099, 0, 0), ("127.0.0.215", 5099, 0, 0)]


async def test_srv_name_given_directly(server) -> None:
    _, port = server
    answer = await resolver_for(port).resolve(Query("_sip._tcp.gw.example.net", None, "tcp"))
    assert hosts(answer) == [("127.0.0.216", 5060, 10, 10)]


async def test_unknown_name_is_unresolved(server) -> None:
    _, port = server
    answer = await resolver_for(port).resolve(Query("nope.example.net", None, "udp"))
    assert isinstance(answer, Unresolved)
    assert "no such name" in answer.reason


# ------------------------------------------------------------------------- watcher


async def test_watcher_refreshes_on_ttl_and_picks_up_a_change(server) -> None:
    zone, port = server
    changes: list[int] = []
    query = Query("plain.example.net", 5060, "udp")
    watcher = NameWatcher(resolver_for(port), [query], lambda: changes.append(1),
                          min_ttl_s=0.2, max_ttl_s=0.4)
    try:
        await watcher.start(wait_s=2.0)
        assert hosts(watcher.answers()[query]) == [("127.0.0.213", 5060, 0, 0)]
        assert changes == [1]
        first = zone.count("plain.example.net.", "A")
        # TTL 1 clamped to max 0.4: re-queried well within a second, same answer → no change.
        await until(lambda: zone.count("plain.example.net.", "A") > first, 2.0)
        assert changes == [1]
        zone.load(ZONE.replace("127.0.0.213", "127.0.0.217"))
        await until(lambda: len(changes) == 2, 2.0)
        assert hosts(watcher.answers()[query]) == [("127.0.0.217", 5060, 0, 0)]
    finally:
        await watcher.aclose()


async def test_watcher_honours_ttl_within_bounds(server) -> None:
    zone, port = server
    query = Query("a.example.net", 5060, "udp")
    watcher = NameWatcher(resolver_for(port), [query], lambda: None, min_ttl_s=0.1,
                          max_ttl_s=60)
    assert watcher.refresh_in(Answer((), 0)) == 0.1
    assert watcher.refresh_in(Answer((), 7200)) == 60
    try:
        await watcher.start(wait_s=2.0)
        await asyncio.sleep(0.6)
        # TTL 1 s: not re-asked yet.
        assert zone.count("a.example.net.", "A") == 1
        await until(lambda: zone.count("a.example.net.", "A") == 2, 2.0)
    finally:
        await watcher.aclose()


async def test_watcher_keeps_last_good_answer_when_dns_stops_answering(server, caplog) -> None:
    zone, port = server
    query = Query("gw.example.net", None, "udp")
    changes: list[int] = []
    watcher = NameWatcher(resolver_for(port, timeout_s=0.2), [query],
                          lambda: changes.append(1), min_ttl_s=0.1, max_ttl_s=0.1)
    caplog.set_level(logging.DEBUG, logger="sipedge.transport.dns")
    try:
        await watcher.start(wait_s=2.0)
        good = watcher.answers()[query]
        zone.answering = False
        asked = len(zone.queries)
        # Several failed refreshes (each times out after 0.2 s, retried 0.1 s later).
        await until(lambda: len(zone.queries) > asked + 3, 3.0)
        assert watcher.answers()[query] == good
        assert changes == [1]
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "keeping the last good answer" in warnings[0].message
        zone.answering = True
        await until(lambda: any("resolves again" in r.message for r in caplog.records), 2.0)
        assert changes == [1]
    finally:
        await watcher.aclose()


async def test_watcher_start_is_bounded_and_reports_late_answers(server) -> None:
    zone, port = server
    zone.answering = False
    query = Query("a.example.net", 5060, "udp")
    changes: list[int] = []
    watcher = NameWatcher(resolver_for(port, timeout_s=0.3), [query],
                          lambda: changes.append(1), min_ttl_s=0.1, max_ttl_s=1)
    loop = asyncio.get_running_loop()
    try:
        started = loop.time()
        await watcher.start(wait_s=0.1)
        assert loop.time() - started < 0.25
        assert watcher.answers() == {}
        zone.answering = True
        await until(lambda: changes == [1], 3.0)
        assert hosts(watcher.answers()[query]) == [("127.0.0.212", 5060, 0, 0)]
    finally:
        await watcher.aclose()


# ------------------------------------------------------------------------- pool integration

CONFIG = """
[inside]
listen = ["udp:127.0.0.218:5060"]
allow = ["127.0.0.0/8"]
pbx = "127.0.0.218:5062"
[outside]
listen = ["udp:127.0.0.218:5080"]
domain = "example"
[[edges]]
name = "ashburn-ix"
gateways = ["gw.example.net", "127.0.0.211:5060"]
[[edges]]
name = "san-jose-ix"
gateways = ["never.example.net"]
"""


async def test_never_resolved_name_is_down_with_reason_dns_and_not_probed() -> None:
    config = parse_config(CONFIG, "dns.toml")
    core = build_core(config, 100.0)
    rows = {r.id: r for r in core.pool.snapshot()}
    never = rows["san-jose-ix/never.example.net:5060"]
    assert never.state is Health.DOWN and never.reason == DNS_REASON
    assert rows["ashburn-ix/gw.example.net:5060"].reason == DNS_REASON
    assert rows["ashburn-ix/127.0.0.211:5060"].state is Health.PROBING
    # Placeholders are never offered and never probed (a send to a name would block).
    assert [g.id for g in core.pool.candidates(100.0)] == ["ashburn-ix/127.0.0.211:5060"]
    core.handle_timer(200.0)
    assert {s.dest.host for s in core.drain_outbox()} == {"127.0.0.211"}


async def test_resolved_srv_targets_become_gateways_and_health_carries_over(server) -> None:
    _, port = server
    config = parse_config(CONFIG, "dns.toml")
    core = build_core(config, 100.0)
    kept = "ashburn-ix/127.0.0.211:5060"
    core.drain_gateway(kept, 101.0)
    resolver = resolver_for(port)
    answers = {q: a for q in [Query("gw.example.net", None, "udp"),
                              Query("never.example.net", None, "udp")]
               if isinstance(a := await resolver.resolve(q), Answer)}
    pool = build_pool(config, 102.0, answers)
    core.reload_pool(pool, 102.0, probed_ids(pool))
    rows = core.pool.snapshot()
    by_id = {r.id: r for r in rows}
    # SRV priority 10 targets share the edge's first group with the IP gateway; priority 20
    # forms the next group, still before Oregon.
    assert [(r.id, r.priority) for r in rows] == [
        ("ashburn-ix/127.0.0.212:5070", 0),
        ("ashburn-ix/127.0.0.214:5060", 0),
        ("ashburn-ix/127.0.0.215:5060", 0),
        ("ashburn-ix/127.0.0.211:5060", 0),
        ("ashburn-ix/127.0.0.216:5080", 1),
        ("san-jose-ix/never.example.net:5060", 2),
    ]
    assert core.pool.gateway("ashburn-ix/127.0.0.212:5070").weight == 30
    assert core.pool.gateway("ashburn-ix/127.0.0.216:5080").weight == 1  # SRV weight 0
    assert core.pool.gateway("ashburn-ix/127.0.0.214:5060").domain_host == \
        b"example.sip.ashburn-ix.twilio.com"
    assert by_id[kept].state is Health.ADMIN_DOWN  # carried over by GatewayPool.replace
    assert by_id["san-jose-ix/never.example.net:5060"].reason == DNS_REASON
    core.handle_timer(200.0)
    probed = {s.dest for s in core.drain_outbox()}
    assert Endpoint("udp", "127.0.0.212", 5070) in probed
    assert all(d.host != "never.example.net" for d in probed)


# ------------------------------------------------------------------------- daemon


async def test_daemon_resolves_names_rebuilds_pool_on_change_and_serves_admin(
        server, monkeypatch) -> None:
    import aiohttp

    from sipedge import daemon

    zone, port = server
    monkeypatch.setattr(daemon, "DNS_MIN_TTL_S", 0.1)
    monkeypatch.setattr(daemon, "DNS_MAX_TTL_S", 0.3)
    admin_port = free_port("127.0.0.211")
    text = CONFIG.replace('"127.0.0.218:5060"]', '"127.0.0.218:0"]').replace(
        '"udp:127.0.0.218:5080"', '"udp:127.0.0.218:0"') + \
        f'[admin]\nlisten = "127.0.0.211:{admin_port}"\n'
    config = parse_config(text, "dns.toml")
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.serve(config, stop, resolver=resolver_for(port)))
    base = f"http://127.0.0.211:{admin_port}"
    rows: list[dict[str, object]] = []

    async def fetch() -> list[dict[str, object]]:
        async with session.get(base + "/gateways") as resp:
            return list(await resp.json())

    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(100):
                try:
                    rows = await fetch()
                    break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.02)
            ids = [r["id"] for r in rows]
            assert ids == ["ashburn-ix/127.0.0.212:5070", "ashburn-ix/127.0.0.214:5060",
                           "ashburn-ix/127.0.0.215:5060", "ashburn-ix/127.0.0.211:5060",
                           "ashburn-ix/127.0.0.216:5080", "san-jose-ix/never.example.net:5060"]
            assert rows[-1]["state"] == "down" and rows[-1]["reason"] == "dns"
            drained = "ashburn-ix/127.0.0.214:5060"
            async with session.post(f"{base}/gateways/{drained}/drain") as resp:
                assert resp.status == 200
            # Renumber one SRV target and make the other name resolve.
            zone.load(ZONE.replace("127.0.0.216", "127.0.0.217")
                      + "never IN A 127.0.0.219\n")
            for _ in range(150):
                rows = await fetch()
                if {"ashburn-ix/127.0.0.217:5080", "san-jose-ix/127.0.0.219:5060"} <= \
                        {str(r["id"]) for r in rows}:
                    break
                await asyncio.sleep(0.02)
            by_id = {r["id"]: r for r in rows}
            assert "ashburn-ix/127.0.0.216:5080" not in by_id
            assert "san-jose-ix/never.example.net:5060" not in by_id
            assert by_id["san-jose-ix/127.0.0.219:5060"]["state"] == "probing"
            assert by_id[drained]["state"] == "admin_down"  # health carried over
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 5) == 0


async def test_requests_from_a_newly_resolved_gateway_are_accepted(server) -> None:
    _, port = server
    # Only the PBX host is an inside source here, so 127.0.0.212 is a stranger until DNS
    # makes it a gateway.
    config = parse_config(CONFIG.replace('"127.0.0.0/8"', '"127.0.0.218/32"'), "dns.toml")
    core = build_core(config, 100.0)
    local = Endpoint("udp", "127.0.0.218", 5080)
    peer = Endpoint("udp", "127.0.0.212", 5070)
    options = (b"OPTIONS sip:127.0.0.218:5080 SIP/2.0\r\n"
               b"Via: SIP/2.0/UDP 127.0.0.212:5070;branch=z9hG4bKdns1\r\n"
               b"Max-Forwards: 70\r\nFrom: <sip:gw@127.0.0.212>;tag=1\r\n"
               b"To: <sip:127.0.0.218:5080>\r\nCall-ID: dns-1\r\nCSeq: 1 OPTIONS\r\n"
               b"Content-Length: 0\r\n\r\n")
    core.receive(options, peer, local, 100.0)
    assert core.drain_outbox() == []  # a stranger: dropped
    query = Query("gw.example.net", None, "udp")
    answer = await resolver_for(port).resolve(query)
    assert isinstance(answer, Answer)
    pool = build_pool(config, 101.0, {query: answer})
    core.reload_pool(pool, 101.0, probed_ids(pool))
    core.receive(options.replace(b"dns1", b"dns2").replace(b"dns-1", b"dns-2"), peer, local,
                 101.0)
    # Now a gateway: answered (503 while no gateway is UP).
    assert [s.data.split(b"\r\n")[0] for s in core.drain_outbox() if s.dest == peer] == \
        [b"SIP/2.0 503 No Gateway Available"]
