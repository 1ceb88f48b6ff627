"""durable_rules' fixed limits, found by probing the engine with valid rule files.

* a matching walk keeps a stack of 64 entries: a trial whose tests can be true 64 at a time
  crashed the process (segfault / abort) instead of screening; the engine now splits such a
  trial into several rulesets (`engine.partition`), and compile refuses one criterion too wide
  on its own;
* at most 15 all / any / between / in nodes per rule: a 16th made durable_rules refuse the whole
  ruleset at start-up (every trial of the directory failed to load); compile now gives a located
  error.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml

from screener.compile import MAX_STACK, stack_bound
from screener.errors import RuleFileError
from screener.screen import Screener

AS_OF = date(2026, 1, 15)


def write_trial(tmp_path: Path, criteria: list[dict[str, Any]], tid: str = "NCT00000001") -> Path:
    f = tmp_path / f"{tid}.yaml"
    f.write_text(yaml.safe_dump({"trial": tid, "title": "limits", "version": "1",
                                 "source": "https://example.org", "criteria": criteria},
                                sort_keys=False))
    return f


def lvef(v: Any) -> dict[str, Any]:
    return {"observations": [{"element": "lvef", "value": v, "unit": "%",
                              "date": "2026-01-10"}]}


def both(f: Path) -> tuple[Screener, Screener]:
    return Screener.from_paths([str(f)]), Screener.from_paths([str(f)], engine="reference")


def same_verdicts(rete: Screener, ref: Screener, tid: str, patients: list[dict[str, Any]]
                  ) -> None:
    for p in patients:
        a, b = rete.screen(tid, p, AS_OF), ref.screen(tid, p, AS_OF)
        assert [c["verdict"] for c in a["criteria"]] == [c["verdict"] for c in b["criteria"]]
        assert a["status"] == b["status"]


def test_many_criteria_true_at_once_are_split_over_several_rulesets(tmp_path: Path) -> None:
    crits = [{"id": f"inc_lvef_{k}", "kind": "inclusion", "text": f"LVEF at least {k}%",
              "logic": {"fact": "lvef", "op": ">=", "value": k}} for k in range(1, 71)]
    f = write_trial(tmp_path, crits)
    rete, ref = both(f)
    try:
        rs = rete.get("NCT00000001").ruleset
        assert rs is not None and rs.parts > 1
        definition = rete.get("NCT00000001").definition
        assert stack_bound(list(definition.values())) > MAX_STACK
        # at 10%, 60 of the F rules are true at once: this crashed the process
        same_verdicts(rete, ref, "NCT00000001",
                      [lvef(v) for v in (0, 1, 10, 35, 69.5, 70, 100)] + [{}] * 300)
    finally:
        rete.close()


def test_wide_all_criteria_do_not_crash(tmp_path: Path) -> None:
    """13 inclusions, each all of five limits: their F rules are $or of five branches."""
    crits = [{"id": f"inc_organs_{i}", "kind": "inclusion", "text": f"organs {i}",
              "logic": {"all": [{"fact": "lvef", "op": ">=", "value": 50 + i},
                                {"fact": "fev1_pct_pred", "op": ">=", "value": 60 + i},
                                {"fact": "fvc_pct_pred", "op": ">=", "value": 60 + i},
                                {"fact": "dlco_pct_pred", "op": ">=", "value": 50 + i},
                                {"fact": "creatinine_clearance", "op": ">=", "value": 60 + i}]}}
             for i in range(13)]
    f = write_trial(tmp_path, crits)
    rete, ref = both(f)
    low = {"observations": [
        {"element": e, "value": 10, "unit": u, "date": "2026-01-10"}
        for e, u in (("lvef", "%"), ("fev1_pct_pred", "%"), ("fvc_pct_pred", "%"),
                     ("dlco_pct_pred", "%"), ("creatinine_clearance", "mL/min"))]}
    try:
        same_verdicts(rete, ref, "NCT00000001", [low, {}, lvef(55)])
        assert rete.screen("NCT00000001", low, AS_OF)["status"] == "ineligible"
    finally:
        rete.close()


def test_a_criterion_with_too_many_logic_nodes_is_a_located_error(tmp_path: Path) -> None:
    leaves = [{"fact": "lvef", "op": "between", "value": [2 * k, 2 * k + 1]} for k in range(15)]
    f = write_trial(tmp_path, [{"id": "inc_ranges", "kind": "inclusion", "text": "ranges",
                                "logic": {"any": leaves}}])
    with pytest.raises(RuleFileError) as e:
        Screener.from_paths([str(f)])
    (err,) = e.value.errors
    assert err.code == "compile.too_complex" and err.line == 6 and "inc_ranges" in err.message
    # fourteen load and screen
    f = write_trial(tmp_path, [{"id": "inc_ranges", "kind": "inclusion", "text": "ranges",
                                "logic": {"any": leaves[:14]}}])
    rete, ref = both(f)
    try:
        same_verdicts(rete, ref, "NCT00000001", [lvef(3), lvef(3.5), {}])
    finally:
        rete.close()


def test_a_single_criterion_too_wide_for_the_engine_is_refused(tmp_path: Path) -> None:
    crits = [{"id": "inc_any", "kind": "inclusion", "text": "any",
              "logic": {"any": [{"fact": "lvef", "op": "<", "value": k} for k in range(60)]}}]
    with pytest.raises(RuleFileError) as e:
        Screener.from_paths([str(write_trial(tmp_path, crits))])
    # 60 one-leaf branches: too many root tests for the engine's matching stack (one
    # expression, so not too_complex)
    assert [x.code for x in e.value.errors] == ["compile.too_wide"]


def test_lint_errors_keep_a_trial_from_being_served(tmp_path: Path) -> None:
    """A manual criterion with on_unknown was 'eligible' without any attestation: `screener
    check` called it an error, but the server and `screen` loaded it anyway."""
    f = write_trial(tmp_path, [{"id": "exc_investigator", "kind": "exclusion",
                                "text": "investigator discretion", "manual": True,
                                "on_unknown": {"verdict": "not_met", "reason": "assume fine"}}])
    with pytest.raises(RuleFileError) as e:
        Screener.from_paths([str(f)])
    assert [x.code for x in e.value.errors] == ["lint.manual_on_unknown"]


def test_an_attested_criterion_is_not_pending(screener: Screener) -> None:
    """Attested, but its applicability unknown (sex missing): unknown, and not listed as waiting
    for the attestation it has."""
    r = screener.screen("NCT06930105", {}, date(2026, 11, 22), {"exc_pregnancy_plans": "met"})
    c = next(c for c in r["criteria"] if c["id"] == "exc_pregnancy_plans")
    assert c["verdict"] == "unknown" and c["attested"] == "met"
    assert {m["element"] for m in c["missing"]} == {"sex", "childbearing_potential"}
    assert "exc_pregnancy_plans" not in r["pending_attestations"]
