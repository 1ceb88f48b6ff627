"""Registry-table adapter: CSV / TSV / Parquet tables -> canonical patient JSON.

Pipeline position::

    registry table(s) --[this module]--> canonical patient JSON --> normalize --> engine

A YAML *mapping file* says which column holds what. The adapter only reshapes and parses:
it turns cells into numbers, dates, coded values and catalogue element names, and reports every
cell it cannot use as an issue. Plausibility, unit conversion, staleness and ``x ULN`` arithmetic
belong to the normalizer; units are passed on exactly as the registry spells them (``UNITS/L``
stays ``UNITS/L``).

Mapping file
------------
Paths of tables are relative to ``base_dir`` (given to :func:`iter_patients`, e.g. from the
command line) or, without one, to the directory of the mapping file. A *field* is either a column
name (a plain string) or ``{column: NAME}`` or ``{constant: VALUE}``::

    version: 1
    patients:                       # required: one row per patient (streamed)
      file: registry.csv            # .csv -> comma, .tsv/.txt/.tab -> tab, .parquet/.pq
      # format: csv | tsv | parquet   delimiter: ";"   encoding: utf-8-sig   date_format: "%d/%m/%Y"
      # multiline_fields: false     (true: quoted fields may span lines; see "Text tables")
      id: patient_id
      birth_date: dob               # ISO date, or partial YYYY / YYYY-MM
      age: age_years                # used only when birth_date is blank or unusable
      sex: {column: sex, values: {M: male, F: female}}   # or just: sex: sex
      elements:                     # wide columns -> observations
        alt: {value: alt, unit: {constant: U/L}, high: alt_uln, low: alt_lln, date: lab_date}
        ecog: {value: ecog, date: {constant: "2026-11-01"}}
      conditions:                   # flag columns -> conditions
        dvt: {column: hx_dvt, onset: dvt_date, date: history_date}
      exposures:
        blinatumomab: {days: blina_days, start: blina_start, end: blina_end}
    labs:                           # optional, one table or a list of tables (long format)
      file: labs.txt
      patient_id: PID
      code: LOINC
      system: loinc                 # loinc | element (the column holds catalogue names)
      value: VALUE
      unit: UNITS
      low: LOW
      high: HIGH                    # -> reference_range.high, the ULN of x ULN comparisons
      date: DATE
      status: STATUS                # optional result status (see "Result status")
      unmapped: summary             # report (one issue per row, default) | summary | ignore
    problems:                       # optional, one table or a list of tables
      file: problems.txt
      patient_id: PID
      code: SNOMED
      system: snomed                # snomed | icd10 | icd10cm | element
      start: START_DATE
      end: END_DATE
    reviewed:
      conditions: "2026-11-01"      # a constant date, or {column: NAME} of the patients table
    coded_values: {Reactive: positive}   # extra spellings of coded / boolean values
    na_values: ["-", "."]           # more cells read as blank, added to the default list
                                    # ("", NA, N/A, n/a, NULL, null, NaN, nan, None)

Checked when the mapping is read (MappingError): reference limits (``low`` / ``high``) must be
columns, never ``{constant: ...}`` (a constant has no unit of its own, would be paired with each
row's unit and, in a long table, apply to every analyte; put a site ULN in the rule file); a
``date_format`` with a two-digit year (``%y``: 65 would be 2065) is refused, use ``%Y``; one
column may not be the ``value`` of two elements of the patients table (a copy-paste slip; in a
long table the one value column serves every analyte). A mapped column missing from a table
gets a hint: the same name but for case or surrounding spaces first, then a close spelling; a
header read as one column holding ``;``, a tab, ``,`` or ``|`` points to ``delimiter``.

**``reviewed`` is a clinical assertion, not a formatting option.** Setting
``reviewed.conditions`` states that, on that date, the registry's problem list was complete for
every patient in it: the screener will then treat a condition *absent from the table* as absent
(an exclusion criterion becomes ``false`` instead of ``unknown``). Set it only when the registry
really is curated that way. The same holds for ``reviewed.exposures`` and the therapy history.
Even then, a problem code the catalogue does not list (other than ICD-10, which is matched by
prefix) keeps absence ``unknown`` for that patient: it may be a more specific SNOMED CT concept
of a listed condition, and the hierarchy is not modelled.

Condition flags: a value in ``present`` (default ``1 y yes true t x present positive``, case
insensitive) gives a condition with the ``onset`` / ``abatement`` columns; a value in ``absent``
(default ``0 n no false f absent negative``) gives ``present: false`` dated by ``date``, and is
skipped when the mapping has no ``date`` (an undated "no" proves nothing); blank is unknown;
any other value gives an unconfirmed condition (unknown, even under a complete review).

Text tables
-----------
CSV / TSV tables are read **line by line**: a field may not span lines (registry exports write
one record per line), so one stray quote cannot swallow the lines after it. A line whose quotes
do not balance (a ``"`` opened and not closed on it) is split with quoting off for that line
only (``csv.QUOTE_NONE``: the quote stays text) and gets an ``unbalanced_quote`` issue; its
cells are used if it then has the header's width, otherwise it is a row with shifted columns
(below). The lines up to where the quote would close (rows of their own, or text of that field:
not guessed) each get an ``inside_open_quote`` issue and are handled like rows with shifted
columns: unusable results of whoever they name. For an export that really has quoted fields over
several lines, set ``multiline_fields: true`` on that table (the csv module's own behaviour; row
numbers then count records). Fields up to 16 MiB are read (the csv module's limit is raised once
for the process, never lowered); a row the csv module still cannot parse gets an
``unreadable_row`` issue and is handled like a row with shifted columns, its first line split at
the delimiter to tell whose row it is; the rows after it are read in step (with
``multiline_fields``, after the line where its quotes balance, so text inside a long comment
cannot make rows). A trailing delimiter on every line shows in the header too (empty last
names): as many empty fields are dropped from every row; any other row with more fields than the
header is a row with shifted columns. A lab or problem row with fewer fields than a mapped
column needs (a line break inside a field) is one too: its cells cannot be placed, and when its
patient can be read but not its code, every element the table may hold is unusable for that
patient.

Patient ids are compared as text after trimming; ``123.0`` (a spreadsheet round trip: digits,
``.``, zeros only) reads as ``123``. An id holding U+FFFD (bytes the table's ``encoding`` cannot
decode) is refused (``bad_id``, the row is not used) because two different names could read the
same: set ``encoding``. Long-table rows whose id has no patient row but matches a patient's id
apart from case, surrounding spaces or leading zeros (``7`` / ``007``, ``ab1`` / ``AB1``) are
never merged into that patient: they stay orphan rows, and the patient gets a ``near_id`` issue
naming the id and, for each of those rows, an unusable result of its element (dated when its
date is known) or an unconfirmed condition, so that neither an older result nor a complete
condition review decides.

Result status: a ``status`` cell is tokenised like problem verification statuses (case,
spaces, hyphens, underscores: ``Entered in error`` -> ``entered-in-error``, ``Canceled`` ->
``cancelled``); a single HL7 v2 OBX-11 letter is translated as in HL7's v2-to-FHIR map
(``F`` final, ``C`` corrected, ``X`` cancelled, ``D`` / ``W`` entered-in-error, ``P`` / ``R``
preliminary, ``I`` registered). The normalizer counts only ``final``, ``amended``,
``corrected`` and ``appended``; ``entered-in-error`` and ``cancelled`` results are dropped as
never recorded; any other status makes the result unusable (not final).

Output and issues
-----------------
:func:`iter_patients` yields ``(locator, patient, issues)``: the locator is ``"file:row N"`` of
the patient row; ``patient`` is the canonical dict, or ``None`` when no patient can be built
(blank id, rows of a long table whose patient id is not in the patients table, long-table
rows without a patient id); ``issues`` are ``{"loc", "code", "msg"}`` dicts whose
``loc`` is ``"file:row N:COLUMN"``. Row numbers count data rows from 1 (the header is not
counted): in a text table row N is line N+1 of the file (blank lines are skipped but counted),
with ``multiline_fields`` the Nth record; in Parquet the Nth row.
Every observation and condition carries ``source: "file:row N"`` as evidence. A patient id on
more than one row of the patients table is not skipped: each row is its own record (with a
``duplicate_id`` issue on the later ones), each with all of the patient's long-table rows, as a
repeated id in NDJSON is screened once per record (the batch lists them in duplicates.csv).

Bad cells never stop the run, and an unreadable result never lets an older one decide. **Policy:
a result whose value or date cannot be read is passed on as an unusable result, with an issue**
(the issue quotes the raw text and names the file, row and column, which the normalizer cannot).
An unparseable number or coded value gives the observation the value ``"unreadable: ..."``,
which the normalizer cannot use; an unparseable or blank date leaves the date out. The
normalizer's rule then applies, as for NDJSON and FHIR input: an unusable result hides the older
usable results of its element, an undated one hides all of them, so criteria that need the
element become ``unknown``, never ``met`` / ``not_met`` on older data. A long-table row with
more fields than the header (columns shifted by an unquoted delimiter), or that the csv module
cannot parse, is passed on, undated and unusable, to the patient and element its id and code
columns may be read as (see `_rows`); a lab row whose value is blank is no result and is
skipped. A viral load (``hbv_dna``, ``hcv_rna``) given as a number is passed on as that number,
which the normalizer reads as detected when above 0, as in canonical JSON. An unreadable
condition flag gives an unconfirmed condition, an exposure with only unreadable cells one
without a duration (both unknown). An unusable reference range drops only the range, an unknown
sex leaves sex out. Reference ranges are read for quantity elements only (coded lab rows put
text such as ``Negative; Positive`` in their limit columns). Undecodable bytes become U+FFFD
rather than stopping the run, in the header as in the rows (set ``encoding`` for non-UTF-8
exports).

Memory
------
The patients table streams: CSV / TSV with the ``csv`` module one row at a time, Parquet with
``ParquetFile.iter_batches``. Long tables (labs, problems) are grouped by patient only loosely
in registry exports, so each is read once, its rows are parsed and filed by patient id in a
temporary SQLite database on disk (`_LongStore`, removed when the iteration ends; a store
left by a killed run is removed by the next run), and each
patient's rows are read back, in their original order, when its patient row streams by. The
patient ids already met (for duplicates and orphans) are kept there too, and so are all ids of
the patients table, read in a first pass over its id column when there are long tables (to
find near-matching ids before the patients stream). **Memory stays flat
whatever the size of the tables** (bench/tabular_memory.py); disk use is about the size of the
parsed rows, and reading is about 15% slower than the in-memory grouping it replaced (which
took 650 MiB at 80,000 patients x 12 lab rows and grew with the table).
"""

from __future__ import annotations

import csv
import math
import os
import pickle
import re
import shutil
import sqlite3
import tempfile
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import yaml

from ..elements import (
    DEMOGRAPHIC,
    ELEMENTS,
    ICD10,
    ICD10CM,
    PROJECT,
    SNOMED,
    Element,
    by_loinc,
    condition_broader,
    condition_for,
)
from ..errors import ScreenerError, cut, did_you_mean, short_repr

Issue = dict[str, str]
Patient = dict[str, Any]
Record = tuple[str, "Patient | None", list[Issue]]


class MappingError(ScreenerError):
    """The mapping file (or a table it names) cannot be used; carries every problem found."""

    def __init__(self, where: str, errors: list[str]):
        self.where = where
        self.errors = errors
        super().__init__("\n".join(f"{where}: {e}" for e in errors))


# --------------------------------------------------------------------------------------------
# Mapping model
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Field:
    """Where a value comes from: a column of the row, or a constant from the mapping."""

    column: str | None = None
    constant: Any = None


@dataclass(frozen=True)
class Table:
    role: str  # "patients", "labs" or "problems"
    file: str
    format: str  # "csv" or "parquet"
    delimiter: str
    encoding: str
    date_format: str | None
    fields: dict[str, Field]
    system: str | None = None
    unmapped: str = "report"
    multiline: bool = False  # text: quoted fields may span lines (csv module behaviour)

    def columns(self) -> dict[str, str]:
        """Column name -> the mapping key that uses it (first use wins, for messages)."""
        out: dict[str, str] = {}
        for key, f in self.fields.items():
            if f.column is not None:
                out.setdefault(f.column, key)
        return out


@dataclass(frozen=True)
class ElementMap:
    element: str
    fields: dict[str, Field]


@dataclass(frozen=True)
class ConditionFlag:
    element: str
    fields: dict[str, Field]
    present: frozenset[str]
    absent: frozenset[str]


@dataclass(frozen=True)
class Mapping:
    path: Path
    patients: Table
    elements: tuple[ElementMap, ...] = ()
    conditions: tuple[ConditionFlag, ...] = ()
    exposures: tuple[ElementMap, ...] = ()
    labs: tuple[Table, ...] = ()
    problems: tuple[Table, ...] = ()
    reviewed: dict[str, Field] = field(default_factory=dict)
    sex_values: dict[str, str] = field(default_factory=dict)
    coded_values: dict[str, str] = field(default_factory=dict)
    na_values: frozenset[str] = frozenset()


_TOP_KEYS = ("version", "patients", "labs", "problems", "reviewed", "coded_values", "na_values")
_TABLE_KEYS = ("file", "format", "delimiter", "encoding", "date_format", "multiline_fields")
_PATIENT_KEYS = _TABLE_KEYS + ("id", "birth_date", "sex", "age", "elements", "conditions",
                               "exposures")
_LAB_KEYS = _TABLE_KEYS + ("patient_id", "code", "system", "value", "unit", "low", "high",
                           "date", "status", "label", "unmapped")
_PROBLEM_KEYS = _TABLE_KEYS + ("patient_id", "code", "system", "start", "end",
                               "clinical_status", "verification_status", "label", "unmapped")
_ELEMENT_KEYS = ("value", "unit", "low", "high", "date", "status")
_CONDITION_KEYS = ("column", "present", "absent", "onset", "abatement", "date")
_EXPOSURE_KEYS = ("days", "start", "end")
_LAB_SYSTEMS = ("loinc", "element")
_PROBLEM_SYSTEMS = {"snomed": SNOMED, "icd10": ICD10, "icd10cm": ICD10CM, "element": PROJECT}
_SEX = {"m": "male", "male": "male", "f": "female", "female": "female", "o": "other",
        "other": "other", "u": "unknown", "unknown": "unknown"}
_NA_DEFAULT = ("", "NA", "N/A", "n/a", "NULL", "null", "NaN", "nan", "None")
_PRESENT_DEFAULT = frozenset({"1", "y", "yes", "true", "t", "x", "present", "positive"})
_ABSENT_DEFAULT = frozenset({"0", "n", "no", "false", "f", "absent", "negative"})
#: start of the value of a result whose cells cannot be read (see `_unreadable`)
_UNREADABLE = "unreadable"


class _Loader(yaml.SafeLoader):
    """Safe YAML with two changes that matter for registry mappings.

    Only ``true``/``false`` are booleans, so a sex code ``N`` or a flag value ``no`` stays the
    string the registry writes; dates stay strings, because the canonical format wants ISO text.
    Duplicate keys are an error instead of silently keeping the last one.
    """


_BOOL = "tag:yaml.org,2002:bool"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_BOOL, _TIMESTAMP)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|false)$"), list("tf"))


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    out: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in out:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        out[key] = loader.construct_object(value_node, deep=True)
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


class _Checker:
    """Collects every mapping error before raising, so one run shows all of them."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def err(self, where: str, msg: str) -> None:
        self.errors.append(f"{where}: {msg}")

    def keys(self, where: str, obj: dict[Any, Any], allowed: tuple[str, ...]) -> None:
        for k in obj:
            if k not in allowed:
                hint = did_you_mean(str(k), allowed)
                mean = f" (did you mean {hint!r}?)" if hint else ""
                self.err(where, f"unknown key {k!r}{mean}; allowed: {', '.join(allowed)}")

    def obj(self, where: str, value: Any) -> dict[Any, Any]:
        if isinstance(value, dict):
            return value
        self.err(where, f"expected a mapping, got {type(value).__name__}")
        return {}

    def text(self, where: str, value: Any) -> str | None:
        if isinstance(value, str) and value:
            return value
        hint = " (quote names that look like numbers)" if isinstance(value, (int, float)) else ""
        self.err(where, f"expected a non-empty string, got {value!r}{hint}")
        return None

    def field(self, where: str, value: Any) -> Field | None:
        if isinstance(value, str) and value:
            return Field(column=value)
        if isinstance(value, dict):
            if set(value) == {"column"}:
                col = self.text(f"{where}.column", value["column"])
                return Field(column=col) if col else None
            if set(value) == {"constant"}:
                return Field(constant=value["constant"])
        self.err(where, f"expected a column name, {{column: NAME}} or {{constant: VALUE}}, "
                        f"got {value!r}")
        return None

    def element(self, where: str, name: Any, kinds: tuple[str, ...],
                section: str) -> Element | None:
        e = ELEMENTS.get(name) if isinstance(name, str) else None
        if e is None:
            candidates = [n for n, el in ELEMENTS.items() if el.kind in kinds]
            hint = did_you_mean(str(name), candidates) or did_you_mean(str(name), ELEMENTS)
            self.err(where, f"unknown element {name!r}"
                     + (f" (did you mean {hint!r}?)" if hint else ""))
            return None
        if name in DEMOGRAPHIC:
            self.err(where, f"{name!r} is a demographic field; map it as patients.{name}")
            return None
        if e.kind not in kinds:
            self.err(where, f"element {name!r} is a {e.kind}; it does not belong under {section}")
            return None
        return e

    def dates(self, where: str, fields: dict[str, Field]) -> None:
        """Constant dates are checked once here instead of failing on every row."""
        for k in ("date", "onset", "abatement", "start", "end"):
            f = fields.get(k)
            if f is not None and f.column is None:
                try:
                    _parse_date(f.constant, None, partial=k in ("onset", "abatement"))
                except ValueError:
                    self.err(f"{where}.{k}", f"constant {f.constant!r} is not an ISO date")


def _table(c: _Checker, where: str, raw: Any, role: str, allowed: tuple[str, ...],
           required: tuple[str, ...], field_keys: tuple[str, ...]) -> Table | None:
    obj = c.obj(where, raw)
    if not obj:
        return None
    c.keys(where, obj, allowed)
    for k in required:
        if k not in obj:
            c.err(where, f"missing required key {k!r}")
    file = c.text(f"{where}.file", obj.get("file")) if "file" in obj else None
    fmt = obj.get("format")
    if fmt is None and file:
        suffix = Path(file).suffix.lower()
        fmt = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}.get(suffix, "tsv")
    if fmt not in ("csv", "tsv", "parquet"):
        c.err(f"{where}.format", f"expected csv, tsv or parquet, got {fmt!r}")
        fmt = "csv"
    delimiter = obj.get("delimiter", "\t" if fmt == "tsv" else ",")
    if not (isinstance(delimiter, str) and len(delimiter) == 1):
        c.err(f"{where}.delimiter", f"expected one character, got {delimiter!r}")
        delimiter = ","
    encoding = obj.get("encoding", "utf-8-sig")  # -sig: Excel exports start with a BOM
    if not isinstance(encoding, str):
        c.err(f"{where}.encoding", f"expected a string, got {encoding!r}")
        encoding = "utf-8-sig"
    date_format = obj.get("date_format")
    if date_format is not None and not isinstance(date_format, str):
        c.err(f"{where}.date_format", f"expected a strptime format string, got {date_format!r}")
        date_format = None
    if date_format is not None and "%y" in re.findall(r"%.", date_format):
        # strptime reads 65 as 2065 (a birth date in 1965 would be in the future)
        c.err(f"{where}.date_format", f"{date_format!r} has a two-digit year (%y), which "
                                      f"cannot tell 1965 from 2065; use %Y with four-digit "
                                      f"years (export the dates with the century)")
        date_format = None
    multiline = obj.get("multiline_fields", False)
    if not isinstance(multiline, bool):
        c.err(f"{where}.multiline_fields", f"expected true or false, got {multiline!r}")
        multiline = False
    if multiline and fmt == "parquet":
        c.err(f"{where}.multiline_fields", "applies to CSV / TSV tables only")
    fields: dict[str, Field] = {}
    for k in field_keys:
        if k in obj:
            f = c.field(f"{where}.{k}", obj[k])
            if f:
                fields[k] = f
    _no_constant_limits(c, where, fields)
    system = obj.get("system")
    unmapped = obj.get("unmapped", "report")
    if unmapped not in ("report", "summary", "ignore"):
        c.err(f"{where}.unmapped", f"expected report, summary or ignore, got {unmapped!r}")
        unmapped = "report"
    return Table(role=role, file=file or "?", format="parquet" if fmt == "parquet" else "csv",
                 delimiter=delimiter, encoding=encoding, date_format=date_format, fields=fields,
                 system=system, unmapped=unmapped, multiline=bool(multiline))


def _no_constant_limits(c: _Checker, where: str, fields: dict[str, Field]) -> None:
    """A reference limit must come from a column: a constant has no unit of its own, would be
    paired with whatever unit each row has and, in a long table, apply to every analyte."""
    for k in ("low", "high"):
        f = fields.get(k)
        if f is not None and f.column is None:
            c.err(f"{where}.{k}", f"a constant reference limit ({{constant: {f.constant!r}}}) "
                                  f"is not accepted: it has no unit of its own, would be paired "
                                  f"with each row's unit and, in a long table, apply to every "
                                  f"analyte of the table; map a column holding the limit, or "
                                  f"give the site ULN in the rule file")


def _tables(raw: Any) -> list[Any]:
    return raw if isinstance(raw, list) else [raw]


def _values_map(c: _Checker, where: str, raw: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in c.obj(where, raw).items():
        if not isinstance(v, str) and not isinstance(v, bool):
            c.err(f"{where}.{k}", f"expected a string, got {v!r}")
            continue
        # Keys are matched case-insensitively against stripped cell text.
        out[str(k).strip().lower()] = v if isinstance(v, str) else str(v).lower()
    return out


def load_mapping(path: str | Path) -> Mapping:
    """Read and check a mapping file; raise :class:`MappingError` listing every problem.

    Column names are checked against the real table headers by :func:`check_tables` (called
    by :func:`iter_patients`), because only then is the data directory known.
    """
    p = Path(path)
    try:
        raw = yaml.load(p.read_text(encoding="utf-8"), Loader=_Loader)
    except OSError as e:
        raise MappingError(str(p), [f"cannot read mapping file: {e.strerror or e}"]) from e
    except yaml.YAMLError as e:
        raise MappingError(str(p), [f"not valid YAML: {e}"]) from e
    c = _Checker()
    top = c.obj("<root>", raw)
    c.keys("<root>", top, _TOP_KEYS)
    if top.get("version", 1) != 1:
        c.err("version", f"only version 1 is supported, got {top.get('version')!r}")
    if "patients" not in top:
        c.err("<root>", "missing required key 'patients' (the table with one row per patient)")

    patients: Table | None = None
    elements: list[ElementMap] = []
    conditions: list[ConditionFlag] = []
    exposures: list[ElementMap] = []
    sex_values: dict[str, str] = {}
    if "patients" in top:
        praw = c.obj("patients", top["patients"])
        sex_raw = praw.get("sex")
        if isinstance(sex_raw, dict) and "values" in sex_raw:
            sex_values = _values_map(c, "patients.sex.values", sex_raw["values"])
            bad = sorted(v for v in sex_values.values() if v not in _SEX.values())
            if bad:
                c.err("patients.sex.values", f"sex must map to female, male, other or unknown, "
                      f"got {', '.join(map(repr, bad))}")
            praw = dict(praw, sex={k: v for k, v in sex_raw.items() if k != "values"})
            if set(praw["sex"]) == set():
                c.err("patients.sex", "missing 'column'")
        patients = _table(c, "patients", praw, "patients", _PATIENT_KEYS, ("file", "id"),
                          ("id", "birth_date", "sex", "age"))
        for name, spec in c.obj("patients.elements", praw.get("elements", {})).items():
            w = f"patients.elements.{name}"
            el = c.element(w, name, ("quantity", "coded", "boolean"), "elements")
            s = c.obj(w, spec)
            c.keys(w, s, _ELEMENT_KEYS)
            if "value" not in s:
                c.err(w, "missing required key 'value'")
            fl = {k: f for k in _ELEMENT_KEYS if k in s and (f := c.field(f"{w}.{k}", s[k]))}
            if el and "date" not in s:
                c.err(w, "missing required key 'date' (a column or {constant: DATE}); every "
                         "observation needs the date it was measured")
            c.dates(w, fl)
            _no_constant_limits(c, w, fl)
            vf = fl.get("value")
            if el and vf is not None and vf.column is not None:
                other = next((e.element for e in elements
                              if (f := e.fields.get("value")) and f.column == vf.column), None)
                if other is not None:
                    c.err(f"{w}.value", f"column {vf.column!r} is already the value of "
                                        f"{other!r}; one column cannot hold the results of two "
                                        f"elements (a copy-paste slip?)")
            if el:
                elements.append(ElementMap(el.name, fl))
        for name, spec in c.obj("patients.conditions", praw.get("conditions", {})).items():
            w = f"patients.conditions.{name}"
            el = c.element(w, name, ("condition",), "conditions")
            s = c.obj(w, spec)
            c.keys(w, s, _CONDITION_KEYS)
            if "column" not in s:
                c.err(w, "missing required key 'column' (the flag column)")
            fl = {k: f for k in ("column", "onset", "abatement", "date")
                  if k in s and (f := c.field(f"{w}.{k}", s[k]))}
            sets: dict[str, frozenset[str]] = {}
            for k, default in (("present", _PRESENT_DEFAULT), ("absent", _ABSENT_DEFAULT)):
                v = s.get(k)
                if v is None:
                    sets[k] = default
                elif isinstance(v, list) and all(isinstance(x, (str, int)) for x in v):
                    sets[k] = frozenset(str(x).strip().lower() for x in v)
                else:
                    c.err(f"{w}.{k}", f"expected a list of cell values, got {v!r}")
                    sets[k] = default
            if sets["present"] & sets["absent"]:
                c.err(w, f"values in both present and absent: "
                         f"{', '.join(sorted(sets['present'] & sets['absent']))}")
            c.dates(w, fl)
            if el:
                conditions.append(ConditionFlag(el.name, fl, sets["present"], sets["absent"]))
        for name, spec in c.obj("patients.exposures", praw.get("exposures", {})).items():
            w = f"patients.exposures.{name}"
            el = c.element(w, name, ("exposure",), "exposures")
            s = c.obj(w, spec)
            c.keys(w, s, _EXPOSURE_KEYS)
            if not s.keys() & {"days", "start"}:
                c.err(w, "needs 'days' or 'start' (and 'end')")
            fl = {k: f for k in _EXPOSURE_KEYS if k in s and (f := c.field(f"{w}.{k}", s[k]))}
            c.dates(w, fl)
            if el:
                exposures.append(ElementMap(el.name, fl))

    labs: list[Table] = []
    for i, raw_t in enumerate(_tables(top.get("labs", []))):
        w = f"labs[{i}]" if isinstance(top.get("labs"), list) else "labs"
        t = _table(c, w, raw_t, "labs", _LAB_KEYS,
                   ("file", "patient_id", "code", "system", "value", "date"),
                   ("patient_id", "code", "value", "unit", "low", "high", "date", "status",
                    "label"))
        if t and t.system not in _LAB_SYSTEMS and "system" in c.obj(w, raw_t):
            c.err(f"{w}.system", f"expected one of {', '.join(_LAB_SYSTEMS)}, got {t.system!r}")
        if t:
            labs.append(t)
    problems: list[Table] = []
    for i, raw_t in enumerate(_tables(top.get("problems", []))):
        w = f"problems[{i}]" if isinstance(top.get("problems"), list) else "problems"
        t = _table(c, w, raw_t, "problems", _PROBLEM_KEYS,
                   ("file", "patient_id", "code", "system", "start"),
                   ("patient_id", "code", "start", "end", "clinical_status",
                    "verification_status", "label"))
        if t and t.system not in _PROBLEM_SYSTEMS and "system" in c.obj(w, raw_t):
            c.err(f"{w}.system", f"expected one of {', '.join(_PROBLEM_SYSTEMS)}, "
                                 f"got {t.system!r}")
        if t:
            problems.append(t)

    reviewed: dict[str, Field] = {}
    for k, v in c.obj("reviewed", top.get("reviewed", {})).items():
        if k not in ("conditions", "exposures"):
            hint = did_you_mean(str(k), ("conditions", "exposures"))
            c.err("reviewed", f"unknown key {k!r}" + (f" (did you mean {hint!r}?)" if hint else ""))
            continue
        # Here a bare string is a date (the common case: one review date for the registry).
        if isinstance(v, str):
            try:
                _parse_date(v, None, partial=False)
            except ValueError:
                c.err(f"reviewed.{k}", f"expected an ISO date or {{column: NAME}}, got {v!r}")
                continue
            reviewed[k] = Field(constant=v)
        elif (f := c.field(f"reviewed.{k}", v)) is not None:
            reviewed[k] = f

    coded_values = _values_map(c, "coded_values", top.get("coded_values", {}))
    # the mapping's list adds to the default one: a blank cell stays blank whatever it says
    na_raw = top.get("na_values", [])
    if not (isinstance(na_raw, list) and all(isinstance(x, str) for x in na_raw)):
        c.err("na_values", f"expected a list of strings, got {na_raw!r}")
        na_raw = []
    na_raw = list(_NA_DEFAULT) + na_raw

    if c.errors or patients is None:
        raise MappingError(str(p), c.errors or ["no patients table"])
    return Mapping(path=p, patients=patients, elements=tuple(elements),
                   conditions=tuple(conditions), exposures=tuple(exposures), labs=tuple(labs),
                   problems=tuple(problems), reviewed=reviewed, sex_values=sex_values,
                   coded_values=coded_values, na_values=frozenset(s.strip() for s in na_raw))


# --------------------------------------------------------------------------------------------
# Reading tables
# --------------------------------------------------------------------------------------------

def _patient_fields(m: Mapping) -> dict[str, Field]:
    """Every field read from the patients table, keyed for error messages."""
    out = {f"patients.{k}": f for k, f in m.patients.fields.items()}
    for em in m.elements:
        out.update({f"patients.elements.{em.element}.{k}": f for k, f in em.fields.items()})
    for cf in m.conditions:
        out.update({f"patients.conditions.{cf.element}.{k}": f for k, f in cf.fields.items()})
    for xm in m.exposures:
        out.update({f"patients.exposures.{xm.element}.{k}": f for k, f in xm.fields.items()})
    for k, f in m.reviewed.items():
        out[f"reviewed.{k}"] = f
    return out


def _resolve(m: Mapping, t: Table, base_dir: str | Path | None) -> Path:
    base = Path(base_dir) if base_dir is not None else m.path.parent
    return base / t.file


def _header(path: Path, t: Table) -> list[str]:
    if t.format == "parquet":
        import pyarrow.parquet as pq  # imported lazily: CSV-only users need no pyarrow

        return list(pq.ParquetFile(path).schema_arrow.names)
    # the same replacement policy and line splitting as `_rows`: an undecodable byte anywhere
    # in the first block read (about 8 KB of data rows) must not make the whole table unreadable
    with path.open(newline="", encoding=t.encoding, errors="replace") as fh:
        first = next(_records(fh, t), None)
        return first[1] if first else []


def check_tables(m: Mapping, base_dir: str | Path | None = None) -> None:
    """Check that every table exists and has every mapped column; raise MappingError if not."""
    errors: list[str] = []
    wanted: list[tuple[Table, dict[str, Field]]] = [(m.patients, _patient_fields(m))]
    for t in m.labs + m.problems:
        wanted.append((t, {f"{t.role}.{k}": f for k, f in t.fields.items()}))
    for t, fields in wanted:
        path = _resolve(m, t, base_dir)
        try:
            header = _header(path, t)
        except OSError as e:
            errors.append(f"{t.role}: cannot read {path}: {e.strerror or e}")
            continue
        except Exception as e:  # pyarrow raises its own error types for broken files
            errors.append(f"{t.role}: cannot read {path}: {e}")
            continue
        counts = Counter(header)
        missing = [f.column for f in fields.values()
                   if f.column is not None and f.column not in counts]
        sep = _other_delimiter(t, header) if missing else None
        if sep is not None:
            how = 'format: tsv (or delimiter: "\\t")' if sep == "\t" else f"delimiter: {sep!r}"
            errors.append(f"{t.role}: the header of {t.file} was read as one column "
                          f"{cut(header[0], 100)!r}: the table seems to be separated by "
                          f"{sep!r}, not {t.delimiter!r}; set {how} for this table")
            continue
        for key, f in fields.items():
            col = f.column
            if col is None:
                continue
            if col not in counts:
                # case or whitespace slips are the usual ones in exports: an exact match but
                # for those first, then a close spelling
                hint = next((h for h in header
                             if h.strip().casefold() == col.strip().casefold()), None) \
                    or did_you_mean(col, header)
                mean = f" (did you mean {hint!r}?)" if hint else ""
                if hint is None and key.endswith(".unit"):
                    mean = f" (a unit written as such is {{constant: {col}}})"
                errors.append(f"{key}: column {col!r} not in {t.file}{mean}"
                              f"; header: {', '.join(header)}")
            elif counts[col] > 1:
                errors.append(f"{key}: column {col!r} appears {counts[col]} times in the header "
                              f"of {t.file}; cannot tell which one is meant")
    if errors:
        raise MappingError(str(m.path), errors)


#: csv field size limit while reading tables (the module's default, 128 KiB, drops rows with a
#: long comment); raised once, never lowered (see `_raise_field_limit`)
_FIELD_LIMIT = 16 << 20

RowProblem = tuple[str, str]  # (issue code, message)


def _raise_field_limit() -> None:
    """The csv module's field size limit is process-wide state: it is raised (to
    `_FIELD_LIMIT`) once, never lowered, so other users of the module are not affected."""
    if csv.field_size_limit() < _FIELD_LIMIT:
        csv.field_size_limit(_FIELD_LIMIT)


class _Lines:
    """The physical lines of a text table, numbered from 1, as the input of a csv reader
    (`feed`); the lines the reader took for one record are in `taken`, and those after its
    first line can be pushed back (see `_records`).

    Every line handed out ends with a line break (one is added to a last line without one),
    so that a quoted field left open at the end of the file keeps the break in the field,
    as it does on every other line: that is how an unclosed quote is recognised. `eof` is set
    when the reader asked for a line after the last one."""

    def __init__(self, fh: Any) -> None:
        self.back: deque[tuple[int, str]] = deque()
        self.taken: list[tuple[int, str]] = []
        self.eof = False
        self.feed = self._feed(fh)
        self._n = 0

    def _feed(self, fh: Any) -> Iterator[str]:
        back = self.back
        n = self._n
        for line in fh:
            while back:
                item = back.popleft()
                self.taken.append(item)
                yield item[1]
            n += 1
            self._n = n
            if not line.endswith(("\n", "\r")):
                line += "\n"
            self.taken.append((n, line))
            yield line
        while back:
            item = back.popleft()
            self.taken.append(item)
            yield item[1]
        self.eof = True

    def push_back(self, items: list[tuple[int, str]]) -> bool:
        """Put lines back to be read again; True if the reader must be made anew (its input
        had ended: a finished generator cannot resume)."""
        self.back.extendleft(reversed(items))
        if self.eof and items:
            self.feed = self._feed(iter(()))
            return True
        return False


def _split_line(line: str, delimiter: str) -> list[str]:
    """A line split at every delimiter, quotes taken as text (csv.QUOTE_NONE)."""
    return line.rstrip("\r\n").split(delimiter)


def _records(fh: Any, t: Table) -> Iterator[tuple[int, list[str], list[RowProblem], bool]]:
    """(first line number, fields, problems, readable) for every record of a text table, the
    header included (line 1).

    By default a field may not span lines (registry exports have one record per line): a line
    whose quotes do not balance would otherwise swallow the lines after it into one field,
    silently. Such a line is split with quoting off for that line only (the quote kept as
    text), with an ``unbalanced_quote`` problem; the lines up to where its quote would close
    come as unreadable records (``inside_open_quote``: rows, or text of that field), and
    reading resumes after them. With ``multiline_fields: true`` the csv module's quoted
    fields over several lines are kept (a record then starts on the line given).

    A record the csv module cannot parse at all (a field over `_FIELD_LIMIT`) comes with
    ``readable`` False, an ``unreadable_row`` problem and its first line split at every
    delimiter (only to tell whose row it is). Reading goes on in step: line by line, with the
    next line; with multi-line fields, after the line where the record's quotes balance, so
    that text inside a long quoted comment is not read as rows."""
    _raise_field_limit()
    lines = _Lines(fh)
    reader = csv.reader(lines.feed, delimiter=t.delimiter)
    while True:
        lines.taken = []
        lines.eof = False
        try:
            row = next(reader)
            error = None
        except StopIteration:
            return
        except csv.Error as e:
            row, error = [], e
        taken = lines.taken
        if not taken:
            return
        first, raw = taken[0]
        if error is not None:
            if not t.multiline:
                # fields do not span lines: the lines after the first are rows of their own
                if lines.push_back(taken[1:]):
                    reader = csv.reader(lines.feed, delimiter=t.delimiter)
            else:
                # the record may go on over more lines (a long quoted comment): skip to where
                # its quotes balance, so that text inside it is not read as rows
                quotes = sum(line.count('"') for _, line in taken)
                skipped: list[tuple[int, str]] = list(taken[1:])
                while quotes % 2:
                    line = next(lines.feed, None)
                    if line is None:
                        break
                    skipped.append(lines.taken[-1])
                    quotes += line.count('"')
            yield first, _split_line(raw, t.delimiter), [(
                "unreadable_row",
                f"row cannot be parsed ({cut(str(error), 100)}); row skipped")], \
                False
            if t.multiline:
                # the lines skipped may be text of that field or rows (a literal quote, an
                # inch mark, makes the count odd): never dropped in silence
                for n_, line_ in skipped:
                    if line_.strip():
                        yield n_, _split_line(line_, t.delimiter), [(
                            "inside_open_quote",
                            f"this line follows a row that could not be parsed (line {first}) "
                            "before its quotes balanced: it may be a row of its own or text of "
                            "that field; not used")], False
            continue
        if lines.eof or (len(taken) > 1 and not t.multiline):
            # A quote opened in this line is not closed before its end (or, with multi-line
            # fields, before the end of the file). The lines up to where it would close may
            # be rows of their own (a stray quote) or text of that field (a quoted line
            # break): neither is guessed. This line is read with quoting off (its columns
            # before the quote are the same either way); the others are passed on as
            # unreadable rows of whoever they name, so that they decide nothing and an older
            # result does not decide in their place either.
            yield first, _split_line(raw, t.delimiter), [(
                "unbalanced_quote",
                'a quote (") in this line is not closed on it; the line is read with quoting '
                "off (quotes kept as text; set multiline_fields: true if the export has quoted "
                "fields over several lines)")], True
            for n, line in taken[1:]:
                if line.strip():
                    yield n, _split_line(line, t.delimiter), [(
                        "inside_open_quote",
                        f"this line follows a quote left open on line {first}: it may be a row "
                        "of its own or text of that quoted field; not used")], False
            continue
        yield first, row, [], True


def _readings(row: list[str], index: list[tuple[str, int]], width: int
              ) -> list[dict[str, Any]]:
    """Every reading of the given columns of a row with more (or fewer) fields than the header:
    the extra fields inserted (or the missing ones left out) before some column, columns left
    of it read in place, the others moved right (left) by the difference."""
    extra = len(row) - width
    by_pos = sorted(index, key=lambda ci: ci[1])
    out: list[dict[str, Any]] = []
    for k in range(len(by_pos) + 1):
        alt: dict[str, Any] = {}
        for j, (c, i) in enumerate(by_pos):
            pos = i if j < k else i + extra
            alt[c] = row[pos] if 0 <= pos < len(row) else ""
        if alt not in out:
            out.append(alt)
    return out


def _other_delimiter(t: Table, header: list[str]) -> str | None:
    """The delimiter a text table seems to use when its header was read as one column."""
    if t.format == "parquet" or len(header) != 1:
        return None
    for sep in (";", "\t", ",", "|"):
        if sep != t.delimiter and sep in header[0]:
            return sep
    return None


def _rows(m: Mapping, t: Table, base_dir: str | Path | None, columns: list[str]
          ) -> Iterator[tuple[int, dict[str, Any], list[RowProblem], list[dict[str, Any]]]]:
    """Stream (row number, {column: cell}, problems, shifted) for the given columns of a table.

    Row numbers count data rows from 1: in a text table read line by line (the default) row N
    is line N+1 of the file (blank lines are skipped but counted); with ``multiline_fields`` it
    is the Nth record. ``problems`` are (issue code, message) pairs.

    A text row whose columns cannot be trusted (more fields than the header, which means an
    unquoted delimiter somewhere shifted them; or a row the csv module cannot parse) gives no
    cells but ``shifted``: every way of reading the given columns (see `_readings`). The caller
    may use them to find which patient and element the row belongs to, never its values.
    Empty fields matching empty names at the end of the header (a trailing delimiter on
    every line) are dropped; a long-table row too short for its mapped columns is unreadable
    as well (padded, its value would read as blank and an older result decide)."""
    path = _resolve(m, t, base_dir)
    if t.format == "parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        n = 0
        for batch in pf.iter_batches(batch_size=8192, columns=columns):
            data = batch.to_pydict()
            for i in range(batch.num_rows):
                n += 1
                yield n, {c: data[c][i] for c in columns}, [], []
        return
    # errors="replace": one undecodable byte must not stop the run; it shows up as U+FFFD in
    # the cell (and then as an unparseable value) instead. Set `encoding` for latin-1 exports.
    with path.open(newline="", encoding=t.encoding, errors="replace") as fh:
        records = _records(fh, t)
        header_rec = next(records, None)
        header = header_rec[1] if header_rec else []
        index = [(c, header.index(c)) for c in columns]
        # A trailing delimiter on every line shows in the header too (an empty last name):
        # those empty fields are dropped from every row. Guessed from a data row instead, a
        # row shifted by an unquoted delimiter was taken for one and read in place (review).
        trailing = 0
        while len(header) > trailing and not header[len(header) - trailing - 1].strip():
            trailing += 1
        width = len(header) - trailing
        last_needed = max((i for _, i in index), default=-1)
        n = 0
        for first, row, problems, readable in records:
            if readable and not problems and not row:
                continue  # csv yields [] for blank lines; they are not records
            n = first - 1 if not t.multiline else n + 1
            if not readable or (len(row) != width and any(
                    code == "unbalanced_quote" for code, _ in problems)):
                # a line cut at an open quote (a real quoted line break, or a stray quote)
                # that does not have the header's width: its cells cannot be placed
                yield n, {}, problems, _readings(row, index, width)
                continue
            if trailing and len(row) == width + trailing and \
                    not any(f.strip() for f in row[width:]):
                row = row[:width]
            if len(row) > width:
                # Extra fields mean the columns are shifted (an unquoted delimiter in a text
                # field); every mapped cell may be wrong, so the row is not used as such.
                problems = problems + [("ragged_row", f"row has {len(row)} fields but the "
                                                      f"header has {width}; row skipped")]
                yield n, {}, problems, _readings(row, index, width)
                continue
            if len(row) < width and last_needed >= len(row) and t.role != "patients":
                # a mapped column is missing: the line may be cut (a line break inside a
                # field) and its cells cannot be placed (padded, its value read as blank, the
                # older result decided)
                problems = problems + [("ragged_row", f"row has {len(row)} fields but the "
                                                      f"header has {width}; row skipped")]
                yield n, {}, problems, _readings(row, index, width)
                continue
            if len(row) < width:
                # only unmapped columns at the end are missing (trailing empty fields left
                # out), or a patients-table row, where a missing cell is no data (unknown)
                if last_needed >= len(row):
                    problems = problems + [("ragged_row", f"row has {len(row)} fields but the "
                                                          f"header has {width}; missing fields "
                                                          f"read as blank")]
                row = row + [""] * (width - len(row))
            yield n, {c: row[i] for c, i in index}, problems, []


# --------------------------------------------------------------------------------------------
# Cell parsing
# --------------------------------------------------------------------------------------------

_NUM = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$")
_CMP = re.compile(r"^(<=|>=|<|>|≤|≥)\s*")
_CMP_NORM = {"≤": "<=", "≥": ">="}
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_ISO_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")
_PARTIAL = re.compile(r"^(\d{4})(?:-(\d{2}))?$")
_POS = frozenset({"positive", "pos", "reactive", "detected", "+"})
_NEG = frozenset({"negative", "neg", "non_reactive", "nonreactive", "not_reactive",
                  "not_detected", "undetected", "none_detected", "-"})
_INDET = frozenset({"indeterminate", "equivocal", "borderline", "inconclusive"})
_TRUE = frozenset({"true", "t", "yes", "y", "1", "positive", "pos"})
_FALSE = frozenset({"false", "f", "no", "n", "0", "negative", "neg"})


def _parse_number(raw: Any) -> tuple[str | None, int | float]:
    """(comparator, number); ValueError when the cell is not a number."""
    if isinstance(raw, bool):
        raise ValueError("boolean")
    if isinstance(raw, int):
        return None, raw
    if isinstance(raw, float):
        if not math.isfinite(raw):
            raise ValueError("not finite")
        return None, raw
    s = str(raw).strip()
    cmp = None
    mt = _CMP.match(s)
    if mt:
        cmp = _CMP_NORM.get(mt.group(1), mt.group(1))
        s = s[mt.end():]
    if not _NUM.match(s):
        raise ValueError(s)
    if "." in s or "e" in s or "E" in s:
        return cmp, float(s)
    return cmp, int(s)


def _parse_date(raw: Any, fmt: str | None, partial: bool) -> str:
    """ISO text for a date cell; ValueError when it is not a date."""
    if isinstance(raw, datetime):  # Parquet timestamp columns arrive as datetime objects
        return raw.isoformat()
    if isinstance(raw, date):
        return raw.isoformat()
    s = str(raw).strip()
    if fmt:
        dt = datetime.strptime(s, fmt)
        timed = any(d in fmt for d in ("%H", "%I", "%M", "%S"))
        return dt.isoformat() if timed else dt.date().isoformat()
    if _ISO_DATE.match(s):
        return date.fromisoformat(s).isoformat()
    if _ISO_DATETIME.match(s):
        datetime.fromisoformat(s)  # validates; the text itself is kept (time zone included)
        return s.replace(" ", "T", 1)
    mt = _PARTIAL.match(s)
    if partial and mt:
        # A year or year-month is real information (problem lists often have only a year);
        # it is passed on as given rather than padded to a made-up day.
        if mt.group(2) and not 1 <= int(mt.group(2)) <= 12:
            raise ValueError(s)
        return s
    raise ValueError(s)


def _token(raw: Any) -> str:
    return re.sub(r"[\s\-]+", "_", str(raw).strip().lower())


def _coded(raw: Any, e: Element, extra: dict[str, str]) -> str:
    s = str(raw).strip()
    tok = _token(extra.get(s.lower(), s))
    if tok in e.values:
        return tok
    # Serology and PCR results come as Reactive / Non-reactive / Detected / Neg ...: map the
    # common spellings onto whichever vocabulary this element uses.
    if tok in _POS:
        tok = "positive" if "positive" in e.values else "detected"
    elif tok in _NEG:
        tok = "negative" if "negative" in e.values else "not_detected"
    elif tok in _INDET:
        tok = "indeterminate"
    if tok in e.values:
        return tok
    raise ValueError(s)


def _boolean(raw: Any, extra: dict[str, str]) -> bool:
    if isinstance(raw, bool):
        return raw
    s = str(raw).strip().lower()
    tok = extra.get(s, s).lower()
    if tok in _TRUE:
        return True
    if tok in _FALSE:
        return False
    raise ValueError(s)


# --------------------------------------------------------------------------------------------
# Building records
# --------------------------------------------------------------------------------------------

class _Row:
    """One source row: typed access to mapped fields, with issue reporting."""

    def __init__(self, m: Mapping, t: Table, n: int, cells: dict[str, Any],
                 issues: list[Issue]):
        self.m = m
        self.t = t
        self.n = n
        self.cells = cells
        self.issues = issues
        self.where = f"{t.file}:row {n}"

    def issue(self, f: Field | None, code: str, msg: str) -> None:
        loc = self.where + (f":{f.column}" if f is not None and f.column else "")
        self.issues.append({"loc": loc, "code": code, "msg": msg})

    def raw(self, f: Field | None) -> Any:
        """The cell (or constant), or None when blank / NA."""
        if f is None:
            return None
        v = f.constant if f.column is None else self.cells.get(f.column)
        if v is None:
            return None
        if isinstance(v, float) and math.isnan(v):
            return None
        if isinstance(v, str) and v.strip() in self.m.na_values:
            return None
        return v

    def get(self, f: Field | None, parse: Callable[[Any], Any], code: str, what: str) -> Any:
        """Parsed value, or None (blank, or unparseable with an issue)."""
        v = self.raw(f)
        if v is None:
            return None
        try:
            return parse(v)
        except ValueError:
            self.issue(f, code, f"{what}: cannot read {str(v)!r}")
            return None

    def date(self, f: Field | None, what: str, partial: bool = False) -> str | None:
        fmt = self.t.date_format if f is not None and f.column else None
        out: str | None = self.get(f, lambda v: _parse_date(v, fmt, partial), "bad_date",
                                   f"{what} is not a date"
                                   + (f" in format {fmt!r}" if fmt else " (expected ISO)"))
        return out


def _unreadable(why: str) -> str:
    """The value given to a result that cannot be read: no number, boolean or coded value, so
    the normalizer finds the observation unusable (as the FHIR adapter does)."""
    return cut(f"{_UNREADABLE}: {why}", 120)


def _observation(r: _Row, e: Element, fields: dict[str, Field]) -> dict[str, Any] | None:
    """One observation from the value / unit / low / high / date / status fields of a row;
    None only when the value cell is blank (no result). An unreadable value or date gives an
    observation the normalizer finds unusable (see "Bad cells")."""
    vf = fields.get("value")
    raw = r.raw(vf)
    if raw is None:
        return None
    obs: dict[str, Any] = {"element": e.name}
    readable = True
    try:
        if e.kind == "quantity":
            cmp, num = _parse_number(raw)
            obs["value"] = num
            if cmp:
                obs["comparator"] = cmp
        elif e.kind == "coded":
            try:
                obs["value"] = _coded(raw, e, r.m.coded_values)
            except ValueError:
                if e.name not in _NUMERIC_DETECT:
                    raise
                # a viral load: passed on as the number, which the normalizer reads as
                # detected when above 0 (and checks against a log unit), as in canonical JSON
                cmp, num = _parse_number(raw)
                obs["value"] = num
                if cmp:
                    obs["comparator"] = cmp
        else:
            obs["value"] = _boolean(raw, r.m.coded_values)
    except ValueError:
        what = {"quantity": "a number", "coded": f"one of {', '.join(e.values)}",
                "boolean": "true or false"}.get(e.kind, "a value")
        r.issue(vf, "bad_number" if e.kind == "quantity" else "bad_value",
                f"{e.name}: {str(raw).strip()!r} is not {what}; passed on as an unusable "
                f"result (it hides older {e.name} results)")
        obs["value"] = _unreadable(short_repr(str(raw).strip(), 80))
        readable = False
    unit = r.raw(fields.get("unit"))
    if unit is not None:
        obs["unit"] = str(unit).strip()
    if e.kind == "quantity" and readable:
        rr = _reference_range(r, e, fields, obs.get("unit"))
        if rr:
            obs["reference_range"] = rr
    dfield = fields.get("date")
    d = r.date(dfield, f"{e.name} date")
    if d is None:
        # undated, the result is unusable and hides every other result of its element
        undated = f"passed on undated (unusable: it hides every {e.name} result)"
        if r.raw(dfield) is None:
            r.issue(dfield, "missing_date", f"{e.name}: result has no date; {undated}")
        else:
            r.issues[-1]["msg"] += f"; {undated}"
    else:
        obs["date"] = d
    status = r.raw(fields.get("status"))
    if status is not None:
        obs["status"] = _lab_status(status)
    obs["source"] = r.where
    return obs


#: coded elements whose result may also be a number (a viral load: > 0 is detected); the
#: normalizer reads numbers for these (normalize._coded)
_NUMERIC_DETECT = frozenset({"hbv_dna", "hcv_rna"})
#: HL7 v2 OBX-11 observation result status -> the FHIR status the normalizer knows (as in
#: HL7's v2-to-FHIR concept map); only final / amended / corrected / appended count, and
#: entered-in-error / cancelled results are dropped as never recorded
_OBX11 = {"F": "final", "C": "corrected", "A": "amended", "X": "cancelled",
          "D": "entered-in-error", "W": "entered-in-error", "P": "preliminary",
          "R": "preliminary", "I": "registered"}
_STATUS_SPELLINGS = {"canceled": "cancelled"}


def _lab_status(raw: Any) -> str:
    """A result status cell as the normalizer's (FHIR) status: tokenised like problem
    verification statuses ("Entered in error", "entered_in_error" -> entered-in-error,
    "Canceled" -> cancelled); a single HL7 v2 OBX-11 letter is translated (`_OBX11`). Any
    other text is passed on tokenised, and the normalizer takes it as not final."""
    s = str(raw).strip()
    if len(s) == 1 and s.upper() in _OBX11:
        return _OBX11[s.upper()]
    tok = re.sub(r"[\s_\-]+", "-", s.lower())
    return _STATUS_SPELLINGS.get(tok, tok)


def _reference_range(r: _Row, e: Element, fields: dict[str, Field],
                     unit: str | None) -> dict[str, Any] | None:
    lo_f, hi_f = fields.get("low"), fields.get("high")
    lo_raw, hi_raw = r.raw(lo_f), r.raw(hi_f)
    if lo_raw is None and hi_raw is None:
        return None  # blank limits: no ULN, so x ULN criteria become unknown downstream
    bounds: dict[str, Any] = {}
    for key, f, raw in (("low", lo_f, lo_raw), ("high", hi_f, hi_raw)):
        if raw is None:
            continue
        try:
            cmp, num = _parse_number(raw)
        except ValueError:
            r.issue(f, "bad_reference_range", f"{e.name}: reference {key} {str(raw).strip()!r} "
                                              f"is not a number; reference range dropped")
            return None
        bounds[key] = num
    hi, lo = bounds.get("high"), bounds.get("low")
    # A limit of 0 (seen in real exports as 'LOW 0, HIGH 0') or high <= low cannot be a normal
    # range; used as a ULN it would make every result look infinitely elevated.
    if hi is not None and (hi <= 0 or (lo is not None and hi <= lo)):
        r.issue(hi_f, "bad_reference_range",
                f"{e.name}: reference range {lo if lo is not None else ''}-{hi} is not a usable "
                f"normal range; reference range dropped")
        return None
    if unit is not None:
        bounds["unit"] = unit
    return bounds


def _condition_flag(r: _Row, cf: ConditionFlag) -> dict[str, Any] | None:
    flag = cf.fields["column"]
    raw = r.raw(flag)
    if raw is None:
        return None  # blank: not assessed, proves nothing
    tok = str(raw).strip().lower()
    if isinstance(raw, bool):
        tok = "true" if raw else "false"
    elif isinstance(raw, (int, float)) and float(raw) in (0.0, 1.0):
        tok = str(int(raw))
    if tok in cf.present:
        cond: dict[str, Any] = {"element": cf.element}
        onset = r.date(cf.fields.get("onset"), f"{cf.element} onset", partial=True)
        if onset:
            cond["onset"] = onset
        abatement = r.date(cf.fields.get("abatement"), f"{cf.element} abatement", partial=True)
        if abatement:
            cond["abatement"] = abatement
        cond["source"] = r.where
        return cond
    if tok in cf.absent:
        if "date" not in cf.fields:
            return None  # an undated "no" is not an assessment (see module docstring)
        d = r.date(cf.fields["date"], f"{cf.element} assessment date")
        if d is None:
            if r.raw(cf.fields["date"]) is None:
                r.issue(cf.fields["date"], "missing_date",
                        f"{cf.element}: 'absent' flag has no assessment date; ignored")
            return None
        return {"element": cf.element, "present": False, "date": d, "source": r.where}
    r.issue(flag, "bad_value", f"{cf.element}: flag {str(raw).strip()!r} is neither present "
                               f"({', '.join(sorted(cf.present))}) nor absent "
                               f"({', '.join(sorted(cf.absent))}); passed on as unconfirmed")
    # ignored, a complete condition review would prove the condition absent
    return {"element": cf.element, "verification_status": "unconfirmed", "source": r.where}


def _exposure(r: _Row, xm: ElementMap) -> dict[str, Any] | None:
    def days(v: Any) -> int:
        cmp, num = _parse_number(v)
        if cmp or num < 0 or num != int(num):
            raise ValueError(v)
        return int(num)

    out: dict[str, Any] = {"element": xm.element}
    d = r.get(xm.fields.get("days"), days, "bad_number", f"{xm.element} days is not a count")
    if d is not None:
        out["days"] = d
    for k in ("start", "end"):
        v = r.date(xm.fields.get(k), f"{xm.element} {k}")
        if v is not None:
            out[k] = v
    if len(out) == 1 and all(r.raw(xm.fields.get(k)) is None for k in ("days", "start", "end")):
        return None  # blank: no exposure recorded
    # with unreadable cells only, kept without a duration (unknown), so that a complete therapy
    # review cannot count it as "no exposure"
    out["source"] = r.where
    return out


_ZERO_DECIMALS = re.compile(r"^(\d+)\.0+$")


def _patient_id(raw: Any) -> str:
    # Parquet and spreadsheet round trips turn 1520204 into 1520204.0 (or the text
    # "1520204.0"); ids compare as text.
    if isinstance(raw, float) and raw.is_integer():
        return str(int(raw))
    s = str(raw).strip()
    mt = _ZERO_DECIMALS.match(s)
    return mt.group(1) if mt else s


def _near_key(pid: str) -> str:
    """What two ids that may be one id written differently have in common: case, surrounding
    whitespace and leading zeros left out ("007", " 7", "AB1", "ab1")."""
    key = pid.strip().casefold()
    return key.lstrip("0") or ("0" if key else "")


def _bad_id(pid: str) -> str | None:
    """Why a patient id cannot be used, or None."""
    if "\ufffd" in pid:
        return (f"patient id {short_repr(pid, 80)} holds undecodable bytes (shown as U+FFFD), "
                f"so two different ids may read the same; set the table's `encoding` in the "
                f"mapping (e.g. encoding: cp1252 or latin-1 for a Windows / ISO-8859 export)")
    return None


@dataclass
class _Group:
    """The long-table rows of one patient, already parsed."""

    observations: list[dict[str, Any]] = field(default_factory=list)
    conditions: list[dict[str, Any]] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)
    rows: Counter[str] = field(default_factory=Counter)
    unmapped: dict[str, Counter[str]] = field(default_factory=dict)


_NOTHING, _OBSERVATION, _CONDITION, _UNMAPPED = range(4)


class _LongStore:
    """The parsed rows of the long tables, filed by patient id on disk (SQLite in a temporary
    directory, removed by `close`), so that memory does not grow with the long tables: each
    patient's rows are read back, in their original order, when its patient row streams by.

    Rows are pickled (our own objects, written and read by this process only), which keeps
    every value exactly as parsed. Writes are batched; the index is built once all are in.
    """

    _BATCH = 20_000
    PREFIX = "screener-long-"

    def __init__(self, parent: str | None = None) -> None:
        parent = parent or tempfile.gettempdir()
        _remove_stale_stores(parent)
        # the pid in the name lets a later run tell a killed run's store from a live one's
        self._dir = tempfile.mkdtemp(prefix=f"{self.PREFIX}{os.getpid()}-", dir=parent)
        self._db = sqlite3.connect(os.path.join(self._dir, "rows.db"))
        for pragma in ("journal_mode=OFF", "synchronous=OFF", "cache_size=-32768",
                       "temp_store=FILE"):
            self._db.execute(f"PRAGMA {pragma}")
        self._db.execute("CREATE TABLE rows (seq INTEGER PRIMARY KEY, pid TEXT NOT NULL, "
                         "kind INTEGER NOT NULL, item BLOB NOT NULL)")
        # the patient ids met in the patients table (duplicates, orphans), on disk as well
        self._db.execute("CREATE TABLE seen (pid TEXT PRIMARY KEY) WITHOUT ROWID")
        # every patient id of the patients table (read before it streams), and the ids of
        # long-table rows that match none but look like one of them (see `find_near`)
        self._db.execute("CREATE TABLE pids (pid TEXT PRIMARY KEY, key TEXT NOT NULL) "
                         "WITHOUT ROWID")
        self._db.execute("CREATE TABLE near (pid TEXT NOT NULL, orphan TEXT NOT NULL, "
                         "PRIMARY KEY (pid, orphan)) WITHOUT ROWID")
        self._pending: list[tuple[int, str, int, bytes]] = []
        self._any_near = False
        self._seq = 0

    def add(self, pid: str, file: str, kind: int, item: Any, issues: list[Issue]) -> None:
        """One long-table row of a patient: its file, what it gave (an observation, a
        condition, an unmapped code or nothing) and its issues."""
        self._seq += 1
        self._pending.append((self._seq, pid, kind,
                              pickle.dumps((file, item, issues), protocol=5)))
        if len(self._pending) >= self._BATCH:
            self._flush()

    def _flush(self) -> None:
        self._db.executemany("INSERT INTO rows VALUES (?, ?, ?, ?)", self._pending)
        self._pending.clear()

    def finish(self) -> None:
        self._flush()
        self._db.execute("CREATE INDEX rows_by_pid ON rows (pid, seq)")
        self._db.commit()

    def get(self, pid: str) -> _Group | None:
        """The patient's group, freshly unpickled (a repeated patient id of the patients
        table reads it once per row, each its own copy); None when it has no rows."""
        got = self._db.execute("SELECT kind, item FROM rows WHERE pid = ? ORDER BY seq",
                               (pid,)).fetchall()
        if not got:
            return None
        g = _Group()
        for kind, blob in got:
            file, item, issues = pickle.loads(blob)
            g.rows[file] += 1
            if kind == _OBSERVATION:
                g.observations.append(item)
            elif kind == _CONDITION:
                g.conditions.append(item)
            elif kind == _UNMAPPED:
                g.unmapped.setdefault(file, Counter())[item] += 1
            g.issues.extend(issues)
        return g

    def find_near(self, pids: Iterator[str]) -> None:
        """Record the patient ids of the patients table, then pair every long-table id that is
        none of them with those it matches but for case, surrounding spaces or leading zeros
        (`_near_key`): such rows may belong to that patient, so they must not be ignored."""
        batch: list[tuple[str, str]] = []
        for pid in pids:
            batch.append((pid, _near_key(pid)))
            if len(batch) >= self._BATCH:
                self._db.executemany("INSERT OR IGNORE INTO pids VALUES (?, ?)", batch)
                batch.clear()
        self._db.executemany("INSERT OR IGNORE INTO pids VALUES (?, ?)", batch)
        self._db.execute("CREATE INDEX pids_by_key ON pids (key)")
        self._db.create_function("near_key", 1, _near_key, deterministic=True)
        self._db.execute(
            "INSERT OR IGNORE INTO near SELECT p.pid, o.pid FROM (SELECT DISTINCT pid FROM rows "
            "WHERE pid NOT IN (SELECT pid FROM pids)) AS o JOIN pids AS p "
            "ON p.key = near_key(o.pid)")
        self._db.execute("CREATE INDEX near_by_orphan ON near (orphan, pid)")
        self._db.commit()
        self._any_near = self._db.execute("SELECT EXISTS (SELECT 1 FROM near)").fetchone()[0]

    def near(self, pid: str) -> list[str]:
        """The long-table ids without a patient row that look like this patient's id."""
        if not self._any_near:
            return []
        return [o for (o,) in self._db.execute(
            "SELECT orphan FROM near WHERE pid = ? ORDER BY orphan", (pid,))]

    def near_of(self, orphan: str) -> list[str]:
        """The patient ids a long-table id without a patient row looks like."""
        return [p for (p,) in self._db.execute(
            "SELECT pid FROM near WHERE orphan = ? ORDER BY pid", (orphan,))]

    def first_time(self, pid: str) -> bool:
        """Records a patient id of the patients table; False if it was met before."""
        return self._db.execute("INSERT OR IGNORE INTO seen VALUES (?)", (pid,)).rowcount == 1

    def orphan_ids(self) -> list[str]:
        """Patient ids with long-table rows but no patient row, sorted (code point order)."""
        return sorted(pid for (pid,) in self._db.execute(
            "SELECT DISTINCT pid FROM rows WHERE pid NOT IN (SELECT pid FROM seen)"))

    def close(self) -> None:
        try:
            self._db.close()
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)


def _remove_stale_stores(parent: str) -> None:
    """Remove the stores of runs that died without cleaning up (SIGKILL, power loss): those
    named with the pid of a process that no longer exists. A store of a live process (or of a
    pid now reused by another process) is left alone; so is anything not shaped like ours."""
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        if not name.startswith(_LongStore.PREFIX):
            continue
        pid_text = name[len(_LongStore.PREFIX):].split("-", 1)[0]
        path = os.path.join(parent, name)
        if not pid_text.isdigit() or not os.path.isdir(path) or \
                not set(os.listdir(path)) <= {"rows.db"}:
            continue
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except (PermissionError, OverflowError, ValueError):
            pass   # alive under another user, or not a pid at all


def _lab_element(t: Table, code: str, loinc: dict[str, str]) -> str | None:
    """The catalogue observation element a lab row's code names, or None."""
    name = (code if code in ELEMENTS else None) if t.system == "element" else loinc.get(code)
    e = ELEMENTS.get(name) if name else None
    if e is None or e.kind not in ("quantity", "coded", "boolean") or e.name in DEMOGRAPHIC:
        return None
    return e.name


def _problem_target(m: Mapping, t: Table, code: str) -> tuple[str, dict[str, str] | None] | None:
    """What a problem row's code gives: (element, None) for a catalogue condition, ("", coding)
    for a code passed on as such (a broader code, or any code the catalogue cannot place when
    the problem list is declared complete), None for an unmapped code."""
    system_url = _PROBLEM_SYSTEMS[t.system or "snomed"]
    name = condition_for(system_url, code) if code else None
    if name is not None:
        return name, None
    if code and condition_broader(system_url, code):
        # a broader code (e.g. ALL for B-ALL) is passed on as a code: the normalizer makes the
        # condition possible but unconfirmed
        return "", {"system": system_url, "code": code}
    if code and "conditions" in m.reviewed and t.system not in ("icd10", "icd10cm"):
        # The problem list is declared complete, so a code we cannot place must reach the
        # normalizer: it may be a more specific form of a catalogue condition (the SNOMED CT
        # hierarchy is not modelled), and absence must then stay unknown. It reports the
        # unmapped code itself.
        return "", {"system": system_url, "code": code}
    return None


def _shifted_links(m: Mapping, t: Table, n: int, shifted: list[dict[str, Any]],
                   loinc: dict[str, str], why: str) -> list[tuple[str, int, dict[str, Any]]]:
    """(patient id, kind, unusable item) for a row whose columns cannot be trusted (extra
    fields, or a row the csv module cannot parse), for every reading of it (see `_rows`) that
    gives a usable patient id and a catalogue element: its values and dates cannot be trusted,
    but dropped, an older result would decide. An undated unusable result hides every result
    of its element (an unconfirmed condition keeps the condition unknown)."""
    out: list[tuple[str, int, dict[str, Any]]] = []
    for cells in shifted:
        r = _Row(m, t, n, cells, [])
        pid_raw, code_raw = r.raw(t.fields["patient_id"]), r.raw(t.fields["code"])
        if pid_raw is None:
            continue
        pid = _patient_id(pid_raw)
        if _bad_id(pid):
            continue
        if code_raw is None:
            # whose row it is can be read, what it records cannot (a line cut at a quote
            # before its code column): it may be any result or problem the table holds, so
            # each of them is unusable for this patient (dropped, an older one would decide)
            for any_item, any_kind in _anything(t, r.where, why):
                if all((pid, any_item) != (p, i) for p, _, i in out):
                    out.append((pid, any_kind, any_item))
            continue
        code = str(code_raw).strip()
        item: dict[str, Any]
        if t.role == "labs":
            name = _lab_element(t, code, loinc)
            if name is None:
                continue
            item = {"element": name, "value": _unreadable(why),
                    "source": r.where}
            kind = _OBSERVATION
        else:
            target = _problem_target(m, t, code)
            if target is None:
                continue
            name, coding = target
            item = {"element": name} if coding is None else {"codes": [coding]}
            item.update({"verification_status": "unconfirmed", "source": r.where})
            kind = _CONDITION
        if all((pid, item) != (p, i) for p, _, i in out):
            out.append((pid, kind, item))
    return out


def _anything(t: Table, where: str, why: str) -> list[tuple[dict[str, Any], int]]:
    """An unusable item of every element a long table may hold (see `_shifted_links`)."""
    if t.role == "labs":   # by LOINC, or by element name in a `system: element` table
        return [({"element": n, "value": _unreadable(why), "source": where}, _OBSERVATION)
                for n, e in sorted(ELEMENTS.items())
                if e.kind in ("quantity", "coded", "boolean")]
    return [({"element": n, "verification_status": "unconfirmed", "source": where},
             _CONDITION) for n, e in sorted(ELEMENTS.items()) if e.kind == "condition"]


def _load_long(m: Mapping, base_dir: str | Path | None, stray: list[Issue],
               store: _LongStore) -> None:
    """Read every long table once and file its parsed rows by patient id (see Memory)."""
    loinc = by_loinc()
    add = store.add
    for t in m.labs + m.problems:
        cols = list(t.columns())
        for n, cells, problems, shifted in _rows(m, t, base_dir, cols):
            tmp: list[Issue] = []
            r = _Row(m, t, n, cells, tmp)
            for code, msg in problems:
                r.issue(None, code, msg)
            if problems and not cells:
                why = {"ragged_row": "row with shifted columns",
                       "inside_open_quote": "line inside a quote left open on an earlier line"
                       }.get(problems[-1][0], "row that cannot be parsed")
                links = _shifted_links(m, t, n, shifted, loinc, why) if shifted else []
                per_pid: dict[str, list[tuple[int, dict[str, Any]]]] = {}
                for pid, kind, item in links:
                    per_pid.setdefault(pid, []).append((kind, item))
                for pid, items in per_pid.items():
                    names = [i.get("element") or "a condition" for _, i in items]
                    kind0 = items[0][0]
                    what = (f"an undated unusable {names[0]} result" if len(items) == 1
                            and kind0 == _OBSERVATION else "an unconfirmed condition"
                            if len(items) == 1 else
                            f"{len(items)} unusable results or unconfirmed conditions (every "
                            "element the row may hold)")
                    msg = (f"{tmp[-1]['msg'].removesuffix('; row skipped')}: its cells cannot "
                           f"be trusted; passed on to patient {pid!r} as {what}")
                    for j, (kind, item) in enumerate(items):
                        # the row's issues once per patient, not once per element
                        add(pid, t.file, kind, item,
                            tmp[:-1] + [{**tmp[-1], "msg": msg}] if j == 0 else [])
                if not links:
                    stray.extend(tmp)
                continue
            pid_raw = r.raw(t.fields["patient_id"])
            if pid_raw is None:
                r.issue(t.fields["patient_id"], "missing_id", "row has no patient id; skipped")
                stray.extend(tmp)
                continue
            pid = _patient_id(pid_raw)
            bad = _bad_id(pid)
            if bad:
                r.issue(t.fields["patient_id"], "bad_id", f"{bad}; row skipped")
                stray.extend(tmp)
                continue
            code_raw = r.raw(t.fields["code"])
            code = str(code_raw).strip() if code_raw is not None else ""
            label_raw = r.raw(t.fields.get("label"))
            label = f" ({str(label_raw).strip()})" if label_raw is not None else ""
            name: str | None
            if t.role == "labs":
                name = _lab_element(t, code, loinc)
            else:
                target = _problem_target(m, t, code)
                name = None
                if target is not None:
                    name, coding = target
                    cond = _problem(r, name) if coding is None else _problem(r, "", coding)
                    add(pid, t.file, _NOTHING if cond is None else _CONDITION, cond, tmp)
                    continue
            if name is None:
                system = (t.system or "").upper()
                if not code:
                    r.issue(t.fields["code"], "unmapped_code", "row has no code; skipped")
                elif t.unmapped == "report":
                    r.issue(t.fields["code"], "unmapped_code",
                            f"{system} {code}{label} is not a catalogue element; skipped")
                elif t.unmapped == "summary":
                    add(pid, t.file, _UNMAPPED, f"{code}{label}", tmp)
                    continue
                add(pid, t.file, _NOTHING, None, tmp)
                continue
            # a lab row of a catalogue element: None only when its value is blank (no result)
            obs = _observation(r, ELEMENTS[name], t.fields)
            if obs is None:
                r.issue(t.fields.get("value"), "missing_value",
                        f"{name}: row has no value; skipped")
            add(pid, t.file, _NOTHING if obs is None else _OBSERVATION, obs, tmp)
    store.finish()


def _problem(r: _Row, name: str, code: dict[str, str] | None = None) -> dict[str, Any] | None:
    f = r.t.fields
    cond: dict[str, Any] = {"codes": [code]} if code is not None else {"element": name}
    onset = r.date(f.get("start"), f"{name} onset", partial=True)
    if onset is None and r.raw(f.get("start")) is not None:
        r.issues[-1]["msg"] += "; condition kept without onset"
    if onset is not None:
        cond["onset"] = onset
    end = r.date(f.get("end"), f"{name} abatement", partial=True)
    if end is not None:
        cond["abatement"] = end
    for k in ("clinical_status", "verification_status"):
        v = r.raw(f.get(k))
        if v is not None:
            cond[k] = _token(v).replace("_", "-") if k == "verification_status" else _token(v)
    cond["source"] = r.where
    return cond


def _summarise_unmapped(g: _Group) -> None:
    for file, counts in sorted(g.unmapped.items()):
        total = sum(counts.values())
        shown = ", ".join(f"{c} x{k}" if k > 1 else c for c, k in counts.most_common(10))
        more = f", and {len(counts) - 10} more codes" if len(counts) > 10 else ""
        g.issues.append({"loc": file, "code": "unmapped_code",
                         "msg": f"{total} rows with codes that are not catalogue elements "
                                f"skipped: {shown}{more}"})


def _patient(m: Mapping, r: _Row, pid: str) -> Patient:
    f = m.patients.fields
    pt: Patient = {"id": pid}
    bd = r.date(f.get("birth_date"), "birth date", partial=True)
    if bd is not None:
        pt["birth_date"] = bd
    else:
        # The format takes age *instead of* a birth date, so it is used only as a fallback.
        def age(v: Any) -> int:
            cmp, num = _parse_number(v)
            if cmp or num < 0 or num != int(num):
                raise ValueError(v)
            return int(num)

        a = r.get(f.get("age"), age, "bad_number", "age is not a whole number of years")
        if a is not None:
            pt["age"] = a
    sex_raw = r.raw(f.get("sex"))
    if sex_raw is not None:
        s = str(sex_raw).strip().lower()
        sex = m.sex_values.get(s) or _SEX.get(s)
        if sex is None:
            r.issue(f.get("sex"), "bad_value", f"sex {str(sex_raw).strip()!r} is not one of "
                                               f"female, male, other, unknown; sex left out")
        else:
            pt["sex"] = sex
    observations: list[dict[str, Any]] = []
    for em in m.elements:
        obs = _observation(r, ELEMENTS[em.element], em.fields)
        if obs is not None:
            observations.append(obs)
    conditions: list[dict[str, Any]] = []
    for cf in m.conditions:
        cond = _condition_flag(r, cf)
        if cond is not None:
            conditions.append(cond)
    exposures: list[dict[str, Any]] = []
    for xm in m.exposures:
        x = _exposure(r, xm)
        if x is not None:
            exposures.append(x)
    pt["observations"] = observations
    pt["conditions"] = conditions
    pt["exposures"] = exposures
    reviewed: dict[str, str] = {}
    for k, rf in m.reviewed.items():
        d = r.date(rf, f"reviewed {k} date")
        if d is not None:
            reviewed[k] = d
    if reviewed:
        pt["reviewed"] = reviewed
    return pt


def _table_ids(m: Mapping, base_dir: str | Path | None) -> Iterator[str]:
    """The usable patient ids of the patients table, read as `_iterate_with` reads them."""
    t = m.patients
    idf = t.fields["id"]
    for n, cells, problems, _ in _rows(m, t, base_dir, [idf.column] if idf.column else []):
        if problems and not cells:
            continue
        raw = _Row(m, t, n, cells, []).raw(idf)
        if raw is None:
            continue
        pid = _patient_id(raw)
        if not _bad_id(pid):
            yield pid


def _near_rows(store: _LongStore, r: _Row, pt: Patient, pid: str, orphan: str) -> None:
    """The long-table rows of `orphan`, an id without a patient row that differs from the
    patient's only in case, spaces or leading zeros, given to the patient as unusable: they may
    be this patient's newest results (or conditions), so an older result, or a complete review,
    must not decide. Their values are not used and the ids are never merged."""
    g = store.get(orphan)
    if g is None:
        return
    why = _unreadable(f"row of patient id {short_repr(orphan, 40)}, "
                      f"not {short_repr(pid, 40)}")
    names: list[str] = []
    for o in g.observations:
        item = {"element": o["element"], "value": why}
        item.update({k: o[k] for k in ("date", "status", "source") if k in o})
        pt["observations"].append(item)
        names.append(o["element"])
    for c in g.conditions:
        if c.get("verification_status") in ("refuted", "entered-in-error"):
            continue  # it never counts, whoever it belongs to
        item = {k: v for k, v in c.items() if k not in ("verification_status", "source")}
        item.update({"verification_status": "unconfirmed", "source": c.get("source", "")})
        pt["conditions"].append(item)
        names.append(str(c.get("element") or "a coded condition"))
    tables = ", ".join(f"{k} rows in {f}" for f, k in sorted(g.rows.items()))
    what = (f"; passed on as unusable for this patient: {', '.join(sorted(set(names)))}"
            if names else "")
    r.issue(r.t.fields["id"], "near_id",
            f"{tables} have patient id {orphan!r}, which has no row in {r.t.file} and differs "
            f"from this patient's id {pid!r} only in case, spaces or leading zeros; the ids are "
            f"not merged and those rows' values are not used{what}")


def iter_patients(mapping: Mapping, base_dir: str | Path | None = None) -> Iterator[Record]:
    """Yield ``(locator, patient or None, issues)`` for every record, in patients-table order.

    Tables and columns are checked first, so a wrong mapping fails here, before anything is
    yielded (MappingError). After the patients table, rows of long tables whose patient id has
    no patient row are yielded as ``(file:patient ID, None, issues)``; rows without any patient
    id as one final ``(file, None, issues)`` record per table.
    """
    check_tables(mapping, base_dir)
    return _iterate(mapping, base_dir)


def _iterate(m: Mapping, base_dir: str | Path | None) -> Iterator[Record]:
    store = _LongStore()
    try:
        yield from _iterate_with(m, base_dir, store)
    finally:
        store.close()


def _iterate_with(m: Mapping, base_dir: str | Path | None, store: _LongStore
                  ) -> Iterator[Record]:
    stray: list[Issue] = []
    _load_long(m, base_dir, stray, store)
    t = m.patients
    if m.labs or m.problems:
        store.find_near(_table_ids(m, base_dir))
    cols = sorted({f.column for f in _patient_fields(m).values() if f.column is not None})
    for n, cells, problems, _ in _rows(m, t, base_dir, cols):
        issues: list[Issue] = []
        r = _Row(m, t, n, cells, issues)
        for code, msg in problems:
            r.issue(None, code, msg)
        if problems and not cells:
            yield r.where, None, issues
            continue
        pid_raw = r.raw(t.fields["id"])
        if pid_raw is None:
            r.issue(t.fields["id"], "missing_id", "patient row has no id; row skipped")
            yield r.where, None, issues
            continue
        pid = _patient_id(pid_raw)
        bad = _bad_id(pid)
        if bad:
            r.issue(t.fields["id"], "bad_id", f"{bad}; row skipped")
            yield r.where, None, issues
            continue
        if not store.first_time(pid):
            # Screened as its own record, like a repeated id in NDJSON: the rows may differ and
            # only the coordinator can say which is right (the batch lists both).
            r.issue(t.fields["id"], "duplicate_id",
                    f"patient id {pid!r} appeared in an earlier row of {t.file}; this row is "
                    f"screened as its own record, with the same long-table rows")
        pt = _patient(m, r, pid)
        g = store.get(pid)
        if g is not None:
            pt["observations"].extend(g.observations)
            pt["conditions"].extend(g.conditions)
            _summarise_unmapped(g)
            issues.extend(g.issues)
        for orphan in store.near(pid):
            _near_rows(store, r, pt, pid, orphan)
        yield r.where, pt, issues
    # Sorted so that the output does not depend on dict insertion details of the long tables.
    for pid in store.orphan_ids():
        g = store.get(pid)
        assert g is not None
        tables = ", ".join(f"{k} rows in {f}" for f, k in sorted(g.rows.items()))
        like = ", ".join(map(repr, store.near_of(pid)))
        note = (f" (it looks like patient id {like}, which gets its elements as unusable "
                f"results: ids are not merged)" if like else "")
        issues = [{"loc": t.file, "code": "orphan_rows",
                   "msg": f"patient id {pid!r} has {tables} but no row in {t.file}; "
                          f"its data is not used{note}"}]
        yield f"{t.file}:patient {pid}", None, issues + g.issues
    by_file: dict[str, list[Issue]] = {}
    for i in stray:
        by_file.setdefault(i["loc"].split(":row ", 1)[0], []).append(i)
    for file, issues in by_file.items():
        yield file, None, issues
