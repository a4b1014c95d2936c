"""The admin HTTP API on a real aiohttp listener (127.0.0.211) over a real ProxyCore.

The core is built by ``daemon.build_core`` from a parsed config; the gateways are on
127.0.0.212–214 but nothing is sent to them (the driver has no transports attached).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest

from sipedge.admin import AdminServer, gateway_table
from sipedge.cli import main
from sipedge.config import parse_config
from sipedge.daemon import build_core
from sipedge.eventlog import EventLogger
from sipedge.gateway.health import Health
from sipedge.gateway.probe import Replied
from sipedge.sip.address import Endpoint
from sipedge.transport.driver import CoreDriver

ADMIN_HOST = "127.0.0.211"

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
gateways = ["127.0.0.212", "127.0.0.213:5070"]
[[edges]]
name = "san-jose-ix"
gateways = ["127.0.0.214", "never.example.net"]
[admin]
listen = "{admin}"
"""

GW1 = "ashburn-ix/127.0.0.212:5060"
GW2 = "ashburn-ix/127.0.0.213:5070"
UNRESOLVED = "san-jose-ix/never.example.net:5060"


class Admin:
    def __init__(self, driver: CoreDriver, server: AdminServer, session: aiohttp.ClientSession):
        self.driver = driver
        self.server = server
        self.session = session
        assert server.bound is not None
        self.base = f"http://{server.bound.hostport}"

    async def get(self, path: str) -> tuple[int, str, str]:
        async with self.session.get(self.base + path) as resp:
            return resp.status, resp.content_type, await resp.text()

    async def post(self, path: str) -> tuple[int, object]:
        async with self.session.post(self.base + path) as resp:
            return resp.status, await resp.json()

    def state(self, gateway_id: str) -> Health:
        return self.driver.core.pool.state(gateway_id)


@pytest.fixture
async def admin() -> AsyncIterator[Admin]:
    loop = asyncio.get_running_loop()
    config = parse_config(CONFIG.format(admin=f"{ADMIN_HOST}:0"), "admin.toml")
    core = build_core(config, loop.time())
    driver = CoreDriver(core, loop, EventLogger())
    server = AdminServer(driver, metrics=lambda: b"# sipedge metrics\nsipedge_up 1\n")
    assert config.admin.listen is not None
    await server.start(config.admin.listen)
    session = aiohttp.ClientSession()
    try:
        yield Admin(driver, server, session)
    finally:
        await session.close()
        await server.aclose()
        driver.close()


async def test_healthz_is_ok(admin: Admin) -> None:
    assert await admin.get("/healthz") == (200, "text/plain", "ok\n")


async def test_readyz_needs_one_gateway_up(admin: Admin) -> None:
    status, _, _ = await admin.get("/readyz")
    assert status == 503
    now = admin.driver.loop.time()
    for _ in range(2):  # up_after = 2
        admin.driver.core.pool.observe(GW2, Replied(200, 0.012), now)
    assert admin.state(GW2) is Health.UP
    status, _, text = await admin.get("/readyz")
    assert (status, text) == (200, "ready\n")


async def test_gateways_lists_every_gateway_with_state_and_probe_facts(admin: Admin) -> None:
    admin.driver.core.pool.observe(GW2, Replied(200, 0.0123), admin.driver.loop.time())
    status, content_type, _ = await admin.get("/gateways")
    assert (status, content_type) == (200, "application/json")
    async with admin.session.get(admin.base + "/gateways") as resp:
        rows = await resp.json()
    assert [r["id"] for r in rows] == [GW1, GW2, "san-jose-ix/127.0.0.214:5060", UNRESOLVED]
    first = rows[0]
    assert first["edge"] == "ashburn-ix" and first["region"] == "Virginia"
    assert first["address"] == "udp:127.0.0.212:5060"
    assert first["state"] == "probing" and first["last_code"] is None
    assert 0 <= first["since_s"] < 5 and first["since_unix"] > 1.6e9
    assert rows[1]["last_code"] == 200 and rows[1]["last_rtt_ms"] == 12.3
    # A name that never resolved: DOWN with reason dns.
    assert rows[3]["state"] == "down" and rows[3]["reason"] == "dns"
    assert rows[3]["address"] == "udp:never.example.net:5060"


async def test_drain_then_enable(admin: Admin, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="sipedge")
    status, body = await admin.post(f"/gateways/{GW1}/drain")
    assert status == 200
    assert isinstance(body, dict) and body["id"] == GW1 and body["state"] == "admin_down"
    assert admin.state(GW1) is Health.ADMIN_DOWN
    snapshot = {s.id: s for s in admin.driver.core.pool.snapshot()}
    assert snapshot[GW1].state is Health.ADMIN_DOWN and snapshot[GW1].reason == "admin drain"
    # The driver was flushed: the state change was logged by the event logger.
    assert any(GW1 in r.getMessage() and "ADMIN_DOWN" in r.getMessage() for r in caplog.records)
    # Percent-encoded ids work too.
    status, body = await admin.post(f"/gateways/{quote(GW1, safe='')}/enable")
    assert status == 200 and isinstance(body, dict) and body["state"] == "probing"
    assert admin.state(GW1) is Health.PROBING


async def test_unknown_gateway_is_404_and_unresolved_is_409(admin: Admin) -> None:
    status, body = await admin.post("/gateways/ashburn-ix/127.0.0.99:5060/drain")
    assert status == 404 and isinstance(body, dict) and "no gateway" in body["error"]
    status, _ = await admin.post(f"/gateways/{UNRESOLVED}/enable")
    assert status == 409
    assert admin.state(UNRESOLVED) is Health.DOWN
    status, _, _ = await admin.get("/gateways/x/reboot")
    assert status == 404


async def test_metrics_hook_serves_exposition_bytes(admin: Admin) -> None:
    status, content_type, text = await admin.get("/metrics")
    assert (status, content_type) == (200, "text/plain")
    assert "sipedge_up 1" in text


async def test_metrics_without_collector_is_501() -> None:
    loop = asyncio.get_running_loop()
    config = parse_config(CONFIG.format(admin=f"{ADMIN_HOST}:0"), "admin.toml")
    driver = CoreDriver(build_core(config, loop.time()), loop, EventLogger())
    server = AdminServer(driver)
    bound = await server.start(Endpoint("tcp", ADMIN_HOST, 0))
    try:
        async with aiohttp.ClientSession() as session, \
                session.get(f"http://{bound.hostport}/metrics") as resp:
            assert resp.status == 501
    finally:
        await server.aclose()
        driver.close()


async def test_no_access_log_at_info(admin: Admin, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    await admin.get("/healthz")
    await admin.get("/gateways")
    assert not [r for r in caplog.records if r.name.startswith("aiohttp")]


# ------------------------------------------------------------------------- CLI


def _write(tmp_path: Path, admin: str) -> str:
    path = tmp_path / "sipedge.toml"
    text = CONFIG.format(admin=admin)
    if not admin:
        text = text.replace('[admin]\nlisten = ""\n', "")
    path.write_text(text)
    return str(path)


async def test_cli_gateways_prints_the_table(admin: Admin, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert admin.server.bound is not None
    path = _write(tmp_path, admin.server.bound.hostport)
    code = await asyncio.to_thread(main, ["gateways", "--config", path])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[0].split() == ["ID", "EDGE", "REGION", "STATE", "REASON", "LAST", "CODE", "RTT",
                              "SINCE"]
    assert out[1].split()[:5] == [GW1, "ashburn-ix", "Virginia", "PROBING", "not"]
    assert out[4].split()[:5] == [UNRESOLVED, "san-jose-ix", "Oregon", "DOWN", "dns"]


async def test_cli_gateways_daemon_not_reachable_is_69(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind((ADMIN_HOST, 0))
        port = s.getsockname()[1]
    path = _write(tmp_path, f"{ADMIN_HOST}:{port}")
    code = await asyncio.to_thread(main, ["gateways", "--config", path, "--timeout", "1"])
    assert code == 69
    assert "cannot reach the daemon" in capsys.readouterr().err


def test_cli_gateways_without_admin_listen_is_78(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gateways", "--config", _write(tmp_path, "")]) == 78
    assert "admin.listen is not set" in capsys.readouterr().err


def test_gateway_table_formats_rtt_and_since() -> None:
    table = gateway_table([{"id": "e/1.2.3.4:5060", "edge": "e", "region": "R", "state": "up",
                            "reason": "2 consecutive 200 replies", "last_code": 200,
                            "last_rtt_ms": 12.5, "since_s": 3725.0}])
    assert "12.5 ms" in table and "62m05s" in table and " UP " in table
    assert table.splitlines()[0].startswith("ID")


async def test_drain_makes_readyz_503_and_undrain_restores_it(admin: Admin) -> None:
    now = admin.driver.loop.time()
    for _ in range(2):
        admin.driver.core.pool.observe(GW2, Replied(200, 0.012), now)
    assert (await admin.get("/readyz"))[0] == 200
    status, body = await admin.post("/drain")
    assert status == 200 and body == {"draining": True, "calls": 0, "pending": 0}
    assert admin.driver.core.draining
    assert await admin.get("/readyz") == (503, "text/plain", "not ready: draining\n")
    status, body = await admin.post("/undrain")
    assert status == 200 and isinstance(body, dict) and body["draining"] is False
    assert (await admin.get("/readyz"))[0] == 200
