"""Registry batch screening: many patients x one or more trials, streamed, parallel, resumable.

Pipeline position: a driver *around* the whole pipeline. Per patient it runs exactly what
`screen.Screener` runs (adapter -> `normalize.prepare` -> `normalize.fill` -> engine ->
`report.verdict_for`), but many patients at a time:

    input files --(driver: read raw chunks)--> worker processes / Dask workers
        each chunk: parse + adapt + prepare, fill per trial, `Screener.fired_many` per trial in
        sub-batches of <= 256 facts, verdicts, encode one Parquet/CSV part
    --(driver: atomic write of the part)--> DIR/matrix/part-III-CCCCCCC.parquet
    all parts --(summarise)--> counts, attrition funnel, "blocked only by missing X",
        summary.json, report.html

Why the work is split this way:
* durable_rules holds the GIL and is not thread-safe (see engine.py): parallelism comes from
  processes, each of which builds its own `Screener` once (pool initializer, or lazily on a Dask
  worker) and registers its own rulesets.
* Workers return encoded part files as bytes and the driver is the only writer, so a Dask cluster
  needs no shared file system and a killed run never leaves two writers racing on one file.
* Chunk ids are deterministic (input index + chunk index at a fixed chunk size), a chunk's matrix
  part is written last and atomically (temporary file, fsync, `os.replace`), so the part file
  itself is the done-marker: a restarted run skips the chunks whose part exists and redoes the
  others; a patient can be neither lost nor written twice.
* Memory stays flat: at most `2 x workers` chunks are in flight, the summary reads the matrix
  back in bounded slices.

Verdicts are never re-derived here: `report.verdict_for` is called once per distinct
(criterion, fired-rule combination) and memoised, because a verdict depends only on which of the
criterion's four rules fired; the trial status uses `report.favourable` with the same rule as
`report.build`. tests/test_batch.py checks both against `Screener.screen` patient by patient.

The CLI commands `batch`, `report` and `synth` are registered at the bottom.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import hashlib
import html
import io
import itertools
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

from . import __version__, jsonfast
from .cli import DEFAULT_RULES, iso_date, register, to_patient
from .compile import rule_names
from .errors import PatientDataError, ScreenerError, did_you_mean, short_repr
from .ir import Criterion, leaves
from .normalize import Facts, fill, prepare
from .report import favourable, verdict_for
from .screen import EngineName, Screener, load_trials, rule_files

if TYPE_CHECKING:
    import pyarrow as pa
# pyarrow is imported where it is used: the CLI imports this module for every command (to
# register `batch`), and `screener screen` should not pay a quarter of a second for pyarrow.

VERDICTS = ("met", "not_met", "unknown", "not_applicable")
STATUSES = ("eligible", "needs_review", "ineligible")
#: largest number of facts asserted in one engine session (engine.py: one session per call)
SUB_BATCH = 256
DEFAULT_CHUNK = 2000
MAX_LINE_BYTES = 20 * 1024 * 1024
#: marker stored in a `:missing` cell when a data criterion is unknown but names no element
NO_ELEMENT = "?"
NDJSON_SUFFIXES = (".ndjson", ".jsonl", ".json", ".ndjson.gz", ".jsonl.gz", ".json.gz")
#: suffixes whose file may hold one JSON document instead of lines (see `json_layout`)
JSON_SUFFIXES = (".json", ".json.gz")
#: largest .json document read whole (an object or an array of patients); larger: use NDJSON
MAX_DOCUMENT_BYTES = 256 * 1024 * 1024
FIXED_COLUMNS = ("patient_id", "source", "input", "record")
#: rows per slice when the summary reads the matrix back (bounded memory)
SUMMARY_SLICE = 32_768


class BatchError(ScreenerError):
    """A batch run cannot start or continue (bad inputs, a different run in DIR, ...)."""


# ---- naming ----------------------------------------------------------------------------------

def status_column(trial_id: str) -> str:
    return f"{trial_id}:status"


def verdict_column(trial_id: str, criterion_id: str) -> str:
    return f"{trial_id}:{criterion_id}"


def missing_column(trial_id: str, criterion_id: str) -> str:
    return f"{trial_id}:{criterion_id}:missing"


def chunk_id(input_index: int, chunk_index: int) -> str:
    return f"{input_index:03d}-{chunk_index:07d}"


# ---- per-trial verdict plan (worker side) ----------------------------------------------------

_FAVOURABLE = {(k, v): favourable(k, v) for k in ("inclusion", "exclusion") for v in VERDICTS}


def status_of(kinds: Sequence[str], verdicts: Sequence[str]) -> str:
    """Trial status from per-criterion verdicts: the rule `report.build` applies."""
    fav = [_FAVOURABLE[(k, v)] for k, v in zip(kinds, verdicts, strict=True)]
    if any(not f and v != "unknown" for f, v in zip(fav, verdicts, strict=True)):
        return "ineligible"
    if all(fav):
        return "eligible"
    return "needs_review"


@dataclass(frozen=True)
class _CritPlan:
    criterion: Criterion
    names: tuple[str, str, str, str]   # T, F, AT, AF rule names
    slots: tuple[str, ...]             # slot keys of the logic's leaves
    applies_slots: tuple[str, ...]     # slot keys of the applies_if leaves


class TrialPlan:
    """Criterion order, rule names and a memo of `verdict_for` for one trial."""

    def __init__(self, criteria: Sequence[Criterion]):
        self.crits: list[_CritPlan] = []
        for c in criteria:
            n = rule_names(c.id)
            keys = tuple(dict.fromkeys(leaf.slot.key for leaf in leaves(c.logic)))
            akeys = tuple(dict.fromkeys(leaf.slot.key for leaf in leaves(c.applies_if)))
            self.crits.append(_CritPlan(c, (n["T"], n["F"], n["AT"], n["AF"]), keys, akeys))
        self.kinds = [c.kind for c in criteria]
        # per criterion, 16 slots indexed by which of T, F, AT, AF fired (bits 1, 2, 4, 8):
        # (verdict, favourable, failed), filled on first use
        self._table: list[list[tuple[str, bool, bool] | None]] = [
            [None] * 16 for _ in criteria]

    def _entry(self, i: int, bits: int) -> tuple[str, bool, bool]:
        cp = self.crits[i]
        # Only the criterion's own four rule names matter to verdict_for; evidence and
        # attestations (none in a batch) change the report's text, never the verdict.
        subset = {n for k, n in enumerate(cp.names) if bits >> k & 1}
        v = str(verdict_for(cp.criterion, subset, {}, {})["verdict"])
        fav = _FAVOURABLE[(cp.criterion.kind, v)]
        e = self._table[i][bits] = (v, fav, not fav and v != "unknown")
        return e

    def verdict(self, i: int, fired: set[str] | frozenset[str]) -> str:
        return self.verdicts(fired)[0][i]

    def verdicts(self, fired: set[str] | frozenset[str]) -> tuple[list[str], str]:
        """Per-criterion verdicts and the trial status for one patient's fired rules."""
        out: list[str] = []
        any_fail = False
        all_fav = True
        table = self._table
        for i, cp in enumerate(self.crits):
            t, f, at, af = cp.names
            bits = (t in fired) | (f in fired) << 1 | (at in fired) << 2 | (af in fired) << 3
            e = table[i][bits] or self._entry(i, bits)
            out.append(e[0])
            any_fail = any_fail or e[2]
            all_fav = all_fav and e[1]
        # the status rule of report.build (status_of spells it out; a test pins both)
        return out, ("ineligible" if any_fail else "eligible" if all_fav else "needs_review")

    def missing(self, i: int, absent: dict[str, str], fired: set[str] | frozenset[str]
                ) -> str | None:
        """Data elements an unknown criterion waits for, as `verdict_for` lists them (minus the
        attestation of a manual criterion): the logic's if the logic is unknown, the
        applicability's if that is unknown; NO_ELEMENT for a data criterion naming none.
        `absent` maps the patient's unknown slot keys to their element (see `absent_slots`)."""
        cp = self.crits[i]
        t, f, at, af = cp.names
        keys = (cp.slots if t not in fired and f not in fired else ()) + \
            (cp.applies_slots if at not in fired and af not in fired else ())
        els = sorted({absent[k] for k in keys if k in absent})
        if els:
            return " ".join(els)
        return None if cp.criterion.manual else NO_ELEMENT


def absent_slots(evidence: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Slot key -> element name for every slot `fill` left unknown (evidence with `missing`)."""
    return {k: ev["element"] for k, ev in evidence.items() if "missing" in ev}


# ---- what travels between driver and workers -------------------------------------------------

@dataclass(frozen=True)
class Spec:
    """Everything a worker needs to build its Screener; small and picklable."""

    rules: tuple[str, ...]
    trials: tuple[tuple[str, str], ...]   # (trial id, ruleset hash), sorted by id
    as_of: str
    engine: str = "rete"
    fmt: str = "parquet"
    sub_batch: int = SUB_BATCH
    driver_pid: int = 0
    code: str = ""                        # `code_hash` of the driver (checked on every worker)


@dataclass
class Chunk:
    cid: str
    input_index: int
    input_name: str
    first: int                 # line (NDJSON) or record (tables) number of the first item
    kind: str                  # "ndjson" | "records" | "json" (items of a JSON document)
    count: int                 # lines or records in the chunk
    data: bytes | list[tuple[str, dict[str, Any] | None, list[dict[str, str]]]] | list[Any]


@dataclass
class ChunkResult:
    cid: str
    records: int
    screened: int
    not_screened: int
    value_issues: int
    matrix: bytes
    errors: bytes
    seconds: dict[str, float] = field(default_factory=dict)


def matrix_schema(plans: Sequence[tuple[str, Sequence[Criterion]]]) -> pa.Schema:
    import pyarrow as pa
    fields = [pa.field("patient_id", pa.string()), pa.field("source", pa.string()),
              pa.field("input", pa.int32()), pa.field("record", pa.int64())]
    for tid, crits in plans:
        fields.append(pa.field(status_column(tid), pa.string()))
        fields += [pa.field(verdict_column(tid, c.id), pa.string()) for c in crits]
    for tid, crits in plans:
        fields += [pa.field(missing_column(tid, c.id), pa.string()) for c in crits]
    return pa.schema(fields)


class _Worker:
    """One per process: a Screener with its own registered rulesets, plus verdict plans."""

    def __init__(self, spec: Spec):
        wanted = dict(spec.trials)
        trials = [t for t in load_trials(spec.rules) if t.id in wanted]
        self.screener = Screener(trials, cast(EngineName, spec.engine))
        for tid, h in spec.trials:
            got = self.screener.get(tid).hash
            if got != h:
                # a worker on another machine with other rule files must not mix results in
                raise BatchError(f"worker has {tid} with ruleset {got}, the run expects {h}")
        self.spec = spec
        self.as_of = date.fromisoformat(spec.as_of)
        self.ids = [tid for tid, _ in spec.trials]
        self.plans = {tid: TrialPlan(self.screener.get(tid).trial.criteria) for tid in self.ids}
        self.schema = matrix_schema([(tid, self.screener.get(tid).trial.criteria)
                                     for tid in self.ids])

    def screen(self, chunk: Chunk) -> ChunkResult:
        import pyarrow as pa
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq
        clock = time.perf_counter
        secs = dict.fromkeys(("parse", "prepare", "fill", "engine", "verdicts", "encode"), 0.0)
        errors: list[dict[str, Any]] = []
        rows: list[tuple[str | None, str, int]] = []   # patient_id, source, record number
        facts: dict[str, list[Facts]] = {tid: [] for tid in self.ids}
        trials = [(tid, self.screener.get(tid).trial) for tid in self.ids]
        n_records = n_issues = 0
        t0 = clock()
        for number, where, patient, adapter_issues, problem in self._items(chunk):
            n_records += 1
            base = {"input": chunk.input_name, _unit(chunk): number, "source": where}
            if problem is not None:
                errors.append({"kind": "record", **base, **problem})
                continue
            t1 = clock()
            secs["parse"] += t1 - t0
            stage = "prepare"
            try:
                prep = prepare(patient, self.as_of)
                t2 = clock()
                stage = "fill"
                # every trial's facts now, so that a record failing in fill is one bad record
                # (not a failed chunk) and keeps no half-filled row
                # the matrix keeps verdicts and missing elements, not evidence text
                filled = [fill(prep, trial, detail=False) for _, trial in trials]
            except PatientDataError as e:
                errors.append({"kind": "record", **base, "code": e.type, "reason": str(e)})
                t0 = clock()
                secs[stage] += t0 - t1
                continue
            except Exception as e:  # noqa: BLE001 - one odd record must not end a long run
                errors.append({"kind": "record", **base, "code": "internal_error",
                               "reason": f"{stage}: {type(e).__name__}: {e}"})
                t0 = clock()
                secs[stage] += t0 - t1
                continue
            t0 = clock()
            secs["prepare"] += t2 - t1
            secs["fill"] += t0 - t2
            pid = prep.patient_id
            raw_id = patient.get("id") if isinstance(patient, dict) else None
            if pid is None and raw_id is not None:
                # an id of another JSON type (12.0, true) is not an id: screened without one,
                # and said so (ids compare as text; 12.0 may have been "12" or "12.0")
                adapter_issues = [*adapter_issues, {
                    "loc": "id", "code": "bad_id",
                    "msg": f"patient id {short_repr(raw_id)} is a {type(raw_id).__name__}, not "
                           "a string or integer; screened without an id"}]
            for issue in adapter_issues:
                errors.append({"kind": "value", **base, "patient_id": pid,
                               "origin": "adapter", **issue})
            issues = sorted(set(prep.issues))
            for di in issues:
                errors.append({"kind": "value", **base, "patient_id": pid,
                               "origin": "normalize", **di.as_dict()})
            n_issues += len(adapter_issues) + len(issues)
            rows.append((pid, where, number))
            for (tid, _), fc in zip(trials, filled, strict=True):
                facts[tid].append(fc)
        secs["parse"] += clock() - t0

        columns: dict[str, list[Any]] = {
            "patient_id": [r[0] for r in rows], "source": [r[1] for r in rows],
            "input": [chunk.input_index] * len(rows), "record": [r[2] for r in rows]}
        for tid in self.ids:
            self._screen_trial(tid, facts[tid], rows, chunk, columns, errors, secs)

        t0 = clock()
        table = pa.Table.from_pydict(columns, schema=self.schema)
        sink = pa.BufferOutputStream()
        if self.spec.fmt == "csv":
            pacsv.write_csv(table, sink)
        else:
            pq.write_table(table, sink, compression="zstd")
        err_text = "".join(json.dumps(e, ensure_ascii=False, sort_keys=True, default=str) + "\n"
                           for e in errors)
        secs["encode"] += clock() - t0
        return ChunkResult(chunk.cid, n_records, len(rows), n_records - len(rows), n_issues,
                           sink.getvalue().to_pybytes(), err_text.encode(), secs)

    def _screen_trial(self, tid: str, facts: list[Facts], rows: list[tuple[str | None, str,
                      int]], chunk: Chunk, columns: dict[str, list[Any]],
                      errors: list[dict[str, Any]], secs: dict[str, float]) -> None:
        clock = time.perf_counter
        plan = self.plans[tid]
        t1 = clock()
        fired: list[set[str]] = []
        for k in range(0, len(facts), self.spec.sub_batch):
            fired += self.screener.fired_many(
                tid, [f.values for f in facts[k:k + self.spec.sub_batch]])
        t2 = clock()
        n_crit = len(plan.crits)
        verdict_cols: list[list[str | None]] = [[] for _ in range(n_crit)]
        missing_cols: list[list[str | None]] = [[] for _ in range(n_crit)]
        statuses: list[str] = []
        for j, (fs, fc) in enumerate(zip(fired, facts, strict=True)):
            if "__rejected__" in fs:
                # the engine refused this patient's facts (normalize should make that
                # impossible): the row stays, this trial's cells say so, the error is listed
                statuses.append("error")
                for col in verdict_cols + missing_cols:
                    col.append(None)
                pid, where, number = rows[j]
                # kind "engine", not "record": the patient stays in the matrix (and may be
                # screened for the other trials), so it is not a record left unscreened
                errors.append({"kind": "engine", "input": chunk.input_name,
                               _unit(chunk): number, "source": where, "patient_id": pid,
                               "trial": tid, "code": "engine_rejected",
                               "reason": "the rule engine rejected this patient's facts"})
                continue
            vs, status = plan.verdicts(fs)
            absent = absent_slots(fc.evidence) if "unknown" in vs else {}
            for i, v in enumerate(vs):
                verdict_cols[i].append(v)
                missing_cols[i].append(plan.missing(i, absent, fs) if v == "unknown" else None)
            statuses.append(status)
        columns[status_column(tid)] = statuses
        for i, cp in enumerate(plan.crits):
            columns[verdict_column(tid, cp.criterion.id)] = verdict_cols[i]
            columns[missing_column(tid, cp.criterion.id)] = missing_cols[i]
        t3 = clock()
        secs["engine"] += t2 - t1
        secs["verdicts"] += t3 - t2

    def _items(self, chunk: Chunk) -> Iterator[tuple[int, str, Any, list[dict[str, str]],
                                                     dict[str, Any] | None]]:
        """(number, locator, patient, adapter issues, problem) per record of the chunk."""
        if chunk.kind == "records":
            assert isinstance(chunk.data, list)
            for j, (where, patient, issues) in enumerate(chunk.data):
                if patient is None:
                    reason = "; ".join(i.get("msg", "") for i in issues) or "no patient"
                    yield chunk.first + j, where, None, [], {
                        "code": issues[0].get("code", "unmappable") if issues else "unmappable",
                        "reason": reason, "issues": issues}
                else:
                    yield chunk.first + j, where, patient, issues, None
            return
        if chunk.kind == "json":
            assert isinstance(chunk.data, list)
            for j, doc in enumerate(chunk.data):
                number = chunk.first + j
                where = f"{chunk.input_name}:item {number}"
                if not isinstance(doc, dict):
                    yield number, where, None, [], {
                        "code": "not_an_object",
                        "reason": f"an item must be one JSON object, got {type(doc).__name__}"}
                    continue
                patient, issues, problem = _adapt(doc)
                yield number, where, patient, issues, problem
            return
        assert isinstance(chunk.data, bytes)
        lines = chunk.data.split(b"\n")[:chunk.count]
        for j, raw in enumerate(lines):
            number = chunk.first + j
            if not raw.strip():
                continue  # blank lines are not records
            where = f"{chunk.input_name}:line {number}"
            doc, problem = _parse_line(raw)
            if problem is not None:
                yield number, where, None, [], problem
                continue
            patient, issues, problem = _adapt(doc)
            yield number, where, patient, issues, problem


def _unit(chunk: Chunk) -> str:
    return "line" if chunk.kind == "ndjson" else "record"


def _parse_line(raw: bytes) -> tuple[Any, dict[str, str] | None]:
    if len(raw) > MAX_LINE_BYTES:
        return None, {"code": "too_large", "reason": f"line longer than {MAX_LINE_BYTES} bytes"}
    try:
        doc = jsonfast.loads_strict(raw)
    except (ValueError, RecursionError) as e:
        # strict JSON: NaN / Infinity are refused here rather than reaching the normalizer
        return None, {"code": "json_invalid", "reason": f"invalid JSON: {e}"}
    if not isinstance(doc, dict):
        return None, {"code": "not_an_object",
                      "reason": f"a line must hold one JSON object, got {type(doc).__name__}"}
    return doc, None


def _adapt(doc: dict[str, Any]) -> tuple[Any, list[dict[str, str]], dict[str, str] | None]:
    """Canonical patient as is; a FHIR Bundle / resource through the FHIR adapter (as the CLI
    reads a patient file), with a failing bundle as one bad record."""
    try:
        patient, issues = to_patient(doc)
    except ScreenerError as e:
        return None, [], {"code": "fhir_error", "reason": str(e)}
    except Exception as e:  # noqa: BLE001 - one odd bundle must not end a long run
        return None, [], {"code": "internal_error", "reason": f"{type(e).__name__}: {e}"}
    return patient, [dict(i) for i in issues], None


# Process-wide worker state. A pool worker builds it in the initializer; a Dask worker builds it
# on its first task (several Dask threads may race for it, hence the lock).
_STATE: dict[Spec, _Worker] = {}
_STATE_LOCK = threading.Lock()


def _worker_for(spec: Spec) -> _Worker:
    with _STATE_LOCK:
        w = _STATE.get(spec)
        if w is None:
            w = _STATE[spec] = _Worker(spec)
        return w


def _pool_init(spec: Spec) -> None:
    _worker_for(spec)
    if spec.driver_pid:
        threading.Thread(target=_watch_driver, args=(spec.driver_pid,), daemon=True).start()


def _watch_driver(driver_pid: int) -> None:
    # A pool worker blocks forever on its call queue if the driver is SIGKILLed (the queue's
    # pipe ends are shared, so no EOF arrives): exit once the driver is gone.
    while True:
        time.sleep(1.0)
        try:
            os.kill(driver_pid, 0)
        except ProcessLookupError:
            os._exit(3)
        except PermissionError:
            pass


def _check_code(spec: Spec) -> None:
    """A worker screens only with the code the run started with: a Dask worker on another
    machine, or a local pool worker started (by the forkserver, importing from disk) after
    the screener's files were edited, must not mix results of two versions into one run."""
    if spec.code and spec.code != _worker_code_hash():
        raise BatchError(f"worker has screener code {_worker_code_hash()}, the run expects "
                         f"{spec.code}")


def _pool_task(spec: Spec, chunk: Chunk) -> ChunkResult:
    _check_code(spec)
    return _worker_for(spec).screen(chunk)


def dask_task(spec: Spec, chunk: Chunk) -> ChunkResult:
    """Entry point of a chunk on a Dask worker (module-level so workers can import it)."""
    _check_code(spec)
    return _worker_for(spec).screen(chunk)


# ---- inputs ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Input:
    index: int
    kind: str                  # "ndjson" | "json" (one JSON document) | "table"
    path: str                  # as given (shown in locators and errors)
    base_dir: str | None = None


def classify_inputs(paths: Sequence[str], mapping: str | None) -> list[Input]:
    out: list[Input] = []
    seen: dict[str, str] = {}   # real path (file, or a registry's folder) -> as given
    for p in paths:
        low = p.lower()
        if low.endswith(NDJSON_SUFFIXES) or p == "-":
            if p == "-":
                raise BatchError("batch reads files, not stdin (a resumable run needs to "
                                 "re-read its input)")
            if not os.path.isfile(p):
                raise BatchError(f"input {p}: no such file")
            kind = "ndjson"
            if low.endswith(JSON_SUFFIXES) and json_layout(p) == "document":
                kind = "json"
                len(read_json_document(p))  # refused here, before anything is written
            real = os.path.realpath(p)
            if real in seen:
                raise BatchError(f"input {p} is given twice (as {seen[real]}): its patients "
                                 "would be screened and counted twice")
            seen[real] = p
            out.append(Input(len(out), kind, p))
        elif mapping is not None:
            if not os.path.exists(p):
                raise BatchError(f"input {p}: no such file or directory")
            base = p if os.path.isdir(p) else os.path.dirname(os.path.abspath(p))
            real = os.path.realpath(base)
            if real in seen:
                # the mapping names every table of a registry: each input that is one of its
                # files (or its folder) reads the whole registry again
                raise BatchError(f"inputs {seen[real]} and {p} are tables of one registry "
                                 f"(folder {base}): give the folder (or one of its files) "
                                 "once; the mapping names all its tables")
            seen[real] = p
            out.append(Input(len(out), "table", p, base))
        else:
            raise BatchError(f"input {p}: NDJSON inputs end in .ndjson / .jsonl (.gz); "
                             "CSV and Parquet tables need --mapping MAPPING.yaml")
    if not out and mapping is not None:
        # no input given: the mapping's own folder holds the tables
        out.append(Input(0, "table", str(Path(mapping).parent), str(Path(mapping).parent)))
    if not out:
        raise BatchError("no input files given")
    return out


def _open_binary(path: str) -> IO[bytes]:
    if path.lower().endswith(".gz"):
        return cast(IO[bytes], gzip.open(path, "rb"))
    return open(path, "rb")


def json_layout(path: str) -> str:
    """How a `.json` input is read: "ndjson" (one record per line) or "document" (the file is
    one JSON document: an object is one patient or FHIR Bundle, an array a list of them).

    A pretty-printed document read line by line loses its patient and turns fragments such as
    `{"element": "alt", ...}` into phantom patients, so a `.json` file is NDJSON only if every
    non-blank line starts with `{` at its first byte (no indentation, no closing bracket) and
    the first one is a complete JSON value (or at least ends with `}`: a broken record). Any
    other `.json` file is read as one document. `.ndjson` / `.jsonl` are always line based."""
    first = True
    with _open_binary(path) as fh:
        for line in fh:
            s = line.strip()
            if not s:
                continue
            if first:
                first = False
                line = line.removeprefix(b"\xef\xbb\xbf")
                s = s.removeprefix(b"\xef\xbb\xbf")
                if line[:1] == b"{" and not s.endswith(b"}"):
                    try:
                        jsonfast.loads_strict(s)
                    except (ValueError, RecursionError):
                        return "document"
            if line[:1] != b"{":
                return "document"
    return "ndjson"


def read_json_document(path: str) -> list[Any]:
    """The items of a `.json` document input (see `json_layout`): [object] or the array's
    items. Raises BatchError when it is not one valid JSON document (never guessed at)."""
    with _open_binary(path) as fh:
        data = fh.read(MAX_DOCUMENT_BYTES + 1)
    hint = ("a .json input is read line by line only when every line holds one JSON object; "
            "otherwise it must be one JSON document (a patient, a FHIR Bundle, or an array of "
            "them)")
    if len(data) > MAX_DOCUMENT_BYTES:
        raise BatchError(f"input {path}: a JSON document over {MAX_DOCUMENT_BYTES} bytes; "
                         "write it as NDJSON (one patient per line, .ndjson)")
    try:
        doc = jsonfast.loads_strict(data.removeprefix(b"\xef\xbb\xbf"))
    except (ValueError, RecursionError) as e:
        raise BatchError(f"input {path}: not NDJSON and not one valid JSON document: {e} "
                         f"({hint}); nothing was screened") from None
    if isinstance(doc, dict):
        return [doc]
    if isinstance(doc, list):
        return doc
    raise BatchError(f"input {path}: a JSON {type(doc).__name__}, not a patient, a FHIR Bundle "
                     f"or an array of them ({hint})")


def count_lines(path: str) -> int:
    n = 0
    last = b"\n"
    with _open_binary(path) as fh:
        while block := fh.read(1 << 20):
            n += block.count(b"\n")
            last = block[-1:]
    return n + (last != b"\n")


def iter_chunks(inp: Input, chunk_size: int, mapping: Any,
                skip: Callable[[str], bool]) -> Iterator[tuple[Chunk | None, str, int]]:
    """(chunk or None when already done, chunk id, items in chunk), in input order.

    Chunk k of an input always holds items k*size+1 .. (k+1)*size, so ids are stable across runs;
    a done chunk is still read past (to keep counting) but neither parsed nor shipped."""
    def cut(items: Iterator[Any], kind: str, pack: Callable[[list[Any]], Any]
            ) -> Iterator[tuple[Chunk | None, str, int]]:
        for k in itertools.count():
            part = list(itertools.islice(items, chunk_size))
            if not part:
                return
            cid = chunk_id(inp.index, k)
            if skip(cid):
                yield None, cid, len(part)
                continue
            yield (Chunk(cid, inp.index, inp.path, k * chunk_size + 1, kind, len(part),
                         pack(part)), cid, len(part))

    if inp.kind == "ndjson":
        with _open_binary(inp.path) as fh:
            yield from cut(fh, "ndjson", b"".join)
        return
    if inp.kind == "json":
        yield from cut(iter(read_json_document(inp.path)), "json", list)
        return
    from .adapters.tabular import iter_patients
    yield from cut(iter_patients(mapping, inp.base_dir), "records",
                   lambda batch: [(w, p, list(i)) for w, p, i in batch])


def _file_info(path: str) -> dict[str, Any]:
    """An input's identity: size and mtime, and its content hash, because a file rewritten
    in place with its size kept and its mtime restored (cp -p, rsync -t, tar x) was resumed
    as the same input and mixed two registries in one run (about 1 s per GB, read once)."""
    st = os.stat(path)
    return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "sha256": _sha256(path)}


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return "sha256:" + h.hexdigest()


def _mapping_tables(mapping: Any, inp: Input) -> list[str]:
    base = Path(inp.base_dir) if inp.base_dir else Path(mapping.path).parent
    tables = [mapping.patients, *mapping.labs, *mapping.problems]
    return [str(base / t.file) for t in tables]


# ---- outputs ---------------------------------------------------------------------------------

def atomic_write(path: Path, data: bytes) -> None:
    """Write tmp, fsync, rename: readers (and a restarted run) see all of it or nothing."""
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _part_suffix(fmt: str) -> str:
    return ".csv" if fmt == "csv" else ".parquet"


def source_hash(root: Path) -> str:
    """sha256 of a screener package's source: its `**/*.py` and `schema/*` files, by sorted
    relative path (POSIX), each as path, size and bytes. Deterministic: no mtimes, no
    `__pycache__`, the same on every machine holding the same code."""
    files = {p for p in root.rglob("*.py") if "__pycache__" not in p.parts}
    schema = root / "schema"
    if schema.is_dir():
        files |= {p for p in schema.iterdir() if p.is_file()}
    h = hashlib.sha256()
    for rel, p in sorted((p.relative_to(root).as_posix(), p) for p in files):
        data = p.read_bytes()
        h.update(f"{rel}\0{len(data)}\0".encode())
        h.update(data)
    return "sha256:" + h.hexdigest()


def code_hash() -> str:
    """`source_hash` of this screener package (read at each run's start). Part of a run's
    identity: a run is resumed only by the same code."""
    return source_hash(Path(__file__).resolve().parent)


@functools.lru_cache(maxsize=1)
def _worker_code_hash() -> str:
    return code_hash()   # once per worker process, at its first task


#: manifest keys that must be equal for a run to be resumed (see `_prepare_out`)
IDENTITY = ("screener", "code", "as_of", "trials", "inputs", "mapping", "chunk_size", "format",
            "engine")


def _manifest_identity(m: dict[str, Any]) -> dict[str, Any]:
    return {k: m.get(k) for k in IDENTITY}


def _describe_difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = [k for k in _manifest_identity(new) if old.get(k) != new.get(k)]
    parts = []
    for k in keys:
        if k in ("as_of", "chunk_size", "format", "engine"):
            parts.append(f"{k} {old.get(k)!r} -> {new.get(k)!r}")
        elif k == "screener":
            parts.append(f"screener version {old.get(k)!r} -> {new.get(k)!r}")
        elif k == "code":
            parts.append(f"screener code changed (source {old.get(k) or 'not recorded'} -> "
                         f"{new.get(k)})")
        elif k == "inputs":
            parts.append(_inputs_difference(old.get(k) or [], new.get(k) or []))
        else:
            parts.append(f"{k} changed")
    return ", ".join(parts)


def _inputs_difference(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> str:
    """Which input changed, and how (what a coordinator needs to decide between resuming
    elsewhere and --force)."""
    def files(ins: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for i in ins:
            for f in i.get("tables", [i]):
                out[f.get("path", i.get("name", "?"))] = f
        return out

    a, b = files(old), files(new)
    notes = [f"{p} added" for p in b if p not in a] + [f"{p} no longer given" for p in a
                                                      if p not in b]
    for p in b:
        if p in a and a[p] != b[p]:
            what = [k for k in ("size", "sha256", "mtime_ns") if a[p].get(k) != b[p].get(k)]
            if what:
                notes.append(f"{p} changed ({', '.join(what)})")
            elif a[p].get("name") != b[p].get("name"):
                # the same file spelled otherwise: its records' locators would differ
                notes.append(f"{p} was given as {a[p].get('name')!r}, now as "
                             f"{b[p].get('name')!r}")
            else:
                notes.append(f"{p} is read as another kind of input")
    if not notes and [i.get("name") for i in old] != [i.get("name") for i in new]:
        notes.append("the inputs are given in another order or spelling")
    return "inputs changed: " + ("; ".join(notes[:5]) or "kind or order")


# ---- the run ---------------------------------------------------------------------------------

@dataclass
class BatchOptions:
    trials: Sequence[str]
    inputs: Sequence[str]
    out: str
    as_of: date
    mapping: str | None = None
    fmt: str = "parquet"
    workers: int | None = None     # None = all cores; 0 = in this process
    scheduler: str | None = None
    chunk_size: int = DEFAULT_CHUNK
    rules: Sequence[str] | None = None
    engine: str = "rete"
    force: bool = False
    progress: bool | None = None   # None = when stderr is a TTY


@dataclass
class RunStats:
    records: int = 0
    screened: int = 0
    not_screened: int = 0
    value_issues: int = 0
    chunks_done_before: int = 0
    chunks_run: int = 0
    records_run: int = 0
    screened_run: int = 0
    seconds: float = 0.0
    worker_seconds: dict[str, float] = field(default_factory=dict)
    workers: int = 0
    trials: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class Progress:
    """One self-overwriting line on a TTY; silent otherwise (the caller prints a summary)."""

    def __init__(self, stream: IO[str], total: int | None, enabled: bool, unit: str):
        self.stream, self.total, self.enabled, self.unit = stream, total, enabled, unit
        self.start = time.monotonic()
        self.done = 0
        self.fresh = 0        # items processed in this run (the rate ignores resumed chunks)
        self._last = 0.0

    def advance(self, n: int, fresh: bool) -> None:
        self.done += n
        if fresh:
            self.fresh += n
        now = time.monotonic()
        if self.enabled and (now - self._last > 0.2 or self.done == self.total):
            self._last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        el = max(now - self.start, 1e-9)
        rate = self.fresh / el
        if self.total:
            frac = min(self.done / self.total, 1.0)
            bar = "#" * int(frac * 30)
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            eta_s = _hms(eta) if eta != float("inf") else "--:--"
            line = (f"[{bar:<30}] {self.done:,}/{self.total:,} {self.unit} "
                    f"{rate:,.0f}/s ETA {eta_s}")
        else:
            line = f"{self.done:,} {self.unit} {rate:,.0f}/s {_hms(el)}"
        self.stream.write("\r" + line + "\x1b[K")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self._draw(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()


def _hms(s: float) -> str:
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def run_batch(opts: BatchOptions, err: IO[str] | None = None) -> tuple[dict[str, Any], RunStats]:
    """Screen every input record against every trial into `opts.out`; return (summary, stats).

    Resumes a killed run with the same options; raises BatchError if `opts.out` holds a
    different run (unless `opts.force`)."""
    err = err if err is not None else sys.stderr
    started = time.monotonic()
    if opts.chunk_size < 1:
        raise BatchError("--chunk-size must be at least 1")
    if opts.fmt not in ("parquet", "csv"):
        raise BatchError(f"unknown format {opts.fmt!r} (parquet or csv)")
    rules = tuple(os.path.abspath(f) for f in rule_files(opts.rules or DEFAULT_RULES))
    # the driver never runs the engine: metadata and hashes only (no rulesets registered)
    meta = Screener(load_trials(rules), engine="reference")
    ids = sorted(dict.fromkeys(opts.trials))
    if not ids:
        raise BatchError("give at least one --trial")
    for tid in ids:
        meta.get(tid)
    mapping = None
    if opts.mapping is not None:
        from .adapters.tabular import load_mapping
        mapping = load_mapping(opts.mapping)
    inputs = classify_inputs(opts.inputs, opts.mapping)

    out = Path(opts.out)
    with _lock_out(out):   # held until the run ends; released by the OS on a kill
        manifest = _manifest(meta, ids, inputs, opts, mapping)
        _prepare_out(out, manifest, opts.force)

        spec = Spec(rules, tuple((tid, meta.get(tid).hash) for tid in ids), opts.as_of.isoformat(),
                    opts.engine, opts.fmt, SUB_BATCH, os.getpid(), manifest["code"])
        suffix = _part_suffix(opts.fmt)
        mdir, edir = out / "matrix", out / "errors"
        done = {p.name[5:-len(suffix)] for p in mdir.glob(f"part-*{suffix}")}

        show = err.isatty() if opts.progress is None else opts.progress
        total = None
        if show and all(i.kind == "ndjson" for i in inputs):
            total = sum(count_lines(i.path) for i in inputs)
        progress = Progress(err, total, show, "lines" if total is not None else "records")
        stats = RunStats(chunks_done_before=len(done), trials=len(ids))

        def chunks() -> Iterator[Chunk]:
            for inp in inputs:
                for chunk, _cid, n in iter_chunks(inp, opts.chunk_size, mapping, done.__contains__):
                    if chunk is None:
                        progress.advance(n, fresh=False)
                    else:
                        yield chunk

        def store(res: ChunkResult, n_items: int) -> None:
            # errors first, the matrix part last: the matrix part is the chunk's done-marker
            atomic_write(edir / f"part-{res.cid}.jsonl", res.errors)
            atomic_write(mdir / f"part-{res.cid}{suffix}", res.matrix)
            stats.chunks_run += 1
            stats.records_run += res.records
            stats.screened_run += res.screened
            for k, v in res.seconds.items():
                stats.worker_seconds[k] = stats.worker_seconds.get(k, 0.0) + v
            progress.advance(n_items, fresh=True)

        workers = default_workers() if opts.workers is None else opts.workers
        stats.workers = workers
        try:
            if opts.scheduler:
                stats.workers = _run_dask(opts.scheduler, spec, chunks(), store)
            elif workers <= 0:
                w = _Worker(spec)
                try:
                    for c in chunks():
                        store(w.screen(c), c.count)
                finally:
                    w.screener.close()
            else:
                _run_pool(spec, chunks(), store, workers)
        finally:
            progress.close()

        summary = finalize(out, manifest)
        stats.records = summary["records"]["total"]
        stats.screened = summary["records"]["screened"]
        stats.not_screened = summary["records"]["not_screened"]
        stats.value_issues = summary["records"]["value_issues"]
        stats.seconds = time.monotonic() - started
        rate = stats.screened_run * len(ids) / stats.seconds if stats.seconds else 0.0
        resumed = (f", resumed: {stats.chunks_done_before} chunk(s) were already done"
                   if stats.chunks_done_before else "")
        err.write(f"screened {stats.screened:,} of {stats.records:,} records against {len(ids)} "
                  f"trial(s) ({stats.not_screened:,} not screened, {stats.value_issues:,} value "
                  f"issues; see errors.jsonl) in {stats.seconds:.1f} s, {rate:,.0f} patient-trial "
                  f"screens/s{resumed}; outputs in {out}\n")
        return summary, stats


def _lock_out(out: Path) -> IO[str]:
    """An exclusive lock on the run directory. Without it a second run on the same DIR (or a
    --force run) deleted the first one's temporary files and parts while it was writing, and
    the directory ended up 'complete' with two runs' rows in it."""
    import fcntl
    out.mkdir(parents=True, exist_ok=True)
    fh = open(out / ".lock", "a+", encoding="utf-8")
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.seek(0)
        holder = fh.read().strip() or "another process"
        fh.close()
        raise BatchError(f"{out} is in use by another screener batch ({holder}); wait for it "
                         "to finish (or stop it), or use another --out") from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"pid {os.getpid()}\n")
    fh.flush()
    return fh


def _run_pool(spec: Spec, chunks: Iterator[Chunk], store: Callable[[ChunkResult, int], None],
              workers: int) -> None:
    import multiprocessing as mp
    # forkserver: workers start from a clean process (no inherited pyarrow threads or engine
    # state), and fork from a preloaded server, which is much faster than spawn.
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["screener.batch"])
    inflight = 2 * workers   # bounded: memory does not grow with the input
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_pool_init,
                             initargs=(spec,)) as ex:
        pending: dict[Future[ChunkResult], int] = {}
        try:
            for c in chunks:
                while len(pending) >= inflight:
                    finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for f in finished:
                        store(f.result(), pending.pop(f))
                pending[ex.submit(_pool_task, spec, c)] = c.count
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for f in finished:
                    store(f.result(), pending.pop(f))
        except BaseException:
            ex.shutdown(wait=False, cancel_futures=True)
            raise


def _run_dask(address: str, spec: Spec, chunks: Iterator[Chunk],
              store: Callable[[ChunkResult, int], None]) -> int:
    """Chunks as tasks on a Dask cluster; returns the cluster's thread count."""
    try:
        import distributed
    except ImportError:  # pragma: no cover - optional dependency
        raise BatchError("--scheduler needs dask.distributed (pip install 'dask[distributed]')"
                         ) from None
    dist: Any = distributed  # untyped library: keep its Any out of strict mypy's way
    as_completed = dist.as_completed
    with dist.Client(address, set_as_default=False) as client:
        n = max(int(sum(client.ncores().values())), 1)
        inflight = 2 * n
        counts: dict[str, int] = {}
        ac = as_completed(loop=client.loop)
        for c in chunks:
            if ac.count() >= inflight:
                fut = next(ac)
                res = fut.result()
                store(res, counts.pop(res.cid))
            counts[c.cid] = c.count
            # pure=False: a resubmitted chunk must run again, never come from a stale cache
            ac.add(client.submit(dask_task, spec, c, pure=False, key=f"screen-{c.cid}-"
                                 f"{os.getpid()}-{time.monotonic_ns()}"))
        for fut in ac:
            res = fut.result()
            store(res, counts.pop(res.cid))
    return n


def _manifest(meta: Screener, ids: list[str], inputs: list[Input], opts: BatchOptions,
              mapping: Any) -> dict[str, Any]:
    trials = []
    for tid in ids:
        comp = meta.get(tid)
        t = comp.trial
        trials.append({"id": t.id, "title": t.title, "version": t.version,
                       "ruleset_hash": comp.hash, "rule_file_sha256": t.sha256,
                       "criteria": [{"id": c.id, "kind": c.kind, "manual": c.manual,
                                     "text": c.text} for c in t.criteria]})
    ins: list[dict[str, Any]] = []
    for i in inputs:
        if i.kind in ("ndjson", "json"):
            ins.append({"kind": i.kind, "name": i.path, **_file_info(i.path)})
        else:
            ins.append({"kind": "table", "name": i.path,
                        "base_dir": os.path.abspath(i.base_dir or "."),
                        "tables": [_file_info(p) for p in _mapping_tables(mapping, i)
                                   if os.path.exists(p)]})
    return {
        "screener": __version__,
        "code": code_hash(),
        "as_of": opts.as_of.isoformat(),
        "trials": trials,
        "inputs": ins,
        "mapping": ({"path": os.path.abspath(opts.mapping), "sha256": _sha256(opts.mapping)}
                    if opts.mapping else None),
        "chunk_size": opts.chunk_size,
        "format": opts.fmt,
        "engine": opts.engine,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "complete": False,
    }


def _prepare_out(out: Path, manifest: dict[str, Any], force: bool) -> None:
    mpath = out / "manifest.json"
    if mpath.exists():
        old = json.loads(mpath.read_text(encoding="utf-8"))
        if _manifest_identity(old) != _manifest_identity(manifest):
            if not force:
                code = any(old.get(k) != manifest.get(k) for k in ("screener", "code"))
                why = ("; it was made by other screener code, and resuming would mix verdicts "
                       "of two versions" if code else "")
                raise BatchError(
                    f"{out} holds another run ({_describe_difference(old, manifest)}){why}; "
                    "refusing to mix results: use --force to discard it and start over, or "
                    "another --out")
            _clear(out)
        else:
            manifest["created"] = old.get("created", manifest["created"])
    elif force and out.exists():
        _clear(out)
    (out / "matrix").mkdir(parents=True, exist_ok=True)
    (out / "errors").mkdir(parents=True, exist_ok=True)
    for d in (out, out / "matrix", out / "errors"):
        for p in d.glob(".tmp-*"):
            p.unlink()  # left by a killed run (the lock says none is alive): never renamed
    manifest["complete"] = False
    atomic_write(mpath, _json_bytes(manifest))


def _clear(out: Path) -> None:
    """Remove what a batch run writes in `out` (and nothing else)."""
    for d in ("matrix", "errors"):
        shutil.rmtree(out / d, ignore_errors=True)
    for f in ("manifest.json", "summary.json", "report.html", "errors.jsonl", "counts.csv",
              "funnel.csv", "blocked.csv", "duplicates.csv"):
        (out / f).unlink(missing_ok=True)


def _json_bytes(doc: Any) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def finalize(out: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """After every chunk is done: errors.jsonl, summary.json, CSV tables, report.html."""
    edir = out / "errors"
    kinds = {"record": 0, "value": 0, "engine": 0}
    tmp = out / f".tmp-{os.getpid()}-errors.jsonl"
    with open(tmp, "wb") as dst:
        for part in sorted(edir.glob("part-*.jsonl")):
            with open(part, "rb") as src:
                for line in src:
                    dst.write(line)
                    kinds[_error_kind(line)] += 1
        dst.flush()
        os.fsync(dst.fileno())
    os.replace(tmp, out / "errors.jsonl")
    manifest["complete"] = True
    manifest["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    summary, repeated = _summarise(out, manifest, error_counts=kinds)
    atomic_write(out / "summary.json", _json_bytes(summary))
    atomic_write(out / "counts.csv", _counts_csv(summary).encode())
    atomic_write(out / "funnel.csv", _funnel_csv(summary).encode())
    atomic_write(out / "blocked.csv", _blocked_csv(summary).encode())
    atomic_write(out / "duplicates.csv", _csv_text(
        [("patient_id", "record")] + [(pid, src) for pid, srcs in repeated.items()
                                      for src in srcs]).encode())
    atomic_write(out / "report.html", render_html(summary).encode())
    atomic_write(out / "manifest.json", _json_bytes(manifest))
    return summary


# ---- summary: counts, funnel, blocked-by, from the stored matrix ------------------------------

def _fav_values(kind: str) -> list[str]:
    return [v for v in VERDICTS if favourable(kind, v)]


def _error_kind(line: bytes) -> str:
    """The kind of one errors.jsonl line (json.dumps writes `"kind": "..."` exactly so)."""
    if b'"kind": "record"' in line:
        return "record"
    return "engine" if b'"kind": "engine"' in line else "value"


def read_matrix(out: Path, fmt: str, columns: Sequence[str] | None = None,
                slice_rows: int = SUMMARY_SLICE) -> Iterator[pa.Table]:
    """The stored matrix in part order, as tables of about `slice_rows` rows."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq
    suffix = _part_suffix(fmt)
    buf: list[pa.Table] = []
    rows = 0
    for part in sorted((out / "matrix").glob(f"part-*{suffix}")):
        if fmt == "csv":
            names = _csv_header(part)
            types = {n: (pa.int64() if n in ("input", "record") else pa.string()) for n in names}
            # write_csv quotes every string and leaves a null unquoted and empty: only that
            # is null (pyarrow's default null spellings read a patient id "NA" as none)
            t = pacsv.read_csv(part, convert_options=pacsv.ConvertOptions(
                column_types=types, null_values=[""], strings_can_be_null=True,
                quoted_strings_can_be_null=False,
                include_columns=list(columns) if columns else None))
        else:
            t = pq.read_table(part, columns=list(columns) if columns else None)
        buf.append(t)
        rows += t.num_rows
        if rows >= slice_rows:
            yield pa.concat_tables(buf)
            buf, rows = [], 0
    if buf:
        yield pa.concat_tables(buf)


def _csv_header(path: Path) -> list[str]:
    import csv
    with open(path, newline="", encoding="utf-8") as fh:
        return next(csv.reader(fh), [])


class _TrialTally:
    """Running totals for one trial over matrix slices."""

    def __init__(self, tid: str, crits: list[dict[str, Any]], order: list[str],
                 without: set[str]):
        self.tid = tid
        self.crits = crits
        self.by_id = {c["id"]: c for c in crits}
        self.order = order
        self.without = without
        self.patients = 0
        self.errors = 0
        self.stored_status = dict.fromkeys(STATUSES, 0)
        self.status = dict.fromkeys(STATUSES, 0)
        self.counts = {c["id"]: dict.fromkeys(VERDICTS, 0) for c in crits}
        self.funnel = {cid: dict.fromkeys(("entering", "passed", "failed", "unknown",
                                           "remaining", "remaining_clear",
                                           "remaining_uncertain"), 0) for cid in order}
        self.blocked: dict[str, int] = {}
        self.pending_attestation_only = 0

    def add(self, t: pa.Table) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc
        tid = self.tid
        st = t[status_column(tid)]
        ok = pc.fill_null(pc.not_equal(st, "error"), False)
        self.errors += t.num_rows - _count(ok)
        t = t.filter(ok)
        n = t.num_rows
        if n == 0:
            return
        self.patients += n
        for s in STATUSES:
            self.stored_status[s] += _count(pc.equal(t[status_column(tid)], s))
        for c in self.crits:
            vc = pc.value_counts(t[verdict_column(tid, c["id"])])
            for item in vc.to_pylist():
                if item["values"] in self.counts[c["id"]]:
                    self.counts[c["id"]][item["values"]] += item["counts"]
        false = pa.array([False] * n)
        failed_before = false
        clear = pa.array([True] * n)
        cand: Any = pa.nulls(n, pa.string())
        bad = false
        for cid in self.order:
            c = self.by_id[cid]
            v = t[verdict_column(tid, cid)]
            fav = pc.is_in(v, value_set=pa.array(_fav_values(c["kind"])))
            unk = pc.fill_null(pc.equal(v, "unknown"), False)
            fail = pc.and_(pc.invert(fav), pc.invert(unk))
            entering = pc.invert(failed_before)
            f = self.funnel[cid]
            f["entering"] += _count(entering)
            f["passed"] += _count(pc.and_(entering, fav))
            f["failed"] += _count(pc.and_(entering, fail))
            f["unknown"] += _count(pc.and_(entering, unk))
            failed_before = pc.or_(failed_before, fail)
            clear = pc.and_(clear, fav)
            remaining = pc.invert(failed_before)
            f["remaining"] += _count(remaining)
            f["remaining_clear"] += _count(clear)
            f["remaining_uncertain"] += _count(pc.and_(remaining, pc.invert(clear)))
            # "blocked only by missing X": every unknown criterion waits for the same single
            # element X (manual criteria waiting only for an attestation add nothing)
            m = pc.if_else(unk, t[missing_column(tid, cid)], pa.scalar(None, pa.string()))
            has = pc.is_valid(m)
            several = pc.fill_null(pc.or_(pc.match_substring(m, " "),
                                          pc.equal(m, NO_ELEMENT)), False)
            differs = pc.fill_null(pc.and_(pc.and_(has, pc.is_valid(cand)),
                                           pc.not_equal(m, cand)), False)
            bad = pc.or_(bad, pc.or_(several, differs))
            cand = pc.coalesce(cand, m)
        review = pc.and_(pc.invert(failed_before), pc.invert(clear))
        self.status["ineligible"] += _count(failed_before)
        self.status["eligible"] += _count(clear)
        self.status["needs_review"] += _count(review)
        ok_review = pc.and_(review, pc.invert(bad))
        blocked = pc.and_(ok_review, pc.is_valid(cand))
        self.pending_attestation_only += _count(pc.and_(ok_review, pc.is_null(cand)))
        for item in pc.value_counts(pc.filter(cand, blocked)).to_pylist():
            self.blocked[item["values"]] = self.blocked.get(item["values"], 0) + item["counts"]

    def result(self, trial: dict[str, Any]) -> dict[str, Any]:
        funnel = []
        for cid in self.order:
            c = self.by_id[cid]
            funnel.append({"criterion": cid, "kind": c["kind"], "manual": c["manual"],
                           **self.funnel[cid]})
        return {
            "id": trial["id"], "title": trial["title"], "version": trial["version"],
            "ruleset_hash": trial["ruleset_hash"],
            "patients": self.patients,
            "engine_errors": self.errors,
            "status": self.status,
            "criteria": [{"id": c["id"], "kind": c["kind"], "manual": c["manual"],
                          "text": c["text"], "counts": self.counts[c["id"]],
                          "excluded": c["id"] in self.without} for c in self.crits],
            "order": list(self.order),
            "without": sorted(self.without),
            "funnel": funnel,
            "blocked_only_by": [{"element": k, "patients": v} for k, v in
                                sorted(self.blocked.items(), key=lambda kv: (-kv[1], kv[0]))],
            "pending_attestation_only": self.pending_attestation_only,
        }


def _count(mask: Any) -> int:
    import pyarrow.compute as pc
    s = pc.sum(pc.fill_null(mask, False)).as_py()
    return int(s or 0)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _names_for(trial: Mapping[str, Any], names: Sequence[str]) -> list[str]:
    """The what-if names (CRITERION or TRIAL:CRITERION) that concern this trial."""
    ids = {c["id"] for c in trial["criteria"]}
    return [n for n in names if n in ids or n.partition(":")[0] == trial["id"]
            and n.partition(":")[2] in ids]


def resolve_what_if(trials: list[dict[str, Any]], without: Sequence[str],
                    order: Sequence[str]) -> dict[str, tuple[list[str], set[str]]]:
    """Per trial: (criteria in funnel order, criteria left out). A name is `CRITERION` (every
    trial that has it) or `TRIAL:CRITERION`."""
    known: dict[str, list[str]] = {t["id"]: [c["id"] for c in t["criteria"]] for t in trials}
    everything = {f"{tid}:{c}" for tid, cs in known.items() for c in cs} | \
        {c for cs in known.values() for c in cs}

    def targets(name: str) -> list[tuple[str, str]]:
        if ":" in name:
            tid, _, cid = name.partition(":")
            if tid in known and cid in known[tid]:
                return [(tid, cid)]
        else:
            hits = [(tid, name) for tid, cs in known.items() if name in cs]
            if hits:
                return hits
        hint = did_you_mean(name, everything)
        raise BatchError(f"unknown criterion {name!r}" + (f" (did you mean {hint!r}?)"
                                                          if hint else ""))

    for what, names in (("--without", without), ("--order", order)):
        seen_names: set[str] = set()
        for name in names:
            if name in seen_names:
                raise BatchError(f"{name!r} is given twice to {what}")
            seen_names.add(name)
    out: dict[str, tuple[list[str], set[str]]] = {}
    drop: dict[str, set[str]] = {tid: set() for tid in known}
    for name in without:
        for tid, cid in targets(name):
            drop[tid].add(cid)
    first: dict[str, list[str]] = {tid: [] for tid in known}
    for name in order:
        for tid, cid in targets(name):
            if cid in drop[tid]:
                raise BatchError(f"{tid}:{cid} is both left out (--without) and placed "
                                 "(--order): which is meant?")
            if cid in first[tid]:
                raise BatchError(f"{tid}:{cid} is named twice in --order")
            first[tid].append(cid)
    for tid, cs in known.items():
        seq = first[tid] + [c for c in cs if c not in first[tid]]
        out[tid] = ([c for c in seq if c not in drop[tid]], drop[tid])
        if not out[tid][0]:
            raise BatchError(f"--without leaves no criterion of {tid}: every patient would "
                             "count as eligible")
    return out


DUPLICATE_EXAMPLES = 20


class _IdCheck:
    """Screened records without a patient id, and ids on more than one record.

    Every record is screened and counted as it stands (nothing is dropped or merged: the two
    records of one id may differ, and only the coordinator can say which is right), so a
    registry export with repeated patients would overstate the funnel; the summary says so.
    Memory stays small at registry scale: while the summary reads the matrix, one 64-bit hash
    per id is kept (pyarrow sorts them); only when a hash repeats is the matrix read again, for
    the records of those few ids, and hash collisions are dropped by comparing the ids.
    """

    def __init__(self) -> None:
        self.without_id = 0
        self.hashes: list[Any] = []

    def add(self, t: pa.Table) -> None:
        import pyarrow as pa
        col = t.column("patient_id")
        self.without_id += col.null_count
        self.hashes.append(pa.array([hash(x) for x in col.to_pylist() if x is not None],
                                    pa.int64()))

    def result(self, out: Path, fmt: str) -> tuple[dict[str, Any], dict[str, list[str]]]:
        """(the summary's `patient_ids`, every duplicated id with its records)."""
        import pyarrow as pa
        import pyarrow.compute as pc
        dup: set[int] = set()
        arr = pa.concat_arrays(self.hashes) if self.hashes else pa.array([], pa.int64())
        if len(arr) > 1:
            srt = pc.take(arr, pc.sort_indices(arr))
            same = pc.equal(srt.slice(1), srt.slice(0, len(srt) - 1))
            dup = set(pc.unique(pc.filter(srt.slice(1), same)).to_pylist())
        where: dict[str, list[str]] = {}
        if dup:
            for t in read_matrix(out, fmt, columns=["patient_id", "source"]):
                for pid, src in zip(t.column("patient_id").to_pylist(),
                                    t.column("source").to_pylist(), strict=True):
                    if pid is not None and hash(pid) in dup:
                        where.setdefault(pid, []).append(src)
        repeated = {k: v for k, v in sorted(where.items()) if len(v) > 1}
        return {"without_id": self.without_id, "duplicated_ids": len(repeated),
                "records_with_duplicated_id": sum(len(v) for v in repeated.values()),
                "examples": [{"patient_id": k, "records": v[:10]}
                             for k, v in list(repeated.items())[:DUPLICATE_EXAMPLES]]}, repeated


def summarise(out: Path, manifest: dict[str, Any], without: Sequence[str] = (),
              order: Sequence[str] = (),
              error_counts: dict[str, int] | None = None) -> dict[str, Any]:
    """Counts, attrition funnel and blocked-by tallies recomputed from the stored matrix."""
    return _summarise(out, manifest, without, order, error_counts)[0]


def _summarise(out: Path, manifest: dict[str, Any], without: Sequence[str] = (),
               order: Sequence[str] = (), error_counts: dict[str, int] | None = None
               ) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """`summarise`, and every duplicated patient id with its records (for duplicates.csv)."""
    trials = manifest["trials"]
    plan = resolve_what_if(trials, without, order)
    tallies = {t["id"]: _TrialTally(t["id"], t["criteria"], *plan[t["id"]]) for t in trials}
    ids = _IdCheck()
    total_rows = 0
    for t in read_matrix(out, manifest["format"]):
        total_rows += t.num_rows
        ids.add(t)
        for tally in tallies.values():
            tally.add(t)
    if error_counts is None:
        error_counts = {"record": 0, "value": 0, "engine": 0}
        epath = out / "errors.jsonl"
        if epath.exists():
            with open(epath, "rb") as fh:
                for line in fh:
                    error_counts[_error_kind(line)] += 1
    id_summary, repeated = ids.result(out, manifest["format"])
    return {
        "screener": manifest.get("screener"),
        "as_of": manifest["as_of"],
        "complete": bool(manifest.get("complete")),
        "inputs": [i["name"] for i in manifest["inputs"]],
        "engine": manifest.get("engine", "rete"),
        "records": {"total": total_rows + error_counts["record"], "screened": total_rows,
                    "not_screened": error_counts["record"],
                    "value_issues": error_counts["value"]},
        "patient_ids": id_summary,
        "what_if": {"without": list(without), "order": list(order)},
        "trials": [tallies[t["id"]].result(t) for t in trials],
    }, repeated


# ---- rendering -------------------------------------------------------------------------------

def _csv_text(rows: Iterable[Sequence[Any]]) -> str:
    import csv
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    for r in rows:
        w.writerow(r)
    return buf.getvalue()


def _counts_csv(s: dict[str, Any]) -> str:
    rows: list[list[Any]] = [["trial", "criterion", "kind", "manual", *VERDICTS]]
    for t in s["trials"]:
        for c in t["criteria"]:
            rows.append([t["id"], c["id"], c["kind"], c["manual"],
                         *[c["counts"][v] for v in VERDICTS]])
    return _csv_text(rows)


_FUNNEL_KEYS = ("entering", "passed", "failed", "unknown", "remaining", "remaining_clear",
                "remaining_uncertain")


def _funnel_csv(s: dict[str, Any]) -> str:
    rows: list[list[Any]] = [["trial", "step", "criterion", "kind", *_FUNNEL_KEYS]]
    for t in s["trials"]:
        for i, f in enumerate(t["funnel"], 1):
            rows.append([t["id"], i, f["criterion"], f["kind"], *[f[k] for k in _FUNNEL_KEYS]])
    return _csv_text(rows)


def _blocked_csv(s: dict[str, Any]) -> str:
    # the patients of a row wait for that one element *and* for the investigator's
    # attestation of the trial's manual criteria (listed, so that the flat file says so too)
    rows: list[list[Any]] = [["trial", "missing_element", "patients",
                              "manual_criteria_also_pending"]]
    for t in s["trials"]:
        manual = " ".join(c["id"] for c in t["criteria"] if c["manual"] and not c["excluded"])
        for b in t["blocked_only_by"]:
            rows.append([t["id"], b["element"], b["patients"], manual])
    return _csv_text(rows)


def render_text(s: dict[str, Any]) -> str:
    r = s["records"]
    lines = [f"as_of {s['as_of']}  records {r['total']:,}  screened {r['screened']:,}  "
             f"not screened {r['not_screened']:,}  value issues {r['value_issues']:,}"
             + ("" if s["complete"] else "  [RUN INCOMPLETE]")]
    ids = s.get("patient_ids") or {}
    if ids.get("duplicated_ids"):
        lines.append(f"WARNING: {ids['duplicated_ids']:,} patient ids appear on more than one "
                     f"record ({ids['records_with_duplicated_id']:,} records); each record is "
                     "screened and counted separately (see duplicates.csv)")
    if ids.get("without_id"):
        lines.append(f"note: {ids['without_id']:,} screened records have no patient id")
    wi = s["what_if"]
    if wi["without"] or wi["order"]:
        lines.append(f"what-if: without {', '.join(wi['without']) or '-'}; order "
                     f"{', '.join(wi['order']) or 'protocol'}")
    for t in s["trials"]:
        st = t["status"]
        lines += ["", f"{t['id']} v{t['version']}  {t['title']}",
                  f"  {t['patients']:,} patients: eligible {st['eligible']:,}  needs_review "
                  f"{st['needs_review']:,}  ineligible {st['ineligible']:,}"
                  + (f"  engine errors {t['engine_errors']:,}" if t["engine_errors"] else ""),
                  "", "  attrition funnel ("
                  + ("what-if order: " + ", ".join(_names_for(t, wi["order"]))
                     + " first, then protocol order"
                     if _names_for(t, wi["order"]) else "protocol order")
                  + (f"; without {', '.join(_names_for(t, wi['without']))}"
                     if _names_for(t, wi["without"]) else "")
                  + "; unknown is not failed)"]
        w = max([len(f["criterion"]) for f in t["funnel"]] + [9])
        lines.append(f"  {'#':>3} {'criterion':<{w}} {'kind':<4} {'entering':>9} {'failed':>9} "
                     f"{'unknown':>9} {'remaining':>9} {'clear':>9} {'uncertain':>9}")
        for i, f in enumerate(t["funnel"], 1):
            lines.append(f"  {i:>3} {f['criterion']:<{w}} {f['kind'][:3]:<4} "
                         f"{f['entering']:>9,} {f['failed']:>9,} {f['unknown']:>9,} "
                         f"{f['remaining']:>9,} {f['remaining_clear']:>9,} "
                         f"{f['remaining_uncertain']:>9,}")
        lines += ["", "  per criterion"]
        w = max([len(c["id"]) for c in t["criteria"]] + [9])
        lines.append(f"  {'criterion':<{w}} {'kind':<4} " + " ".join(f"{v:>14}" for v in VERDICTS))
        for c in t["criteria"]:
            lines.append(f"  {c['id']:<{w}} {c['kind'][:3]:<4} "
                         + " ".join(f"{c['counts'][v]:>14,}" for v in VERDICTS)
                         + ("  (left out)" if c["excluded"] else "")
                         + ("  (manual)" if c["manual"] else ""))
        lines += ["", "  blocked only by one missing data element (would be eligible if it were "
                  "known and favourable; attestations still pending)"]
        if not t["blocked_only_by"]:
            lines.append("  (none)")
        for b in t["blocked_only_by"]:
            lines.append(f"  {b['patients']:>9,}  {b['element']}")
        lines.append(f"  data complete, only attestations pending: "
                     f"{t['pending_attestation_only']:,}")
    return "\n".join(lines) + "\n"


_CSS = """
.warn{background:#fff3cd;border-left:4px solid #e0a800;padding:.4em .8em}
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em;color:#222}
h1{font-size:1.4em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{padding:2px 8px;text-align:right;
border-bottom:1px solid #eee}th{background:#f4f4f4}td.l,th.l{text-align:left}
.note{color:#666;font-size:.9em}.legend span{display:inline-block;width:12px;height:12px;
margin:0 4px 0 12px;vertical-align:middle}
"""
_COLOURS = {"clear": "#2e7d32", "uncertain": "#f9a825", "failed": "#c62828", "gone": "#e0e0e0"}


def _funnel_svg(t: dict[str, Any]) -> str:
    n = max(t["patients"], 1)
    label_w, bar_w, row_h = 230, 520, 22
    rows = t["funnel"]
    h = row_h * (len(rows) + 1) + 10
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + bar_w + 140}" '
           f'height="{h}" role="img" aria-label="attrition funnel for {html.escape(t["id"])}">']

    def bar(y: int, name: str, clear: int, unc: int, failed_here: int) -> None:
        x = label_w
        out.append(f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end" '
                   f'font-size="12">{html.escape(name)}</text>')
        gone = n - clear - unc - failed_here
        for val, colour, title in ((clear, "clear", "still clear"),
                                   (unc, "uncertain", "still possible, data unknown"),
                                   (failed_here, "failed", "excluded at this step"),
                                   (gone, "gone", "excluded earlier")):
            w = bar_w * val / n
            if w > 0:
                out.append(f'<rect x="{x:.1f}" y="{y + 3}" width="{w:.1f}" height="{row_h - 6}"'
                           f' fill="{_COLOURS[colour]}"><title>{title}: {val:,}</title></rect>')
            x += w
        out.append(f'<text x="{label_w + bar_w + 6}" y="{y + 15}" font-size="12">'
                   f'{clear:,} + {unc:,}</text>')

    bar(0, "all screened", t["patients"], 0, 0)
    for i, f in enumerate(rows, 1):
        bar(i * row_h, f"{i}. {f['criterion']}", f["remaining_clear"],
            f["remaining_uncertain"], f["failed"])
    out.append("</svg>")
    return "".join(out)


def render_html(s: dict[str, Any]) -> str:
    """One self-contained page: inline CSS and SVG, no script, nothing fetched."""
    e = html.escape
    r = s["records"]
    parts = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
             "<title>Batch screening report</title>", f"<style>{_CSS}</style></head><body>",
             "<h1>Batch screening report</h1>",
             f"<p>as_of <b>{e(s['as_of'])}</b> &middot; inputs {e(', '.join(s['inputs']))} "
             f"&middot; engine {e(str(s['engine']))} &middot; screener {e(str(s['screener']))}"
             + ("" if s["complete"] else " &middot; <b>run incomplete</b>") + "</p>",
             f"<p>{r['total']:,} records: {r['screened']:,} screened, {r['not_screened']:,} not "
             f"screened (see errors.jsonl), {r['value_issues']:,} values not usable.</p>"]
    ids = s.get("patient_ids") or {}
    if ids.get("duplicated_ids"):
        parts.append(f"<p class='warn'><b>Warning:</b> {ids['duplicated_ids']:,} patient ids "
                     f"appear on more than one record ({ids['records_with_duplicated_id']:,} "
                     "records); each record is screened and counted separately, so the counts "
                     "below may include the same patient more than once (see duplicates.csv): "
                     + e(", ".join(x["patient_id"] for x in ids["examples"][:5]))
                     + ("..." if ids["duplicated_ids"] > 5 else "") + "</p>")
    if ids.get("without_id"):
        parts.append(f"<p>{ids['without_id']:,} screened records have no patient id.</p>")
    wi = s["what_if"]
    if wi["without"] or wi["order"]:
        parts.append(f"<p><b>What-if:</b> without {e(', '.join(wi['without']) or '-')}; order "
                     f"{e(', '.join(wi['order']) or 'protocol')}</p>")
    legend = ("<p class='legend'>" + "".join(
        f"<span style='background:{_COLOURS[k]}'></span>{lbl}" for k, lbl in
        (("clear", "still clear"), ("uncertain", "still possible (data unknown)"),
         ("failed", "excluded at this step"), ("gone", "excluded earlier"))) + "</p>")
    for t in s["trials"]:
        st = t["status"]
        parts += [f"<h2>{e(t['id'])} v{e(t['version'])}: {e(t['title'])}</h2>",
                  f"<p class='note'>ruleset {e(t['ruleset_hash'])}</p>",
                  f"<p>{t['patients']:,} patients: <b>{st['eligible']:,}</b> eligible, "
                  f"<b>{st['needs_review']:,}</b> need review, <b>{st['ineligible']:,}</b> "
                  "ineligible"
                  + (f", <b>{t['engine_errors']:,}</b> refused by the rule engine (status "
                     "error; see errors.jsonl)" if t["engine_errors"] else "") + ".</p>",
                  "<h3>Attrition funnel</h3>", legend, _funnel_svg(t),
                  "<table><tr><th>#</th><th class='l'>criterion</th><th class='l'>kind</th>"
                  + "".join(f"<th>{k.replace('_', ' ')}</th>" for k in _FUNNEL_KEYS) + "</tr>"]
        for i, f in enumerate(t["funnel"], 1):
            parts.append(f"<tr><td>{i}</td><td class='l'>{e(f['criterion'])}</td>"
                         f"<td class='l'>{e(f['kind'])}{' (manual)' if f['manual'] else ''}</td>"
                         + "".join(f"<td>{f[k]:,}</td>" for k in _FUNNEL_KEYS) + "</tr>")
        parts.append("</table><p class='note'>Each step counts the patients not excluded by an "
                     "earlier step. <i>unknown</i> patients are not failed: they stay in the "
                     "funnel as <i>remaining uncertain</i>.</p>")
        parts.append("<h3>Per criterion</h3><table><tr><th class='l'>criterion</th>"
                     "<th class='l'>kind</th>" + "".join(f"<th>{v}</th>" for v in VERDICTS)
                     + "<th class='l'>text</th></tr>")
        for c in t["criteria"]:
            parts.append(f"<tr><td class='l'>{e(c['id'])}</td><td class='l'>{e(c['kind'])}"
                         f"{' (manual)' if c['manual'] else ''}"
                         f"{' (left out)' if c['excluded'] else ''}</td>"
                         + "".join(f"<td>{c['counts'][v]:,}</td>" for v in VERDICTS)
                         + f"<td class='l' title='{e(c['text'])}'>"
                         + f"{e(_cut(c['text'], 160))}</td></tr>")
        parts.append("</table><h3>Blocked only by one missing data element</h3>"
                     "<p class='note'>Patients who need review, whose unknown criteria all wait "
                     "for the same single data element: collecting it (if favourable) makes "
                     "them eligible, attestations aside.</p>")
        if t["blocked_only_by"]:
            parts.append("<table><tr><th class='l'>missing element</th><th>patients</th></tr>")
            parts += [f"<tr><td class='l'>{e(b['element'])}</td><td>{b['patients']:,}</td></tr>"
                      for b in t["blocked_only_by"]]
            parts.append("</table>")
        else:
            parts.append("<p>(none)</p>")
        parts.append(f"<p>Data complete, only investigator attestations pending: "
                     f"<b>{t['pending_attestation_only']:,}</b></p>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


# ---- CLI -------------------------------------------------------------------------------------

def _add_batch(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rules", action="append", default=None,
                   help=f"rule files or directories (default: {', '.join(DEFAULT_RULES)})")
    p.add_argument("--trial", action="append", required=True, metavar="ID",
                   help="trial id (repeat for several trials)")
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="NDJSON files (.ndjson/.jsonl, optionally .gz) of canonical patients or "
                        "FHIR Bundles; with --mapping, folders (or table files) of a registry")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--as-of", type=iso_date, required=True,
                   help="screening date (required: a batch must be replayable)")
    p.add_argument("--mapping", metavar="MAPPING.yaml",
                   help="column mapping for CSV / Parquet registry tables")
    p.add_argument("--format", choices=["parquet", "csv"], default="parquet",
                   help="verdict matrix format (default parquet)")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes (default: all cores; 0 = in this process)")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="run on a Dask distributed cluster, e.g. tcp://127.0.0.1:8786")
    p.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK,
                   help=f"patients per chunk and part file (default {DEFAULT_CHUNK})")
    p.add_argument("--force", action="store_true",
                   help="discard a different earlier run found in DIR")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--engine", choices=["rete", "reference"], default="rete",
                   help=argparse.SUPPRESS)


def cmd_batch(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    opts = BatchOptions(trials=args.trial, inputs=args.inputs, out=args.out, as_of=args.as_of,
                        mapping=args.mapping, fmt=args.format, workers=args.workers,
                        scheduler=args.scheduler, chunk_size=args.chunk_size, rules=args.rules,
                        engine=args.engine, force=args.force,
                        progress=False if args.no_progress else None)
    try:
        run_batch(opts, err)  # ScreenerErrors (unknown trial, bad mapping, ...) -> cli.run
    except KeyboardInterrupt:
        err.write(f"\ninterrupted: finished chunks are kept in {args.out}; run the same "
                  "command again to continue\n")
        return 130
    return 0


def _add_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", metavar="DIR", help="output directory of a batch run")
    p.add_argument("--without", action="append", default=[], metavar="CRITERION",
                   help="leave a criterion out (CRITERION or TRIAL:CRITERION; repeatable)")
    p.add_argument("--order", default="", metavar="ID,ID,...",
                   help="funnel order: these criteria first, the rest in protocol order")
    p.add_argument("--format", choices=["text", "json", "html"], default="text")


def cmd_report(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    d = Path(args.dir)
    mpath = d / "manifest.json"
    if not mpath.exists():
        err.write(f"error: {d} holds no batch run (no manifest.json)\n")
        return 2
    manifest = json.loads(mpath.read_text(encoding="utf-8"))
    order = [x.strip() for x in args.order.split(",") if x.strip()]
    try:
        summary = summarise(d, manifest, args.without, order)
    except BatchError as e:
        err.write(f"error: {e}\n")
        return 2
    if not summary["complete"]:
        err.write("note: the run in this directory is not complete; figures cover the chunks "
                  "done so far\n")
    if args.format == "json":
        out.write(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    elif args.format == "html":
        out.write(render_html(summary))
    else:
        out.write(render_text(summary))
    return 0


def _add_synth(p: argparse.ArgumentParser) -> None:
    p.add_argument("n", type=int, metavar="N", help="number of patients")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--as-of", type=iso_date, required=True)
    p.add_argument("--out", required=True, metavar="FILE.ndjson")


def cmd_synth(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    from . import synth
    if args.n < 0:
        err.write("error: N must be >= 0\n")
        return 2
    n = synth.write_ndjson(args.out, args.n, args.seed, args.as_of.isoformat())
    err.write(f"wrote {n:,} synthetic patients to {args.out}\n")
    return 0


register("batch", "screen a registry (NDJSON, FHIR bundles, CSV / Parquet) against trials",
         _add_batch, cmd_batch)
register("report", "recompute counts and the attrition funnel of a batch run (what-if)",
         _add_report, cmd_report)
register("synth", "write N deterministic synthetic patients as NDJSON", _add_synth, cmd_synth)
