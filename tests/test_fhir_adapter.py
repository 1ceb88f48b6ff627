"""FHIR R4 adapter (screener/adapters/fhir.py): real published examples and targeted cases.

The shared examples are read in place. The x ULN check walks the raw JSON with its own walker
and its own code table, so a mapping bug in the adapter cannot hide behind shared code.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from datetime import date
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from screener.adapters.fhir import bundle_to_patient, resources_to_patient
from screener.elements import ELEMENTS, PROJECT
from screener.normalize import prepare

EXAMPLES = Path(__file__).resolve().parents[2] / "shared" / "fhir-examples"
FILES = sorted(EXAMPLES.rglob("*.json")) if EXAMPLES.is_dir() else []

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
UCUM = "http://unitsofmeasure.org"


def _load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _check_shape(patient: dict[str, Any], issues: list[dict[str, str]]) -> None:
    assert isinstance(patient, dict)
    for key in ("observations", "conditions", "exposures"):
        assert isinstance(patient[key], list)
    for o in patient["observations"]:
        # an undated result is passed on without a date (the normalizer makes it unusable)
        assert o["element"] in ELEMENTS and "value" in o and isinstance(o.get("date", ""), str)
    for c in patient["conditions"]:
        assert ("element" in c) != ("codes" in c)
    for e in patient["exposures"]:
        assert e["element"] == "blinatumomab"
    for i in issues:
        assert set(i) == {"loc", "code", "msg"} and all(isinstance(v, str) for v in i.values())
        assert i["code"].startswith("fhir.")
        assert i["code"] != "fhir.internal_error", i
    json.dumps(patient)  # plain JSON, nothing exotic


# --- (a) every shared example goes through ----------------------------------------------------

@pytest.mark.parametrize("path", FILES or [None], ids=[p.name for p in FILES] or ["absent"])
def test_shared_example_maps_without_error(path: Path | None) -> None:
    if path is None:
        pytest.skip(f"shared FHIR examples not found at {EXAMPLES}")
    doc = _load(path)
    patient, issues = bundle_to_patient(doc)
    _check_shape(patient, issues)
    # Deterministic, and the input is not modified.
    again = _load(path)
    assert bundle_to_patient(again) == (patient, issues)
    assert again == doc


# --- (b) x ULN: value / reference-range high as in the raw JSON -------------------------------

#: Written out here rather than taken from screener.elements, so the check is independent.
ULN_CODES = {
    "1742-6": "alt", "1920-8": "ast",
    "1975-2": "bilirubin_total", "14631-6": "bilirubin_total", "42719-5": "bilirubin_total",
    "2160-0": "creatinine", "14682-9": "creatinine", "38483-4": "creatinine",
    "3094-0": "bun", "14937-7": "bun", "6299-2": "bun", "22664-7": "bun", "3091-6": "bun",
}


def _raw_uln_observations(node: Any, out: list[tuple[str, Fraction, Fraction]]) -> None:
    """Every Observation anywhere in the document (Bundle entries, nested Bundles, contained)
    that is an ULN analyte with a numeric value and a referenceRange high."""
    if isinstance(node, list):
        for x in node:
            _raw_uln_observations(x, out)
        return
    if not isinstance(node, dict):
        return
    if node.get("resourceType") == "Observation":
        analyte = None
        for c in (node.get("code") or {}).get("coding") or []:
            if c.get("system") == LOINC and c.get("code") in ULN_CODES:
                analyte = ULN_CODES[c["code"]]
        value = (node.get("valueQuantity") or {}).get("value")
        ranges = node.get("referenceRange") or []
        high = (ranges[0].get("high") or {}).get("value") if ranges else None
        if analyte and isinstance(value, (int, float)) and isinstance(high, (int, float)):
            out.append((analyte, Fraction(str(value)), Fraction(str(high))))
    for v in node.values():
        _raw_uln_observations(v, out)


def _per_subject(doc: Any) -> list[Any]:
    """A Bundle of examples about several patients (the adapter refuses to mix them: see
    fhir.several_subjects), nested Bundles included, as one collection Bundle per subject;
    a document about one subject as it is."""
    entries: list[Any] = []

    def walk(bundle: Any) -> None:
        for e in bundle.get("entry") or []:
            res = e.get("resource") if isinstance(e, dict) else None
            if isinstance(res, dict) and res.get("resourceType") == "Bundle":
                walk(res)
            elif isinstance(res, dict):
                entries.append(e)

    if not (isinstance(doc, dict) and doc.get("resourceType") == "Bundle"):
        return [doc]
    walk(doc)
    groups: dict[str, list[Any]] = {}
    for e in entries:
        subject = e["resource"].get("subject")
        key = subject.get("reference", "") if isinstance(subject, dict) else ""
        groups.setdefault(key, []).append(e)
    if len([k for k in groups if k]) <= 1:
        return [doc]
    return [{"resourceType": "Bundle", "type": "collection", "entry": es}
            for es in groups.values()]


def test_x_uln_ratio_matches_raw_json() -> None:
    if not FILES:
        pytest.skip(f"shared FHIR examples not found at {EXAMPLES}")
    total = 0
    files_with = set()
    for path in FILES:
        doc = _load(path)
        expected: list[tuple[str, Fraction, Fraction]] = []
        _raw_uln_observations(doc, expected)
        if not expected:
            continue
        files_with.add(path.name)
        got: Counter[tuple[str, Fraction, Fraction]] = Counter()
        patients = [p for p, _ in map(bundle_to_patient, _per_subject(doc))]
        for patient in patients:
            for o in patient["observations"]:
                high = (o.get("reference_range") or {}).get("high")
                if o["element"] in ULN_CODES.values() and high is not None:
                    got[(o["element"], Fraction(str(o["value"])), Fraction(str(high)))] += 1
        # the ratios the normalizer computes from the adapter's output (canonical units,
        # exact fractions), against value / high taken from the raw JSON above
        ratios: Counter[tuple[str, Fraction]] = Counter(
            (name, r.value / r.uln) for patient in patients
            for name, rs in prepare(patient, date(2100, 1, 1)).readings.items() for r in rs
            if r.uln is not None and isinstance(r.value, Fraction))
        for analyte, value, high in expected:
            key = (analyte, value, high)
            assert got[key] > 0, f"{path.name}: {analyte} {value} (high {high}) missing"
            got[key] -= 1
            assert ratios[(analyte, value / high)] > 0, (path.name, analyte, value / high)
            ratios[(analyte, value / high)] -= 1
            total += 1
    assert total > 0
    assert {"diagnosticreport-example-ghp.json", "diagnosticreport-examples-general.json",
            "observation-serum-bun.json", "observation-serum-creatinine.json"} <= files_with
    print(f"x ULN observations verified: {total} in {len(files_with)} files")


def test_uln_example_values() -> None:
    """Spot values from the HL7 general health profile and US Core, ratio by hand."""
    if not FILES:
        pytest.skip(f"shared FHIR examples not found at {EXAMPLES}")
    ghp, _ = bundle_to_patient(_load(EXAMPLES / "hl7-r4" / "diagnosticreport-example-ghp.json"))
    alt = next(o for o in ghp["observations"] if o["element"] == "alt")
    assert (alt["value"], alt["unit"], alt["reference_range"]) == (
        54, "U/L", {"low": 0, "high": 45, "unit": "U/L"})
    assert Fraction(str(alt["value"])) / Fraction(str(alt["reference_range"]["high"])) == \
        Fraction(6, 5)
    # the results carry no date of their own: the report's effectiveDateTime is used
    assert alt["date"] == "2015-08-16T06:40:17Z"
    creat, _ = bundle_to_patient(_load(EXAMPLES / "us-core" / "observation-serum-creatinine.json"))
    (o,) = creat["observations"]
    assert o["element"] == "creatinine" and o["value"] == 1
    assert o["reference_range"]["high"] == 0.6 and o["unit"] == "mg/dL"


# --- (c) targeted cases ------------------------------------------------------------------------

def obs(code: str, system: str = LOINC, **extra: Any) -> dict[str, Any]:
    r: dict[str, Any] = {"resourceType": "Observation", "id": "o1", "status": "final",
                         "code": {"coding": [{"system": system, "code": code}]},
                         "effectiveDateTime": "2026-11-01"}
    r.update(extra)
    return r


def bundle(*resources: Any) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "collection",
            "entry": [{"resource": r} for r in resources]}


def codes_of(issues: list[dict[str, str]]) -> list[str]:
    return [i["code"] for i in issues]


def test_observation_entered_in_error_is_passed_through() -> None:
    # Documented: the status travels unchanged; the normalizer decides it does not count.
    p, issues = bundle_to_patient(obs("1742-6", status="entered-in-error",
                                      valueQuantity={"value": 30, "unit": "U/L"}))
    assert p["observations"][0]["status"] == "entered-in-error"
    assert p["observations"][0]["value"] == 30


def test_medication_entered_in_error_is_dropped_with_issue() -> None:
    med = {"resourceType": "MedicationStatement", "status": "entered-in-error",
           "medicationCodeableConcept": {"text": "Blinatumomab"},
           "effectivePeriod": {"start": "2026-10-05", "end": "2026-10-11"}}
    p, issues = bundle_to_patient(med)
    assert p["exposures"] == []
    assert "fhir.not_given" in codes_of(issues)


def test_ucum_code_preferred_over_unit_text() -> None:
    p, _ = bundle_to_patient(obs("2160-0", valueQuantity={
        "value": 88, "unit": "micromol per litre", "system": UCUM, "code": "umol/L"}))
    assert p["observations"][0]["unit"] == "umol/L"


def test_unit_text_used_without_ucum_code() -> None:
    p, _ = bundle_to_patient(obs("2160-0", valueQuantity={"value": 1.1, "unit": "mg/dL"}))
    assert p["observations"][0]["unit"] == "mg/dL"
    # a code from another system is not UCUM: the text wins
    p, _ = bundle_to_patient(obs("2160-0", valueQuantity={
        "value": 1.1, "unit": "mg/dL", "system": "http://example.org/units", "code": "MGDL"}))
    assert p["observations"][0]["unit"] == "mg/dL"


def test_comparator_kept() -> None:
    p, _ = bundle_to_patient(obs("1742-6", valueQuantity={
        "value": 5, "comparator": "<", "unit": "U/L", "system": UCUM, "code": "U/L"}))
    o = p["observations"][0]
    assert (o["value"], o["comparator"], o["unit"]) == (5, "<", "U/L")


def test_reference_range_fields_present_only() -> None:
    p, _ = bundle_to_patient(obs("1742-6", valueQuantity={"value": 80, "unit": "U/L"},
                                 referenceRange=[{"high": {"value": 40, "unit": "U/L"}}]))
    assert p["observations"][0]["reference_range"] == {"high": 40, "unit": "U/L"}


def test_reference_range_non_normal_type_ignored() -> None:
    rr = [{"type": {"coding": [{"code": "treatment"}]}, "high": {"value": 999}},
          {"type": {"coding": [{"code": "normal"}]}, "high": {"value": 40, "code": "U/L",
                                                             "system": UCUM}}]
    p, _ = bundle_to_patient(obs("1742-6", valueQuantity={"value": 80, "unit": "U/L"},
                                 referenceRange=rr))
    assert p["observations"][0]["reference_range"] == {"high": 40, "unit": "U/L"}


@pytest.mark.parametrize(("code", "expected"), [("77386006", True), ("60001007", False)])
def test_pregnancy_status_coding(code: str, expected: bool) -> None:
    p, _ = bundle_to_patient(obs("82810-3", valueCodeableConcept={
        "coding": [{"system": SNOMED, "code": code}]}))
    assert p["observations"] == [{"element": "pregnant", "value": expected,
                                  "date": "2026-11-01", "status": "final",
                                  "source": "Observation/o1"}]


def test_pregnancy_status_unknown_is_unusable_with_issue() -> None:
    # Passed on with an unreadable value (not skipped): skipped, an older "not pregnant" decides.
    p, issues = bundle_to_patient(obs("82810-3", valueCodeableConcept={
        "coding": [{"system": SNOMED, "code": "152231000119106"}], "text": "Pregnancy unknown"}))
    (o,) = p["observations"]
    assert o["element"] == "pregnant" and o["date"] == "2026-11-01"
    assert isinstance(o["value"], str) and o["value"].startswith("unreadable")
    assert "fhir.unmapped_value" in codes_of(issues)


def test_ecog_answer_code_integer_and_quantity() -> None:
    answer = obs("89247-1", valueCodeableConcept={
        "coding": [{"system": LOINC, "code": "LA9624-3", "display": "Symptomatic, <50% in bed"}]})
    p, _ = bundle_to_patient(answer)
    assert p["observations"][0]["element"] == "ecog" and p["observations"][0]["value"] == 2
    p, _ = bundle_to_patient(obs("89247-1", valueInteger=1))
    assert p["observations"][0]["value"] == 1
    p, _ = bundle_to_patient(obs("89247-1", valueQuantity={"value": 0, "code": "{score}",
                                                           "system": UCUM}))
    assert p["observations"][0]["value"] == 0


def test_serology_positive_negative_and_detected() -> None:
    p, _ = bundle_to_patient(bundle(
        obs("5196-1", valueCodeableConcept={"coding": [{"system": SNOMED, "code": "260385009"}]}),
        obs("16128-1", valueString="Reactive"),
        obs("7918-6", valueString="Non-reactive"),
        obs("11259-9", valueCodeableConcept={"coding": [{"system": SNOMED,
                                                         "code": "260415000"}]}),
        obs("42595-9", valueQuantity={"value": 20, "unit": "[IU]/mL", "comparator": "<"}),
        obs("13952-7", valueQuantity={"value": 0.2, "unit": "{s_co_ratio}"},
            interpretation=[{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/"
                                         "v3-ObservationInterpretation", "code": "NEG"}]}]),
    ))
    got = [(o["element"], o["value"]) for o in p["observations"]]
    assert got == [("hbsag", "negative"), ("hcv_ab", "positive"), ("hiv_ab", "negative"),
                   ("hcv_rna", "not_detected"), ("hbv_dna", 20), ("hbcab", "negative")]
    assert p["observations"][4]["comparator"] == "<"


def test_not_detected_is_not_read_as_detected() -> None:
    p, _ = bundle_to_patient(obs("29610-3", valueString="not detected"))
    assert p["observations"][0]["value"] == "not_detected"


def test_condition_with_snomed_and_icd10cm() -> None:
    mapped = {"resourceType": "Condition", "id": "c1",
              "code": {"coding": [{"system": SNOMED, "code": "84114007"},
                                  {"system": ICD10CM, "code": "I50.9"}]},
              "onsetDateTime": "2020-01-02",
              "clinicalStatus": {"coding": [{"code": "active"}]},
              "verificationStatus": {"coding": [{"code": "confirmed"}]}}
    unmapped = {"resourceType": "Condition", "id": "c2",
                "code": {"coding": [{"system": SNOMED, "code": "39065001"},
                                    {"system": ICD10CM, "code": "T20.21"},
                                    {"system": "http://example.org/local", "code": "X"}]},
                "recordedDate": "2015-11-01",
                "abatementPeriod": {"start": "2015-11-01", "end": "2016-01-01"}}
    p, _ = bundle_to_patient(bundle(mapped, unmapped))
    assert p["conditions"] == [
        {"element": "heart_failure", "onset": "2020-01-02", "clinical_status": "active",
         "verification_status": "confirmed", "source": "Condition/c1"},
        {"codes": [{"system": SNOMED, "code": "39065001"}, {"system": ICD10CM, "code": "T20.21"}],
         "onset": "2015-11-01", "onset_from": "recordedDate", "abatement": "2016-01-01",
         "source": "Condition/c2"},
    ]


def test_refuted_condition_is_passed_through() -> None:
    cond = {"resourceType": "Condition", "code": {"coding": [{"system": SNOMED,
                                                              "code": "128053003"}]},
            "verificationStatus": {"coding": [{"code": "refuted"}]}, "onsetDateTime": "2026"}
    p, issues = bundle_to_patient(cond)
    assert p["conditions"] == [{"element": "dvt", "onset": "2026",
                                "verification_status": "refuted", "source": "$"}]


def test_condition_without_standard_code_is_counted_once() -> None:
    c = {"resourceType": "Condition", "code": {"text": "Asthma"}}
    p, issues = bundle_to_patient(bundle(c, c, c))
    assert p["conditions"] == []
    summary = [i for i in issues if i["code"] == "fhir.unmapped_condition"]
    assert len(summary) == 1 and summary[0]["msg"].startswith("3 x")


def test_unmapped_observations_one_issue_per_code() -> None:
    bp = obs("8480-6", valueQuantity={"value": 120, "unit": "mm[Hg]"})
    hr = obs("8867-4", valueQuantity={"value": 60, "unit": "/min"})
    p, issues = bundle_to_patient(bundle(bp, bp, hr, bp))
    unmapped = [i for i in issues if i["code"] == "fhir.unmapped_observation"]
    assert len(unmapped) == 2
    assert unmapped[0]["msg"].startswith("3 x") and unmapped[0]["loc"] == "entry[0]"


def test_string_instead_of_resource() -> None:
    doc = {"resourceType": "Bundle", "entry": [{"resource": "Observation/1"}, "junk", 7]}
    p, issues = bundle_to_patient(doc)
    assert p["observations"] == []
    assert codes_of(issues).count("fhir.not_an_object") == 3
    assert [i["loc"] for i in issues if i["code"] == "fhir.not_an_object"] == [
        "entry[0]", "entry[1]", "entry[2]"]


def test_coding_as_object_is_read_and_reported() -> None:
    r = obs("1742-6", valueQuantity={"value": 50, "unit": "U/L"})
    r["code"]["coding"] = {"system": LOINC, "code": "1742-6"}
    p, issues = bundle_to_patient(r)
    assert p["observations"][0]["element"] == "alt"
    assert any(i["code"] == "fhir.malformed" and i["loc"] == "$.code.coding" for i in issues)


def test_coding_as_string_gives_issue() -> None:
    r = obs("1742-6", valueQuantity={"value": 50, "unit": "U/L"})
    r["code"]["coding"] = "1742-6"
    p, issues = bundle_to_patient(r)
    assert p["observations"] == []
    assert "fhir.malformed" in codes_of(issues)


def test_value_abc_gives_issue() -> None:
    p, issues = bundle_to_patient(bundle(
        obs("1742-6", valueQuantity={"value": "abc", "unit": "U/L"}),
        obs("1742-6", valueString="abc"),
        obs("5196-1", valueString="abc"),
        obs("1742-6", valueQuantity="abc"),
    ))
    # each is passed on as an unusable result of its element, and reported
    assert [o["element"] for o in p["observations"]] == ["alt", "alt", "hbsag", "alt"]
    assert all(str(o["value"]).startswith("unreadable") for o in p["observations"])
    assert codes_of(issues).count("fhir.bad_value") == 2
    assert "fhir.unmapped_value" in codes_of(issues)
    assert "fhir.malformed" in codes_of(issues)


def test_wrong_types_everywhere_never_raise() -> None:
    base = obs("1742-6", valueQuantity={"value": 50, "unit": "U/L"},
               referenceRange=[{"high": {"value": 40}}])
    for key in list(base):
        for bad in ("x", 3, 2.5, True, [], {}, [1, "a"], {"a": 1}, None):
            r = copy.deepcopy(base)
            r[key] = bad
            p, issues = bundle_to_patient(bundle(r))
            _check_shape(p, issues)


def test_bundle_with_no_entry() -> None:
    p, issues = bundle_to_patient({"resourceType": "Bundle", "type": "searchset", "total": 0})
    assert p == {"observations": [], "conditions": [], "exposures": []}
    assert codes_of(issues) == ["fhir.no_patient"]


def test_empty_dict() -> None:
    p, issues = bundle_to_patient({})
    assert p == {"observations": [], "conditions": [], "exposures": []}
    assert "fhir.missing_resource_type" in codes_of(issues)


@pytest.mark.parametrize("doc", [None, "x", 3, [], [None], [[]], {"resourceType": 5}])
def test_non_resources(doc: Any) -> None:
    p, issues = bundle_to_patient(doc)
    _check_shape(p, issues)


def test_patient_fields_and_extra_patients() -> None:
    pts = [{"resourceType": "Patient", "id": f"p{i}", "gender": "female",
            "birthDate": "1985-03"} for i in range(3)]
    other_obs = obs("1742-6", valueQuantity={"value": 50, "unit": "U/L"},
                    subject={"reference": "Patient/p2"})
    own_obs = obs("1920-8", valueQuantity={"value": 50, "unit": "U/L"},
                  subject={"reference": "http://x.org/fhir/Patient/p0/_history/3"})
    p, issues = bundle_to_patient(bundle(*pts, other_obs, own_obs))
    assert (p["id"], p["birth_date"], p["sex"]) == ("p0", "1985-03", "female")
    assert [o["element"] for o in p["observations"]] == ["ast"]
    extra = [i for i in issues if i["code"] == "fhir.extra_patient"]
    assert len(extra) == 1 and extra[0]["msg"].startswith("2 further")
    assert "fhir.other_patient" in codes_of(issues)


def test_bad_birth_date_and_gender() -> None:
    p, issues = bundle_to_patient({"resourceType": "Patient", "birthDate": "03/14/1985",
                                   "gender": "F"})
    assert "birth_date" not in p and "sex" not in p
    assert {"fhir.bad_date", "fhir.bad_value"} <= set(codes_of(issues))


def test_components_emitted_with_parent_date_and_status() -> None:
    r = obs("99999-9", status="amended", component=[
        {"code": {"coding": [{"system": LOINC, "code": "1742-6"}]},
         "valueQuantity": {"value": 41, "unit": "U/L"}},
        {"code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
         "valueQuantity": {"value": 120, "unit": "mm[Hg]"}},
        {"code": {"coding": [{"system": LOINC, "code": "1920-8"}]},
         "valueQuantity": {"value": 39, "unit": "U/L"}},
    ])
    p, issues = bundle_to_patient(r)
    assert [(o["element"], o["value"], o["date"], o["status"], o["source"])
            for o in p["observations"]] == [
        ("alt", 41, "2026-11-01", "amended", "Observation/o1 component[0]"),
        ("ast", 39, "2026-11-01", "amended", "Observation/o1 component[2]")]
    assert "fhir.unmapped_observation" not in codes_of(issues)


def test_contained_observations_and_nested_bundles() -> None:
    report = {"resourceType": "DiagnosticReport", "id": "r1", "status": "final",
              "effectiveDateTime": "2026-10-30",
              "result": [{"reference": "#a"}],
              "contained": [
                  {"resourceType": "Observation", "id": "a", "status": "final",
                   "code": {"coding": [{"system": LOINC, "code": "1742-6"}]},
                   "valueQuantity": {"value": 90, "unit": "U/L"},
                   "referenceRange": [{"high": {"value": 45, "unit": "U/L"}}]}]}
    doc = {"resourceType": "Bundle", "type": "batch-response",
           "entry": [{"resource": bundle(report)}, {"response": {"status": "200"}}]}
    p, issues = bundle_to_patient(doc)
    assert p["observations"] == [{
        "element": "alt", "value": 90, "unit": "U/L",
        "reference_range": {"high": 45, "unit": "U/L"}, "date": "2026-10-30",
        "status": "final", "source": "DiagnosticReport/r1#a"}]
    assert "fhir.empty_entry" not in codes_of(issues)


def test_undated_observation_without_report_is_passed_on_undated() -> None:
    # undated, it is unusable in the normalizer and hides the element's other results
    r = obs("1742-6", valueQuantity={"value": 90, "unit": "U/L"})
    del r["effectiveDateTime"]
    p, issues = bundle_to_patient(r)
    (o,) = p["observations"]
    assert "date" not in o and o["value"] == 90 and "fhir.missing_date" in codes_of(issues)
    r["issued"] = "2026-11-02T10:00:00Z"
    p, issues = bundle_to_patient(r)
    assert p["observations"][0]["date"] == "2026-11-02T10:00:00Z"


@pytest.mark.parametrize(("field", "value"), [
    ("abatementAge", {"value": 40, "unit": "a", "system": "http://unitsofmeasure.org",
                      "code": "a"}),
    ("abatementRange", {"low": {"value": 40, "unit": "a"}}),
    ("abatementString", "last spring"),
    ("abatementPeriod", {"start": "2026-01-01"}),          # no end
    ("abatementDateTime", "2026-02-30"),                   # not a calendar date
    ("abatementDateTime", 0),                              # 0 == False: was dropped
    ("abatementBoolean", True),                            # STU3
])
def test_an_end_that_is_not_a_date_is_passed_on_as_an_unusable_end(field: str, value: Any
                                                                    ) -> None:
    # dropped, an active-status condition that ended would read as still going on
    c = {"resourceType": "Condition", "id": "c1",
         "code": {"coding": [{"system": SNOMED, "code": "84114007"}]},
         "onsetDateTime": "2020-01-02", "clinicalStatus": {"coding": [{"code": "active"}]},
         field: value}
    p, issues = bundle_to_patient(c)
    (cond,) = p["conditions"]
    assert cond["abatement"] == "unknown"
    assert "fhir.abatement_undated" in codes_of(issues)
    c[field] = False if field == "abatementBoolean" else None     # no end stated
    p, issues = bundle_to_patient(c)
    assert "abatement" not in p["conditions"][0]
    assert "fhir.abatement_undated" not in codes_of(issues)


@pytest.mark.parametrize("effective", [
    {"effectiveDateTime": "2026-02-30"},                      # not a calendar date
    {"effectiveDateTime": 20261101},                          # not text
    {"effectivePeriod": {"start": "yesterday"}},
    {"effectiveTiming": {"event": ["2026-10-01"]}},           # a Timing is not read
    {"effectiveInstant": "2026-11-01 10:00"},
])
def test_an_unreadable_effective_time_is_not_replaced_by_issued(effective: dict[str, Any]
                                                                 ) -> None:
    # issued is the release time (can be weeks later, inside a window the result is not in):
    # when the result was taken is not known, so it is passed on undated (unusable)
    r = obs("1742-6", valueQuantity={"value": 90, "unit": "U/L"})
    del r["effectiveDateTime"]
    r.update(effective, issued="2026-11-15T10:00:00Z")
    p, issues = bundle_to_patient(r)
    (o,) = p["observations"]
    assert "date" not in o and "fhir.missing_date" in codes_of(issues)
    # nor dated by a DiagnosticReport that lists it
    r["id"] = "o1"
    report = {"resourceType": "DiagnosticReport", "id": "d1", "status": "final",
              "effectiveDateTime": "2026-11-14", "result": [{"reference": "Observation/o1"}]}
    p, issues = bundle_to_patient(bundle(report, r))
    (o,) = p["observations"]
    assert "date" not in o


def test_a_reports_effective_time_comes_before_a_results_own_issued() -> None:
    """A result with no effective time, released (issued) weeks after the report's effective
    time: the report's time is when it was taken (review: dated by issued it was fresh)."""
    r = obs("1742-6", id="o1", valueQuantity={"value": 90, "unit": "U/L"})
    del r["effectiveDateTime"]
    r["issued"] = "2026-11-15T10:00:00Z"
    report = {"resourceType": "DiagnosticReport", "id": "d1", "status": "final",
              "effectiveDateTime": "2026-09-01", "result": [{"reference": "Observation/o1"}]}
    p, _ = bundle_to_patient(bundle(report, r))
    assert p["observations"][0]["date"] == "2026-09-01"
    # through a panel that has only issued: the report's effective time still decides
    panel = obs("1742-6", id="pan", hasMember=[{"reference": "Observation/o1"}])
    del panel["effectiveDateTime"]
    panel["issued"] = "2026-11-16T10:00:00Z"
    report["result"] = [{"reference": "Observation/pan"}]
    p, _ = bundle_to_patient(bundle(report, panel, r))
    assert {o["date"] for o in p["observations"]} == {"2026-09-01"}
    # a panel whose own effective time is unreadable: its members are undated (unusable)
    panel["effectiveDateTime"] = "2026-09-31"
    p, issues = bundle_to_patient(bundle(report, panel, r))
    assert all("date" not in o for o in p["observations"]), p["observations"]
    # no effective time anywhere: issued (the result's own first) dates it
    del panel["effectiveDateTime"]
    del report["effectiveDateTime"]
    p, _ = bundle_to_patient(bundle(report, panel, r))
    assert next(o for o in p["observations"] if o["source"].endswith("o1"))["date"] == \
        "2026-11-15T10:00:00Z"


def test_a_report_with_an_unreadable_effective_time_does_not_date_its_results_by_issued(
        ) -> None:
    r = obs("1742-6", id="o1", valueQuantity={"value": 90, "unit": "U/L"})
    del r["effectiveDateTime"]
    report = {"resourceType": "DiagnosticReport", "id": "d1", "status": "final",
              "effectiveDateTime": "2026-13-01", "issued": "2026-11-15T10:00:00Z",
              "result": [{"reference": "Observation/o1"}]}
    p, _ = bundle_to_patient(bundle(report, r))
    assert "date" not in p["observations"][0]
    del report["effectiveDateTime"]      # no effective time stated at all: issued dates it
    p, _ = bundle_to_patient(bundle(report, r))
    assert p["observations"][0]["date"] == "2026-11-15T10:00:00Z"


@pytest.mark.parametrize(("code", "value", "expected", "unit"), [
    ("hct_ci", {"valueInteger": 3}, 3, "{score}"),
    ("donor_hla_match", {"valueQuantity": {"value": 9, "unit": "/10"}}, 9, "/10"),
    ("donor_hla_match", {"valueInteger": 10}, 10, "/10"),
    ("cd19_pct", {"valueString": "87.5"}, 87.5, "%"),
    ("donor_type", {"valueCodeableConcept": {"coding": [{"system": PROJECT,
                                                         "code": "unrelated"}]}},
     "unrelated", None),
    ("disease_status", {"valueString": "Newly diagnosed"}, "newly_diagnosed", None),
    ("cns_status", {"valueCodeableConcept": {"text": "CNS1"}}, "cns1", None),
    ("childbearing_potential", {"valueBoolean": False}, False, None),
    ("lactating", {"valueCodeableConcept": {"coding": [{"system": SNOMED,
                                                        "code": "373066001"}]}}, True, None),
])
def test_project_codes(code: str, value: dict[str, Any], expected: Any,
                       unit: str | None) -> None:
    p, issues = bundle_to_patient(obs(code, system=PROJECT, **value))
    (o,) = p["observations"]
    assert (o["element"], o["value"], o.get("unit")) == (code, expected, unit)


def test_blinatumomab_allergy_and_exposures() -> None:
    allergy = {"resourceType": "AllergyIntolerance", "id": "a1",
               "code": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                                    "code": "1603296"}]},
               "verificationStatus": {"coding": [{"code": "confirmed"}]},
               "recordedDate": "2026-01-05"}
    penicillin = {"resourceType": "AllergyIntolerance", "code": {"text": "Penicillin G"}}
    period = {"resourceType": "MedicationAdministration", "id": "m1", "status": "completed",
              "medicationCodeableConcept": {"text": "BLINATUMOMAB 35 mcg/day"},
              "effectivePeriod": {"start": "2026-10-05", "end": "2026-10-11"}}
    single = {"resourceType": "MedicationStatement", "id": "m2", "status": "completed",
              "contained": [{"resourceType": "Medication", "id": "med",
                             "code": {"coding": [{"display": "Blincyto"}]}}],
              "medicationReference": {"reference": "#med"},
              "effectiveDateTime": "2026-09-01"}
    other = {"resourceType": "MedicationStatement", "status": "active",
             "medicationCodeableConcept": {"text": "Aspirin"},
             "effectiveDateTime": "2026-09-01"}
    p, issues = bundle_to_patient(bundle(allergy, penicillin, period, single, other))
    assert p["conditions"] == [{"element": "blinatumomab_hypersensitivity",
                                "onset": "2026-01-05", "onset_from": "recordedDate",
                                "verification_status": "confirmed",
                                "source": "AllergyIntolerance/a1"}]
    assert p["exposures"] == [
        {"element": "blinatumomab", "start": "2026-10-05", "end": "2026-10-11",
         "source": "MedicationAdministration/m1"},
        # a time says when, not for how long (see normalize: `at`)
        {"element": "blinatumomab", "at": "2026-09-01", "source": "MedicationStatement/m2"}]
    assert {"fhir.unmapped_allergy", "fhir.unmapped_medication"} <= set(codes_of(issues))


def test_resources_to_patient_prefetch_shapes() -> None:
    patient = {"resourceType": "Patient", "id": "x", "gender": "male", "birthDate": "1990"}
    labs = bundle(obs("1742-6", valueQuantity={"value": 50, "unit": "U/L"}))
    p, issues = resources_to_patient([patient, None, labs, {"resourceType": "Bundle"}])
    assert p["id"] == "x" and p["birth_date"] == "1990" and len(p["observations"]) == 1
    assert issues == []
    # a list through bundle_to_patient is the same thing
    assert bundle_to_patient([patient, None, labs]) == (p, issues)
    p, issues = resources_to_patient("nope")  # type: ignore[arg-type]
    _check_shape(p, issues)


def test_deep_nesting_is_bounded() -> None:
    doc: dict[str, Any] = obs("1742-6", valueQuantity={"value": 50, "unit": "U/L"})
    for _ in range(200):
        doc = bundle(doc)
    p, issues = bundle_to_patient(doc)
    assert "fhir.too_deep" in codes_of(issues)


# --- fuzz: FHIR-shaped garbage never raises ----------------------------------------------------

_KEYS = ["resourceType", "entry", "resource", "code", "coding", "system", "code", "text",
         "valueQuantity", "value", "unit", "comparator", "valueCodeableConcept", "valueString",
         "valueInteger", "valueBoolean", "referenceRange", "high", "low", "type",
         "effectiveDateTime", "effectivePeriod", "start", "end", "issued", "status", "component",
         "contained", "subject", "reference", "hasMember", "result", "onsetDateTime",
         "recordedDate", "clinicalStatus", "verificationStatus", "medicationCodeableConcept",
         "medicationReference", "birthDate", "gender", "id", "fullUrl", "interpretation"]
_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-10, 10**6), st.floats(allow_nan=True),
    st.sampled_from(["Observation", "Bundle", "Patient", "Condition", "DiagnosticReport",
                     "AllergyIntolerance", "MedicationStatement", "MedicationAdministration",
                     "Medication", LOINC, SNOMED, ICD10CM, PROJECT, UCUM, "1742-6", "82810-3",
                     "89247-1", "5196-1", "hct_ci", "donor_type", "77386006", "LA9622-7",
                     "128053003", "I50.9", "2026-11-01", "2026-13-45", "blinatumomab", "#a",
                     "a", "Patient/a", "final", "refuted", "<", "positive", "abc", ""]),
    st.text(max_size=8))
_JSON = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.sampled_from(_KEYS), inner, max_size=6)),
    max_leaves=40)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_JSON)
def test_fuzz_never_raises(doc: Any) -> None:
    p, issues = bundle_to_patient(doc)
    _check_shape(p, issues)


def test_unreadable_verification_status_becomes_unconfirmed() -> None:
    cond = {"resourceType": "Condition", "onsetDateTime": "2025-01-01",
            "code": {"coding": [{"system": SNOMED, "code": "59282003"}]},
            "verificationStatus": {"coding": "refuted"}}
    p, issues = bundle_to_patient(cond)
    assert p["conditions"][0]["verification_status"] == "unconfirmed"
    assert "fhir.unreadable_status" in codes_of(issues)


def test_observation_status_of_wrong_type_is_unknown() -> None:
    # read as absent it would count as final; skipped, an older result would decide
    p, issues = bundle_to_patient(obs("1742-6", status={"code": "entered-in-error"},
                                      valueQuantity={"value": 30, "unit": "U/L"}))
    assert p["observations"][0]["status"] == "unknown" and "fhir.malformed" in codes_of(issues)


def test_long_has_member_chain() -> None:
    members = [obs("1742-6", id=f"m{i}", hasMember=[{"reference": f"Observation/m{i + 1}"}],
                   valueQuantity={"value": i, "unit": "U/L"}) for i in range(3000)]
    for m in members:
        del m["effectiveDateTime"]
    report = {"resourceType": "DiagnosticReport", "issued": "2026-01-01T00:00:00Z",
              "result": [{"reference": "Observation/m0"}]}
    p, issues = bundle_to_patient(bundle(report, *members))
    assert len(p["observations"]) == 3000
    assert {o["date"] for o in p["observations"]} == {"2026-01-01T00:00:00Z"}


# --- docs/data-elements.md documents the catalogue -------------------------------------------

def test_data_elements_doc_is_current() -> None:
    import importlib.util

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("gen_data_elements",
                                                  root / "docs" / "gen_data_elements.py")
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    page = (root / "docs" / "data-elements.md").read_text(encoding="utf-8")
    assert gen.render(page) == page, "rerun: .venv/bin/python docs/gen_data_elements.py"
    for name in ELEMENTS:
        assert f"| `{name}` |" in page


def test_issues_are_listed_up_to_a_bound_and_the_rest_counted() -> None:
    from screener.adapters.fhir import MAX_ISSUES
    obs = [{"resourceType": "Observation", "id": str(i), "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": f"x-{i}"}]},
            "effectiveDateTime": "2026-11-01", "valueQuantity": {"value": 1}}
           for i in range(MAX_ISSUES + 50)]
    patient = {"resourceType": "Patient", "id": "p", "birthDate": "1980-01-01"}
    _, issues = bundle_to_patient({"resourceType": "Bundle", "type": "collection",
                                   "entry": [{"resource": o} for o in [patient, *obs]]})
    assert len(issues) == MAX_ISSUES + 1
    assert issues[-1] == {"loc": "$", "code": "fhir.more_issues",
                          "msg": "50 more issues not listed"}


# --- resources about another patient; incomplete search results ------------------------------

P1 = {"resourceType": "Patient", "id": "p1", "gender": "male", "birthDate": "1985-03-14"}


def _about(subject: str | None, code: str = "1742-6", oid: str = "o") -> dict[str, Any]:
    extra: dict[str, Any] = {"id": oid, "valueQuantity": {"value": 50, "unit": "U/L"}}
    if subject is not None:
        extra["subject"] = {"reference": subject}
    return obs(code, **extra)


@pytest.mark.parametrize("subject", [
    "Patient/p2", "https://ehr.example/fhir/Patient/p2", "Patient/p2/_history/4",
    "https://ehr.example/fhir/Patient/p2/_history/1"])
def test_resource_naming_another_patient_id_is_dropped(subject: str) -> None:
    # p2 is not in the input: its id alone says the resource is not about the screened p1
    p, issues = bundle_to_patient(bundle(P1, _about(subject)))
    assert p["id"] == "p1" and p["observations"] == []
    assert codes_of(issues) == ["fhir.other_patient"]


@pytest.mark.parametrize("subject", [
    None, "Patient/p1", "https://other.example/fhir/Patient/p1/_history/2"])
def test_resource_about_the_screened_patient_or_without_subject_is_kept(
        subject: str | None) -> None:
    p, issues = bundle_to_patient(bundle(P1, _about(subject)))
    assert [o["element"] for o in p["observations"]] == ["alt"] and issues == []


def test_urn_references_resolve_to_the_screened_patient_or_are_dropped() -> None:
    doc = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:aaa", "resource": P1},
        {"fullUrl": "urn:uuid:o1", "resource": _about("urn:uuid:aaa", oid="o1")},
        {"fullUrl": "urn:uuid:o2", "resource": _about("urn:uuid:zzz", "1920-8", oid="o2")}]}
    p, issues = bundle_to_patient(doc)
    assert [o["element"] for o in p["observations"]] == ["alt"]
    assert codes_of(issues) == ["fhir.unresolved_subject"]
    # without an id or fullUrl on the Patient nothing can be compared: kept as before
    anon = {"resourceType": "Patient", "gender": "male"}
    p, issues = bundle_to_patient(bundle(anon, _about("Patient/p2")))
    assert len(p["observations"]) == 1


def test_contained_result_goes_with_its_report_subject() -> None:
    report = {"resourceType": "DiagnosticReport", "id": "r", "status": "final",
              "subject": {"reference": "Patient/p2"}, "effectiveDateTime": "2026-11-01",
              "contained": [obs("1742-6", id="c", valueQuantity={"value": 50, "unit": "U/L"})]}
    p, issues = bundle_to_patient(bundle(P1, report))
    assert p["observations"] == [] and "fhir.other_patient" in codes_of(issues)


def test_patient_id_names_the_screened_patient() -> None:
    # a prefetch whose search bundle holds another Patient before the verified one
    p2 = {**P1, "id": "p2", "birthDate": "1950-01-01", "gender": "female"}
    searchset = {"resourceType": "Bundle", "type": "searchset", "entry": [
        {"resource": p2}, {"resource": _about("Patient/p2", oid="a")},
        {"resource": _about("Patient/p1", "1920-8", oid="b")}]}
    p, issues = resources_to_patient([searchset, P1], "p1")
    assert (p["id"], p["birth_date"], p["sex"]) == ("p1", "1985-03-14", "male")
    assert [o["element"] for o in p["observations"]] == ["ast"]
    assert {"fhir.extra_patient", "fhir.other_patient"} <= set(codes_of(issues))
    # without it the first Patient is screened, as before
    assert resources_to_patient([searchset, P1])[0]["id"] == "p2"
    # the named Patient is absent: nobody's demographics, nobody else's data
    p, issues = resources_to_patient([searchset], "p1")
    assert "id" not in p and "birth_date" not in p
    assert [o["element"] for o in p["observations"]] == ["ast"]
    assert "fhir.no_patient" in codes_of(issues)


@pytest.mark.parametrize("path", [p for p in FILES if "synthea" in str(p)] or [None],
                         ids=[p.name for p in FILES if "synthea" in str(p)] or ["absent"])
def test_synthea_urn_references_resolve_to_their_patient(path: Path | None) -> None:
    if path is None:
        pytest.skip(f"shared FHIR examples not found at {EXAMPLES}")
    p, issues = bundle_to_patient(_load(path))
    assert p["observations"] or p["conditions"]
    assert not {"fhir.other_patient", "fhir.unresolved_subject"} & set(codes_of(issues))


def _searchset(*resources: Any, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset",
            "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources], **extra}


@pytest.mark.parametrize("extra, why", [
    ({"link": [{"relation": "next", "url": "https://ehr.example/fhir/Observation?p=2"}]},
     "next-page link"),
    ({"total": 3}, "total 3 but 1 sent"),
    ({"entry_outcome": True}, "OperationOutcome entry"),
])
def test_incomplete_searchset_makes_its_results_unusable(extra: dict[str, Any],
                                                         why: str) -> None:
    from screener.adapters.fhir import searchset_incomplete
    doc = _searchset(_about("Patient/p1"), **{k: v for k, v in extra.items()
                                              if k != "entry_outcome"})
    if extra.get("entry_outcome"):
        doc["entry"].append({"resource": {"resourceType": "OperationOutcome", "issue": []},
                             "search": {"mode": "outcome"}})
    assert why in (searchset_incomplete(doc) or "")
    p, issues = resources_to_patient([P1, doc], "p1")
    # the result sent as it is, and the whole section said to be incomplete: a newer result of
    # any element (not only of those on this page) may be on a page not sent
    assert [(o["element"], o["date"]) for o in p["observations"]] == [("alt", "2026-11-01")]
    assert list(p["incomplete"]) == ["observations"]
    assert "incomplete" in p["incomplete"]["observations"] and why in p["incomplete"][
        "observations"]
    assert "fhir.incomplete_searchset" in codes_of(issues)


@pytest.mark.parametrize(("resources", "self_url", "keys"), [
    ([], "https://ehr.example/fhir/Condition?patient=p1", ["conditions", "pregnant"]),
    ([], "MedicationStatement?patient=p1", ["exposures"]),
    ([], None, ["conditions", "exposures", "observations"]),   # nothing tells what was searched
    # several types, or a search of Bundles: anything may be on the next page
    ([], "https://ehr.example/fhir/Patient/p1/$everything", ["conditions", "exposures",
                                                             "observations"]),
    ([], "https://ehr.example/fhir/?_type=Observation,Condition", ["conditions", "exposures",
                                                                   "observations"]),
    ([], "https://ehr.example/fhir/Bundle?type=document", ["conditions", "exposures",
                                                           "observations"]),
    ([{"resourceType": "Observation", "status": "final", "code": {"text": "x"}},
      {"resourceType": "Condition", "code": {"text": "y"}}], None,
     ["conditions", "exposures", "observations"]),
    ([{"resourceType": "AllergyIntolerance", "patient": {"reference": "Patient/p1"}}], None,
     ["blinatumomab_hypersensitivity"]),
])
def test_an_incomplete_search_names_what_its_type_may_hold(
        resources: list[dict[str, Any]], self_url: str | None, keys: list[str]) -> None:
    # a page 1 with no pregnancy on it says nothing about a pregnancy on page 2
    links = [{"relation": "next", "url": "x?page=2"}]
    if self_url:
        links.append({"relation": "self", "url": self_url})
    doc = _searchset(*resources, link=links)
    p, _ = resources_to_patient([P1, doc], "p1")
    assert sorted(p["incomplete"]) == keys


def test_complete_searchset_is_read_as_it_is() -> None:
    from screener.adapters.fhir import searchset_incomplete
    doc = _searchset(_about("Patient/p1"), total=1,
                     link=[{"relation": "self", "url": "https://ehr.example/fhir/Observation"}])
    doc["entry"].append({"resource": P1, "search": {"mode": "include"}})
    assert searchset_incomplete(doc) is None
    p, issues = resources_to_patient([doc])
    assert len(p["observations"]) == 1 and issues == []


def test_incomplete_medication_search_makes_the_days_unknown() -> None:
    given = {"resourceType": "MedicationAdministration", "id": "m1", "status": "completed",
             "subject": {"reference": "Patient/p1"},
             "medicationCodeableConcept": {"text": "blinatumomab"},
             "effectivePeriod": {"start": "2026-11-01", "end": "2026-11-07"}}
    doc = _searchset(given, link=[{"relation": "next", "url": "x?page=2"}])
    p, _ = resources_to_patient([P1, doc], "p1")
    assert p["exposures"][0]["start"] == "2026-11-01" and len(p["exposures"]) == 1
    assert list(p["incomplete"]) == ["exposures"]


def test_urea_in_mass_units_is_converted_to_bun_not_read_as_bun() -> None:
    """Urea 40 mg/dL (LOINC 3091-6) is BUN 18.7 mg/dL: read as BUN 40 it was 2 x a site
    default ULN of 20 (a units audit)."""
    from screener.normalize import prepare
    urea = obs("3091-6", valueQuantity={"value": 40, "unit": "mg/dL"},
               referenceRange=[{"high": {"value": 45, "unit": "mg/dL"}}])
    p, _ = bundle_to_patient(urea)
    (o,) = p["observations"]
    assert o["unit"] == "mg/dL{urea}" and o["reference_range"]["unit"] == "mg/dL{urea}"
    r = prepare(p, date(2026, 11, 22)).readings["bun"][0]
    assert r.value == Fraction(40) * Fraction("28.0134") / Fraction("60.0553")
    assert r.value / r.uln == Fraction(40, 45)        # the ratio to its own range is unchanged
    # BUN itself (3094-0) stays as it is; urea in mmol/L needs no mark (one mole of each)
    bun = obs("3094-0", valueQuantity={"value": 40, "unit": "mg/dL"})
    assert bundle_to_patient(bun)[0]["observations"][0]["unit"] == "mg/dL"
    mol = obs("3091-6", valueQuantity={"value": 6.66, "unit": "mmol/L"})
    assert bundle_to_patient(mol)[0]["observations"][0]["unit"] == "mmol/L"
