"""Shared fixtures: one Screener per test session (compiling and registering is per process)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from screener.screen import Screener

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "rules"
SHARED = ROOT.parent / "shared"


@pytest.fixture(scope="session")
def screener() -> Iterator[Screener]:
    s = Screener.from_paths([str(RULES)])
    yield s
    s.close()


@pytest.fixture(scope="session")
def reference_screener() -> Iterator[Screener]:
    s = Screener.from_paths([str(RULES)], engine="reference")
    yield s
    s.close()
