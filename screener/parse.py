"""Stage 3: turn a schema-valid rule document into the frozen IR, checking meaning.

The schema checks shape; this pass checks sense: an operator that fits the element's type, coded
values that exist, exactly one of ``logic`` / ``manual``, ``between`` bounds in order, unique ids.
All problems are collected (never only the first) as located `RuleError`s.
"""

from __future__ import annotations

import hashlib
import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any

from .elements import ELEMENTS, Element, coded_spelling, normalise_unit
from .errors import RuleError, did_you_mean
from .ir import (
    SCALE,
    All,
    Any_,
    Compare,
    Criterion,
    Node,
    Not,
    OnUnknown,
    Present,
    Slot,
    SlotValue,
    Span,
    Trial,
    encode_number,
)
from .load import Located, Path

DEFAULT_REVIEW_MAX_AGE_DAYS = 30
_ORDER_OPS = ("<", "<=", ">", ">=")
_SHAPES = ("all", "any", "not", "fact", "condition")


def scale_number(x: Any) -> int | None:
    """A rule threshold -> its exact (even) number code; None when it has more than six
    decimals, is not finite or is out of range."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    try:
        d = Decimal(str(x))
    except InvalidOperation:
        return None
    if not d.is_finite() or d * SCALE != (d * SCALE).to_integral_value():
        return None
    return encode_number(Fraction(d))


#: criterion ids that output columns use for other things
RESERVED_IDS = frozenset({"status"})


def number_problem(x: Any) -> str:
    """Why `scale_number` refused a threshold, in the author's terms."""
    if isinstance(x, str) and re.fullmatch(r"[-+]?[0-9]*\.?[0-9]+[eE][-+]?[0-9]+", x.strip()):
        return (f"got {x!r}, which YAML reads as text (it takes an exponent only with a '.' "
                "and a sign: 6.0e+1); write it in plain decimal")
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        d = Decimal(str(x))
        if not d.is_finite():
            return f"got {x!r}, which is not finite"
        if d * SCALE != (d * SCALE).to_integral_value():
            return f"got {x!r}, which has more than 6 decimals"
        return f"got {x!r}, which is out of range"
    return f"got {x!r}"


def _value_suggestion(v: Any, el: Element) -> str | None:
    """Did-you-mean for a coded value: the spellings patient data may use ('pos'), and
    positive / negative for detected / not detected, before plain spelling."""
    word = coded_spelling(el, " ".join(str(v).split()))
    if word in el.values:
        return word
    starts = [x for x in el.values if len(word) >= 3 and x.startswith(word)]
    return starts[0] if len(starts) == 1 else did_you_mean(str(v), el.values)


class _Parser:
    def __init__(self, doc: Located):
        self.doc = doc
        self.errors: list[RuleError] = []

    def span(self, p: Path) -> Span:
        line, col = self.doc.pos(p)
        return Span(self.doc.path, line, col)

    def err(self, p: Path, code: str, msg: str, key: bool = False, **kw: Any) -> None:
        line, col = self.doc.pos(p, key=key)
        self.errors.append(RuleError(self.doc.path, line, col, code, msg, **kw))

    # -- logic ------------------------------------------------------------------------------
    def node(self, raw: dict[str, Any], p: Path, cid: str) -> Node | None:
        shapes = [s for s in _SHAPES if s in raw]
        if len(shapes) != 1:
            what = "none" if not shapes else " and ".join(repr(s) for s in shapes)
            self.err(p, "rule.node_shape",
                     f"a logic node needs exactly one of all / any / not / fact / condition, "
                     f"found {what}", criterion=cid)
            return None
        shape = shapes[0]
        allowed = {"all": {"all"}, "any": {"any"}, "not": {"not"},
                   "fact": {"fact", "op", "value", "x_uln", "within_days"},
                   "condition": {"condition", "within_days", "active"}}[shape]
        bad = sorted(set(raw) - allowed)
        for key in bad:
            elsewhere = "condition" if key == "active" else "fact" if key in (
                "op", "value", "x_uln") else None
            self.err(p + (key,), "rule.field_not_allowed",
                     f"{key!r} cannot be used in a {shape!r} node"
                     + (f" (it belongs to a {elsewhere!r} node)" if elsewhere else ""),
                     key=True, criterion=cid,
                     suggestion=None if elsewhere else did_you_mean(key, allowed))
        if bad:
            return None
        if shape in ("all", "any"):
            parts = [self.node(x, p + (shape, i), cid) for i, x in enumerate(raw[shape])]
            if any(x is None for x in parts):
                return None
            ps = tuple(x for x in parts if x is not None)
            return All(ps) if shape == "all" else Any_(ps)
        if shape == "not":
            inner = self.node(raw["not"], p + ("not",), cid)
            return Not(inner) if inner is not None else None
        if shape == "condition":
            names = raw["condition"] if isinstance(raw["condition"], list) else [raw["condition"]]
            if len(set(names)) != len(names):
                self.err(p + ("condition",), "rule.duplicate_value",
                         "a condition is listed twice", criterion=cid)
            slot = Slot(tuple(sorted(set(names))), "present", raw.get("within_days"),
                        bool(raw.get("active", False)))
            return Present(slot, self.span(p))
        return self.compare(raw, p, cid)

    def compare(self, raw: dict[str, Any], p: Path, cid: str) -> Node | None:
        el: Element = ELEMENTS[raw["fact"]]
        op = raw.get("op")
        if op is None:
            self.err(p, "rule.missing_op", f"comparison on {el.name!r} needs 'op'", criterion=cid)
            return None
        has_value, has_uln = "value" in raw, "x_uln" in raw
        if has_value == has_uln:
            self.err(p, "rule.value_or_x_uln",
                     "a comparison needs exactly one of 'value' or 'x_uln'", criterion=cid)
            return None
        within = raw.get("within_days")
        if within is not None and el.kind == "derived" or el.name == "sex" and within is not None:
            self.err(p + ("within_days",), "rule.window_not_allowed",
                     f"{el.name!r} is computed at as_of and has no date window", criterion=cid)
            return None
        if within is not None and el.kind == "exposure":
            # the days of every course up to as_of are added up; a window would need courses
            # cut at its start, which the normalizer does not do: refused, not ignored
            self.err(p + ("within_days",), "rule.window_not_allowed",
                     f"{el.name!r} counts the days of every course up to as_of; a date window "
                     "on it is not supported", criterion=cid)
            return None
        vp = p + ("value",)
        if has_uln:
            if not el.uln:
                self.err(p + ("x_uln",), "rule.x_uln_not_allowed",
                         f"{el.name!r} has no reference range; x_uln needs a lab with one "
                         f"({', '.join(n for n, e in ELEMENTS.items() if e.uln)})", criterion=cid)
                return None
            if op not in _ORDER_OPS:
                self.err(p + ("op",), "rule.op_type",
                         f"x_uln needs an ordering operator (<, <=, >, >=), not {op!r}",
                         criterion=cid)
                return None
            n = scale_number(raw["x_uln"])
            if n is None:
                self.err(p + ("x_uln",), "rule.number", "x_uln must be a decimal with at most "
                         "6 digits after the point", criterion=cid)
                return None
            return Compare(Slot((el.name,), "uln", within), op, (n,), self.span(p),
                           f"{raw['x_uln']} x ULN")
        value = raw["value"]
        values = value if isinstance(value, list) else [value]
        multi = op in ("in", "not_in", "between")
        if multi != isinstance(value, list):
            self.err(vp, "rule.value_shape",
                     f"operator {op!r} needs {'a list' if multi else 'a single value'}",
                     criterion=cid)
            return None
        if op == "between" and len(values) != 2:
            self.err(vp, "rule.value_shape", "'between' needs [low, high]", criterion=cid)
            return None
        mode = "days" if el.kind == "exposure" else "value"
        slot = Slot((el.name,), mode, within)
        numeric = el.kind in ("quantity", "derived", "exposure")
        out: list[SlotValue] = []
        ok = True   # every bad value of a list is reported, not only the first
        for i, v in enumerate(values):
            at = vp + (i,) if multi else vp
            if numeric:
                n = scale_number(v)
                if n is None:
                    self.err(at, "rule.value_type",
                             f"{el.name!r} is numeric ({el.unit or 'no unit'}); expected a number "
                             f"with at most 6 decimals: {number_problem(v)}", criterion=cid)
                    ok = False
                    continue
                code: SlotValue = n
            elif el.kind == "boolean":
                if not isinstance(v, bool):
                    self.err(at, "rule.value_type",
                             f"{el.name!r} is true/false, got {v!r}", criterion=cid)
                    ok = False
                    continue
                code = "true" if v else "false"
            else:
                if not isinstance(v, str) or v not in el.values:
                    self.err(at, "rule.unknown_value",
                             f"{v!r} is not a value of {el.name!r} ({', '.join(el.values)})",
                             criterion=cid, suggestion=_value_suggestion(v, el))
                    ok = False
                    continue
                code = v
            if op in ("in", "not_in") and code in out:
                self.err(at, "rule.duplicate_value", f"{v!r} is listed twice", criterion=cid)
                ok = False
                continue
            out.append(code)
        if not ok:
            return None
        if not numeric and op in _ORDER_OPS + ("between",):
            self.err(p + ("op",), "rule.op_type",
                     f"{el.name!r} is {el.kind}; use ==, !=, in or not_in, not {op!r}",
                     criterion=cid)
            return None
        if op == "between" and int(out[0]) > int(out[1]):
            self.err(vp, "rule.empty_range",
                     f"range [{values[0]}, {values[1]}] is empty (low > high)", criterion=cid)
            return None
        shown = (f"{values}" if multi else f"{value}") + (f" {el.unit}" if el.unit and numeric
                                                            else "")
        return Compare(slot, op, tuple(out), self.span(p), shown)

    # -- document ---------------------------------------------------------------------------
    def trial(self, raw_bytes: bytes) -> Trial | None:
        d = self.doc.data
        crits: list[Criterion] = []
        first_seen: dict[str, int] = {}
        for i, c in enumerate(d["criteria"]):
            p: Path = ("criteria", i)
            cid = c["id"]
            if cid in first_seen:
                self.err(p + ("id",), "rule.duplicate_id",
                         f"duplicate criterion id {cid!r} (first at line {first_seen[cid]})",
                         criterion=cid)
                continue
            first_seen[cid] = self.doc.pos(p + ("id",))[0]
            if cid in RESERVED_IDS:
                # batch outputs name a trial's status column "<trial>:status" beside the
                # criteria's "<trial>:<id>": a criterion called status would overwrite it
                self.err(p + ("id",), "rule.reserved_id",
                         f"criterion id {cid!r} is reserved (the trial's own status in batch "
                         "outputs); choose another", criterion=cid)
                continue
            manual = bool(c.get("manual", False))
            if manual == ("logic" in c):
                self.err(p, "rule.logic_or_manual",
                         f"criterion {cid!r} needs exactly one of 'logic' or 'manual: true'",
                         criterion=cid)
                continue
            if not c["text"].strip():
                self.err(p + ("text",), "rule.empty_text", "criterion text is blank",
                         criterion=cid)
            logic = self.node(c["logic"], p + ("logic",), cid) if "logic" in c else None
            applies = (self.node(c["applies_if"], p + ("applies_if",), cid)
                       if "applies_if" in c else None)
            ou = c.get("on_unknown")
            crits.append(Criterion(
                id=cid, kind=c["kind"], text=" ".join(c["text"].split()), logic=logic,
                manual=manual, applies_if=applies,
                on_unknown=OnUnknown(ou["verdict"], ou["reason"]) if ou else None,
                span=self.span(p), note=c.get("note", "")))
        site_uln: list[tuple[str, Fraction]] = []
        for name, spec in sorted(d.get("site_uln", {}).items()):
            el = ELEMENTS[name]
            factor = el.units.get(normalise_unit(spec["unit"]))
            n = scale_number(spec["value"])
            if factor is None:
                self.err(("site_uln", name, "unit"), "rule.unit",
                         f"unknown unit {spec['unit']!r} for {name!r} "
                         f"(known: {', '.join(sorted(el.units))})")
                continue
            if n is None or n <= 0:
                self.err(("site_uln", name, "value"), "rule.number",
                         f"site ULN of {name!r} must be a positive number with at most 6 "
                         f"decimals: {number_problem(spec['value'])}")
                continue
            site_uln.append((name, Fraction(Decimal(str(spec["value"]))) * factor))
        if self.errors:
            return None
        return Trial(
            id=d["trial"], title=d["title"], version=d["version"], source=d["source"],
            criteria=tuple(crits),
            review_max_age_days=d.get("defaults", {}).get("review_max_age_days",
                                                          DEFAULT_REVIEW_MAX_AGE_DAYS),
            site_uln=tuple(site_uln), path=self.doc.path,
            sha256=hashlib.sha256(raw_bytes).hexdigest())


def parse(doc: Located) -> tuple[Trial | None, list[RuleError]]:
    p = _Parser(doc)
    trial = p.trial(doc.text.encode("utf-8"))
    return trial, sorted(set(p.errors))
