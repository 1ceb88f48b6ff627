"""Boundary cases per seed trial, pinned in fixtures/cases/*.yaml (tests are data).

Each case is screened through the Rete path and the reference evaluator; both must give the
pinned verdicts and the same full report (apart from the engine label).
"""

from __future__ import annotations

import copy
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml

from screener.report import dumps
from screener.screen import Screener

CASES = Path(__file__).resolve().parents[1] / "fixtures" / "cases"


def build_patient(base: dict[str, Any], case: dict[str, Any]) -> dict[str, Any]:
    if "replace" in case:
        return copy.deepcopy(case["replace"])
    p = copy.deepcopy(base)
    p.update(copy.deepcopy(case.get("set", {})))
    for element, change in case.get("observations", {}).items():
        obs = [o for o in p["observations"] if o["element"] != element]
        if change is not None:
            old = next((o for o in p["observations"] if o["element"] == element),
                       {"element": element})
            new = {**old, **change}
            new = {k: v for k, v in new.items() if v is not None}
            obs.append(new)
        p["observations"] = obs
    removed = set(case.get("remove_conditions", []))
    p["conditions"] = [c for c in p.get("conditions", []) if c.get("element") not in removed]
    p["conditions"] += copy.deepcopy(case.get("conditions", []))
    p["exposures"] = p.get("exposures", []) + copy.deepcopy(case.get("exposures", []))
    return p


def load_cases() -> list[Any]:
    params = []
    for f in sorted(CASES.glob("*.yaml")):
        doc = yaml.safe_load(f.read_text())
        for case in doc["cases"]:
            params.append(pytest.param(doc, case, id=f"{doc['trial']}-{case['name']}"))
    return params


@pytest.mark.parametrize("doc,case", load_cases())
def test_case(doc: dict[str, Any], case: dict[str, Any], screener: Screener,
              reference_screener: Screener) -> None:
    patient = build_patient(doc["base"], case)
    attest = case.get("attest", doc.get("attest"))
    as_of = date.fromisoformat(case.get("as_of", doc["as_of"]))
    report = screener.screen(doc["trial"], patient, as_of, attest)
    got = {c["id"]: c["verdict"] for c in report["criteria"]}
    for cid, verdict in case.get("expect", {}).items():
        assert cid in got, f"unknown criterion {cid} in case file"
        assert got[cid] == verdict, (cid, next(c for c in report["criteria"] if c["id"] == cid))
    if "status" in case:
        unfavourable = [c for c in report["criteria"] if not c["favourable"]]
        assert report["status"] == case["status"], unfavourable
    ref = reference_screener.screen(doc["trial"], patient, as_of, attest)
    ref["engine"] = report["engine"]
    assert dumps(ref) == dumps(report)


def test_every_criterion_has_a_boundary_case() -> None:
    """Each data-driven criterion of each seed trial appears in some case's expectations."""
    s = Screener.from_paths([str(CASES.parents[1] / "rules")], engine="reference")
    for f in sorted(CASES.glob("*.yaml")):
        doc = yaml.safe_load(f.read_text())
        seen = {cid for case in doc["cases"] for cid in case.get("expect", {})}
        trial = s.get(doc["trial"]).trial
        missing = [c.id for c in trial.criteria if not c.manual and c.id not in seen]
        assert not missing, f"{doc['trial']}: no case pins {missing}"
