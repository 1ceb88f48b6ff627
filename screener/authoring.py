"""Rule-authoring tools: `screener test` (examples inside rule files) and `screener explain`.

Pipeline position: beside the pipeline, a client of it. Both commands go through the same
stages as screening (load -> validate -> parse -> normalize -> evaluate -> report), so what they
show is what a screening run concludes:

* ``screener test PATH...`` runs the ``examples`` written in rule files, like ``opa test``: a
  criterion example pins that criterion's verdict, a trial example pins the trial status (and,
  optionally, some criteria's verdicts). A failure shows expected and actual verdict with the
  evidence behind the actual one.
* ``screener explain --trial ID PATIENT`` prints the evaluation trace: every leaf with the value
  it used and where that came from, and how true / false / unknown travelled up through
  all / any / not to the verdict (reference evaluator on the same facts the engine gets).

The static checks on examples (unknown criterion ids, a criterion example without a verdict,
...) are here too, as `example_findings`; `screener check` reports them through `lint`.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import IO, Any

from . import reference
from .cli import (
    DEFAULT_RULES,
    iso_date,
    load_screener,
    parse_attest,
    read_json,
    register,
    to_patient,
)
from .errors import PatientDataError, RuleError, ScreenerError, did_you_mean
from .ir import All, Any_, Compare, Criterion, Node, Not, Present, Trial
from .lint import describe, tri
from .load import Located, Path, load
from .normalize import fill, prepare
from .parse import parse
from .report import AttestationError, favourable
from .screen import Screener, rule_files
from .validate import schema_errors

_VERDICTS = ("met", "not_met", "unknown", "not_applicable")


# ---- examples: collection and static checks ------------------------------------------------

@dataclass(frozen=True)
class Example:
    """One example patient and what the rules must conclude for it."""

    path: str
    line: int
    column: int
    name: str
    #: criterion id for a criterion example, None for a trial example
    criterion: str | None
    as_of: date | None
    patient: Any
    attest: Mapping[str, Any] | None
    verdict: str | None
    status: str | None
    verdicts: Mapping[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.criterion or 'trial'}: {self.name!r}"


def collect(doc: Located) -> list[tuple[Example, Path]]:
    """Every example in a schema-valid rule document, trial examples first, file order."""
    d = doc.data
    default = (d.get("defaults") or {}).get("example_as_of")
    raw: list[tuple[str | None, Path, Mapping[str, Any]]] = []
    for i, ex in enumerate(d.get("examples") or []):
        raw.append((None, ("examples", i), ex))
    for ci, c in enumerate(d["criteria"]):
        for i, ex in enumerate(c.get("examples") or []):
            raw.append((c["id"], ("criteria", ci, "examples", i), ex))
    out = []
    for cid, p, ex in raw:
        as_of = ex.get("as_of", default)
        line, col = doc.pos(p)
        out.append((Example(
            doc.path, line, col, str(ex["name"]), cid,
            date.fromisoformat(as_of) if isinstance(as_of, str) else None, ex["patient"],
            ex.get("attest"), ex.get("verdict"), ex.get("status"), ex.get("verdicts") or {}),
            p))
    return out


#: data issues that mean the example's author mistyped something, not a deliberate bad value
_TYPO_ISSUES = frozenset({"unknown_field", "unknown_element", "wrong_section", "type"})


def example_findings(doc: Located, trial: Trial) -> list[RuleError]:
    """Static problems with the examples of a parsed trial (reported by `screener check`)."""
    out: list[RuleError] = []
    by_id = {c.id: c for c in trial.criteria}

    def add(p: Path, code: str, msg: str, hint: str, key: bool = False,
            severity: str = "error", suggestion: str | None = None,
            crit: str | None = None) -> None:
        line, col = doc.pos(p, key=key)
        out.append(RuleError(doc.path, line, col, code, msg, severity, suggestion, hint, crit))

    names: dict[tuple[str | None, str], int] = {}
    for ex, p in collect(doc):
        what = f"example {ex.name!r}"
        prev = names.get((ex.criterion, ex.name))
        if prev is not None:
            add(p + ("name",), "example.duplicate_name",
                f"{what} has the same name as the example at line {prev}",
                "give each example a name that says what it shows", severity="warning",
                crit=ex.criterion)
        names.setdefault((ex.criterion, ex.name), ex.line)
        if ex.as_of is None:
            add(p, "example.no_as_of", f"{what} has no as_of and the trial sets no "
                "defaults.example_as_of", "add 'as_of: YYYY-MM-DD' to the example, or "
                "'example_as_of' under 'defaults'", crit=ex.criterion)
        if ex.criterion is not None:
            c = by_id[ex.criterion]
            for k in ("status", "verdicts"):
                if k in doc.data["criteria"][p[1]]["examples"][p[3]]:
                    add(p + (k,), "example.trial_field",
                        f"{what} of criterion {c.id!r} cannot have {k!r}",
                        "criterion examples pin 'verdict'; put trial-wide expectations in the "
                        "trial's own 'examples'", key=True, crit=c.id)
            if ex.verdict is None:
                add(p, "example.no_verdict", f"{what} of criterion {c.id!r} has no verdict",
                    "add 'verdict: met | not_met | unknown | not_applicable'", crit=c.id)
            elif ex.verdict == "not_applicable" and c.applies_if is None:
                add(p + ("verdict",), "example.never_not_applicable",
                    f"{what} expects not_applicable, but {c.id!r} has no applies_if",
                    "only a criterion with applies_if can be not_applicable", crit=c.id)
        else:
            if ex.verdict is not None:
                add(p + ("verdict",), "example.verdict_on_trial",
                    f"trial {what} cannot have 'verdict'",
                    "pin the trial 'status', and criteria with 'verdicts: {id: verdict}'",
                    key=True)
            if ex.status is None and not ex.verdicts:
                add(p, "example.no_expectation", f"trial {what} expects nothing",
                    "add 'status: eligible | ineligible | needs_review' and/or 'verdicts'")
            for cid in ex.verdicts:
                if cid not in by_id:
                    add(p + ("verdicts", cid), "example.unknown_criterion",
                        f"{what} names unknown criterion {cid!r}",
                        "use an id of this trial's criteria", key=True,
                        suggestion=did_you_mean(cid, by_id))
        if ex.as_of is not None:
            # a typo in the example patient ("observation:", "valeu:", an unknown element)
            # leaves the data unread: the example then passes for the wrong reason
            try:
                typos = [i for i in prepare(ex.patient, ex.as_of).issues
                         if i.code in _TYPO_ISSUES]
            except PatientDataError as e:
                typos = []
                add(p + ("patient",), "example.patient_unreadable",
                    f"{what}: the patient cannot be read: {e}",
                    "write the patient in the canonical format (docs/patient-format.md)",
                    key=True, crit=ex.criterion)
            for issue in typos:
                add(p + ("patient",), "example.patient_typo",
                    f"{what}: {issue.loc}: {issue.msg}",
                    "an example patient must say what it means: fix the field or element "
                    "name (docs/patient-format.md)", key=True, crit=ex.criterion)
        for cid in (ex.attest or {}):
            c2 = by_id.get(cid)
            if c2 is None:
                add(p + ("attest", cid), "example.unknown_criterion",
                    f"{what} attests unknown criterion {cid!r}",
                    "use an id of this trial's criteria", key=True,
                    suggestion=did_you_mean(cid, by_id), crit=ex.criterion)
            elif not c2.manual:
                add(p + ("attest", cid), "example.attest_not_manual",
                    f"{what} attests {cid!r}, which data decides",
                    "only manual criteria take attestations; give the data instead",
                    key=True, crit=ex.criterion)
    return out


# ---- running examples ----------------------------------------------------------------------

def evidence_text(ev: Mapping[str, Any]) -> str:
    """One evidence record as a line: ``alt = 124 U/L = 3.1 x ULN 40 U/L on 2026-01-02``."""
    if "missing" in ev:
        return f"{ev.get('element', '?')}: missing: {ev['missing']}"
    s = f"{ev.get('element', '?')} = {ev.get('value')}"
    if "ratio" in ev:
        s += f" = {ev['ratio']} x ULN {ev.get('uln')}"
        if ev.get("uln_source"):
            s += f" ({ev['uln_source']})"
    if "date" in ev:
        s += f" on {ev['date']}"
    if "source" in ev:
        s += f" [{ev['source']}]"
    if "basis" in ev:
        s += f" ({ev['basis']})"
    return s


@dataclass
class Result:
    example: Example
    ok: bool
    details: list[str]


def run_example(s: Screener, trial: Trial, doc: Located | None, ex: Example) -> Result:
    """Screen the example patient and compare; on a mismatch, the details hold expected and
    actual verdicts and the trace of each criterion concerned (values, sources, T/F/U)."""
    assert ex.as_of is not None
    try:
        prep = prepare(ex.patient, ex.as_of)
        report = s.screen_prepared(trial.id, prep, ex.attest)
    except (PatientDataError, AttestationError) as e:
        return Result(ex, False, [f"  error: {e}"])
    facts = fill(prep, trial)
    index = {c.id: i for i, c in enumerate(trial.criteria)}
    crits = {c["id"]: c for c in report["criteria"]}

    def trace(cid: str) -> list[str]:
        i = index[cid]
        lines = explain_criterion(trial.criteria[i], crits[cid], facts.values, facts.evidence,
                                  doc, i)
        return ["  " + x for x in lines[2:]]  # id and text are already in the FAIL line

    details: list[str] = []
    if ex.criterion is not None:
        entry = crits[ex.criterion]
        if entry["verdict"] != ex.verdict:
            details += [f"  verdict   expected: {ex.verdict}",
                        f"            actual:   {entry['verdict']}",
                        "  trace:"] + trace(ex.criterion)
    else:
        if ex.status is not None and report["status"] != ex.status:
            details += [f"  status    expected: {ex.status}",
                        f"            actual:   {report['status']}"]
            against = [c["id"] for c in report["criteria"] if not c["favourable"]]
            if not against:
                details.append("  every criterion is in the patient's favour")
            for cid in against:
                details.append(f"  {cid} ({crits[cid]['kind']}) is {crits[cid]['verdict']}:")
                details += trace(cid)
        for cid, want in sorted(ex.verdicts.items()):
            if crits[cid]["verdict"] != want:
                details += [f"  {cid}  expected: {want}",
                            f"  {' ' * len(cid)}  actual:   {crits[cid]['verdict']}"]
                details += trace(cid)
    if details and report["data_issues"]:
        details.append("  data issues in the example patient:")
        details += [f"    {i['loc']}: {i['msg']}" for i in report["data_issues"]]
    return Result(ex, not details, details)


def test_file(path: str, engine: str = "rete",
              select: re.Pattern[str] | None = None) -> tuple[list[Result], list[RuleError]]:
    """Run every example of one rule file. Errors (the file does not check, or its examples
    are malformed) are returned instead of results."""
    doc, errors = load(path)
    if doc is None:
        return [], errors
    errors = schema_errors(doc)
    if errors:
        return [], errors
    trial, errors = parse(doc)
    if trial is None:
        return [], errors
    bad = [e for e in example_findings(doc, trial) if e.severity == "error"]
    if bad:
        return [], bad
    s = Screener([trial], engine=engine)  # type: ignore[arg-type]
    try:
        return [run_example(s, trial, doc, ex) for ex, _ in collect(doc)
                if select is None or select.search(ex.label)], []
    finally:
        s.close()


def _add_test(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", help="rule files or directories")
    p.add_argument("-v", "--verbose", action="store_true", help="also list passing examples")
    p.add_argument("--run", metavar="REGEX", default=None,
                   help="only examples whose 'criterion: name' label matches")
    p.add_argument("--engine", choices=["rete", "reference"], default="rete",
                   help="evaluate with the Rete network (default) or the reference evaluator")


def cmd_test(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    files = rule_files(args.paths)
    if not files:
        err.write("no rule files found\n")
        return 1
    try:
        select = re.compile(args.run) if args.run else None
    except re.error as e:
        err.write(f"error: --run is not a valid regular expression: {e}\n")
        return 2
    passed = failed = 0
    broken = 0
    for f in files:
        results, errors = test_file(f, args.engine, select)
        if errors:
            broken += 1
            out.writelines(x.format() + "\n" for x in errors)
            continue
        for r in results:
            ex = r.example
            where = f"{ex.path}:{ex.line}:{ex.column}"
            if r.ok:
                passed += 1
                if args.verbose:
                    out.write(f"PASS {where} {ex.label}\n")
            else:
                failed += 1
                out.write(f"FAIL {where} {ex.label}\n")
                out.write("\n".join(r.details) + "\n")
    total = passed + failed
    if failed:
        out.write("-" * 40 + "\n")
    out.write(f"PASS: {passed}/{total}\n")
    if failed:
        out.write(f"FAIL: {failed}/{total}\n")
    if broken:
        out.write(f"{broken} file(s) could not be tested (errors above)\n")
    if total == 0 and not broken:
        err.write("no examples found\n")
    return 1 if failed or broken or total == 0 else 0


# ---- explain -------------------------------------------------------------------------------

def _why(node: All | Any_ | Not, vals: Sequence[str]) -> str:
    """How the parts' values made this node's value (Kleene)."""
    def which(v: str) -> str:
        idx = [str(i + 1) for i, x in enumerate(vals) if x == v]
        word = {"T": "true", "F": "false", "U": "unknown"}[v]
        return (f"part {idx[0]} is {word}" if len(idx) == 1 else
                f"parts {', '.join(idx)} are {word}")
    if isinstance(node, Not):
        return {"T": "negation of false", "F": "negation of true",
                "U": "negation of unknown stays unknown"}[vals[0]]
    if isinstance(node, All):
        if "F" in vals:
            return f"false because {which('F')}"
        if "U" in vals:
            return f"no part is false and {which('U')} -> unknown"
        return "every part is true"
    if "T" in vals:
        return f"true because {which('T')}"
    if "U" in vals:
        return f"no part is true and {which('U')} -> unknown"
    return "every part is false"


@dataclass
class Tracer:
    """Prints an IR tree with each node's value on the given facts."""

    facts: Mapping[str, Any]
    evidence: Mapping[str, Mapping[str, Any]]
    doc: Located | None
    lines: list[str] = field(default_factory=list)

    def node(self, node: Node, p: Path, depth: int, label: str = "") -> str:
        v = tri(reference.evaluate(node, self.facts))
        pad = "  " * depth
        where = f"  (line {self.doc.pos(p)[0]})" if self.doc is not None else ""
        if isinstance(node, (Compare, Present)):
            self.lines.append(f"{pad}{label}{v}  {describe(node)}{where}")
            ev = self.evidence.get(node.slot.key, {})
            self.lines.append(f"{pad}{' ' * len(label)}     {evidence_text(ev)}")
            return v
        if isinstance(node, Not):
            sub_p: list[tuple[Node, Path]] = [(node.part, p + ("not",))]
            word = "not"
        else:
            word = "all" if isinstance(node, All) else "any"
            sub_p = [(x, p + (word, i)) for i, x in enumerate(node.parts)]
        at = len(self.lines)
        self.lines.append("")
        vals = [self.node(x, q, depth + 1, f"{i + 1}. " if word != "not" else "")
                for i, (x, q) in enumerate(sub_p)]
        self.lines[at] = f"{pad}{label}{v}  {word}: {_why(node, vals)}{where}"
        return v


def explain_criterion(c: Criterion, entry: Mapping[str, Any], facts: Mapping[str, Any],
                      evidence: Mapping[str, Mapping[str, Any]], doc: Located | None,
                      index: int) -> list[str]:
    """The trace of one criterion, ending with how its verdict follows."""
    out = [f"{c.id}  {c.kind}  verdict: {entry['verdict']}"
           + ("" if entry["favourable"] else "  (against the patient)"),
           f"  text: {c.text}"]
    base: Path = ("criteria", index)
    steps: list[str] = []
    a = "T"
    if c.applies_if is not None:
        t = Tracer(facts, evidence, doc)
        a = t.node(c.applies_if, base + ("applies_if",), 2)
        out += ["  applies_if:"] + t.lines
    if c.manual:
        att = entry.get("attested")
        v = att or "unknown"
        steps.append("manual criterion: "
                     + (f"attested {att}" if att else "no attestation -> unknown"))
    else:
        assert c.logic is not None
        t = Tracer(facts, evidence, doc)
        lv = t.node(c.logic, base + ("logic",), 2)
        out += ["  logic:"] + t.lines
        v = {"T": "met", "F": "not_met", "U": "unknown"}[lv]
        steps.append(f"logic {'true' if lv == 'T' else 'false' if lv == 'F' else 'unknown'} "
                     f"-> {v}")
    if c.applies_if is not None:
        if a == "F":
            v = "not_applicable"
            steps.append("applies_if false -> not_applicable")
        elif a == "U":
            if favourable(c.kind, v):
                steps.append(f"applies_if unknown, but {v} is in the patient's favour either "
                             f"way -> {v}")
            else:
                v = "unknown"
                steps.append("applies_if unknown and the verdict is not in the patient's "
                             "favour -> unknown")
        else:
            steps.append("applies_if true -> the criterion applies")
    if v == "unknown" and c.on_unknown is not None:
        v = c.on_unknown.verdict
        steps.append(f"on_unknown policy -> {v} ({c.on_unknown.reason})")
    if v != entry["verdict"]:  # cannot happen unless report and trace disagree: say so loudly
        steps.append(f"!! trace gives {v} but the report says {entry['verdict']}")
    out.append("  => " + "; ".join(steps))
    if entry.get("missing"):
        out.append("  would resolve it: " + "; ".join(
            f"{m['element']} ({m['reason']})" for m in entry["missing"]))
    return out


def _add_explain(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rules", action="append", default=None,
                   help=f"rule files or directories (default: {', '.join(DEFAULT_RULES)})")
    p.add_argument("--trial", required=True, help="trial id (NCT number)")
    p.add_argument("patient", help="canonical patient JSON or FHIR R4 Bundle ('-' = stdin)")
    p.add_argument("--criterion", action="append", default=None, metavar="ID",
                   help="only this criterion (repeatable)")
    p.add_argument("--as-of", type=iso_date, default=None,
                   help="screening date (default: today)")
    p.add_argument("--attest", action="append", default=[], metavar="CRITERION_ID[=met|not_met]",
                   help="attest a manual criterion")


def cmd_explain(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    s = load_screener(args, "reference")
    comp = s.get(args.trial)
    trial = comp.trial
    by_id = {c.id: i for i, c in enumerate(trial.criteria)}
    wanted = args.criterion or [c.id for c in trial.criteria]
    for cid in wanted:
        if cid not in by_id:
            hint = did_you_mean(cid, by_id)
            raise ScreenerError(f"unknown criterion {cid!r} for {trial.id}"
                                + (f" (did you mean {hint!r}?)" if hint else ""))
    patient, adapter_issues = to_patient(read_json(args.patient))
    as_of = args.as_of or date.today()
    if args.as_of is None:
        err.write(f"note: --as-of not given, explained as of today ({as_of})\n")
    prep = prepare(patient, as_of)
    facts = fill(prep, trial)
    report = s.screen_prepared(trial.id, prep, parse_attest(args.attest) or None)
    doc, _ = load(trial.path)
    entries = {c["id"]: c for c in report["criteria"]}
    out.write(f"{trial.id} v{trial.version}  as_of {as_of}  patient "
              f"{report.get('patient_id') or '-'}  status: {report['status'].upper()}\n")
    out.write("legend: T true, F false, U unknown. all: F if a part is F, else U if a part is U, "
              "else T. any: T if a part is T, else U if a part is U, else F. not: swaps T and F, "
              "keeps U.\n")
    for cid in wanted:
        out.write("\n" + "\n".join(explain_criterion(
            trial.criteria[by_id[cid]], entries[cid], facts.values, facts.evidence, doc,
            by_id[cid])) + "\n")
    issues = list(adapter_issues) + report["data_issues"]
    if issues:
        out.write("\ndata issues:\n")
        for i in issues:
            out.write(f"  {i.get('loc', '?')}: {i.get('msg', i)}\n" if isinstance(i, dict)
                      else f"  {i}\n")
    return 0


register("test", "run the examples inside rule files (expected verdicts)", _add_test, cmd_test)
register("explain", "trace how each criterion's verdict follows from the patient's data",
         _add_explain, cmd_explain)
