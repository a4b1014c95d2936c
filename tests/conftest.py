"""Shared fixtures: the conformance corpus and a FakeClock (time is a parameter)."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.wire import FakeClock

REPO_ROOT = Path(__file__).resolve().parent.parent
#: ../shared/corpus relative to the repo root unless SIPEDGE_CORPUS says otherwise.
CORPUS = Path(os.environ.get("SIPEDGE_CORPUS", REPO_ROOT.parent / "shared" / "corpus"))
SETS = ("rfc4475", "rfc5118", "flows")


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
