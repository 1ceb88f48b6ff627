"""Bad patient input: a clear error or `unknown` with a data issue, never a crash and never a
wrong met / not_met. Each case names the criterion whose verdict must NOT be decided."""

from __future__ import annotations

import json
from datetime import date
from io import StringIO
from pathlib import Path
from typing import Any

import pytest

from screener import cli
from screener.errors import PatientDataError
from screener.screen import Screener

AS_OF = date(2026, 11, 22)
T = "NCT06930105"
ALT = {"element": "alt", "unit": "U/L", "reference_range": {"high": 40}, "date": "2026-11-20"}
#: a normal AST beside the ALT under test (the transaminase criterion reads both)
AST_OK = {"element": "ast", "value": 20, "unit": "U/L", "reference_range": {"high": 40},
          "date": "2026-11-20"}


def verdicts(s: Screener, patient: Any) -> dict[str, Any]:
    r = s.screen(T, patient, AS_OF)
    return {c["id"]: c for c in r["criteria"]} | {"_report": r}


@pytest.mark.parametrize("patient,criterion,issue_code", [
    pytest.param({"age": "abc"}, "inc_age", "value", id="age-string"),
    pytest.param({"age": True}, "inc_age", "value", id="age-bool"),
    pytest.param({"age": -3}, "inc_age", "value", id="age-negative"),
    pytest.param({"age": 1e308}, "inc_age", "value", id="age-1e308"),
    pytest.param({"age": 17.5}, "inc_age", "value", id="age-fraction"),
    pytest.param({"birth_date": "2030-01-01"}, "inc_age", "implausible", id="born-in-future"),
    pytest.param({"birth_date": "1800-01-01"}, "inc_age", "implausible", id="born-1800"),
    pytest.param({"birth_date": "1990-02-30"}, "inc_age", "date", id="impossible-date"),
    pytest.param({"birth_date": 19900101}, "inc_age", "date", id="date-as-number"),
    pytest.param({"observations": [{**ALT, "value": "abc"}, AST_OK]}, "inc_liver_transaminases",
                 "value", id="alt-string"),
    pytest.param({"observations": [{**ALT, "value": True}, AST_OK]}, "inc_liver_transaminases",
                 "value", id="alt-bool"),
    pytest.param({"observations": [{**ALT, "value": 1e308}, AST_OK]}, "inc_liver_transaminases",
                 "implausible", id="alt-1e308"),
    pytest.param({"observations": [{**ALT, "value": float("nan")}, AST_OK]},
                 "inc_liver_transaminases", "value", id="alt-nan"),
    pytest.param({"observations": [{**ALT, "value": float("inf")}, AST_OK]},
                 "inc_liver_transaminases", "value", id="alt-inf"),
    pytest.param({"observations": [{**ALT, "value": -5}, AST_OK]}, "inc_liver_transaminases",
                 "implausible", id="alt-negative"),
    pytest.param({"observations": [{**ALT, "value": 50, "unit": "furlongs"}, AST_OK]},
                 "inc_liver_transaminases", "unit", id="unknown-unit"),
    pytest.param({"observations": [{**ALT, "value": 50, "unit": None}, AST_OK]},
                 "inc_liver_transaminases", "unit", id="no-unit"),
    pytest.param({"observations": [{**ALT, "value": 500, "date": "2027-01-01"}, AST_OK]},
                 "inc_liver_transaminases", "after_as_of", id="future-date"),
    pytest.param({"observations": [{**ALT, "value": 500, "status": "entered-in-error"}, AST_OK]},
                 "inc_liver_transaminases", "status", id="entered-in-error"),
    pytest.param({"observations": [{**ALT, "value": 500, "comparator": ">"}, AST_OK]},
                 "inc_liver_transaminases", "censored", id="censored"),
    pytest.param({"observations": [{**ALT, "value": 500, "reference_range": {"high": 0}}, AST_OK]},
                 "inc_liver_transaminases", "reference_range", id="uln-zero"),
    pytest.param({"observations": [{**ALT, "value": 500, "reference_range": {"high": "x"}},
                                   AST_OK]},
                 "inc_liver_transaminases", "reference_range", id="uln-string"),
    pytest.param({"observations": [{"element": "ecog", "value": 7, "date": "2026-11-20"}]},
                 "inc_ecog", "implausible", id="ecog-7"),
    pytest.param({"observations": [{"element": "ecog", "value": 1.5, "date": "2026-11-20"}]},
                 "inc_ecog", "value", id="ecog-fraction"),
    pytest.param({"observations": [{"element": "hbsag", "value": 1, "date": "2026-11-20"}]},
                 "exc_hbv", "value", id="coded-as-number"),
    pytest.param({"observations": [{"element": "ecog_scor", "value": 1, "date": "2026-11-20"}]},
                 "inc_ecog", "unknown_element", id="unknown-element"),
    pytest.param({"observations": ["not an object"]}, "inc_ecog", "type", id="entry-string"),
    pytest.param({"observations": [{"element": "ecog", "value": 1}]}, "inc_ecog", "date",
                 id="no-date"),
    pytest.param({"sex": 5}, "exc_pregnancy", "value", id="sex-number"),
])
def test_bad_value_gives_unknown_with_issue(screener: Screener, patient: dict[str, Any],
                                            criterion: str, issue_code: str) -> None:
    v = verdicts(screener, patient)
    assert v[criterion]["verdict"] == "unknown"
    codes = {i["code"] for i in v["_report"]["data_issues"]}
    assert issue_code in codes, v["_report"]["data_issues"]


def test_conflicting_same_time_results_are_unknown(screener: Screener) -> None:
    # (a normal AST beside: the criterion reads both, and without it is unknown anyway)
    for values in ((30, 300), (300, 30)):
        p = {"observations": [{**ALT, "value": values[0]}, {**ALT, "value": values[1]},
                              AST_OK]}
        c = verdicts(screener, p)["inc_liver_transaminases"]
        assert c["verdict"] == "unknown" and "conflicting alt results" in c["missing"][0][
            "reason"]
    # control: one of them alone decides
    p = {"observations": [{**ALT, "value": 30}, AST_OK]}
    assert verdicts(screener, p)["inc_liver_transaminases"]["verdict"] == "met"


def test_newest_in_window_wins(screener: Screener) -> None:
    p = {"observations": [{**ALT, "value": 300, "date": "2026-11-01"},
                          {**ALT, "value": 30, "date": "2026-11-20"},
                          AST_OK]}
    c = verdicts(screener, p)["inc_liver_transaminases"]
    assert c["verdict"] == "met"
    alt = next(e for e in c["evidence"] if e["element"] == "alt")
    assert alt["date"] == "2026-11-20" and alt["ratio"] == "0.75"


@pytest.mark.parametrize("patient,msg", [
    pytest.param([], "JSON object", id="list"),
    pytest.param("x", "JSON object", id="string"),
    pytest.param(None, "JSON object", id="null"),
    pytest.param({"observations": {"a": 1}}, "must be a list", id="observations-object"),
    pytest.param({"observations": [{}] * 50_001}, "too many", id="huge"),
])
def test_unusable_document_is_a_clear_error(screener: Screener, patient: Any, msg: str) -> None:
    with pytest.raises(PatientDataError, match=msg):
        screener.screen(T, patient, AS_OF)


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = StringIO(), StringIO()
    code = cli.run(cli.parse_args(list(argv)), out, err)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("content", [
    pytest.param(b"{not json", id="malformed"),
    pytest.param(b'{"age": NaN}', id="nan-literal"),
    pytest.param(b'{"age": Infinity}', id="infinity-literal"),
    pytest.param(b"", id="empty"),
    pytest.param(b"\xff\xfe\x00", id="binary"),
    pytest.param(b"[" * 100_000 + b"]" * 100_000, id="deep-nesting"),
])
def test_cli_rejects_broken_patient_files(tmp_path: Path, content: bytes) -> None:
    f = tmp_path / "p.json"
    f.write_bytes(content)
    code, out, err = run_cli("screen", "--trial", T, str(f), "--as-of", "2026-11-22")
    assert code == 2 and out == ""
    assert "error:" in err


def test_cli_missing_file(tmp_path: Path) -> None:
    code, _, err = run_cli("screen", "--trial", T, str(tmp_path / "nope.json"),
                           "--as-of", "2026-11-22")
    assert code == 2 and "cannot read" in err


def test_cli_unknown_trial_suggests(tmp_path: Path) -> None:
    f = tmp_path / "p.json"
    f.write_text(json.dumps({"age": 30}))
    code, _, err = run_cli("screen", "--trial", "NCT06930150", str(f), "--as-of", "2026-11-22")
    assert code == 2 and "did you mean 'NCT06930105'" in err


def test_cli_attestation_of_data_criterion_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "p.json"
    f.write_text(json.dumps({"age": 30}))
    code, _, err = run_cli("screen", "--trial", T, str(f), "--as-of", "2026-11-22",
                           "--attest", "inc_age")
    assert code == 2 and "decided by data" in err


REVIEWED = {"reviewed": {"conditions": "2026-11-20", "exposures": "2026-11-20"}}


@pytest.mark.parametrize("patient,criterion", [
    pytest.param({"observations": [{**ALT, "value": 30, "date": "2026-11-10"},
                                   {**ALT, "value": "garbled", "date": "2026-11-20"},
                                   AST_OK]},
                 "inc_liver_transaminases", id="newer-unusable-hides-older-normal"),
    pytest.param({"observations": [{**ALT, "value": 30, "date": "2026-11-10"},
                                   {**ALT, "value": 500, "unit": "mg", "date": "2026-11-20"},
                                   AST_OK]},
                 "inc_liver_transaminases", id="newer-unknown-unit-hides-older"),
    pytest.param({"observations": [{**ALT, "value": 30, "date": "2026-11-10"},
                                   {**ALT, "value": 500, "date": None}, AST_OK]},
                 "inc_liver_transaminases", id="undated-result-hides-older"),
    pytest.param({"observations": [{**ALT, "value": 30, "date": "2026-11-10"},
                                   {**ALT, "value": 500, "status": "preliminary"},
                                   AST_OK]},
                 "inc_liver_transaminases", id="newer-preliminary-hides-older"),
    pytest.param({**REVIEWED, "conditions": [{"element": "dvtt", "onset": "2026-11-01"}]},
                 "exc_venous_thrombosis", id="misspelt-condition-with-review"),
    pytest.param({**REVIEWED, "conditions": [{"element": "dvt", "onset": "yesterday"}]},
                 "exc_venous_thrombosis", id="condition-with-garbled-onset"),
    pytest.param({**REVIEWED, "conditions": [{"element": "dvt", "present": "maybe"}]},
                 "exc_venous_thrombosis", id="condition-with-garbled-present"),
    pytest.param({**REVIEWED, "conditions": [{"element": "dvt", "onset": "2026-11-01",
                                              "verification_status": {"x": 1}}]},
                 "exc_venous_thrombosis", id="condition-with-garbled-verification"),
])
def test_unreadable_records_never_read_as_absent(screener: Screener, patient: dict[str, Any],
                                                 criterion: str) -> None:
    """A record we cannot read may say the patient is excluded: unknown, never a pass."""
    assert verdicts(screener, patient)[criterion]["verdict"] == "unknown"
    # control: without the unreadable record the rest decides, so it is what made it unknown
    # (the ALT cases: the older normal ALT and the AST; the conditions: the review)
    readable = {**patient, "conditions": [],
                "observations": [o for i, o in enumerate(patient.get("observations", []))
                                 if i != 1]}
    assert verdicts(screener, readable)[criterion]["verdict"] != "unknown"


@pytest.mark.parametrize("exposure", [
    pytest.param({"element": "blinatumomab", "days": "many"}, id="days-string"),
    pytest.param({"element": "blinatumomab", "days": -1}, id="days-negative"),
    pytest.param({"element": "blinatumomab", "start": "2026-11-01"}, id="no-end"),
    pytest.param({"element": "blinatumomb", "days": 30}, id="misspelt"),
])
def test_unreadable_exposure_is_unknown(screener: Screener, exposure: dict[str, Any]) -> None:
    r = screener.screen("NCT06111625", {**REVIEWED, "exposures": [exposure]}, AS_OF)
    c = next(c for c in r["criteria"] if c["id"] == "exc_blinatumomab_days")
    assert c["verdict"] == "unknown"


def test_retracted_result_is_ignored_and_older_one_counts(screener: Screener) -> None:
    p = {"observations": [{**ALT, "value": 30, "date": "2026-11-10"},
                          {**ALT, "value": 500, "status": "entered-in-error"},
                          AST_OK]}
    assert verdicts(screener, p)["inc_liver_transaminases"]["verdict"] == "met"


def test_future_result_is_ignored_and_older_one_counts(screener: Screener) -> None:
    p = {"observations": [{**ALT, "value": 30, "date": "2026-11-10"},
                          {**ALT, "value": 500, "date": "2026-11-30"},
                          AST_OK]}
    assert verdicts(screener, p)["inc_liver_transaminases"]["verdict"] == "met"


@pytest.mark.parametrize("as_of", [date(1, 1, 5), date(9999, 12, 31)])
def test_extreme_as_of_dates_do_not_crash(screener: Screener, as_of: date) -> None:
    p = {"birth_date": "9999-12", "conditions": [{"element": "dvt", "onset": "0001-01-01"}],
         "observations": [{**ALT, "value": 30, "date": "0001-01-02"}]}
    for trial in ("NCT06930105", "NCT06111625"):
        assert screener.screen(trial, p, as_of)["status"] in ("needs_review", "ineligible")


def test_cli_unwritable_output_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, out, err = run_cli("synth", "3", "--seed", "1", "--as-of", "2026-11-22",
                             "--out", str(blocker / "sub" / "r.ndjson"))
    assert code == 2 and "error:" in err and "Traceback" not in err


def test_quantity_cache_never_changes_an_answer(screener: Screener) -> None:
    """Normalised quantities are cached by exact keys: values equal in Python but different in
    meaning or print (1 / 1.0 / True, 0.0 / -0.0, "40" / 40) must not share an entry, and the
    report must not depend on what was screened before (byte-identical either order)."""
    def alt(value: Any, high: Any = 40) -> dict[str, Any]:
        return {"observations": [{**ALT, "value": value, "reference_range": {"high": high}}]}

    variants = [alt(True), alt(1), alt(1.0), alt("1"), alt(0.0), alt(-0.0), alt(40, "40"),
                alt(40, 40.0), alt(40, True)]
    first = [json.dumps(screener.screen(T, p, AS_OF), sort_keys=True) for p in variants]
    again = [json.dumps(screener.screen(T, p, AS_OF), sort_keys=True)
             for p in reversed(variants)][::-1]
    assert first == again
    by = [verdicts(screener, p)["_report"] for p in variants]
    codes = [{i["code"] for i in r["data_issues"]} for r in by]
    assert "value" in codes[0]                      # True is not a number
    assert not codes[1] and not codes[2] and not codes[3]
    assert "reference_range" in codes[8]            # high: true is not a limit
    shown = [next(e for c in r["criteria"] if c["id"] == "inc_liver_transaminases"
                  for e in c["evidence"] if e["element"] == "alt").get("value") for r in by[4:6]]
    assert shown == ["0 U/L", "0 U/L"]


def test_ratio_beyond_plausible_range_is_unknown_with_reason(screener: Screener) -> None:
    """A ratio this large (5 x 10^12) would not even be representable as an engine code; it is
    refused before that, as an implausible upper limit (see normalize.MAX_X_ULN)."""
    p = {"observations": [{**ALT, "value": 500, "reference_range": {"high": "0.0000000001"}}]}
    report = screener.screen("NCT06930105", p, AS_OF)
    c = next(c for c in report["criteria"] if c["id"] == "inc_liver_transaminases")
    assert c["verdict"] == "unknown"
    assert "reference range that cannot be used" in json.dumps(c)
    # refused by the usual band of ALT upper limits (before the x ULN bound, MAX_X_ULN)
    assert any("outside the usual band" in i["msg"] for i in report["data_issues"])


@pytest.mark.parametrize("extra,verdict", [
    pytest.param([], "not_met", id="review-and-nothing-else: absent"),
    pytest.param([{"codes": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "I10"}]}],
                 "not_met", id="unmatched-icd10-is-some-other-disease"),
    pytest.param([{"codes": [{"system": "http://snomed.info/sct", "code": "1234567001"}]}],
                 "unknown", id="unmatched-snomed-may-be-a-child-concept"),
    pytest.param([{"codes": [{"system": "http://example.org/local", "code": "ART-THR"}]}],
                 "unknown", id="local-code"),
    pytest.param([{"onset": "2026-11-01"}], "unknown", id="no-code-at-all"),
])
def test_complete_review_proves_absence_only_when_every_record_is_placed(
        screener: Screener, extra: list[dict[str, Any]], verdict: str) -> None:
    """A complete condition review makes a missing condition absent, unless some condition
    record could not be matched: without the SNOMED CT hierarchy it may be a more specific
    form of the very condition (a wrong 'absent' could make a patient wrongly eligible)."""
    p = {"reviewed": {"conditions": "2026-11-20"}, "conditions": extra}
    c = verdicts(screener, p)["exc_arterial_thrombosis"]
    assert c["verdict"] == verdict
    if verdict == "unknown":
        (m,) = c["missing"]
        assert "more specific form" in m["reason"] and "conditions[0]" in m["reason"]


def test_long_text_and_huge_numbers_never_become_cache_keys(screener: Screener) -> None:
    """Normalisation caches are keyed by value text: a hostile payload of long strings or
    enormous integers must be parsed (and refused) without being pinned in memory."""
    from screener import normalize
    normalize._QUANTITIES.clear()
    normalize._text_number.cache_clear()
    normalize._parse_date_text.cache_clear()
    normalize._time_span.cache_clear()
    long_text = "1" * 5000
    p = {"observations": [
        {**ALT, "value": long_text},
        {**ALT, "value": 10**4000, "date": "2026-11-19"},
        {**ALT, "value": 50, "unit": "U/L" + " " * 5000, "date": "2026-11-18"},
        {**ALT, "value": 50, "date": "2026-11-17" + "T" + "0" * 5000}, AST_OK,
    ]}
    r = verdicts(screener, p)
    assert r["inc_liver_transaminases"]["verdict"] == "unknown"
    keys = list(normalize._QUANTITIES)
    assert all(len(repr(k)) < 500 for k in keys), keys
    assert normalize._text_number.cache_info().currsize == 0
    # three dates, and the date part (10 characters) of the long timestamp, never the whole text
    assert normalize._parse_date_text.cache_info().currsize <= 4
    assert normalize._time_span.cache_info().currsize <= 4


def test_huge_strings_are_not_copied_into_reports(screener: Screener) -> None:
    """A megabyte-long element name, unit, sex or date (within the API's 2 MiB body limit) is
    an unknown with an issue whose message quotes the start of it, not a report that repeats
    the whole text in every message (it did: 6 MB of report for a 1 MB name, and seconds of
    did-you-mean matching)."""
    big = "x" * 1_000_000
    patient = {"id": "big", "sex": "f" + big, "birth_date": "1" + big,
               "observations": [{**ALT, "element": "alt" + big, "value": 50},
                                {"element": "lvef", "value": 60, "unit": "%",
                                 "date": "2026-11-20", "source": "echo " + big},
                                {**ALT, "value": 50, "unit": "U/L" + big},
                                {**ALT, "element": "ecog", "value": 1, "date": "2026" + big},
                                AST_OK],
               "conditions": [{"element": "dvt" + big}]}
    r = screener.screen(T, patient, AS_OF)
    text = json.dumps(r)
    assert len(text) < 100_000
    msgs = {i["loc"]: i["msg"] for i in r["data_issues"]}
    assert msgs["observations[0]"].startswith("unknown element 'altxxx")
    assert msgs["observations[0]"].endswith("...'") or "..." in msgs["observations[0]"]
    assert all(len(m) < 400 for m in msgs.values())
    verdict = {c["id"]: c for c in r["criteria"]}
    assert verdict["inc_liver_transaminases"]["verdict"] == "unknown"
    lvef = verdict["inc_lvef"]
    assert lvef["verdict"] == "met"   # decided, with its provenance shown cut
    assert lvef["evidence"][0]["source"].startswith("echo xxx")
    assert len(lvef["evidence"][0]["source"]) == 200


def test_did_you_mean_gives_up_on_names_no_typo_could_make() -> None:
    from screener.elements import ELEMENTS
    from screener.errors import did_you_mean
    assert did_you_mean("ecgo", ELEMENTS) == "ecog"
    assert did_you_mean("serum_creatinine", ELEMENTS) == "creatinine"
    assert did_you_mean("alt" + "x" * 100_000, ELEMENTS) is None


def test_too_many_unknown_names_make_every_element_possibly_misspelt(screener: Screener) -> None:
    """Each unknown element name is checked for a misspelling of a catalogue element (which
    then cannot be read as absent). The checks are bounded per patient; past the bound, every
    element counts as possibly misspelt: unknown with the reason, never decided on what is
    left."""
    from screener.normalize import MAX_SPELLING_CHECKS
    junk = [{"element": f"zq{i:05d}", "value": 1, "date": "2026-11-20"}
            for i in range(MAX_SPELLING_CHECKS)]
    alt = [{**ALT, "value": 50}, AST_OK]
    within = verdicts(screener, {"observations": junk + alt})
    assert within["inc_liver_transaminases"]["verdict"] == "met"
    over = verdicts(screener, {"observations": junk + [{"element": "zzzzz", "value": 1,
                                                        "date": "2026-11-20"}] + alt})
    c = over["inc_liver_transaminases"]
    assert c["verdict"] == "unknown"
    assert any("cannot be ruled out" in m["reason"] for m in c["missing"])
    issues = [i for i in over["_report"]["data_issues"] if "not checked" in i["msg"]]
    assert len(issues) == 1 and issues[0]["loc"] == f"observations[{MAX_SPELLING_CHECKS}]"
