"""Errors and data issues.

One root exception (`ScreenerError`). Rule-file problems are `RuleError` records carrying their
location, code and suggestion; the message is formatted from those fields, compiler style:

    rules/x.yaml:14:7: error[schema.unknown_field]: unknown field 'ecog_scor' (did you mean 'ecog'?)

Problems with *patient data* are not exceptions: they become `DataIssue` values in the report,
and the criteria that needed the data become `unknown`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field


class ScreenerError(Exception):
    """Root of every error this package raises on purpose."""


@dataclass(frozen=True, order=True)
class RuleError:
    path: str
    line: int
    column: int
    code: str
    message: str
    severity: str = "error"
    suggestion: str | None = None
    hint: str | None = None
    criterion: str | None = None

    def format(self) -> str:
        msg = self.message
        if self.suggestion:
            msg += f" (did you mean {self.suggestion!r}?)"
        return f"{self.path}:{self.line}:{self.column}: {self.severity}[{self.code}]: {msg}"

    def as_dict(self) -> dict[str, object]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


class RuleFileError(ScreenerError):
    """A rule file (or set of files) failed to load; carries every error found."""

    def __init__(self, errors: Iterable[RuleError]):
        self.errors: tuple[RuleError, ...] = tuple(sorted(errors))
        super().__init__("\n".join(e.format() for e in self.errors))


class UnknownTrial(ScreenerError):
    def __init__(self, trial_id: str, known: Iterable[str]):
        self.trial_id = trial_id
        self.suggestion = did_you_mean(trial_id, known)
        hint = f" (did you mean {self.suggestion!r}?)" if self.suggestion else ""
        super().__init__(f"unknown trial {trial_id!r}{hint}")


class PatientDataError(ScreenerError):
    """The patient document as a whole is unusable (not JSON, not an object, ...)."""

    def __init__(self, loc: tuple[str | int, ...], msg: str, type_: str = "value_error"):
        self.loc = loc
        self.msg = msg
        self.type = type_
        super().__init__(f"{'/'.join(map(str, loc)) or '<root>'}: {msg}")


@dataclass(frozen=True, order=True)
class DataIssue:
    """Something in the patient data that could not be used, and why."""

    loc: str
    code: str
    msg: str
    element: str | None = field(default=None, compare=True)

    def as_dict(self) -> dict[str, object]:
        d: dict[str, object] = {"loc": self.loc, "code": self.code, "msg": self.msg}
        if self.element:
            d["element"] = self.element
        return d


def cut(text: str, limit: int = 200) -> str:
    """`text`, cut to `limit` characters (ending in "...") for messages and labels: input text
    quoted in a report must not copy a megabyte-long value into it."""
    return text if len(text) <= limit else text[:limit - 3] + "..."


def short_repr(x: object, limit: int = 80) -> str:
    """repr(x), cut to `limit` characters for messages."""
    return cut(repr(x), limit)


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    cands = sorted(set(candidates))
    if not cands or len(word) > 2 * max(len(c) for c in cands) + 16:
        # no plausible typo of any candidate; and difflib on a megabyte-long "name" (hostile
        # or broken input) took seconds
        return None
    # the same characters in another order first: '=<' means '<=', not the closer-scoring '<'
    letters = sorted(word)
    for c in cands:
        if len(word) > 1 and c != word and len(c) == len(word) and sorted(c) == letters:
            return c
    matches = difflib.get_close_matches(word, cands, n=1, cutoff=0.6)
    if matches:
        return matches[0]
    # shared name parts, for names too long for difflib: 'ecog_score' -> 'ecog',
    # 'serum_creatinine' -> 'creatinine'
    parts = {x for x in re.split(r"[^a-z0-9]+", word.lower()) if len(x) > 1}
    best, score = None, 0.0
    for c in cands:
        cparts = {x for x in re.split(r"[^a-z0-9]+", c.lower()) if len(x) > 1}
        if parts and cparts:
            j = len(parts & cparts) / len(parts | cparts)
            if j > score:
                best, score = c, j
    return best if score >= 1 / 3 else None
