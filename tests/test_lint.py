"""Static checks (screener/lint.py): the representative-value machinery, each check on small
rule texts, no findings on the seed trials, and checks that need several files."""

from __future__ import annotations

import random
from fractions import Fraction
from io import StringIO
from pathlib import Path

import pytest

from screener import cli, reference
from screener.ir import Compare, Slot, Span, encode_number
from screener.lint import (
    Linter,
    _norm_text,
    assignments,
    candidates,
    check_files,
    lint_document,
    outcomes,
    slots_in,
    thresholds_by_slot,
)
from screener.load import loads
from screener.parse import parse
from screener.validate import schema_errors

ROOT = Path(__file__).resolve().parents[1]
HEAD = """trial: NCT06111625
title: t
version: "1"
source: https://clinicaltrials.gov/study/NCT06111625
criteria:
"""


def lint_text(criteria: str, head: str = HEAD, source_text: str | None = None) -> list[str]:
    """Findings for a rule text as 'code@line' strings (criteria start at line 6)."""
    doc, errors = loads(head + criteria, "t.yaml")
    assert doc is not None and not errors, errors
    assert not schema_errors(doc), schema_errors(doc)
    trial, errors = parse(doc)
    assert trial is not None, errors
    found = Linter(doc, trial, source_text).run()
    return [f"{f.code}@{f.line}" for f in found]


def crit(logic: str, kind: str = "inclusion", cid: str = "c1", extra: str = "") -> str:
    return f"  - id: {cid}\n    kind: {kind}\n    text: x\n    logic: {logic}\n{extra}"


def num(x: str) -> int:
    code = encode_number(Fraction(x))
    assert code is not None
    return code


# ---- representative values -----------------------------------------------------------------

def test_candidates_cover_both_sides_of_each_threshold_within_the_range() -> None:
    ecog = Slot(("ecog",), "value", 30)
    vals = candidates(ecog, [num("2")])
    assert vals == [num(x) for x in ("0", "1", "2", "3", "5")]
    ratio = Slot(("alt",), "uln", 30)
    vals = candidates(ratio, [num("3")])
    assert num("3") - 1 in vals and num("3") in vals and num("3") + 1 in vals
    assert min(vals) == 0  # a ratio is never negative


def test_coded_candidates_leave_out_values_that_never_reach_a_slot() -> None:
    assert candidates(Slot(("sex",), "value"), []) == ["female", "male", "other"]
    assert "indeterminate" not in candidates(Slot(("hbsag",), "value", 90), [])


def test_enumeration_agrees_with_random_sampling() -> None:
    """What the enumeration says a leaf can be, random values (inside the plausible range)
    never contradict: every sampled outcome is among the enumerated ones."""
    rng = random.Random(7)
    span = Span("t.yaml", 1, 1)
    for _ in range(300):
        el, lo, hi = rng.choice([("lvef", 5, 100), ("hct_ci", 0, 30), ("age", 0, 130)])
        slot = Slot((el,), "value")
        op = rng.choice(["<", "<=", ">", ">=", "==", "!="])
        t = num(str(rng.randint(lo - 5, hi + 5)))
        leaf = Compare(slot, op, (t,), span)  # type: ignore[arg-type]
        enumerated = outcomes(leaf, [{slot.key: v} for v in candidates(slot, [t])])
        integer = el != "lvef"
        for _ in range(20):
            x = (Fraction(rng.randint(lo, hi)) if integer
                 else Fraction(rng.randint(lo * 100, hi * 100), 100))
            v = reference.evaluate(leaf, {slot.key: encode_number(x)})
            assert ("T" if v is True else "F") in enumerated


def test_too_many_combinations_are_not_enumerated() -> None:
    slots = {f"s{i}": Slot((f"x{i}",), "present") for i in range(20)}
    assert assignments(slots, {}) is None


def test_slots_and_thresholds_of_a_tree() -> None:
    doc, _ = loads(HEAD + crit('{all: [{fact: ecog, op: "<=", value: 2}, '
                               '{fact: ecog, op: ">", value: 0}]}'), "t.yaml")
    assert doc is not None
    trial, _ = parse(doc)
    assert trial is not None
    logic = trial.criteria[0].logic
    assert list(slots_in([logic])) == ["ecog__value__any"]
    assert sorted(thresholds_by_slot([logic])["ecog__value__any"]) == [num("0"), num("2")]


# ---- the checks, one by one -----------------------------------------------------------------

def test_contradiction_in_all_but_not_in_any() -> None:
    parts = '[{fact: age, op: ">=", value: 60}, {fact: age, op: "<", value: 18}]'
    assert lint_text(crit(f"{{all: {parts}}}")) == ["lint.contradiction@9"]
    assert lint_text(crit(f"{{any: {parts}}}")) == []


def test_touching_ranges_are_not_a_contradiction() -> None:
    assert lint_text(crit('{all: [{fact: age, op: ">=", value: 18}, '
                          '{fact: age, op: "<=", value: 18}]}')) == []
    assert lint_text(crit('{all: [{fact: age, op: ">", value: 18}, '
                          '{fact: age, op: "<", value: 19}]}')) == ["lint.contradiction@9"]


def test_integer_elements_have_no_values_between_integers() -> None:
    # ECOG is a whole number: nothing lies strictly between 1 and 2
    assert "lint.contradiction@9" in lint_text(crit(
        '{all: [{fact: ecog, op: ">", value: 1}, {fact: ecog, op: "<", value: 2}]}'))
    # LVEF is not: 49.5 does
    assert lint_text(crit(
        '{all: [{fact: lvef, op: ">", value: 49}, {fact: lvef, op: "<", value: 50}]}')) == []


def test_constant_leaves_and_criteria() -> None:
    assert lint_text(crit('{fact: age, op: ">=", value: 0}')) == [
        "lint.always_met@9", "lint.leaf_always@9"]
    assert lint_text(crit('{fact: age, op: ">=", value: 0}', kind="exclusion")) == [
        "lint.always_met@9", "lint.leaf_always@9"]
    assert lint_text(crit('{fact: blinatumomab, op: "<", value: 0}', kind="exclusion")) == [
        "lint.never_met@9", "lint.leaf_never@9"]


def test_tautology_over_coded_values_is_always_met() -> None:
    logic = ('{any: [{fact: hbsag, op: "==", value: positive}, '
             '{fact: hbsag, op: "==", value: negative}]}')
    assert lint_text(crit(logic, kind="exclusion")) == ["lint.always_met@9"]


def test_severity_of_constant_criteria() -> None:
    doc, _ = loads(HEAD + crit('{fact: lvef, op: "<=", value: 100}'), "t.yaml")
    assert doc is not None
    trial, _ = parse(doc)
    assert trial is not None
    by_code = {f.code: f for f in lint_document(doc, trial)}
    assert by_code["lint.always_met"].severity == "warning"  # an inclusion that never excludes
    assert by_code["lint.leaf_always"].severity == "warning"


def test_inclusion_exclusion_conflict_and_compatible_pairs() -> None:
    inc = crit('{fact: age, op: ">=", value: 18}', cid="inc_age")
    assert lint_text(inc + crit('{fact: age, op: ">=", value: 18}', "exclusion", "exc_age")) \
        == ["lint.no_one_eligible@13"]
    assert lint_text(inc + crit('{fact: age, op: ">", value: 60}', "exclusion", "exc_age")) \
        == []
    # two inclusions that cannot both hold
    assert lint_text(inc + crit('{fact: age, op: "<", value: 18}', cid="inc_young")) \
        == ["lint.no_one_eligible@13"]


def test_applicability_makes_a_pair_compatible() -> None:
    inc = crit('{fact: pregnant, op: "==", value: true}', cid="inc_preg")
    exc = crit('{fact: pregnant, op: "==", value: true}', "exclusion", "exc_preg",
               '    applies_if: {fact: sex, op: "==", value: female}\n')
    # a man is pregnant == unknown in life, but as facts go the pair can only both be
    # favourable when the exclusion does not apply: that is possible, so no conflict
    assert lint_text(inc + exc) == []


def test_unit_suspect_only_for_numbers_in_another_units_range() -> None:
    assert lint_text(crit('{fact: creatinine, op: "<=", value: 1.5}')) == []
    assert lint_text(crit('{fact: creatinine, op: ">", value: 20}', "exclusion")) == [
        "lint.unit_suspect@9"]
    assert lint_text(crit('{fact: bilirubin_total, op: "<=", value: 34}')) == [
        "lint.unit_suspect@9"]
    assert lint_text(crit('{fact: alt, op: "<=", value: 0.7}')) == ["lint.unit_suspect@9"]


def test_windows() -> None:
    assert lint_text(crit('{fact: ecog, op: "<=", value: 2, within_days: 0}')) == [
        "lint.window_zero@9"]
    two = ('{all: [{fact: alt, op: "<=", x_uln: 3, within_days: 30}, '
           '{fact: alt, op: ">=", x_uln: 1, within_days: 90}]}')
    assert lint_text(crit(two)) == ["lint.window_mismatch@9"]
    same = ('{all: [{fact: alt, op: "<=", x_uln: 3, within_days: 30}, '
            '{fact: ast, op: "<=", x_uln: 3, within_days: 90}]}')
    assert lint_text(crit(same)) == []


def test_policies() -> None:
    manual = ("  - id: c1\n    kind: inclusion\n    text: x\n    manual: true\n"
              "    on_unknown: {verdict: not_met, reason: unattested means no consent}\n")
    assert lint_text(manual) == ["lint.manual_on_unknown@10"]
    strict = crit('{fact: hiv_ab, op: "==", value: positive}', "exclusion",
                  extra="    on_unknown: {verdict: met, reason: untested patients are excluded}\n")
    assert lint_text(strict) == []  # missing data against the patient: allowed, no warning
    lax = crit('{fact: hiv_ab, op: "==", value: positive}', "exclusion",
               extra="    on_unknown: {verdict: not_met, reason: most are negative anyway}\n")
    assert lint_text(lax) == ["lint.unknown_favourable@10"]


def test_text_against_source() -> None:
    src = "Inclusion:\n  • Liver: ALT/AST ≤3× upper limit of normal (ULN);\n  • Kidney: BUN ok.\n"
    ok = ("  - id: c1\n    kind: inclusion\n    text: 'Liver: ALT/AST ≤3× upper limit of normal "
          "(ULN); Kidney:'\n    logic: {fact: alt, op: \"<=\", x_uln: 3}\n")
    assert lint_text(ok, source_text=src) == []
    bad = ok.replace("≤3×", "≤5×")
    assert lint_text(bad, source_text=src) == ["lint.text_not_in_source@8"]


def test_text_normalisation_ignores_layout_only() -> None:
    assert _norm_text("Patients (Age 18-60 years )\n  with") == "Patients (Age 18-60 years) with"
    assert _norm_text("by:\n\n  • Bone marrow") == "by: Bone marrow"
    assert _norm_text("≥ 16") != _norm_text("≥ 18")


# ---- whole files -------------------------------------------------------------------------

def test_seed_trials_have_no_findings() -> None:
    files = sorted(str(p) for p in (ROOT / "rules").glob("*.yaml"))
    assert len(files) == 2
    assert check_files(files) == []


def test_seed_texts_are_compared_with_their_protocols(tmp_path: Path) -> None:
    """The seed files name ../../shared/trials/*.txt: an edited text is reported."""
    src = (ROOT / "rules" / "NCT06111625.yaml").read_text(encoding="utf-8")
    shared = ROOT.parent / "shared" / "trials" / "NCT06111625.txt"
    if not shared.exists():
        pytest.skip("shared protocol texts not present")
    edited = src.replace("2. patients with age ≥ 16 years;", "2. patients with age ≥ 18 years;")
    edited = edited.replace("source: ../../shared/trials/", f"source: {shared.parent}/")
    f = tmp_path / "t.yaml"
    f.write_text(edited, encoding="utf-8")
    found = check_files([str(f)])
    assert [(x.code, x.criterion) for x in found] == [("lint.text_not_in_source", "inc_age")]


def test_duplicate_trial_across_files(tmp_path: Path) -> None:
    text = HEAD + crit('{fact: age, op: ">=", value: 18}')
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(text)
    b.write_text(text)
    found = check_files([str(a), str(b)])
    assert [(x.path, x.code, x.line) for x in found] == [(str(b), "lint.duplicate_trial", 1)]
    out, err = StringIO(), StringIO()
    code = cli.run(cli.parse_args(["check", str(tmp_path)]), out, err)
    assert code == 1 and f"also defined in {a}" in out.getvalue()


def test_files_with_earlier_errors_are_not_linted(tmp_path: Path) -> None:
    f = tmp_path / "x.yaml"
    f.write_text(HEAD + crit('{fact: age, op: ">=", value: 0}') + "    bogus: 1\n")
    assert check_files([str(f)]) == []  # the schema error is reported by check_file


def _random_node(rng: random.Random, depth: int = 0) -> dict[str, object]:
    from screener.elements import ELEMENTS

    r = rng.random()
    if depth < 3 and r < 0.25:
        return {"all": [_random_node(rng, depth + 1) for _ in range(rng.randint(1, 3))]}
    if depth < 3 and r < 0.45:
        return {"any": [_random_node(rng, depth + 1) for _ in range(rng.randint(1, 3))]}
    if depth < 3 and r < 0.55:
        return {"not": _random_node(rng, depth + 1)}
    name = rng.choice(sorted(ELEMENTS))
    e = ELEMENTS[name]
    if e.kind == "condition":
        return {"condition": name, "within_days": rng.choice([0, 28, 90]),
                "active": rng.random() < 0.3}
    if e.kind == "boolean":
        return {"fact": name, "op": rng.choice(["==", "!="]), "value": rng.random() < 0.5}
    if e.kind == "coded":
        op = rng.choice(["==", "!=", "in", "not_in"])
        return {"fact": name, "op": op, "value": rng.choice(e.values) if op in ("==", "!=")
                else rng.sample(list(e.values), 2)}
    lo, hi = e.plausible or (0, 100)
    if e.uln and rng.random() < 0.5:
        return {"fact": name, "op": rng.choice(["<", "<=", ">", ">="]),
                "x_uln": rng.choice([0.5, 1, 1.25, 3, 30])}
    pick = lambda: rng.choice([lo - 1, lo, hi, hi + 1, (lo + hi) / 2])  # noqa: E731
    op = rng.choice(["<", "<=", ">", ">=", "==", "!=", "in", "not_in", "between"])
    value: object = sorted([pick(), pick()]) if op in ("in", "not_in", "between") else pick()
    return {"fact": name, "op": op, "value": value}


def test_lint_never_crashes_on_random_valid_rules() -> None:
    """Random (schema- and parse-valid) trees over every element and operator: the checks
    finish, and each finding is located inside the file."""
    import json

    rng = random.Random(20261122)
    linted = 0
    for _ in range(60):
        crits = [{"id": f"c{i}", "kind": rng.choice(["inclusion", "exclusion"]), "text": "x",
                  "logic": _random_node(rng)} for i in range(rng.randint(1, 3))]
        text = json.dumps({"trial": "NCT06111625", "title": "t", "version": "1",
                           "source": "https://x", "criteria": crits}, indent=1)
        doc, errors = loads(text, "f.yaml")
        if doc is None or errors or schema_errors(doc):
            continue
        trial, errors = parse(doc)
        if trial is None:
            continue
        n_lines = text.count("\n") + 1
        for f in Linter(doc, trial).run():
            assert 1 <= f.line <= n_lines and f.code.startswith("lint."), f
        linted += 1
    assert linted >= 40


@pytest.mark.parametrize("inc, exc, conflict", [
    # the newest ECOG within 30 days is the newest ECOG: nobody passes both
    ('{fact: ecog, op: "<=", value: 2, within_days: 30}', '{fact: ecog, op: "<=", value: 2}',
     True),
    ('{fact: ecog, op: "<=", value: 2, within_days: 30}',
     '{fact: ecog, op: "<=", value: 2, within_days: 90}', True),
    # satisfiable over two windows: no finding
    ('{fact: ecog, op: "<=", value: 2, within_days: 30}', '{fact: ecog, op: ">", value: 3}',
     False),
    # an old positive BCR-ABL1 sticks in the longer window only: a negative within 30 days
    # and no positive ever is possible
    ('{fact: bcr_abl1, op: "==", value: negative, within_days: 30}',
     '{fact: bcr_abl1, op: "==", value: positive}', False),
    # a positive within 30 days is a positive ever
    ('{fact: bcr_abl1, op: "==", value: positive, within_days: 30}',
     '{fact: bcr_abl1, op: "==", value: positive}', True),
    # no DVT within 90 days, none ever: possible
    ('{not: {condition: dvt, within_days: 90}}', '{condition: dvt}', False),
    # a DVT within 90 days is a DVT ever
    ('{condition: dvt, within_days: 90}', '{condition: dvt}', True),
])
def test_one_element_over_two_windows_is_linked(inc: str, exc: str, conflict: bool) -> None:
    found = lint_text(crit(inc, cid="inc_a") + crit(exc, "exclusion", cid="exc_b"))
    assert any(f.startswith("lint.no_one_eligible@") for f in found) == conflict, found


def test_sampled_combinations_respect_window_links_without_emptying() -> None:
    """Too many combinations for all: the sample draws each linked longer window from its
    shorter one. Drawn independently, almost every draw broke a link, the sample was empty,
    and 'no one eligible (seen in 0 sampled combinations)' was reported on a satisfiable pair
    (review of the day's code)."""
    labs = [("alt", "x_uln: 3", "x_uln: 5"), ("ast", "x_uln: 3", "x_uln: 5"),
            ("bilirubin_total", "x_uln: 1.5", "x_uln: 3"), ("creatinine", "x_uln: 1.5", "x_uln: 3"),
            ("bun", "x_uln: 1.5", "x_uln: 3"), ("ecog", "value: 2", "value: 3")]
    inc = "{all: [" + ", ".join(f'{{fact: {e}, op: "<=", {a}, within_days: 14}}'
                                for e, a, _ in labs) + "]}"
    exc = "{any: [" + ", ".join(f'{{fact: {e}, op: ">", {b}}}' for e, _, b in labs) + "]}"
    found = lint_text(crit(inc, cid="inc_organ") + crit(exc, "exclusion", cid="exc_organ"))
    assert not [f for f in found if f.split("@")[0] in (
        "lint.no_one_eligible", "lint.never_met", "lint.always_met")], found
