"""What the benchmark scripts share: the machine line and appending to bench/RESULTS.md."""

from __future__ import annotations

import os
import platform
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def append(text: str) -> None:
    """Append one section (starting with its own heading) to bench/RESULTS.md."""
    with open(RESULTS, "a", encoding="utf-8") as fh:
        fh.write(text)
