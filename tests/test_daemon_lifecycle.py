"""The Daemon in-process on real loopback sockets: reload, refused reload, drain, notify.

Addresses 127.0.7.0/24 (nothing else in the suite uses them); the gateways are not
running, so probes fail: these tests are about the lifecycle, not about calls (the SIPp
tests in tests/e2e/test_service.py place calls through reloads and drains).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sipedge import __version__, core_build
from sipedge.config import load_config
from sipedge.daemon import Daemon, status_line
from sipedge.lifecycle import Phase
from sipedge.notify import Notifier
from tests.helpers.wire import make_request, make_response

CONFIG = """
[inside]
listen = ["udp:127.0.7.1:5080"]
allow  = ["127.0.7.1/32"]
pbx    = "127.0.7.10:5060"

[outside]
listen = [{outside}]
domain = "example"

[[edges]]
name = "ashburn-ix"
gateways = ["127.0.7.64", "127.0.7.65"]
{more_edges}

[probe]
interval_up_s = 1
interval_down_s = 1
timeout_s = 0.5
{extra}
"""


def write(path: Path, *, outside: str = '"udp:127.0.7.3:5060"', more_edges: str = "",
          extra: str = "") -> None:
    path.write_text(CONFIG.format(outside=outside, more_edges=more_edges, extra=extra))


class FakeSystemd:
    """A NOTIFY_SOCKET: every datagram the daemon sends, in order."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.path = path
        self.seen: list[str] = []

    def read(self) -> list[str]:
        while True:
            try:
                self.seen.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return self.seen


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[tuple[Daemon, Path, FakeSystemd]]:
    path = tmp_path / "sipedge.toml"
    write(path)
    systemd = FakeSystemd(tmp_path / "notify")
    daemon = Daemon(load_config(path), notifier=Notifier(str(systemd.path)))
    level = logging.getLogger().level
    assert await daemon.start() is None
    try:
        yield daemon, path, systemd
    finally:
        if daemon.phase is not Phase.STOPPED:
            daemon.request_stop()
            daemon.request_stop()
            await daemon.wait_stopped()
        systemd.sock.close()
        logging.getLogger().setLevel(level)  # a reload may have changed it


async def wait_for(predicate: object, timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


def bound(host: str, port: int) -> bool:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind((host, port))
    except OSError:
        return True
    finally:
        s.close()
    return False


async def test_start_sends_ready_after_first_probes(
        lab: tuple[Daemon, Path, FakeSystemd]) -> None:
    daemon, _, systemd = lab
    assert daemon.phase is Phase.READY
    assert daemon.core is not None and daemon.core.probe_stats.probes_sent >= 2
    seen = systemd.read()
    assert seen[0] == "READY=1"
    assert "STATUS=ready: 0/2 ashburn-ix up, 0 calls" in seen


async def test_reload_swaps_edges_listeners_and_keeps_health(
        lab: tuple[Daemon, Path, FakeSystemd]) -> None:
    daemon, path, systemd = lab
    core = daemon.core
    assert core is not None
    before = core.pool.record("ashburn-ix/127.0.7.64:5060")
    write(path, outside='"udp:127.0.7.3:5060", "udp:127.0.7.4:5060"',
          more_edges='[[edges]]\nname = "san-jose-ix"\ngateways = ["127.0.8.64"]',
          extra='[log]\nlevel = "debug"')
    daemon.request_reload()
    await wait_for(lambda: daemon.phase is Phase.READY and daemon.config.edges[-1].name
                   == "san-jose-ix")
    assert daemon.core is core  # the same core, reconfigured
    assert [g.id for g in core.pool.gateways()][-1] == "san-jose-ix/127.0.8.64:5060"
    assert core.pool.record("ashburn-ix/127.0.7.64:5060").since == before.since
    assert bound("127.0.7.4", 5060)
    assert logging.getLogger().level == logging.DEBUG
    seen = systemd.read()
    reloading = [m for m in seen if m.startswith("RELOADING=1")]
    assert len(reloading) == 1 and "\nMONOTONIC_USEC=" in reloading[0]
    assert seen.index(reloading[0]) < len(seen) - 1 - seen[::-1].index("READY=1")
    # And back: the extra listener is closed, the edge gone.
    write(path)
    daemon.request_reload()
    await wait_for(lambda: daemon.phase is Phase.READY and len(daemon.config.edges) == 1)
    assert not bound("127.0.7.4", 5060)
    assert status_line(core, daemon.phase) == "ready: 0/2 ashburn-ix up, 0 calls"


async def test_invalid_reload_keeps_running_config(
        lab: tuple[Daemon, Path, FakeSystemd], caplog: pytest.LogCaptureFixture) -> None:
    daemon, path, _ = lab
    old = daemon.config
    path.write_text(path.read_text() + "\n[probe2]\nx = 1\n")
    daemon.request_reload()
    await wait_for(lambda: any("reload refused" in r.getMessage() for r in caplog.records))
    await wait_for(lambda: daemon.phase is Phase.READY)
    assert daemon.config is old
    message = next(r.getMessage() for r in caplog.records if "reload refused" in r.getMessage())
    assert f"{path}: probe2: unknown key" in message


async def test_reload_that_cannot_bind_changes_nothing(
        lab: tuple[Daemon, Path, FakeSystemd], caplog: pytest.LogCaptureFixture) -> None:
    daemon, path, _ = lab
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.7.5", 5060))
    try:
        write(path, outside='"udp:127.0.7.3:5060", "udp:127.0.7.5:5060"',
              more_edges='[[edges]]\nname = "san-jose-ix"\ngateways = ["127.0.8.64"]')
        old = daemon.config
        daemon.request_reload()
        await wait_for(lambda: any("reload refused" in r.getMessage()
                                   for r in caplog.records))
        await wait_for(lambda: daemon.phase is Phase.READY)
        assert daemon.config is old and daemon.core is not None
        assert len(daemon.core.pool.gateways()) == 2
    finally:
        taken.close()


async def test_drain_with_nothing_in_flight_stops_at_once(
        lab: tuple[Daemon, Path, FakeSystemd]) -> None:
    daemon, _, systemd = lab
    daemon.request_stop()
    assert daemon.phase is Phase.DRAINING and daemon.core is not None
    assert daemon.core.draining
    assert await asyncio.wait_for(daemon.wait_stopped(), 5) == 0
    assert daemon.phase is Phase.STOPPED
    seen = systemd.read()
    assert [m for m in seen if not m.startswith(("STATUS=", "WATCHDOG="))][-1] == "STOPPING=1"
    assert not bound("127.0.7.1", 5080)


async def test_admin_drain_and_undrain_move_the_lifecycle(
        lab: tuple[Daemon, Path, FakeSystemd]) -> None:
    daemon, _, _ = lab
    assert daemon.drain() and daemon.phase is Phase.DRAINING
    assert daemon.core is not None and daemon.core.draining
    daemon.request_reload()  # ignored while draining
    assert daemon.phase is Phase.DRAINING
    assert daemon.undrain() and daemon.phase is Phase.READY and not daemon.core.draining


class Gateway(asyncio.DatagramProtocol):
    """A minimal UAS on a loopback address: 200 to OPTIONS, INVITE and BYE."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.got: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.got.append(data)
        if data.startswith((b"OPTIONS", b"INVITE", b"BYE")):
            assert self.transport is not None
            self.transport.sendto(make_response(data, 200, b"OK"), addr)


async def test_removed_listener_stays_open_until_its_calls_end(
        lab: tuple[Daemon, Path, FakeSystemd]) -> None:
    daemon, path, _ = lab
    loop = asyncio.get_running_loop()
    gw_transport, _ = await loop.create_datagram_endpoint(Gateway, local_addr=("127.0.7.64", 5060))
    pbx_transport, _pbx = await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                           local_addr=("127.0.7.1", 0))
    try:
        port = pbx_transport.get_extra_info("sockname")[1]
        invite = make_request(b"INVITE", b"sip:+14155550100@127.0.7.1:5080",
                              via=[b"SIP/2.0/UDP 127.0.7.1:%d;branch=z9hG4bK-ret-1" % port],
                              call_id=b"retire-1")
        pbx_transport.sendto(invite, ("127.0.7.1", 5080))
        core = daemon.core
        assert core is not None
        await wait_for(lambda: core.calls_in_progress == 1)
        # The reload moves the outside listener to 127.0.7.4: the answered call's
        # Record-Route names 127.0.7.3, so that socket must stay until the call ends.
        write(path, outside='"udp:127.0.7.4:5060"')
        daemon.request_reload()
        await wait_for(lambda: daemon.phase is Phase.READY
                       and daemon.config.outside.listen[0].host == "127.0.7.4")
        assert bound("127.0.7.3", 5060) and bound("127.0.7.4", 5060)
        # The gateway hangs up toward the old address: the BYE still gets through.
        bye = make_request(b"BYE", b"sip:pbx@127.0.7.10:5060",
                           via=[b"SIP/2.0/UDP 127.0.7.64:5060;branch=z9hG4bK-gw-bye"],
                           from_=b"<sip:+14155550100@twilio>;tag=gwtag",
                           to=b"<sip:pbx@127.0.7.1>;tag=pbxtag1", call_id=b"retire-1", cseq=2,
                           headers=[(b"Route", b"<sip:127.0.7.3:5060;lr>"),
                                    (b"Route", b"<sip:127.0.7.1:5080;lr>")])
        gw_transport.sendto(bye, ("127.0.7.3", 5060))
        # The PBX callee (127.0.7.10) does not exist: the BYE times out there, 408 ends it.
        await wait_for(lambda: core.calls_in_progress == 0, timeout_s=40)
        await wait_for(lambda: not bound("127.0.7.3", 5060), timeout_s=5)
        assert bound("127.0.7.4", 5060)
    finally:
        gw_transport.close()
        pbx_transport.close()


async def test_start_logs_whether_the_core_is_compiled(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "sipedge.toml"
    write(path)
    daemon = Daemon(load_config(path), notifier=Notifier(None))
    caplog.set_level(logging.INFO, logger="sipedge")
    assert await daemon.start() is None
    try:
        build = core_build()
        expected = ("core compiled (mypyc)" if build.kind == "mypyc"
                    else f"core is pure Python ({build.reason})")
        lines = [r.getMessage() for r in caplog.records if "core" in r.getMessage()]
        assert lines[0] == f"sipedge {__version__}: {expected}"
    finally:
        daemon.request_stop()
        daemon.request_stop()
        await daemon.wait_stopped()
