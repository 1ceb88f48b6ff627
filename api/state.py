"""The Screener a worker process is serving, and how it is swapped on a rule reload.

Position: `api/` edge, between the routes and `screener.screen.Screener`.

A reload compiles the rule files into a *new* Screener. If any file is bad, the old one keeps
serving and the located errors are returned. Otherwise the new one is swapped in and the old one
is closed, but only once no request still holds it: `lease()` counts the requests using each
Screener, because closing frees the durable_rules rulesets under a request that is mid-screen.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from screener.errors import RuleError, RuleFileError, ScreenerError
from screener.screen import Screener

log = logging.getLogger("api.rules")


@dataclass
class ReloadOutcome:
    ok: bool
    trials: dict[str, str]
    previous: dict[str, str]
    errors: tuple[RuleError, ...] = ()


def hashes(s: Screener) -> dict[str, str]:
    return {tid: c.hash for tid, c in s.compiled.items()}


def load(paths: Sequence[str]) -> Screener:
    """Screener.from_paths, and an empty rule set is an error too: a service that silently
    screens against nothing would answer every patient with an empty list."""
    try:
        s = Screener.from_paths(paths)
    except RuleFileError:
        raise
    except ScreenerError as e:
        raise RuleFileError([RuleError(",".join(paths), 0, 0, "load", str(e))]) from e
    if not s.compiled:
        s.close()
        raise RuleFileError([RuleError(",".join(paths), 0, 0, "no_trials",
                                       "no rule files (*.yaml) found")])
    return s


class ScreenerHolder:
    def __init__(self, paths: Sequence[str], screener: Screener | None = None):
        self.paths = list(paths)
        self._lock = threading.Lock()          # guards _current, _leases, _retired
        self._reload_lock = threading.Lock()   # one reload at a time
        self._current = screener if screener is not None else load(self.paths)
        self._leases: dict[int, int] = {}
        self._retired: dict[int, Screener] = {}
        self.generation = 1

    @property
    def current(self) -> Screener:
        """For metadata only (trial lists); screening goes through `lease()`."""
        return self._current

    @contextmanager
    def lease(self) -> Iterator[Screener]:
        with self._lock:
            s = self._current
            self._leases[id(s)] = self._leases.get(id(s), 0) + 1
        try:
            yield s
        finally:
            close = None
            with self._lock:
                n = self._leases[id(s)] - 1
                if n:
                    self._leases[id(s)] = n
                else:
                    del self._leases[id(s)]
                    close = self._retired.pop(id(s), None)
            if close is not None:
                close.close()

    def reload(self) -> ReloadOutcome:
        with self._reload_lock:
            previous = hashes(self._current)
            try:
                new = load(self.paths)
            except RuleFileError as e:
                log.error("rule reload failed, still serving the previous rules: %d error(s)",
                          len(e.errors))
                for err in e.errors:
                    # rule files are not patient data: their located errors are safe to log
                    log.error("  %s", err.format())
                return ReloadOutcome(False, previous, previous, e.errors)
            with self._lock:
                old = self._current
                self._current = new
                self.generation += 1
                busy = id(old) in self._leases
                if busy:
                    self._retired[id(old)] = old  # closed by the last request holding it
            if not busy:
                old.close()
            now = hashes(new)
            log.info("rules reloaded: %s", ", ".join(f"{k} {v[:19]}" for k, v in now.items()))
            return ReloadOutcome(True, now, previous)

    def close(self) -> None:
        with self._lock:
            s = self._current
            busy = id(s) in self._leases
            if busy:
                self._retired[id(s)] = s
        if not busy:
            s.close()
