"""Wrong verdicts found by the 2026-11-23 audit of the normalizer, each pinned here.

Every case had given a met / not_met that the data do not support (or the opposite of what they
say); the expected verdicts are the clinically careful ones, mostly `unknown` with a reason.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from screener.screen import Screener

ROOT = Path(__file__).resolve().parents[1]
AS_OF = date(2026, 11, 22)
T1, T2 = "NCT06930105", "NCT06111625"


def verdict(s: Screener, patient: dict[str, Any], criterion: str, trial: str = T1,
            as_of: date = AS_OF) -> dict[str, Any]:
    report = s.screen(trial, patient, as_of)
    return next(c for c in report["criteria"] if c["id"] == criterion)


def ecog(value: int, when: str) -> dict[str, Any]:
    return {"element": "ecog", "value": value, "date": when}


# --- which result is the newest: moments, not text -------------------------------------------

@pytest.mark.parametrize("older, newer", [
    # a zone makes 23:00-05:00 the later instant, though its text sorts first
    (ecog(1, "2026-11-21T01:00Z"), ecog(4, "2026-11-20T23:00-05:00")),
    # fractions of a second sort before "Z" as text
    (ecog(1, "2026-11-20T10:00:00Z"), ecog(4, "2026-11-20T10:00:00.500Z")),
    # a leading space sorted the newer date first as text
    (ecog(1, "2026-11-01"), ecog(4, " 2026-11-20")),
])
def test_newest_is_the_latest_moment(screener: Screener, older: dict[str, Any],
                                     newer: dict[str, Any]) -> None:
    for order in ([older, newer], [newer, older]):
        v = verdict(screener, {"observations": order}, "inc_ecog")
        assert v["verdict"] == "not_met", v   # ECOG 4 is the newest


@pytest.mark.parametrize("a, b", [
    (ecog(1, "2026-11-20T08:00Z"), ecog(4, "2026-11-20T03:00-05:00")),   # one instant
    (ecog(1, "2026-11-20T10:00Z"), ecog(4, "2026-11-20")),               # date vs time
    (ecog(1, "2026-11-10"), ecog(4, "2026-11")),                         # partial date
    (ecog(1, "2026-11-20T10:00"), ecog(4, "2026-11-20T12:00Z")),         # no zone
])
def test_results_that_may_be_equally_recent_and_disagree_are_unknown(
        screener: Screener, a: dict[str, Any], b: dict[str, Any]) -> None:
    for order in ([a, b], [b, a]):
        v = verdict(screener, {"observations": order}, "inc_ecog")
        assert v["verdict"] == "unknown", v
        reason = v["missing"][0]["reason"]
        assert "conflicting ecog results" in reason or "partial date" in reason, reason


def test_results_on_distinct_days_still_order(screener: Screener) -> None:
    v = verdict(screener, {"observations": [ecog(4, "2026-11-19"), ecog(1, "2026-11-20")]},
                "inc_ecog")
    assert v["verdict"] == "met"


# --- a site default ULN stands in only for results without a range ---------------------------

def test_site_uln_does_not_replace_an_unusable_range(tmp_path: Path) -> None:
    text = (ROOT / "rules" / f"{T1}.yaml").read_text()
    text = text.replace("defaults:\n", "site_uln:\n  alt: {value: 40, unit: U/L}\n"
                        "  ast: {value: 40, unit: U/L}\ndefaults:\n", 1)
    (tmp_path / f"{T1}.yaml").write_text(text)
    s = Screener.from_paths([str(tmp_path)])
    try:
        def alt(**kw: Any) -> dict[str, Any]:
            return {"observations": [
                {"element": "alt", "value": 100, "unit": "U/L", "date": "2026-11-20", **kw},
                {"element": "ast", "value": 20, "unit": "U/L", "date": "2026-11-20"}]}
        # no range at all: the site default (40) gives 2.5 x ULN, and the text says whose
        v = verdict(s, alt(), "inc_liver_transaminases")
        assert v["verdict"] == "met"
        from screener.report import describe
        assert "alt=100 U/L (2.5 x ULN 40 U/L, site default)" in describe(v)
        v = verdict(s, alt(reference_range={"high": 40}), "inc_liver_transaminases")
        assert "(2.5 x ULN 40 U/L)" in describe(v)
        # the lab's own range is there but unusable: not replaced by the site default
        for rr in ({"high": "25 U/L"}, {"high": 0}, {"high": 25, "unit": "furlongs"}):
            v = verdict(s, alt(reference_range=rr), "inc_liver_transaminases")
            assert v["verdict"] == "unknown", (rr, v)
            assert any("site default applies only" in m["reason"] for m in v["missing"])
    finally:
        s.close()


def test_an_instant_that_may_be_as_new_as_a_local_date_is_a_conflict_too(
        screener: Screener) -> None:
    """Not only the next result in order: a zoned time that falls on the newest local date's
    day in some zone is as new as it."""
    obs = [ecog(1, "2026-11-20"), ecog(1, "2026-11-19"), ecog(4, "2026-11-20T11:00Z")]
    v = verdict(screener, {"observations": obs}, "inc_ecog")
    assert v["verdict"] == "unknown", v


# --- records that cannot be placed never let a review prove absence -------------------------

REVIEWED = {"reviewed": {"conditions": "2026-11-20", "exposures": "2026-11-20"}}


@pytest.mark.parametrize("patient, criterion, trial", [
    # a condition entry that is not an object
    ({**REVIEWED, "conditions": ["DVT 2026-10"]}, "exc_venous_thrombosis", T1),
    # a condition recorded among the observations
    ({**REVIEWED, "observations": [{"element": "active_infection", "value": True,
                                    "date": "2026-11-18"}]}, "exc_active_infection", T1),
    # an exposure coded only in RxNorm (blinatumomab 1603296), or not an object
    ({**REVIEWED, "exposures": [{"codes": [{"system": "http://www.nlm.nih.gov/research/umls/"
                                            "rxnorm", "code": "1603296"}], "days": 28}]},
     "exc_blinatumomab_days", T2),
    ({**REVIEWED, "exposures": ["blinatumomab 28 days"]}, "exc_blinatumomab_days", T2),
    # a section under another name
    ({**REVIEWED, "Conditions": [{"element": "dvt", "onset": "2026-10-01"}]},
     "exc_venous_thrombosis", T1),
    ({**REVIEWED, "exposure": [{"element": "blinatumomab", "days": 28}]},
     "exc_blinatumomab_days", T2),
    # a field written differently: "Present": false is not a documented absence, nor a record
    ({**REVIEWED, "conditions": [{"element": "blinatumomab_hypersensitivity",
                                  "Present": False, "date": "2026-11-20"}]},
     "exc_hypersensitivity", T1),
])
def test_unreadable_records_keep_a_review_from_proving_absence(
        screener: Screener, patient: dict[str, Any], criterion: str, trial: str) -> None:
    v = verdict(screener, patient, criterion, trial)
    assert v["verdict"] == "unknown", v


def test_a_misspelt_observation_field_makes_the_result_unusable(screener: Screener) -> None:
    """"Status": "entered-in-error" read as no status would count a retracted result."""
    obs = [ecog(1, "2026-11-01"), {**ecog(4, "2026-11-20"), "Status": "entered-in-error"}]
    v = verdict(screener, {"observations": obs}, "inc_ecog")
    assert v["verdict"] == "unknown", v
    # a harmless extra field is ignored
    obs = [{**ecog(1, "2026-11-20"), "lab_order_number": "A-17"}]
    assert verdict(screener, {"observations": obs}, "inc_ecog")["verdict"] == "met"


def test_unknown_top_level_fields_are_data_issues(screener: Screener) -> None:
    report = screener.screen(T1, {"birth_date": "1980-01-01", "favourite_colour": "blue"},
                             AS_OF)
    assert any(i["code"] == "unknown_field" and "favourite_colour" in i["msg"]
               for i in report["data_issues"])


# --- condition records: case, conflicts, dates that are spans -------------------------------

@pytest.mark.parametrize("status", ["Provisional", " provisional", "suspected", "DIFFERENTIAL"])
def test_verification_status_is_read_whatever_its_case(screener: Screener, status: str) -> None:
    p = {**REVIEWED, "conditions": [{"element": "active_infection", "onset": "2026-11-18",
                                     "clinical_status": "active",
                                     "verification_status": status}]}
    report = screener.screen(T1, p, AS_OF)
    v = next(c for c in report["criteria"] if c["id"] == "exc_active_infection")
    assert v["verdict"] == "unknown"
    # read as the status it is, whatever its case: no "unknown verification status" issue
    # (except for a word that is no FHIR status: read as unconfirmed, and said so)
    issues = [i for i in report["data_issues"] if "verification_status" in i["loc"]]
    assert bool(issues) == (status == "suspected"), report["data_issues"]


@pytest.mark.parametrize("status", ["Refuted", "ENTERED-IN-ERROR"])
def test_refuted_whatever_its_case_never_counts(screener: Screener, status: str) -> None:
    p = {**REVIEWED, "conditions": [{"element": "active_infection", "onset": "2026-11-18",
                                     "clinical_status": "active",
                                     "verification_status": status}]}
    assert verdict(screener, p, "exc_active_infection")["verdict"] == "not_met"


def test_a_record_contradicted_by_a_later_documented_absence_is_unknown(
        screener: Screener) -> None:
    p = {"conditions": [
        {"element": "uncontrolled_hypertension", "onset": "2026-01-10",
         "clinical_status": "active"},
        {"element": "uncontrolled_hypertension", "present": False, "date": "2026-11-21"}]}
    v = verdict(screener, p, "exc_hypertension")
    assert v["verdict"] == "unknown"
    assert "contradicted by a documented absence" in v["missing"][0]["reason"]
    # an absence documented before the record began does not contradict it
    p["conditions"][1]["date"] = "2025-12-01"
    assert verdict(screener, p, "exc_hypertension")["verdict"] == "met"


def test_recorded_date_is_only_a_bound_on_the_onset(screener: Screener) -> None:
    """FHIR recordedDate (no onset given): the condition began then or earlier."""
    def stroke(**kw: Any) -> dict[str, Any]:
        return {**REVIEWED, "conditions": [{"element": "arterial_thrombosis",
                                            "onset_from": "recordedDate", **kw}]}
    # recorded 50 days ago, resolved: it may have begun long before the 92-day window
    v = verdict(screener, stroke(onset="2026-10-03", clinical_status="resolved"),
                "exc_arterial_thrombosis")
    assert v["verdict"] == "unknown" and "recorded on" in v["missing"][0]["reason"]
    # recorded 50 days ago and still active: it lasts into the window whenever it began
    assert verdict(screener, stroke(onset="2026-10-03", clinical_status="active"),
                   "exc_arterial_thrombosis")["verdict"] == "met"
    # recorded before the window and ended before it
    assert verdict(screener, stroke(onset="2026-01-03", abatement="2026-02-01"),
                   "exc_arterial_thrombosis")["verdict"] == "not_met"
    # an old MI added to the problem list 12 days ago: maybe acute, maybe not
    mi = {**REVIEWED, "conditions": [{"element": "myocardial_infarction", "onset": "2026-11-10",
                                      "onset_from": "recordedDate"}]}
    assert verdict(screener, mi, "inc_cardiac_acute")["verdict"] == "unknown"


def test_partial_dates_are_spans(screener: Screener) -> None:
    # the 92-day window starts 2026-08-22: "2026-08" may be before or after that
    p = {**REVIEWED, "conditions": [{"element": "arterial_thrombosis", "onset": "2026-06-01",
                                     "abatement": "2026-08"}]}
    v = verdict(screener, p, "exc_arterial_thrombosis")
    assert v["verdict"] == "unknown" and "ended between" in v["missing"][0]["reason"]
    p["conditions"][0]["abatement"] = "2026-07"
    assert verdict(screener, p, "exc_arterial_thrombosis")["verdict"] == "not_met"
    p["conditions"][0].update(onset="2026-08", abatement="2026-08")
    assert verdict(screener, p, "exc_arterial_thrombosis")["verdict"] == "unknown"
    p["conditions"][0].update(onset="2026-09", abatement="2026-09")
    assert verdict(screener, p, "exc_arterial_thrombosis")["verdict"] == "met"


def test_an_implausible_upper_limit_decides_nothing(screener: Screener) -> None:
    def alt(high: Any) -> dict[str, Any]:
        return {"observations": [
            {"element": "alt", "value": 30, "unit": "U/L", "date": "2026-11-20",
             "reference_range": {"high": high}},
            {"element": "ast", "value": 20, "unit": "U/L", "date": "2026-11-20",
             "reference_range": {"high": 40}}]}
    v = verdict(screener, alt(1e-9), "inc_liver_transaminases")
    assert v["verdict"] == "unknown", v
    assert verdict(screener, alt(40), "inc_liver_transaminases")["verdict"] == "met"
    # an upper limit no laboratory has (0.004 U/L; 2,400 U/L, i.e. 40 ukat/L read as U/L) is a
    # unit mix-up: outside the ALT band 10-200 U/L it decides nothing (it gave not_met)
    for high in (0.004, 2400):
        v = verdict(screener, alt(high), "inc_liver_transaminases")
        assert v["verdict"] == "unknown", (high, v)
    for high in (10, 200):
        assert verdict(screener, alt(high), "inc_liver_transaminases")["verdict"] != "unknown"


@pytest.mark.parametrize(("value", "unit", "high", "high_unit"), [
    (1.6, "mg/dL", 106, "mg/dL"),        # a umol/L range labelled mg/dL
    (1.6, "mg/dL", 106, None),           # a umol/L range without a unit
    (130, "umol/L", 1.2, None),          # a mg/dL range without a unit
    (130, "umol/L", 1.2, 0),             # a unit that is not text
    (130, "umol/L", 1.2, ["mg/dL"]),
])
def test_a_creatinine_range_in_the_wrong_unit_decides_nothing(
        screener: Screener, value: float, unit: str, high: float, high_unit: Any) -> None:
    """A units audit: each of these gave met or not_met on a 17- to 88-fold ratio error."""
    rr: dict[str, Any] = {"high": high} if high_unit is None else {"high": high,
                                                                    "unit": high_unit}
    bun = {"element": "bun", "value": 14, "unit": "mg/dL", "reference_range": {"high": 20},
           "date": "2026-11-20"}
    p = {"observations": [{"element": "creatinine", "value": value, "unit": unit,
                           "reference_range": rr, "date": "2026-11-20"}, bun]}
    v = verdict(screener, p, "inc_renal")
    assert v["verdict"] == "unknown", v
    assert [m["element"] for m in v["missing"]] == ["creatinine"]
    # control: the same result with its range in the right unit decides
    right = {"high": 106, "unit": "umol/L"} if unit == "mg/dL" else {"high": 1.2,
                                                                     "unit": "mg/dL"}
    p["observations"][0]["reference_range"] = right
    assert verdict(screener, p, "inc_renal")["verdict"] != "unknown"


def test_a_creatinine_below_any_living_patients_is_implausible(screener: Screener) -> None:
    # 1.6 umol/L (0.018 mg/dL) is 1.6 mg/dL labelled umol/L, with a range in the same unit
    p = {"observations": [{"element": "creatinine", "value": 1.6, "unit": "umol/L",
                           "reference_range": {"high": 106, "unit": "umol/L"},
                           "date": "2026-11-20"}]}
    report = screener.screen(T1, p, AS_OF)
    v = next(c for c in report["criteria"] if c["id"] == "inc_renal")
    assert v["verdict"] == "unknown"
    assert any(i["code"] == "implausible" for i in report["data_issues"])


# --- second audit: element semantics (reproducers of a tester, inline) ------------------

def lab(element: str, value: float, when: str) -> dict[str, Any]:
    """A transaminase-like result in U/L with an upper limit of 40 (the audit cases' usual)."""
    return {"element": element, "value": value, "unit": "U/L",
            "reference_range": {"high": 40}, "date": when}


SECOND_AUDIT: dict[str, tuple[dict[str, Any], str, str]] = {
    'r1_sticky_window': (
        {'conditions': [{'element': 'dvt', 'onset': '2026-06-01', 'clinical_status': 'active'}],
         'observations': [{'element': 'vte_symptomatic', 'value': True, 'date': '2026-05-21'},
                          {'element': 'vte_symptomatic',
                           'value': False,
                           'date': '2026-05-22T00:30:00+14:00'}]},
        'exc_venous_thrombosis', 'not_met'),
    'r2_broader_negative': (
        {'conditions': [{'codes': [{'system': 'http://hl7.org/fhir/sid/icd-10',
                                    'code': 'I48.91'}],
                         'present': False,
                         'date': '2026-11-20'},
                        {'element': 'heart_failure', 'present': False, 'date': '2026-11-20'},
                        {'element': 'unstable_angina', 'present': False, 'date': '2026-11-20'}]},
        'exc_cardiac_history', 'unknown'),
    'r2b_broader_negative_vte': (
        {'conditions': [{'codes': [{'system': 'http://hl7.org/fhir/sid/icd-10', 'code': 'I81'}],
                         'present': False,
                         'date': '2026-11-20'},
                        {'element': 'pulmonary_embolism',
                         'present': False,
                         'date': '2026-11-20'}]},
        'exc_venous_thrombosis', 'unknown'),
    'r3_unknown_condition_name': (
        {'conditions': [{'element': 'PE', 'onset': '2026-10-01', 'clinical_status': 'active'}],
         'observations': [{'element': 'vte_symptomatic', 'value': True, 'date': '2026-10-01'}],
         'reviewed': {'conditions': '2026-11-20'}},
        'exc_venous_thrombosis', 'unknown'),
    'r3b_name_with_code': (
        {'conditions': [{'element': 'venous thrombosis',
                         'codes': [{'system': 'http://snomed.info/sct', 'code': '128053003'}],
                         'onset': '2026-10-01',
                         'clinical_status': 'active'}],
         'observations': [{'element': 'vte_symptomatic', 'value': True, 'date': '2026-10-01'}],
         'reviewed': {'conditions': '2026-11-20'}},
        'exc_venous_thrombosis', 'met'),
    'r3c_obs_name_with_loinc': (
        {'observations': [lab('alt', 30, '2026-11-01'),
                          {'element': 'SGPT',
                           'code': {'system': 'http://loinc.org', 'code': '1742-6'},
                           'value': 400,
                           'unit': 'U/L',
                           'reference_range': {'high': 40},
                           'date': '2026-11-20'},
                          lab('ast', 30, '2026-11-01')]},
        'inc_liver_transaminases', 'not_met'),
    'r4_two_codes': (
        {'conditions': [{'codes': [{'system': 'http://hl7.org/fhir/sid/icd-10',
                                    'code': 'I50.9'},
                                   {'system': 'http://hl7.org/fhir/sid/icd-10',
                                    'code': 'I21.4'}],
                         'onset': '2026-11-10'}],
         'reviewed': {'conditions': '2026-11-20'}},
        'inc_cardiac_acute', 'not_met'),
    'r4b_two_codes_stroke': (
        {'conditions': [{'codes': [{'system': 'http://snomed.info/sct', 'code': '128053003'},
                                   {'system': 'http://hl7.org/fhir/sid/icd-10',
                                    'code': 'I63.9'}],
                         'onset': '2026-11-10'}],
         'reviewed': {'conditions': '2026-11-20'}},
        'exc_arterial_thrombosis', 'met'),
    'r5_partial_date_window': (
        {'observations': [lab('ast', 20, '2026-11-20'),
                          lab('alt', 30, '2026-10-25'),
                          lab('alt', 400, '2026-10'),
                          lab('alt', 30, '2026-09-01')]},
        'inc_liver_transaminases', 'unknown'),
    'r6_age_conflict': (
        {'birth_date': '1966-01-01', 'age': 61},
        'inc_age', 'unknown'),
    'r7_urea_mixed_units': (
        {'observations': [{'code': {'system': 'http://loinc.org', 'code': '3091-6'},
                           'value': 40,
                           'unit': 'mg/dL',
                           'reference_range': {'high': 8.3, 'unit': 'mmol/L'},
                           'date': '2026-11-01'},
                          {'element': 'creatinine',
                           'value': 0.8,
                           'unit': 'mg/dL',
                           'reference_range': {'high': 1.0},
                           'date': '2026-11-01'}]},
        'inc_renal', 'unknown'),
    'r8_hbv_log0': (
        {'observations': [{'element': 'hbsag', 'value': 'negative', 'date': '2026-11-01'},
                          {'element': 'hbcab', 'value': 'positive', 'date': '2026-11-01'},
                          {'element': 'hbv_dna',
                           'value': 0,
                           'unit': 'log10 IU/mL',
                           'date': '2026-11-01'}]},
        'exc_hbv', 'unknown'),
    'r9_abated_but_active': (
        {'conditions': [{'element': 'active_infection',
                         'onset': '2026-10-01',
                         'abatement': '2026-10-15',
                         'clinical_status': 'relapse'}],
         'reviewed': {'conditions': '2026-11-20'}},
        'exc_active_infection', 'unknown'),
}


@pytest.mark.parametrize("name", sorted(SECOND_AUDIT))
def test_second_audit_cases(screener: Screener, name: str) -> None:
    """r1: a sticky flag outside the window; r2: a documented absence of a sibling code;
    r3: a condition name the catalogue lacks (with and without a code); r4: codes for two
    conditions; r5: a partial date near a window; r6: age and birth date disagree; r7: urea /
    BUN range in another unit; r8: a log10 viral load of 0; r9: an end date on an active
    record."""
    patient, criterion, expected = SECOND_AUDIT[name]
    v = verdict(screener, patient, criterion)
    assert v["verdict"] == expected, v


def test_a_zoned_result_on_the_utc_as_of_date_is_not_in_the_future(screener: Screener) -> None:
    """01:00 on 11-23 at UTC+10 is 15:00 on 11-22 UTC: with as_of the UTC date (CDS Hooks), the
    newest result must not be ignored as 'after as_of' and an older one decide."""
    obs = [{"element": "marrow_blasts_pct", "value": 3, "unit": "%", "date": "2026-11-10"},
           {"element": "marrow_blasts_pct", "value": 35, "unit": "%",
            "date": "2026-11-23T01:00+10:00"}]
    v = verdict(screener, {"observations": obs}, "exc_leukemia_burden", T2)
    assert v["verdict"] == "met", v
    # a local date after as_of, or an instant after it, is still in the future
    obs[1]["date"] = "2026-11-23T11:00+10:00"
    assert verdict(screener, {"observations": obs}, "exc_leukemia_burden", T2)["verdict"] == \
        "not_met"


def test_missing_lists_only_what_would_resolve_the_criterion(screener: Screener) -> None:
    """A man's contraception criterion applies whatever his childbearing potential: the
    element was listed as missing for every man (and skewed the batch's 'blocked only by')."""
    r = screener.screen(T1, {"sex": "male", "birth_date": "1980-01-01"}, AS_OF)
    c = next(c for c in r["criteria"] if c["id"] == "inc_contraception")
    assert c["verdict"] == "unknown"
    assert [m["element"] for m in c["missing"]] == ["attestation"]
    assert "childbearing_potential" not in r["missing_data"]
    # a woman of unknown potential: the applicability is open, so it is listed
    r = screener.screen(T1, {"sex": "female", "birth_date": "1980-01-01"}, AS_OF)
    c = next(c for c in r["criteria"] if c["id"] == "inc_contraception")
    assert "childbearing_potential" in [m["element"] for m in c["missing"]]


# --- review of the day's code: edges and cost ------------------------------------------------

def test_courses_at_the_end_of_the_calendar_do_not_overflow(screener: Screener) -> None:
    v = verdict(screener, {"exposures": [{"element": "blinatumomab", "start": "9999-12-30",
                                          "days": 5}]}, "exc_blinatumomab_days", T2,
                as_of=date(9999, 12, 31))
    assert v["verdict"] == "not_met", v           # 2 days given by as_of
    v = verdict(screener, {"exposures": [
        {"element": "blinatumomab", "start": "9999-12-01", "end": "9999-12-31"},
        {"element": "blinatumomab", "start": "9999-12-31", "end": "9999-12-31"}]},
        "exc_blinatumomab_days", T2, as_of=date.max)
    assert v["verdict"] == "met", v               # 31 days


def test_a_year_with_a_time_is_a_whole_year(screener: Screener) -> None:
    """'2025T12:00' is a partial date of the year 2025, not of January 2025."""
    for onset in ("2025", "2025T12:00"):
        p = {"conditions": [{"element": "myocardial_infarction", "onset": onset}],
             "reviewed": {"conditions": "2026-01-10"}}
        v = verdict(screener, p, "exc_organ_dysfunction", T2, as_of=date(2026, 1, 15))
        assert v["verdict"] == "unknown", (onset, v)
    # birth date: born some time in 2008 -> 17 or 18 on 2026-06-01, not surely 18
    v = verdict(screener, {"birth_date": "2008T00:00"}, "inc_age", T1, as_of=date(2026, 6, 1))
    assert v["verdict"] == "unknown", v


def test_documented_absences_are_read_once_per_element_not_per_record(
        screener: Screener) -> None:
    """The conflict check scanned every absence for every record (18 s at 50,000 entries):
    counted here, not timed."""
    from screener.normalize import fill, prepare

    class Counting(list):  # type: ignore[type-arg]
        reads = 0

        def __iter__(self):  # type: ignore[no-untyped-def]
            Counting.reads += 1
            return super().__iter__()

    n = 2_000
    p = {"conditions": [{"element": "b_all", "onset": "2020-01-01"}] * (n // 2)
         + [{"element": "b_all", "present": False, "date": "2019-01-01"}] * (n // 2)}
    prep = prepare(p, date(2026, 1, 15))
    prep.negatives["b_all"] = Counting(prep.negatives["b_all"])
    facts = fill(prep, screener.get(T2).trial)
    assert "missing" not in facts.evidence[next(k for k in facts.evidence
                                                if facts.evidence[k]["element"] == "b_all")]
    assert Counting.reads <= 2


# --- 2026-11-23 (fifth session) ----------------------------------------------------------------

@pytest.mark.parametrize("element, criterion, value", [
    ("lvef", "inc_lvef", 0.55),            # a fraction written with "%": 55 %, not 0.55 %
    ("lvef", "inc_lvef", 0.6),
    ("fev1_pct_pred", "inc_pulmonary", 0.8),
    ("dlco_pct_pred", "inc_pulmonary", 0.7),
])
def test_a_fraction_written_as_a_percentage_is_implausible(
        screener: Screener, element: str, criterion: str, value: float) -> None:
    obs = {"element": element, "value": value, "unit": "%", "date": "2026-11-01"}
    v = verdict(screener, {"observations": [obs]}, criterion)
    assert v["verdict"] == "unknown", v      # before: not_met (LVEF 0.55 % < 50 %)
    report = screener.screen(T1, {"observations": [obs]}, AS_OF)
    assert any(i["code"] == "implausible" for i in report["data_issues"]), report["data_issues"]


def test_a_low_but_possible_lvef_still_decides(screener: Screener) -> None:
    obs = {"element": "lvef", "value": 15, "unit": "%", "date": "2026-11-01"}
    assert verdict(screener, {"observations": [obs]}, "inc_lvef")["verdict"] == "not_met"


@pytest.mark.parametrize("as_of, verdict_", [
    (date(2026, 2, 28), "unknown"),    # 18 on 28 Feb or on 1 Mar, by jurisdiction
    (date(2026, 3, 1), "met"),
    (date(2026, 2, 27), "not_met"),
    (date(2028, 2, 28), "met"),        # a leap year: 19, the birthday is the next day
])
def test_a_leap_day_birthday_on_28_february_is_not_guessed(
        screener: Screener, as_of: date, verdict_: str) -> None:
    v = verdict(screener, {"birth_date": "2008-02-29"}, "inc_age", as_of=as_of)
    assert v["verdict"] == verdict_, v
    if verdict_ == "unknown":
        assert "29 February" in v["missing"][0]["reason"], v


@pytest.mark.parametrize("code, trial, criterion", [
    ("J18.9", T1, "exc_active_infection"),        # pneumonia: possible active infection
    ("B44.1", T1, "exc_active_infection"),        # invasive aspergillosis
    ("K56.609", T2, "exc_organ_dysfunction"),     # intestinal obstruction: possible severe GI
])
def test_a_coded_possible_condition_on_a_reviewed_list_is_not_absence(
        screener: Screener, code: str, trial: str, criterion: str) -> None:
    """Elements without codes of their own were 'proven absent' by any reviewed list: a
    coded pneumonia read as 'no active infection' (second rule review)."""
    p = {"conditions": [{"codes": [{"system": "http://hl7.org/fhir/sid/icd-10-cm",
                                    "code": code}],
                         "onset": "2026-11-01", "clinical_status": "active"}],
         "reviewed": {"conditions": "2026-11-20"}}
    assert verdict(screener, p, criterion, trial)["verdict"] == "unknown"


@pytest.mark.parametrize("code", ["Z98.61", "Z95.810", "Z95.5"])
def test_coded_cardiovascular_procedure_status_excludes(screener: Screener, code: str) -> None:
    p = {"conditions": [{"codes": [{"system": "http://hl7.org/fhir/sid/icd-10-cm",
                                    "code": code}], "onset": "2024-05-01"}],
         "reviewed": {"conditions": "2026-11-20"}}
    assert verdict(screener, p, "exc_cv_procedure")["verdict"] == "met"


def test_a_partial_onset_that_is_only_a_latest_date_keeps_its_month_end(
        screener: Screener) -> None:
    """onset "2025-11" with onset_from on_or_before: began by 30 November, not by the 1st
    (review of the day's code: it was read as 'by 1 November', a wrong not_met)."""
    p = {"conditions": [{"element": "myocardial_infarction", "onset": "2025-11",
                         "onset_from": "on_or_before"}],
         "reviewed": {"conditions": "2026-02-15"}}
    v = verdict(screener, p, "exc_organ_dysfunction", T2, as_of=date(2026, 2, 20))
    assert v["verdict"] == "unknown", v       # 22-30 November is within 90 days of as_of


def test_an_end_that_is_not_a_date_is_an_end_at_an_unknown_time(screener: Screener) -> None:
    """An abatement that cannot be read ("last spring") was dropped with an issue, so the
    condition read as still going on: met for "within 92 days" on a stroke of 2025."""
    def stroke(**kw: Any) -> dict[str, Any]:
        return {**REVIEWED, "conditions": [{"element": "arterial_thrombosis",
                                            "onset": "2025-03-01", **kw}]}
    v = verdict(screener, stroke(abatement="last spring", clinical_status="active"),
                "exc_arterial_thrombosis")
    assert v["verdict"] == "unknown"
    assert "ended at a time not recorded" in v["missing"][0]["reason"]
    assert verdict(screener, stroke(abatement="last spring"),
                   "exc_arterial_thrombosis")["verdict"] == "unknown"
    # began inside the window: it counts however it ended
    v = verdict(screener, stroke(onset="2026-10-01", abatement="last spring"),
                "exc_arterial_thrombosis")
    assert v["verdict"] == "met"
    # "history of" (no window, not active): an ended record counts
    hf = {**REVIEWED, "conditions": [{"element": "heart_failure", "onset": "2015-02-01",
                                      "abatement": "age 40"}]}
    assert verdict(screener, hf, "exc_cardiac_history")["verdict"] == "met"
    # "unknown" says the same on purpose (what the FHIR adapter sends for abatementAge, ...)
    assert verdict(screener, stroke(abatement="unknown", clinical_status="active"),
                   "exc_arterial_thrombosis")["verdict"] == "unknown"
    # without the end it would be still going on, and met: the end is what changes it
    assert verdict(screener, stroke(clinical_status="active"),
                   "exc_arterial_thrombosis")["verdict"] == "met"


def test_incomplete_makes_what_may_be_missing_unknown(screener: Screener) -> None:
    """`incomplete`: data that may exist but was not received. What was sent still counts where
    more data cannot change it (a condition present), and nothing is read as absent."""
    base = {**REVIEWED, "birth_date": "1985-03-14", "sex": "female", "observations": [
        {"element": "ecog", "value": 1, "date": "2026-11-15"}],
        "conditions": [{"element": "heart_failure", "onset": "2020-01-01"}]}
    assert verdict(screener, base, "inc_ecog")["verdict"] == "met"
    assert verdict(screener, base, "exc_arterial_thrombosis")["verdict"] == "not_met"
    p = {**base, "incomplete": {"observations": "page 2 not sent",
                                "conditions": "page 2 not sent"}}
    v = verdict(screener, p, "inc_ecog")
    assert v["verdict"] == "unknown" and "page 2 not sent" in v["missing"][0]["reason"]
    assert verdict(screener, p, "exc_arterial_thrombosis")["verdict"] == "unknown"
    assert verdict(screener, p, "exc_cardiac_history")["verdict"] == "met"   # present: counts
    assert verdict(screener, p, "inc_age")["verdict"] == "met"   # demographics are not sections
    # one element only
    p = {**base, "incomplete": {"ecog": "the scores feed was down"}}
    assert verdict(screener, p, "inc_ecog")["verdict"] == "unknown"
    assert verdict(screener, p, "exc_arterial_thrombosis")["verdict"] == "not_met"
    # a misspelt key or a wrong type: never silently nothing
    report = screener.screen(T1, {**base, "incomplete": {"ecgo": "x"}}, AS_OF)
    assert any("did you mean 'ecog'" in i["msg"] for i in report["data_issues"])
    assert next(c for c in report["criteria"] if c["id"] == "inc_ecog")["verdict"] == "unknown"
    report = screener.screen(T1, {**base, "incomplete": ["observations"]}, AS_OF)
    assert next(c for c in report["criteria"] if c["id"] == "inc_ecog")["verdict"] == "unknown"


def test_incomplete_is_bounded_deduplicated_and_never_silently_misspelt(
        screener: Screener) -> None:
    base = {**REVIEWED, "observations": [{"element": "ecog", "value": 1,
                                          "date": "2026-11-15"}]}
    assert verdict(screener, base, "inc_ecog")["verdict"] == "met"
    # a look-alike of the field: what it says cannot be read, so everything may be missing
    for field in ("Incomplete", "incompelte", "incomplete_data"):
        v = verdict(screener, {**base, field: {"ecog": "feed down"}}, "inc_ecog")
        assert v["verdict"] == "unknown", field
    # many unknown keys: one reason, not one per key (the report stays small)
    many = {f"zz{i}": "x" for i in range(5000)}
    report = screener.screen(T1, {**base, "incomplete": many}, AS_OF)
    assert len(json.dumps(report)) < 200_000
    assert next(c for c in report["criteria"] if c["id"] == "inc_ecog")["verdict"] == "unknown"
    few = {f"zz{i}": "x" for i in range(50)}
    v = verdict(screener, {**base, "incomplete": few}, "inc_ecog")
    assert v["verdict"] == "unknown" and v["missing"][0]["reason"] == "data not received: x"


def test_what_was_not_received_cannot_undo_a_sticky_result(screener: Screener) -> None:
    # a positive BCR-ABL1 stands whatever later results say, so whatever was not sent too
    p = {"observations": [{"element": "bcr_abl1", "value": "positive", "date": "2026-10-01"}],
         "incomplete": {"observations": "page 2 not sent"}}
    report = screener.screen(T1, p, AS_OF)
    crit = [c for c in report["criteria"]
            if any(e.get("element") == "bcr_abl1" for e in c["evidence"])]
    assert crit and all(c["verdict"] != "unknown" for c in crit), crit


def test_an_unknown_end_does_not_matter_for_an_event_or_a_condition_that_is_over(
        screener: Screener) -> None:
    hf = {**REVIEWED, "conditions": [{"element": "heart_failure", "onset": "2020-01-01",
                                      "clinical_status": "resolved", "abatement": "unknown"}]}
    assert verdict(screener, hf, "exc_organ_dysfunction", T2)["verdict"] == "not_met"
    hf["conditions"][0]["clinical_status"] = "active"
    assert verdict(screener, hf, "exc_organ_dysfunction", T2)["verdict"] == "unknown"


def test_a_broader_code_makes_every_element_it_may_be_possible(screener: Screener) -> None:
    """K55.0 (acute vascular disorders of the intestine) may be an arterial thrombosis or a
    severe GI dysfunction: it made only the first possible, so a reviewed list with K55.0 was
    'no GI dysfunction'."""
    k550 = {**REVIEWED, "conditions": [{"codes": [{"system": "http://hl7.org/fhir/sid/icd-10-cm",
                                                   "code": "K55.0"}],
                                        "onset": "2026-11-01", "clinical_status": "active"}]}
    v = verdict(screener, k550, "exc_organ_dysfunction", T2)
    assert v["verdict"] == "unknown"
    assert any(m["element"] == "gi_dysfunction" for m in v["missing"])
    assert verdict(screener, k550, "exc_arterial_thrombosis")["verdict"] == "unknown"
    # a documented absence of a broader concept proves neither absent
    absent = {**REVIEWED, "conditions": [{**k550["conditions"][0], "present": False,
                                          "date": "2026-11-20"}]}
    report = screener.screen(T2, absent, AS_OF)
    said = [i for i in report["data_issues"] if i["code"] == "broader_code"]
    assert len(said) == 2


@pytest.mark.parametrize(("value", "unit", "code", "expected"), [
    (0, "IU/mL", None, "not_detected"),
    (0, "copies/mL", None, "not_detected"),
    (0, "log10 IU/mL", None, None),
    (0, "lg IU/mL", None, None),           # UCUM's log10 is "lg"
    (0, "Lg[IU]/mL", None, None),
    (0, None, None, None),                 # linear or log: not said
    (0, "IU/mL", "48398-2", None),         # the LOINC code of the log10 result
    (35, None, None, "detected"),          # any positive number is detected, log or not
    (1.2, "lg IU/mL", None, "detected"),
])
def test_a_viral_load_of_zero_says_not_detected_only_in_a_linear_unit(
        value: float, unit: str | None, code: str | None, expected: str | None) -> None:
    from screener.normalize import prepare
    obs: dict[str, Any] = {"element": "hbv_dna", "value": value, "date": "2026-11-20"}
    if unit is not None:
        obs["unit"] = unit
    if code is not None:
        obs["codes"] = [{"system": "http://loinc.org", "code": code}]
    prep = prepare({"observations": [obs]}, AS_OF)
    got = prep.readings["hbv_dna"][0].value if "hbv_dna" in prep.readings else None
    assert got == expected, (obs, prep.unusable.get("hbv_dna"))
    if expected is None:
        assert prep.unusable["hbv_dna"]


def test_a_dose_given_on_a_day_adds_nothing_inside_a_course_and_leaves_the_days_unknown_outside(
        screener: Screener) -> None:
    course = {"element": "blinatumomab", "start": "2026-10-01", "end": "2026-10-10"}

    def days(*extra: dict[str, Any]) -> dict[str, Any]:
        return verdict(screener, {**REVIEWED, "exposures": [course, *extra]},
                       "exc_blinatumomab_days", T2)
    assert days()["verdict"] == "not_met"                                   # 10 days
    assert days({"element": "blinatumomab", "at": "2026-10-05"})["verdict"] == "not_met"
    v = days({"element": "blinatumomab", "at": "2026-09-01"})
    assert v["verdict"] == "unknown" and "duration not recorded" in v["missing"][0]["reason"]
    # after as_of: not used; a partial date: unknown
    assert days({"element": "blinatumomab", "at": "2026-12-01"})["verdict"] == "not_met"
    assert days({"element": "blinatumomab", "at": "2026-09"})["verdict"] == "unknown"


def test_incomplete_with_an_unknown_key_is_not_narrowed_to_a_guess(screener: Screener) -> None:
    # "hbv" is close to hbv_dna, but may mean the whole hepatitis B panel (HBsAg, anti-HBc)
    neg = [{"element": e, "value": "negative", "date": "2026-11-15"} for e in ("hbsag", "hbcab")]
    assert verdict(screener, {"observations": neg}, "exc_hbv")["verdict"] == "not_met"
    p = {"observations": neg, "incomplete": {"hbv": "hepatitis B panel page 2 not sent"}}
    assert verdict(screener, p, "exc_hbv")["verdict"] == "unknown"


def test_an_active_record_is_doubtful_when_records_of_it_were_not_received(
        screener: Screener) -> None:
    # a record not sent may say it ended (see the active-vs-ended conflict rule)
    inf = {**REVIEWED, "conditions": [{"element": "active_infection", "onset": "2026-11-10",
                                       "clinical_status": "active"}]}
    assert verdict(screener, inf, "exc_active_infection")["verdict"] == "met"
    for incomplete in ({"conditions": "page 2 not sent"}, {"active_infection": "feed down"}):
        v = verdict(screener, {**inf, "incomplete": incomplete}, "exc_active_infection")
        assert v["verdict"] == "unknown", incomplete
