"""Registry batch screening (screener/batch.py): the batch path against the one-patient path.

The oracle is `Screener.screen`, patient by patient; the batch must agree with it on every
verdict, status and missing element, whichever executor runs it (in process, process pool, Dask)
and whichever evaluator (Rete or reference). A run killed with SIGKILL and restarted must end
with every patient exactly once and the same results as a clean run.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from screener import batch, synth
from screener.batch import BatchError, BatchOptions, read_matrix, run_batch, status_of
from screener.cli import parse_args, run
from screener.compile import rule_names
from screener.report import build
from screener.screen import Screener

ROOT = Path(__file__).resolve().parents[1]
TRIALS = ["NCT06111625", "NCT06930105"]
AS_OF = date(2026, 11, 22)
SMART = Path(__file__).resolve().parents[2] / "shared" / "registry-examples" / \
    "smart-sample-patients"
SMART_MAPPING = ROOT / "fixtures" / "registry" / "smart-sample.mapping.yaml"
SYNTHEA = Path(__file__).resolve().parents[2] / "shared" / "fhir-examples" / "synthea-r4"
RULES = str(ROOT / "rules")  # replaced by a private copy (rules_copy)


@pytest.fixture(scope="module", autouse=True)
def rules_copy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    # A private copy of rules/: the runs and the oracle of this module see one version of the
    # rule files even while someone edits rules/ (a batch refuses to resume across rule changes).
    global RULES
    d = tmp_path_factory.mktemp("rules")
    for f in (ROOT / "rules").glob("*.yaml"):
        shutil.copy(f, d / f.name)
    RULES = str(d)
    yield


@pytest.fixture(scope="module")
def screener(rules_copy: None) -> Iterator[Screener]:
    s = Screener.from_paths([RULES])
    yield s
    s.close()


def _opts(inputs: list[str], out: Path, **kw: Any) -> BatchOptions:
    base: dict[str, Any] = {"trials": TRIALS, "inputs": inputs, "out": str(out),
                            "as_of": AS_OF, "rules": [RULES], "workers": 0,
                            "chunk_size": 100, "progress": False}
    base.update(kw)
    return BatchOptions(**base)


def _rows(out: Path, fmt: str = "parquet") -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for t in read_matrix(out, fmt):
        rows += t.to_pylist()
    return sorted(rows, key=lambda r: (r["input"], r["record"]))


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("synth") / "small.ndjson"
    synth.write_ndjson(path, 400, 7, AS_OF.isoformat())
    return path


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("synth") / "big.ndjson"
    synth.write_ndjson(path, 1500, 11, AS_OF.isoformat())
    return path


@pytest.fixture(scope="module")
def clean_small(small: Path, rules_copy: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("clean_small")
    run_batch(_opts([str(small)], out), io.StringIO())
    return out


# ---- the oracle: one patient at a time ---------------------------------------------------------

def test_batch_verdicts_equal_single_patient_screen(small: Path, clean_small: Path,
                                                    screener: Screener) -> None:
    rows = {r["patient_id"]: r for r in _rows(clean_small)}
    patients = [json.loads(line) for line in small.read_text().splitlines()]
    assert len(rows) == len(patients) == 400
    checked = 0
    for p in patients[::5]:
        row = rows[p["id"]]
        for tid in TRIALS:
            rep = screener.screen(tid, p, AS_OF)
            assert row[f"{tid}:status"] == rep["status"], (p["id"], tid)
            for c in rep["criteria"]:
                assert row[f"{tid}:{c['id']}"] == c["verdict"], (p["id"], tid, c["id"])
                want = sorted({m["element"] for m in c.get("missing", [])
                               if m["element"] != "attestation"})
                got = row[f"{tid}:{c['id']}:missing"]
                if c["verdict"] != "unknown":
                    assert got is None
                elif want:
                    assert got == " ".join(want)
                else:
                    assert got is None if c["manual"] else got == batch.NO_ELEMENT
            checked += 1
    assert checked == 160


def test_status_rule_matches_report_build(screener: Screener) -> None:
    # every fired-rule combination of a 3-criterion slice gives build's status
    comp = screener.get("NCT06930105")
    plan = batch.TrialPlan(comp.trial.criteria)
    import itertools
    crits = [c for c in comp.trial.criteria if c.applies_if is not None or c.manual][:2] + \
        [comp.trial.criteria[0]]
    for combo in itertools.product(range(9), repeat=len(crits)):
        fired: set[str] = set()
        for c, k in zip(crits, combo, strict=True):
            names = rule_names(c.id)
            if k % 3 == 1:
                fired.add(names["T"])
            elif k % 3 == 2:
                fired.add(names["F"])
            if k // 3 == 1:
                fired.add(names["AT"])
            elif k // 3 == 2:
                fired.add(names["AF"])
        rep = build(comp.trial, comp.hash, fired, {}, {}, [], {})
        verdicts, status = plan.verdicts(fired)
        assert status == rep["status"]
        assert verdicts == [c["verdict"] for c in rep["criteria"]]
        assert status_of(plan.kinds, verdicts) == rep["status"]


def test_reference_engine_gives_the_same_matrix(small: Path, clean_small: Path,
                                                tmp_path: Path) -> None:
    run_batch(_opts([str(small)], tmp_path, engine="reference"), io.StringIO())
    assert _rows(tmp_path) == _rows(clean_small)


def test_process_pool_gives_the_same_matrix(small: Path, clean_small: Path,
                                            tmp_path: Path) -> None:
    summary, stats = run_batch(_opts([str(small)], tmp_path, workers=2), io.StringIO())
    assert stats.workers == 2 and stats.chunks_run == 4
    assert _rows(tmp_path) == _rows(clean_small)
    assert summary == json.loads((clean_small / "summary.json").read_text()) | {
        "inputs": summary["inputs"]}


def test_dask_local_cluster_gives_the_same_matrix(small: Path, clean_small: Path,
                                                  tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed")
    # TCP on loopback (not inproc): tasks and results go through the same serialisation as
    # on a real cluster; the worker runs in this process's threads (processes=False, fast)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  protocol="tcp", host="127.0.0.1",
                                  dashboard_address=None) as cluster:
        summary, _ = run_batch(_opts([str(small)], tmp_path,
                                     scheduler=cluster.scheduler_address), io.StringIO())
    assert _rows(tmp_path) == _rows(clean_small)
    clean = json.loads((clean_small / "summary.json").read_text())
    assert summary["trials"] == clean["trials"]


# ---- resumable ---------------------------------------------------------------------------------

def test_sigkill_and_resume(big: Path, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "screener", "batch", "--rules", RULES,
           "--trial", TRIALS[0], "--trial", TRIALS[1], str(big), "--out", str(out),
           "--as-of", AS_OF.isoformat(), "--chunk-size", "25", "--workers", "2"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    # own session: the kill takes the driver and its pool workers at once, like a crash
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            if len(list((out / "matrix").glob("part-*.parquet"))) >= 3:
                break
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done_at_kill = len(list((out / "matrix").glob("part-*.parquet")))
    assert 3 <= done_at_kill < 60, done_at_kill
    assert not (out / "summary.json").exists()

    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "already done" in res.stderr
    rows = _rows(out)
    ids = [r["patient_id"] for r in rows]
    assert len(ids) == len(set(ids)) == 1500          # no patient lost, none twice
    assert not list((out / "matrix").glob(".tmp-*"))

    clean = tmp_path / "clean"
    run_batch(_opts([str(big)], clean, chunk_size=25), io.StringIO())
    assert rows == _rows(clean)
    a = json.loads((out / "summary.json").read_text())
    b = json.loads((clean / "summary.json").read_text())
    assert a["trials"] == b["trials"] and a["records"] == b["records"]


def test_refuses_to_mix_runs_unless_forced(small: Path, clean_small: Path,
                                           tmp_path: Path) -> None:
    out = tmp_path / "o"
    run_batch(_opts([str(small)], out), io.StringIO())
    with pytest.raises(BatchError, match="as_of"):
        run_batch(_opts([str(small)], out, as_of=date(2026, 1, 1)), io.StringIO())
    with pytest.raises(BatchError, match="chunk_size"):
        run_batch(_opts([str(small)], out, chunk_size=50), io.StringIO())
    # same options: a finished run is simply reported again, nothing is redone
    _, stats = run_batch(_opts([str(small)], out), io.StringIO())
    assert stats.chunks_run == 0 and stats.chunks_done_before == 4
    _, stats = run_batch(_opts([str(small)], out, chunk_size=50, force=True), io.StringIO())
    assert stats.chunks_run == 8
    assert _rows(out) == _rows(clean_small)


# ---- bad records -------------------------------------------------------------------------------

def test_bad_rows_are_reported_and_the_run_completes(small: Path, tmp_path: Path) -> None:
    good = small.read_text().splitlines()[:3]
    nanish = {"id": "nanish", "age": "NaN", "sex": "female",
              "observations": [{"element": "alt", "value": "NaN", "unit": "U/L",
                                "date": "2026-11-01"},
                               {"element": "ecog", "value": 1e309, "date": "2026-11-01"},
                               {"element": "creatinine", "value": 900, "unit": "mg/dL",
                                "date": "2026-11-01"}]}
    lines = [good[0],                                      # 1
             '{"id": "broken", "birth_date": ',            # 2 invalid JSON
             "[1, 2, 3]",                                  # 3 not an object
             '{"id": "nan-literal", "age": NaN}',          # 4 NaN is not JSON
             "",                                           # 5 blank: not a record
             json.dumps(nanish).replace("Infinity", "1e309"),   # 6 NaN-ish values
             '{"id": "bad-shape", "observations": "none"}',     # 7 PatientDataError
             good[1], good[2],                             # 8, 9
             '{"id": "lone-\\ud800", "age": 40}',         # 10 lone surrogate: not Unicode
             '{"id": "twice", "age": 40, "age": 4}']       # 11 which age is meant: not known
    path = tmp_path / "bad.ndjson"
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    summary, _ = run_batch(_opts([str(path)], out, chunk_size=4), io.StringIO())
    errors = [json.loads(x) for x in (out / "errors.jsonl").read_text().splitlines()]
    records = {e["line"]: e for e in errors if e["kind"] == "record"}
    assert sorted(records) == [2, 3, 4, 7, 10, 11]
    assert records[2]["code"] == "json_invalid"
    assert records[3]["code"] == "not_an_object"
    assert records[4]["code"] == "json_invalid" and "NaN" in records[4]["reason"]
    assert records[7]["code"] == "type_error"
    assert records[10]["code"] == "json_invalid" and "surrogate" in records[10]["reason"]
    assert records[11]["code"] == "json_invalid" and 'duplicate key "age"' in records[11]["reason"]
    assert all(e["input"] == str(path) for e in errors)
    values = [e for e in errors if e["kind"] == "value"]
    assert {e["line"] for e in values if e["patient_id"] == "nanish"} == {6}
    codes = {(e["loc"], e["code"]) for e in values if e["patient_id"] == "nanish"}
    assert ("age", "value") in codes
    assert any(loc.startswith("observations[2]") and code == "implausible"
               for loc, code in codes)
    rows = _rows(out)
    assert [r["patient_id"] for r in rows] == [json.loads(good[0])["id"], "nanish",
                                               json.loads(good[1])["id"],
                                               json.loads(good[2])["id"]]
    assert [r["record"] for r in rows] == [1, 6, 8, 9]
    nan_row = rows[1]
    assert nan_row["NCT06111625:inc_age"] == "unknown"
    assert summary["records"] == {"total": 10, "screened": 4, "not_screened": 6,
                                  "value_issues": len(values)}


# ---- registry tables ---------------------------------------------------------------------------

@pytest.mark.skipif(not SMART.is_dir() or not SMART_MAPPING.exists(),
                    reason="SMART sample tables or their mapping not present")
def test_smart_sample_tables_through_the_long_mapping(tmp_path: Path,
                                                      screener: Screener) -> None:
    from screener.adapters.tabular import iter_patients, load_mapping
    out = tmp_path / "smart"
    summary, _ = run_batch(_opts([str(SMART)], out, mapping=str(SMART_MAPPING), chunk_size=20),
                           io.StringIO())
    expected = [(w, p) for w, p, _ in iter_patients(load_mapping(SMART_MAPPING), SMART)
                if p is not None]
    rows = _rows(out)
    assert len(expected) > 50
    assert [r["patient_id"] for r in rows] == [p["id"] for _, p in expected]
    assert [r["source"] for r in rows] == [w for w, _ in expected]
    for (_, p), row in list(zip(expected, rows, strict=True))[::7]:
        rep = screener.screen("NCT06930105", p, AS_OF)
        assert row["NCT06930105:status"] == rep["status"]
        assert all(row[f"NCT06930105:{c['id']}"] == c["verdict"] for c in rep["criteria"])
    assert summary["records"]["screened"] == len(expected)
    assert (out / "report.html").exists()


@pytest.mark.skipif(not SYNTHEA.is_dir(), reason="Synthea example bundles not present")
def test_fhir_bundle_lines(tmp_path: Path, screener: Screener) -> None:
    from screener.adapters.fhir import bundle_to_patient
    files = sorted(SYNTHEA.glob("*.json"), key=lambda f: f.stat().st_size)[:3]
    docs = [json.loads(f.read_text(encoding="utf-8")) for f in files]
    path = tmp_path / "bundles.ndjson"
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    run_batch(_opts([str(path)], tmp_path / "out"), io.StringIO())
    rows = _rows(tmp_path / "out")
    assert [r["record"] for r in rows] == [1, 2, 3]
    for doc, row in zip(docs, rows, strict=True):
        patient, _ = bundle_to_patient(doc)
        for tid in TRIALS:
            rep = screener.screen(tid, patient, AS_OF)
            assert row[f"{tid}:status"] == rep["status"]
            assert all(row[f"{tid}:{c['id']}"] == c["verdict"] for c in rep["criteria"])


# ---- what-if reports ---------------------------------------------------------------------------

def _report(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run(parse_args(["report", *args]), out, err)
    return code, out.getvalue(), err.getvalue()


def _funnel(summary: dict[str, Any], tid: str) -> list[dict[str, Any]]:
    funnel: list[dict[str, Any]] = next(t for t in summary["trials"] if t["id"] == tid)["funnel"]
    return funnel


def test_report_without_and_order(clean_small: Path) -> None:
    code, text, _ = _report([str(clean_small), "--format", "json"])
    assert code == 0
    base = json.loads(text)
    rows = _rows(clean_small)
    tid = "NCT06111625"
    trial = next(t for t in base["trials"] if t["id"] == tid)
    # no what-if: the recomputed statuses are the stored ones
    assert trial["status"] == {s: sum(r[f"{tid}:status"] == s for r in rows)
                               for s in batch.STATUSES}
    # the manual criterion leaves nobody eligible; without it, some are
    assert trial["status"]["eligible"] == 0

    code, text, _ = _report([str(clean_small), "--format", "json",
                             "--without", "inc_disease_records",
                             "--without", "exc_organ_dysfunction_other",
                             "--without", "exc_leukemia_burden_pretreatment",
                             "--order", "NCT06111625:exc_cns_leukemia"])
    assert code == 0
    what_if = json.loads(text)
    t2 = next(t for t in what_if["trials"] if t["id"] == tid)
    funnel = _funnel(what_if, tid)
    assert [f["criterion"] for f in funnel] == [
        "exc_cns_leukemia", "inc_diagnosis", "inc_age", "exc_blinatumomab_days",
        "exc_leukemia_burden", "exc_organ_dysfunction"]
    kinds = {c["id"]: c["kind"] for c in trial["criteria"]}
    keep = [c for c in kinds if c not in ("inc_disease_records", "exc_organ_dysfunction_other",
                                          "exc_leukemia_burden_pretreatment")]
    expect = {s: 0 for s in batch.STATUSES}
    for r in rows:
        expect[status_of([kinds[c] for c in keep], [r[f"{tid}:{c}"] for c in keep])] += 1
    assert t2["status"] == expect and expect["eligible"] > 0
    assert funnel[-1]["remaining_clear"] == expect["eligible"]
    assert funnel[-1]["remaining_uncertain"] == expect["needs_review"]
    # the text report says the funnel is in the what-if order, not "protocol order"
    code, text, _ = _report([str(clean_small), "--order", "NCT06111625:exc_cns_leukemia"])
    assert code == 0
    assert "attrition funnel (what-if order: NCT06111625:exc_cns_leukemia first" in text
    # ... for the trial it concerns only: the other trial's funnel is in protocol order
    other = text[text.index("NCT06930105 v"):]
    other = other[:other.index("NCT06111625 v")] if "NCT06111625 v" in other else other
    assert "attrition funnel (protocol order" in other and "what-if order" not in other
    assert funnel[0]["entering"] == len(rows)
    assert funnel[0]["failed"] == sum(r[f"{tid}:exc_cns_leukemia"] == "met" for r in rows)
    # the other trial has no such criterion and is unchanged
    assert _funnel(what_if, "NCT06930105") == _funnel(base, "NCT06930105")

    code, _, err = _report([str(clean_small), "--without", "inc_disease_record"])
    assert code == 2 and "did you mean 'inc_disease_records'" in err
    code, page, _ = _report([str(clean_small), "--format", "html"])
    assert code == 0 and "<svg" in page and "<script" not in page
    code, text, _ = _report([str(clean_small)])
    assert code == 0 and "attrition funnel" in text


def test_blocked_only_by_matches_single_patient_reports(small: Path, clean_small: Path,
                                                        screener: Screener) -> None:
    summary = json.loads((clean_small / "summary.json").read_text())
    patients = [json.loads(line) for line in small.read_text().splitlines()]
    total = 0
    for tid in TRIALS:
        blocked: dict[str, int] = {}
        pending_only = 0
        for p in patients:
            rep = screener.screen(tid, p, AS_OF)
            if rep["status"] != "needs_review":
                continue
            # a data criterion unknown without naming what is missing blocks the tally
            if any(c["verdict"] == "unknown" and not c["manual"] and not c["missing"]
                   for c in rep["criteria"]):
                continue
            if len(rep["missing_data"]) == 1:
                blocked[rep["missing_data"][0]] = blocked.get(rep["missing_data"][0], 0) + 1
            elif not rep["missing_data"]:
                pending_only += 1
        t = next(x for x in summary["trials"] if x["id"] == tid)
        assert {b["element"]: b["patients"] for b in t["blocked_only_by"]} == blocked
        assert t["pending_attestation_only"] == pending_only
        total += sum(blocked.values())
    assert total > 0  # the comparison is not vacuous


def test_outputs_are_complete_and_self_contained(clean_small: Path) -> None:
    names = {p.name for p in clean_small.iterdir()}
    assert {"manifest.json", "summary.json", "report.html", "errors.jsonl", "counts.csv",
            "funnel.csv", "blocked.csv", "matrix", "errors"} <= names
    manifest = json.loads((clean_small / "manifest.json").read_text())
    assert manifest["complete"] and manifest["as_of"] == AS_OF.isoformat()
    assert all(t["ruleset_hash"].startswith("sha256:") for t in manifest["trials"])
    assert manifest["inputs"][0]["size"] > 0 and manifest["inputs"][0]["mtime_ns"] > 0
    page = (clean_small / "report.html").read_text()
    assert "<script" not in page and "<link" not in page
    assert "https://" not in page and page.count("http://") == page.count(
        'xmlns="http://www.w3.org/2000/svg"')
    summary = json.loads((clean_small / "summary.json").read_text())
    for t in summary["trials"]:
        for c in t["criteria"]:
            assert sum(c["counts"].values()) == t["patients"] == 400


def test_csv_matrix_reads_back_like_parquet(small: Path, clean_small: Path,
                                            tmp_path: Path) -> None:
    run_batch(_opts([str(small)], tmp_path, fmt="csv"), io.StringIO())
    assert sorted(p.suffix for p in (tmp_path / "matrix").iterdir()) == [".csv"] * 4
    assert _rows(tmp_path, "csv") == _rows(clean_small)
    a = json.loads((tmp_path / "summary.json").read_text())
    b = json.loads((clean_small / "summary.json").read_text())
    assert a["trials"] == b["trials"]


def test_synth_and_batch_commands(tmp_path: Path) -> None:
    path = tmp_path / "s.ndjson"
    out, err = io.StringIO(), io.StringIO()
    assert run(parse_args(["synth", "30", "--seed", "3", "--as-of", "2026-11-22", "--out",
                           str(path)]), out, err) == 0
    assert len(path.read_text().splitlines()) == 30
    code = run(parse_args(["batch", "--rules", RULES, "--trial", "NCT06111625", str(path),
                           "--out", str(tmp_path / "o"), "--as-of", "2026-11-22",
                           "--workers", "0"]), out, err)
    assert code == 0, err.getvalue()
    assert "screened 30 of 30 records" in err.getvalue()
    code = run(parse_args(["batch", "--rules", RULES, "--trial", "NCT0611162", str(path),
                           "--out", str(tmp_path / "o2"), "--as-of", "2026-11-22"]), out, err)
    assert code == 2 and "did you mean 'NCT06111625'" in err.getvalue()


def test_duplicate_patient_ids_are_flagged_not_merged(small: Path, tmp_path: Path) -> None:
    """A registry export that repeats patients: every record is screened and kept, and the
    summary, text, HTML and duplicates.csv say which ids repeat and where."""
    lines = small.read_text().splitlines()[:6]
    docs = [json.loads(x) for x in lines]
    docs[3]["id"] = docs[0]["id"]          # same patient twice (lines 1 and 4)
    docs[4]["id"] = docs[0]["id"]          # and a third time (line 5)
    docs[5].pop("id", None)                # no id at all
    path = tmp_path / "dups.ndjson"
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    out = tmp_path / "out"
    summary, _ = run_batch(_opts([str(path)], out, chunk_size=2), io.StringIO())
    assert len(_rows(out)) == 6                        # nothing dropped or merged
    ids = summary["patient_ids"]
    assert ids["duplicated_ids"] == 1 and ids["records_with_duplicated_id"] == 3
    assert ids["without_id"] == 1
    (ex,) = ids["examples"]
    assert ex["patient_id"] == docs[0]["id"]
    assert ex["records"] == [f"{path}:line {n}" for n in (1, 4, 5)]
    assert (out / "duplicates.csv").read_text().splitlines() == [
        "patient_id,record", *(f"{docs[0]['id']},{path}:line {n}" for n in (1, 4, 5))]
    assert "1 patient ids appear on more than one record (3 records)" in \
        (out / "report.html").read_text()
    assert json.loads((out / "summary.json").read_text())["patient_ids"] == ids


def test_no_duplicates_in_a_clean_registry(clean_small: Path) -> None:
    s = json.loads((clean_small / "summary.json").read_text())
    assert s["patient_ids"]["duplicated_ids"] == 0 and s["patient_ids"]["examples"] == []
    assert (clean_small / "duplicates.csv").read_text() == "patient_id,record\n"


# ---- registry tables: unreadable rows, bad bytes, repeated ids (as NDJSON would give) ----------

def test_tables_unreadable_rows_and_repeated_ids_as_ndjson(tmp_path: Path) -> None:
    """B1: an unreadable newer lab row (bad number, bad date, shifted columns, no date) makes
    inc_ecog unknown, as the same data in NDJSON does, instead of letting the older ECOG 1
    decide. B2: an undecodable byte near the top of a table is a value issue, not a failed
    run. B3: a repeated id in the patients table is screened once per row and listed in
    duplicates.csv, as in NDJSON."""
    reg = tmp_path / "reg"
    reg.mkdir()
    (reg / "patients.csv").write_text("pid,dob\nA,1990-01-01\nB,1990-01-01\nC,1990-01-01\n"
                                      "D,1990-01-01\nOK,1990-01-01\nA,1990-01-01\n")
    (reg / "labs.csv").write_bytes(
        b"PID,CODE,VALUE,DATE\n"
        b'A,ecog,1,2026-11-01\nA,ecog,"4,0",2026-11-21\n'
        b"B,ecog,1,2026-11-01\nB,ecog,4,21/11/2026\n"
        b"C,ecog,1,2026-11-01\nC,ecog,4,2026-11-21,oops\n"
        b"D,ecog,1,2026-11-01\nD,ecog,4,\n"
        b"OK,ecog,1,2026-11-01\nOK,alt,3\xff,2026-11-01\n")
    (reg / "m.yaml").write_text(
        "patients: {file: patients.csv, id: pid, birth_date: dob}\n"
        "labs: {file: labs.csv, patient_id: PID, code: CODE, system: element, value: VALUE,"
        " date: DATE}\n")
    out = tmp_path / "out"
    summary, _ = run_batch(_opts([str(reg)], out, mapping=str(reg / "m.yaml"),
                                 trials=[TRIALS[1]]), io.StringIO())
    rows = _rows(out)
    col = f"{TRIALS[1]}:inc_ecog"
    assert [(r["patient_id"], r["source"], r[col]) for r in rows] == [
        ("A", "patients.csv:row 1", "unknown"), ("B", "patients.csv:row 2", "unknown"),
        ("C", "patients.csv:row 3", "unknown"), ("D", "patients.csv:row 4", "unknown"),
        ("OK", "patients.csv:row 5", "met"), ("A", "patients.csv:row 6", "unknown")]
    assert rows[0][f"{col}:missing"] == "ecog"
    # the same patients A and B as canonical NDJSON give the same verdicts
    docs = [{"id": "A", "birth_date": "1990-01-01", "observations": [
                {"element": "ecog", "value": 1, "date": "2026-11-01"},
                {"element": "ecog", "value": "4,0", "date": "2026-11-21"}]},
            {"id": "B", "birth_date": "1990-01-01", "observations": [
                {"element": "ecog", "value": 1, "date": "2026-11-01"},
                {"element": "ecog", "value": 4, "date": "21/11/2026"}]}]
    nd = tmp_path / "same.ndjson"
    nd.write_text("".join(json.dumps(d) + "\n" for d in docs))
    run_batch(_opts([str(nd)], tmp_path / "nd", trials=[TRIALS[1]]), io.StringIO())
    assert [r[col] for r in _rows(tmp_path / "nd")] == ["unknown", "unknown"]
    errors = [json.loads(x) for x in (out / "errors.jsonl").read_text().splitlines()]
    assert not [e for e in errors if e["kind"] == "record"]
    assert {(e["patient_id"], e["code"]) for e in errors if e.get("origin") == "adapter"} >= {
        ("A", "bad_number"), ("B", "bad_date"), ("C", "ragged_row"), ("D", "missing_date"),
        ("OK", "bad_number"), ("A", "duplicate_id")}
    ids = summary["patient_ids"]
    assert ids["duplicated_ids"] == 1 and ids["records_with_duplicated_id"] == 2
    assert (out / "duplicates.csv").read_text().splitlines() == [
        "patient_id,record", "A,patients.csv:row 1", "A,patients.csv:row 6"]
    assert summary["records"]["total"] == summary["records"]["screened"] == 6


# ---- resuming only with the same code ----------------------------------------------------------

def test_source_hash_is_deterministic_and_covers_the_package(tmp_path: Path) -> None:
    pkg = ROOT / "screener"
    copy = tmp_path / "screener"
    shutil.copytree(pkg, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "__pycache__").mkdir(exist_ok=True)
    (copy / "__pycache__" / "x.pyc").write_bytes(b"compiled")   # not source: ignored
    (copy / "notes.txt").write_text("not source")                # neither
    h = batch.source_hash(copy)
    assert h.startswith("sha256:") and h == batch.source_hash(copy)
    with open(copy / "adapters" / "tabular.py", "a") as fh:
        fh.write("\n# changed\n")
    assert batch.source_hash(copy) != h
    schema = next(p for p in (copy / "schema").iterdir() if p.is_file())
    before = batch.source_hash(copy)
    schema.write_bytes(schema.read_bytes() + b" ")
    assert batch.source_hash(copy) != before


def test_resume_refused_after_a_code_change(small: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """B4: a run made by other screener code (version or source) is not resumed: mixed
    verdicts of two versions would follow. --force starts over."""
    path = tmp_path / "few.ndjson"
    path.write_text("\n".join(small.read_text().splitlines()[:3]) + "\n")
    out = tmp_path / "o"
    run_batch(_opts([str(path)], out, chunk_size=1), io.StringIO())
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["code"].startswith("sha256:") and len(manifest["code"]) == 71
    (out / "matrix" / "part-000-0000002.parquet").unlink()   # as if killed before the end
    monkeypatch.setattr(batch, "code_hash", lambda: "sha256:" + "0" * 64)
    with pytest.raises(BatchError, match="screener code changed") as exc:
        run_batch(_opts([str(path)], out, chunk_size=1), io.StringIO())
    assert "two versions" in str(exc.value) and "--force" in str(exc.value)
    monkeypatch.undo()
    monkeypatch.setattr(batch, "__version__", "99.0")
    with pytest.raises(BatchError, match="screener version"):
        run_batch(_opts([str(path)], out, chunk_size=1), io.StringIO())
    _, stats = run_batch(_opts([str(path)], out, chunk_size=1, force=True), io.StringIO())
    assert stats.chunks_run == 3 and stats.chunks_done_before == 0
    assert json.loads((out / "manifest.json").read_text())["screener"] == "99.0"


# ---- .json inputs: one document, never fragments ------------------------------------------------

def test_json_documents_are_read_whole(small: Path, tmp_path: Path) -> None:
    """B5: a pretty-printed .json patient (or array of patients) is one document: its patients
    are screened, no fragment becomes a phantom patient. A .json file of one object per line
    stays line based; a .json file that is neither is refused before anything is written.
    Ids of other JSON types are data issues, not silently "without id"."""
    docs = [json.loads(x) for x in small.read_text().splitlines()[:4]]
    one = tmp_path / "one.json"
    one.write_text(json.dumps(docs[0], indent=2))
    many = tmp_path / "many.json"
    many.write_text(json.dumps([docs[1], docs[2], 7], indent=1))
    lines = tmp_path / "lines.json"
    odd = [dict(docs[3], id=12.0), dict(docs[3], id=True)]
    lines.write_text("".join(json.dumps(d) + "\n" for d in [docs[3], *odd]))
    out = tmp_path / "out"
    summary, _ = run_batch(_opts([str(one), str(many), str(lines)], out), io.StringIO())
    rows = _rows(out)
    assert [(r["patient_id"], r["source"]) for r in rows] == [
        (docs[0]["id"], f"{one}:item 1"), (docs[1]["id"], f"{many}:item 1"),
        (docs[2]["id"], f"{many}:item 2"), (docs[3]["id"], f"{lines}:line 1"),
        (None, f"{lines}:line 2"), (None, f"{lines}:line 3")]
    errors = [json.loads(x) for x in (out / "errors.jsonl").read_text().splitlines()]
    assert [(e["source"], e["code"]) for e in errors if e["kind"] == "record"] == [
        (f"{many}:item 3", "not_an_object")]
    bad_ids = [e for e in errors if e.get("code") == "bad_id"]
    assert [(e["line"], e["loc"]) for e in bad_ids] == [(2, "id"), (3, "id")]
    assert "12.0" in bad_ids[0]["msg"] and "True" in bad_ids[1]["msg"]
    assert summary["records"]["total"] == 7 and summary["patient_ids"]["without_id"] == 2
    manifest = json.loads((out / "manifest.json").read_text())
    assert [i["kind"] for i in manifest["inputs"]] == ["json", "json", "ndjson"]

    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(docs[0], indent=2)[:-3])
    with pytest.raises(BatchError, match="not NDJSON and not one valid JSON document"):
        run_batch(_opts([str(broken)], tmp_path / "b"), io.StringIO())
    assert not (tmp_path / "b" / "manifest.json").exists()
    assert batch.json_layout(str(one)) == "document"
    assert batch.json_layout(str(lines)) == "ndjson"


@pytest.mark.parametrize("args, fragment", [
    (["--order", "exc_cns_leukemia", "--without", "exc_cns_leukemia"], "both left out"),
    (["--without", "inc_age", "--without", "inc_age"], "given twice to --without"),
    (["--order", "inc_age,inc_age"], "twice"),
])
def test_report_refuses_contradictory_what_if(clean_small: Path, args: list[str],
                                              fragment: str) -> None:
    code, text, err = _report([str(clean_small), *args])
    assert code != 0 and fragment in err, (code, err)


def test_report_refuses_to_leave_out_every_criterion(clean_small: Path) -> None:
    summary = json.loads((clean_small / "summary.json").read_text())
    trial = next(t for t in summary["trials"] if t["id"] == "NCT06111625")
    args = [a for c in trial["criteria"] for a in ("--without", f"NCT06111625:{c['id']}")]
    code, _, err = _report([str(clean_small), *args])
    assert code != 0 and "leaves no criterion of NCT06111625" in err, err


def test_csv_matrix_keeps_ids_that_look_like_nulls(tmp_path: Path) -> None:
    """pyarrow reads NA, null, nan, N/A as null by default: they are patient ids here."""
    ids = ["NA", "NA", "null", "nan", "N/A", ""]
    src = tmp_path / "ids.ndjson"
    src.write_text("".join(json.dumps({"id": i, "age": 40}) + "\n" for i in ids))
    for fmt in ("csv", "parquet"):
        out = tmp_path / fmt
        summary, _ = run_batch(_opts([str(src)], out, fmt=fmt), io.StringIO())
        assert [r["patient_id"] for r in _rows(out, fmt)] == ids, fmt
        assert summary["patient_ids"]["duplicated_ids"] == 1, fmt    # NA twice


def test_an_engine_refusal_is_not_counted_as_an_unscreened_record(
        small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    orig = Screener.fired_many

    def fired_many(self: Screener, tid: str, facts: Any) -> Any:
        res = orig(self, tid, facts)
        if tid == "NCT06111625" and res:
            res[0] = {"__rejected__"}
        return res

    monkeypatch.setattr(Screener, "fired_many", fired_many)
    src = tmp_path / "six.ndjson"
    src.write_text("".join(small.read_text().splitlines(keepends=True)[:6]))
    summary, _ = run_batch(_opts([str(src)], tmp_path / "out"), io.StringIO())
    assert summary["records"]["total"] == 6 and summary["records"]["not_screened"] == 0
    t = next(t for t in summary["trials"] if t["id"] == "NCT06111625")
    assert t["engine_errors"] == 1
    errors = [json.loads(x) for x in (tmp_path / "out" / "errors.jsonl").read_text().splitlines()]
    assert [e["kind"] for e in errors if e.get("code") == "engine_rejected"] == ["engine"]
    assert "refused by the rule engine" in (tmp_path / "out" / "report.html").read_text()


def test_blocked_csv_says_which_attestations_are_still_pending(clean_small: Path) -> None:
    import csv
    rows = list(csv.DictReader(io.StringIO((clean_small / "blocked.csv").read_text())))
    assert rows, "the synthetic registry has patients blocked by one element"
    for r in rows:
        if r["trial"] == "NCT06111625":
            assert {"inc_disease_records", "exc_organ_dysfunction_other"} <= set(
                r["manual_criteria_also_pending"].split()), r


def test_an_input_given_twice_is_refused(small: Path, tmp_path: Path) -> None:
    with pytest.raises(BatchError, match="given twice"):
        batch.classify_inputs([str(small), str(small)], None)
    d = tmp_path / "reg"
    d.mkdir()
    (d / "p.csv").write_text("pid,dob\n1,1980-01-01\n")
    (d / "labs.csv").write_text("pid,code,value\n")
    m = d / "m.yaml"
    m.write_text("x: 1\n")
    with pytest.raises(BatchError, match="tables of one registry"):
        batch.classify_inputs([str(d / "p.csv"), str(d / "labs.csv")], str(m))
    assert len(batch.classify_inputs([str(d)], str(m))) == 1


def test_a_second_run_on_a_busy_out_dir_is_refused_even_with_force(
        small: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    held = batch._lock_out(out)       # a run in progress (another process in real life)
    try:
        for force in (False, True):
            with pytest.raises(BatchError, match="in use by another screener batch"):
                run_batch(_opts([str(small)], out, force=force), io.StringIO())
    finally:
        held.close()
    summary, _ = run_batch(_opts([str(small)], out), io.StringIO())   # free again
    assert summary["records"]["screened"] == 400


def test_an_input_rewritten_with_its_size_and_mtime_kept_is_not_resumed(
        small: Path, tmp_path: Path) -> None:
    src = tmp_path / "reg.ndjson"
    shutil.copy(small, src)
    out = tmp_path / "out"
    run_batch(_opts([str(src)], out), io.StringIO())
    (out / "manifest.json").write_text((out / "manifest.json").read_text()
                                       .replace('"complete": true', '"complete": false'))
    st = src.stat()
    text = src.read_text()
    assert '"birth_date": "19' in text or '"birth_date":"19' in text
    src.write_text(text.replace('"birth_date": "19', '"birth_date": "20', 1)
                   .replace('"birth_date":"19', '"birth_date":"20', 1))
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert src.stat().st_size == st.st_size
    with pytest.raises(BatchError, match=r"reg.ndjson changed \(sha256\)"):
        run_batch(_opts([str(src)], out), io.StringIO())


def test_temporary_files_of_a_killed_run_are_removed_on_resume(
        small: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_batch(_opts([str(small)], out), io.StringIO())
    stale = [out / ".tmp-99999-summary.json", out / "matrix" / ".tmp-99999-part-x.parquet"]
    for p in stale:
        p.write_text("partial")
    (out / "duplicates.csv").write_text("from an earlier run\n")
    run_batch(_opts([str(small)], out), io.StringIO())
    assert not any(p.exists() for p in stale)
    # --force clears every file of the discarded run (a forced run killed before its end
    # left the old duplicates.csv beside its own manifest)
    batch._clear(out)
    assert not (out / "duplicates.csv").exists() and not (out / "manifest.json").exists()


def test_a_local_pool_worker_with_other_code_refuses_the_chunk(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A pool worker started after the screener's files changed imports the new code: it must
    not screen chunks of a run that started with the old code."""
    spec = batch.Spec((RULES,), (), AS_OF.isoformat(), "rete", "parquet", batch.SUB_BATCH, 0,
                      "sha256:" + "1" * 64)
    with pytest.raises(BatchError, match="worker has screener code"):
        batch._pool_task(spec, None)  # type: ignore[arg-type]
