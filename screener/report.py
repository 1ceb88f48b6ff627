"""Stage 6: fired rules -> per-criterion verdicts -> trial status -> report.

Verdicts: ``met``, ``not_met``, ``unknown``, ``not_applicable``. A criterion is *favourable* when
it does not stand in the patient's way (inclusion met, exclusion not met, or not applicable).

Trial status:
* ``ineligible``  some inclusion is not_met or some exclusion is met (whatever else is unknown);
* ``eligible``    every criterion is favourable (manual ones attested);
* ``needs_review`` otherwise; the report says which data and which attestations are missing.

The report is plain JSON-able data with sorted, stable contents: the same input gives
byte-identical output (`dumps`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import orjson

from .compile import rule_names
from .errors import DataIssue, ScreenerError, did_you_mean
from .ir import Compare, Criterion, Node, Present, Trial, leaves, per_object

MAX_ISSUES = 200
_SYMBOL = {"<": "<", "<=": "<=", ">": ">", ">=": ">=", "==": "=", "!=": "!=", "in": "in",
           "not_in": "not in", "between": "between"}


class AttestationError(ScreenerError):
    def __init__(self, loc: tuple[str | int, ...], msg: str):
        self.loc = loc
        self.msg = msg
        super().__init__(msg)


def favourable(kind: str, verdict: str) -> bool:
    if verdict == "not_applicable":
        return True
    return verdict == ("met" if kind == "inclusion" else "not_met")


def normalise_attestations(trial: Trial, raw: Any) -> dict[str, str]:
    """Accepts {id: "met"|"not_met"|true} or a list of ids (each attested favourably)."""
    if raw is None:
        return {}
    by_id = {c.id: c for c in trial.criteria}
    items: list[tuple[str, Any]]
    if isinstance(raw, list):
        items = [(x, True) for x in raw]
    elif isinstance(raw, Mapping):
        items = list(raw.items())
    else:
        raise AttestationError(("attestations",), "attestations must be a list of criterion "
                               "ids or an object {criterion_id: met | not_met}")
    out: dict[str, str] = {}
    for cid, v in items:
        if not isinstance(cid, str) or cid not in by_id:
            hint = did_you_mean(str(cid), by_id)
            raise AttestationError(("attestations", str(cid)),
                                   f"unknown criterion {cid!r} for {trial.id}"
                                   + (f" (did you mean {hint!r}?)" if hint else ""))
        c = by_id[cid]
        if not c.manual:
            raise AttestationError(("attestations", cid), f"criterion {cid!r} is decided by "
                                   "data, not by attestation")
        if v is True:
            v = "met" if c.kind == "inclusion" else "not_met"
        if v not in ("met", "not_met"):
            raise AttestationError(("attestations", cid),
                                   f"attestation for {cid!r} must be met, not_met or true")
        out[cid] = v
    return out


def _value(fired: set[str], t: str, f: str) -> str:
    if t in fired and f in fired:
        raise ScreenerError(f"engine fired both {t} and {f}: compiled ruleset is inconsistent")
    return "met" if t in fired else "not_met" if f in fired else "unknown"


def _test(leaf: Compare | Present) -> str:
    if isinstance(leaf, Present):
        win = f" within {leaf.slot.within_days} days" if leaf.slot.within_days is not None else ""
        act = " (active)" if leaf.slot.active else ""
        return f"{' or '.join(leaf.slot.element)} recorded{win}{act}"
    el = leaf.slot.element[0]
    win = (f", newest within {leaf.slot.within_days} days"
           if leaf.slot.within_days is not None else "")
    return f"{el} {_SYMBOL[leaf.op]} {leaf.shown}{win}"


@per_object(8192)
def _plan(node: Node) -> list[tuple[str, str]]:
    """(slot key, tests made on it) per slot a logic tree reads; cached per node object."""
    tests: dict[str, list[str]] = {}
    for leaf in leaves(node):
        t = _test(leaf)
        lst = tests.setdefault(leaf.slot.key, [])
        if t not in lst:
            lst.append(t)
    return [(k, "; ".join(v)) for k, v in tests.items()]


class _CritPlan:
    """What `verdict_for` needs of a criterion that does not depend on the patient."""

    __slots__ = ("t", "f", "at", "af", "logic", "applies", "fav")

    def __init__(self, c: Criterion):
        names = rule_names(c.id)
        self.t, self.f, self.at, self.af = names["T"], names["F"], names["AT"], names["AF"]
        self.logic = _plan(c.logic) if c.logic is not None else []
        self.applies = _plan(c.applies_if) if c.applies_if is not None else []
        #: the verdicts that do not stand in the patient's way, for this criterion's kind
        self.fav = frozenset(v for v in ("met", "not_met", "unknown", "not_applicable")
                             if favourable(c.kind, v))


_crit_plan = per_object(4096)(_CritPlan)
_EMPTY: dict[str, Any] = {}


@per_object(256)
def _trial_plans(trial: Trial) -> list[tuple[Criterion, _CritPlan]]:
    return [(c, _crit_plan(c)) for c in trial.criteria]


def verdict_for(c: Criterion, fired: set[str], evidence: Mapping[str, dict[str, Any]],
                attest: Mapping[str, str]) -> dict[str, Any]:
    return _verdict(c, _crit_plan(c), fired, evidence, attest)


def _verdict(c: Criterion, plan: _CritPlan, fired: set[str],
             evidence: Mapping[str, dict[str, Any]], attest: Mapping[str, str]
             ) -> dict[str, Any]:
    get = evidence.get
    # one evidence record per slot the criterion reads, naming every test made on it
    ev = [{**get(key, _EMPTY), "test": test} for key, test in plan.logic]
    attested = None
    if c.manual:
        v = attest.get(c.id, "unknown")
        if c.id in attest:
            attested = v
    else:
        v = _value(fired, plan.t, plan.f)
    logic_unknown = v == "unknown"
    a = "met"
    if c.applies_if is not None:
        a = _value(fired, plan.at, plan.af)
        ev += [{**get(key, _EMPTY), "test": test, "applicability": True}
               for key, test in plan.applies]
        if a == "not_met":
            v = "not_applicable"
        elif a == "unknown" and v not in plan.fav:
            v = "unknown"
    # a missing-data policy never stands in for an attestation (lint refuses the pair too)
    policy = c.on_unknown if not c.manual else None
    if attested is None and (v != "unknown" or policy is None):
        # the usual case, written as one literal (same keys, same order as below)
        entry = {"id": c.id, "kind": c.kind, "text": c.text, "manual": c.manual,
                 "verdict": v, "favourable": v in plan.fav, "evidence": ev}
    else:
        entry = {"id": c.id, "kind": c.kind, "text": c.text, "manual": c.manual}
        if attested is not None:
            entry["attested"] = attested
        if v == "unknown" and policy is not None:
            entry["policy"] = {"verdict": policy.verdict, "reason": policy.reason}
            v = policy.verdict
        entry["verdict"] = v
        entry["favourable"] = v in plan.fav
        entry["evidence"] = ev
    if v == "unknown":
        # only what would resolve it: the logic's missing data if the logic is unknown, the
        # applicability's if that is unknown (a man's contraception criterion applies whatever
        # his childbearing potential; it was listed as missing for every man)
        n = len(plan.logic)
        missing = [{"element": el, "reason": why}
                   for el, why in sorted({(e["element"], e["missing"])
                                          for i, e in enumerate(ev) if "missing" in e and (
                                              logic_unknown if i < n else a == "unknown")})]
        if c.manual and attested is None:
            missing.append({"element": "attestation", "reason": "needs attestation by the "
                            "investigator"})
        entry["missing"] = missing
    return entry


def build(trial: Trial, ruleset_hash: str, fired: set[str],
          evidence: Mapping[str, dict[str, Any]], attest: Mapping[str, str],
          issues: list[DataIssue], meta: Mapping[str, Any]) -> dict[str, Any]:
    if "__rejected__" in fired:
        raise ScreenerError("the engine rejected this patient's facts")
    crits = [_verdict(c, plan, fired, evidence, attest) for c, plan in _trial_plans(trial)]
    counts = {"met": 0, "not_met": 0, "unknown": 0, "not_applicable": 0}
    against = unresolved = 0   # resolved against the patient / unknown and in the way
    missing_set: set[str] = set()
    pending: list[str] = []
    for c in crits:
        v = c["verdict"]
        counts[v] += 1
        if not c["favourable"]:
            if v == "unknown":
                unresolved += 1
            else:
                against += 1
        if v == "unknown":
            if c["manual"] and "attested" not in c:
                pending.append(c["id"])
            for m in c.get("missing", ()):
                missing_set.add(m["element"])
    missing_set.discard("attestation")
    status = "ineligible" if against else "needs_review" if unresolved else "eligible"
    missing = sorted(missing_set)
    uniq = sorted(set(issues))
    return {
        **meta,
        "trial": {"id": trial.id, "title": trial.title, "version": trial.version,
                  "ruleset_hash": ruleset_hash},
        "status": status,
        "counts": counts,
        "unresolved": unresolved,
        "criteria": crits,
        "missing_data": missing,
        "pending_attestations": pending,
        "data_issues": [i.as_dict() for i in uniq[:MAX_ISSUES]],
        "data_issues_total": len(uniq),
    }


def dumps(report: Any) -> str:
    """Canonical serialisation of a report: sorted keys, compact, UTF-8 text."""
    return dumps_bytes(report).decode()


def dumps_bytes(report: Any) -> bytes:
    """`dumps` as UTF-8 bytes (what the API sends).

    orjson, about ten times faster than the standard library here (a 38-criterion report:
    21 us against 240 us), writes exactly what `json.dumps(sort_keys=True, ensure_ascii=False,
    separators=(",", ":"))` writes for what reports hold: str keys and str / int / bool / None
    values in lists and dicts (no floats: numbers are shown as text, see `normalize`). The
    test suite checks the two agree on every report it makes. What orjson refuses (non-str
    keys, integers beyond 64 bits) takes the standard library.
    """
    try:
        return orjson.dumps(report, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        return json.dumps(report, sort_keys=True, ensure_ascii=False, allow_nan=False,
                          separators=(",", ":")).encode()


def describe(c: Mapping[str, Any], eq: str = "=", on: str = "@") -> str:
    """One line for a criterion's verdict: what is missing, the attestation, or the evidence
    (values, x ULN ratios, dates), plus the missing-data policy if one decided it."""
    if c["verdict"] == "unknown":
        text = "missing: " + "; ".join(m["reason"] for m in c.get("missing", []))
    elif c.get("attested"):
        text = f"attested {c['attested']}"
    else:
        parts = []
        for e in c["evidence"]:
            if "missing" in e:
                continue
            s = f"{e['element']}{eq}{e.get('value')}"
            if "ratio" in e:
                # a site's default ULN stands in for the result's own range: shown as such
                site = ", site default" if e.get("uln_source") == "site default" else ""
                s += f" ({e['ratio']} x ULN {e['uln']}{site})"
            if "date" in e:
                s += f" {on}{e['date']}"
            parts.append(s)
        # one result read by two slots (a window and none) is shown once
        text = ", ".join(dict.fromkeys(parts))
        if c["verdict"] == "not_applicable":
            text = "does not apply: " + text
    if "policy" in c:
        text += f" [policy: {c['policy']['reason']}]"
    return text


def printable(text: str) -> str:
    """Text safe to print on a terminal: control characters (an ANSI escape sequence in a
    record's text could recolour or rewrite the screen) shown as escapes."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def table(report: Mapping[str, Any], width: int = 100) -> str:
    t = report["trial"]
    lines = [f"{t['id']} v{t['version']}  as_of {report['as_of']}  status: "
             f"{report['status'].upper()}",
             f"ruleset {t['ruleset_hash'][:23]}  engine {report['engine']}", ""]
    rows = [("criterion", "kind", "verdict", "evidence / what is missing")]
    for c in report["criteria"]:
        detail = printable(describe(c))
        mark = "" if c["favourable"] else ("?" if c["verdict"] == "unknown" else "x")
        rows.append((c["id"], c["kind"][:3], f"{c['verdict']}{' ' + mark if mark else ''}",
                     detail))
    w0 = max(len(r[0]) for r in rows)
    w2 = max(len(r[2]) for r in rows)
    for r in rows:
        detail = r[3] if len(r[3]) <= width else r[3][: width - 3] + "..."
        lines.append(f"{r[0]:<{w0}}  {r[1]:<4} {r[2]:<{w2}}  {detail}")
    if report["missing_data"]:
        lines += ["", "missing data: " + ", ".join(report["missing_data"])]
    if report["pending_attestations"]:
        lines.append("pending attestations: " + ", ".join(report["pending_attestations"]))
    if report["data_issues"]:
        lines.append(f"data issues: {report['data_issues_total']}")
        for i in report["data_issues"][:10]:
            lines.append(printable(f"  {i['loc']}: {i['msg']}"))
    return "\n".join(lines) + "\n"
