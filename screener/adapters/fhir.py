"""FHIR R4 adapter: FHIR resources -> canonical patient JSON.

Pipeline position: the first step for FHIR input.

    FHIR R4 (Bundle, single resource, list, CDS Hooks prefetch)
      -> **this module** -> canonical patient JSON (docs/patient-format.md)
      -> screener.normalize -> engine

The adapter only *maps*: it turns codes into catalogue element names (screener/elements.py),
copies values, units, reference ranges, dates and statuses as given, and leaves every judgement
(unit conversion, status filtering, plausibility, dates after ``as_of``) to the normalizer, so
that there is one place where those rules live.

Contract: it never raises on content. Real FHIR is messy (see /work/shared/fhir-examples), and a
screener that crashes on one odd resource screens nobody; so every field is type-checked, and a
resource that cannot be used is skipped with an issue ``{"loc", "code", "msg"}``. Resources that
are well formed but simply not needed (a blood pressure, an Encounter) are counted, one summary
issue per distinct code or resource type, so that the issue list stays short on a 2 MB bundle.

Decisions worth knowing (also in docs/data-elements.md):
- Observation ``status`` and Condition / AllergyIntolerance ``verificationStatus`` are passed
  through unchanged, ``entered-in-error`` and ``refuted`` included: the normalizer owns the rule
  that they never count, and keeping them makes that visible as evidence.
- MedicationStatement / MedicationAdministration with status entered-in-error, not-done,
  not-taken or intended are dropped here (with an issue), because an exposure record has no status
  field to carry that information.
- Plain dict access on purpose: FHIR model libraries are 10-1000x slower and reject the very
  resources we must survive.
"""

from __future__ import annotations

import calendar
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TypeVar

from screener.elements import (
    DEMOGRAPHIC,
    ELEMENTS,
    ICD10,
    ICD10CM,
    LOINC,
    PROJECT,
    SNOMED,
    by_loinc,
    condition_for,
)
from screener.errors import cut, short_repr

__all__ = ["bundle_to_patient", "resources_to_patient"]

Issue = dict[str, str]
JsonDict = dict[str, Any]
T = TypeVar("T")

UCUM = "http://unitsofmeasure.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
V3_INTERPRETATION = (
    "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
    "http://hl7.org/fhir/v3/ObservationInterpretation",  # pre-R4 spelling still seen in the wild
)
#: Code systems whose codes a canonical condition may carry (docs/patient-format.md).
CONDITION_SYSTEMS = (SNOMED, ICD10, ICD10CM, PROJECT)

# Bundles nest (batch-response -> searchset); a bound keeps hostile input from exhausting the
# stack, and real data never comes close.
_MAX_DEPTH = 16

_BY_LOINC = by_loinc()
_OBSERVABLE_KINDS = ("quantity", "coded", "boolean")
_POSNEG = ("positive", "negative", "indeterminate")
_DETECT = ("detected", "not_detected")

# Result concepts -> "pos" / "neg" / "ind"; turned into the element's own value set later, so one
# table serves both positive/negative and detected/not-detected tests.
_RESULT_CODES: dict[tuple[str, str], str] = {
    (SNOMED, "10828004"): "pos",    # Positive
    (SNOMED, "260373001"): "pos",   # Detected
    (SNOMED, "52101004"): "pos",    # Present
    (SNOMED, "260385009"): "neg",   # Negative
    (SNOMED, "260415000"): "neg",   # Not detected
    (SNOMED, "2667000"): "neg",     # Absent
    (SNOMED, "82334004"): "ind",    # Indeterminate
    (SNOMED, "419984006"): "ind",   # Inconclusive
    (LOINC, "LA6576-8"): "pos",     # Positive (LOINC answer)
    (LOINC, "LA6577-6"): "neg",     # Negative
    (LOINC, "LA11882-0"): "pos",    # Detected
    (LOINC, "LA11883-8"): "neg",    # Not detected
}
_RESULT_INTERPRETATION = {"POS": "pos", "DET": "pos", "NEG": "neg", "ND": "neg", "IND": "ind"}
# Exact phrases only (after _norm_text): a substring test would read "not detected" as detected.
_RESULT_TEXT: dict[str, str] = {
    **dict.fromkeys(("positive", "pos", "reactive", "repeatedly reactive", "detected",
                     "present"), "pos"),
    **dict.fromkeys(("negative", "neg", "non reactive", "nonreactive", "not reactive",
                     "not detected", "undetected", "none detected", "absent"), "neg"),
    **dict.fromkeys(("indeterminate", "equivocal", "inconclusive", "borderline"), "ind"),
}
_RESULT_VALUE = {
    "positive": {"pos": "positive", "neg": "negative", "ind": "indeterminate"},
    "detected": {"pos": "detected", "neg": "not_detected"},
}

# ECOG answers (LOINC answer list LL529-9).
_ECOG_ANSWERS = {"LA9622-7": 0, "LA9623-5": 1, "LA9624-3": 2, "LA9625-0": 3, "LA9626-8": 4,
                 "LA9627-6": 5}

_BOOL_CODES: dict[tuple[str, str], bool] = {
    (SNOMED, "373066001"): True,    # Yes
    (SNOMED, "373067005"): False,   # No
}
_BOOL_TEXT = {"yes": True, "y": True, "true": True, "no": False, "n": False, "false": False}
# Pregnancy status (LOINC 82810-3) answers. Anything else ("unknown", "possible") is not a yes/no
# and must not be guessed.
_PREGNANCY_CODES: dict[tuple[str, str], bool] = {
    (SNOMED, "77386006"): True,     # Pregnant
    (SNOMED, "60001007"): False,    # Not pregnant
}
_PREGNANCY_TEXT = {"pregnant": True, "not pregnant": False}

_BLINATUMOMAB_RXNORM = "1603296"
_BLINATUMOMAB_WORDS = ("blinatumomab", "blincyto")

_COMPARATORS = ("<", "<=", ">", ">=")
_CLINICAL_STATUS = ("active", "recurrence", "relapse", "inactive", "remission", "resolved")
_VERIFICATION_STATUS = ("unconfirmed", "provisional", "differential", "confirmed", "refuted",
                        "entered-in-error")
# An exposure has no status field, so these must be decided here.
_MEDICATION_SKIP_STATUS = ("entered-in-error", "not-done", "not-taken", "intended")

_VALUE_KEYS = ("valueQuantity", "valueCodeableConcept", "valueString", "valueBoolean",
               "valueInteger", "valueRange", "valueRatio", "valueSampledData", "valueTime",
               "valueDateTime", "valuePeriod")

_DATE_RE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$")
_DATETIME_RE = re.compile(
    r"^(\d{4})(?:-(\d{2})(?:-(\d{2})"
    r"(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.\d+)?)?(?:Z|[+-](\d{2}):(\d{2}))?)?)?)?$")
_NUMBER_RE = re.compile(r"^\s*(<=|>=|<|>)?\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*$")
_PATIENT_REF_RE = re.compile(r"(?:^|/)Patient/([^/]+)$")
_HISTORY_RE = re.compile(r"/_history/[^/]*$")


# --- small typed helpers -------------------------------------------------------------------------

def _tname(v: object) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float, Decimal)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    if isinstance(v, dict):
        return "object"
    return type(v).__name__


def _is_number(v: object) -> bool:
    # bool is an int in Python but never a FHIR decimal; NaN / inf slip through json.loads.
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return True
    if isinstance(v, float):
        return math.isfinite(v)
    if isinstance(v, Decimal):
        return v.is_finite()
    return False


def _norm_text(s: str) -> str:
    return re.sub(r"[\s_\-]+", " ", s.strip().lower()).rstrip(".").strip()


def _norm_value(s: str) -> str:
    """Spell a code or phrase like a canonical value: "Matched sibling" -> "matched_sibling"."""
    return re.sub(r"[\s\-]+", "_", s.strip().lower())


def _valid_date_parts(y: str, mo: str | None, d: str | None) -> bool:
    if mo is None:
        return True
    m = int(mo)
    if not 1 <= m <= 12:
        return False
    return d is None or 1 <= int(d) <= calendar.monthrange(int(y), m)[1]


def _is_date(s: str) -> bool:
    m = _DATE_RE.match(s)
    return m is not None and _valid_date_parts(m.group(1), m.group(2), m.group(3))


def _is_datetime(s: str) -> bool:
    m = _DATETIME_RE.match(s)
    if not m or not _valid_date_parts(m.group(1), m.group(2), m.group(3)):
        return False
    hh, mm, ss, tzh, tzm = m.group(4), m.group(5), m.group(6), m.group(7), m.group(8)
    if hh is not None and (int(hh) > 23 or int(mm) > 59 or (ss is not None and int(ss) > 60)):
        return False
    return tzh is None or (int(tzh) <= 14 and int(tzm) <= 59)


def _parse_number(s: str) -> tuple[str | None, int | float] | None:
    m = _NUMBER_RE.match(s)
    if not m:
        return None
    text = m.group(2)
    num: int | float = int(text) if re.fullmatch(r"[+-]?\d+", text) else float(text)
    return m.group(1), num


def _ref_key(ref: str) -> str:
    """Reduce a reference to a comparable key: any spelling of Patient/x becomes "Patient/x"."""
    ref = _HISTORY_RE.sub("", ref.strip())
    m = _PATIENT_REF_RE.search(ref)
    return f"Patient/{m.group(1)}" if m else ref


@dataclass(frozen=True)
class _Coding:
    system: str | None
    code: str | None
    display: str | None


@dataclass
class _Tally:
    count: int
    loc: str
    what: str


@dataclass
class _Res:
    """One resource found in the input, with where it was found."""

    loc: str
    rtype: str
    res: JsonDict
    full_url: str | None = None
    #: "DiagnosticReport/x" for an Observation found in that report's contained[]
    container: str | None = None
    #: that report, whose subject a contained Observation (which rarely has its own) shares
    parent: JsonDict | None = None


@dataclass
class _Run:
    """Per-call state: the issue list and the bounded tallies of skipped-but-valid content."""

    issues: list[Issue] = field(default_factory=list)
    tallies: dict[tuple[str, str], _Tally] = field(default_factory=dict)
    medications: dict[str, JsonDict] = field(default_factory=dict)
    #: id(observation dict) -> date inherited from the DiagnosticReport / panel that lists it
    inherited_dates: dict[int, str] = field(default_factory=dict)

    def issue(self, loc: str, code: str, msg: str) -> None:
        self.issues.append({"loc": loc, "code": code, "msg": msg})

    def tally(self, code: str, key: str, loc: str, what: str) -> None:
        t = self.tallies.get((code, key))
        if t is None:
            self.tallies[(code, key)] = _Tally(1, loc, what)
        else:
            t.count += 1

    def flush(self) -> None:
        for (code, _key), t in self.tallies.items():
            where = "at" if t.count == 1 else "first at"
            self.issue(t.loc, code, f"{t.count} x {t.what} ({where} {t.loc})")
        self.tallies.clear()

    # -- typed field access; a wrong type is reported and read as absent ----------------------

    def get(self, obj: JsonDict, key: str, kind: type[T], loc: str) -> T | None:
        v = obj.get(key)
        if v is None:
            return None
        if isinstance(v, kind) and not (isinstance(v, bool) and kind is not bool):
            return v
        self.issue(f"{loc}.{key}", "fhir.malformed",
                   f"{key} should be {kind.__name__}, got {_tname(v)}; ignored")
        return None

    def text(self, obj: JsonDict, key: str, loc: str) -> str | None:
        s = self.get(obj, key, str, loc)
        return s if s is not None and s.strip() else None

    def items(self, obj: JsonDict, key: str, loc: str) -> list[tuple[int, JsonDict]]:
        """The objects of an array field. A lone object where an array belongs is accepted (its
        meaning is unambiguous) but reported, since the sender is producing invalid FHIR."""
        v = obj.get(key)
        if v is None:
            return []
        if isinstance(v, dict):
            self.issue(f"{loc}.{key}", "fhir.malformed",
                       f"{key} should be an array, got an object; read as a one-item array")
            return [(0, v)]
        if not isinstance(v, list):
            self.issue(f"{loc}.{key}", "fhir.malformed",
                       f"{key} should be an array, got {_tname(v)}; ignored")
            return []
        out: list[tuple[int, JsonDict]] = []
        for i, x in enumerate(v):
            if isinstance(x, dict):
                out.append((i, x))
            elif x is not None:
                self.issue(f"{loc}.{key}[{i}]", "fhir.malformed",
                           f"{key}[{i}] should be an object, got {_tname(x)}; ignored")
        return out

    def codings(self, obj: JsonDict, key: str, loc: str) -> list[_Coding]:
        cc = self.get(obj, key, dict, loc)
        return [] if cc is None else self.concept(cc, f"{loc}.{key}")

    def concept(self, cc: JsonDict, loc: str) -> list[_Coding]:
        """The codings of a CodeableConcept."""
        out = []
        for i, c in self.items(cc, "coding", loc):
            system, code, display = c.get("system"), c.get("code"), c.get("display")
            if (system is None or system.__class__ is str) and \
                    (code is None or code.__class__ is str) and \
                    (display is None or display.__class__ is str):
                # well-typed (the usual case): what `text` gives, without building locations
                out.append(_Coding(system if system and system.strip() else None,
                                   code.strip() if code and code.strip() else None,
                                   display if display and display.strip() else None))
                continue
            cloc = f"{loc}.coding[{i}]"
            system = self.text(c, "system", cloc)
            code = self.text(c, "code", cloc)
            out.append(_Coding(system, code.strip() if code else None,
                               self.text(c, "display", cloc)))
        return out

    def cc_text(self, obj: JsonDict, key: str, loc: str) -> str | None:
        cc = obj.get(key)
        return self.text(cc, "text", f"{loc}.{key}") if isinstance(cc, dict) else None

    def date(self, obj: JsonDict, key: str, loc: str) -> str | None:
        """An ISO date or date-time, kept exactly as given (the normalizer parses it)."""
        s = self.text(obj, key, loc)
        if s is None:
            return None
        if _is_datetime(s):
            return s
        self.issue(f"{loc}.{key}", "fhir.bad_date",
                   f"{key} {short_repr(s)} is not an ISO date; ignored")
        return None

    def period(self, obj: JsonDict, key: str, loc: str) -> tuple[str | None, str | None]:
        p = self.get(obj, key, dict, loc)
        if p is None:
            return None, None
        return self.date(p, "start", f"{loc}.{key}"), self.date(p, "end", f"{loc}.{key}")

    def first_code(self, obj: JsonDict, key: str, loc: str) -> str | None:
        """First coded value of a status-like CodeableConcept. A bare string is the R3 shape of
        the same field and is accepted as such."""
        v = obj.get(key)
        if isinstance(v, str):
            return v.strip() or None
        for c in self.codings(obj, key, loc):
            if c.code:
                return c.code
        return None


def _code_label(codings: list[_Coding], text: str | None) -> tuple[str, str]:
    """(tally key, human label) for an unmapped code."""
    for c in codings:
        if c.code:
            key = f"{c.system or '?'}|{c.code}"
            # cut, not quoted: codes and display names are shown as sent, but a megabyte-long
            # "display" must not be copied into every report
            return key, cut(key) + (f" ({cut(c.display)})" if c.display else "")
    if text:
        return f"text|{text}", short_repr(text, 200)
    return "none", "no code"



def _source(r: _Res) -> str:
    rid = r.res.get("id")
    if not isinstance(rid, str) or not rid:
        return r.loc
    if r.container:
        return f"{r.container}#{rid}"
    return f"{r.rtype}/{rid}"


# --- walking the input ---------------------------------------------------------------------------

def _collect(run: _Run, doc: object, loc: str, full_url: str | None, depth: int,
             out: list[_Res]) -> None:
    if depth > _MAX_DEPTH:
        run.issue(loc, "fhir.too_deep", f"bundles nested deeper than {_MAX_DEPTH}; ignored")
        return
    if not isinstance(doc, dict):
        run.issue(loc, "fhir.not_an_object", f"expected a FHIR resource, got {_tname(doc)}")
        return
    rtype = doc.get("resourceType")
    if not isinstance(rtype, str) or not rtype.strip():
        run.issue(loc, "fhir.missing_resource_type", "object without a resourceType; ignored")
        return
    if rtype == "Bundle":
        prefix = "" if loc == "$" else loc + "."
        entries = doc.get("entry")
        if entries is None:
            return
        if not isinstance(entries, list):
            run.issue(f"{prefix}entry", "fhir.malformed",
                      f"Bundle.entry should be an array, got {_tname(entries)}; ignored")
            return
        for i, e in enumerate(entries):
            eloc = f"{prefix}entry[{i}]"
            if not isinstance(e, dict):
                run.issue(eloc, "fhir.not_an_object", f"Bundle entry is {_tname(e)}; ignored")
                continue
            res = e.get("resource")
            if res is None:
                # Requests (DELETE) and responses legitimately carry no resource.
                if "request" not in e and "response" not in e:
                    run.issue(eloc, "fhir.empty_entry", "Bundle entry without a resource")
                continue
            fu = e.get("fullUrl")
            _collect(run, res, eloc, fu if isinstance(fu, str) else None, depth + 1, out)
        return
    out.append(_Res(loc, rtype, doc, full_url))
    if rtype == "DiagnosticReport":
        # Lab reports often carry their results only as contained Observations.
        container = _source(out[-1])
        for k, c in run.items(doc, "contained", loc):
            if c.get("resourceType") == "Observation":
                out.append(_Res(f"{loc}.contained[{k}]", "Observation", c, None, container,
                                doc))
    elif rtype == "Medication":
        rid = doc.get("id")
        if isinstance(rid, str) and rid:
            run.medications.setdefault(f"Medication/{rid}", doc)
        if full_url:
            run.medications.setdefault(full_url, doc)


# --- Patient ----------------------------------------------------------------------------------

def _patient_keys(r: _Res) -> set[str]:
    keys: set[str] = set()
    rid = r.res.get("id")
    if isinstance(rid, str) and rid:
        keys.add(f"Patient/{rid}")
    if r.full_url:
        keys.add(r.full_url)
        keys.add(_ref_key(r.full_url))
    return keys


def _patient(run: _Run, r: _Res, out: JsonDict) -> None:
    res, loc = r.res, r.loc
    rid = run.text(res, "id", loc)
    if rid is not None:
        out["id"] = rid
    birth = run.text(res, "birthDate", loc)
    if birth is not None:
        if _is_date(birth.strip()):
            out["birth_date"] = birth.strip()
        else:
            run.issue(f"{loc}.birthDate", "fhir.bad_date",
                      f"birthDate {short_repr(birth)} is not YYYY, YYYY-MM or YYYY-MM-DD; ignored")
    gender = run.text(res, "gender", loc)
    if gender is not None:
        g = gender.strip().lower()
        if g in ("female", "male", "other", "unknown"):
            out["sex"] = g
        else:
            run.issue(f"{loc}.gender", "fhir.bad_value",
                      f"gender {short_repr(gender)} unknown; ignored")


def _subject_key(r: _Res) -> str | None:
    for res in (r.res, r.parent):
        for key in ("subject", "patient"):
            ref = res.get(key) if res is not None else None
            if isinstance(ref, dict):
                s = ref.get("reference")
                if isinstance(s, str) and s.strip():
                    return _ref_key(s)
    return None


# --- Observation ------------------------------------------------------------------------------

def _element_of(run: _Run, codings: list[_Coding], loc: str) -> tuple[str | None, bool]:
    """(element, ambiguous). Codes naming two different elements are a contradiction that no
    mapping can resolve, so the result is reported rather than guessed."""
    found: list[str] = []
    for c in codings:
        if c.code is None:
            continue
        name: str | None = None
        if c.system == LOINC:
            name = _BY_LOINC.get(c.code)
        elif c.system == PROJECT:
            e = ELEMENTS.get(c.code)
            if e is not None and e.kind in _OBSERVABLE_KINDS and e.name not in DEMOGRAPHIC:
                name = e.name
        if name is not None and name not in found:
            found.append(name)
    if len(found) > 1:
        run.issue(loc, "fhir.ambiguous_code",
                  f"codes map to several data elements ({', '.join(found)}); ignored")
        return None, True
    return (found[0] if found else None), False


def _quantity(run: _Run, q: JsonDict, loc: str) -> JsonDict | None:
    value = q.get("value")
    if not _is_number(value):
        run.issue(f"{loc}.value", "fhir.bad_value",
                  f"quantity value should be a number, got {_tname(value)} {value!r}"[:200])
        return None
    out: JsonDict = {"value": value}
    unit = _unit(run, q, loc)
    if unit is not None:
        out["unit"] = unit
    comparator = q.get("comparator")
    if comparator is not None:
        if comparator not in _COMPARATORS:
            run.issue(f"{loc}.comparator", "fhir.bad_value",
                      f"comparator {short_repr(comparator)} is not one of < <= > >=")
            return None
        out["comparator"] = comparator
    return out


def _unit(run: _Run, q: JsonDict, loc: str) -> str | None:
    # The UCUM code is machine-readable where the unit text is free; prefer it when it is UCUM.
    system = run.text(q, "system", loc)
    code = run.text(q, "code", loc)
    unit = run.text(q, "unit", loc)
    if code is not None and system == UCUM:
        return code
    if unit is not None:
        return unit
    if code is not None and system is None:
        return code
    return None


def _result_class(run: _Run, cc: JsonDict, loc: str) -> set[str]:
    """pos / neg / ind readings of a CodeableConcept (codes, then text and displays)."""
    found: set[str] = set()
    for c in run.concept(cc, loc):
        if c.code is not None:
            hit = _RESULT_CODES.get((c.system or "", c.code))
            if hit is None and c.system in V3_INTERPRETATION:
                hit = _RESULT_INTERPRETATION.get(c.code)
            if hit is None and c.system not in (SNOMED, LOINC):
                hit = _RESULT_TEXT.get(_norm_text(c.code))
            if hit is not None:
                found.add(hit)
        if c.display is not None:
            hit = _RESULT_TEXT.get(_norm_text(c.display))
            if hit is not None:
                found.add(hit)
    text = run.text(cc, "text", loc)
    if text is not None and _norm_text(text) in _RESULT_TEXT:
        found.add(_RESULT_TEXT[_norm_text(text)])
    return found


def _one(run: _Run, found: Iterable[T], loc: str, what: str) -> T | None:
    vals = list(dict.fromkeys(found))
    if len(vals) == 1:
        return vals[0]
    if not vals:
        run.issue(loc, "fhir.unmapped_value", f"{what}: value not recognised; ignored")
    else:
        run.issue(loc, "fhir.ambiguous_value",
                  f"{what}: value reads as {', '.join(map(str, vals))}; ignored")
    return None


def _coded_result(run: _Run, el: str, holder: JsonDict, loc: str) -> JsonDict | None:
    table = _RESULT_VALUE["positive" if ELEMENTS[el].values == _POSNEG else "detected"]
    if holder.get("valueCodeableConcept") is not None:
        cc = run.get(holder, "valueCodeableConcept", dict, loc)
        found = _result_class(run, cc, f"{loc}.valueCodeableConcept") if cc is not None else set()
    elif holder.get("valueString") is not None:
        s = run.text(holder, "valueString", loc)
        hit = _RESULT_TEXT.get(_norm_text(s)) if s is not None else None
        found = {hit} if hit is not None else set()
    elif holder.get("valueQuantity") is not None and ELEMENTS[el].values == _DETECT:
        # A viral load is a quantity; the normalizer decides detected / not detected.
        q = run.get(holder, "valueQuantity", dict, loc)
        return _quantity(run, q, f"{loc}.valueQuantity") if q is not None else None
    elif holder.get("valueQuantity") is not None:
        # Serology reported as an index (S/CO) is read through the lab's interpretation flag.
        found = _result_class_list(run, holder, loc)
    else:
        run.issue(loc, "fhir.unmapped_value", f"{el}: unsupported value type; ignored")
        return None
    cls = _one(run, found, loc, el)
    if cls is None:
        return None
    value = table.get(cls)
    if value is None:
        run.issue(loc, "fhir.unmapped_value", f"{el}: result {short_repr(cls)} has no value in "
                  f"{'/'.join(ELEMENTS[el].values)}; ignored")
        return None
    return {"value": value}


def _result_class_list(run: _Run, holder: JsonDict, loc: str) -> set[str]:
    found: set[str] = set()
    for i, cc in run.items(holder, "interpretation", loc):
        found |= _result_class(run, cc, f"{loc}.interpretation[{i}]")
    return found


def _coded_other(run: _Run, el: str, holder: JsonDict, loc: str) -> JsonDict | None:
    """Project-coded categories (donor type, CNS status, disease status): the code, the display
    or the text, spelled like a canonical value."""
    values = ELEMENTS[el].values
    found: list[str] = []
    if holder.get("valueCodeableConcept") is not None:
        for c in run.codings(holder, "valueCodeableConcept", loc):
            for s in (c.code, c.display):
                if s is not None and _norm_value(s) in values:
                    found.append(_norm_value(s))
        t = run.cc_text(holder, "valueCodeableConcept", loc)
        if t is not None and _norm_value(t) in values:
            found.append(_norm_value(t))
    elif holder.get("valueString") is not None:
        s = run.text(holder, "valueString", loc)
        if s is not None and _norm_value(s) in values:
            found.append(_norm_value(s))
    else:
        run.issue(loc, "fhir.unmapped_value", f"{el}: unsupported value type; ignored")
        return None
    value = _one(run, found, loc, el)
    return {"value": value} if value is not None else None


def _boolean(run: _Run, el: str, holder: JsonDict, loc: str) -> JsonDict | None:
    codes = {**_BOOL_CODES, **(_PREGNANCY_CODES if el == "pregnant" else {})}
    texts = {**_BOOL_TEXT, **(_PREGNANCY_TEXT if el == "pregnant" else {})}
    found: list[bool] = []
    if holder.get("valueBoolean") is not None:
        b = run.get(holder, "valueBoolean", bool, loc)
        if b is None:
            return None
        return {"value": b}
    if holder.get("valueCodeableConcept") is not None:
        for c in run.codings(holder, "valueCodeableConcept", loc):
            if c.code is None:
                continue
            hit = codes.get((c.system or "", c.code))
            if hit is None and c.system == PROJECT:
                hit = texts.get(_norm_text(c.code))
            if hit is not None:
                found.append(hit)
        if not found:
            # Text is only a fallback: a coded "unknown" with text "Pregnant?" must stay unknown.
            t = run.cc_text(holder, "valueCodeableConcept", loc)
            if t is not None and _norm_text(t) in texts:
                found.append(texts[_norm_text(t)])
    elif holder.get("valueString") is not None:
        s = run.text(holder, "valueString", loc)
        if s is not None and _norm_text(s) in texts:
            found.append(texts[_norm_text(s)])
    else:
        run.issue(loc, "fhir.unmapped_value", f"{el}: unsupported value type; ignored")
        return None
    value = _one(run, found, loc, el)
    return {"value": value} if value is not None else None


def _number(run: _Run, el: str, holder: JsonDict, loc: str) -> JsonDict | None:
    if holder.get("valueQuantity") is not None:
        q = run.get(holder, "valueQuantity", dict, loc)
        return _quantity(run, q, f"{loc}.valueQuantity") if q is not None else None
    if holder.get("valueInteger") is not None:
        v = holder.get("valueInteger")
        if not isinstance(v, int) or isinstance(v, bool):
            run.issue(f"{loc}.valueInteger", "fhir.bad_value",
                      f"valueInteger should be an integer, got {_tname(v)}")
            return None
        return {"value": v}
    if holder.get("valueString") is not None:
        s = holder.get("valueString")
        parsed = _parse_number(s) if isinstance(s, str) else None
        if parsed is None:
            run.issue(f"{loc}.valueString", "fhir.bad_value",
                      f"{el}: valueString {short_repr(s)} is not a number; ignored"[:200])
            return None
        out: JsonDict = {"value": parsed[1]}
        if parsed[0] is not None:
            out["comparator"] = parsed[0]
        return out
    if holder.get("valueCodeableConcept") is not None:
        found: list[int | float] = []
        for c in run.codings(holder, "valueCodeableConcept", loc):
            if c.code is None:
                continue
            if el == "ecog" and c.system in (LOINC, None) and c.code in _ECOG_ANSWERS:
                found.append(_ECOG_ANSWERS[c.code])
            elif c.system == PROJECT:
                parsed = _parse_number(c.code)
                if parsed is not None and parsed[0] is None:
                    found.append(parsed[1])
        value = _one(run, found, loc, el)
        return {"value": value} if value is not None else None
    run.issue(loc, "fhir.unmapped_value", f"{el}: unsupported value type; ignored")
    return None


def _value(run: _Run, el: str, holder: JsonDict, loc: str) -> JsonDict | None:
    e = ELEMENTS[el]
    if e.kind == "quantity":
        return _number(run, el, holder, loc)
    if e.kind == "boolean":
        return _boolean(run, el, holder, loc)
    if e.values in (_POSNEG, _DETECT):
        return _coded_result(run, el, holder, loc)
    return _coded_other(run, el, holder, loc)


def _range_quantity(run: _Run, rr: JsonDict, key: str, loc: str) -> tuple[object, str | None]:
    q = run.get(rr, key, dict, loc)
    if q is None:
        return None, None
    v = q.get("value")
    if not _is_number(v):
        if v is not None:
            run.issue(f"{loc}.{key}.value", "fhir.bad_value",
                      f"reference range {key} should be a number, got {_tname(v)}; ignored")
        return None, None
    return v, _unit(run, q, f"{loc}.{key}")


def _reference_range(run: _Run, holder: JsonDict, loc: str) -> JsonDict | None:
    for i, rr in run.items(holder, "referenceRange", loc):
        rloc = f"{loc}.referenceRange[{i}]"
        kinds = [c.code for c in run.codings(rr, "type", rloc) if c.code]
        # Only a normal range gives an upper limit of *normal*; a therapeutic or
        # treatment range is something else and would silently corrupt x ULN.
        if kinds and "normal" not in kinds:
            continue
        low, low_unit = _range_quantity(run, rr, "low", rloc)
        high, high_unit = _range_quantity(run, rr, "high", rloc)
        if low is None and high is None:
            continue
        out: JsonDict = {}
        unit = high_unit if high is not None else low_unit
        if low is not None and (high is None or low_unit == high_unit or low_unit is None):
            out["low"] = low
        if high is not None:
            out["high"] = high
        if unit is not None:
            out["unit"] = unit
        return out
    return None


def _obs_date(run: _Run, res: JsonDict, loc: str) -> str | None:
    d = run.date(res, "effectiveDateTime", loc)
    if d is None:
        start, end = run.period(res, "effectivePeriod", loc)
        d = start or end
    return (d or run.date(res, "effectiveInstant", loc) or run.date(res, "issued", loc))


def _report_date(run: _Run, res: JsonDict, loc: str) -> str | None:
    d = run.date(res, "effectiveDateTime", loc) or run.period(res, "effectivePeriod", loc)[0]
    return d or run.date(res, "issued", loc)


def _inherit_dates(run: _Run, found: list[_Res]) -> None:
    """Give undated results the date of the report or panel that lists them.

    Lab feeds (the HL7 general health profile among them) date the DiagnosticReport and leave
    its results (result[] -> panel -> hasMember[]) undated; in FHIR the report's effective time
    is the clinically relevant time of those results, so dropping them would lose real data.
    """
    silent = _Run()  # dates are re-read (and reported) when each resource is mapped
    index: dict[tuple[str | None, str], _Res] = {}
    for r in found:
        if r.rtype != "Observation":
            continue
        rid = r.res.get("id")
        if isinstance(rid, str) and rid:
            if r.container is None:
                index.setdefault((None, f"Observation/{rid}"), r)
            else:
                index.setdefault((r.container, f"#{rid}"), r)
        if r.full_url:
            index.setdefault((None, r.full_url), r)

    def resolve(ref: object, container: str | None) -> _Res | None:
        target = ref.get("reference") if isinstance(ref, dict) else None
        if not isinstance(target, str) or not target:
            return None
        if target.startswith("#"):
            return index.get((container, target)) if container else None
        hit = index.get((None, target))
        if hit is None:
            m = re.search(r"(?:^|/)(Observation/[^/]+?)(?:/_history/[^/]*)?$", target)
            hit = index.get((None, m.group(1))) if m else None
        return hit

    def push(first: _Res, date: str, seen: set[int]) -> None:
        # Iterative: a long hasMember chain must not hit the recursion limit.
        stack = [(first, date)]
        while stack:
            r, inherited = stack.pop()
            if id(r.res) in seen:
                continue  # hasMember cycles exist in the wild
            seen.add(id(r.res))
            own = _obs_date(silent, r.res, r.loc)
            if own is None:
                run.inherited_dates.setdefault(id(r.res), inherited)
            members = r.res.get("hasMember")
            for m in reversed(members) if isinstance(members, list) else []:
                child = resolve(m, r.container)
                if child is not None:
                    stack.append((child, own or inherited))

    for r in found:
        if r.rtype != "DiagnosticReport":
            continue
        date = _report_date(silent, r.res, r.loc)
        results = r.res.get("result")
        if date is None or not isinstance(results, list):
            continue
        container = _source(r)
        seen: set[int] = set()
        for ref in results:
            obs = resolve(ref, container)
            if obs is not None:
                push(obs, date, seen)
    for r in found:
        if r.rtype == "Observation" and isinstance(r.res.get("hasMember"), list):
            own = _obs_date(silent, r.res, r.loc)
            if own is not None:
                push(r, own, set())


def _has_value(holder: JsonDict) -> bool:
    return any(holder.get(k) is not None for k in _VALUE_KEYS)


def _observation(run: _Run, r: _Res, out: JsonDict) -> None:
    res, loc = r.res, r.loc
    codings = run.codings(res, "code", loc)
    element, ambiguous = _element_of(run, codings, f"{loc}.code")
    # (element, value holder, loc, source, coded with a project code)
    targets: list[tuple[str, JsonDict, str, str, bool]] = []
    source = _source(r)
    for k, comp in run.items(res, "component", loc):
        cloc = f"{loc}.component[{k}]"
        ccodings = run.codings(comp, "code", cloc)
        cel, _amb = _element_of(run, ccodings, f"{cloc}.code")
        if cel is not None:
            targets.append((cel, comp, cloc, f"{source} component[{k}]",
                            _via_project(ccodings, cel)))
    if element is None and not targets:
        if not ambiguous:
            key, label = _code_label(codings, run.cc_text(res, "code", loc))
            run.tally("fhir.unmapped_observation", key, loc,
                      f"Observation {label} maps to no data element")
        return
    # A panel whose members sit in component[] has no value of its own: not an error.
    if element is not None and (_has_value(res) or not targets):
        targets.insert(0, (element, res, loc, source, _via_project(codings, element)))
    date = _obs_date(run, res, loc) or run.inherited_dates.get(id(res))
    if date is None:
        run.issue(loc, "fhir.missing_date",
                  "Observation without effective[x] or issued date (none inherited from a "
                  "DiagnosticReport either); ignored")
        return
    status = res.get("status")
    if status is not None and not isinstance(status, str):
        # Read as absent, the result would count as final; it may have said entered-in-error.
        run.issue(f"{loc}.status", "fhir.malformed",
                  f"status should be a string, got {_tname(status)}; Observation ignored")
        return
    for el, holder, hloc, src, via_project in targets:
        if not _has_value(holder):
            reason = run.cc_text(holder, "dataAbsentReason", hloc) or next(
                (c.code for c in run.codings(holder, "dataAbsentReason", hloc) if c.code), None)
            run.issue(hloc, "fhir.missing_value",
                      f"{el}: no value" + (f" (data absent: {reason})" if reason else "")
                      + (f", status {status}" if status else "") + "; ignored")
            continue
        fields = _value(run, el, holder, hloc)
        if fields is None:
            continue
        unit = ELEMENTS[el].unit
        if via_project and unit and "unit" not in fields and holder.get("valueQuantity") is None:
            # A project code fixes its unit (docs/data-elements.md), so a bare number sent
            # under it is in that unit; a bare number under a LOINC code is not (mg/dL or
            # umol/L?) and stays unitless for the normalizer to judge.
            fields["unit"] = unit
        obs: JsonDict = {"element": el, **fields}
        rr = _reference_range(run, holder, hloc)
        if rr is not None:
            obs["reference_range"] = rr
        obs["date"] = date
        if status is not None:
            obs["status"] = status
        obs["source"] = src
        out["observations"].append(obs)


def _via_project(codings: list[_Coding], element: str) -> bool:
    return any(c.system == PROJECT and c.code == element for c in codings)


# --- Condition and AllergyIntolerance --------------------------------------------------------

def _status_field(run: _Run, res: JsonDict, key: str, allowed: tuple[str, ...], loc: str
                  ) -> str | None:
    code = run.first_code(res, key, loc)
    if code is None:
        return None
    if code not in allowed:
        run.issue(f"{loc}.{key}", "fhir.bad_value",
                  f"{key} {short_repr(code)} is not a known status; ignored")
        return None
    return code


def _verification(run: _Run, res: JsonDict, loc: str) -> str | None:
    """The verification status; one that is present but unreadable becomes "unconfirmed".

    Dropping it would make the record count as confirmed, and it may have said "refuted" or
    "entered-in-error"; "unconfirmed" makes the criterion unknown, which is the honest answer.
    """
    if res.get("verificationStatus") is None:
        return None
    code = _status_field(run, res, "verificationStatus", _VERIFICATION_STATUS, loc)
    if code is None:
        run.issue(f"{loc}.verificationStatus", "fhir.unreadable_status",
                  "verificationStatus present but unreadable: recorded as unconfirmed")
        return "unconfirmed"
    return code


def _onset(run: _Run, res: JsonDict, loc: str, out: JsonDict) -> None:
    onset = run.date(res, "onsetDateTime", loc)
    if onset is None:
        onset = run.period(res, "onsetPeriod", loc)[0]
    if onset is None:
        s = run.text(res, "onsetString", loc)
        # onsetString is free text ("childhood"); only an ISO date in it is a date.
        if s is not None and _is_datetime(s.strip()):
            onset = s.strip()
    if onset is not None:
        out["onset"] = onset
        return
    recorded = run.date(res, "recordedDate", loc)
    if recorded is not None:
        # Recorded is an upper bound on onset, not onset; flag it so rules on recency can tell.
        out["onset"] = recorded
        out["onset_from"] = "recordedDate"


def _condition(run: _Run, r: _Res, out: JsonDict) -> None:
    res, loc = r.res, r.loc
    codings = run.codings(res, "code", loc)
    codes: list[dict[str, str]] = []
    for c in codings:
        if c.system in CONDITION_SYSTEMS and c.code is not None:
            entry = {"system": c.system, "code": c.code}
            if entry not in codes:
                codes.append(entry)
    if not codes:
        key, label = _code_label(codings, run.cc_text(res, "code", loc))
        run.tally("fhir.unmapped_condition", key, loc,
                  f"Condition {label} has no SNOMED CT / ICD-10 / project code")
        return
    elements: list[str] = []
    for cd in codes:
        name = condition_for(cd["system"], cd["code"])
        if name is not None and name not in elements:
            elements.append(name)
    base: JsonDict = {}
    _onset(run, res, loc, base)
    abatement = run.date(res, "abatementDateTime", loc) or run.period(
        res, "abatementPeriod", loc)[1]
    if abatement is None:
        s = run.text(res, "abatementString", loc)
        if s is not None and _is_datetime(s.strip()):
            abatement = s.strip()
    if abatement is not None:
        base["abatement"] = abatement
    clinical = _status_field(run, res, "clinicalStatus", _CLINICAL_STATUS, loc)
    if clinical is not None:
        base["clinical_status"] = clinical
    verification = _verification(run, res, loc)
    if verification is not None:
        base["verification_status"] = verification
    base["source"] = _source(r)
    if not elements:
        out["conditions"].append({"codes": codes, **base})
    # Codes naming two elements (rare, e.g. a combined SNOMED concept) are both asserted: an
    # exclusion missed is worse than one shown with its evidence.
    for name in elements:
        out["conditions"].append({"element": name, **base})


def _mentions_blinatumomab(codings: list[_Coding], texts: Iterable[str | None]) -> bool:
    for c in codings:
        if c.system == RXNORM and c.code == _BLINATUMOMAB_RXNORM:
            return True
        if c.display is not None and any(w in c.display.lower() for w in _BLINATUMOMAB_WORDS):
            return True
    return any(t is not None and any(w in t.lower() for w in _BLINATUMOMAB_WORDS) for t in texts)


def _allergy(run: _Run, r: _Res, out: JsonDict) -> None:
    res, loc = r.res, r.loc
    codings = run.codings(res, "code", loc)
    texts = [run.cc_text(res, "code", loc)]
    all_codings = list(codings)
    for i, reaction in run.items(res, "reaction", loc):
        rloc = f"{loc}.reaction[{i}]"
        all_codings += run.codings(reaction, "substance", rloc)
        texts.append(run.cc_text(reaction, "substance", rloc))
    if not _mentions_blinatumomab(all_codings, texts):
        key, label = _code_label(codings, texts[0])
        run.tally("fhir.unmapped_allergy", key, loc,
                  f"AllergyIntolerance {label} is not a screened hypersensitivity")
        return
    cond: JsonDict = {"element": "blinatumomab_hypersensitivity"}
    onset = run.date(res, "onsetDateTime", loc)
    if onset is None:
        onset = run.period(res, "onsetPeriod", loc)[0]
    if onset is not None:
        cond["onset"] = onset
    else:
        recorded = run.date(res, "recordedDate", loc)
        if recorded is not None:
            cond["onset"] = recorded
            cond["onset_from"] = "recordedDate"
    # AllergyIntolerance uses active / inactive / resolved, a subset of the condition statuses.
    clinical = _status_field(run, res, "clinicalStatus", _CLINICAL_STATUS, loc)
    if clinical is not None:
        cond["clinical_status"] = clinical
    verification = _verification(run, res, loc)
    if verification is not None:
        cond["verification_status"] = verification
    cond["source"] = _source(r)
    out["conditions"].append(cond)


# --- MedicationStatement / MedicationAdministration ------------------------------------------

def _medication_concept(run: _Run, r: _Res) -> tuple[list[_Coding], list[str | None]]:
    res, loc = r.res, r.loc
    codings = run.codings(res, "medicationCodeableConcept", loc)
    texts: list[str | None] = [run.cc_text(res, "medicationCodeableConcept", loc)]
    ref = run.get(res, "medicationReference", dict, loc)
    if ref is not None:
        texts.append(run.text(ref, "display", f"{loc}.medicationReference"))
        target = run.text(ref, "reference", f"{loc}.medicationReference")
        med: JsonDict | None = None
        if target is not None and target.startswith("#"):
            for _k, c in run.items(res, "contained", loc):
                if c.get("resourceType") == "Medication" and c.get("id") == target[1:]:
                    med = c
                    break
        elif target is not None:
            med = run.medications.get(target) or run.medications.get(
                re.sub(r"^.*?(Medication/[^/]+)(/_history/.*)?$", r"\1", target))
        if med is not None:
            codings = codings + run.codings(med, "code", f"{loc}.medicationReference")
            texts.append(run.cc_text(med, "code", f"{loc}.medicationReference"))
    return codings, texts


def _medication(run: _Run, r: _Res, out: JsonDict) -> None:
    res, loc = r.res, r.loc
    codings, texts = _medication_concept(run, r)
    if not _mentions_blinatumomab(codings, texts):
        key, label = _code_label(codings, next((t for t in texts if t), None))
        run.tally("fhir.unmapped_medication", key, loc,
                  f"{r.rtype} {label} is not a screened therapy")
        return
    status = run.text(res, "status", loc)
    if status in _MEDICATION_SKIP_STATUS:
        run.issue(loc, "fhir.not_given", f"blinatumomab {r.rtype} with status {status}; ignored")
        return
    start = end = run.date(res, "effectiveDateTime", loc)
    if start is None:
        start, end = run.period(res, "effectivePeriod", loc)
    exposure: JsonDict = {"element": "blinatumomab"}
    # Whatever dates exist are kept: an open period (ongoing therapy) has no end, and even a
    # dateless record still proves that the drug was given, which exclusions care about.
    if start is not None:
        exposure["start"] = start
    if end is not None:
        exposure["end"] = end
    if start is None:
        run.issue(loc, "fhir.missing_date",
                  f"blinatumomab {r.rtype} without a start date: kept, exposure days unknown")
    exposure["source"] = _source(r)
    out["exposures"].append(exposure)


# --- entry points ---------------------------------------------------------------------------

_HANDLERS = {
    "Observation": _observation,
    "Condition": _condition,
    "AllergyIntolerance": _allergy,
    "MedicationStatement": _medication,
    "MedicationAdministration": _medication,
}


def _build(run: _Run, found: list[_Res]) -> JsonDict:
    patient: JsonDict = {}
    out: JsonDict = {"observations": [], "conditions": [], "exposures": []}
    _inherit_dates(run, found)
    patients = [r for r in found if r.rtype == "Patient"]
    own: set[str] = set()
    others: set[str] = set()
    if patients:
        _patient(run, patients[0], patient)
        own = _patient_keys(patients[0])
        extra = [r for r in patients[1:] if not (_patient_keys(r) & own)]
        for r in extra:
            others |= _patient_keys(r)
        others -= own
        if extra:
            run.issue(extra[0].loc, "fhir.extra_patient",
                      f"{len(extra)} further Patient resource(s) ignored (first at "
                      f"{extra[0].loc}); the first Patient ({patients[0].loc}) is screened")
    else:
        run.issue("$", "fhir.no_patient", "no Patient resource: birth date and sex unknown")
    for r in found:
        # Used elsewhere: Medication resolves medicationReference, DiagnosticReport dates and
        # contains results; neither is "ignored".
        if r.rtype in ("Patient", "Medication", "DiagnosticReport"):
            continue
        handler = _HANDLERS.get(r.rtype)
        if handler is None:
            run.tally("fhir.ignored_resource", r.rtype, r.loc,
                      f"{r.rtype} resource not used for screening")
            continue
        if others:
            subject = _subject_key(r)
            if subject is not None and subject in others:
                run.tally("fhir.other_patient", "", r.loc,
                          "resource about another Patient in the input ignored")
                continue
        try:
            handler(run, r, out)
        except Exception as exc:  # noqa: BLE001 - the no-crash contract outranks one resource
            run.issue(r.loc, "fhir.internal_error",
                      f"{r.rtype} could not be mapped ({type(exc).__name__}); ignored")
    run.flush()
    return {**patient, **out}


def resources_to_patient(resources: list[Any]) -> tuple[JsonDict, list[Issue]]:
    """Map a list of FHIR values (Bundles, single resources or nulls: the shape of a CDS Hooks
    prefetch) to (canonical patient dict, issues)."""
    run = _Run()
    found: list[_Res] = []
    if isinstance(resources, list):
        for i, item in enumerate(resources):
            if item is not None:  # an empty prefetch slot is normal, not an error
                _collect(run, item, f"[{i}]", None, 0, found)
    else:
        run.issue("$", "fhir.not_an_object",
                  f"expected a list of FHIR resources, got {_tname(resources)}")
    return _build(run, found), _listed(run.issues)


#: issues listed per document; the rest are counted in one last issue (a 2 MiB Bundle of
#: 10,000 distinct unmapped codes gave 1.6 MB of issues in every answer)
MAX_ISSUES = 200


def _listed(issues: list[Issue]) -> list[Issue]:
    if len(issues) <= MAX_ISSUES:
        return issues
    return issues[:MAX_ISSUES] + [{"loc": "$", "code": "fhir.more_issues",
                                   "msg": f"{len(issues) - MAX_ISSUES} more issues not listed"}]


def bundle_to_patient(doc: object) -> tuple[JsonDict, list[Issue]]:
    """Map a FHIR R4 Bundle (any type, nested Bundles included), a single resource or a list of
    resources to (canonical patient dict, issues). Never raises on content."""
    if isinstance(doc, list):
        return resources_to_patient(doc)
    run = _Run()
    found: list[_Res] = []
    _collect(run, doc, "$", None, 0, found)
    return _build(run, found), _listed(run.issues)
