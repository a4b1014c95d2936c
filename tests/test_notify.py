"""sipedge.notify against a fake NOTIFY_SOCKET: real AF_UNIX datagram sockets, no mocks."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipedge.notify import Notifier, start_watchdog, watchdog_loop


def _bound(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(2.0)
    return sock


@pytest.fixture
def path_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "notify.sock")
    sock = _bound(path)
    yield path, sock
    sock.close()


@pytest.fixture
def abstract_socket() -> Iterator[tuple[str, socket.socket]]:
    name = f"sipedge-test-notify-{os.getpid()}-{time.monotonic_ns()}"
    sock = _bound("\0" + name)
    yield "@" + name, sock
    sock.close()


def _drain(sock: socket.socket) -> list[bytes]:
    got: list[bytes] = []
    sock.setblocking(False)
    try:
        while True:
            got.append(sock.recv(4096))
    except BlockingIOError:
        return got


@pytest.mark.parametrize("which", ["path_socket", "abstract_socket"])
def test_notify_sends_exact_datagrams_in_order(which: str,
                                                request: pytest.FixtureRequest) -> None:
    address, sock = request.getfixturevalue(which)
    notifier = Notifier.from_env({"NOTIFY_SOCKET": address})
    assert notifier.enabled
    assert notifier.ready()
    assert notifier.status("3 gateways UP, 0 calls")
    assert notifier.reloading(123456789)
    assert notifier.ready(status="reloaded")
    assert notifier.watchdog()
    assert notifier.stopping(status="draining: 2 calls")
    assert notifier.notify(status="multi\nline")
    notifier.close()
    assert _drain(sock) == [
        b"READY=1",
        b"STATUS=3 gateways UP, 0 calls",
        b"RELOADING=1\nMONOTONIC_USEC=123456789",
        b"READY=1\nSTATUS=reloaded",
        b"WATCHDOG=1",
        b"STOPPING=1\nSTATUS=draining: 2 calls",
        b"STATUS=multi line",  # a newline would start a new assignment
    ]


def test_reloading_defaults_to_clock_monotonic_now(
        path_socket: tuple[str, socket.socket]) -> None:
    address, sock = path_socket
    notifier = Notifier.from_env({"NOTIFY_SOCKET": address})
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.close()
    lines = sock.recv(4096).split(b"\n")
    assert lines[0] == b"RELOADING=1"
    key, _, value = lines[1].partition(b"=")
    assert key == b"MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_unset_notify_socket_is_a_noop() -> None:
    notifier = Notifier.from_env({})
    assert not notifier.enabled
    assert notifier.watchdog_interval_s is None
    assert not notifier.ready()
    assert not notifier.watchdog()
    assert not notifier.stopping()
    notifier.close()
    notifier.close()


def test_from_env_reads_os_environ_without_changing_it(
        path_socket: tuple[str, socket.socket], monkeypatch: pytest.MonkeyPatch) -> None:
    address, sock = path_socket
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    notifier = Notifier.from_env()
    assert notifier.watchdog_interval_s == 2.0
    notifier.ready()
    notifier.close()
    assert sock.recv(4096) == b"READY=1"
    assert os.environ["NOTIFY_SOCKET"] == address  # not unset: no children inherit it


def test_unsupported_address_disables_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="sipedge.notify"):
        notifier = Notifier.from_env({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not notifier.enabled
    assert not notifier.ready()
    assert len(caplog.records) == 1


@pytest.mark.parametrize(("pid", "usec", "interval"), [
    (None, "200000", 0.1),
    ("self", "200000", 0.1),
    ("other", "200000", None),  # the watchdog is meant for another process
    (None, "0", None),
    (None, "junk", None),
    ("junk", "200000", None),
])
def test_watchdog_applies_only_to_this_pid(path_socket: tuple[str, socket.socket],
                                           pid: str | None, usec: str,
                                           interval: float | None) -> None:
    env = {"NOTIFY_SOCKET": path_socket[0], "WATCHDOG_USEC": usec}
    if pid is not None:
        env["WATCHDOG_PID"] = {"self": str(os.getpid()), "other": str(os.getpid() + 1),
                               "junk": "x"}[pid]
    notifier = Notifier.from_env(env)
    assert notifier.watchdog_interval_s == interval
    notifier.close()


def test_watchdog_without_socket_has_no_interval() -> None:
    assert Notifier.from_env({"WATCHDOG_USEC": "200000"}).watchdog_interval_s is None


async def test_watchdog_loop_pings_at_half_the_period(
        path_socket: tuple[str, socket.socket]) -> None:
    address, sock = path_socket
    notifier = Notifier.from_env({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "200000"})
    task = start_watchdog(notifier)
    assert task is not None
    await asyncio.sleep(0.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    notifier.close()
    pings = _drain(sock)
    assert set(pings) == {b"WATCHDOG=1"}
    # every 0.1 s for 0.5 s is ~6 (one at once); lenient for a loaded CI machine
    assert 3 <= len(pings) <= 8, len(pings)


async def test_watchdog_loop_returns_when_no_watchdog() -> None:
    notifier = Notifier.from_env({})
    assert start_watchdog(notifier) is None
    await asyncio.wait_for(watchdog_loop(notifier), timeout=1.0)


def test_vanished_socket_does_not_raise_and_warns_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "gone.sock"
    sock = _bound(str(path))
    notifier = Notifier.from_env({"NOTIFY_SOCKET": str(path)})
    sock.close()
    path.unlink()
    with caplog.at_level(logging.WARNING, logger="sipedge.notify"):
        assert not notifier.ready()
        assert not notifier.watchdog()
        assert not notifier.stopping()
    assert len(caplog.records) == 1
    assert "not sent" in caplog.records[0].getMessage()
    notifier.close()


def test_closed_listener_does_not_raise(tmp_path: Path) -> None:
    path = tmp_path / "closed.sock"
    sock = _bound(str(path))
    sock.close()  # the path exists, nobody listens: ECONNREFUSED
    notifier = Notifier.from_env({"NOTIFY_SOCKET": str(path)})
    assert not notifier.ready()
    notifier.close()
    assert not notifier.ready()  # after close(): a no-op
