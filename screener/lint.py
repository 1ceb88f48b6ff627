"""Static checks beyond the schema (stage 2b, for `screener check`).

Each check yields located `RuleError` findings with a stable code, a severity and a fix hint.
Runs only on files that load; schema and parse errors are reported by `screen.check_file`.
"""

from __future__ import annotations

from typing import Iterable

from .errors import RuleError


def check_files(files: Iterable[str]) -> list[RuleError]:
    """Findings for every file (none yet beyond load/schema/parse: see issue #5)."""
    return []
