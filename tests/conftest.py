"""Shared fixtures: the conformance corpus and a FakeClock (time is a parameter)."""

from __future__ import annotations

import csv
import os
import pkgutil
from dataclasses import dataclass
from importlib import import_module, machinery
from pathlib import Path

import pytest

import sipedge
from tests.helpers.wire import FakeClock

REPO_ROOT = Path(__file__).resolve().parent.parent
#: ../shared/corpus relative to the repo root unless SIPEDGE_CORPUS says otherwise.
CORPUS = Path(os.environ.get("SIPEDGE_CORPUS", REPO_ROOT.parent / "shared" / "corpus"))
SETS = ("rfc4475", "rfc5118", "flows")
#: The packages setup.py compiles with mypyc (their __init__ re-exports stay Python).
COMPILED_PACKAGES = ("sipedge.sip", "sipedge.gateway", "sipedge.proxy", "sipedge.catalogue")


def core_modules_not_compiled() -> list[str]:
    """The modules of COMPILED_PACKAGES that were imported from source, not an extension."""
    pure = []
    for package in COMPILED_PACKAGES:
        for info in pkgutil.iter_modules(import_module(package).__path__, package + "."):
            module = import_module(info.name)
            if not (module.__file__ or "").endswith(tuple(machinery.EXTENSION_SUFFIXES)):
                pure.append(info.name)
    return pure


def pytest_report_header() -> str:
    build = sipedge.core_build()
    where = Path(sipedge.__file__ or "?").parent
    return f"sipedge core: {build.kind}{f' ({build.reason})' if build.reason else ''}, from {where}"


def pytest_configure(config: pytest.Config) -> None:
    """With SIPEDGE_EXPECT_COMPILED=1 (make unit-compiled) refuse to test pure Python."""
    if os.environ.get("SIPEDGE_EXPECT_COMPILED") != "1":
        return
    build = sipedge.core_build()
    if build.kind != "mypyc":
        raise pytest.UsageError(f"SIPEDGE_EXPECT_COMPILED=1 but the core is pure Python "
                                f"({build.reason}); sipedge from {sipedge.__file__}")
    if Path(sipedge.__file__ or "").resolve().parent == REPO_ROOT / "sipedge":
        raise pytest.UsageError("SIPEDGE_EXPECT_COMPILED=1 but sipedge is the source tree")
    pure = core_modules_not_compiled()
    if pure:
        raise pytest.UsageError(f"SIPEDGE_EXPECT_COMPILED=1 but not compiled: {pure}")


@dataclass(frozen=True)
class CorpusCase:
    """One MANIFEST.tsv row plus the message bytes."""

    set: str
    name: str
    row: dict[str, str]
    data: bytes

    @property
    def id(self) -> str:
        return f"{self.set}/{self.name}"


def load_manifest(set_name: str) -> list[CorpusCase]:
    """Every row of ``<corpus>/<set>/MANIFEST.tsv`` with its bytes."""
    base = CORPUS / set_name
    with open(base / "MANIFEST.tsv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    return [CorpusCase(set_name, r["name"], r, (base / r["path"]).read_bytes()) for r in rows]


def all_cases() -> list[CorpusCase]:
    """All manifest rows of all sets (empty when the corpus is missing)."""
    if not CORPUS.is_dir():
        return []
    return [case for s in SETS for case in load_manifest(s)]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    # A missing corpus is a broken checkout, not a reason to pass quietly.
    assert CORPUS.is_dir(), f"corpus not found at {CORPUS} (set SIPEDGE_CORPUS)"
    return CORPUS
