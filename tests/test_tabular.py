"""Registry-table adapter: SMART sample export (long format), wide CSV with bad rows, Parquet
streaming, and mapping errors."""

from __future__ import annotations

import csv
import os
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from screener.adapters import tabular
from screener.adapters.tabular import MappingError, iter_patients, load_mapping
from screener.elements import SNOMED, condition_for

ROOT = Path(__file__).resolve().parents[1]
SMART = Path(__file__).resolve().parents[2] / "shared" / "registry-examples" / \
    "smart-sample-patients"
SMART_MAPPING = ROOT / "fixtures" / "registry" / "smart-sample.mapping.yaml"

needs_smart = pytest.mark.skipif(not (SMART / "labs.txt").exists(),
                                 reason="shared SMART sample export not present")


def _read_tsv(name: str) -> list[dict[str, str]]:
    with (SMART / name).open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


@pytest.fixture(scope="module")
def smart() -> list[tuple[str, dict[str, Any] | None, list[dict[str, str]]]]:
    return list(iter_patients(load_mapping(SMART_MAPPING), base_dir=SMART))


def _by_id(records: list[Any]) -> dict[str, dict[str, Any]]:
    return {p["id"]: p for _, p, _ in records if p is not None}


def _obs_by_source(records: list[Any]) -> dict[str, dict[str, Any]]:
    return {o["source"]: o for _, p, _ in records if p for o in p["observations"]}


# --- SMART sample, long format ---------------------------------------------------------------

@needs_smart
def test_smart_every_patient_comes_out(smart: list[Any]) -> None:
    pids = [row["PID"] for row in _read_tsv("patients.txt")]
    assert len(pids) == 67
    assert [p["id"] for _, p, _ in smart if p is not None] == pids
    assert all(p is not None for _, p, _ in smart)  # no orphans, no duplicates in the export
    assert smart[0][0] == "patients.txt:row 1"
    raw = {row["PID"]: row for row in _read_tsv("patients.txt")}
    for pid, p in _by_id(smart).items():
        assert p["birth_date"] == raw[pid]["dob"]
        assert p["sex"] == raw[pid]["gender"]


@needs_smart
def test_smart_alt_rows_mapped_with_per_row_limits(smart: list[Any]) -> None:
    labs = _read_tsv("labs.txt")
    alt_rows = [(n, row) for n, row in enumerate(labs, start=1) if row["LOINC"] == "1742-6"]
    alts = [o for _, p, _ in smart if p for o in p["observations"] if o["element"] == "alt"]
    assert len(alts) == len(alt_rows) == 67
    by_source = _obs_by_source(smart)
    # Row numbers count data records, so labs.txt row N is the record with ID N.
    n, row = next((n, r) for n, r in alt_rows if r["HIGH"] not in ("", "0"))
    assert row["ID"] == str(n)
    obs = by_source[f"labs.txt:row {n}"]
    assert obs in _by_id(smart)[row["PID"]]["observations"]
    assert obs["value"] == pytest.approx(float(row["VALUE"]))
    assert obs["reference_range"]["high"] == pytest.approx(float(row["HIGH"]))
    assert obs["reference_range"]["low"] == pytest.approx(float(row["LOW"]))
    assert obs["unit"] == row["UNITS"]
    assert obs["date"] == row["DATE"]
    # Several upper limits in one registry: the ULN travels with each result.
    highs = {o["reference_range"]["high"] for o in alts if "reference_range" in o}
    assert {45, 50, 72} <= highs


@needs_smart
def test_smart_units_as_given_and_blank_limits(smart: list[Any]) -> None:
    labs = _read_tsv("labs.txt")
    by_source = _obs_by_source(smart)
    alts = [(n, r) for n, r in enumerate(labs, start=1) if r["LOINC"] == "1742-6"]
    assert {by_source[f"labs.txt:row {n}"]["unit"] for n, _ in alts} == {"UNITS/L", "U/L"}
    blank = [n for n, r in alts if r["LOW"] == "" and r["HIGH"] == ""]
    assert blank
    for n in blank:
        assert "reference_range" not in by_source[f"labs.txt:row {n}"]


@needs_smart
def test_smart_zero_range_is_reported_and_dropped(smart: list[Any]) -> None:
    labs = _read_tsv("labs.txt")
    n, row = next((n, r) for n, r in enumerate(labs, start=1)
                  if r["LOINC"] == "1742-6" and r["HIGH"] == "0")
    obs = _obs_by_source(smart)[f"labs.txt:row {n}"]
    assert "reference_range" not in obs and obs["value"] == int(row["VALUE"])
    issues = [i for _, _, iss in smart for i in iss]
    assert any(i["loc"] == f"labs.txt:row {n}:HIGH" and i["code"] == "bad_reference_range"
               for i in issues)


@needs_smart
def test_smart_coded_lab_reactive_is_positive(smart: list[Any]) -> None:
    labs = _read_tsv("labs.txt")
    n, row = next((n, r) for n, r in enumerate(labs, start=1)
                  if r["LOINC"] == "13955-0" and r["VALUE"] == "Reactive")
    obs = _obs_by_source(smart)[f"labs.txt:row {n}"]
    assert obs["element"] == "hcv_ab" and obs["value"] == "positive"
    assert "reference_range" not in obs  # LOW holds "Negative; Reactive", not a number


@needs_smart
def test_smart_problems_mapped_by_snomed(smart: list[Any]) -> None:
    probs = _read_tsv("problems.txt")
    expected = {}
    for n, row in enumerate(probs, start=1):
        name = condition_for(SNOMED, row["SNOMED"])
        if name:
            expected[f"problems.txt:row {n}"] = (row["PID"], name, row["START_DATE"],
                                                 row["END_DATE"])
    assert len(expected) >= 4  # MI, heart failure, unstable angina, ventricular tachycardia
    got = {c["source"]: (p["id"], c["element"], c.get("onset", ""), c.get("abatement", ""))
           for _, p, _ in smart if p for c in p["conditions"]}
    assert got == expected
    assert ("2113340", "myocardial_infarction", "2009-03-08", "") in got.values()
    # No review date in this mapping: the sample's problem list is not asserted complete.
    assert all("reviewed" not in p for _, p, _ in smart if p)
    # Unmapped codes are summarised once per patient and table, not silently lost.
    summaries = [i for _, _, iss in smart for i in iss
                 if i["code"] == "unmapped_code" and i["loc"] == "problems.txt"]
    assert summaries and "Rosacea" in " ".join(i["msg"] for i in summaries)


@needs_smart
def test_smart_reviewed_constant_and_missing_column(tmp_path: Path) -> None:
    text = SMART_MAPPING.read_text()
    m = tmp_path / "m.yaml"
    m.write_text(text + 'reviewed:\n  conditions: "2026-11-01"\n')
    recs = list(iter_patients(load_mapping(m), base_dir=SMART))
    assert all(p["reviewed"] == {"conditions": "2026-11-01"} for _, p, _ in recs if p)
    # the list is declared complete: problem codes the catalogue cannot place are passed on
    # (they may be SNOMED CT children of a listed condition) and keep absence unknown
    unplaced = [p for _, p, _ in recs
                if p and any("codes" in c for c in p.get("conditions", []))]
    assert unplaced
    from datetime import date

    from screener.screen import Screener
    s = Screener.from_paths([str(Path(__file__).resolve().parents[1] / "rules")])
    try:
        r = s.screen("NCT06930105", unplaced[0], date(2026, 11, 22))
        c = next(c for c in r["criteria"] if c["id"] == "exc_arterial_thrombosis")
        assert c["verdict"] == "unknown" and "more specific form" in c["missing"][0]["reason"]
    finally:
        s.close()
    without = list(iter_patients(load_mapping(SMART_MAPPING), base_dir=SMART))
    assert not any("codes" in c for _, p, _ in without if p for c in p.get("conditions", [])
                   if c.get("codes", [{}])[0].get("code") == unplaced[0]["conditions"][0]
                   ["codes"][0]["code"])

    m.write_text(text.replace("code: LOINC", "code: LOINK"))
    with pytest.raises(MappingError) as exc:
        iter_patients(load_mapping(m), base_dir=SMART)
    msg = str(exc.value)
    assert "labs.code: column 'LOINK' not in labs.txt (did you mean 'LOINC'?)" in msg
    assert "header: ID, PID, DATE, LOINC" in msg


# --- wide CSV with bad rows ------------------------------------------------------------------

WIDE_MAPPING = """\
patients:
  file: wide.csv
  id: patient_id
  birth_date: dob
  sex: {column: sex, values: {W: female}}
  age: age
  elements:
    alt: {value: alt, unit: {constant: U/L}, high: alt_uln, date: lab_date}
    ecog: {value: ecog, date: lab_date}
    hbsag: {value: hbsag, date: lab_date}
    pregnant: {value: preg, date: lab_date}
  conditions:
    dvt: {column: hx_dvt, onset: dvt_onset, date: lab_date}
  exposures:
    blinatumomab: {days: blina_days}
reviewed:
  conditions: {column: reviewed}
"""

WIDE_CSV = """\
patient_id,dob,sex,age,alt,alt_uln,lab_date,ecog,hbsag,preg,hx_dvt,dvt_onset,blina_days,reviewed
p1,1980-01-02,F,,35,40,2026-10-01,1,Negative,no,0,,,2026-11-01
p2,1975-05-05,M,,abc,40,2026-10-01,2,Reactive,,1,2026-01-05,14,
p3,1990-13-01,X,36,50,45,2026-13-45,0,maybe,,yes,,,
,1970-01-01,M,,10,40,2026-10-01,0,,,,,,
p1,1980-01-02,F,,35,40,2026-10-01,1,,,,,,
p4,1960-02-02,W,,<5,40,2026-10-02
p5,1961-02-02,M,,60,,2026-10-02,1,,,,,,,surplus
p6,1962-03-03,male,,70,0,2026-10-03,1,,,,,,
"""


@pytest.fixture()
def wide(tmp_path: Path) -> list[tuple[str, dict[str, Any] | None, list[dict[str, str]]]]:
    (tmp_path / "wide.csv").write_text(WIDE_CSV)
    (tmp_path / "wide.mapping.yaml").write_text(WIDE_MAPPING)
    # No base_dir: table paths are relative to the mapping file.
    return list(iter_patients(load_mapping(tmp_path / "wide.mapping.yaml")))


def _codes(issues: list[dict[str, str]]) -> set[tuple[str, str]]:
    return {(i["loc"], i["code"]) for i in issues}


def test_wide_good_row(wide: list[Any]) -> None:
    loc, p, issues = wide[0]
    assert loc == "wide.csv:row 1" and issues == []
    assert p == {
        "id": "p1", "birth_date": "1980-01-02", "sex": "female",
        "observations": [
            {"element": "alt", "value": 35, "unit": "U/L",
             "reference_range": {"high": 40, "unit": "U/L"}, "date": "2026-10-01",
             "source": "wide.csv:row 1"},
            {"element": "ecog", "value": 1, "date": "2026-10-01", "source": "wide.csv:row 1"},
            {"element": "hbsag", "value": "negative", "date": "2026-10-01",
             "source": "wide.csv:row 1"},
            {"element": "pregnant", "value": False, "date": "2026-10-01",
             "source": "wide.csv:row 1"},
        ],
        "conditions": [{"element": "dvt", "present": False, "date": "2026-10-01",
                        "source": "wide.csv:row 1"}],
        "exposures": [],
        "reviewed": {"conditions": "2026-11-01"},
    }


def test_wide_bad_number_is_passed_on_as_unusable(wide: list[Any]) -> None:
    _, p, issues = wide[1]
    assert _codes(issues) == {("wide.csv:row 2:alt", "bad_number")}
    assert "'abc'" in issues[0]["msg"]
    assert [o["element"] for o in p["observations"]] == ["alt", "ecog", "hbsag"]
    # dated, with a value the normalizer cannot use (and no reference range read for it)
    assert p["observations"][0] == {"element": "alt", "value": "unreadable: 'abc'",
                                    "unit": "U/L", "date": "2026-10-01",
                                    "source": "wide.csv:row 2"}
    assert p["observations"][2]["value"] == "positive"  # Reactive
    assert p["conditions"] == [{"element": "dvt", "onset": "2026-01-05",
                                "source": "wide.csv:row 2"}]
    assert p["exposures"] == [{"element": "blinatumomab", "days": 14,
                               "source": "wide.csv:row 2"}]


def test_wide_bad_date_and_unknown_sex(wide: list[Any]) -> None:
    _, p, issues = wide[2]
    assert _codes(issues) == {
        ("wide.csv:row 3:dob", "bad_date"), ("wide.csv:row 3:sex", "bad_value"),
        ("wide.csv:row 3:lab_date", "bad_date"), ("wide.csv:row 3:hbsag", "bad_value"),
    }
    assert "sex" not in p and "birth_date" not in p
    assert p["age"] == 36  # the age column is the fallback for an unusable birth date
    # every result of the row had the bad lab date: passed on undated (unusable), hbsag's
    # 'maybe' unreadable as well
    assert [(o["element"], o["value"], "date" in o) for o in p["observations"]] == [
        ("alt", 50, False), ("ecog", 0, False), ("hbsag", "unreadable: 'maybe'", False)]
    assert p["conditions"] == [{"element": "dvt", "source": "wide.csv:row 3"}]


def test_wide_run_continues_past_unusable_rows(wide: list[Any]) -> None:
    locs = [loc for loc, _, _ in wide]
    assert locs == [f"wide.csv:row {n}" for n in range(1, 9)]
    assert wide[3][1] is None and _codes(wide[3][2]) == {("wide.csv:row 4:patient_id",
                                                          "missing_id")}
    # a repeated id is its own record (as in NDJSON), flagged
    assert wide[4][1] is not None and wide[4][1]["id"] == "p1"
    assert _codes(wide[4][2]) == {("wide.csv:row 5:patient_id", "duplicate_id")}
    _, p4, issues4 = wide[5]  # short row: padded, reported
    assert p4["sex"] == "female"  # mapped through sex.values
    assert p4["observations"][0]["value"] == 5 and p4["observations"][0]["comparator"] == "<"
    assert _codes(issues4) == {("wide.csv:row 6", "ragged_row")}
    assert wide[6][1] is None and _codes(wide[6][2]) == {("wide.csv:row 7", "ragged_row")}
    _, p6, issues6 = wide[7]
    assert _codes(issues6) == {("wide.csv:row 8:alt_uln", "bad_reference_range")}
    assert p6["sex"] == "male" and "reference_range" not in p6["observations"][0]


# --- Parquet ---------------------------------------------------------------------------------

def test_parquet_wide_streams(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    n = 20000
    table = pa.table({
        "pid": pa.array(range(1, n + 1), pa.int64()),
        "dob": pa.array([date(1970 + i % 40, 1 + i % 12, 1 + i % 28) for i in range(n)]),
        "sex": pa.array(["F" if i % 2 else "M" for i in range(n)]),
        "creat": pa.array([None if i % 10 == 0 else 0.5 + (i % 20) / 10 for i in range(n)]),
        "creat_uln": pa.array([1.2] * n),
        "drawn": pa.array([date(2026, 10, 1)] * n),
        "unused": pa.array(["x"] * n),
    })
    pq.write_table(table, tmp_path / "wide.parquet", row_group_size=1000)
    (tmp_path / "m.yaml").write_text(
        "patients:\n  file: wide.parquet\n  id: pid\n  birth_date: dob\n  sex: sex\n"
        "  elements:\n    creatinine: {value: creat, unit: {constant: mg/dL}, high: creat_uln,"
        " date: drawn}\n")

    batches = []
    real = pq.ParquetFile.iter_batches

    def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        assert "unused" not in kwargs["columns"]  # only mapped columns are read
        for b in real(self, *args, **kwargs):
            batches.append(b.num_rows)
            yield b

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    it = iter_patients(load_mapping(tmp_path / "m.yaml"), base_dir=tmp_path)
    loc, first, issues = next(it)
    assert len(batches) == 1 and batches[0] < n  # first patient out before the file is read
    assert loc == "wide.parquet:row 1" and issues == []
    assert first == {"id": "1", "birth_date": "1970-01-01", "sex": "male",
                     "observations": [], "conditions": [], "exposures": []}  # null creatinine
    rest = list(it)
    assert len(rest) == n - 1 and sum(batches) == n
    _, p, _ = rest[0]
    assert p is not None
    assert p["observations"] == [{"element": "creatinine", "value": 0.6, "unit": "mg/dL",
                                  "reference_range": {"high": 1.2, "unit": "mg/dL"},
                                  "date": "2026-10-01", "source": "wide.parquet:row 2"}]


# --- mapping errors --------------------------------------------------------------------------

def _mapping_error(tmp_path: Path, text: str) -> str:
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(MappingError) as exc:
        load_mapping(tmp_path / "bad.yaml")
    return str(exc.value)


def test_mapping_unknown_element_did_you_mean(tmp_path: Path) -> None:
    msg = _mapping_error(tmp_path, "patients:\n  file: x.csv\n  id: id\n  elements:\n"
                                   "    alt_u: {value: a, date: d}\n    bilirubin: {value: b, "
                                   "date: d}\n")
    assert "patients.elements.alt_u: unknown element 'alt_u' (did you mean 'alt'?)" in msg
    assert "unknown element 'bilirubin' (did you mean 'bilirubin_total'?)" in msg
    assert str(tmp_path / "bad.yaml") in msg


def test_mapping_structural_errors_all_reported(tmp_path: Path) -> None:
    msg = _mapping_error(tmp_path, """\
patients:
  file: x.csv
  id: id
  elements:
    dvt: {value: a, date: d}
    alt: {value: a, unit: U/L, dat: d}
labs:
  file: l.csv
  patient_ids: pid
  code: c
  system: snomed
  value: v
  date: d
reviewed: {conditions: "next week"}
""")
    assert "element 'dvt' is a condition; it does not belong under elements" in msg
    assert "unknown key 'dat' (did you mean 'date'?)" in msg
    assert "missing required key 'date'" in msg
    assert "labs: unknown key 'patient_ids' (did you mean 'patient_id'?)" in msg
    assert "labs: missing required key 'patient_id'" in msg
    assert "labs.system: expected one of loinc, element, got 'snomed'" in msg
    assert "reviewed.conditions: expected an ISO date" in msg
    msg = _mapping_error(tmp_path, "patients:\n  file: x.csv\n  id: id\n  elements:\n"
                                   "    sex: {value: s, date: d}\n"
                                   "    ecog: {value: e, date: {constant: 2026-02-30}}\n")
    assert "'sex' is a demographic field; map it as patients.sex" in msg
    assert "patients.elements.ecog.date: constant '2026-02-30' is not an ISO date" in msg


def test_mapping_yaml_quirks(tmp_path: Path) -> None:
    msg = _mapping_error(tmp_path, "patients:\n  file: x.csv\n  id: a\n  id: b\n")
    assert "duplicate key 'id'" in msg
    # 'no' / 'N' stay strings (YAML 1.1 would make them booleans).
    (tmp_path / "ok.yaml").write_text(
        "patients:\n  file: x.csv\n  id: id\n  sex: {column: s, values: {N: unknown}}\n"
        "  conditions:\n    dvt: {column: d, present: [Y, yes], absent: [N, no]}\n")
    m = load_mapping(tmp_path / "ok.yaml")
    assert m.sex_values == {"n": "unknown"}
    assert m.conditions[0].absent == frozenset({"n", "no"})


def test_missing_file_is_a_mapping_error(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text("patients:\n  file: nowhere.csv\n  id: id\n")
    with pytest.raises(MappingError, match="cannot read"):
        iter_patients(load_mapping(tmp_path / "m.yaml"))


def test_long_orphans_and_rows_without_patient(tmp_path: Path) -> None:
    (tmp_path / "p.csv").write_text("id,dob\na,2000-01-01\n")
    (tmp_path / "l.csv").write_text(
        "pid,code,val,unit,hi,when\n"
        "a,1742-6,30,U/L,40,2026-10-01\n"
        "zz,1742-6,31,U/L,40,2026-10-01\n"
        ",1742-6,32,U/L,40,2026-10-01\n"
        "a,9999-9,1,mg,,2026-10-01\n"
        "a,1742-6,,U/L,40,2026-10-01\n"
        "a,1742-6,33,U/L,40,\n")
    (tmp_path / "m.yaml").write_text(
        "patients: {file: p.csv, id: id, birth_date: dob}\n"
        "labs: [{file: l.csv, patient_id: pid, code: code, system: loinc, value: val,"
        " unit: unit, high: hi, date: when}]\n")
    recs = list(iter_patients(load_mapping(tmp_path / "m.yaml")))
    assert [loc for loc, _, _ in recs] == ["p.csv:row 1", "p.csv:patient zz", "l.csv"]
    _, p, issues = recs[0]
    # the undated row 6 is passed on (unusable: it hides every alt result)
    assert p is not None and [(o["value"], o.get("date")) for o in p["observations"]] == [
        (30, "2026-10-01"), (33, None)]
    assert _codes(issues) == {("l.csv:row 4:code", "unmapped_code"),
                              ("l.csv:row 5:val", "missing_value"),
                              ("l.csv:row 6:when", "missing_date")}
    assert recs[1][1] is None and recs[1][2][0]["code"] == "orphan_rows"
    assert recs[2][1] is None and _codes(recs[2][2]) == {("l.csv:row 3:pid", "missing_id")}


def test_module_docstring_states_memory_bound_and_review_meaning() -> None:
    doc = tabular.__doc__ or ""
    assert "Memory stays flat" in doc and "SQLite" in doc
    assert "``reviewed`` is a clinical assertion" in doc


@needs_smart
def test_long_rows_are_filed_on_disk_and_the_store_is_removed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        smart: list[tuple[str, dict[str, Any] | None, list[dict[str, str]]]]) -> None:
    """Long-table rows wait in a temporary SQLite file, not in memory; the file goes when the
    iteration ends or is abandoned, and what comes out is what the first full read gave."""
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    it = iter_patients(load_mapping(SMART_MAPPING), base_dir=SMART)
    first = next(it)
    stores = list(tmp_path.glob("screener-long-*"))
    assert len(stores) == 1 and (stores[0] / "rows.db").stat().st_size > 0
    rest = list(it)
    assert [first, *rest] == smart
    assert not list(tmp_path.glob("screener-long-*"))
    it = iter_patients(load_mapping(SMART_MAPPING), base_dir=SMART)
    next(it)
    it.close()   # a consumer that stops early (a failed run)
    assert not list(tmp_path.glob("screener-long-*"))


def test_a_killed_runs_store_is_removed_by_the_next_run(tmp_path: Path) -> None:
    """SIGKILL leaves the temporary store behind (no cleanup runs); the next store made in the
    same directory removes those of dead processes only."""
    import subprocess
    import sys

    from screener.adapters.tabular import _LongStore
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(gone.stdout)
    dead = tmp_path / f"screener-long-{dead_pid}-abc123"
    dead.mkdir()
    (dead / "rows.db").write_bytes(b"x" * 100)
    live = tmp_path / f"screener-long-{os.getppid()}-def456"   # a process that is alive
    live.mkdir()
    (live / "rows.db").write_bytes(b"y")
    foreign = tmp_path / f"screener-long-{dead_pid}-ghi789"     # not shaped like ours
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    other = tmp_path / "screener-longish"
    other.mkdir()
    store = _LongStore(str(tmp_path))
    try:
        assert not dead.exists()
        assert live.exists() and foreign.exists() and other.exists()
        mine = [p for p in tmp_path.glob(f"screener-long-{os.getpid()}-*")]
        assert len(mine) == 1 and (mine[0] / "rows.db").exists()
    finally:
        store.close()
    assert not list(tmp_path.glob(f"screener-long-{os.getpid()}-*"))


# --- unreadable data is passed on, never dropped (an older result must not decide) ---------

UNREADABLE_MAPPING = """\
patients: {file: p.csv, id: pid, birth_date: dob}
labs: {file: l.csv, patient_id: PID, code: CODE, system: element, value: VALUE, unit: UNIT,
       high: HIGH, date: DATE}
problems: {file: pr.csv, patient_id: PID, code: SCT, system: snomed, start: START}
reviewed: {conditions: "2026-11-20"}
"""


def _unreadable_registry(tmp_path: Path) -> list[Any]:
    (tmp_path / "p.csv").write_text("pid,dob\nA,1990-01-01\nB,1990-01-01\nC,1990-01-01\n"
                                    "D,1990-01-01\nE,1990-01-01\nF,1990-01-01\n")
    (tmp_path / "l.csv").write_text(
        "PID,CODE,VALUE,UNIT,HIGH,DATE\n"
        "A,ecog,1,,,2026-11-01\n" 'A,ecog,"4,0",,,2026-11-21\n'         # 1-2 bad number
        "B,ecog,1,,,2026-11-01\n" "B,ecog,4,,,21/11/2026\n"             # 3-4 bad date
        "C,ecog,1,,,2026-11-01\n" "C,ecog,4,,,2026-11-21,oops\n"        # 5-6 extra field
        "D,ecog,1,,,2026-11-01\n" "D,ecog,4,,,\n"                       # 7-8 no date
        "E,ecog,1,,,2026-11-01\n" "E,ecog,,,,2026-11-21\n"              # 9-10 no value
        "F,ecog,1,,,2026-11-01\n" "zz,qq,1,,,2026-11-21,extra\n")       # 11-12 no element
    (tmp_path / "pr.csv").write_text("PID,SCT,START\n"
                                     "A,128053003,2026-10-01,stray\n")  # DVT, shifted row
    (tmp_path / "m.yaml").write_text(UNREADABLE_MAPPING)
    return list(iter_patients(load_mapping(tmp_path / "m.yaml")))


def test_unreadable_lab_rows_are_passed_on_as_unusable(tmp_path: Path) -> None:
    """B1: a lab row with a known patient and element but an unreadable value or date reaches
    the canonical patient as a result the normalizer finds unusable (dated when its date can
    be read), so that the normalizer's rule hides the older results; not dropped."""
    from screener.normalize import prepare
    recs = _unreadable_registry(tmp_path)
    by_id = _by_id(recs)
    ecog = {pid: [o for o in p["observations"] if o["element"] == "ecog"]
            for pid, p in by_id.items()}
    assert ecog["A"][1] == {"element": "ecog", "value": "unreadable: '4,0'",
                            "date": "2026-11-21", "source": "l.csv:row 2"}
    assert "date" not in ecog["B"][1] and ecog["B"][1]["value"] == 4
    assert "date" not in ecog["C"][1] and ecog["C"][1]["value"].startswith("unreadable: ")
    assert "date" not in ecog["D"][1] and ecog["D"][1]["value"] == 4
    assert len(ecog["E"]) == 1          # a blank value is no result: skipped, with an issue
    assert len(ecog["F"]) == 1
    issues = {loc: {(i["loc"], i["code"]) for i in iss} for loc, _, iss in recs}
    assert ("l.csv:row 2:VALUE", "bad_number") in issues["p.csv:row 1"]
    assert ("l.csv:row 4:DATE", "bad_date") in issues["p.csv:row 2"]
    assert ("l.csv:row 6", "ragged_row") in issues["p.csv:row 3"]
    assert ("l.csv:row 8:DATE", "missing_date") in issues["p.csv:row 4"]
    assert ("l.csv:row 10:VALUE", "missing_value") in issues["p.csv:row 5"]
    assert recs[-1] == ("l.csv", None, [{"loc": "l.csv:row 12", "code": "ragged_row",
                                         "msg": "row has 7 fields but the header has 6; "
                                                "row skipped"}])
    # the normalizer sees an unusable ecog result for A-D (older results hidden), none for E
    for pid in "ABCD":
        prep = prepare(by_id[pid], date(2026, 11, 22))
        assert prep.unusable.get("ecog"), pid
    assert not prepare(by_id["E"], date(2026, 11, 22)).unusable.get("ecog")
    # a shifted problem row: an unconfirmed condition (absence stays unknown despite review);
    # under a complete review, readings that give an unplaced code pass it on as well (the
    # row may hold any condition, so review-based absence must stay unknown)
    conds = by_id["A"]["conditions"]
    assert {"element": condition_for(SNOMED, "128053003"), "verification_status": "unconfirmed",
            "source": "pr.csv:row 1"} in conds
    assert all(c["verification_status"] == "unconfirmed" for c in conds)


def test_shifted_row_readings() -> None:
    """`_rows` offers every reading of a row with extra fields: columns left of the inserted
    fields in place, the others moved right."""
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "p.csv").write_text("a,b,c\n1,2,3,4\n")
        (Path(d) / "m.yaml").write_text("patients: {file: p.csv, id: a}\n")
        m = load_mapping(Path(d) / "m.yaml")
        ((n, cells, problem, shifted),) = list(tabular._rows(m, m.patients, None,
                                                             ["a", "b", "c"]))
    assert n == 1 and cells == {} and problem and "4 fields" in problem[-1][1]
    assert shifted == [{"a": "2", "b": "3", "c": "4"}, {"a": "1", "b": "3", "c": "4"},
                       {"a": "1", "b": "2", "c": "4"}, {"a": "1", "b": "2", "c": "3"}]


def test_unreadable_flag_and_exposure_are_kept_unknown(tmp_path: Path) -> None:
    (tmp_path / "w.csv").write_text("id,dvt,d,blina\np1,maybe,2026-11-01,lots\n"
                                    "p2,,2026-11-01,\n")
    (tmp_path / "m.yaml").write_text(
        "patients:\n  file: w.csv\n  id: id\n"
        "  conditions: {dvt: {column: dvt, date: d}}\n"
        "  exposures: {blinatumomab: {days: blina}}\n")
    (_, p1, issues), (_, p2, _) = list(iter_patients(load_mapping(tmp_path / "m.yaml")))
    assert p1["conditions"] == [{"element": "dvt", "verification_status": "unconfirmed",
                                 "source": "w.csv:row 1"}]
    assert p1["exposures"] == [{"element": "blinatumomab", "source": "w.csv:row 1"}]
    assert _codes(issues) == {("w.csv:row 1:dvt", "bad_value"),
                              ("w.csv:row 1:blina", "bad_number")}
    assert p2["conditions"] == [] and p2["exposures"] == []   # blank: nothing recorded


def test_undecodable_byte_near_the_header_is_a_cell_issue(tmp_path: Path) -> None:
    """B2: the header check reads with the rows' replacement policy, so a bad byte within the
    first block of the file is a value issue, not a failed run."""
    (tmp_path / "p.csv").write_bytes(b"pid,dob\nA,1990-01-01\nB,19\xff0-01-01\n")
    (tmp_path / "m.yaml").write_text("patients: {file: p.csv, id: pid, birth_date: dob}\n")
    recs = list(iter_patients(load_mapping(tmp_path / "m.yaml")))
    assert [p["id"] for _, p, _ in recs if p] == ["A", "B"]
    assert _codes(recs[1][2]) == {("p.csv:row 2:dob", "bad_date")}


def test_repeated_patient_row_is_its_own_record(tmp_path: Path) -> None:
    """B3: a repeated id in the patients table is screened once per row (as in NDJSON), each
    row with all of the patient's long-table rows, and flagged."""
    (tmp_path / "p.csv").write_text("pid,dob,inf,d\nP1,1990-01-01,0,2026-11-20\n"
                                    "P1,1990-01-01,1,2026-11-21\nP2,1980-01-01,0,2026-11-20\n")
    (tmp_path / "l.csv").write_text("PID,CODE,VALUE,DATE\nP1,ecog,1,2026-11-01\n")
    (tmp_path / "m.yaml").write_text(
        "patients:\n  file: p.csv\n  id: pid\n  birth_date: dob\n"
        "  conditions: {active_infection: {column: inf, date: d}}\n"
        "labs: {file: l.csv, patient_id: PID, code: CODE, system: element, value: VALUE,"
        " date: DATE}\n")
    recs = list(iter_patients(load_mapping(tmp_path / "m.yaml")))
    assert [(loc, p["id"]) for loc, p, _ in recs if p] == [
        ("p.csv:row 1", "P1"), ("p.csv:row 2", "P1"), ("p.csv:row 3", "P2")]
    first, second = recs[0][1], recs[1][1]
    assert first["observations"] == second["observations"] and \
        first["observations"] is not second["observations"]
    assert first["conditions"][0]["present"] is False and "present" not in \
        second["conditions"][0]
    assert recs[0][2] == [] and _codes(recs[1][2]) == {("p.csv:row 2:pid", "duplicate_id")}
