"""Composition-root helpers: config → core settings, PBX name resolution."""

from __future__ import annotations

from pathlib import Path

from sipedge.config import parse_config
from sipedge.daemon import build_core, resolve_pbx

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
