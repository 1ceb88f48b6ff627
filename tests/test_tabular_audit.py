"""Registry-table adapter, audit findings: stray quotes, huge fields, constant limits, ids
(spreadsheet decimals, near matches, undecodable bytes), na_values, two-digit years, one
column for two elements, numeric viral loads, result statuses, trailing delimiters and
mapping hints. Every table is built in tmp_path."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from screener.adapters import tabular
from screener.adapters.tabular import MappingError, iter_patients, load_mapping
from screener.normalize import prepare
from screener.screen import Screener

AS_OF = date(2026, 11, 22)
ROOT = Path(__file__).resolve().parents[1]

LABS_MAPPING = """\
patients: {file: p.csv, id: pid}
labs: {file: l.csv, patient_id: pid, code: loinc, system: loinc, value: val, unit: unit,
       high: hi, date: d%s}
"""
LABS_HEADER = "pid,loinc,val,unit,hi,d,comment\n"


def _run(tmp_path: Path, patients: str, labs: str | bytes | None = None,
         mapping: str | None = None, labs_options: str = "") -> list[Any]:
    (tmp_path / "p.csv").write_text(patients)
    if isinstance(labs, bytes):
        (tmp_path / "l.csv").write_bytes(labs)
    elif labs is not None:
        (tmp_path / "l.csv").write_text(labs)
    (tmp_path / "m.yaml").write_text(mapping if mapping is not None
                                     else LABS_MAPPING % labs_options)
    return list(iter_patients(load_mapping(tmp_path / "m.yaml")))


def _by_id(recs: list[Any]) -> dict[str, dict[str, Any]]:
    return {p["id"]: p for _, p, _ in recs if p is not None}


def _codes(issues: list[dict[str, str]]) -> set[tuple[str, str]]:
    return {(i["loc"], i["code"]) for i in issues}


def _all_issues(recs: list[Any]) -> list[dict[str, str]]:
    return [i for _, _, iss in recs for i in iss]


def _liver_verdict(p: dict[str, Any]) -> str:
    """NCT06930105's transaminase criterion for an adapter's patient (ALT / AST x ULN)."""
    report = Screener.from_paths([str(ROOT / "rules")]).screen("NCT06930105", p, AS_OF)
    return str(next(c for c in report["criteria"]
                    if c["id"] == "inc_liver_transaminases")["verdict"])


def _alts(p: dict[str, Any]) -> list[tuple[Any, Any, str]]:
    return [(o["value"], o.get("date"), o["source"]) for o in p["observations"]
            if o["element"] == "alt"]


def _mapping_error(tmp_path: Path, text: str, files: dict[str, str] | None = None) -> str:
    for name, content in (files or {"p.csv": "pid\n1\n"}).items():
        (tmp_path / name).write_text(content)
    (tmp_path / "m.yaml").write_text(text)
    with pytest.raises(MappingError) as exc:
        iter_patients(load_mapping(tmp_path / "m.yaml"))
    return str(exc.value)


# --- 1. stray quotes ---------------------------------------------------------------------------

def test_unclosed_quote_does_not_swallow_the_following_lines(tmp_path: Path) -> None:
    """An unclosed quote in a comment made the csv module read the next lines into that
    comment: the newest ALT (300) vanished and the older one decided."""
    recs = _run(tmp_path, "pid\n1\n2\n", LABS_HEADER
                + '1,1742-6,30,U/L,40,2026-11-01,"hemolysed sample\n'
                + "1,1920-8,30,U/L,40,2026-11-01,\n"
                + "1,1742-6,300,U/L,40,2026-11-15,\n"
                + '2,1742-6,200,U/L,40,2026-11-15,see "x"\n'
                + "2,1742-6,30,U/L,40,2026-11-01,\n")
    p = _by_id(recs)
    # the lines up to where the quote would close (the '"' of line 4) may be rows or text of
    # the comment: each is passed on as an unusable result of whoever it names, so the older
    # ALT 30 decides for nobody; line 5, after the span, is read as a row
    unusable = "unreadable: line inside a quote left open on an earlier line"
    assert _alts(p["1"]) == [(30, "2026-11-01", "l.csv:row 1"), (unusable, None, "l.csv:row 3")]
    assert [o["element"] for o in p["1"]["observations"]] == ["alt", "ast", "alt"]
    assert _alts(p["2"]) == [(unusable, None, "l.csv:row 4"), (30, "2026-11-01", "l.csv:row 5")]
    codes = _codes(_all_issues(recs))
    assert ("l.csv:row 1", "unbalanced_quote") in codes
    assert {("l.csv:row 2", "inside_open_quote"), ("l.csv:row 3", "inside_open_quote"),
            ("l.csv:row 4", "inside_open_quote")} <= codes
    quote = [i for i in _all_issues(recs) if i["code"] == "unbalanced_quote"]
    assert "multiline_fields" in quote[0]["msg"]
    # neither patient's ALT is decided by the older result: the unusable line is what makes
    # it unknown (each patient's AST is unknown too, so the verdict alone would not show it)
    from screener.normalize import prepare
    for pid in ("1", "2"):
        assert _liver_verdict(p[pid]) == "unknown", pid
        prep = prepare(p[pid], AS_OF)
        assert any("quote left open" in why for _, _, why, _, _ in prep.unusable["alt"]), pid


def test_unclosed_quote_that_shifts_the_columns_is_unusable_for_its_patient(
        tmp_path: Path) -> None:
    """Read with quoting off, the line has more fields than the header: the ragged-row path,
    an undated unusable alt for patient 1 (it hides the older result)."""
    recs = _run(tmp_path, "pid\n1\n", LABS_HEADER
                + "1,1742-6,30,U/L,40,2026-11-01,\n"
                + '1,1742-6,"300,5",U/L,40,2026-11-15,\n'.replace('"300,5"', '"300,5')
                + "1,1920-8,30,U/L,40,2026-11-01,\n")
    p = _by_id(recs)["1"]
    alts = _alts(p)
    assert alts[0] == (30, "2026-11-01", "l.csv:row 1")
    assert alts[1][0].startswith("unreadable: ") and alts[1][1] is None
    assert [o["element"] for o in p["observations"]] == ["alt", "alt", "ast"]
    assert "unbalanced_quote" in {i["code"] for i in recs[0][2]}
    assert prepare(p, AS_OF).unusable.get("alt")


def test_unclosed_quote_on_the_last_line_without_line_break(tmp_path: Path) -> None:
    recs = _run(tmp_path, "pid\n1\n", LABS_HEADER
                + "1,1742-6,30,U/L,40,2026-11-01,\n"
                + '1,1742-6,300,U/L,40,2026-11-15,"no end')
    assert _alts(_by_id(recs)["1"])[-1] == (300, "2026-11-15", "l.csv:row 2")
    assert ("l.csv:row 2", "unbalanced_quote") in _codes(_all_issues(recs))


def test_multiline_fields_option_keeps_quoted_line_breaks(tmp_path: Path) -> None:
    labs = (LABS_HEADER
            + '1,1742-6,30,U/L,40,2026-11-01,"first line\nsecond line"\n'
            + "1,1742-6,300,U/L,40,2026-11-15,\n")
    recs = _run(tmp_path, "pid\n1\n", labs, labs_options=", multiline_fields: true")
    assert _alts(_by_id(recs)["1"]) == [(30, "2026-11-01", "l.csv:row 1"),
                                         (300, "2026-11-15", "l.csv:row 2")]
    assert _all_issues(recs) == []
    # by default a field may not span lines: the line inside the open quote is reported,
    # the row after the quote closes is read
    recs = _run(tmp_path / ".." / tmp_path.name, "pid\n1\n", labs)
    assert _alts(_by_id(recs)["1"])[0] == (30, "2026-11-01", "l.csv:row 1")
    assert _alts(_by_id(recs)["1"])[-1] == (300, "2026-11-15", "l.csv:row 3")  # line 4
    codes = _codes(_all_issues(recs))
    assert ("l.csv:row 1", "unbalanced_quote") in codes
    assert ("l.csv:row 2", "inside_open_quote") in codes   # 'second line"' is reported
    # the option is checked
    assert "multiline_fields: expected true or false" in _mapping_error(
        tmp_path, LABS_MAPPING % ", multiline_fields: yes", {"p.csv": "pid\n1\n",
                                                            "l.csv": LABS_HEADER})


def test_row_numbers_are_physical_lines(tmp_path: Path) -> None:
    recs = _run(tmp_path, "pid\n1\n\n2\n", LABS_HEADER
                + "1,1742-6,30,U/L,40,2026-11-01,\n\n\n2,1742-6,31,U/L,40,2026-11-01,\n")
    assert [loc for loc, _, _ in recs] == ["p.csv:row 1", "p.csv:row 3"]
    assert _alts(_by_id(recs)["2"]) == [(31, "2026-11-01", "l.csv:row 4")]


# --- 2. huge fields ----------------------------------------------------------------------------

@pytest.fixture()
def small_field_limit(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """The csv module's (process-wide) field limit at 1000 characters for one test."""
    old = csv.field_size_limit()
    monkeypatch.setattr(tabular, "_FIELD_LIMIT", 1000, raising=False)
    csv.field_size_limit(1000)
    try:
        yield 1000
    finally:
        csv.field_size_limit(old)


def test_long_comment_does_not_drop_the_row(tmp_path: Path) -> None:
    """The csv module's default limit (128 KiB) made a 140 KB comment an unreadable row."""
    recs = _run(tmp_path, "pid\n1\n", LABS_HEADER
                + "1,1742-6,30,U/L,40,2026-11-01,\n"
                + "1,1742-6,300,U/L,40,2026-11-15," + "x" * 140_000 + "\n")
    assert _alts(_by_id(recs)["1"]) == [(30, "2026-11-01", "l.csv:row 1"),
                                         (300, "2026-11-15", "l.csv:row 2")]
    assert _all_issues(recs) == []
    assert csv.field_size_limit() >= tabular._FIELD_LIMIT


def test_unparseable_row_is_unusable_for_its_patient_and_element(
        tmp_path: Path, small_field_limit: int) -> None:
    recs = _run(tmp_path, "pid\n1\n2\n", LABS_HEADER
                + "1,1742-6,30,U/L,40,2026-11-01,\n"
                + "1,1742-6,300,U/L,40,2026-11-15," + "x" * 2000 + "\n"
                + "2,1742-6,31,U/L,40,2026-11-01,\n")
    p = _by_id(recs)
    alts = _alts(p["1"])
    assert alts[0] == (30, "2026-11-01", "l.csv:row 1")
    assert alts[1][0].startswith("unreadable: ") and alts[1][1] is None
    assert alts[1][2] == "l.csv:row 2"
    issue = next(i for i in recs[0][2] if i["loc"] == "l.csv:row 2")
    assert issue["code"] == "unreadable_row" and "field larger than field limit" in issue["msg"]
    assert "passed on to patient '1'" in issue["msg"]
    assert _alts(p["2"]) == [(31, "2026-11-01", "l.csv:row 3")]   # still in step
    assert prepare(p["1"], AS_OF).unusable.get("alt")
    # in the patients table: no record from it, but the rows after it are read
    recs = _run(tmp_path, "pid,note\n1," + "y" * 2000 + "\n2,\n", LABS_HEADER)
    assert recs[0][1] is None and _codes(recs[0][2]) == {("p.csv:row 1", "unreadable_row")}
    assert recs[1][1] is not None and recs[1][1]["id"] == "2"


def test_unparseable_multiline_comment_makes_no_phantom_rows(
        tmp_path: Path, small_field_limit: int) -> None:
    """With multi-line fields, a long quoted comment whose text looks like rows: the row is
    unusable for its patient, the text inside the comment is not read as rows, and the real
    row after it is."""
    comment = '"' + "z" * 1500 + "\n2,1742-6,10,U/L,40,2026-11-20,phantom\n" + "z" * 10 + '"'
    recs = _run(tmp_path, "pid\n1\n2\n", LABS_HEADER
                + "2,1742-6,300,U/L,40,2026-11-15," + comment + "\n"
                + "1,1742-6,30,U/L,40,2026-11-01,\n",
                labs_options=", multiline_fields: true")
    p = _by_id(recs)
    alts2 = _alts(p["2"])
    # no phantom ALT 10: the lines skipped inside the comment are unusable, not rows
    assert alts2 and all(str(v).startswith("unreadable: ") for v, _, _ in alts2), alts2
    assert ("l.csv:row 1", "unreadable_row") in _codes(recs[1][2])
    # (with multi-line fields rows count records; the two lines skipped inside the comment
    # are reported as records 2 and 3)
    assert _alts(p["1"]) == [(30, "2026-11-01", "l.csv:row 4")]


# --- 3. constant reference limits --------------------------------------------------------------

def test_constant_reference_limit_is_refused(tmp_path: Path) -> None:
    files = {"p.csv": "pid\n1\n", "l.csv": "pid,loinc,val,unit,d\n"}
    long_map = ("patients: {file: p.csv, id: pid}\n"
                "labs: {file: l.csv, patient_id: pid, code: loinc, system: loinc, value: val,"
                " unit: unit, high: {constant: 40}, date: d}\n")
    msg = _mapping_error(tmp_path, long_map, files)
    assert "labs.high: a constant reference limit" in msg
    assert "map a column" in msg and "rule file" in msg
    wide = ("patients:\n  file: p.csv\n  id: pid\n  elements:\n"
            "    alt: {value: alt, unit: {constant: U/L}, low: {constant: 0}, date: d}\n")
    msg = _mapping_error(tmp_path, wide, {"p.csv": "pid,alt,d\n"})
    assert "patients.elements.alt.low: a constant reference limit" in msg


# --- 4. ids ------------------------------------------------------------------------------------

def test_spreadsheet_decimal_text_id_reads_as_the_integer(tmp_path: Path) -> None:
    recs = _run(tmp_path, "pid\n123\n1.5\n", LABS_HEADER
                + "123.0,1742-6,30,U/L,40,2026-11-01,\n"
                + "1.50,1742-6,31,U/L,40,2026-11-01,\n")
    p = _by_id(recs)
    assert _alts(p["123"]) == [(30, "2026-11-01", "l.csv:row 1")]
    assert _alts(p["1.5"]) == []                      # only ^digits.0+$ is rewritten
    assert [loc for loc, q, _ in recs if q is None] == ["p.csv:patient 1.50"]


def test_near_matching_orphan_ids_make_the_patients_elements_unusable(tmp_path: Path) -> None:
    (tmp_path / "pr.csv").write_text("pid,sct,start\n7,84114007,2020-01-01\n"
                                     "ab1,84114007,2020-01-01\n")
    mapping = ("patients: {file: p.csv, id: pid}\n"
               "labs: {file: l.csv, patient_id: pid, code: loinc, system: loinc, value: val,"
               " unit: unit, high: hi, date: d}\n"
               "problems: {file: pr.csv, patient_id: pid, code: sct, system: snomed,"
               " start: start}\n"
               "reviewed: {conditions: '2026-11-20'}\n")
    recs = _run(tmp_path, "pid\n007\nAB1\n42\n", LABS_HEADER
                + "007,1742-6,30,U/L,40,2026-11-01,\n"
                + "7,1742-6,300,U/L,40,2026-11-15,\n"
                + "42,1742-6,31,U/L,40,2026-11-01,\n"
                + "77,1742-6,300,U/L,40,2026-11-15,\n", mapping=mapping)
    p = _by_id(recs)
    alts = _alts(p["007"])
    assert alts[0] == (30, "2026-11-01", "l.csv:row 1")
    assert alts[1][0].startswith("unreadable: ") and alts[1][1:] == ("2026-11-15", "l.csv:row 2")
    near = [i for i in recs[0][2] if i["code"] == "near_id"]
    assert len(near) == 1 and near[0]["loc"] == "p.csv:row 1:pid"
    assert "'7'" in near[0]["msg"] and "alt" in near[0]["msg"] and "heart_failure" in \
        near[0]["msg"]
    # the problem row of "7" / "ab1": an unconfirmed condition, so the review cannot prove
    # heart failure absent
    for pid in ("007", "AB1"):
        assert [c.get("verification_status") for c in p[pid]["conditions"]] == ["unconfirmed"]
    assert prepare(p["007"], AS_OF).unusable.get("alt")
    assert _alts(p["42"]) == [(31, "2026-11-01", "l.csv:row 3")]    # no near match
    # the orphans are still reported, naming the patient they look like; ids never merge
    orphans = {loc: iss for loc, q, iss in recs if q is None}
    assert set(orphans) == {"p.csv:patient 7", "p.csv:patient 77", "p.csv:patient ab1"}
    assert "'007'" in orphans["p.csv:patient 7"][0]["msg"]
    assert "looks like" not in orphans["p.csv:patient 77"][0]["msg"]


def test_exact_ids_are_never_merged_by_near_matching(tmp_path: Path) -> None:
    recs = _run(tmp_path, "pid\n007\n7\n", LABS_HEADER + "7,1742-6,300,U/L,40,2026-11-15,\n")
    p = _by_id(recs)
    assert p["007"]["observations"] == [] and recs[0][2] == []
    assert _alts(p["7"]) == [(300, "2026-11-15", "l.csv:row 1")]


# --- 5. na_values ------------------------------------------------------------------------------

def test_na_values_add_to_the_default_blanks(tmp_path: Path) -> None:
    mapping = LABS_MAPPING % "" + 'na_values: ["-"]\n'
    recs = _run(tmp_path, "pid\n1\n", LABS_HEADER
                + "1,1742-6,30,U/L,40,2026-11-01,\n"
                + "1,1742-6,,U/L,40,2026-11-15,\n"
                + "1,1742-6,-,U/L,NA,2026-11-16,\n", mapping=mapping)
    assert _alts(_by_id(recs)["1"]) == [(30, "2026-11-01", "l.csv:row 1")]
    assert _codes(recs[0][2]) == {("l.csv:row 2:val", "missing_value"),
                                  ("l.csv:row 3:val", "missing_value")}


# --- 6. two-digit years ------------------------------------------------------------------------

def test_two_digit_year_format_is_refused(tmp_path: Path) -> None:
    msg = _mapping_error(tmp_path, "patients: {file: p.csv, id: pid, birth_date: dob,"
                                   " date_format: '%d/%m/%y'}\n", {"p.csv": "pid,dob\n"})
    assert "patients.date_format" in msg and "%Y" in msg and "2065" in msg
    (tmp_path / "m.yaml").write_text("patients: {file: p.csv, id: pid, birth_date: dob,"
                                     " date_format: '%d/%m/%Y'}\n")
    load_mapping(tmp_path / "m.yaml")


# --- 7. undecodable ids ------------------------------------------------------------------------

def test_undecodable_id_is_refused_naming_the_encoding_option(tmp_path: Path) -> None:
    (tmp_path / "p.csv").write_bytes("pid\nJosé\nJosè\nAna\n".encode("latin-1"))
    (tmp_path / "l.csv").write_bytes(
        (LABS_HEADER + "José,1742-6,300,U/L,40,2026-11-10,\nJosè,1742-6,30,U/L,40,2026-11-10,\n"
         "Ana,1742-6,30,U/L,40,2026-11-10,\n").encode("latin-1"))
    (tmp_path / "m.yaml").write_text(LABS_MAPPING % "")
    recs = list(iter_patients(load_mapping(tmp_path / "m.yaml")))
    assert [p["id"] for _, p, _ in recs if p] == ["Ana"]
    for _, p, issues in recs[:2]:
        assert p is None and issues[0]["code"] == "bad_id" and "encoding" in issues[0]["msg"]
    assert recs[-1][0] == "l.csv" and _codes(recs[-1][2]) == {
        ("l.csv:row 1:pid", "bad_id"), ("l.csv:row 2:pid", "bad_id")}
    # with the right encoding both patients are read, apart
    (tmp_path / "m.yaml").write_text(
        "patients: {file: p.csv, id: pid, encoding: latin-1}\n"
        "labs: {file: l.csv, patient_id: pid, code: loinc, system: loinc, value: val,"
        " unit: unit, high: hi, date: d, encoding: latin-1}\n")
    p = _by_id(list(iter_patients(load_mapping(tmp_path / "m.yaml"))))
    assert [o["value"] for o in p["José"]["observations"]] == [300]
    assert [o["value"] for o in p["Josè"]["observations"]] == [30]


# --- 9. one column for two elements ------------------------------------------------------------

def test_one_column_as_the_value_of_two_elements_is_refused(tmp_path: Path) -> None:
    msg = _mapping_error(tmp_path, "patients:\n  file: p.csv\n  id: pid\n  elements:\n"
                         "    alt: {value: alt, unit: {constant: U/L}, date: d}\n"
                         "    ast: {value: alt, unit: {constant: U/L}, date: d}\n",
                         {"p.csv": "pid,alt,ast,d\n"})
    assert "patients.elements.ast.value: column 'alt' is already the value of 'alt'" in msg


# --- 10. numeric viral loads -------------------------------------------------------------------

def test_numeric_viral_load_is_passed_on_as_a_number(tmp_path: Path) -> None:
    recs = _run(tmp_path, "pid\n1\n2\n", "pid,loinc,val,unit,d\n"
                "1,29615-2,150000,IU/mL,2026-11-10\n"
                "2,29615-2,Not detected,,2026-11-10\n",
                mapping="patients: {file: p.csv, id: pid}\n"
                        "labs: {file: l.csv, patient_id: pid, code: loinc, system: loinc,"
                        " value: val, unit: unit, date: d}\n")
    p = _by_id(recs)
    obs = p["1"]["observations"][0]
    assert obs["element"] == "hbv_dna" and obs["value"] == 150000
    assert _all_issues(recs) == []
    assert not prepare(p["1"], AS_OF).unusable.get("hbv_dna")
    assert p["2"]["observations"][0]["value"] == "not_detected"


# --- 11. result status -------------------------------------------------------------------------

def test_result_status_tokenised_and_hl7_letters(tmp_path: Path) -> None:
    cells = ["final", "F", "C", "Entered in error", "entered_in_error", "Canceled", "CANCELLED",
             "X", "D", "W", "P", "R", "I", "preliminary", "Amended", "weird"]
    labs = "pid,loinc,val,unit,hi,d,st\n" + "".join(
        f"1,1742-6,30,U/L,40,2026-11-{i + 1:02d},{c}\n" for i, c in enumerate(cells))
    mapping = ("patients: {file: p.csv, id: pid}\n"
               "labs: {file: l.csv, patient_id: pid, code: loinc, system: loinc, value: val,"
               " unit: unit, high: hi, date: d, status: st}\n")
    p = _by_id(_run(tmp_path, "pid\n1\n", labs, mapping=mapping))["1"]
    assert [o["status"] for o in p["observations"]] == [
        "final", "final", "corrected", "entered-in-error", "entered-in-error", "cancelled",
        "cancelled", "cancelled", "entered-in-error", "entered-in-error", "preliminary",
        "preliminary", "registered", "preliminary", "amended", "weird"]
    # a retracted newest result never counts: the older final one decides
    labs = ("pid,loinc,val,unit,hi,d,st\n1,1742-6,30,U/L,40,2026-11-01,final\n"
            "1,1742-6,300,U/L,40,2026-11-15,Entered in error\n")
    p = _by_id(_run(tmp_path, "pid\n1\n", labs, mapping=mapping))["1"]
    prep = prepare(p, AS_OF)
    assert [r.value for r in prep.readings["alt"]] == [30] and not prep.unusable.get("alt")


# --- 12. trailing delimiter --------------------------------------------------------------------

def test_trailing_delimiter_on_every_line_is_read(tmp_path: Path) -> None:
    # the header ends with the delimiter too: the empty last field is dropped from every row
    recs = _run(tmp_path, "pid,dob,\n1,1980-01-01,\n2,1980-01-01,\n3,1980-01-01,x\n",
                mapping="patients: {file: p.csv, id: pid, birth_date: dob}\n")
    assert [(loc, p and p["birth_date"]) for loc, p, _ in recs] == [
        ("p.csv:row 1", "1980-01-01"), ("p.csv:row 2", "1980-01-01"), ("p.csv:row 3", None)]
    assert recs[0][2] == [] and _codes(recs[2][2]) == {("p.csv:row 3", "ragged_row")}
    # more empty extras than the header has: shifted columns, not a trailing delimiter
    recs = _run(tmp_path, "pid\n1\n", "pid,loinc,val,unit,hi,d,\n"
                "1,1742-6,30,U/L,40,2026-11-01,\n1,1742-6,U,L,40,2026-11-15,,\n",
                mapping=LABS_MAPPING % "")
    alts = _alts(_by_id(recs)["1"])
    assert alts[0] == (30, "2026-11-01", "l.csv:row 1") and alts[1][0].startswith("unreadable")
    # a table without a trailing delimiter: an empty extra field is a shifted row
    recs = _run(tmp_path, "pid,dob\n1,1980-01-01\n2,1980,01-01,\n",
                mapping="patients: {file: p.csv, id: pid, birth_date: dob}\n")
    assert recs[1][1] is None and _codes(recs[1][2]) == {("p.csv:row 2", "ragged_row")}


# --- 13. mapping hints -------------------------------------------------------------------------

def test_hint_prefers_a_case_or_space_match(tmp_path: Path) -> None:
    msg = _mapping_error(tmp_path, "patients: {file: p.csv, id: pid, birth_date: DOB}\n",
                         {"p.csv": "pid,DOBX, dob \n"})
    assert "column 'DOB' not in p.csv (did you mean ' dob '?)" in msg


def test_hint_names_the_delimiter_when_the_header_is_one_column(tmp_path: Path) -> None:
    msg = _mapping_error(tmp_path, "patients: {file: p.csv, id: pid, birth_date: dob}\n",
                         {"p.csv": "pid;dob\n1;1980-01-01\n"})
    assert "seems to be separated by ';'" in msg and "delimiter: ';'" in msg
    msg = _mapping_error(tmp_path, "patients: {file: p.csv, id: pid, birth_date: dob}\n",
                         {"p.csv": "pid\tdob\n"})
    assert "format: tsv" in msg


def test_a_line_cut_at_a_quote_before_its_code_leaves_nothing_to_an_older_result(
        tmp_path: Path) -> None:
    """Review of the line-by-line reader: a note with a real line break, before the code and
    value columns, cut the row; it was padded and skipped as "no value", and the older ALT
    decided (eligible). Now whose row it is can be read, what it holds cannot: every element
    the table may hold is unusable for that patient."""
    labs = ("pid,comment,loinc,val,unit,hi,d\n"
            "1,,1742-6,30,U/L,40,2026-11-01\n"
            '1,"two-line\nnote",1742-6,200,U/L,40,2026-11-10\n'
            "1,,1920-8,30,U/L,40,2026-11-01\n")
    recs = _run(tmp_path, "pid\n1\n", labs)
    assert _liver_verdict(_by_id(recs)["1"]) == "unknown"
    codes = [c for _, c in _codes(_all_issues(recs)) if c == "unbalanced_quote"]
    assert codes == ["unbalanced_quote"]          # once, not once per element


def test_a_trailing_empty_field_not_in_the_header_is_a_shifted_row(tmp_path: Path) -> None:
    """Review: the trailing-delimiter rule was guessed from the first data row; a first row
    shifted by a thousands comma ('1,250') with a blank last column taught it, and later rows
    shifted the same way were read in place: ALT 1 with ULN 250 for the wrong patient."""
    labs = ("d,loinc,val,pid,hi\n"
            "2026-11-15,1742-6,1,250,7,\n"
            "2026-11-01,1742-6,30,7,40\n"
            "2026-11-01,1742-6,20,250,40\n")
    mapping = ("patients: {file: p.csv, id: pid}\n"
               "labs: {file: l.csv, patient_id: pid, code: loinc, system: loinc, value: val,"
               " unit: {constant: U/L}, high: hi, date: d}\n")
    recs = _run(tmp_path, "pid\n7\n250\n", labs, mapping=mapping)
    p = _by_id(recs)
    for pid in ("7", "250"):
        alts = _alts(p[pid])
        assert not any(v == 1 for v, _, _ in alts), (pid, alts)    # never ALT 1
        assert any(str(v).startswith("unreadable") for v, _, _ in alts), (pid, alts)


def test_a_short_long_table_row_missing_mapped_columns_is_not_padded(tmp_path: Path) -> None:
    """Review: a bare line break inside an unquoted comment cut the row; padded with blanks
    it was skipped as 'no value' and the older ALT decided."""
    labs = ("pid,comment,loinc,val,unit,hi,d\n"
            "1,,1742-6,30,U/L,40,2026-11-01\n"
            "1,,1920-8,30,U/L,40,2026-11-01\n"
            "1,hemolysed\r\nrepeat,1742-6,200,U/L,40,2026-11-10\n")
    assert _liver_verdict(_by_id(_run(tmp_path, "pid\n1\n", labs))["1"]) == "unknown"
    # control: without the cut row the older ALT (and the AST) decide
    whole = "".join(labs.splitlines(keepends=True)[:3])
    assert _liver_verdict(_by_id(_run(tmp_path, "pid\n1\n", whole))["1"]) == "met"


def test_a_shifted_row_of_another_analyte_leaves_ours_alone(tmp_path: Path) -> None:
    """A shifted potassium row (a well-formed LOINC the catalogue does not screen) says
    nothing about ALT: the older ALT still decides."""
    labs = ("pid,comment,loinc,val,unit,hi,d\n"
            "1,,1742-6,30,U/L,40,2026-11-01\n"
            "1,,1920-8,30,U/L,40,2026-11-01\n"
            "1,haemolysed, repeat,2823-3,4.1,mmol/L,5.1,2026-11-15\n")
    assert _liver_verdict(_by_id(_run(tmp_path, "pid\n1\n", labs))["1"]) == "met"
