"""The whole pipeline behind one small API: load -> validate -> parse -> compile -> screen.

    screener = Screener.from_paths(["rules/"])
    report = screener.screen("NCT06930105", patient, as_of=date(2026, 11, 22))

Compile once, screen many. `engine="reference"` runs the pure-Python evaluator instead of the Rete
network (for tests and benchmarks; both give the same verdicts, which the property tests prove).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, Literal

from . import __version__, reference
from .compile import compile_trial, ruleset_hash
from .engine import ENGINE_VERSION, Ruleset
from .errors import RuleError, RuleFileError, UnknownTrial
from .ir import Trial
from .load import load
from .normalize import Prepared, fill, prepare
from .parse import parse
from .report import build, normalise_attestations
from .validate import schema_errors

EngineName = Literal["rete", "reference"]


def rule_files(paths: Iterable[str]) -> list[str]:
    out: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            out += sorted(os.path.join(p, f) for f in os.listdir(p)
                          if f.endswith((".yaml", ".yml")))
        else:
            out.append(p)
    return out


def check_file(path: str) -> tuple[Trial | None, list[RuleError]]:
    """Load, validate and parse one rule file; every error, never an exception."""
    doc, errors = load(path)
    if doc is None:
        return None, errors
    errors = schema_errors(doc)
    if errors:
        return None, errors
    trial, errors = parse(doc)
    if trial is not None:
        try:
            compile_trial(trial)
        except RuleFileError as e:
            return None, list(e.errors)
        # lint errors (a manual criterion with on_unknown, an applies_if that is never true,
        # an exclusion always met, ...) make a trial that screens wrongly: it is not served
        from .lint import lint_document
        lint_errors = [e for e in lint_document(doc, trial) if e.severity == "error"]
        if lint_errors:
            return None, errors + lint_errors
    return trial, errors


def load_trials(paths: Iterable[str]) -> list[Trial]:
    """All trials from files/directories; raises RuleFileError with every error found."""
    trials: list[Trial] = []
    errors: list[RuleError] = []
    seen: dict[str, str] = {}
    for f in rule_files(paths):
        trial, errs = check_file(f)
        errors += errs
        if trial is None:
            continue
        if trial.id in seen:
            errors.append(RuleError(f, 1, 1, "rule.duplicate_trial",
                                    f"trial {trial.id} is also defined in {seen[trial.id]}"))
            continue
        seen[trial.id] = f
        trials.append(trial)
    if errors:
        raise RuleFileError(errors)
    return trials


@dataclass
class Compiled:
    trial: Trial
    definition: dict[str, Any]
    hash: str
    ruleset: Ruleset | None


def input_hash(patient: Any) -> str:
    blob = json.dumps(patient, sort_keys=True, ensure_ascii=False, separators=(",", ":"),
                      default=str)
    # surrogatepass: a lone surrogate (refused by the JSON readers, but a Python caller may pass
    # one) hashes instead of raising; valid text is encoded exactly as before
    return "sha256:" + hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()


class Screener:
    def __init__(self, trials: Sequence[Trial], engine: EngineName = "rete"):
        self.engine = engine
        self.compiled: dict[str, Compiled] = {}
        for t in sorted(trials, key=lambda t: t.id):
            definition = compile_trial(t)
            h = ruleset_hash(t, definition)
            rs = Ruleset(f"{t.id}@{h[7:19]}", definition) if engine == "rete" else None
            self.compiled[t.id] = Compiled(t, definition, h, rs)

    @classmethod
    def from_paths(cls, paths: Iterable[str], engine: EngineName = "rete") -> Screener:
        return cls(load_trials(paths), engine)

    def close(self) -> None:
        for c in self.compiled.values():
            if c.ruleset is not None:
                c.ruleset.close()

    @property
    def trials(self) -> list[Trial]:
        return [c.trial for c in self.compiled.values()]

    def get(self, trial_id: str) -> Compiled:
        try:
            return self.compiled[trial_id]
        except KeyError:
            raise UnknownTrial(trial_id, self.compiled) from None

    def fired(self, comp: Compiled, facts: Mapping[str, Any]) -> set[str]:
        if comp.ruleset is None:
            return reference.fired(comp.trial, facts)
        return comp.ruleset.fired(facts if type(facts) is dict else dict(facts))

    def screen_prepared(self, trial_id: str, prep: Prepared, attestations: Any = None,
                        meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
        comp = self.get(trial_id)
        attest = normalise_attestations(comp.trial, attestations)
        facts = fill(prep, comp.trial)
        fired = self.fired(comp, facts.values)
        return build(comp.trial, comp.hash, fired, facts.evidence, attest, prep.issues,
                     self._meta(prep, meta))

    def _meta(self, prep: Prepared, meta: Mapping[str, Any] | None) -> dict[str, Any]:
        return {"as_of": prep.as_of.isoformat(), "patient_id": prep.patient_id,
                "engine": f"screener {__version__} / {ENGINE_VERSION}"
                          + (" (reference evaluator)" if self.engine == "reference" else ""),
                **(meta or {})}

    def screen(self, trial_id: str, patient: Any, as_of: date,
               attestations: Any = None) -> dict[str, Any]:
        self.get(trial_id)  # fail fast on an unknown trial
        prep = prepare(patient, as_of)
        return self.screen_prepared(trial_id, prep, attestations,
                                    {"input_hash": input_hash(patient)})

    def screen_all(self, patient: Any, as_of: date,
                   attestations: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Every loaded trial, ranked: eligible, then needs_review by fewest unresolved
        criteria, then ineligible. `attestations` maps trial id -> attestations."""
        prep = prepare(patient, as_of)
        meta = {"input_hash": input_hash(patient)}
        reports = [self.screen_prepared(tid, prep, (attestations or {}).get(tid), meta)
                   for tid in self.compiled]
        rank = {"eligible": 0, "needs_review": 1, "ineligible": 2}
        return sorted(reports, key=lambda r: (rank[r["status"]], r["unresolved"],
                                              r["trial"]["id"]))

    def fired_many(self, trial_id: str, facts: Sequence[Mapping[str, Any]]) -> list[set[str]]:
        """Batch path: many patients' facts through one engine session."""
        comp = self.get(trial_id)
        if comp.ruleset is None:
            return [reference.fired(comp.trial, f) for f in facts]
        return comp.ruleset.fired_many(f if type(f) is dict else dict(f) for f in facts)
