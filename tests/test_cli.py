"""The command line: `check` validates (exit 0 / 78 with FILE: key: reason)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sipedge.cli import EX_CONFIG, _parser, main

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


def test_run_parses_log_format() -> None:
    args = _parser().parse_args(["run", "--config", "x.toml", "--log-format", "json"])
    assert args.log_format == "json"
    assert _parser().parse_args(["run", "--config", "x.toml"]).log_format is None


def test_run_refuses_an_unknown_log_format(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        _parser().parse_args(["run", "--config", "x.toml", "--log-format", "xml"])
    assert info.value.code == 2
    assert "--log-format" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "file_format", "expected"),
    [
        ([], "json", ("info", "json")),  # [log] format from the file
        (["--log-format", "text"], "json", ("info", "text")),  # the flag wins
        (["--log-format", "json", "--log-level", "debug"], "text", ("debug", "json")),
    ],
)
def test_run_passes_the_log_format_to_setup_logging(
        argv: list[str], file_format: str, expected: tuple[str, str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "lab.toml"
    conf.write_text((ROOT / "conf" / "lab.toml").read_text()
                    + f'\n[log]\nformat = "{file_format}"\n')
    calls: list[tuple[str, str]] = []
    monkeypatch.setattr("sipedge.logs.setup_logging",
                        lambda level, fmt="text", tag=None: calls.append((level, fmt)))
    monkeypatch.setattr("sipedge.daemon.run", lambda config, log_level=None, log_format=None: 0)
    assert main(["run", "--config", str(conf), *argv]) == 0
    assert calls == [expected]


def test_firewall_and_twiml_are_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        _parser().parse_args(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "firewall" in out and "twiml" in out
    args = _parser().parse_args(["firewall", "--config", "x.toml"])
    assert args.format == "nftables"
    with pytest.raises(SystemExit):
        _parser().parse_args(["firewall", "--config", "x.toml", "--format", "pf"])


def test_twiml_needs_no_config(capsys: pytest.CaptureFixture[str]) -> None:
    # No --config at all: twiml is answered before any config is loaded.
    assert main(["twiml", "--user", "a", "--host", "h", "--edge", "ashburn-ix"]) == 0
    assert "edge=ashburn-ix" in capsys.readouterr().out
