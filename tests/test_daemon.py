"""Composition-root helpers: config → core settings, PBX name resolution."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from sipedge.config import parse_config
from sipedge.daemon import Daemon, build_core, resolve_pbx
from sipedge.lifecycle import Phase
from sipedge.notify import Notifier
from tests.helpers.wire import ProxyHarness
from tests.proxy.test_accounting import answer
from tests.proxy.test_core import place

LAB = (Path(__file__).resolve().parents[1] / "conf" / "lab.toml").read_text()


async def test_pbx_name_resolved_once_at_start() -> None:
    # /etc/hosts only: "localhost" never leaves the machine.
    config = parse_config(LAB.replace('pbx    = "127.0.0.10:5060"', 'pbx    = "localhost:5070"'))
    resolved = await resolve_pbx(config)
    assert resolved.inside.pbx.host in ("127.0.0.1", "::1")
    assert resolved.inside.pbx.port == 5070


async def test_pbx_ip_left_alone() -> None:
    config = parse_config(LAB)
    assert await resolve_pbx(config) is config


def test_core_built_from_lab_config_probes_every_gateway() -> None:
    core = build_core(parse_config(LAB), 0.0)
    probed: set[str] = set()
    for _ in range(12):  # first probes are spread by jitter: run each due time
        deadline = core.next_deadline()
        assert deadline is not None and deadline < 3.0
        core.handle_timer(deadline)
        probed |= {s.dest.host for s in core.drain_outbox() if s.data.startswith(b"OPTIONS")}
    assert probed == {"127.0.0.64", "127.0.0.65", "127.0.0.66",
                      "127.0.1.64", "127.0.1.65", "127.0.1.66"}


async def test_second_stop_during_drain_does_not_log_the_calls_as_ended(
        caplog: pytest.LogCaptureFixture) -> None:
    # A call in progress (answered, no BYE yet) keeps the SIGTERM drain waiting.
    harness = ProxyHarness()
    harness.bring_up()
    _, fwd = place(harness)
    answer(harness, fwd)
    daemon = Daemon(parse_config(LAB), notifier=Notifier(None))
    daemon.core = harness.core
    daemon.lifecycle.move(Phase.READY)
    caplog.set_level(logging.INFO, logger="sipedge")
    daemon.request_stop()  # SIGTERM: drain
    await asyncio.sleep(0.2)
    assert daemon.phase is Phase.DRAINING and daemon.core.calls_in_progress == 1
    daemon.request_stop()  # second SIGTERM: exit now
    assert await asyncio.wait_for(daemon.wait_stopped(), 2.0) == 0
    await asyncio.sleep(0.1)  # the drain task sees the hard stop
    assert "second stop request: exiting now, 1 calls still in progress" in caplog.text
    assert "drained: every call ended" not in caplog.text
