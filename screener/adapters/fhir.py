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
- An Observation of a catalogue element whose value cannot be read (text that is no number or
  known answer, valueRange, a wrong JSON type, an unknown code, a value contradicting its
  interpretation flag, a log10 viral load of 0), or that has no date, is NOT skipped: skipped,
  an older result would decide. It is passed on (with its date, status and source when it has
  them) with a value the normalizer cannot use ("unreadable: ..."), so that the normalizer's
  rule applies: an unusable result hides older results of its element, an undated one all of
  them. Only an Observation with no value at all (dataAbsentReason) is skipped.
- Reference ranges: only ranges whose appliesTo (sex) and age may fit the patient; if those
  left disagree on the upper limit, none is passed on (x ULN becomes unknown).
- Repeated resources (one type and id): identical copies count once; of differing versions
  only the clearly latest (meta.versionId / meta.lastUpdated) is used, else all are passed on
  as unusable (Observation status "unknown", Condition "unconfirmed", exposure without dates).
  Same-id Patients that disagree on birthDate or gender leave that field out. Results listed by
  an entered-in-error / cancelled DiagnosticReport or panel get status "unknown".
- The screened patient: the first Patient, or the one named by the caller (CDS Hooks: the
  verified patient in context). A resource whose subject is another Patient id (present or not)
  or an unresolved ``urn:`` reference is dropped with an issue.
- A visibly incomplete search result (next page, total above the matches, OperationOutcome):
  its observations and blinatumomab days are made unusable, since newer ones may not be sent.
- Pregnancy: an active pregnancy Condition is `pregnant` = true at its onset; a negative hCG
  test is `pregnant` = false, a positive one an unusable pregnancy status (not ruled out).
- Plain dict access on purpose: FHIR model libraries are 10-1000x slower and reject the very
  resources we must survive.
"""

from __future__ import annotations

import calendar
import datetime as dt
import json
import math
import re
from collections.abc import Callable, Iterable
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

__all__ = ["bundle_to_patient", "resources_to_patient", "searchset_incomplete"]

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
# v3 ObservationInterpretation: RR reactive, NR non-reactive; WR (weakly reactive) and E
# (equivocal) decide nothing and read as indeterminate.
_RESULT_INTERPRETATION = {"POS": "pos", "DET": "pos", "NEG": "neg", "ND": "neg", "IND": "ind",
                          "RR": "pos", "NR": "neg", "WR": "ind", "E": "ind"}
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
    # "indeterminate" is no detected / not_detected value: the normalizer reads it as an
    # uninformative result, which hides older results instead of letting them decide
    "detected": {"pos": "detected", "neg": "not_detected", "ind": "indeterminate"},
}
# Viral loads reported in log10 units (HBV DNA 48398-2, HCV RNA 38180-6): 0 means 1 IU/mL, and
# labs also write 0 for "not detected", so only a plain positive number is read (as detected).
_LOG_LOINC = ("48398-2", "38180-6")

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
    (LOINC, "LA15173-0"): True,     # Pregnant (LOINC answer list LL4129-4)
    (LOINC, "LA26683-5"): False,    # Not pregnant (LA4489-6 Unknown stays unusable)
}
_PREGNANCY_TEXT = {"pregnant": True, "not pregnant": False}
# Pregnancy tests (hCG presence, urine / serum): a negative one is a "not pregnant" status; a
# positive one does not prove pregnancy (it may be a tumour marker or a recent loss) but does not
# rule it out either, so it becomes an unusable pregnancy status (the criterion is unknown).
_HCG_LOINC = ("2106-3", "2118-8")
#: LOINC codes read for an element besides its catalogue codes (ELEMENTS[name].loinc): a CDS
#: Hooks prefetch must ask for these too, or a positive test would never be sent
EXTRA_LOINC: dict[str, tuple[str, ...]] = {"pregnant": _HCG_LOINC}
# Conditions that say "currently pregnant" (ICD-10 entries are prefixes, dots removed): an
# active one becomes a `pregnant` = true observation dated at its onset.
_PREGNANCY_SNOMED = ("77386006", "72892002")
_PREGNANCY_ICD10 = ("Z331", "Z34")
#: value given to an observation whose FHIR value cannot be read: no number, boolean or coded
#: value, so the normalizer finds it unusable and it hides older results of its element
#: (docs/patient-format.md) instead of letting them decide
_UNREADABLE = "unreadable"

_BLINATUMOMAB_RXNORM = "1603296"
_BLINATUMOMAB_WORDS = ("blinatumomab", "blincyto")

_COMPARATORS = ("<", "<=", ">", ">=")
_CLINICAL_STATUS = ("active", "recurrence", "relapse", "inactive", "remission", "resolved")
_ENDED_STATUS = ("inactive", "remission", "resolved")
_VERIFICATION_STATUS = ("unconfirmed", "provisional", "differential", "confirmed", "refuted",
                        "entered-in-error")
# An exposure has no status field, so these must be decided here.
_MEDICATION_SKIP_STATUS = ("entered-in-error", "not-done", "not-taken", "intended")
#: statuses that say the drug was (or is being) given; any other (unknown, none, a status of
#: another resource) leaves it open: kept, with the days unknown
_MEDICATION_GIVEN_STATUS = ("active", "completed", "stopped", "on-hold", "in-progress")

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
_TYPE_ID_RE = re.compile(r"(?:^|/)([A-Z][A-Za-z]+/[^/]+?)(?:/_history/[^/]*)?$")


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
    inherited: dict[int, _Times] = field(default_factory=dict)
    #: id(resource dict) -> (issue code, why) it cannot be used as it stands: a result listed by
    #: a retracted report or panel, or one of several differing versions of one resource
    doubtful: dict[int, tuple[str, str]] = field(default_factory=dict)
    #: "Type/id" of resources deleted by a history Bundle entry (request DELETE)
    deleted: set[str] = field(default_factory=set)
    #: the screened Patient's sex and birth date (reference range applicability)
    sex: str | None = None
    birth: str | None = None
    #: canonical `incomplete` keys (sections, elements) -> why: what may not have been sent
    incomplete: dict[str, list[str]] = field(default_factory=dict)

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

def searchset_incomplete(doc: object) -> str | None:
    """Why a Bundle is visibly not the whole search result, or None: a `next` page link (any
    Bundle type), or, in a searchset, a `total` above the matches sent or an OperationOutcome
    entry (the server reporting a truncated or partly failed search)."""
    if not isinstance(doc, dict) or doc.get("resourceType") != "Bundle":
        return None
    why: list[str] = []
    links = doc.get("link")
    if isinstance(links, list) and any(isinstance(k, dict) and k.get("relation") == "next"
                                       for k in links):
        why.append("a next-page link")
    if doc.get("type") == "searchset":
        entries = doc.get("entry")
        entries = [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []
        resources = [e.get("resource") for e in entries]
        outcome = sum(isinstance(r, dict) and r.get("resourceType") == "OperationOutcome"
                      for r in resources)
        matches = sum(isinstance(r, dict) and r.get("resourceType") != "OperationOutcome"
                      and not (isinstance(e.get("search"), dict)
                               and e["search"].get("mode") in ("include", "outcome"))
                      for e, r in zip(entries, resources, strict=True))
        total = doc.get("total")
        if isinstance(total, int) and not isinstance(total, bool) and total > matches:
            why.append(f"total {total} but {matches} sent")
        if outcome:
            why.append("an OperationOutcome entry")
    return ", ".join(why) or None


#: what a resource type may supply, as keys of the canonical patient's `incomplete` (a
#: section, or an element read from that type). A search of it that was not sent whole (or a
#: CDS Hooks prefetch of it that was not sent) leaves those unknown.
SUPPLIES: dict[str, tuple[str, ...]] = {
    "Observation": ("observations",),
    "DiagnosticReport": ("observations",),
    # a pregnancy is also recorded as a Condition (see _pregnancy_condition)
    "Condition": ("conditions", "pregnant"),
    "MedicationStatement": ("exposures",),
    "MedicationAdministration": ("exposures",),
    "MedicationRequest": ("exposures",),
    "MedicationDispense": ("exposures",),
    "AllergyIntolerance": ("blinatumomab_hypersensitivity",),
}
#: a search whose resource type cannot be told: anything may be missing
_ANYTHING = ("observations", "conditions", "exposures")


def supplied_by(resource_type: str | None) -> tuple[str, ...]:
    """`incomplete` keys for what a search of `resource_type` may hold (all, if not known, or
    for a search of Bundles, which may hold anything)."""
    if resource_type is None or resource_type == "Bundle":
        return _ANYTHING
    return SUPPLIES.get(resource_type, ())


_SEARCH_TYPE_RE = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/?$")


def _searched_types(doc: JsonDict) -> set[str | None]:
    """The resource type a search Bundle was for: from its `self` link (`.../Observation?...`),
    else from its matches when they are all of one type; {None} (anything) for a search of
    several types (`_type=`, `$everything`, matches of different types) or one that says
    nothing."""
    links = doc.get("link")
    for k in links if isinstance(links, list) else []:
        url = k.get("url") if isinstance(k, dict) and k.get("relation") == "self" else None
        if not isinstance(url, str):
            continue
        path, _, query = url.partition("?")
        m = _SEARCH_TYPE_RE.search(path.strip())
        if "$" in path or "_type=" in query or m is None:
            return {None}
        return {m.group(1)}
    types: set[str | None] = set()
    entries = doc.get("entry")
    for e in entries if isinstance(entries, list) else []:
        res = e.get("resource") if isinstance(e, dict) else None
        mode = e.get("search", {}).get("mode") if isinstance(e, dict) and isinstance(
            e.get("search"), dict) else None
        t = res.get("resourceType") if isinstance(res, dict) else None
        if isinstance(t, str) and t != "OperationOutcome" and mode in (None, "match"):
            types.add(t)
    return types if len(types) == 1 else {None}


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
        why = searchset_incomplete(doc)
        if why is not None:
            # More results exist than were sent: a newer result, a pregnancy or more days of
            # therapy may be among them, whether or not this page shows that element at all,
            # so everything a search of these types may hold is unknown (`incomplete`).
            keys = sorted({k for t in _searched_types(doc) for k in supplied_by(t)})
            for key in keys:
                run.incomplete.setdefault(key, []).append(f"search result {loc} is incomplete "
                                                          f"({why})")
            run.issue(loc, "fhir.incomplete_searchset",
                      f"search result incomplete ({why}): results not sent may be newer or "
                      f"add to what was sent, so {', '.join(keys) or 'what it holds'} "
                      "cannot be decided from it")
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
                req = e.get("request")
                if isinstance(req, dict) and req.get("method") == "DELETE" and \
                        isinstance(req.get("url"), str):
                    m = _TYPE_ID_RE.search(req["url"].split("?")[0].strip())
                    if m:
                        # a history Bundle: every version of that resource is in doubt
                        run.deleted.add(m.group(1))
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
    dead = res.get("deceasedBoolean") is True or res.get("deceasedDateTime") is not None
    if dead:
        # not a screening question the rules answer, but nobody should be offered a trial
        # on a report that does not say so
        run.issue(loc, "fhir.deceased", "the Patient is recorded as deceased"
                  + (f" ({short_repr(res.get('deceasedDateTime'))})"
                     if res.get("deceasedDateTime") is not None else ""))


def _has_subject(r: _Res) -> bool:
    """Whether the resource (or the report holding it) names a subject / patient at all."""
    return any(res is not None and res.get(key) is not None
               for res in (r.res, r.parent) for key in ("subject", "patient"))


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

def _element_of(run: _Run, codings: list[_Coding], loc: str) -> tuple[str | None, list[str]]:
    """(element, every element named). Codes naming two different elements are a contradiction
    that no mapping can resolve: no element, and the caller passes the result on as unusable for
    each element named rather than guess."""
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
                  f"codes map to several data elements ({', '.join(found)}); passed on as an "
                  f"unusable result of each")
        return None, found
    return (found[0] if found else None), found


#: LOINC codes of urea (not urea nitrogen) in mass units: Urea [Mass/volume] in Serum or Plasma
_UREA_MASS_LOINC = frozenset({"3091-6"})


def _is_urea_mass(run: _Run, holder: JsonDict, loc: str) -> bool:
    # (read silently: the codes were read, and their problems reported, already)
    codes = {c.code for c in _Run().codings(holder, "code", loc) if c.system == LOINC}
    return bool(codes & _UREA_MASS_LOINC) and not (codes - _UREA_MASS_LOINC) & set(
        ELEMENTS["bun"].loinc)


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
        run.issue(loc, "fhir.unmapped_value", f"{what}: value not recognised; unusable")
    else:
        run.issue(loc, "fhir.ambiguous_value",
                  f"{what}: value reads as {', '.join(map(str, vals))}; unusable")
    return None


def _coded_or_text_class(run: _Run, holder: JsonDict, loc: str) -> set[str] | None:
    """Result classes (pos / neg / ind) read from valueCodeableConcept or valueString; None
    when the value is neither."""
    if holder.get("valueCodeableConcept") is not None:
        cc = run.get(holder, "valueCodeableConcept", dict, loc)
        return _result_class(run, cc, f"{loc}.valueCodeableConcept") if cc is not None else set()
    if holder.get("valueString") is not None:
        s = run.text(holder, "valueString", loc)
        hit = _RESULT_TEXT.get(_norm_text(s)) if s is not None else None
        return {hit} if hit is not None else set()
    return None


def _coded_result(run: _Run, el: str, holder: JsonDict, loc: str) -> JsonDict | None:
    table = _RESULT_VALUE["positive" if ELEMENTS[el].values == _POSNEG else "detected"]
    # The lab's interpretation flag: it must agree with the value (a "Negative" flagged POS is
    # a contradiction that no reading resolves).
    interp = _result_class_list(run, holder, loc)
    read = _coded_or_text_class(run, holder, loc)
    if read is not None:
        found = read
    elif holder.get("valueQuantity") is not None and ELEMENTS[el].values == _DETECT:
        # A viral load is a quantity; the normalizer decides detected / not detected.
        q = run.get(holder, "valueQuantity", dict, loc)
        fields = _quantity(run, q, f"{loc}.valueQuantity") if q is not None else None
        return _viral_load(run, el, holder, loc, fields, interp) if fields is not None else None
    elif holder.get("valueQuantity") is not None:
        # Serology reported as an index (S/CO) is read through the lab's interpretation flag.
        found = set(interp)
    else:
        run.issue(loc, "fhir.unmapped_value", f"{el}: unsupported value type; unusable")
        return None
    cls = _one(run, found, loc, el)
    if cls is None:
        return None
    if interp and interp != {cls}:
        run.issue(loc, "fhir.ambiguous_value", f"{el}: value reads {_WORD[cls]} but "
                  f"interpretation {_words(interp)}; unusable")
        return None
    value = table.get(cls)
    if value is None:
        run.issue(loc, "fhir.unmapped_value", f"{el}: result {short_repr(cls)} has no value in "
                  f"{'/'.join(ELEMENTS[el].values)}; unusable")
        return None
    return {"value": value}


def _viral_load(run: _Run, el: str, holder: JsonDict, loc: str, fields: JsonDict,
                interp: set[str]) -> JsonDict | None:
    """A viral load quantity, checked against log units and the interpretation flag."""
    value, comparator = fields["value"], fields.get("comparator")
    unit = fields.get("unit")
    codes = [c.code for c in _Run().codings(holder, "code", loc)]
    if any(c in _LOG_LOINC for c in codes) or (isinstance(unit, str) and "log" in unit.lower()):
        if comparator is not None or not value > 0:
            run.issue(f"{loc}.valueQuantity", "fhir.bad_value",
                      f"{el}: {comparator or ''}{value} in log10 units (0 is 1 IU/mL, and some "
                      f"labs write 0 for not detected); unusable")
            return None
        fields = {"value": "detected"}  # a positive log10 load was measured, so detected
        reading: str | None = "pos"
    elif comparator in (">", ">=") or (comparator is None and value > 0):
        reading = "pos"
    elif comparator is None and value == 0:
        reading = "neg"
    else:
        reading = None
    if interp and reading is not None and interp != {reading}:
        run.issue(loc, "fhir.ambiguous_value", f"{el}: quantity {comparator or ''}{value} reads "
                  f"{_WORD[reading]} but interpretation {_words(interp)}; unusable")
        return None
    return fields


_WORD = {"pos": "positive", "neg": "negative", "ind": "indeterminate"}


def _interpretation_only(run: _Run, el: str, holder: JsonDict, loc: str) -> JsonDict | None:
    """An antibody test reported by its interpretation alone (POS / NEG / IND): that value."""
    if ELEMENTS[el].values != _POSNEG:
        return None
    interp = _result_class_list(_Run(), holder, loc)
    if len(interp) != 1:
        return None
    value = _RESULT_VALUE["positive"].get(next(iter(interp)))
    return {"value": value} if value is not None else None


def _words(classes: set[str]) -> str:
    return "/".join(_WORD.get(c, c) for c in sorted(classes))


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
        run.issue(loc, "fhir.unmapped_value", f"{el}: unsupported value type; unusable")
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
        run.issue(loc, "fhir.unmapped_value", f"{el}: unsupported value type; unusable")
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
                      f"{el}: valueString {short_repr(s)} is not a number; unusable"[:200])
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
    run.issue(loc, "fhir.unmapped_value", f"{el}: unsupported value type; unusable")
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


def _reference_range(run: _Run, holder: JsonDict, loc: str, on: str | None
                     ) -> JsonDict | None:
    """The normal range that applies to this patient, or None.

    Ranges of another type (therapeutic, treatment) and ranges whose appliesTo / age exclude the
    patient are left out; a range whose applicability cannot be decided (no sex or birth date,
    another population such as pregnancy) could apply. If the ranges left disagree on the upper
    limit, none is given (with an issue): the x ULN comparison becomes unknown rather than use
    the first one, which may belong to the other sex or to children.
    """
    candidates: list[tuple[int, JsonDict]] = []
    excluded = 0
    for i, rr in run.items(holder, "referenceRange", loc):
        rloc = f"{loc}.referenceRange[{i}]"
        kinds = [c.code for c in run.codings(rr, "type", rloc) if c.code]
        if not kinds and rr.get("type") is not None:
            # a type given only as text ("Critical", "Therapeutic"): normal only if it says so
            text = _norm_text(run.cc_text(rr, "type", rloc) or "")
            normal = any(w in text for w in ("normal", "reference", "ref"))
            other = any(w in text for w in ("critical", "panic", "therapeutic", "toxic",
                                            "alert", "treatment"))
            kinds = ["normal" if normal and not other else "other"]
        # Only a normal range gives an upper limit of *normal*; a therapeutic or
        # treatment range is something else and would silently corrupt x ULN.
        if kinds and "normal" not in kinds:
            continue
        low, low_unit = _range_quantity(run, rr, "low", rloc)
        high, high_unit = _range_quantity(run, rr, "high", rloc)
        if low is None and high is None:
            continue
        if not _range_could_apply(run, rr, rloc, on):
            excluded += 1
            continue
        out: JsonDict = {}
        unit = high_unit if high is not None else low_unit
        if low is not None and (high is None or low_unit == high_unit or low_unit is None):
            out["low"] = low
        if high is not None:
            out["high"] = high
        if unit is not None:
            out["unit"] = unit
        candidates.append((i, out))
    # 1.2 and 1.20 are one limit; a range without an upper limit differs from one with
    highs = {(Decimal(str(c["high"])), str(c.get("unit"))) if "high" in c else None
             for _i, c in candidates}
    if len(highs) > 1:
        shown = ", ".join(f"[{i}] high {c.get('high')} {c.get('unit') or ''}".rstrip()
                          for i, c in candidates)
        run.issue(f"{loc}.referenceRange", "fhir.ambiguous_range",
                  cut(f"reference ranges that could apply to this patient disagree on the upper "
                      f"limit ({shown}); passed on as unusable"))
        # a range the normalizer cannot use (not an absent one, which a site default ULN
        # could stand in for): the x ULN criterion is unknown
        return {"high": "ambiguous: several ranges could apply"}
    if not candidates and excluded:
        run.issue(f"{loc}.referenceRange", "fhir.ambiguous_range",
                  "no reference range applies to this patient (appliesTo / age)")
        return {"high": "none of the ranges applies to this patient"}
    return candidates[0][1] if candidates else None


_GENDER_SYSTEMS = {
    "http://hl7.org/fhir/administrative-gender": {"male": "male", "female": "female"},
    "http://terminology.hl7.org/CodeSystem/v3-AdministrativeGender": {"M": "male", "F": "female"},
    SNOMED: {"248153007": "male", "248152002": "female"},
}
_AGE_UNITS = {"a": "a", "y": "a", "yr": "a", "yrs": "a", "year": "a", "years": "a", "mo": "mo",
              "month": "mo",
              "months": "mo", "wk": "wk", "week": "wk", "weeks": "wk", "d": "d", "day": "d",
              "days": "d"}


def _range_could_apply(run: _Run, rr: JsonDict, loc: str, on: str | None) -> bool:
    """False only when the range's appliesTo or age clearly excludes this patient."""
    silent = _Run()  # the range was already checked for shape; applicability is best effort
    for _k, cc in silent.items(rr, "appliesTo", loc):
        sexes = set()
        other = False
        for c in silent.concept(cc, loc):
            sex = _GENDER_SYSTEMS.get(c.system or "", {}).get(c.code or "")
            if sex is not None:
                sexes.add(sex)
            else:
                other = True
        if not sexes and not other:
            t = silent.text(cc, "text", loc)
            if t is not None and _norm_text(t) in ("male", "female"):
                sexes.add(_norm_text(t))
        # one concept: its codings are spellings of it; a sex coding beside an unknown one is
        # still that sex
        if len(sexes) == 1 and run.sex in ("male", "female") and run.sex not in sexes:
            return False
    age = silent.get(rr, "age", dict, loc)
    if age is not None and run.birth is not None and on is not None:
        low = _age_bound(silent, age, "low", loc)
        high = _age_bound(silent, age, "high", loc)
        if low is False or high is False:
            return True  # unreadable: cannot decide
        for bound, is_low in ((low, True), (high, False)):
            if not isinstance(bound, tuple):
                continue
            value, unit = bound
            span = _age_span(run.birth, on, unit)
            if span is None:
                return True
            if (is_low and span[1] < value) or (not is_low and span[0] > value):
                return False
    return True


def _age_bound(run: _Run, age: JsonDict, key: str, loc: str
               ) -> tuple[float, str] | bool | None:
    """(value, unit) of one end of Range age; None if absent, False if unreadable."""
    q = run.get(age, key, dict, loc)
    if q is None:
        return None
    v = q.get("value")
    unit = _unit(run, q, loc)
    u = _AGE_UNITS.get(unit.strip().lower()) if unit else None
    if not isinstance(v, (int, float, Decimal)) or not _is_number(v) or u is None:
        return False
    try:
        return float(v), u
    except OverflowError:   # 10**400 days: no age; the range may apply
        return False


def _age_span(birth: str, on: str, unit: str) -> tuple[int, int] | None:
    """(least, greatest) completed age in `unit` at `on`, allowing for partial dates and a day
    of time-zone slack; None if a date cannot be read."""

    def bounds(s: str) -> tuple[dt.date, dt.date] | None:
        m = _DATE_RE.match(s[:10]) if len(s) >= 4 else None
        if not m or not _valid_date_parts(m.group(1), m.group(2), m.group(3)):
            return None
        y = int(m.group(1))
        if y < 1:
            return None
        if m.group(2) is None:
            return dt.date(y, 1, 1), dt.date(y, 12, 31)
        mo = int(m.group(2))
        if m.group(3) is None:
            return dt.date(y, mo, 1), dt.date(y, mo, calendar.monthrange(y, mo)[1])
        d = dt.date(y, mo, int(m.group(3)))
        return d, d

    b, o = bounds(birth), bounds(on)
    if b is None or o is None:
        return None
    slack = dt.timedelta(days=1 if len(on) > 10 else 0)
    try:
        early, late = o[0] - slack, o[1] + slack
    except OverflowError:
        return None

    def completed(born: dt.date, at: dt.date) -> int:
        if unit == "a":
            return at.year - born.year - ((at.month, at.day) < (born.month, born.day))
        if unit == "mo":
            return (at.year - born.year) * 12 + at.month - born.month - (at.day < born.day)
        days = (at - born).days
        return days // 7 if unit == "wk" else days

    return completed(b[1], early), completed(b[0], late)


#: the choice type abatement[x] of a Condition (abatementBoolean: STU3, still sent)
_ABATEMENT_KEYS = ("abatementDateTime", "abatementAge", "abatementPeriod", "abatementRange",
                   "abatementString", "abatementBoolean")
#: the choice type effective[x] of an Observation (and a DiagnosticReport's two of them)
_EFFECTIVE_KEYS = ("effectiveDateTime", "effectivePeriod", "effectiveInstant", "effectiveTiming")


def _effective(run: _Run, res: JsonDict, loc: str) -> tuple[str | None, bool]:
    """(date, stated): the effective[x] date (a period's start, else its end), and whether an
    effective[x] was given at all. Stated but unreadable (`2026-02-30`, a Timing, a number)
    means when the result was taken is not known: it is then neither dated by `issued` (the
    release time, which can be weeks later and move a result into a window) nor by the report
    that lists it; passed on undated, the result is unusable (see `_obs_date_status`)."""
    d = run.date(res, "effectiveDateTime", loc)
    if d is None:
        start, end = run.period(res, "effectivePeriod", loc)
        d = start or end
    d = d or run.date(res, "effectiveInstant", loc)
    return d, d is not None or any(res.get(k) is not None for k in _EFFECTIVE_KEYS)


_Resolver = Callable[[object, str | None], _Res | None]


def _observation_resolver(found: list[_Res]) -> _Resolver:
    """A function (reference, container) -> the Observation it names in the input, or None."""
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

    return resolve


#: the times a result has or inherits: (effective date, whether an effective time was stated
#: at all (an unreadable one gives (None, True)), issued date)
_Times = tuple[str | None, bool, str | None]


def _own_times(res: JsonDict) -> _Times:
    silent = _Run()  # dates are read (and reported) again when each resource is mapped
    d, stated = _effective(silent, res, "")
    return d, stated, silent.date(res, "issued", "")


#: the times of a result two reports or panels give differently: stated, and unreadable
_CONFLICTING: _Times = (None, True, None)


def _passed_down(own: _Times, inherited: _Times | None) -> _Times:
    """What a report or panel passes to the results it lists: the nearest effective time
    stated (its own, else what it inherited; unreadable stays unreadable), and the nearest
    issued date."""
    eff, stated, issued = own
    up_issued = inherited[2] if inherited is not None else None
    if not stated and inherited is not None and inherited[1]:
        eff, stated = inherited[0], True
    return eff, stated, issued or up_issued


def _date_of(own: _Times, inherited: _Times | None) -> str | None:
    """A result's date: its own effective time; else the effective time of the report or panel
    that lists it; else its own issued date; else theirs. An effective time that is stated but
    unreadable (its own or the one it would inherit) gives None: when it was taken is not known,
    and issued (the release time, weeks later maybe) must not stand in for it."""
    eff, stated, issued = own
    if stated:
        return eff
    if inherited is not None and inherited[1]:
        return inherited[0]
    return issued or (inherited[2] if inherited is not None else None)


def _inherit_dates(run: _Run, found: list[_Res]) -> None:
    """Give undated results the times of the report or panel that lists them.

    Lab feeds (the HL7 general health profile among them) date the DiagnosticReport and leave
    its results (result[] -> panel -> hasMember[]) undated; in FHIR the report's effective time
    is the clinically relevant time of those results, so dropping them would lose real data.
    A report's effective time comes before a result's own `issued` (see `_date_of`).
    """
    resolve = _observation_resolver(found)

    def push(first: _Res, times: _Times, seen: set[int]) -> None:
        # Iterative: a long hasMember chain must not hit the recursion limit.
        stack = [(first, times)]
        while stack:
            r, inherited = stack.pop()
            had = run.inherited.get(id(r.res))
            if had is not None and had != inherited and had is not _CONFLICTING:
                # listed by two reports (or versions of one) that give different times:
                # which is its time is not known
                run.inherited[id(r.res)] = _CONFLICTING
            if id(r.res) in seen:
                continue  # hasMember cycles exist in the wild
            seen.add(id(r.res))
            run.inherited.setdefault(id(r.res), inherited)
            members = r.res.get("hasMember")
            if not isinstance(members, list):
                continue
            down = _passed_down(_own_times(r.res), inherited)
            for m in reversed(members):
                child = resolve(m, r.container)
                if child is not None:
                    stack.append((child, down))

    # One walk for all roots: a result's times are the first that reach it (setdefault), and
    # the first walk to reach a result walks everything below it, so walking it again from a
    # later root changed nothing but cost: a chain of 5,000 dated panels took 80 s.
    seen: set[int] = set()
    for r in found:
        if r.rtype != "DiagnosticReport":
            continue
        times = _passed_down(_own_times(r.res), None)
        results = r.res.get("result")
        if times == (None, False, None) or not isinstance(results, list):
            continue
        container = _source(r)
        for ref in results:
            obs = resolve(ref, container)
            if obs is not None:
                push(obs, times, seen)
    # panels that no other panel lists first (their times pass through nested panels), then
    # the rest (cycles), whatever the order of the input
    listed = {id(c.res) for r in found if r.rtype == "Observation" and
              isinstance(r.res.get("hasMember"), list)
              for m in r.res["hasMember"] if (c := resolve(m, r.container)) is not None}
    panels = sorted((r for r in found if r.rtype == "Observation" and
                     isinstance(r.res.get("hasMember"), list)),
                    key=lambda r: id(r.res) in listed)
    for r in panels:
        if id(r.res) not in seen:
            # a panel that no report lists: its members inherit its times
            down = _passed_down(_own_times(r.res), None)
            if down == (None, False, None):
                continue
            seen.add(id(r.res))
            for m in r.res["hasMember"]:
                child = resolve(m, r.container)
                if child is not None:
                    push(child, down, seen)


_RETRACTED_STATUS = ("entered-in-error", "cancelled")


def _mark_retracted(run: _Run, found: list[_Res]) -> None:
    """Results listed by a DiagnosticReport or panel that is entered-in-error or cancelled
    (contained, result[], hasMember[], transitively) are in doubt, whatever their own status
    says: they are passed on as unusable (`_Run.doubtful`), so that neither they nor older
    results of the same element decide."""
    resolve = _observation_resolver(found)
    by_parent: dict[int, list[_Res]] = {}
    for r in found:
        if r.parent is not None:
            by_parent.setdefault(id(r.parent), []).append(r)
    # one walk for all retracted roots: each result is marked once (a fresh set per root walked
    # shared members again for every root: 11 s for 2,500 cancelled panels of one member list)
    seen: set[int] = set()
    for r in found:
        status = r.res.get("status")
        if r.rtype not in ("DiagnosticReport", "Observation") or status not in _RETRACTED_STATUS:
            continue
        why = f"listed by {_source(r)}, whose status is {status}"
        container = _source(r) if r.rtype == "DiagnosticReport" else r.container
        stack = list(by_parent.get(id(r.res), [])) if r.rtype == "DiagnosticReport" else []
        refs = r.res.get("result") if r.rtype == "DiagnosticReport" else None
        for ref in refs if isinstance(refs, list) else []:
            hit = resolve(ref, container)
            if hit is not None:
                stack.append(hit)
        members = r.res.get("hasMember")
        for ref in members if isinstance(members, list) else []:
            hit = resolve(ref, r.container)
            if hit is not None:
                stack.append(hit)
        seen.add(id(r.res))
        while stack:
            child = stack.pop()
            if id(child.res) in seen:
                continue
            seen.add(id(child.res))
            if child.res.get("status") not in _RETRACTED_STATUS:
                run.doubtful.setdefault(id(child.res), ("fhir.retracted_report", why))
            kids = child.res.get("hasMember")
            for ref in kids if isinstance(kids, list) else []:
                hit = resolve(ref, child.container)
                if hit is not None:
                    stack.append(hit)


def _has_value(holder: JsonDict) -> bool:
    return any(holder.get(k) is not None for k in _VALUE_KEYS)


def _observation(run: _Run, r: _Res, out: JsonDict) -> None:
    res, loc = r.res, r.loc
    codings = run.codings(res, "code", loc)
    element, named = _element_of(run, codings, f"{loc}.code")
    # (element, value holder, loc, source, coded with a project code, why it is unreadable)
    targets: list[tuple[str, JsonDict, str, str, bool, str | None]] = []
    source = _source(r)
    for k, comp in run.items(res, "component", loc):
        cloc = f"{loc}.component[{k}]"
        ccodings = run.codings(comp, "code", cloc)
        cel, cnamed = _element_of(run, ccodings, f"{cloc}.code")
        if cel is not None:
            targets.append((cel, comp, cloc, f"{source} component[{k}]",
                            _via_project(ccodings, cel), None))
        for name in cnamed if len(cnamed) > 1 else []:
            targets.append((name, comp, cloc, f"{source} component[{k}]", False,
                            "codes name several data elements"))
    for name in named if len(named) > 1 else []:
        targets.append((name, res, loc, source, False, "codes name several data elements"))
    if element is None and not targets:
        if any(c.system == LOINC and c.code in _HCG_LOINC for c in codings):
            _pregnancy_test(run, r, out)
            return
        key, label = _code_label(codings, run.cc_text(res, "code", loc))
        run.tally("fhir.unmapped_observation", key, loc,
                  f"Observation {label} maps to no data element")
        return
    # A panel whose members sit in component[] has no value of its own: not an error.
    if element is not None and (_has_value(res) or not targets):
        targets.insert(0, (element, res, loc, source, _via_project(codings, element), None))
    date, status = _obs_date_status(run, r)
    for el, holder, hloc, src, via_project, why in targets:
        absent = holder.get("dataAbsentReason") is not None
        if why is None and not _has_value(holder) and not holder.get("interpretation"):
            # dataAbsentReason: the result does not exist, so there is nothing to pass on
            reason = run.cc_text(holder, "dataAbsentReason", hloc) or next(
                (c.code for c in run.codings(holder, "dataAbsentReason", hloc) if c.code), None)
            run.issue(hloc, "fhir.missing_value",
                      f"{el}: no value" + (f" (data absent: {reason})" if reason else "")
                      + (f", status {status}" if status else "") + "; ignored")
            continue
        interp_fields = None
        if why is None and not _has_value(holder):
            # an interpretation with no value: a result that says something, which an older
            # result must not be allowed to contradict (skipped, it did). For antibody
            # serology, POS / NEG / IND is the result itself; any other flag is unusable.
            interp_fields = _interpretation_only(run, el, holder, hloc)
            if interp_fields is None:
                why = "an interpretation without a value"
        elif why is None and absent:
            # a value and a reason why there is none (invalid, FHIR obs-6): which is it?
            why = "a value together with a dataAbsentReason"
        seen = len(run.issues)
        fields = (interp_fields or _value(run, el, holder, hloc)) if why is None else None
        obs: JsonDict = {"element": el}
        if fields is None and why is None and len(run.issues) > seen and \
                not run.issues[-1]["msg"].endswith("not recognised; unusable"):
            # the reason, when it says more than "not recognised" (then: the value itself)
            why = run.issues[-1]["msg"].removesuffix("; unusable").removeprefix(f"{el}: ")
        if fields is None:
            # Unreadable: passed on with a value the normalizer cannot use, so that this result
            # hides older ones of its element (skipped, an older result would decide).
            obs["value"] = _unreadable_value(holder, why)
        else:
            unit = ELEMENTS[el].unit
            if via_project and unit and "unit" not in fields and \
                    holder.get("valueQuantity") is None:
                # A project code fixes its unit (docs/data-elements.md), so a bare number sent
                # under it is in that unit; a bare number under a LOINC code is not (mg/dL or
                # umol/L?) and stays unitless for the normalizer to judge.
                fields["unit"] = unit
            obs.update(fields)
            if ELEMENTS[el].uln:
                rr = _reference_range(run, holder, hloc, date)
                if rr is not None:
                    obs["reference_range"] = rr
            if el == "bun" and _is_urea_mass(run, holder, hloc):
                # urea, not urea nitrogen: its mg/dL is not BUN's (x 28/60); the normalizer
                # converts "mg/dL{urea}" (a range without a unit is in the value's unit)
                for part in (obs, obs.get("reference_range") or {}):
                    u = part.get("unit")
                    if isinstance(u, str) and u.replace(" ", "").lower() == "mg/dl":
                        part["unit"] = "mg/dL{urea}"
        if date is not None:
            obs["date"] = date
        if status is not None:
            obs["status"] = status
        obs["source"] = src
        out["observations"].append(obs)


def _obs_date_status(run: _Run, r: _Res) -> tuple[str | None, str | None]:
    """(date, status) of an Observation as passed on. No date: passed on undated (the normalizer
    makes it unusable, hiding the element's other results). A status that cannot be read, or a
    result in doubt (`_Run.doubtful`), becomes "unknown": read as absent it would count as final,
    and it may have said entered-in-error."""
    res, loc = r.res, r.loc
    d, stated = _effective(run, res, loc)   # (read here with issues reported)
    own: _Times = (d, stated, None if stated else run.date(res, "issued", loc))
    inherited = run.inherited.get(id(res))
    date = _date_of(own, inherited)
    if date is None and own[1]:
        run.issue(loc, "fhir.missing_date",
                  "Observation effective[x] cannot be read (see fhir.bad_date), so when it was "
                  "taken is not known: not dated by issued or by its report; passed on "
                  "undated, so it is unusable")
    elif date is None and inherited is not None and inherited is _CONFLICTING:
        run.issue(loc, "fhir.missing_date",
                  "Observation without its own effective time, listed by reports or panels "
                  "(or versions of one) that give it different times: when it was taken is "
                  "not known; passed on undated, so it is unusable")
    elif date is None and inherited is not None and inherited[1]:
        run.issue(loc, "fhir.missing_date",
                  "Observation without its own effective time, listed by a report or panel "
                  "whose effective time cannot be read: when it was taken is not known (not "
                  "dated by issued); passed on undated, so it is unusable")
    elif date is None:
        run.issue(loc, "fhir.missing_date",
                  "Observation without effective[x] or issued date (none inherited from a "
                  "DiagnosticReport either): passed on undated, so it is unusable")
    status = res.get("status")
    if status is not None and not isinstance(status, str):
        run.issue(f"{loc}.status", "fhir.malformed",
                  f"status should be a string, got {_tname(status)}; read as unknown (unusable)")
        status = "unknown"
    doubt = run.doubtful.get(id(res))
    if doubt is not None and status not in _RETRACTED_STATUS:
        run.issue(loc, doubt[0], f"{doubt[1]}: passed on with status unknown (unusable)")
        status = "unknown"
    return date, status


def _unreadable_value(holder: JsonDict, why: str | None) -> str:
    if why is None:
        key = next((k for k in _VALUE_KEYS if holder.get(k) is not None), None)
        v = holder.get(key) if key else None
        if key == "valueCodeableConcept" and isinstance(v, dict):
            silent = _Run()
            shown = silent.text(v, "text", "") or next(
                (c.display or c.code for c in silent.concept(v, "") if c.display or c.code), None)
            why = f"{key} {short_repr(shown, 60)}"
        else:
            why = f"{key} {short_repr(v, 60)}" if key else "no value"
    return cut(f"{_UNREADABLE}: {why}", 120)


def _pregnancy_test(run: _Run, r: _Res, out: JsonDict) -> None:
    """hCG pregnancy test (LOINC 2106-3 urine, 2118-8 serum) -> `pregnant`: negative = false;
    positive, indeterminate or unreadable = unusable (pregnancy not ruled out: unknown)."""
    res, loc = r.res, r.loc
    if not _has_value(res):
        run.issue(loc, "fhir.missing_value", "pregnancy test (hCG): no value; ignored")
        return
    date, status = _obs_date_status(run, r)
    interp = _result_class_list(run, res, loc)
    read = _coded_or_text_class(run, res, loc)
    found: set[str] = read if read is not None else set()
    if read is None and res.get("valueQuantity") is not None:
        # quantitative: above the reference upper limit is positive, below it negative
        q = run.get(res, "valueQuantity", dict, loc)
        fields = _quantity(run, q, f"{loc}.valueQuantity") if q is not None else None
        rr = _reference_range(run, res, loc, date) if fields is not None else None
        high = rr.get("high") if rr is not None else None
        if isinstance(high, str):   # an unusable range (ranges that disagree): no cut-off
            high = None
        if fields is not None and high is not None and (
                rr is None or rr.get("unit") is None
                or str(rr.get("unit")).lower() == str(fields.get("unit")).lower()):
            v, comp = fields["value"], fields.get("comparator")
            if (comp is None and v > high) or (comp in (">", ">=") and v >= high):
                found = {"pos"}
            elif (comp is None and v < high) or (comp in ("<", "<=") and v <= high):
                found = {"neg"}
        elif fields is not None:
            found = set(interp)
    cls = _one(run, found, loc, "pregnancy test (hCG)")
    if cls is not None and interp and interp != {cls}:
        run.issue(loc, "fhir.ambiguous_value", f"pregnancy test (hCG): value reads {_WORD[cls]} "
                  f"but interpretation {_words(interp)}; unusable")
        cls = None
    obs: JsonDict = {"element": "pregnant"}
    if cls == "neg":
        obs["value"] = False
    elif cls == "pos":
        run.issue(loc, "fhir.positive_pregnancy_test",
                  "positive hCG: pregnancy not ruled out (nor proven); passed on as an unusable "
                  "pregnancy status")
        obs["value"] = _unreadable_value(res, "hCG test positive: pregnancy not ruled out")
    else:
        obs["value"] = _unreadable_value(res, None)
    if date is not None:
        obs["date"] = date
    if status is not None:
        obs["status"] = status
    obs["source"] = _source(r)
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
    # codings that disagree ([confirmed, refuted]): which one is meant is not known; a
    # refutation among them is not guessed away either
    vs = res.get("verificationStatus")
    codes = {c.code.strip().lower() for c in _Run().codings(res, "verificationStatus", loc)
             if c.code} if isinstance(vs, dict) else set()
    if len(codes) > 1 and codes <= {"refuted", "entered-in-error"}:
        return "refuted"   # they disagree on why, not on whether it counts: it does not
    if len(codes) > 1:
        run.issue(f"{loc}.verificationStatus", "fhir.unreadable_status",
                  f"verificationStatus codings disagree ({', '.join(sorted(codes))}): recorded "
                  "as unconfirmed")
        return "unconfirmed"
    return code


def _doubt_condition(run: _Run, r: _Res, verification: str | None) -> str | None:
    """A record in doubt (differing versions of one resource) is passed on as unconfirmed."""
    doubt = run.doubtful.get(id(r.res))
    if doubt is None or verification in ("refuted", "entered-in-error"):
        return verification
    run.issue(r.loc, doubt[0], f"{doubt[1]}: recorded as unconfirmed")
    return "unconfirmed"


def _onset(run: _Run, res: JsonDict, loc: str, out: JsonDict) -> None:
    onset = run.date(res, "onsetDateTime", loc)
    if onset is None:
        start, end = run.period(res, "onsetPeriod", loc)
        onset = start
        if start is None and end is not None:
            # a period known only by its end: the condition began then or before
            out["onset"] = end
            out["onset_from"] = "on_or_before"
            return
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
    if abatement is None:
        # an end that is not a readable date (an age or range, "last spring", a period with
        # no end, an unreadable dateTime): it ended, when is not known. Dropped, the condition
        # would read as still going on.
        # (by identity: 0 == False, and an abatementDateTime of 0 is an end that is no date)
        stated = next((k for k in _ABATEMENT_KEYS if not (
            res.get(k) is None or res.get(k) is False or res.get(k) == "")), None)
        if stated is not None:
            abatement = "unknown"
            run.issue(f"{loc}.{stated}", "fhir.abatement_undated",
                      f"{stated} {short_repr(res[stated], 80)} is not a date: the condition "
                      "ended at a time not known (passed on as abatement 'unknown')")
    if abatement is not None:
        base["abatement"] = abatement
    clinical = _status_field(run, res, "clinicalStatus", _CLINICAL_STATUS, loc)
    if clinical is not None:
        base["clinical_status"] = clinical
    verification = _doubt_condition(run, r, _verification(run, res, loc))
    if verification is not None:
        base["verification_status"] = verification
    base["source"] = _source(r)
    if any(_is_pregnancy_code(cd) for cd in codes):
        _pregnancy_condition(run, r, base, out)
    if not elements:
        out["conditions"].append({"codes": codes, **base})
    # Codes naming two elements (rare, e.g. a combined SNOMED concept) are both asserted: an
    # exclusion missed is worse than one shown with its evidence.
    for name in elements:
        out["conditions"].append({"element": name, **base})


def _is_pregnancy_code(cd: dict[str, str]) -> bool:
    if cd["system"] == SNOMED:
        return cd["code"] in _PREGNANCY_SNOMED
    if cd["system"] in (ICD10, ICD10CM):
        return cd["code"].replace(".", "").upper().startswith(_PREGNANCY_ICD10)
    return False


def _pregnancy_condition(run: _Run, r: _Res, base: JsonDict, out: JsonDict) -> None:
    """A Condition "pregnant" -> a `pregnant` observation dated at its onset (or recordedDate):
    true when active and not in doubt; unusable when its status leaves it open; nothing for a
    past (inactive / resolved) or refuted / entered-in-error one."""
    clinical, verification = base.get("clinical_status"), base.get("verification_status")
    if verification in ("refuted", "entered-in-error") or clinical in _ENDED_STATUS:
        return
    obs: JsonDict = {"element": "pregnant"}
    if clinical in ("active", "recurrence", "relapse") and verification in (None, "confirmed") \
            and "abatement" not in base:
        obs["value"] = True
    else:
        why = ("pregnancy Condition without clinical status" if clinical is None else
               f"pregnancy Condition {verification}" if verification not in (None, "confirmed")
               else "pregnancy Condition active but with an abatement date")
        run.issue(r.loc, "fhir.unclear_pregnancy", f"{why}: passed on as an unusable pregnancy "
                  f"status")
        obs["value"] = _unreadable_value({}, why)
    # dated when the pregnancy was last asserted: the recordedDate when it is later than the
    # onset (a negative test between onset and recording must not win over the Condition)
    recorded = r.res.get("recordedDate")
    if isinstance(recorded, str) and _is_datetime(recorded) and "onset" in base and \
            str(base["onset"])[:10] < recorded[:10]:
        obs["date"] = recorded
    elif "onset" in base:
        obs["date"] = base["onset"]
    else:
        run.issue(r.loc, "fhir.missing_date", "pregnancy Condition without onset or recordedDate: "
                  "passed on undated, so it is unusable")
    obs["source"] = base["source"]
    out["observations"].append(obs)


#: WHO ATC code of blinatumomab, and the spellings of the ATC system seen in the wild
_ATC_SYSTEMS = ("http://www.whocc.no/atc", "https://www.whocc.no/atc",
                "urn:oid:2.16.840.1.113883.6.73")
_BLINATUMOMAB_ATC = "L01FX07"


def _is_blinatumomab_code(c: _Coding) -> bool:
    if c.system == RXNORM and c.code == _BLINATUMOMAB_RXNORM:
        return True
    return (c.system or "").rstrip("/") in _ATC_SYSTEMS and \
        (c.code or "").replace(" ", "").upper() == _BLINATUMOMAB_ATC


def _mentions_blinatumomab(codings: list[_Coding], texts: Iterable[str | None]) -> bool:
    for c in codings:
        if _is_blinatumomab_code(c):
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
    _onset(run, res, loc, cond)   # the same onset[x] / recordedDate reading as a Condition
    # AllergyIntolerance uses active / inactive / resolved, a subset of the condition statuses.
    clinical = _status_field(run, res, "clinicalStatus", _CLINICAL_STATUS, loc)
    if clinical is not None:
        cond["clinical_status"] = clinical
    verification = _doubt_condition(run, r, _verification(run, res, loc))
    if verification is not None:
        cond["verification_status"] = verification
    coded = any(_is_blinatumomab_code(c) for c in all_codings)
    kind = res.get("type")
    # an intolerance is not immune-mediated; a type that cannot be read may say so
    unsure_kind = kind is not None and not (isinstance(kind, str) and
                                             kind.strip().lower() == "allergy")
    if verification in (None, "confirmed") and (not coded or unsure_kind):
        # named only in free text ("No known allergy to blinatumomab" contains the name), or
        # an intolerance (not immune-mediated): possible, for the investigator to judge
        why = ("not recorded as an allergy (type " + short_repr(kind) + ")" if coded
               else "named in text only, not by its RxNorm or ATC code")
        run.issue(loc, "fhir.unclear_allergy", f"blinatumomab AllergyIntolerance {why}: passed "
                  "on as unconfirmed")
        cond["verification_status"] = "unconfirmed"
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
            # a kit or a study product named by its ingredients
            for k, ing in run.items(med, "ingredient", f"{loc}.medicationReference"):
                iloc = f"{loc}.medicationReference.ingredient[{k}]"
                codings = codings + run.codings(ing, "itemCodeableConcept", iloc)
                texts.append(run.cc_text(ing, "itemCodeableConcept", iloc))
                item = ing.get("itemReference")
                if isinstance(item, dict) and isinstance(item.get("display"), str):
                    texts.append(item["display"])
    return codings, texts


def _is_blinatumomab_record(run: _Run, r: _Res) -> bool:
    """Whether a medication resource names blinatumomab; another drug is counted (tally)."""
    codings, texts = _medication_concept(run, r)
    if _mentions_blinatumomab(codings, texts):
        return True
    key, label = _code_label(codings, next((t for t in texts if t), None))
    run.tally("fhir.unmapped_medication", key, r.loc,
              f"{r.rtype} {label} is not a screened therapy")
    return False


def _medication(run: _Run, r: _Res, out: JsonDict) -> None:
    res, loc = r.res, r.loc
    if not _is_blinatumomab_record(run, r):
        return
    status = run.text(res, "status", loc)
    norm = status.strip().lower() if status is not None else None
    # earlier FHIR versions: MedicationStatement.taken y | n | unk | na (STU3), notGiven (STU3)
    # and wasNotGiven (DSTU2) on MedicationAdministration
    taken = res.get("taken")
    if norm in _MEDICATION_SKIP_STATUS or taken in ("n", "na") or \
            res.get("notGiven") is True or res.get("wasNotGiven") is True:
        run.issue(loc, "fhir.not_given", f"blinatumomab {r.rtype} that says it was not given "
                  f"(status {status}" + (f", taken {taken}" if taken is not None else "")
                  + "); ignored")
        return
    unsure = None
    odd = [k for k in ("notGiven", "wasNotGiven") if res.get(k) is not None and
           not isinstance(res.get(k), bool)]
    if odd:
        unsure = f"{odd[0]} {short_repr(res.get(odd[0]))}"
    elif norm not in _MEDICATION_GIVEN_STATUS:
        unsure = f"status {short_repr(status)}" if status is not None else "no status"
    elif taken is not None and taken != "y":
        unsure = f"taken {short_repr(taken)}"
    # a time (effectiveDateTime) says when, not for how long: a bag hung, a dose given that day
    at = run.date(res, "effectiveDateTime", loc)
    start = end = None
    if at is None:
        start, end = run.period(res, "effectivePeriod", loc)
    if unsure is not None:
        # given or not, and for how long, is not known: a course that may count, days unknown
        run.issue(loc, "fhir.unclear_status", f"blinatumomab {r.rtype} with {unsure}: whether "
                  "it was given is not known; kept without dates, exposure days unknown")
        start = end = at = None
    doubt = run.doubtful.get(id(res))
    if doubt is not None:
        # differing versions: which dates are right is unknown, so the exposure days are too
        run.issue(loc, doubt[0], f"{doubt[1]}: kept without dates, exposure days unknown")
        start = end = at = None
    exposure: JsonDict = {"element": "blinatumomab"}
    # Whatever dates exist are kept: an open period (ongoing therapy) has no end, and even a
    # dateless record still proves that the drug was given, which exclusions care about.
    if at is not None:
        # inside a dated course it adds nothing; outside every one the days are unknown
        exposure["at"] = at
    if start is not None:
        exposure["start"] = start
    if end is not None:
        exposure["end"] = end
    if start is None and at is None and doubt is None:
        run.issue(loc, "fhir.missing_date",
                  f"blinatumomab {r.rtype} without a start date: kept, exposure days unknown")
    exposure["source"] = _source(r)
    out["exposures"].append(exposure)


# --- entry points ---------------------------------------------------------------------------

def _medication_order(run: _Run, r: _Res, out: JsonDict) -> None:
    """A blinatumomab MedicationRequest or MedicationDispense: an order or a dispensed bag
    says nothing of the days given, but that more may have been given than the statements
    and administrations sent show (a 28-day order beside a 10-day statement): exposure days
    are unknown."""
    res, loc = r.res, r.loc
    if not _is_blinatumomab_record(run, r):
        return
    status = (run.text(res, "status", loc) or "").strip().lower()
    intent = res.get("intent")
    if status in ("entered-in-error", "cancelled", "draft", "declined", "preparation") or \
            intent in ("proposal", "plan") or res.get("doNotPerform") is True:
        return   # not an order to give it (a plan, a proposal), or not carried out yet
    run.issue(loc, "fhir.order_only", f"blinatumomab {r.rtype} (status {status or 'none'}): "
              "more may have been given than the records of administration show; exposure "
              "days unknown")
    run.incomplete.setdefault("exposures", []).append(
        f"a blinatumomab {r.rtype} ({_source(r)}) may cover days not recorded as given")


_HANDLERS = {
    "Observation": _observation,
    "Condition": _condition,
    "AllergyIntolerance": _allergy,
    "MedicationStatement": _medication,
    "MedicationAdministration": _medication,
    "MedicationRequest": _medication_order,
    "MedicationDispense": _medication_order,
}


def _content(res: JsonDict) -> str:
    """A resource's content for comparing versions (meta and narrative left out)."""
    try:
        return json.dumps({k: v for k, v in res.items() if k not in ("meta", "text")},
                          sort_keys=True, default=str)
    except (TypeError, ValueError, RecursionError):
        return f"unreadable {id(res)}"  # never equal to another: read as a differing version


def _latest(versions: list[_Res]) -> _Res | None:
    """The version that is clearly the latest: by meta.versionId (all integers, distinct) and
    meta.lastUpdated (all instants, distinct); None if neither orders them or they disagree."""
    def meta(r: _Res, key: str) -> object:
        m = r.res.get("meta")
        return m.get(key) if isinstance(m, dict) else None

    picks: list[_Res] = []
    vids = [meta(r, "versionId") for r in versions]
    # ASCII digits only, and not too many: "²" passes isdigit, 5,000 digits pass both, and
    # int() refuses each
    if all(isinstance(v, str) and v.strip().isascii() and v.strip().isdigit()
           and len(v.strip()) <= 18 for v in vids):
        nums = [int(str(v).strip()) for v in vids]
        if len(set(nums)) == len(nums):
            picks.append(versions[nums.index(max(nums))])
    stamps: list[dt.datetime] = []
    for r in versions:
        u = meta(r, "lastUpdated")
        try:
            t = dt.datetime.fromisoformat(u) if isinstance(u, str) and _is_datetime(u) else None
        except ValueError:
            t = None
        if t is None or t.tzinfo is None:
            break
        stamps.append(t)
    else:
        if len(set(stamps)) == len(stamps):
            picks.append(versions[stamps.index(max(stamps))])
    if not picks or any(p is not picks[0] for p in picks):
        return None
    return picks[0]


def _resolve_versions(run: _Run, found: list[_Res]) -> list[_Res]:
    """Resources repeated with one type and id (a history Bundle, or a resource sent twice).

    Identical copies count once (an exposure sent twice must not count its days twice). Of
    differing versions only the clearly latest is used (`_latest`); otherwise none can be
    trusted: all are kept but marked doubtful (`_Run.doubtful`), so that they are passed on as
    unusable. Patients are merged field by field instead (`_merge_patients`). A resource
    deleted in a history Bundle is doubtful too.
    """
    groups: dict[str, list[_Res]] = {}
    for r in found:
        rid = r.res.get("id")
        if r.container is None and isinstance(rid, str) and rid.strip():
            groups.setdefault(f"{r.rtype}/{rid.strip()}", []).append(r)
    drop: set[int] = set()
    for key, versions in groups.items():
        deleted = key in run.deleted
        if len(versions) == 1 and not deleted:
            continue
        distinct = list({_content(r.res): r for r in reversed(versions)}.values())
        if len(distinct) == 1 and not deleted:
            drop.update(id(r) for r in versions[1:])
            run.tally("fhir.duplicate_resource", "", versions[1].loc,
                      "repeated identical resource counted once")
            continue
        latest = None if deleted else _latest(versions)
        if latest is not None:
            drop.update(id(r) for r in versions if r is not latest)
            run.issue(latest.loc, "fhir.superseded_version",
                      f"{len(versions)} versions of {cut(key)}: only the latest ({latest.loc}) "
                      f"is used")
            continue
        if versions[0].rtype == "Patient":
            continue
        why = (f"{cut(key)} was deleted in a history Bundle" if deleted else
               f"{len(distinct)} differing versions of {cut(key)}, none clearly the latest")
        for r in versions:
            run.doubtful[id(r.res)] = ("fhir.conflicting_versions", why)
    # a report's contained results go (or are in doubt) with the version that holds them
    gone = {id(r.res) for r in found if id(r) in drop}
    for r in found:
        if r.parent is not None and id(r.parent) in gone:
            drop.add(id(r))
        elif r.parent is not None and id(r.parent) in run.doubtful:
            run.doubtful.setdefault(id(r.res), run.doubtful[id(r.parent)])
    return [r for r in found if id(r) not in drop]


def _merge_patients(run: _Run, same: list[_Res], patient: JsonDict) -> None:
    """Several Patient resources for the one screened patient: a birth date or sex on which
    they disagree is not used (age- and sex-based criteria become unknown)."""
    for key, field_ in (("birthDate", "birth_date"), ("gender", "sex")):
        values: dict[str, str] = {}
        for r in same:
            v = r.res.get(key)
            if v is None:
                continue
            norm = v.strip().lower() if isinstance(v, str) else repr(v)
            values.setdefault(norm, r.loc)
        if len(values) > 1:
            patient.pop(field_, None)
            run.issue(same[0].loc, "fhir.conflicting_patient",
                      cut(f"Patient resources for this patient disagree on {key} ("
                          + ", ".join(f"{short_repr(v, 40)} at {loc}" for v, loc in values.items())
                          + "): not used"))


def _screened(patients: list[_Res], patient_id: str | None) -> tuple[_Res | None, list[_Res]]:
    """(the screened Patient, its copies: same id or fullUrl): the Patient with `patient_id`
    when given (CDS Hooks: the verified patient in context), else the first one."""
    if patient_id is None:
        first = patients[0] if patients else None
    else:
        first = next((r for r in patients if f"Patient/{patient_id}" in _patient_keys(r)), None)
    if first is None:
        return None, []
    keys = _patient_keys(first)
    return first, [first] + [r for r in patients if r is not first and _patient_keys(r) & keys]


#: Patient.link types that say this person has records under another Patient resource
_LINK_TYPES = ("replaced-by", "replaces", "refer", "seealso")


def _linked_records(run: _Run, r: _Res, patients: list[_Res]) -> set[str]:
    """The screened Patient's links to other Patient records. `replaced-by` / `refer`: this
    record is obsolete or not the one that holds the data, so results filed under the other
    are not read here (a newer ECOG there would not be seen): every section is incomplete.
    `replaces` / `seealso`: the other record is the same person (a merge, another system):
    resources about it are read as this patient's (their keys are returned)."""
    same: set[str] = set()
    for k, link in _Run().items(r.res, "link", r.loc):
        kind = link.get("type")
        other = link.get("other")
        ref = other.get("reference") if isinstance(other, dict) else None
        m = _TYPE_ID_RE.search(ref.split("?")[0].strip()) if isinstance(ref, str) else None
        target = m.group(1) if m else None
        if target is not None and not target.startswith("Patient/"):
            continue    # a RelatedPerson: another person
        where = f"{r.loc}.link[{k}]"
        linked = [x for x in patients if f"Patient/{x.res.get('id')}" == target]
        disagree = [f for f in ("birthDate", "gender") for x in linked
                    if x.res.get(f) is not None and r.res.get(f) is not None and
                    x.res.get(f) != r.res.get(f)]
        if kind in ("replaces", "seealso") and target is not None and disagree:
            kind = f"{kind} (the records disagree on {', '.join(sorted(set(disagree)))})"
        elif kind in ("replaces", "seealso") and target is not None:
            same.add(target)
            run.issue(where, "fhir.linked_patient", f"the screened Patient {kind} "
                      f"{cut(target, 60)}: resources about that record are read as this "
                      "patient's")
            continue
        shown = f"{kind if isinstance(kind, str) else 'a link'} {cut(str(ref), 60)}"
        run.issue(where, "fhir.linked_patient", f"the screened Patient has {shown}: its data "
                  "there is not read, so every section is taken as incomplete")
        for key in _ANYTHING:
            run.incomplete.setdefault(key, []).append(
                f"the Patient record is linked to another ({shown})")
    if r.res.get("active") is False:
        run.issue(r.loc, "fhir.inactive_patient", "the screened Patient record is inactive")
    return same


def _build(run: _Run, found: list[_Res], patient_id: str | None = None) -> JsonDict:
    patient: JsonDict = {}
    out: JsonDict = {"observations": [], "conditions": [], "exposures": []}
    found = _resolve_versions(run, found)
    _inherit_dates(run, found)
    _mark_retracted(run, found)
    patients = [r for r in found if r.rtype == "Patient"]
    first, same = _screened(patients, patient_id)
    own: set[str] = set()
    others: set[str] = set()
    if first is not None:
        _patient(run, first, patient)
        for r in same:
            own |= _patient_keys(r)
        if len(same) > 1:
            _merge_patients(run, same, patient)
        sex = patient.get("sex")
        run.sex = sex if isinstance(sex, str) else None
        birth = patient.get("birth_date")
        run.birth = birth if isinstance(birth, str) else None
    elif patient_id is not None:
        own = {f"Patient/{patient_id}"}
        run.issue("$", "fhir.no_patient",
                  f"no Patient resource with id {short_repr(patient_id)}: birth date and sex "
                  "unknown")
    else:
        run.issue("$", "fhir.no_patient", "no Patient resource: birth date and sex unknown")
    extra = [r for r in patients if not any(r is x for x in same)]
    for r in extra:
        others |= _patient_keys(r)
    others -= own
    if extra:
        which = (f"the first Patient ({first.loc}) is screened" if patient_id is None and first
                 else f"Patient {short_repr(patient_id)}"
                 + (f" ({first.loc})" if first else "") + " is screened")
        run.issue(extra[0].loc, "fhir.extra_patient",
                  f"{len(extra)} further Patient resource(s) ignored (first at "
                  f"{extra[0].loc}); {which}")
    # With the screened Patient's id known, a subject naming another Patient id is another
    # patient even when that Patient is not in the input; a bundle-local reference (urn:uuid)
    # that is not the screened Patient's fullUrl cannot be shown to be this patient.
    id_known = any(k.startswith("Patient/") for k in own)
    if first is not None:
        own |= _linked_records(run, first, patients)
    mixed: set[str] = set()
    if not id_known:
        # no Patient id says whose data this is: resources about two patients cannot be told
        # apart from one patient's (ECOG 4 of one and ECOG 1 of another: the newest decided)
        keys = {k for r in found if r.rtype in _HANDLERS and
                (k := _subject_key(r)) is not None and k not in others}
        subjects = sorted(keys - own) + (["the screened Patient"] if keys & own else [])
        if len(subjects) > 1:
            mixed = keys - own
            run.issue("$", "fhir.several_subjects",
                      f"resources about {len(subjects)} different patients "
                      f"({', '.join(cut(x, 60) for x in subjects[:3])}"
                      f"{', ...' if len(subjects) > 3 else ''}) and no Patient id saying which "
                      "is screened: none of their data is used")
            for key in _ANYTHING:
                run.incomplete.setdefault(key, []).append(
                    "the input holds resources about several patients")
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
        subject = _subject_key(r)
        if subject is not None and subject in mixed:
            continue
        if subject is not None and subject not in own:
            if subject in others:
                run.tally("fhir.other_patient", "", r.loc,
                          "resource about another Patient in the input ignored")
                continue
            if id_known and subject.startswith("Patient/"):
                run.tally("fhir.other_patient", "absent", r.loc,
                          "resource about another Patient (not in the input) ignored")
                continue
            if own and not subject.startswith("Patient/"):
                # a urn: that is not the screened Patient's fullUrl, a Group, ...
                run.tally("fhir.unresolved_subject", "", r.loc,
                          "resource whose subject is not the screened Patient ignored")
                continue
        elif subject is None and own and _has_subject(r):
            # a subject given but not as a reference we can read (a bare string, an
            # identifier only): it may be another patient
            run.tally("fhir.unresolved_subject", "unreadable", r.loc,
                      "resource whose subject cannot be matched to the screened Patient "
                      "ignored")
            continue
        try:
            handler(run, r, out)
        except Exception as exc:  # noqa: BLE001 - the no-crash contract outranks one resource
            run.issue(r.loc, "fhir.internal_error",
                      f"{r.rtype} could not be mapped ({type(exc).__name__}); ignored")
            continue
    if run.incomplete:
        out["incomplete"] = {k: "; ".join(v) for k, v in sorted(run.incomplete.items())}
    run.flush()
    return {**patient, **out}


def resources_to_patient(resources: list[Any], patient_id: str | None = None
                         ) -> tuple[JsonDict, list[Issue]]:
    """Map a list of FHIR values (Bundles, single resources or nulls: the shape of a CDS Hooks
    prefetch) to (canonical patient dict, issues). `patient_id` names the Patient to screen
    (CDS Hooks: the verified patient in context); by default the first Patient is screened.
    Every other Patient, and every resource whose subject is another Patient, is left out."""
    run = _Run()
    found: list[_Res] = []
    if isinstance(resources, list):
        for i, item in enumerate(resources):
            if item is not None:  # an empty prefetch slot is normal, not an error
                _collect(run, item, f"[{i}]", None, 0, found)
    else:
        run.issue("$", "fhir.not_an_object",
                  f"expected a list of FHIR resources, got {_tname(resources)}")
    return _build(run, found, patient_id), _listed(run.issues)


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
