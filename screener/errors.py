"""Errors and data issues.

One root exception (`ScreenerError`). Rule-file problems are `RuleError` records carrying their
location, code and suggestion; the message is formatted from those fields, compiler style:

    rules/x.yaml:14:7: error[schema.unknown_field]: unknown field 'ecog_scor' (did you mean 'ecog'?)

Problems with *patient data* are not exceptions: they become `DataIssue` values in the report,
and the criteria that needed the data become `unknown`.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Iterable


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


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    matches = difflib.get_close_matches(word, sorted(set(candidates)), n=1, cutoff=0.6)
    return matches[0] if matches else None
