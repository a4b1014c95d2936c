"""Build hook: the sans-I/O core compiled with mypyc, or installed as pure Python.

pyproject.toml holds all the metadata; this file only decides ``ext_modules``.

* A wheel (``pip install .``, ``make install``) compiles ``sipedge/sip``,
  ``sipedge/gateway``, ``sipedge/proxy`` and ``sipedge/catalogue`` with mypyc. The ``.py``
  files ship beside the extension modules, which Python imports first.
* An editable install (``pip install -e .``, ``make venv``) stays pure Python, so edits to
  the ``.py`` files take effect and no ``.so`` lands in the source tree.
* ``SIPEDGE_PURE_PYTHON=1`` forces pure Python. So does anything that stops the compile:
  mypyc missing from the build environment, no C compiler, no Python headers, mypyc or the
  C compiler failing. The install never fails for that; it says why on stderr and records
  the reason in ``sipedge/core-build.txt``, which ``sipedge.core_build()`` reads and the
  daemon logs at start.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
#: The packages compiled (their ``__init__.py`` re-exports stay Python: nothing to gain).
CORE_PACKAGES = ("sip", "gateway", "proxy", "catalogue")
#: Read by sipedge.core_build(); keep the name in step with sipedge/__init__.py.
BUILD_NOTE = "core-build.txt"
#: setup.py commands that build the package (others, e.g. egg_info, only need metadata).
BUILDING = {"bdist_wheel", "build", "build_ext", "build_py", "install", "bdist"}
#: An editable install (PEP 660) or the legacy develop: the source tree is imported.
EDITABLE = {"editable_wheel", "develop"}


def say(text: str) -> None:
    """One line on stderr (pip shows it with ``-v``; ``make install`` reports the result)."""
    print(f"sipedge build: {text}", file=sys.stderr, flush=True)


def brief(exc: BaseException) -> str:
    """An exception in one short line (a CompileError's text is the whole command line)."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= 160 else text[:157] + "..."


def core_sources() -> list[str]:
    """The core's module paths, relative to the project root, in a stable order."""
    return sorted(
        str(path.relative_to(ROOT))
        for package in CORE_PACKAGES
        for path in (ROOT / "sipedge" / package).glob("*.py")
        if path.name != "__init__.py"
    )


def why_not_compiled(argv: Sequence[str]) -> str | None:
    """The reason to stay pure Python, or None to compile."""
    if os.environ.get("SIPEDGE_PURE_PYTHON", "") not in ("", "0"):
        return "SIPEDGE_PURE_PYTHON is set"
    if EDITABLE.intersection(argv):
        return "editable install (the source tree is imported)"
    try:
        import mypyc.build  # noqa: F401
    except ImportError:
        return "mypyc is not installed in the build environment"
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not headers.is_file():
        return f"the Python headers are missing ({headers})"
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        return f"no C compiler ({compiler} not found)"
    return None


def write_note(build_lib: str, text: str) -> None:
    """``sipedge/core-build.txt`` in the build tree: what the installed core is, and why."""
    note = Path(build_lib, "sipedge", BUILD_NOTE)
    note.parent.mkdir(parents=True, exist_ok=True)
    note.write_text(text + "\n", encoding="utf-8")


class BuildPy(build_py):
    """build_py that records the core's build decision beside the package."""

    note = "python: not built by setup.py"

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        if not self.distribution.has_ext_modules():
            # A pure build must not ship extension modules left by an earlier build.
            for suffix in (".so", ".pyd"):
                for stale in Path(self.build_lib).rglob(f"*{suffix}"):
                    stale.unlink()
        write_note(self.build_lib, self.note)


class BuildExt(build_ext):
    """build_ext that compiles an extension's C files in parallel and falls back to pure
    Python when the compile fails."""

    def build_extension(self, ext: Any) -> None:
        # mypyc puts the whole core in one shared library of many C files (multi_file);
        # build_ext's own --parallel runs extensions, not files, concurrently.
        compile_files = self.compiler.compile
        workers = min(len(ext.sources), os.cpu_count() or 1)

        def compile_parallel(sources: list[str], *args: Any, **kwargs: Any) -> list[str]:
            with ThreadPoolExecutor(workers) as pool:
                done = pool.map(lambda source: compile_files([source], *args, **kwargs),
                                sources)
                return [obj for objects in done for obj in objects]

        self.compiler.compile = compile_parallel
        try:
            super().build_extension(ext)
        finally:
            self.compiler.compile = compile_files

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # CompileError, LinkError, OSError...: never fail the install
            for output in self.get_outputs():
                Path(output).unlink(missing_ok=True)
            reason = f"the C compile failed ({brief(exc)})"
            say(f"pure-Python core: {reason}")
            write_note(self.build_lib, f"python: {reason}")


def ext_modules(argv: Sequence[str]) -> list[Any]:
    """mypyc's extensions for a build; empty (pure Python) otherwise."""
    if not BUILDING.intersection(argv) or EDITABLE.intersection(argv):
        if EDITABLE.intersection(argv):
            BuildPy.note = "python: editable install (the source tree is imported)"
        return []
    reason = why_not_compiled(argv)
    if reason is None:
        from mypyc.build import mypycify

        try:
            extensions: list[Any] = mypycify(core_sources(), opt_level="3", multi_file=True)
        except (Exception, SystemExit) as exc:  # mypyc exits on a type error
            reason = f"mypyc failed ({brief(exc)})"
        else:
            say(f"compiling the core with mypyc ({len(extensions)} extension modules)")
            BuildPy.note = "mypyc"
            return extensions
    say(f"pure-Python core: {reason}")
    BuildPy.note = f"python: {reason}"
    return []


if __name__ == "__main__":  # setuptools.build_meta runs this file as __main__
    setup(
        ext_modules=ext_modules(sys.argv[1:]),
        cmdclass={"build_py": BuildPy, "build_ext": BuildExt},
    )
