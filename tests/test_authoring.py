"""Authoring tools: `screener test` (examples in rule files), `screener explain`, and the
editor-facing schema (a description and an example on every keyword)."""

from __future__ import annotations

import json
import re
from io import StringIO
from pathlib import Path

import pytest

from screener import cli
from screener.authoring import collect
from screener.load import load
from screener.schema import build

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "rules"
PATIENTS = ROOT / "fixtures" / "patients"


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = StringIO(), StringIO()
    code = cli.run(cli.parse_args(list(argv)), out, err)
    return code, out.getvalue(), err.getvalue()


def seed_copy(tmp_path: Path, trial: str, *edits: tuple[str, str]) -> Path:
    """A copy of a seed rule file with exact text edits (each must apply exactly once)."""
    text = (RULES / f"{trial}.yaml").read_text(encoding="utf-8")
    for old, new in edits:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    f = tmp_path / f"{trial}.yaml"
    f.write_text(text, encoding="utf-8")
    return f


# ---- screener test -------------------------------------------------------------------------

def test_seed_examples_pass() -> None:
    code, out, err = run_cli("test", str(RULES))
    assert code == 0, out
    m = re.fullmatch(r"PASS: (\d+)/(\d+)\n", out)
    assert m and m.group(1) == m.group(2) and int(m.group(1)) >= 100, out
    assert err == ""


def test_seed_examples_pass_on_the_reference_evaluator_too() -> None:
    code, out, _ = run_cli("test", "--engine", "reference", str(RULES))
    assert code == 0, out


@pytest.mark.parametrize("trial", ["NCT06111625", "NCT06930105"])
def test_every_seed_criterion_has_examples(trial: str) -> None:
    doc, errors = load(str(RULES / f"{trial}.yaml"))
    assert doc is not None and not errors
    examples = [ex for ex, _ in collect(doc)]
    ids = [c["id"] for c in doc.data["criteria"]]
    verdicts: dict[str, set[str]] = {i: set() for i in ids}
    for ex in examples:
        if ex.criterion is not None:
            assert ex.verdict is not None
            verdicts[ex.criterion].add(ex.verdict)
    assert all(verdicts[i] for i in ids), [i for i in ids if not verdicts[i]]
    # each criterion is shown both resolving and not resolving the way it could
    assert all(len(v) >= 2 for v in verdicts.values()), verdicts
    statuses = {ex.status for ex in examples if ex.criterion is None}
    assert statuses == {"eligible", "ineligible", "needs_review"}


def test_wrong_criterion_expectation_fails_with_a_readable_diff(tmp_path: Path) -> None:
    f = seed_copy(tmp_path, "NCT06930105",
                  ("{name: 60 is still in, patient: {age: 60}, verdict: met}",
                   "{name: 60 is still in, patient: {age: 60}, verdict: not_met}"))
    code, out, _ = run_cli("test", str(f))
    assert code == 1
    lines = out.splitlines()
    start = next(i for i, x in enumerate(lines) if x.startswith("FAIL "))
    assert re.fullmatch(rf"FAIL {re.escape(str(f))}:\d+:\d+ inc_age: '60 is still in'",
                        lines[start])
    block = "\n".join(lines[start:start + 8])
    assert "  verdict   expected: not_met\n            actual:   met" in block
    assert "T  age between 18 and 60" in block       # the leaf and its value
    assert "age = 60 [age (given)]" in block         # the value used and where it came from
    assert "=> logic true -> met" in block
    assert lines[-2:] == [f"PASS: {_count(out) - 1}/{_count(out)}", f"FAIL: 1/{_count(out)}"]


def _count(out: str) -> int:
    m = re.search(r"PASS: \d+/(\d+)", out)
    assert m
    return int(m.group(1))


def test_wrong_trial_status_shows_the_criteria_in_the_way(tmp_path: Path) -> None:
    f = seed_copy(tmp_path, "NCT06111625",
                  ("    status: needs_review\n    verdicts: {inc_age: met, inc_diagnosis: met,",
                   "    status: eligible\n    verdicts: {inc_age: met, inc_diagnosis: met,"))
    code, out, _ = run_cli("test", "--run", "only age", str(f))
    assert code == 1
    assert "FAIL " in out and "trial: 'only age and diagnosis known'" in out
    assert "  status    expected: eligible\n            actual:   needs_review" in out
    assert "  exc_leukemia_burden (exclusion) is unknown:" in out
    assert "marrow_blasts_pct: missing: no marrow_blasts_pct result" in out
    assert out.endswith("PASS: 0/1\nFAIL: 1/1\n")


def test_wrong_pinned_verdict_in_a_trial_example(tmp_path: Path) -> None:
    f = seed_copy(tmp_path, "NCT06111625",
                  ("verdicts: {exc_leukemia_burden: met, inc_age: unknown}",
                   "verdicts: {exc_leukemia_burden: met, inc_age: met}"))
    code, out, _ = run_cli("test", "--run", "^trial:", str(f))
    assert code == 1
    assert "  inc_age  expected: met\n           actual:   unknown" in out
    assert "age: missing: no usable birth date or age" in out


def test_data_issues_of_the_example_patient_are_shown(tmp_path: Path) -> None:
    f = seed_copy(tmp_path, "NCT06111625",
                  ("value: 9.9, unit: \"%\"", "value: 9.9, unit: \"percnt\""))
    code, out, _ = run_cli("test", "--run", "9.9", str(f))
    assert code == 1
    assert "data issues in the example patient:" in out
    assert "unknown unit 'percnt' for marrow_blasts_pct" in out


def test_files_whose_examples_are_malformed_are_not_run(tmp_path: Path) -> None:
    f = seed_copy(tmp_path, "NCT06111625",
                  ("attest: {inc_disease_records: met, exc_organ",
                   "attest: {inc_disease_record: met, exc_organ"))
    code, out, _ = run_cli("test", str(f))
    assert code == 1
    assert "error[example.unknown_criterion]" in out and "did you mean 'inc_disease_records'" \
        in out
    assert "1 file(s) could not be tested" in out


def test_run_filter_and_verbose() -> None:
    code, out, _ = run_cli("test", "-v", "--run", "exc_hbv:", str(RULES))
    assert code == 0
    lines = out.splitlines()
    assert all(x.startswith("PASS ") and " exc_hbv: " in x for x in lines[:-1])
    assert lines[-1] == f"PASS: {len(lines) - 1}/{len(lines) - 1}"


def test_no_examples_is_a_failure(tmp_path: Path) -> None:
    f = tmp_path / "t.yaml"
    f.write_text("trial: NCT06111625\ntitle: t\nversion: '1'\nsource: https://x\ncriteria:\n"
                 "  - {id: inc_age, kind: inclusion, text: x, logic: "
                 "{fact: age, op: '>=', value: 16}}\n")
    code, out, err = run_cli("test", str(f))
    assert code == 1 and "no examples found" in err


# ---- screener explain ----------------------------------------------------------------------

def test_explain_traces_leaves_values_sources_and_unknown(tmp_path: Path) -> None:
    p = tmp_path / "p.json"
    p.write_text(json.dumps({
        "id": "pt-7", "birth_date": "1985-03-14", "sex": "female",
        "observations": [{"element": "bun", "value": 15, "unit": "mg/dL",
                          "reference_range": {"high": 20}, "date": "2026-01-10",
                          "source": "Observation/bun-1"}]}))
    code, out, _ = run_cli("explain", "--trial", "NCT06930105", str(p), "--as-of", "2026-01-15",
                           "--criterion", "inc_renal")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("NCT06930105 v1.0.0  as_of 2026-01-15  patient pt-7  status:")
    body = "\n".join(lines[2:])
    assert re.search(r"""
inc_renal  inclusion  verdict: unknown  \(against the patient\)
  text: Kidney: BUN and serum creatinine ≤1\.25× ULN\.
  logic:
    U  all: no part is false and part 2 is unknown -> unknown  \(line \d+\)
      1\. T  bun <= 1\.25 x ULN \(newest within 30 days\)  \(line \d+\)
              bun = 15 mg/dL = 0\.75 x ULN 20 mg/dL on 2026-01-10 \[Observation/bun-1\]
      2\. U  creatinine <= 1\.25 x ULN \(newest within 30 days\)  \(line \d+\)
              creatinine: missing: no creatinine result
  => logic unknown -> unknown
  would resolve it: creatinine \(no creatinine result\)""", body), body


def test_explain_applicability_and_manual(tmp_path: Path) -> None:
    p = tmp_path / "p.json"
    p.write_text(json.dumps({"sex": "female"}))
    code, out, _ = run_cli("explain", "--trial", "NCT06930105", str(p), "--as-of", "2026-01-15",
                           "--criterion", "inc_contraception", "--attest", "inc_contraception")
    assert code == 0
    assert "  applies_if:\n    U  any: no part is true and part 2 is unknown -> unknown" in out
    assert ("=> manual criterion: attested met; applies_if unknown, but met is in the "
            "patient's favour either way -> met") in out


@pytest.mark.parametrize("name", ["complete", "sparse", "excluded"])
@pytest.mark.parametrize("trial", ["NCT06111625", "NCT06930105"])
def test_explain_agrees_with_the_report_on_every_criterion(name: str, trial: str) -> None:
    """The trace recomputes each verdict from T/F/U; it must land where the report does."""
    patient = PATIENTS / f"{name}.json"
    code, out, err = run_cli("explain", "--trial", trial, str(patient), "--as-of", "2026-11-22")
    assert code == 0, err
    assert "!!" not in out, out
    _, rep, _ = run_cli("screen", "--trial", trial, str(patient), "--as-of", "2026-11-22",
                        "--format", "json")
    report = json.loads(rep)
    assert f"status: {report['status'].upper()}" in out.splitlines()[0]
    for c in report["criteria"]:
        assert f"\n{c['id']}  {c['kind']}  verdict: {c['verdict']}" in out, c["id"]


def test_explain_unknown_criterion_suggests() -> None:
    code, _, err = run_cli("explain", "--trial", "NCT06930105",
                           str(PATIENTS / "sparse.json"), "--as-of", "2026-11-22",
                           "--criterion", "inc_agee")
    assert code == 2 and "did you mean 'inc_age'" in err


# ---- editor support ------------------------------------------------------------------------

def _keywords(node: object, path: str = "") -> list[tuple[str, dict[str, object]]]:
    out: list[tuple[str, dict[str, object]]] = []
    if isinstance(node, dict):
        for k, v in node.get("properties", {}).items():
            out.append((f"{path}/{k}", v))
        for k, v in node.items():
            out += _keywords(v, f"{path}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _keywords(v, f"{path}/{i}")
    return out


def test_every_schema_keyword_has_a_description_and_an_example() -> None:
    schema = build()
    kws = _keywords(schema)
    assert len(kws) > 40
    for path, spec in kws:
        assert spec.get("description"), path
        assert spec.get("examples"), path
    for name, spec in schema["$defs"].items():
        assert spec.get("description") and spec.get("examples"), name


def test_schema_examples_are_valid_against_their_keyword() -> None:
    """Hover examples that do not validate would teach the wrong thing."""
    from jsonschema import Draft202012Validator

    schema = build()
    for path, spec in _keywords(schema):
        sub = {**spec, "$defs": schema["$defs"]}
        for ex in spec["examples"]:  # type: ignore[union-attr]
            errors = list(Draft202012Validator(sub).iter_errors(ex))
            assert not errors, (path, ex, errors[0].message)


def test_rule_files_reference_the_shipped_schema() -> None:
    for f in RULES.glob("*.yaml"):
        first = f.read_text(encoding="utf-8").splitlines()[0]
        assert first == "# yaml-language-server: $schema=../screener/schema/trial.schema.json"
        assert (f.parent / "../screener/schema/trial.schema.json").resolve().exists()


# ---- docs/rules.md -------------------------------------------------------------------------

DOC = ROOT / "docs" / "rules.md"


def test_the_tutorial_criterion_checks_and_its_examples_pass(tmp_path: Path) -> None:
    text = DOC.read_text(encoding="utf-8")
    m = re.search(r"<!-- tutorial-result[^>]*-->\n```yaml\n(.*?)```", text, re.S)
    assert m, "tutorial result block not found"
    f = tmp_path / "NCT06930105.yaml"
    f.write_text("trial: NCT06930105\ntitle: t\nversion: '1'\nsource: https://x\ncriteria:\n"
                 + m.group(1), encoding="utf-8")
    code, out, _ = run_cli("check", str(f))
    assert code == 0 and "0 error(s), 0 warning(s)" in out, out
    code, out, _ = run_cli("test", str(f))
    assert code == 0 and out == "PASS: 6/6\n", out


def test_docs_list_every_check_and_every_data_element() -> None:
    from screener.elements import ELEMENTS
    from screener.lint import CODES

    text = DOC.read_text(encoding="utf-8")
    assert not [c for c in CODES if f"`{c}`" not in text]
    catalogue = text + (ROOT / "docs" / "data-elements.md").read_text(encoding="utf-8")
    assert not [n for n in ELEMENTS if f"`{n}`" not in catalogue]
