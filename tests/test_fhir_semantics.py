"""FHIR adapter semantics, screened end to end: data the adapter cannot read, ranges that do not
apply, conflicting Patients and versions, pregnancy evidence.

The rule of the product: missing, ambiguous or unusable data gives `unknown` with a reason, never
a silent met / not_met. Skipping an unreadable result would let an OLDER result decide, so the
adapter passes it on as an unusable result of its element (it then hides the older ones).
"""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from screener.adapters.fhir import bundle_to_patient
from screener.screen import Screener

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
V3 = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
GENDER = "http://hl7.org/fhir/administrative-gender"
PROJECT = "urn:screener:data-element"
TRIAL = "NCT06930105"
AS_OF = date(2026, 11, 22)
PATIENT = {"resourceType": "Patient", "id": "p1", "birthDate": "1985-03-14", "gender": "female"}
NEG = {"coding": [{"system": SNOMED, "code": "260385009", "display": "Negative"}]}
POS = {"coding": [{"system": SNOMED, "code": "10828004", "display": "Positive"}]}
NOT_PREGNANT = {"coding": [{"system": SNOMED, "code": "60001007"}]}


def obs(code: str, when: str | None, system: str = LOINC, **extra: Any) -> dict[str, Any]:
    r: dict[str, Any] = {"resourceType": "Observation", "status": "final",
                         "code": {"coding": [{"system": system, "code": code}]},
                         "subject": {"reference": "Patient/p1"}}
    if when is not None:
        r["effectiveDateTime"] = when
    r.update(extra)
    return r


def pct(v: Any) -> dict[str, Any]:
    return {"value": v, "unit": "%", "system": UCUM, "code": "%"}


def mgdl(v: Any) -> dict[str, Any]:
    return {"value": v, "unit": "mg/dL", "system": UCUM, "code": "mg/dL"}


def interp(code: str) -> list[dict[str, Any]]:
    return [{"coding": [{"system": V3, "code": code}]}]


def bundle(*resources: Any, patient: Any = PATIENT, kind: str = "collection") -> dict[str, Any]:
    entries = ([{"resource": patient}] if patient else []) + [{"resource": r} for r in resources]
    return {"resourceType": "Bundle", "type": kind, "entry": entries}


def verdict(screener: Screener, doc: Any, criterion: str, trial: str = TRIAL) -> str:
    patient, _ = bundle_to_patient(doc)
    report = screener.screen(trial, patient, as_of=AS_OF)
    return str(next(c for c in report["criteria"] if c["id"] == criterion)["verdict"])


BUN = obs("3094-0", "2026-11-15", valueQuantity=mgdl(14),
          referenceRange=[{"low": mgdl(7), "high": mgdl(20)}])
CREAT_OLD = obs("2160-0", "2026-11-01", valueQuantity=mgdl(1.0),
                referenceRange=[{"low": mgdl(0.6), "high": mgdl(1.2)}])
HBCAB_NEG = obs("16933-4", "2026-11-01", valueCodeableConcept=NEG)
HBCAB_POS = obs("16933-4", "2026-11-01", valueCodeableConcept=POS)
HBSAG_OLD_NEG = obs("5196-1", "2026-10-01", valueCodeableConcept=NEG)
HBSAG_NEG = obs("5196-1", "2026-11-01", valueCodeableConcept=NEG)
DNA_OLD_ND = obs("29615-2", "2026-11-01", valueString="Not detected")
LACT_NO = obs("lactating", "2026-11-15", system=PROJECT, valueBoolean=False)
PREG_OLD_NO = obs("82810-3", "2026-11-10", valueCodeableConcept=NOT_PREGNANT)
PFT = {"resourceType": "Observation", "status": "final", "code": {"text": "PFT"},
       "effectiveDateTime": "2026-11-15",
       "component": [
           {"code": {"coding": [{"system": LOINC, "code": "20152-5"}]}, "valueQuantity": pct(85)},
           {"code": {"coding": [{"system": LOINC, "code": "19872-1"}]}, "valueQuantity": pct(90)},
           {"code": {"coding": [{"system": LOINC, "code": "98130-8"}]},
            "valueString": "45 (low)"}]}

# (case, criterion, resources): the newest result of an element cannot be read; an older usable
# one would decide if it were skipped.
UNREADABLE_NEWER = [
    ("lvef_range", "inc_lvef", [obs("10230-1", "2026-09-01", valueQuantity=pct(60)),
                                obs("10230-1", "2026-11-15",
                                    valueRange={"low": pct(40), "high": pct(45)})]),
    ("lvef_string", "inc_lvef", [obs("10230-1", "2026-09-01", valueQuantity=pct(60)),
                                 obs("10230-1", "2026-11-15", valueString="40-45%")]),
    ("ecog_string", "inc_ecog", [obs("89247-1", "2026-11-01", valueInteger=1),
                                 obs("89247-1", "2026-11-15", valueString="3-4")]),
    ("creat_string_flag", "inc_renal", [BUN, CREAT_OLD, obs(
        "2160-0", "2026-11-20", valueString="2.1 H",
        referenceRange=[{"low": mgdl(0.6), "high": mgdl(1.2)}])]),
    ("creat_value_string_type", "inc_renal", [BUN, CREAT_OLD, obs(
        "2160-0", "2026-11-20", valueQuantity=mgdl("2.1"),
        referenceRange=[{"low": mgdl(0.6), "high": mgdl(1.2)}])]),
    ("pft_component_bad_value", "inc_pulmonary",
     [obs("98130-8", "2026-11-01", valueQuantity=pct(75)), PFT]),
    ("hbsag_index_flag_H", "exc_hbv", [HBCAB_NEG, HBSAG_OLD_NEG, obs(
        "5196-1", "2026-11-15", valueQuantity={"value": 5.2, "unit": "S/CO"},
        interpretation=interp("H"))]),
    ("hbsag_string", "exc_hbv", [HBCAB_NEG, HBSAG_OLD_NEG, obs(
        "5196-1", "2026-11-15", valueString="Repeatedly reactive, confirmed by neutralization")]),
    ("hbsag_weakly_reactive", "exc_hbv", [HBCAB_NEG, HBSAG_OLD_NEG, obs(
        "5196-1", "2026-11-10", valueString="Weakly reactive")]),
    ("hbsag_text_plus_interp", "exc_hbv", [HBCAB_NEG, HBSAG_NEG, obs(
        "5196-1", "2026-11-10", valueCodeableConcept={"text": "See comment"},
        interpretation=interp("POS"))]),
    ("hbsag_undated_positive", "exc_hbv", [HBCAB_NEG, HBSAG_OLD_NEG,
                                           obs("5196-1", None, valueCodeableConcept=POS)]),
    ("dna_indeterminate", "exc_hbv", [HBSAG_NEG, HBCAB_POS, DNA_OLD_ND, obs(
        "29615-2", "2026-11-10",
        valueCodeableConcept={"coding": [{"system": SNOMED, "code": "82334004"}]})]),
    ("dna_string_detected_lt", "exc_hbv", [HBSAG_NEG, HBCAB_POS, DNA_OLD_ND, obs(
        "29615-2", "2026-11-10", valueString="Detected, <20 IU/mL")]),
    ("pregnancy_unknown_code", "exc_pregnancy", [LACT_NO, PREG_OLD_NO, obs(
        "82810-3", "2026-11-20", valueCodeableConcept={
            "coding": [{"system": SNOMED, "code": "152231000119106"}]})]),
    ("pregnancy_string", "exc_pregnancy", [LACT_NO, PREG_OLD_NO, obs(
        "82810-3", "2026-11-20", valueString="Possibly pregnant")]),
]


@pytest.mark.parametrize(("criterion", "resources"), [c[1:] for c in UNREADABLE_NEWER],
                         ids=[c[0] for c in UNREADABLE_NEWER])
def test_unreadable_newer_result_hides_older(screener: Screener, criterion: str,
                                             resources: list[Any]) -> None:
    assert verdict(screener, bundle(*resources), criterion) == "unknown"


def test_unreadable_result_keeps_date_status_source_and_issue() -> None:
    r = obs("10230-1", "2026-11-15", id="e1", status="amended", valueString="40-45%")
    p, issues = bundle_to_patient(bundle(r))
    assert p["observations"] == [{"element": "lvef", "value": p["observations"][0]["value"],
                                  "date": "2026-11-15", "status": "amended",
                                  "source": "Observation/e1"}]
    assert p["observations"][0]["value"].startswith("unreadable")
    assert "fhir.bad_value" in [i["code"] for i in issues]


def test_data_absent_reason_is_still_skipped(screener: Screener) -> None:
    # no value at all: no result exists, so the older one stands
    absent = obs("10230-1", "2026-11-15", dataAbsentReason={"text": "not performed"})
    doc = bundle(obs("10230-1", "2026-09-01", valueQuantity=pct(60)), absent)
    assert verdict(screener, doc, "inc_lvef") == "met"


def test_known_coded_answers_are_mapped(screener: Screener) -> None:
    pregnant = obs("82810-3", "2026-11-20", valueCodeableConcept={
        "coding": [{"system": LOINC, "code": "LA15173-0", "display": "Pregnant"}]})
    assert verdict(screener, bundle(LACT_NO, PREG_OLD_NO, pregnant), "exc_pregnancy") == "met"
    reactive = obs("5196-1", "2026-11-15", valueQuantity={"value": 5.2, "unit": "S/CO"},
                   interpretation=interp("RR"))
    assert verdict(screener, bundle(HBCAB_NEG, HBSAG_OLD_NEG, reactive), "exc_hbv") == "met"


# --- reference ranges: only those that apply to this patient -----------------------------------

def _creat(value: float, ranges: list[dict[str, Any]]) -> dict[str, Any]:
    return obs("2160-0", "2026-11-15", valueQuantity=mgdl(value), referenceRange=ranges)


def _sex(code: str) -> list[dict[str, Any]]:
    return [{"coding": [{"system": GENDER, "code": code}]}]


BY_SEX = [{"low": mgdl(0.7), "high": mgdl(1.3), "appliesTo": _sex("male")},
          {"low": mgdl(0.5), "high": mgdl(0.9), "appliesTo": _sex("female")}]
BY_AGE = [{"low": mgdl(0.3), "high": mgdl(0.7),
           "age": {"low": {"value": 0, "unit": "a"}, "high": {"value": 17, "unit": "a"}}},
          {"low": mgdl(0.6), "high": mgdl(1.2), "age": {"low": {"value": 18, "unit": "a"}}}]


def test_reference_range_by_sex(screener: Screener) -> None:
    # female: ULN 0.9, 1.2 is 1.33 x ULN > 1.25 (the male range, first, gave 0.92)
    assert verdict(screener, bundle(BUN, _creat(1.2, BY_SEX)), "inc_renal") == "not_met"


def test_reference_range_by_age(screener: Screener) -> None:
    # 41 years old: adult ULN 1.2, 1.0 is 0.83 x ULN (the paediatric range, first, gave 1.43)
    p, _ = bundle_to_patient(bundle(_creat(1.0, BY_AGE)))
    assert p["observations"][0]["reference_range"]["high"] == 1.2
    assert verdict(screener, bundle(BUN, _creat(1.0, BY_AGE)), "inc_renal") == "met"


def test_reference_ranges_that_could_apply_and_disagree_are_unusable(
        screener: Screener) -> None:
    """Passed on as an unusable range, not as none: a trial's site default ULN stands in only
    for results that came without a range."""
    no_sex = {"resourceType": "Patient", "id": "p1", "birthDate": "1985-03-14"}
    doc = bundle(BUN, _creat(1.2, BY_SEX), patient=no_sex)
    p, issues = bundle_to_patient(doc)
    creat = next(o for o in p["observations"] if o["element"] == "creatinine")
    assert str(creat["reference_range"]["high"]).startswith("ambiguous")
    assert "fhir.ambiguous_range" in [i["code"] for i in issues]
    assert verdict(screener, doc, "inc_renal") == "unknown"
    # a population the adapter cannot place (pregnancy) could apply
    other = [{"high": mgdl(1.2)}, {"high": mgdl(0.8), "appliesTo": [{"text": "pregnancy"}]}]
    p, _ = bundle_to_patient(bundle(_creat(1.0, other)))
    assert str(p["observations"][0]["reference_range"]["high"]).startswith("ambiguous")


# --- Patient resources that disagree ----------------------------------------------------------

def test_two_patients_same_id_conflicting_demographics(screener: Screener) -> None:
    doc = {"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": {"resourceType": "Patient", "id": "p1", "gender": "male",
                      "birthDate": "1985-03-14"}},
        {"resource": {"resourceType": "Patient", "id": "p1", "gender": "female",
                      "birthDate": "1940-01-01"}}]}
    p, issues = bundle_to_patient(doc)
    assert "birth_date" not in p and "sex" not in p
    assert "fhir.conflicting_patient" in [i["code"] for i in issues]
    assert verdict(screener, doc, "inc_age") == "unknown"
    assert verdict(screener, doc, "exc_pregnancy") == "unknown"  # was not_applicable (male)


def test_patient_versions_latest_is_used() -> None:
    old = {"resourceType": "Patient", "id": "p1", "gender": "male", "birthDate": "1985-03-14",
           "meta": {"versionId": "1"}}
    new = {**old, "gender": "female", "meta": {"versionId": "2"}}
    p, _ = bundle_to_patient(bundle(old, new, patient=None, kind="history"))
    assert (p["sex"], p["birth_date"]) == ("female", "1985-03-14")


# --- viral loads in log units; value against interpretation ------------------------------------

def test_log_unit_zero_is_not_not_detected(screener: Screener) -> None:
    log0 = obs("48398-2", "2026-11-10", valueQuantity={
        "value": 0, "unit": "log IU/mL", "system": UCUM, "code": "{Log_IU}/mL"})
    assert verdict(screener, bundle(HBSAG_NEG, HBCAB_POS, log0), "exc_hbv") == "unknown"
    log3 = obs("48398-2", "2026-11-10", valueQuantity={"value": 3.1, "unit": "log IU/mL"})
    p, _ = bundle_to_patient(bundle(log3))
    assert p["observations"][0]["value"] == "detected"


def test_value_contradicting_interpretation_is_unusable(screener: Screener) -> None:
    neg_flagged_pos = obs("5196-1", "2026-11-10", valueCodeableConcept=NEG,
                          interpretation=interp("POS"))
    assert verdict(screener, bundle(HBCAB_NEG, neg_flagged_pos), "exc_hbv") == "unknown"
    load_flagged_nd = obs("29615-2", "2026-11-10", valueQuantity={"value": 10, "unit": "IU/mL"},
                          interpretation=interp("ND"))
    assert verdict(screener, bundle(HBSAG_NEG, HBCAB_POS, load_flagged_nd), "exc_hbv") == \
        "unknown"


# --- pregnancy evidence other than the pregnancy status -----------------------------------------

def _pregnancy_condition(**extra: Any) -> dict[str, Any]:
    c = {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"},
         "code": {"coding": [{"system": SNOMED, "code": "77386006"}]},
         "onsetDateTime": "2026-11-18",
         "clinicalStatus": {"coding": [{"code": "active"}]}}
    c.update(extra)
    return c


def test_active_pregnancy_condition_is_pregnant(screener: Screener) -> None:
    doc = bundle(LACT_NO, PREG_OLD_NO, _pregnancy_condition())
    assert verdict(screener, doc, "exc_pregnancy") == "met"
    icd = _pregnancy_condition(code={"coding": [{"system": ICD10CM, "code": "Z34.90"}]})
    assert verdict(screener, bundle(LACT_NO, PREG_OLD_NO, icd), "exc_pregnancy") == "met"
    resolved = _pregnancy_condition(clinicalStatus={"coding": [{"code": "resolved"}]})
    p, _ = bundle_to_patient(bundle(resolved))
    assert [o for o in p["observations"] if o["element"] == "pregnant"] == []


def test_positive_hcg_is_unusable_negative_is_not_pregnant(screener: Screener) -> None:
    serum_pos = obs("2118-8", "2026-11-20", valueCodeableConcept=POS)
    urine_pos = obs("2106-3", "2026-11-20", valueString="Positive")
    urine_neg = obs("2106-3", "2026-11-20", valueString="Negative")
    for positive in (serum_pos, urine_pos):
        assert verdict(screener, bundle(LACT_NO, PREG_OLD_NO, positive), "exc_pregnancy") == \
            "unknown"
    assert verdict(screener, bundle(LACT_NO, urine_neg), "exc_pregnancy") == "not_met"
    quantitative = obs("2118-8", "2026-11-20", valueQuantity={"value": 250, "unit": "m[IU]/mL"},
                       referenceRange=[{"high": {"value": 5, "unit": "m[IU]/mL"}}])
    assert verdict(screener, bundle(LACT_NO, PREG_OLD_NO, quantitative), "exc_pregnancy") == \
        "unknown"


# --- versions, retracted reports, duplicates --------------------------------------------------

def _hbsag_version(version: str, status: str, value: dict[str, Any]) -> dict[str, Any]:
    return obs("5196-1", "2026-11-10", id="hb1", status=status, valueCodeableConcept=value,
               meta={"versionId": version})


def test_history_bundle_latest_version_decides(screener: Screener) -> None:
    v1 = _hbsag_version("1", "final", POS)
    retracted = bundle(HBCAB_NEG, _hbsag_version("2", "entered-in-error", POS), v1,
                       kind="history")
    assert verdict(screener, retracted, "exc_hbv") != "met"
    amended = bundle(HBCAB_NEG, _hbsag_version("2", "amended", NEG), v1, kind="history")
    assert verdict(screener, amended, "exc_hbv") == "not_met"


def test_differing_versions_without_order_are_unusable(screener: Screener) -> None:
    a = obs("5196-1", "2026-11-10", id="hb1", valueCodeableConcept=NEG)
    b = obs("5196-1", "2026-11-10", id="hb1", valueCodeableConcept=POS)
    p, issues = bundle_to_patient(bundle(HBCAB_NEG, a, b))
    assert {o["status"] for o in p["observations"] if o["element"] == "hbsag"} == {"unknown"}
    assert "fhir.conflicting_versions" in [i["code"] for i in issues]
    assert verdict(screener, bundle(HBCAB_NEG, HBSAG_OLD_NEG, a, b), "exc_hbv") == "unknown"


def test_results_of_retracted_report_or_panel_do_not_count(screener: Screener) -> None:
    report = {"resourceType": "DiagnosticReport", "id": "dr1", "status": "entered-in-error",
              "code": {"text": "Hepatitis panel"}, "effectiveDateTime": "2026-11-10",
              "subject": {"reference": "Patient/p1"}, "result": [{"reference": "#o1"}],
              "contained": [obs("5196-1", None, id="o1", valueCodeableConcept=POS)]}
    assert verdict(screener, bundle(HBCAB_NEG, report), "exc_hbv") == "unknown"
    panel = {"resourceType": "Observation", "id": "panel", "status": "cancelled",
             "code": {"text": "Hep panel"}, "effectiveDateTime": "2026-11-10",
             "hasMember": [{"reference": "Observation/m1"}]}
    member = obs("5196-1", None, id="m1", valueCodeableConcept=POS)
    assert verdict(screener, bundle(HBCAB_NEG, panel, member), "exc_hbv") == "unknown"


def test_identical_duplicate_counts_once() -> None:
    s = {"resourceType": "MedicationStatement", "id": "s1", "status": "completed",
         "medicationCodeableConcept": {"text": "Blinatumomab"},
         "effectivePeriod": {"start": "2026-10-01", "end": "2026-10-08"}}
    p, _ = bundle_to_patient(bundle(s, dict(s)))
    assert len(p["exposures"]) == 1


def test_contained_results_go_with_their_report_version(screener: Screener) -> None:
    def report(version: str, status: str, value: dict[str, Any]) -> dict[str, Any]:
        return {"resourceType": "DiagnosticReport", "id": "dr1", "status": status,
                "meta": {"versionId": version}, "code": {"text": "Hepatitis panel"},
                "effectiveDateTime": "2026-11-10", "result": [{"reference": "#o1"}],
                "contained": [obs("5196-1", None, id="o1", valueCodeableConcept=value)]}

    doc = bundle(HBCAB_NEG, report("1", "final", POS), report("2", "amended", NEG),
                 kind="history")
    p, _ = bundle_to_patient(doc)
    assert [o["value"] for o in p["observations"] if o["element"] == "hbsag"] == ["negative"]
    assert verdict(screener, doc, "exc_hbv") == "not_met"


# --- another patient's data; incomplete search results ---------------------------------------

BLASTS_HIGH = obs("11150-0", "2026-11-15", valueQuantity=pct(35))
B_ALL = {"resourceType": "Condition", "subject": {"reference": "Patient/p1"},
         "code": {"coding": [{"system": SNOMED, "code": "277571004"}]},
         "onsetDateTime": "2026-10-01", "clinicalStatus": {"coding": [{"code": "active"}]},
         "verificationStatus": {"coding": [{"code": "confirmed"}]}}


def test_another_patients_result_never_decides(screener: Screener) -> None:
    # the result's subject is p2, who is not in the bundle: not the screened p1's blast count
    other = {**BLASTS_HIGH, "subject": {"reference": "Patient/p2"}}
    assert verdict(screener, bundle(B_ALL, BLASTS_HIGH), "exc_leukemia_burden",
                   "NCT06111625") == "met"
    assert verdict(screener, bundle(B_ALL, other), "exc_leukemia_burden",
                   "NCT06111625") == "unknown"
    cond = {**B_ALL, "subject": {"reference": "https://ehr.example/fhir/Patient/p2"}}
    assert verdict(screener, bundle(cond), "inc_diagnosis", "NCT06111625") == "unknown"


def test_newest_result_of_an_incomplete_search_does_not_decide(screener: Screener) -> None:
    low = obs("11150-0", "2026-11-15", valueQuantity=pct(3))
    page = bundle(low, kind="searchset", patient=None)
    assert verdict(screener, [PATIENT, B_ALL, page], "exc_leukemia_burden",
                   "NCT06111625") == "not_met"
    page["link"] = [{"relation": "next", "url": "https://ehr.example/fhir/Observation?p=2"}]
    assert verdict(screener, [PATIENT, B_ALL, page], "exc_leukemia_burden",
                   "NCT06111625") == "unknown"
    # the reason says why, not "needs a finite number, got 'unreadable: ...'"
    patient, _ = bundle_to_patient([PATIENT, B_ALL, page])
    report = screener.screen("NCT06111625", patient, as_of=AS_OF)
    c = next(c for c in report["criteria"] if c["id"] == "exc_leukemia_burden")
    reasons = " ".join(m["reason"] for m in c["missing"])
    assert "search result" in reasons and "is incomplete" in reasons, reasons
    assert "finite number" not in reasons


def test_an_incomplete_search_leaves_unknown_what_its_page_does_not_show(
        screener: Screener) -> None:
    """Page 1 of the Conditions holds no pregnancy: one may be on page 2 (the audit's case:
    'not pregnant' 5 days old decided exc_pregnancy although the condition list was cut)."""
    not_pregnant = {"resourceType": "Observation", "status": "final",
                    "subject": {"reference": "Patient/p1"},
                    "code": {"coding": [{"system": "http://loinc.org", "code": "82810-3"}]},
                    "effectiveDateTime": "2026-11-17", "valueCodeableConcept": NOT_PREGNANT}
    lact = {**LACT_NO, "effectiveDateTime": "2026-11-17"}
    conditions = bundle(B_ALL, kind="searchset", patient=None)
    # the whole list sent: the recent 'not pregnant' decides
    assert verdict(screener, [PATIENT, lact, not_pregnant, conditions],
                   "exc_pregnancy") == "not_met"
    conditions["link"] = [{"relation": "next", "url": "https://ehr.example/fhir/Condition?p=2"}]
    assert verdict(screener, [PATIENT, lact, not_pregnant, conditions],
                   "exc_pregnancy") == "unknown"
    # a B-ALL diagnosis on page 1 is still there: what was sent is not doubted
    assert verdict(screener, [PATIENT, conditions], "inc_diagnosis", "NCT06111625") == "met"


def test_blinatumomab_days_of_an_incomplete_search_are_unknown(screener: Screener) -> None:
    given = {"resourceType": "MedicationAdministration", "status": "completed",
             "subject": {"reference": "Patient/p1"},
             "medicationCodeableConcept": {"text": "blinatumomab"},
             "effectivePeriod": {"start": "2026-11-01", "end": "2026-11-07"}}
    page = {"resourceType": "Bundle", "type": "searchset", "total": 4,
            "entry": [{"resource": given}]}
    assert verdict(screener, [PATIENT, page], "exc_blinatumomab_days",
                   "NCT06111625") == "unknown"
    page["total"] = 1
    assert verdict(screener, [PATIENT, page], "exc_blinatumomab_days",
                   "NCT06111625") == "not_met"  # 7 days, all of them sent


def test_quantitative_hcg_with_disagreeing_ranges_is_unusable_not_a_crash() -> None:
    """The adapter passes disagreeing ranges on as an unusable (text) limit; the hCG reader
    compared a number with it and raised."""
    hcg = {"resourceType": "Observation", "status": "final",
           "code": {"coding": [{"system": "http://loinc.org", "code": "2118-8"}]},
           "effectiveDateTime": "2026-11-20",
           "valueQuantity": {"value": 3, "unit": "m[IU]/mL", "system": "http://unitsofmeasure.org",
                             "code": "m[IU]/mL"},
           "referenceRange": [{"high": {"value": 5, "unit": "m[IU]/mL"}},
                              {"high": {"value": 10, "unit": "m[IU]/mL"},
                               "appliesTo": [{"text": "pregnancy"}]}]}
    patient = {"resourceType": "Patient", "id": "p1", "gender": "female",
               "birthDate": "1990-01-01"}
    p, issues = bundle_to_patient({"resourceType": "Bundle", "type": "collection",
                                   "entry": [{"resource": patient}, {"resource": hcg}]})
    (preg,) = [o for o in p["observations"] if o["element"] == "pregnant"]
    assert str(preg["value"]).startswith("unreadable")
    assert "fhir.ambiguous_range" in [i["code"] for i in issues]


# --- review of the day's adapter code --------------------------------------------------------

def test_odd_version_ids_are_conflicting_versions_not_a_crash() -> None:
    for vid in ("²", "9" * 5000):
        a = obs("1742-6", "2024-01-01", id="o1", meta={"versionId": vid},
                valueQuantity={"value": 30, "unit": "U/L"})
        b = obs("1742-6", "2024-01-01", id="o1", meta={"versionId": "1"},
                valueQuantity={"value": 31, "unit": "U/L"})
        _, issues = bundle_to_patient(bundle(a, b))
        assert "fhir.conflicting_versions" in [i["code"] for i in issues], vid


def test_an_unreadable_age_bound_keeps_the_result(screener: Screener) -> None:
    """A range whose age bound overflows a float may apply: the newer creatinine of 5.0 (4 x
    ULN) must not be dropped so that the older 1.0 decides."""
    rr = [{"low": mgdl(0.6), "high": mgdl(1.2), "age": {"high": {"value": 10**400, "unit": "d"}}}]
    newer = obs("2160-0", "2026-11-20", valueQuantity=mgdl(5.0), referenceRange=rr)
    assert verdict(screener, bundle(BUN, CREAT_OLD, newer), "inc_renal") == "not_met"


@pytest.mark.parametrize("subject", [{"reference": "Group/g1"}, "Patient/p2",
                                     {"identifier": {"value": "OTHER"}}])
def test_a_subject_that_is_not_the_screened_patient_is_dropped(screener: Screener,
                                                              subject: Any) -> None:
    newer = obs("2160-0", "2026-11-20", valueQuantity=mgdl(5.0),
                referenceRange=[{"low": mgdl(0.6), "high": mgdl(1.2)}], subject=subject)
    doc = bundle(BUN, CREAT_OLD, newer)
    _, issues = bundle_to_patient(doc)
    assert "fhir.unresolved_subject" in [i["code"] for i in issues]
    assert verdict(screener, doc, "inc_renal") == "met"   # the screened patient's own data


def test_a_pregnancy_condition_counts_as_of_its_recording(screener: Screener) -> None:
    cond = {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"},
            "code": {"coding": [{"system": SNOMED, "code": "77386006"}]},
            "onsetDateTime": "2026-11-15", "recordedDate": "2026-11-20",
            "clinicalStatus": {"coding": [{"code": "active"}]}}
    hcg = obs("2106-3", "2026-11-17", valueString="Negative")
    assert verdict(screener, bundle(LACT_NO, cond, hcg), "exc_pregnancy") == "met"


def test_a_long_dated_hasmember_chain_is_walked_once() -> None:
    """Counted, not timed: every panel pushed its whole chain again (5,000 dated panels: 80 s
    of a worker for one body)."""
    from screener.adapters import fhir
    n = 300
    chain = [{"resourceType": "Observation", "id": f"c{i}", "status": "final",
              "code": {"text": "panel"}, "effectiveDateTime": "2026-11-01",
              "hasMember": [{"reference": f"Observation/c{i + 1}"}]} for i in range(n)]
    calls = 0
    real = fhir._observation_resolver

    def counting(found: Any) -> Any:
        resolve = real(found)

        def wrapped(*a: Any) -> Any:
            nonlocal calls
            calls += 1
            return resolve(*a)
        return wrapped
    fhir._observation_resolver = counting  # type: ignore[assignment]
    try:
        bundle_to_patient(bundle(*chain))
    finally:
        fhir._observation_resolver = real  # type: ignore[assignment]
    assert calls <= 2 * n, calls


def test_a_report_dated_only_by_its_period_end_dates_its_results(screener: Screener) -> None:
    """Found by the differential test (FHIR vs canonical): a DiagnosticReport with only
    effectivePeriod.end left its undated results undated (unknown)."""
    ecog = {"resourceType": "Observation", "id": "ecog1", "status": "final",
            "subject": {"reference": "Patient/p1"},
            "code": {"coding": [{"system": "http://loinc.org", "code": "89247-1"}]},
            "valueInteger": 1}
    report = {"resourceType": "DiagnosticReport", "id": "r1", "status": "final",
              "subject": {"reference": "Patient/p1"},
              "code": {"text": "clinic visit"},
              "effectivePeriod": {"end": "2026-11-10"}, "result": [{"reference": "#ecog1"}],
              "contained": [ecog]}
    assert verdict(screener, [PATIENT, B_ALL, report], "inc_ecog") == "met"


def test_an_onset_period_with_only_an_end_bounds_the_onset() -> None:
    mi = {"resourceType": "Condition", "id": "mi", "subject": {"reference": "Patient/p1"},
          "code": {"coding": [{"system": "http://snomed.info/sct", "code": "22298006"}]},
          "clinicalStatus": {"coding": [{"code": "resolved"}]},
          "onsetPeriod": {"end": "2020-03-01"}}
    patient, _ = bundle_to_patient([PATIENT, mi])
    cond = next(c for c in patient["conditions"] if c.get("element") == "myocardial_infarction")
    assert cond["onset"] == "2020-03-01" and cond["onset_from"] == "on_or_before"
