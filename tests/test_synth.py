"""Synthetic registry: determinism, validity against the canonical format and the element
catalogue, plausibility, missingness, and speed."""

from __future__ import annotations

import json
from collections import Counter
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from screener.elements import ELEMENTS, SNOMED, condition_for, normalise_unit
from screener.synth import MISSING, generate, write_ndjson

AS_OF = "2026-11-22"
N = 4000


@pytest.fixture(scope="module")
def cohort() -> list[dict[str, Any]]:
    return list(generate(N, 42, AS_OF))


def _dump(p: dict[str, Any]) -> str:
    return json.dumps(p, sort_keys=True, separators=(",", ":"))


def test_deterministic() -> None:
    a = [_dump(p) for p in generate(1000, 7, AS_OF)]
    b = [_dump(p) for p in generate(1000, 7, AS_OF)]
    assert a == b
    assert [_dump(p) for p in generate(300, 7, AS_OF)] == a[:300]  # prefix of a longer run
    c = [_dump(p) for p in generate(1000, 8, AS_OF)]
    assert sum(x != y for x, y in zip(a, c, strict=True)) > 900
    d = [_dump(p) for p in generate(1000, 7, "2025-01-01")]
    assert d != a


def test_ids(cohort: list[dict[str, Any]]) -> None:
    assert [p["id"] for p in cohort[:3]] == ["synth-000000001", "synth-000000002",
                                              "synth-000000003"]
    assert len({p["id"] for p in cohort}) == N


def test_write_ndjson(tmp_path: Path) -> None:
    assert write_ndjson(tmp_path / "a.ndjson", 1234, 3, AS_OF) == 1234
    write_ndjson(tmp_path / "b.ndjson", 1234, 3, AS_OF)
    data = (tmp_path / "a.ndjson").read_bytes()
    assert data == (tmp_path / "b.ndjson").read_bytes()
    lines = data.decode().splitlines()
    assert lines == [_dump(p) for p in generate(1234, 3, AS_OF)]
    assert data.endswith(b"\n") and not data.endswith(b"\n\n")


def _iso(s: str) -> date:
    return date.fromisoformat(s[:10])


def test_valid_canonical_patients(cohort: list[dict[str, Any]]) -> None:
    as_of = date.fromisoformat(AS_OF)
    for p in cohort:
        assert set(p) <= {"id", "birth_date", "age", "sex", "observations", "conditions",
                          "exposures", "reviewed"}
        assert ("birth_date" in p) != ("age" in p)
        if "birth_date" in p:
            assert _iso(p["birth_date"]) < as_of
        assert p.get("sex", "female") in ("female", "male")
        for o in p.get("observations", []):
            e = ELEMENTS[o["element"]]
            assert e.kind in ("quantity", "coded", "boolean"), o
            assert _iso(o["date"]) <= as_of
            assert o.get("status", "final") in ("final", "preliminary")
            if e.kind == "quantity":
                assert normalise_unit(o["unit"]) in e.units, o
                assert isinstance(o["value"], (int, float)) and not isinstance(o["value"], bool)
                if e.integer:
                    assert isinstance(o["value"], int), o
                rr = o.get("reference_range")
                if rr is not None:
                    assert e.uln and rr["unit"] == o["unit"] and 0 <= rr["low"] < rr["high"]
            elif e.kind == "coded":
                assert o["value"] in e.values, o
            else:
                assert isinstance(o["value"], bool), o
        for c in p.get("conditions", []):
            name = c.get("element") or condition_for(c["codes"][0]["system"],
                                                     c["codes"][0]["code"])
            assert name is not None and ELEMENTS[name].kind == "condition", c
            if "codes" in c:
                assert c["codes"][0]["system"] == SNOMED
            if c.get("present") is False:
                assert _iso(c["date"]) <= as_of
                continue
            assert _iso(c["onset"]) <= as_of
            if "abatement" in c:
                assert _iso(c["onset"]) <= _iso(c["abatement"]) <= as_of
        for x in p.get("exposures", []):
            assert ELEMENTS[x["element"]].kind == "exposure"
            assert ("days" in x) or (_iso(x["start"]) <= _iso(x["end"]) <= as_of)
        for k, d in p.get("reviewed", {}).items():
            assert k in ("conditions", "exposures") and _iso(d) <= as_of


def test_values_plausible(cohort: list[dict[str, Any]]) -> None:
    for p in cohort:
        for o in p.get("observations", []):
            e = ELEMENTS[o["element"]]
            if e.kind != "quantity":
                continue
            assert e.plausible is not None
            canonical = o["value"] * e.units[normalise_unit(o["unit"])]
            assert e.plausible[0] <= canonical <= e.plausible[1], o
        for x in p.get("exposures", []):
            plaus = ELEMENTS["blinatumomab"].plausible
            assert plaus is not None and plaus[0] <= x.get("days", 1) <= plaus[1]
        if "age" in p:
            assert 16 <= p["age"] <= 75


def _present(cohort: list[dict[str, Any]], name: str) -> list[bool]:
    """For each full patient (female-only elements: each female), is `name` recorded?"""
    out = []
    for p in cohort:
        if "observations" not in p:
            continue
        if name in ("childbearing_potential", "pregnant") and p["sex"] != "female":
            continue
        out.append(any(o["element"] == name for o in p["observations"]))
    return out


def test_missingness(cohort: list[dict[str, Any]]) -> None:
    minimal = [p for p in cohort if set(p) == {"id", "age", "conditions"}]
    assert 0.015 * N < len(minimal) < 0.05 * N
    assert all(p["conditions"][0]["element"] == "b_all" for p in minimal)
    for name, miss in MISSING.items():
        flags = _present(cohort, name)
        absent = 1 - sum(flags) / len(flags)
        # Each element absent 5-30% of the time, and at the rate the table says (this also
        # catches a MISSING entry unpacked into the wrong flag).
        assert 0.05 <= miss <= 0.30
        assert abs(absent - miss) < 0.04, (name, absent, miss)


def _age(born: date, on: date) -> int:
    return on.year - born.year - ((on.month, on.day) < (born.month, born.day))


def test_realistic_shape(cohort: list[dict[str, Any]]) -> None:
    obs = [o for p in cohort for o in p.get("observations", [])]
    alt = [o for o in obs if o["element"] == "alt" and "reference_range" in o]
    assert {o["reference_range"]["high"] for o in alt} == {40, 45, 50, 56}
    assert {o["unit"] for o in alt} == {"U/L"}
    elevated = sum(o["value"] > o["reference_range"]["high"] for o in alt) / len(alt)
    assert 0.05 < elevated < 0.3
    for name, units in (("bilirubin_total", {"mg/dL", "umol/L"}),
                        ("creatinine", {"mg/dL", "umol/L"}), ("bun", {"mg/dL", "mmol/L"})):
        assert {o["unit"] for o in obs if o["element"] == name} == units
    bcr = Counter(o["value"] for o in obs if o["element"] == "bcr_abl1")
    assert 0.20 < bcr["positive"] / sum(bcr.values()) < 0.30
    ecog = Counter(o["value"] for o in obs if o["element"] == "ecog")
    assert (ecog[0] + ecog[1] + ecog[2]) / sum(ecog.values()) > 0.8 and ecog[3] and ecog[4]
    hct = {o["value"] for o in obs if o["element"] == "hct_ci"}
    assert hct == set(range(7))
    sero = Counter((o["element"], o["value"]) for o in obs if o["element"] == "hbsag")
    assert sero[("hbsag", "negative")] > 20 * sero[("hbsag", "positive")] > 0
    as_of = date.fromisoformat(AS_OF)
    ages = [(as_of - date.fromisoformat(o["date"])).days for o in obs]
    recent = sum(a <= 60 for a in ages) / len(ages)
    assert 0.7 < recent < 0.95  # mostly fresh, some stale
    years = [_age(date.fromisoformat(p["birth_date"]), as_of) for p in cohort
             if "birth_date" in p]
    assert min(years) == 16 and max(years) == 75
    assert sum(y > 60 for y in years) > 0.05 * len(years)
    for name in ("hbv_dna", "hcv_rna", "lvef", "fev1_pct_pred", "fvc_pct_pred",
                 "dlco_pct_pred", "marrow_blasts_pct", "cd19_pct", "disease_status",
                 "donor_type", "donor_hla_match", "cns_status", "pregnant",
                 "childbearing_potential"):
        assert any(o["element"] == name for o in obs), name
    males_with_pregnancy = [p for p in cohort if p.get("sex") == "male" and any(
        o["element"] == "pregnant" for o in p["observations"])]
    assert not males_with_pregnancy
    conds = Counter(c.get("element") or condition_for(SNOMED, c["codes"][0]["code"])
                    for p in cohort for c in p["conditions"])
    for name in ("dvt", "pulmonary_embolism", "arterial_thrombosis", "heart_failure",
                 "myocardial_infarction", "gi_bleeding"):
        assert conds[name] > 0, name
    assert conds["b_all"] == N
    blina = sum(bool(p.get("exposures")) for p in cohort)
    assert 0.05 * N < blina < 0.3 * N
    reviewed = sum("conditions" in p.get("reviewed", {}) for p in cohort)
    assert 0.6 * N < reviewed < 0.9 * N
