"""The command line: `check` validates (exit 0 / 78 with FILE: key: reason)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sipedge.cli import EX_CONFIG, main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["sipedge.toml", "lab.toml"])
def test_check_accepts_shipped_configs(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    # conf/sipedge.toml points at Twilio's real gateways: it is only ever validated.
    assert main(["check", "--config", str(ROOT / "conf" / name)]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "ashburn-ix" in out


def test_check_refuses_bad_config_with_file_key_reason(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text((ROOT / "conf" / "lab.toml").read_text().replace(
        'name     = "san-jose-ix"', 'name     = "roaming"'))
    assert main(["check", "--config", str(bad)]) == EX_CONFIG
    err = capsys.readouterr().err
    assert f"{bad}: edges[1].name: " in err and "media-only" in err


def test_run_refuses_bad_config_before_binding(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text((ROOT / "conf" / "lab.toml").read_text().replace(
        "[inside]", "[inside]\nbogus = 1", 1))
    assert main(["run", "--config", str(bad)]) == EX_CONFIG
    assert "inside.bogus" in capsys.readouterr().err
