"""setup.py's choice between the mypyc-compiled core and pure Python, and core_build().

The compiled build itself is tested by ``make unit-compiled`` (the core's tests against the
wheel) and tests/test_install.py (``make install`` compiles); here: the decisions, and one
real ``pip wheel`` whose C compile fails, which must still give a working pure wheel.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from importlib import machinery
from pathlib import Path
from types import ModuleType

import pytest

import sipedge
from sipedge.sip import message
from tests.conftest import COMPILED_PACKAGES, REPO_ROOT


def _setup_module() -> ModuleType:
    """setup.py as a module (not __main__, so setup() is not called)."""
    spec = importlib.util.spec_from_file_location("sipedge_setup", REPO_ROOT / "setup.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def setup_py(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.delenv("SIPEDGE_PURE_PYTHON", raising=False)
    return _setup_module()


def test_core_build_says_how_the_message_module_was_loaded() -> None:
    build = sipedge.core_build()
    compiled = (message.__file__ or "").endswith(tuple(machinery.EXTENSION_SUFFIXES))
    assert build.kind == ("mypyc" if compiled else "python")
    assert (build.reason == "") == compiled


def test_core_build_in_the_source_tree_is_python_with_a_reason() -> None:
    if Path(sipedge.__file__ or "").resolve().parent != REPO_ROOT / "sipedge":
        pytest.skip("sipedge is installed, not the source tree")
    assert sipedge.core_build() == ("python", "not built by setup.py (a source tree or an "
                                              "editable install)")


def test_setup_compiles_every_core_module_but_the_package_inits(setup_py: ModuleType) -> None:
    sources = setup_py.core_sources()
    assert "sipedge/sip/message.py" in sources and "sipedge/proxy/core.py" in sources
    assert not any(s.endswith("__init__.py") for s in sources)
    assert {s.rsplit("/", 1)[0].replace("/", ".") for s in sources} == set(COMPILED_PACKAGES)
    assert setup_py.BUILD_NOTE == sipedge.BUILD_NOTE


def test_setup_compiles_only_for_a_build(setup_py: ModuleType) -> None:
    assert setup_py.why_not_compiled(["bdist_wheel"]) is None  # gcc and headers are here
    assert setup_py.ext_modules(["egg_info"]) == []  # metadata only: mypyc is not run
    assert setup_py.ext_modules(["editable_wheel"]) == []
    assert setup_py.BuildPy.note == "python: editable install (the source tree is imported)"


@pytest.mark.parametrize("value, pure", [("1", True), ("yes", True), ("0", False), ("", False)])
def test_sipedge_pure_python_forces_pure(setup_py: ModuleType, monkeypatch: pytest.MonkeyPatch,
                                         value: str, pure: bool) -> None:
    monkeypatch.setenv("SIPEDGE_PURE_PYTHON", value)
    reason = setup_py.why_not_compiled(["bdist_wheel"])
    assert reason == ("SIPEDGE_PURE_PYTHON is set" if pure else None)


def test_setup_without_compiler_or_headers_is_pure(setup_py: ModuleType,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    config = dict(setup_py.sysconfig.get_config_vars())
    monkeypatch.setattr(setup_py.sysconfig, "get_config_var",
                        lambda name: "no-such-cc -pthread" if name == "CC" else config.get(name))
    assert setup_py.why_not_compiled(["bdist_wheel"]) == "no C compiler (no-such-cc not found)"
    monkeypatch.setattr(setup_py.sysconfig, "get_paths", lambda: {"include": str(tmp_path)})
    reason = setup_py.why_not_compiled(["bdist_wheel"])
    assert reason == f"the Python headers are missing ({tmp_path / 'Python.h'})"


@pytest.mark.install
def test_wheel_whose_c_compile_fails_installs_pure_python(tmp_path: Path) -> None:
    # A copy of what the Dockerfile copies, so the repo's build/ (compiled objects) is kept.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "setup.py"):
        shutil.copy(REPO_ROOT / name, src)
    shutil.copytree(REPO_ROOT / "sipedge", src / "sipedge",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    env = {k: v for k, v in os.environ.items() if k != "SIPEDGE_PURE_PYTHON"}
    env["CC"] = "/bin/false"  # found, but every compile fails
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path / "w"), str(src)],
        capture_output=True, text=True, env=env, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "sipedge build: pure-Python core: the C compile failed" in proc.stdout + proc.stderr
    (wheel,) = (tmp_path / "w").glob("sipedge-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        note = zf.read("sipedge/core-build.txt").decode()
    assert not [n for n in names if n.endswith(".so")]
    assert "sipedge/sip/message.py" in names
    assert note.startswith("python: the C compile failed")
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(target), str(wheel)], check=True, timeout=300)
    probe = subprocess.run(
        [sys.executable, "-P", "-c", "import sipedge; print(*sipedge.core_build(), sep='|')"],
        capture_output=True, text=True, env={**env, "PYTHONPATH": str(target)}, check=True,
        cwd=tmp_path, timeout=60)
    kind, reason = probe.stdout.strip().split("|")
    assert kind == "python" and reason.startswith("the C compile failed (CompileError: ")
    assert len(reason) < 200
