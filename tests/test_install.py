"""`make install` into a temporary DESTDIR, and `systemd-analyze verify` on the unit.

The install runs pip (a real venv, non-editable), so this module takes ~30-60 s; it is
marked ``install`` and is part of ``make test`` / ``make unit``. The tools it needs come
from ``make tools``; a missing tool is a failure, never a skip.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "sipedge.service"
PREFIX = "/opt/sipedge"

pytestmark = pytest.mark.install


def _tool(name: str, package: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin")
    if path is None:
        pytest.fail(f"{name} is missing: run `make tools` (Debian package {package})")
    return path


def _make_install(destdir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "VIRTUAL_ENV")}
    proc = subprocess.run(
        [_tool("make", "make"), "-C", str(ROOT), "install", f"DESTDIR={destdir}", *extra],
        capture_output=True, text=True, env=env, timeout=600, check=False)
    assert proc.returncode == 0, f"make install failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def destdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    dest = tmp_path_factory.mktemp("destdir")
    proc = _make_install(dest)
    print(proc.stdout)
    yield dest


def _verify(unit: Path) -> subprocess.CompletedProcess[str]:
    """``systemd-analyze verify`` on one unit file; the output is printed for quoting."""
    cmd = [_tool("systemd-analyze", "systemd"), "verify", str(unit)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    print(f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}(exit {proc.returncode})")
    return proc


def _verifiable_copy(destdir: Path, tmp_path: Path, text: str | None = None) -> Path:
    """The installed unit with ExecStart pointing at the DESTDIR-installed binary.

    verify checks that ExecStart's binary is executable; nothing else is changed, so the
    check is on the unit that ships. (``verify --root=DESTDIR`` would also need
    sysinit.target and /bin/kill inside DESTDIR.)
    """
    if text is None:
        text = (destdir / "etc/systemd/system/sipedge.service").read_text(encoding="utf-8")
    text = text.replace(f"\nExecStart={PREFIX}/", f"\nExecStart={destdir}{PREFIX}/")
    copy = tmp_path / "sipedge.service"
    copy.write_text(text, encoding="utf-8")
    return copy


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_unit_verifies_clean(destdir: Path, tmp_path: Path) -> None:
    unit = (destdir / "etc/systemd/system/sipedge.service").read_text(encoding="utf-8")
    assert f"\nExecStart={PREFIX}/bin/sipedge run " in unit
    proc = _verify(_verifiable_copy(destdir, tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout + proc.stderr == "", "systemd-analyze verify warned"


@pytest.mark.parametrize(("old", "new", "expect"), [
    ("\nWatchdogSec=", "\nWatchDogSec=", "Unknown key 'WatchDogSec'"),
    ("\nKillMode=mixed", "\nKillMode=mixd", "Failed to parse kill mode"),
    ("\nType=notify\n", "\nType=notfy\n", "Failed to parse service type"),
    (f"\nExecStart={PREFIX}/bin/sipedge ", f"\nExecStart={PREFIX}/bin/sipedg ",
     "is not executable"),
])
def test_unit_verify_catches_a_broken_copy(destdir: Path, tmp_path: Path,
                                           old: str, new: str, expect: str) -> None:
    text = (destdir / "etc/systemd/system/sipedge.service").read_text(encoding="utf-8")
    assert old in text
    proc = _verify(_verifiable_copy(destdir, tmp_path, text.replace(old, new, 1)))
    assert proc.returncode != 0 or proc.stderr, "a broken unit passed verify silently"
    assert expect in proc.stderr


def test_repo_unit_matches_installed_one_for_default_prefix(destdir: Path) -> None:
    installed = (destdir / "etc/systemd/system/sipedge.service").read_text(encoding="utf-8")
    assert installed == UNIT.read_text(encoding="utf-8")
    assert f"\nExecStart={PREFIX}/bin/sipedge run --config /etc/sipedge/sipedge.toml\n" \
        in installed


def test_install_lays_out_files_with_modes(destdir: Path) -> None:
    assert _mode(destdir / "etc/systemd/system/sipedge.service") == 0o644
    assert _mode(destdir / "etc/sysusers.d/sipedge.conf") == 0o644
    assert _mode(destdir / "etc/sipedge") == 0o750
    conf = destdir / "etc/sipedge/sipedge.toml"
    assert _mode(conf) == 0o640
    assert conf.read_bytes() == (ROOT / "conf/sipedge.toml").read_bytes()


def test_installed_venv_runs_sipedge_from_destdir(destdir: Path, tmp_path: Path) -> None:
    venv = destdir / PREFIX.lstrip("/")
    script = venv / "bin" / "sipedge"
    # Scripts are relocated to PREFIX (where a package puts them), not left in DESTDIR.
    assert script.read_text(encoding="utf-8").startswith(f"#!{PREFIX}/bin/python\n")
    for path in (venv / "bin").iterdir():
        if path.is_file() and not path.is_symlink():
            assert str(destdir).encode() not in path.read_bytes(), path
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}  # no PYTHONPATH, no VIRTUAL_ENV
    version = subprocess.run([str(venv / "bin/python"), str(script), "--version"],
                             capture_output=True, text=True, cwd=tmp_path, env=env,
                             timeout=60, check=False)
    assert version.returncode == 0, version.stderr
    from sipedge import __version__
    assert version.stdout.strip() == f"sipedge {__version__}"
    where = subprocess.run([str(venv / "bin/python"), "-c",
                            "import sipedge; print(sipedge.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path, env=env,
                           timeout=60, check=True)
    assert Path(where.stdout.strip()).is_relative_to(venv), "not a non-editable install"
    # gcc and the Python headers are on this machine: the production install is compiled.
    build = subprocess.run([str(venv / "bin/python"), "-c",
                            "import sipedge; print(*sipedge.core_build(), sep='|')"],
                           capture_output=True, text=True, cwd=tmp_path, env=env,
                           timeout=60, check=True)
    assert build.stdout.strip() == "mypyc|", build.stdout
    check = subprocess.run([str(venv / "bin/python"), str(script), "check", "--config",
                            str(ROOT / "conf/lab.toml")],
                           capture_output=True, text=True, cwd=tmp_path, env=env,
                           timeout=60, check=False)
    assert check.returncode == 0, check.stdout + check.stderr


def test_reinstall_keeps_edited_config_and_follows_prefix(destdir: Path,
                                                          tmp_path: Path) -> None:
    dest = tmp_path / "again"
    shutil.copytree(destdir, dest, symlinks=True)
    conf = dest / "etc/sipedge/sipedge.toml"
    conf.write_text("# edited by the operator\n", encoding="utf-8")
    conf.chmod(0o600)
    proc = _make_install(dest, "PREFIX=/srv/sipedge")
    assert "exists, left as it is" in proc.stdout
    assert conf.read_text(encoding="utf-8") == "# edited by the operator\n"
    assert _mode(conf) == 0o600
    unit = (dest / "etc/systemd/system/sipedge.service").read_text(encoding="utf-8")
    assert "\nExecStart=/srv/sipedge/bin/sipedge run --config /etc/sipedge/sipedge.toml\n" \
        in unit
    assert (dest / "srv/sipedge/bin/sipedge").read_text(encoding="utf-8").startswith(
        "#!/srv/sipedge/bin/python\n")
    for step in ("sipedge check --config /etc/sipedge/sipedge.toml",
                 "systemctl daemon-reload && systemctl enable --now sipedge",
                 "journalctl -u sipedge"):
        assert step in proc.stdout


def test_uninstall_keeps_config(destdir: Path, tmp_path: Path) -> None:
    dest = tmp_path / "gone"
    shutil.copytree(destdir, dest, symlinks=True)
    proc = subprocess.run([_tool("make", "make"), "-C", str(ROOT), "uninstall",
                           f"DESTDIR={dest}"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert not (dest / PREFIX.lstrip("/")).exists()
    assert not (dest / "etc/systemd/system/sipedge.service").exists()
    assert (dest / "etc/sipedge/sipedge.toml").exists()

