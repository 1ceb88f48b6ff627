"""Static checks beyond the schema: stage 2b of the pipeline, run by `screener check`.

load -> validate (schema) -> parse (IR) -> **lint** -> compile. The schema checks shape and the
parser checks sense leaf by leaf; this pass looks at what a criterion *means* once parsed: a
condition that no patient can satisfy, an inclusion and an exclusion that exclude everybody, a
threshold that looks like it was copied in the wrong unit, text that drifted from the protocol.
It runs only on files that load, validate and parse cleanly (the earlier stages already report
everything else), and it never executes the engine: truth is decided with the reference
evaluator over a small set of representative facts per slot.

Every finding is a located `RuleError` with a stable code (``lint.*`` for the rules,
``example.*`` for the examples inside rule files), a severity and a fix hint. Codes and what
they mean are listed in docs/rules.md ("Checks").

Why representative facts are enough: every leaf compares one slot with constant thresholds, so
the truth of the whole tree is constant on each interval between two consecutive thresholds.
Taking, per slot, each threshold, a point just below and just above it and the ends of the
element's plausible range covers every interval; the enumeration is exact, not a sample.
"""

from __future__ import annotations

import itertools
import math
import os
import random
import re
import stat
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from . import reference
from .elements import ELEMENTS, Element
from .errors import RuleError
from .ir import (
    All,
    Any_,
    Compare,
    Criterion,
    Node,
    Not,
    Present,
    Slot,
    Trial,
    decode_number,
    encode_number,
    leaves,
)
from .load import Located, Path, load
from .parse import parse
from .validate import schema_errors

#: beyond this many fact combinations a criterion is not enumerated (none of the seed trials'
#: criteria comes near: the largest has 3 slots and about 200 combinations)
MAX_COMBINATIONS = 20_000
#: largest protocol text compared with the criterion texts
MAX_SOURCE_BYTES = 16 * 1024 * 1024
#: a multiple of the ULN above this is almost certainly an absolute value written as x_uln
MAX_SENSIBLE_X_ULN = 20
#: Thresholds a protocol plausibly writes, in the element's canonical unit, for the elements that
#: laboratories also report in another unit. A `value` threshold outside this band that lands
#: inside it once read in another accepted unit was most likely copied from a report in that
#: unit: a silent 17- to 88-fold error. Elements without an entry get no such check (adding one
#: is optional and needs no other change).
TYPICAL_THRESHOLDS: dict[str, tuple[Fraction, Fraction]] = {
    "creatinine": (Fraction("0.2"), Fraction(15)),
    "bilirubin_total": (Fraction("0.1"), Fraction(30)),
    "bun": (Fraction(2), Fraction(150)),
    "alt": (Fraction(5), Fraction(5000)),
    "ast": (Fraction(5), Fraction(5000)),
}

#: Every finding code of this pass and of the example checks, with what it means. Stable:
#: tools may filter on them (`screener check --format json`); docs/rules.md lists them.
CODES: dict[str, str] = {
    "lint.contradiction": "two parts of one 'all' that no value satisfies together",
    "lint.never_met": "a criterion whose logic is false for every possible patient",
    "lint.always_met": "a criterion whose logic is true for every patient with known data",
    "lint.leaf_never": "a comparison that is false over the element's whole plausible range",
    "lint.leaf_always": "a comparison that is true over the element's whole plausible range",
    "lint.value_never_recorded": "a coded value the normalizer treats as missing data",
    "lint.no_one_eligible": "two criteria that cannot both be in the patient's favour",
    "lint.unit_suspect": "a 'value' threshold that looks written in another accepted unit",
    "lint.x_uln_large": "a multiple of the ULN too large to be meant as one",
    "lint.site_uln_suspect": "a site ULN more than 4x from a usual one (wrong unit?)",
    "lint.window_zero": "within_days: 0 (only data dated on as_of itself)",
    "lint.kind_vs_id": "an id that reads as the other kind (exc_... marked inclusion)",
    "lint.excludes_absence": "an exclusion met when a condition is absent",
    "lint.window_mismatch": "one data element read with different windows in one criterion",
    "lint.duplicate_condition": "the same test twice in one all / any",
    "lint.applies_always": "an applies_if that is never false",
    "lint.applies_never": "an applies_if that is never true (always not_applicable)",
    "lint.manual_on_unknown": "a manual criterion with on_unknown (never asks for attestation)",
    "lint.unknown_favourable": "on_unknown resolving missing data in the patient's favour",
    "lint.text_not_in_source": "criterion text not found in the named source protocol",
    "lint.source_missing": "the named source protocol file cannot be read",
    "lint.duplicate_trial": "two rule files define the same trial id",
    "example.no_as_of": "an example without as_of and no defaults.example_as_of",
    "example.no_verdict": "a criterion example without verdict",
    "example.trial_field": "a criterion example with status or verdicts",
    "example.verdict_on_trial": "a trial example with verdict",
    "example.no_expectation": "a trial example with neither status nor verdicts",
    "example.unknown_criterion": "an example naming a criterion id the trial does not have",
    "example.attest_not_manual": "an example attesting a criterion that data decides",
    "example.never_not_applicable": "not_applicable expected of a criterion without applies_if",
    "example.duplicate_name": "two examples with one name in the same list",
}

#: values the normalizer never puts in a slot (they make the slot unknown instead)
_NEVER_IN_SLOT = frozenset({"indeterminate", "unknown"})
_SYMBOL = {"<": "<", "<=": "<=", ">": ">", ">=": ">=", "==": "==", "!=": "!=", "in": "in",
           "not_in": "not in", "between": "between"}
_URL = re.compile(r"^[a-z][a-z0-9+.-]*://", re.I)
_BULLETS = re.compile(r"[\u2022\u2023\u25aa\u25e6\u2043\u2219\u25cf\u00b7]")


# ---- describing leaves (shared with `screener explain`) ------------------------------------

def fmt_number(x: Fraction) -> str:
    """A threshold as an author would write it: 3, 1.25, 0.226."""
    if x.denominator == 1:
        return str(x.numerator)
    return f"{float(x):.6f}".rstrip("0").rstrip(".")


def unit_label(unit: str | None) -> str:
    """A canonical unit as readers say it ('' for unitless scores)."""
    return {"a": "years", "d": "days", "{score}": "", None: ""}.get(unit, unit or "")


def pretty_unit(spelling: str) -> str:
    """A normalised unit spelling ('umol/l') as usually written ('umol/L')."""
    return spelling.replace("/dl", "/dL").replace("/l", "/L")


def _value_text(el: Element | None, mode: str, v: Any) -> str:
    if isinstance(v, int) and not isinstance(v, bool):
        n = fmt_number(decode_number(v))
        if mode == "uln":
            return f"{n} x ULN"
        if mode == "days":
            return f"{n} days"
        unit = unit_label(el.unit) if el is not None else ""
        if not unit or unit == "years":
            return n
        return f"{n}{unit}" if unit.startswith("/") else f"{n} {unit}"
    return str(v)


def describe(leaf: Compare | Present) -> str:
    """One readable line for a leaf: ``alt <= 3 x ULN (newest within 30 days)``."""
    win = leaf.slot.within_days
    if isinstance(leaf, Present):
        names = " or ".join(leaf.slot.element)
        extra = []
        if win is not None:
            extra.append(f"within {win} days")
        if leaf.slot.active:
            extra.append("still active")
        return f"{names} recorded" + (f" ({', '.join(extra)})" if extra else "")
    name = leaf.slot.element[0]
    el = ELEMENTS.get(name)
    mode = leaf.slot.mode
    if leaf.op == "between":
        lo, hi = (_value_text(el, mode, v) for v in leaf.values)
        rhs = f"{lo} and {hi}"
    elif leaf.op in ("in", "not_in"):
        rhs = "[" + ", ".join(_value_text(el, mode, v) for v in leaf.values) + "]"
    else:
        rhs = _value_text(el, mode, leaf.values[0])
    subject = f"{name} days" if mode == "days" else name
    text = f"{subject} {_SYMBOL[leaf.op]} {rhs}"
    return text + (f" (newest within {win} days)" if win is not None else "")


# ---- representative facts ------------------------------------------------------------------

def _range_of(slot: Slot) -> tuple[Fraction | None, Fraction | None, bool]:
    """Plausible range (canonical unit) and integrality of a numeric slot's values."""
    if slot.mode == "uln":
        return Fraction(0), None, False
    el = ELEMENTS[slot.element[0]]
    if el.plausible is None:
        return None, None, el.integer
    lo, hi = el.plausible
    return Fraction(lo), Fraction(hi), el.integer


def is_numeric(slot: Slot) -> bool:
    if slot.mode in ("uln", "days"):
        return True
    if slot.mode == "present":
        return False
    return ELEMENTS[slot.element[0]].kind in ("quantity", "derived", "exposure")


def candidates(slot: Slot, thresholds: Iterable[int]) -> list[int | str]:
    """Values of `slot` that between them take every path through leaves with `thresholds`."""
    if slot.mode == "present":
        return ["false", "true"]
    if not is_numeric(slot):
        el = ELEMENTS[slot.element[0]]
        if el.kind == "boolean":
            return ["false", "true"]
        return [v for v in el.values if v not in _NEVER_IN_SLOT]
    lo, hi, integer = _range_of(slot)
    ts = sorted(set(thresholds))

    def inside(x: Fraction) -> bool:
        return (lo is None or x >= lo) and (hi is None or x <= hi)

    points: set[Fraction] = set()
    codes: set[int] = set()
    for t in ts:
        x = decode_number(t)
        if integer:
            f, c = math.floor(x), math.ceil(x)
            points |= {Fraction(f - 1), Fraction(f), Fraction(c), Fraction(c + 1)}
        else:
            codes |= {t - 1, t, t + 1}  # odd codes: strictly between two millionths
    if lo is not None:
        points.add(Fraction(math.ceil(lo)) if integer else lo)
    if hi is not None:
        points.add(Fraction(math.floor(hi)) if integer else hi)
    if not ts and lo is None and hi is None:
        points.add(Fraction(0))
    for p in points:
        if inside(p):
            code = encode_number(p)
            if code is not None:
                codes.add(code)
    return sorted(c for c in codes if inside(_decode_any(c)))


def _decode_any(code: int) -> Fraction:
    """Value of a code; an odd code stands for a point strictly inside its millionth."""
    base = decode_number(code)
    return base + Fraction(1, 4_000_000) if code % 2 else base


def thresholds_by_slot(nodes: Iterable[Node | None]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for node in nodes:
        for leaf in leaves(node):
            lst = out.setdefault(leaf.slot.key, [])
            if isinstance(leaf, Compare):
                lst += [v for v in leaf.values if isinstance(v, int)]
    return out


def slots_in(nodes: Iterable[Node | None]) -> dict[str, Slot]:
    return {leaf.slot.key: leaf.slot for n in nodes for leaf in leaves(n)}


def _window_links(slots: Mapping[str, Slot]) -> list[tuple[str, str, str | None]]:
    """(shorter, longer, how) for two slots of one element read over different windows.

    The newest result within the shorter window, when there is one, is also the newest within
    the longer one: the two values are equal (`how` None). For an element whose one value
    sticks (a positive BCR-ABL1 anywhere in the window), and for presence, only that value
    carries over from the shorter window to the longer (`how` is it). Without these links
    "ECOG <= 2 within 30 days" and an exclusion "ECOG <= 2" (no window) looked independent,
    and the check that somebody can be eligible passed.
    """
    links: list[tuple[str, str, str | None]] = []
    for a, b in itertools.permutations(sorted(slots), 2):
        sa, sb = slots[a], slots[b]
        if (sa.element, sa.mode, sa.active) != (sb.element, sb.mode, sb.active) \
                or sa.mode == "days" or sa.within_days is None:
            continue
        if sb.within_days is not None and sb.within_days <= sa.within_days:
            continue
        if sa.mode == "present":
            links.append((a, b, "true"))
        else:
            links.append((a, b, ELEMENTS[sa.element[0]].sticky))
    return links


def _consistent(f: Mapping[str, Any], links: list[tuple[str, str, str | None]]) -> bool:
    for short, long, how in links:
        v = f.get(short)
        if v is None:
            continue
        # a value within the shorter window is a value within the longer one, never unknown
        if how is None and f.get(long) != v or how is not None and v == how \
                and f.get(long) != how:
            return False
    return True


def assignments(slots: Mapping[str, Slot], thresholds: Mapping[str, list[int]],
                with_unknown: bool = False) -> list[dict[str, Any]] | None:
    """Every combination of representative values that a patient could have (see
    `_window_links`); None when there would be too many."""
    keys = sorted(slots)
    domains = _domains(keys, slots, thresholds, with_unknown)
    if math.prod(len(d) for d in domains) > MAX_COMBINATIONS:
        return None
    links = _window_links(slots)
    out = ({k: v for k, v in zip(keys, combo, strict=True) if v is not None}
           for combo in itertools.product(*domains))
    return [f for f in out if _consistent(f, links)] if links else list(out)


def sampled_assignments(slots: Mapping[str, Slot], thresholds: Mapping[str, list[int]],
                        n: int = MAX_COMBINATIONS) -> list[dict[str, Any]]:
    """`n` combinations drawn at random (fixed seed) when there are too many for all: the
    checks then report what they saw, as a warning that says so."""
    keys = sorted(slots)
    domains = _domains(keys, slots, thresholds, False)
    rng = random.Random(0)
    links = _window_links(slots)
    out: list[dict[str, Any]] = []
    for _ in range(n):
        f = {k: rng.choice(d) for k, d in zip(keys, domains, strict=True)}
        # drawn independently, linked slots would almost never agree (and every draw would be
        # dropped): the longer window takes what the shorter one implies
        for short, long, how in links:
            if how is None or f[short] == how:
                f[long] = f[short]
        if _consistent(f, links):
            out.append(f)
    return out


def _domains(keys: list[str], slots: Mapping[str, Slot], thresholds: Mapping[str, list[int]],
             with_unknown: bool) -> list[list[Any]]:
    # one element over several windows: each window's candidates include the others'
    # thresholds, so that linked slots (`_window_links`) can take the same values
    shared: dict[tuple[Any, ...], set[int]] = {}
    for k in keys:
        sl = slots[k]
        shared.setdefault((sl.element, sl.mode, sl.active), set()).update(thresholds.get(k, []))
    domains: list[list[Any]] = []
    for k in keys:
        sl = slots[k]
        dom: list[Any] = list(candidates(sl, sorted(shared[(sl.element, sl.mode, sl.active)])))
        if with_unknown:
            dom.append(None)
        domains.append(dom)
    return domains


def outcomes(node: Node, facts: Iterable[Mapping[str, Any]]) -> set[str]:
    """The truth values (T / F / U) `node` takes over the given facts. Stops as soon as it has
    seen both true and false: no check needs more."""
    out: set[str] = set()
    for f in facts:
        out.add(tri(reference.evaluate(node, f)))
        if "T" in out and "F" in out:
            break
    return out


def tri(v: Any) -> str:
    return "T" if v is True else "F" if v is False else "U"


def favourable(c: Criterion, facts: Mapping[str, Any]) -> bool:
    """Would this (data-decided) criterion stand out of the patient's way on these facts?"""
    if c.applies_if is not None and reference.evaluate(c.applies_if, facts) is False:
        return True
    assert c.logic is not None
    v = reference.evaluate(c.logic, facts)
    return v is True if c.kind == "inclusion" else v is False


# ---- the checks ----------------------------------------------------------------------------

def _walk(node: Node, p: Path) -> Iterator[tuple[Node, Path]]:
    """Each IR node with the JSON path of the YAML it came from (parse keeps the shape)."""
    yield node, p
    if isinstance(node, All):
        for i, part in enumerate(node.parts):
            yield from _walk(part, p + ("all", i))
    elif isinstance(node, Any_):
        for i, part in enumerate(node.parts):
            yield from _walk(part, p + ("any", i))
    elif isinstance(node, Not):
        yield from _walk(node.part, p + ("not",))


def _norm_text(s: str) -> str:
    """Protocol text as compared: NFKC, bullets and line breaks dropped, spaces collapsed, no
    space before closing punctuation (copies from web pages differ in exactly these)."""
    s = unicodedata.normalize("NFKC", s)
    s = _BULLETS.sub(" ", s)
    s = " ".join(s.split())
    s = re.sub(r"\s+([),.;:])", r"\1", s)
    return re.sub(r"([(])\s+", r"\1", s)


@dataclass
class Linter:
    """All checks for one parsed trial. `source_text` is the protocol text the file names
    (None when it names a URL or nothing readable); reading it is the caller's job."""

    doc: Located
    trial: Trial
    source_text: str | None = None
    source_problem: str | None = None
    findings: list[RuleError] = field(default_factory=list)
    #: criterion id -> line of its first leaf with a finding (the likely cause of a constant)
    flagged: dict[str, int] = field(default_factory=dict)
    _source_norm: str | None = None

    def add(self, p: Path, code: str, msg: str, severity: str = "warning",
            hint: str | None = None, criterion: str | None = None, key: bool = False,
            suggestion: str | None = None) -> None:
        line, col = self.doc.pos(p, key=key)
        self.findings.append(RuleError(self.doc.path, line, col, code, msg, severity,
                                       suggestion, hint, criterion))

    def run(self) -> list[RuleError]:
        raw = self.doc.data["criteria"]
        for i, c in enumerate(self.trial.criteria):
            p: Path = ("criteria", i)
            self.text(c, raw[i], p)
            self.shape(c, p)
            self.policy(c, p)
            explained = set()
            for name in ("logic", "applies_if"):
                node = getattr(c, name)
                if node is not None and self.nodes(c, node, p + (name,)):
                    explained.add(name)
            self.windows(c, p)
            self.constant(c, p, explained)
        self.conflicts()
        self.site_ulns()
        from .authoring import example_findings  # examples live beside the criteria
        self.findings += example_findings(self.doc, self.trial)
        return sorted(set(self.findings))

    # -- site ULNs ----------------------------------------------------------------------------
    def site_ulns(self) -> None:
        """A site ULN far from any laboratory's (creatinine 1.2 written in umol/L is 0.014
        mg/dL): every result without its own range would be compared with it."""
        for name, uln in self.trial.site_uln:
            el = ELEMENTS[name]
            band = el.uln_band   # the same band results' own ranges are held to (normalize)
            if band is None or band[0] <= uln <= band[1]:
                continue
            self.add(("site_uln", name, "value"), "lint.site_uln_suspect",
                     f"site ULN of {name} is {float(uln):.4g} {el.unit}, outside the usual band "
                     f"of upper limits ({float(band[0]):.4g}-{float(band[1]):.4g} {el.unit}): "
                     "is the unit right?",
                     "error", hint="write the value and unit as the laboratory reports them; "
                     "every result without its own range is compared with this one")

    # -- text ---------------------------------------------------------------------------------
    def text(self, c: Criterion, raw: Mapping[str, Any], p: Path) -> None:
        if self.source_text is None:
            return
        if self._source_norm is None:
            self._source_norm = _norm_text(self.source_text)   # once per file, not per criterion
        src = self._source_norm
        missing = [f for f in (_norm_text(x) for x in str(raw["text"]).split(";"))
                   if f and f not in src]
        if missing:
            shown = missing[0] if len(missing[0]) <= 60 else missing[0][:57] + "..."
            self.add(p + ("text",), "lint.text_not_in_source",
                     f"text of {c.id!r} does not occur in the source protocol "
                     f"({self.trial.source}): {shown!r}",
                     hint="copy the protocol's own words; line breaks, bullets and spacing are "
                          "ignored, and ';' may separate words taken from different places",
                     criterion=c.id)

    # -- missing-data policy ------------------------------------------------------------------
    def shape(self, c: Criterion, p: Path) -> None:
        """An id that names the other kind, and an exclusion of an absence."""
        prefix = c.id.split("_", 1)[0]
        other = {"inc": "exclusion", "incl": "exclusion", "exc": "inclusion",
                 "excl": "inclusion"}.get(prefix)
        if other == c.kind:
            self.add(p + ("kind",), "lint.kind_vs_id",
                     f"criterion {c.id!r} is an {c.kind}, but its id reads as the other kind",
                     criterion=c.id, hint="check 'kind' (an exclusion met makes the patient "
                                          "ineligible) or rename the id")
        if c.kind == "exclusion" and isinstance(c.logic, Not) \
                and isinstance(c.logic.part, Present):
            self.add(p + ("logic",), "lint.excludes_absence",
                     f"exclusion {c.id!r} is met when {c.logic.part.slot.element[0]} is "
                     "ABSENT: every patient without it is excluded", key=True, criterion=c.id,
                     hint="an exclusion states what must not be present: drop the 'not'")

    def policy(self, c: Criterion, p: Path) -> None:
        if c.on_unknown is None:
            return
        if c.manual:
            self.add(p + ("on_unknown",), "lint.manual_on_unknown",
                     f"manual criterion {c.id!r} has on_unknown: it is never unknown, so the "
                     "attestation is never asked for", "error", key=True, criterion=c.id,
                     hint="remove on_unknown; a manual criterion resolves only by attestation")
            return
        fav = "met" if c.kind == "inclusion" else "not_met"
        if c.on_unknown.verdict == fav:
            self.add(p + ("on_unknown", "verdict"), "lint.unknown_favourable",
                     f"on_unknown makes missing data count in the patient's favour "
                     f"({c.kind} {c.on_unknown.verdict}): a patient with no data for {c.id!r} "
                     "can be reported eligible", criterion=c.id,
                     hint="keep the default (unknown) unless the protocol says missing data "
                          "does not matter; the reason is shown in every report")

    # -- node-level checks: constants, contradictions, units ----------------------------------
    def nodes(self, c: Criterion, root: Node, base: Path) -> bool:
        """Leaf and `all` checks. True when a contradiction (an error that already says the
        criterion is never met) was found, so the criterion-level finding would repeat it; a
        leaf finding does not count: it is a warning, and the criterion-level error says what
        the leaf does to the whole criterion."""
        explained = False
        for node, p in _walk(root, base):
            if isinstance(node, Compare):
                self.leaf(c, node, p)
            elif isinstance(node, Present) and node.slot.within_days == 0:
                self.add(p + ("within_days",), "lint.window_zero",
                         "within_days: 0 counts only what is dated on as_of itself",
                         hint="give the protocol's window (e.g. 90) or drop within_days for no "
                              "limit", criterion=c.id)
            elif isinstance(node, (All, Any_)):
                explained |= self.siblings(c, node, p)
        return explained

    def leaf(self, c: Criterion, leaf: Compare, p: Path) -> None:
        before = len(self.findings)
        self._leaf(c, leaf, p)
        if any(f.code != "lint.window_zero" for f in self.findings[before:]):
            self.flagged.setdefault(c.id, self.doc.pos(p)[0])

    def _leaf(self, c: Criterion, leaf: Compare, p: Path) -> None:
        slot = leaf.slot
        el = ELEMENTS[slot.element[0]]
        if slot.within_days == 0:
            self.add(p + ("within_days",), "lint.window_zero",
                     "within_days: 0 counts only data dated on as_of itself",
                     hint="give the protocol's window (e.g. 30) or drop within_days for no limit",
                     criterion=c.id)
        if slot.mode == "uln":
            x = decode_number(int(leaf.values[0]))
            if x > MAX_SENSIBLE_X_ULN:
                self.add(p + ("x_uln",), "lint.x_uln_large",
                         f"{fmt_number(x)} x ULN is an unusual multiple of the upper limit of "
                         "normal", criterion=c.id,
                         hint=f"x_uln is a multiple (3 = three times the ULN); for an absolute "
                              f"threshold in {el.unit} write 'value:' instead")
                return
        if slot.mode == "value" and el.kind == "quantity" and self.unit(c, leaf, el, p):
            return  # the unit explains the odd threshold better than its range would
        if not is_numeric(slot):
            for i, v in enumerate(leaf.values):
                if v in _NEVER_IN_SLOT:
                    at = p + ("value", i) if leaf.op in ("in", "not_in") else p + ("value",)
                    self.add(at, "lint.value_never_recorded",
                             f"{el.name} {v!r} never reaches the rules: the normalizer treats "
                             "it as missing data, so this test is unknown, never true",
                             criterion=c.id,
                             hint="leave missing data to the default (unknown) or state a "
                                  "policy with on_unknown")
            return
        facts = [{slot.key: v} for v in candidates(slot, [int(v) for v in leaf.values])]
        seen = outcomes(leaf, facts)
        if len(seen) != 1:
            return
        always = seen == {"T"}
        lo, hi, _ = _range_of(slot)
        rng = ("from " + fmt_number(lo) if lo is not None else "") + \
              (" to " + fmt_number(hi) if hi is not None else " upwards")
        unit = unit_label("d" if slot.mode == "days" else el.unit)
        what = "a multiple of the ULN" if slot.mode == "uln" else f"{slot.element[0]}"
        self.add(p, "lint.leaf_always" if always else "lint.leaf_never",
                 f"'{describe(leaf)}' is {'always' if always else 'never'} true: {what} "
                 f"ranges {rng}{' ' + unit if unit else ''}", criterion=c.id,
                 hint="check the threshold and the operator"
                      + (f"; thresholds are in {unit} (docs/data-elements.md)" if unit else ""))

    def unit(self, c: Criterion, leaf: Compare, el: Element, p: Path) -> bool:
        if el.unit == "%" and leaf.slot.mode == "value" and el.plausible \
                and el.plausible[0] >= 1:   # not blasts: 0.01 % is an MRD level
            for i, v in enumerate(leaf.values):
                x = decode_number(int(v))
                if 0 < x < 1:
                    at = p + ("value", i) if len(leaf.values) > 1 else p + ("value",)
                    self.add(at, "lint.unit_suspect",
                             f"{el.name} threshold {fmt_number(x)} % is below 1 %: it looks like "
                             f"a fraction (= {fmt_number(x * 100)} %)", criterion=c.id,
                             hint="'value' thresholds of this element are in %: 5 % is 5, "
                                  "not 0.05")
                    return True
        band = TYPICAL_THRESHOLDS.get(el.name)
        if band is None or leaf.op in ("==", "!="):
            return False
        lo, hi = band
        for i, v in enumerate(leaf.values):
            x = decode_number(int(v))
            if lo <= x <= hi:
                continue
            for spelling, factor in sorted(el.units.items()):
                if factor == 1 or not spelling.isascii():
                    continue
                y = x * factor
                if lo <= y <= hi:
                    at = p + ("value", i) if len(leaf.values) > 1 else p + ("value",)
                    other = pretty_unit(spelling)
                    how = (f"{other} / {fmt_number(1 / factor)}" if factor < 1 else
                           f"{other} x {fmt_number(factor)}")
                    self.add(at, "lint.unit_suspect",
                             f"{el.name} threshold {fmt_number(x)} {el.unit} is unusual (typical "
                             f"thresholds {fmt_number(lo)}-{fmt_number(hi)} {el.unit}); it looks "
                             f"like a value in {other} (= {float(y):.3g} {el.unit})",
                             criterion=c.id,
                             hint=f"'value' thresholds are in {el.unit}, the canonical unit: "
                                  f"convert ({how} = {el.unit}) or compare with the result's "
                                  "own ULN using x_uln")
                    return True
        return False

    def siblings(self, c: Criterion, node: All | Any_, p: Path) -> bool:
        word = "all" if isinstance(node, All) else "any"
        by_slot: dict[str, list[tuple[int, Compare]]] = {}
        for i, part in enumerate(node.parts):
            if isinstance(part, Compare):
                by_slot.setdefault(part.slot.key, []).append((i, part))
        seen_parts: dict[tuple[Any, ...], int] = {}
        for i, part in enumerate(node.parts):
            # leaves compared without their source span: the same test written twice
            if isinstance(part, Compare):
                sig: tuple[Any, ...] = (part.slot, part.op, part.values)
            elif isinstance(part, Present):
                sig = (part.slot,)
            else:
                continue
            if sig in seen_parts:
                self.add(p + (word, i), "lint.duplicate_condition",
                         f"'{describe(part)}' repeats part {seen_parts[sig] + 1} of the same "
                         f"'{word}'", criterion=c.id, hint="remove the repetition")
            else:
                seen_parts[sig] = i
        if not isinstance(node, All):
            return False
        for key, parts in sorted(by_slot.items()):
            if len(parts) < 2:
                continue
            slot = parts[0][1].slot
            doms = candidates(slot, [v for _, x in parts for v in x.values
                                     if isinstance(v, int)])
            for (i, a), (j, b) in itertools.combinations(parts, 2):
                if not any(reference.evaluate(a, {key: v}) is True and
                           reference.evaluate(b, {key: v}) is True for v in doms):
                    la = self.doc.pos(p + ("all", i))[0]
                    self.add(p + ("all", j), "lint.contradiction",
                             f"'{describe(b)}' contradicts '{describe(a)}' (line {la}): no "
                             f"value satisfies both, so this 'all' is never true",
                             "error", criterion=c.id,
                             hint="for 'either ... or' use 'any'; otherwise fix the threshold "
                                  "or the operator")
                    return True
        return False

    # -- windows ------------------------------------------------------------------------------
    def windows(self, c: Criterion, base: Path) -> None:
        """One element read over different windows in one criterion, unless it is the same
        test over two windows (the "recent, or positive at any age" idiom of lifelong
        antibodies: `any: [hiv_ab positive within 90 days, hiv_ab positive]`)."""
        first: dict[str, tuple[int | None, str, Any]] = {}
        for name in ("logic", "applies_if"):
            root = getattr(c, name)
            if root is None:
                continue
            for node, p in _walk(root, base + (name,)):
                if not isinstance(node, (Compare, Present)):
                    continue
                test = (node.op, node.values) if isinstance(node, Compare) else None
                for el in node.slot.element:
                    win = node.slot.within_days
                    line, col = self.doc.pos(p)
                    if el not in first:
                        first[el] = (win, f"{line}:{col}", test)
                    elif first[el][0] != win and (test is None or first[el][2] != test):
                        fw, fl, _ = first[el]
                        self.add(p, "lint.window_mismatch",
                                 f"{el} is read {_win(win)} here but {_win(fw)} at {fl}: "
                                 "the two tests may look at different results",
                                 criterion=c.id,
                                 hint="use one window per data element within a criterion")

    # -- whole criteria -----------------------------------------------------------------------
    def constant(self, c: Criterion, p: Path, explained: set[str]) -> None:
        """A criterion (or its applies_if) whose value never changes, unless a contradiction
        inside it (listed in `explained`) already said so."""
        cause = self.flagged.get(c.id)
        because = f"follows from the part flagged at line {cause}" if cause else None
        if c.applies_if is not None and "applies_if" not in explained:
            facts = assignments(slots_in([c.applies_if]), thresholds_by_slot([c.applies_if]))
            if facts is not None:
                seen = outcomes(c.applies_if, facts)
                if "F" not in seen:
                    self.add(p + ("applies_if",), "lint.applies_always",
                             f"applies_if of {c.id!r} is never false: the criterion always "
                             "applies", key=True, criterion=c.id,
                             hint="remove applies_if, or fix its condition")
                elif "T" not in seen:
                    self.add(p + ("applies_if",), "lint.applies_never",
                             f"applies_if of {c.id!r} is never true: the criterion is always "
                             "not_applicable", "error", key=True, criterion=c.id,
                             hint=because or "fix the condition; a criterion that never "
                                             "applies does nothing")
        if c.logic is None or "logic" in explained:
            return
        slots, ts = slots_in([c.logic]), thresholds_by_slot([c.logic])
        facts = assignments(slots, ts)
        sampled = facts is None
        if facts is None:
            facts = sampled_assignments(slots, ts)
        if not facts:
            return   # nothing to judge by (a sample that the window links emptied)
        seen = outcomes(c.logic, facts)
        # too many combinations to try all: what a sample showed, as a warning
        scope = (f" (seen in {len(facts):,} sampled combinations: too many to try all)"
                 if sampled else "")
        if "T" not in seen:
            self.add(p + ("logic",), "lint.never_met",
                     f"{c.kind} {c.id!r} can never be met: its logic is false for every "
                     f"possible patient{scope}", "warning" if sampled else "error", key=True,
                     criterion=c.id,
                     hint=because or "look for contradictory parts ('all' where 'any' was "
                                     "meant) or thresholds outside the element's range")
        elif "F" not in seen:
            sev = "error" if c.kind == "exclusion" and not sampled else "warning"
            effect = ("every patient is excluded" if c.kind == "exclusion"
                      else "it never excludes anybody")
            self.add(p + ("logic",), "lint.always_met",
                     f"{c.kind} {c.id!r} is met by every patient whose data is known: "
                     f"{effect}{scope}", sev, key=True, criterion=c.id,
                     hint=because or "look for parts that cover every value ('any' where "
                                     "'all' was meant)")

    def conflicts(self) -> None:
        """Two data-decided criteria that cannot both be in the patient's favour: nobody can
        be eligible. Only pairs reading a common element (over any windows) can conflict."""
        crits = [(i, c) for i, c in enumerate(self.trial.criteria) if c.logic is not None]
        alone_ok: dict[str, bool] = {}
        for _, c in crits:
            nodes = [c.logic, c.applies_if]
            facts = assignments(slots_in(nodes), thresholds_by_slot(nodes))
            alone_ok[c.id] = facts is None or any(favourable(c, f) for f in facts)
        for (i, a), (j, b) in itertools.combinations(crits, 2):
            if not (alone_ok[a.id] and alone_ok[b.id]):
                continue  # already reported as never met / always met
            na, nb = slots_in([a.logic, a.applies_if]), slots_in([b.logic, b.applies_if])
            if not {(x.element, x.mode) for x in na.values()} \
                    & {(x.element, x.mode) for x in nb.values()}:
                continue   # no element in common (over any windows: see _window_links)
            nodes = [a.logic, a.applies_if, b.logic, b.applies_if]
            facts = assignments({**na, **nb}, thresholds_by_slot(nodes))
            sampled = facts is None
            if facts is None:
                facts = sampled_assignments({**na, **nb}, thresholds_by_slot(nodes))
            if not facts or any(favourable(a, f) and favourable(b, f) for f in facts):
                continue
            line = self.doc.pos(("criteria", i))[0]
            scope = (f" (seen in {len(facts):,} sampled combinations: too many to try all)"
                     if sampled else "")
            self.add(("criteria", j, "logic"), "lint.no_one_eligible",
                     f"{b.kind} {b.id!r} and {a.kind} {a.id!r} (line {line}) cannot both be in "
                     f"the patient's favour: no patient can be eligible{scope}",
                     "warning" if sampled else "error", key=True, criterion=b.id,
                     hint="an exclusion states what must NOT hold; check that it is not the "
                          "inclusion written again")


def _win(w: int | None) -> str:
    return "with no window" if w is None else f"within {w} days"


# ---- files ---------------------------------------------------------------------------------

def _source(doc: Located) -> tuple[str | None, RuleError | None]:
    """The protocol text a rule file names (relative to the file); URLs are not fetched."""
    src = doc.data.get("source")
    if not isinstance(src, str) or _URL.match(src):
        return None, None
    full = os.path.normpath(os.path.join(os.path.dirname(doc.path), src))
    why = None
    try:
        # a regular file of bounded size only: /dev/zero or a FIFO named here hung or ran
        # `screener check` out of memory
        st = os.stat(full)
        if not stat.S_ISREG(st.st_mode):
            why = "not a regular file"
        elif st.st_size > MAX_SOURCE_BYTES:
            why = f"larger than {MAX_SOURCE_BYTES // (1024 * 1024)} MiB"
        else:
            with open(full, encoding="utf-8", errors="replace") as fh:
                return fh.read(MAX_SOURCE_BYTES), None
    except OSError as e:
        why = e.strerror or "cannot be read"
    line, col = doc.pos(("source",))
    return None, RuleError(doc.path, line, col, "lint.source_missing",
                           f"source protocol file {src!r} cannot be read ({why}); "
                           "criterion texts are not compared with it", "warning",
                           hint="give the path relative to the rule file, or a URL")


def lint_document(doc: Located, trial: Trial) -> list[RuleError]:
    """Every lint finding for one parsed trial (reads the named source protocol, if any)."""
    text, problem = _source(doc)
    out = Linter(doc, trial, text).run()
    return sorted(out + ([problem] if problem else []))


def check_files(files: Iterable[str]) -> list[RuleError]:
    """Findings for every file that loads, validates and parses (others already have errors),
    plus trial ids defined by more than one file."""
    out: list[RuleError] = []
    seen: dict[str, str] = {}
    for f in files:
        doc, errors = load(f)
        if doc is None or errors or schema_errors(doc):
            continue
        trial, errors = parse(doc)
        if trial is None or errors:
            continue
        out += lint_document(doc, trial)
        if trial.id in seen:
            line, col = doc.pos(("trial",))
            out.append(RuleError(f, line, col, "lint.duplicate_trial",
                                 f"trial {trial.id} is also defined in {seen[trial.id]}",
                                 hint="one rule file per trial; remove or renumber one"))
        else:
            seen[trial.id] = f
    return sorted(set(out))
