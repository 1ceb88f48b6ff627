"""Canonical patient JSON -> engine facts, with evidence and data issues.

Pipeline position: after the adapters (FHIR, registry tables) and before the engine. Two steps:

* `prepare(patient, as_of)` cleans the record once: every value is type-checked, converted to the
  element's canonical unit, range-checked, and dated; anything unusable becomes a `DataIssue`
  (never an exception, never a silent drop).
* `fill(prepared, trial)` computes, for each slot the trial's rules read, one engine value
  (integer code or short string) plus the evidence behind it, or leaves the slot *absent* with
  the reason it is unknown. Absent slots are how "unknown" reaches the engine.

Decisions that matter clinically (each documented in docs/rules.md):
* newest result inside the window counts; a newer result never loses to an older one, and a
  newest result that cannot be used (no reference range for x ULN) makes the slot unknown rather
  than falling back to an older result;
* two different values at the same newest timestamp are a conflict: unknown. "Newest" compares
  moments, not text: a time with a zone is an instant; a date, a partial date or a time without
  a zone is local time (the span it covers on a clock whose zone is not known). Local times
  compare with each other directly, instants with each other, and a local time with an instant
  over every zone it may be in. Results that may be as new as the newest one and disagree
  with it are unknown (a dated-only result and a timed one of the same day; two zones naming
  one instant);
* censored values (`<20`), indeterminate serology and unknown sex are unknown;
* absence of a condition is proven only by a documented negative or a fresh complete review.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from functools import lru_cache
from typing import Any, NamedTuple

from .elements import (
    DEMOGRAPHIC,
    ELEMENTS,
    ICD10,
    ICD10CM,
    LOINC,
    PROJECT,
    SNOMED,
    VALUE_SYNONYMS,
    Element,
    by_loinc,
    coded_spelling,
    condition_broader,
    condition_for,
    normalise_unit,
)
from .errors import DataIssue, PatientDataError, cut, did_you_mean, short_repr
from .ir import Slot, Trial, encode_number, per_object, slots_of

MAX_ENTRIES = 50_000
#: how an adapter marks a value it could not read, followed by the reason
UNREADABLE_PREFIX = "unreadable:"
_LOINC = by_loinc()
_DECIMAL = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")
_DATE = re.compile(r"^(\d{4})(-(\d{2})(-(\d{2}))?)?")
_OK_STATUS = {"final", "amended", "corrected", "appended"}
_ACTIVE = {"active", "recurrence", "relapse"}
_ENDED = {"inactive", "remission", "resolved"}
_NEVER = {"refuted", "entered-in-error"}
#: `onset_from` values saying the onset given is only a latest date: it began then or before
_ONSET_UPPER_BOUNDS = ("recordedDate", "on_or_before")
_DOUBTFUL = {"provisional", "differential", "unconfirmed"}
_UNINFORMATIVE = {"unknown", "indeterminate", "equivocal", "inconclusive", "borderline",
                  "not_tested", "unk"}
_BOUNDS: dict[str, tuple[Fraction | None, Fraction | None]] = {
    n: ((Fraction(str(e.plausible[0])), Fraction(str(e.plausible[1]))) if e.plausible
        else (None, None)) for n, e in ELEMENTS.items()}


class Reading(NamedTuple):
    element: str
    value: Fraction | str
    stamp: str           # ISO date or date-time as given, for ordering ties
    day: date
    uln: Fraction | None  # canonical unit
    shown: str           # value and unit as recorded
    source: str
    loc: str
    #: engine code of `value` (numbers encoded, coded values as they are); None if a number is
    #: too large to encode
    code: int | str | None = None
    #: engine code of value / uln, and both shown, when the result carries its own ULN
    ratio: int | None = None
    ratio_shown: str = ""
    uln_shown: str = ""
    #: earliest and latest moment (microseconds, UTC) the date may mean, and whether it had a
    #: zone; see `time_span`
    lo: int = 0
    hi: int = 0
    zoned: bool = False
    #: the result came with a reference range that could not be used (so a site default ULN,
    #: meant for results without one, must not stand in for it)
    range_unusable: bool = False


@dataclass(frozen=True)
class CondRecord:
    """One condition record. Dates are spans: `onset` .. `onset_last` is when it may have
    begun (one day for a full date; the month or year of a partial one; unknown start up to
    the date it was recorded, for `onset_from: recordedDate`), and `abatement` ..
    `abatement_last` when it may have ended. `ended_unknown`: an end is recorded that cannot
    be read (not a date: "last spring", an age): it ended at some time not known."""
    element: str
    onset: date | None
    abatement: date | None
    clinical: str | None
    doubtful: bool
    source: str
    loc: str
    onset_last: date | None = None
    abatement_last: date | None = None
    ended_unknown: bool = False


@dataclass(frozen=True)
class Exposure:
    """One recorded course. `start` / `end` are full dates (end capped at as_of); a record
    with only `days` (or partial dates) is undated. `problem`: why its days cannot be used."""
    element: str
    days: int | None
    start: date | None
    source: str
    loc: str
    end: date | None = None
    problem: str = ""
    #: given on this day for a duration not recorded (`at`): adds nothing inside a dated
    #: course, makes the days unknown outside every one
    at: date | None = None


@dataclass
class Prepared:
    patient_id: str | None
    as_of: date
    age: tuple[int, int] | None = None      # min and max possible age at as_of
    age_source: str = ""
    #: why no age is known, when a reason is more than "none given"
    age_missing: str = ""
    sex: str | None = None
    readings: dict[str, list[Reading]] = field(default_factory=dict)
    conditions: dict[str, list[CondRecord]] = field(default_factory=dict)
    negatives: dict[str, list[tuple[date, str]]] = field(default_factory=dict)
    exposures: dict[str, list[Exposure]] = field(default_factory=dict)
    reviewed: dict[str, date] = field(default_factory=dict)
    issues: list[DataIssue] = field(default_factory=list)
    #: element -> (date, timestamp as recorded, why, location, time span) of unusable results
    unusable: dict[str, list[tuple[date | None, str, str, str, tuple[int, int, bool]]]] = \
        field(default_factory=dict)
    #: element -> why records of it may exist that we could not read (misspelt names, ...)
    suspect: dict[str, list[str]] = field(default_factory=dict)
    #: entries with an element name not in the catalogue, checked for misspellings so far
    unknown_names: int = 0
    #: condition records no catalogue code matched and no ICD-10 code placed elsewhere: any of
    #: them may be a more specific form of a catalogue condition (the SNOMED CT hierarchy is not
    #: modelled), so a complete condition review cannot prove a condition absent
    unresolved: list[str] = field(default_factory=list)
    #: fill cache id of (slot key, review max age, site ULN, detail) -> filled value and
    #: evidence, shared by the trials screened with this record
    filled: dict[int, tuple[int | str | None, dict[str, Any]]] = \
        field(default_factory=dict)

    def issue(self, loc: str, code: str, msg: str, element: str | None = None) -> None:
        self.issues.append(DataIssue(loc, code, msg, element))


def parse_date(raw: Any) -> tuple[date | None, bool]:
    """ISO date / date-time -> (date, complete). A partial date returns its first day and
    complete=False. Time and zone are ignored: the calendar date as recorded counts."""
    if not isinstance(raw, str):
        return None, False
    return _parse_date_text(raw) if len(raw) <= _MAX_CACHED_TEXT else _parse_date_uncached(raw)


#: longest text kept as a cache key (dates, units, numbers); longer text is parsed each time, so
#: that a hostile payload cannot pin megabytes per cache entry
_MAX_CACHED_TEXT = 64


@lru_cache(maxsize=8192)
def _parse_date_text(raw: str) -> tuple[date | None, bool]:
    # registries repeat the same dates endlessly: parsing each once is a measurable saving
    return _parse_date_uncached(raw)


def _parse_date_uncached(raw: str) -> tuple[date | None, bool]:
    m = _DATE.match(raw.strip())
    if not m:
        return None, False
    rest = raw.strip()[m.end():]
    if rest and not rest.startswith("T"):
        return None, False
    try:
        y, mo, d = int(m.group(1)), int(m.group(3) or 1), int(m.group(5) or 1)
        return date(y, mo, d), bool(m.group(5))
    except ValueError:
        return None, False


_TIME = re.compile(r"^T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?(Z|[+-]\d{2}:\d{2})?$")
_US_DAY = 86_400_000_000
_US_HOUR = 3_600_000_000
#: zones run from UTC-12 to UTC+14: a date without a zone may mean any moment in that spread
_EAST, _WEST = 14 * _US_HOUR, 12 * _US_HOUR


def time_span(raw: Any) -> tuple[int, int, bool]:
    """(earliest, latest, zoned): the moments (microseconds since 0001-01-01 UTC) a recorded
    date or date-time may mean. One instant for a time with a zone (zoned); for local time (a
    time without a zone; the whole day, month or year of a date) its span in every zone from
    UTC+14 to UTC-12. (0, 0, False) when unusable. See `may_be_as_new`."""
    if not isinstance(raw, str):
        return 0, 0, False
    if len(raw) > _MAX_CACHED_TEXT:   # no real timestamp is this long: its day (or period)
        raw = raw.strip()[:10].rstrip("-T")
    return _time_span(raw)


@lru_cache(maxsize=8192)
def _time_span(raw: str) -> tuple[int, int, bool]:
    text = raw.strip()
    m = _DATE.match(text)
    d, complete = parse_date(raw)
    if not m or d is None:
        return 0, 0, False
    start = d.toordinal() * _US_DAY
    if not complete:
        end = (_period_end(raw, d) or d).toordinal()
        return start - _EAST, (end + 1) * _US_DAY + _WEST - 1, False
    t = _TIME.match(text[m.end():]) if text[m.end():] else None
    if t is None:   # a date, or a time we cannot read: the whole day
        return start - _EAST, start + _US_DAY + _WEST - 1, False
    hh, mm, ss = int(t.group(1)), int(t.group(2)), int(t.group(3) or 0)
    if hh > 23 or mm > 59 or ss > 60:
        return start - _EAST, start + _US_DAY + _WEST - 1, False
    frac = int((t.group(4) or "0").ljust(6, "0")[:6])
    moment = start + ((hh * 60 + mm) * 60 + ss) * 1_000_000 + frac
    zone = t.group(5)
    if zone is None:
        return moment - _EAST, moment + _WEST, False
    if zone == "Z":
        return moment, moment, True
    offset = (int(zone[1:3]) * 60 + int(zone[4:6])) * 60_000_000
    moment = moment - offset if zone[0] == "+" else moment + offset
    return moment, moment, True


def _on_or_before_in_utc(raw: Any, as_of: date) -> bool:
    """A time with a zone whose local date is after as_of but whose instant falls on or before
    as_of in UTC (a site east of UTC, screened on the UTC date: a CDS Hooks call): it is not
    in the future, and ignoring it would let an older result decide."""
    lo, _, zoned = time_span(raw)
    return zoned and lo // _US_DAY <= as_of.toordinal()


def may_be_as_new(hi: int, zoned: bool, than_lo: int, than_zoned: bool) -> bool:
    """Whether a result whose span ends at `hi` may be as recent as one whose span starts at
    `than_lo`. Two local times share their (unknown) zone, so they compare on the clock: the
    zone spread added by `time_span` is taken off again."""
    if zoned or than_zoned:
        return hi >= than_lo
    return hi - _WEST >= than_lo + _EAST


def parse_number(raw: Any) -> Fraction | None:
    """A finite JSON number or decimal text -> exact Fraction; None for anything else
    (booleans, NaN, infinities, text that is not a plain decimal)."""
    t = type(raw)
    if t is int:
        return Fraction(raw)
    if t is float:
        return _float_number(repr(raw))
    if t is str:
        # (only short text reaches the cache: a long one is no number anyway, and must not pin
        # megabytes of a hostile payload in memory)
        return _text_number(raw) if len(raw) <= 40 else None
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return Fraction(int(raw))
    if isinstance(raw, float):
        return _float_number(repr(float(raw)))
    if isinstance(raw, str):
        return _text_number(str(raw)) if len(raw) <= 40 else None
    return None


@lru_cache(maxsize=16384)
def _float_number(text: str) -> Fraction | None:
    # the shortest repr names the decimal the sender meant (0.1, not 0.1000000000000000055...)
    if text in ("nan", "inf", "-inf"):
        return None
    return Fraction(Decimal(text))


@lru_cache(maxsize=16384)
def _text_number(raw: str) -> Fraction | None:
    if len(raw) <= 40 and _DECIMAL.match(raw.strip()):
        try:
            return Fraction(Decimal(raw.strip()))
        except InvalidOperation:
            return None
    return None


def _fmt(x: Fraction) -> str:
    if x.denominator == 1:
        return str(x.numerator)
    s = f"{float(x):.6f}".rstrip("0").rstrip(".")
    return s


@lru_cache(maxsize=4096)
def days_before(d: date, days: int) -> date:
    """`d` minus `days`, clamped at the first representable date (an `as_of` near year 1
    must not crash the window arithmetic)."""
    try:
        return d - timedelta(days=days)
    except OverflowError:
        return date.min


def _month_end(d: date) -> date:
    if d.month == 12:
        return date(d.year, 12, 31)
    return date(d.year, d.month + 1, 1) - timedelta(days=1)


def _years_between(born: date, on: date) -> int:
    had_birthday = (on.month, on.day) >= (born.month, born.day)
    return on.year - born.year - (0 if had_birthday else 1)


def prepare(patient: Any, as_of: date) -> Prepared:
    if not isinstance(patient, dict):
        raise PatientDataError((), f"patient must be a JSON object, got {type(patient).__name__}",
                               "type_error")
    pid = patient.get("id")
    prep = Prepared(patient_id=str(pid) if isinstance(pid, (str, int)) and
                    not isinstance(pid, bool) else None, as_of=as_of)
    _demographics(prep, patient)
    for name, fn in (("observations", _observation), ("conditions", _condition),
                     ("exposures", _exposure)):
        items = patient.get(name, [])
        if items is None:
            continue
        if not isinstance(items, list):
            raise PatientDataError((name,), f"{name} must be a list", "type_error")
        if len(items) > MAX_ENTRIES:
            raise PatientDataError((name,), f"too many {name} ({len(items)} > {MAX_ENTRIES})",
                                   "too_large")
        for i, item in enumerate(items):
            loc = f"{name}[{i}]"
            if not isinstance(item, dict):
                prep.issue(loc, "type", f"expected an object, got {type(item).__name__}")
                if name == "conditions":
                    prep.unresolved.append(f"{loc} (not an object)")
                elif name == "exposures":
                    _unplaced_exposure(prep, loc, "is not an object")
                continue
            fn(prep, item, loc)
    if not patient.keys() <= _PATIENT_KEYS:
        _unknown_fields(prep, patient)
    rev = patient.get("reviewed")
    if isinstance(rev, dict):
        for k in ("conditions", "exposures"):
            if k in rev:
                d, complete = parse_date(rev[k])
                if d is None or not complete:
                    prep.issue(f"reviewed.{k}", "date",
                               f"unusable review date {short_repr(rev[k])}")
                elif d > as_of:
                    prep.issue(f"reviewed.{k}", "after_as_of",
                               f"review dated {d} is after as_of {as_of}; ignored")
                else:
                    prep.reviewed[k] = d
    elif rev is not None:
        prep.issue("reviewed", "type", "reviewed must be an object of dates")
    if patient.get("incomplete") is not None:
        _incomplete(prep, patient["incomplete"])
    for lst in prep.readings.values():
        if len(lst) > 1:
            lst.sort(key=_newest_first, reverse=True)
    return prep


#: top-level fields of a canonical patient (screener/schema/patient.schema.json)
_PATIENT_KEYS = frozenset({"id", "birth_date", "age", "sex", "observations", "conditions",
                           "exposures", "reviewed", "incomplete", "name", "note", "source"})
_SECTIONS = ("observations", "conditions", "exposures")


#: keys of `incomplete` read one by one; beyond, every section counts as incomplete (a body of
#: 140,000 unknown keys made a 270 MB report before this bound)
MAX_INCOMPLETE_KEYS = 100
_EVERYTHING = ("observations", "conditions", "exposures")


def _incomplete(prep: Prepared, given: Any, where: str = "incomplete") -> None:
    """`incomplete`: data that may exist but was not received (section or element -> why).
    Every element it covers is unknown wherever what was not sent could change the answer: a
    newer result, a pregnancy or a course of therapy may be in it. (What was sent still counts
    where nothing can undo it: a condition recorded present, a sticky result; see `_present`
    and `_reading`.)"""
    if not isinstance(given, dict) or len(given) > MAX_INCOMPLETE_KEYS:
        prep.issue(where, "type" if not isinstance(given, dict) else "too_large",
                   f"{where} must be an object of at most {MAX_INCOMPLETE_KEYS} sections or "
                   "elements (each -> why); every section is taken as incomplete")
        given = dict.fromkeys(_EVERYTHING, f"unreadable {where!r}")
    for key, why in sorted(given.items(), key=lambda kv: str(kv[0])):
        shown = short_repr(key)
        if not (isinstance(why, str) and why.strip()):
            prep.issue(f"{where}.{shown}", "value", f"the reason for {shown} is not text; "
                       "read as 'data not received'")
        reason = (f"data not received: {cut(why, 200)}" if isinstance(why, str) and why.strip()
                  else "data not received")
        names: tuple[str, ...]
        if key in _SECTION_ELEMENTS:
            names = _SECTION_ELEMENTS[key]
            if key == "conditions":
                # a record not sent may be what a review-based absence would miss
                prep.unresolved.append(f"{where}.conditions ({reason})")
        elif isinstance(key, str) and key in DEMOGRAPHIC:
            prep.issue(f"{where}.{shown}", "value", f"{shown} is given or not (birth date, "
                       "sex): it cannot be incomplete; ignored")
            names = ()
        elif isinstance(key, str) and key in ELEMENTS:
            names = (key,)
        else:
            # an element we do not know: which records it meant is not known, so all of them
            close = did_you_mean(str(key), ELEMENTS) if isinstance(key, str) else None
            prep.issue(f"{where}.{shown}", "unknown_element",
                       f"unknown section or element {shown} in {where}"
                       + (f" (did you mean {close!r}?)" if close else ""), close)
            # a guess at what it meant would narrow it ("hbv" -> hbv_dna, not hbsag): no
            names = tuple(n for sec in _EVERYTHING for n in _SECTION_ELEMENTS[sec])
            prep.unresolved.append(f"{where}.{shown} ({reason})")
        for n in names:
            if n not in DEMOGRAPHIC:
                lst = prep.suspect.setdefault(n, [])
                if reason not in lst:
                    lst.append(reason)


def _unknown_fields(prep: Prepared, patient: Mapping[str, Any]) -> None:
    """Top-level fields we do not read. One that looks like a section ("Conditions",
    "exposure") holds records we are not reading: that section's review-based absence and the
    elements it could hold become unknown, instead of reading as "nothing recorded"."""
    for k in sorted((k for k in patient if k not in _PATIENT_KEYS), key=str):
        shown = short_repr(k)
        section = None
        if isinstance(k, str) and len(k) <= 40:
            norm = k.strip().lower()
            section = next((sec for sec in _SECTIONS if norm in (sec, sec[:-1])), None) or \
                did_you_mean(norm, _SECTIONS)
            if section is None and (norm.startswith("incomplete") or
                                    did_you_mean(norm, ("incomplete",))):
                # "Incomplete", "incompelte", "incomplete_data": what it says cannot be read,
                # and it may say that anything was not received
                prep.issue(shown, "unknown_field", f"unknown field {shown} (did you mean "
                           "'incomplete'?): every section is taken as incomplete")
                _incomplete(prep, dict.fromkeys(
                    _EVERYTHING, f"the patient has a field {shown} that may say so"), shown)
                continue
        if section is None:
            prep.issue(shown, "unknown_field", f"unknown field {shown}: not read")
            continue
        prep.issue(shown, "unknown_field", f"unknown field {shown} (did you mean "
                   f"{section!r}?): its records are not read, so nothing they may say is "
                   "taken as absent")
        why = f"the patient has a field {shown} that may hold {section} records"
        if section == "conditions":
            prep.unresolved.append(f"{shown} (a field that may hold condition records)")
        elif section == "exposures":
            for n in _EXPOSED:
                prep.suspect.setdefault(n, []).append(why)
        else:
            for n in _OBSERVED:
                prep.suspect.setdefault(n, []).append(why)


def _newest_first(r: Reading) -> tuple[int, int, str]:
    return (r.hi, r.lo, r.loc)


def _demographics(prep: Prepared, p: Mapping[str, Any]) -> None:
    as_of = prep.as_of
    if "birth_date" in p and p["birth_date"] is not None:
        raw = p["birth_date"]
        d, complete = parse_date(raw)
        if d is None:
            prep.issue("birth_date", "date", f"unusable birth date {short_repr(raw)}", "age")
        elif d > as_of:
            prep.issue("birth_date", "implausible", f"birth date {raw} is after as_of {as_of}",
                       "age")
        else:
            if complete:
                lo = hi = _years_between(d, as_of)
                if (d.month, d.day) == (2, 29) and (as_of.month, as_of.day) == (2, 28) \
                        and not calendar.isleap(as_of.year):
                    # born on 29 February, screened on 28 February of a common year: whether
                    # the birthday has passed depends on the jurisdiction (28 Feb or 1 Mar)
                    hi = lo + 1
                    prep.age_missing = (f"age at as_of is {lo} or {hi} (born on 29 February: "
                                        "the birthday is 28 February or 1 March by jurisdiction)")
            else:
                # partial date: youngest if born at the end of the period, oldest at its start
                last = date(d.year, 12, 31) if _year_only(raw) else _month_end(d)
                hi = _years_between(d, as_of)
                lo = _years_between(min(last, as_of), as_of)
            if hi > 130:
                prep.issue("birth_date", "implausible", f"age {hi} at as_of is implausible", "age")
            else:
                prep.age, prep.age_source = (lo, hi), f"birth_date {raw}"
                given = p.get("age")
                n = parse_number(given) if given is not None and not isinstance(given, str) \
                    else None
                if given is not None and (n is None or not lo <= n <= hi):
                    # two statements of the age that disagree (or an unreadable one): neither
                    prep.issue("age", "conflict", f"age {short_repr(given)} disagrees with birth "
                               f"date {short_repr(raw)} (age {lo if lo == hi else f'{lo}-{hi}'} "
                               "at as_of): age not used", "age")
                    prep.age = None
                    prep.age_missing = (f"age {short_repr(given)} and birth date "
                                        f"{short_repr(raw)} disagree")
    elif "age" in p and p["age"] is not None:
        raw = p["age"]
        n = parse_number(raw) if not isinstance(raw, str) else None
        if n is None or n.denominator != 1 or not 0 <= n <= 130:
            prep.issue("age", "value", f"unusable age {short_repr(raw)} (whole years 0-130)", "age")
        else:
            prep.age, prep.age_source = (int(n), int(n)), "age (given)"
    sex = p.get("sex")
    if sex is not None:
        s = VALUE_SYNONYMS.get(str(sex).strip().lower(), str(sex).strip().lower()) \
            if isinstance(sex, str) else None
        if s in ("female", "male", "other"):
            prep.sex = s
        elif s not in _UNINFORMATIVE:
            prep.issue("sex", "value",
                       f"unusable sex {short_repr(sex)} (female, male, other, unknown)", "sex")


def _codings(item: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(system, code) pairs of an entry's `codes` (or single `code`); malformed ones dropped."""
    codes = item.get("codes")
    if codes is None and "code" in item:
        codes = [item["code"]]
    if not isinstance(codes, list):
        return []
    return [(c["system"], c["code"]) for c in codes
            if isinstance(c, dict) and isinstance(c.get("system"), str)
            and isinstance(c.get("code"), str)]


def _element_of(item: Mapping[str, Any]) -> str | None:
    el = item.get("element")
    if isinstance(el, str) and el in ELEMENTS:
        return el
    found = _elements_of_codes(item)
    return found[0] if found else None


def _elements_of_codes(item: Mapping[str, Any]) -> list[str]:
    """Every catalogue element an entry's codes name, in code order."""
    out: list[str] = []
    for system, code in _codings(item):
        name = None
        if system == LOINC and code in _LOINC:
            name = _LOINC[code]
        elif system == PROJECT and code in ELEMENTS:
            name = code
        else:
            name = condition_for(system, code)
        if name and name not in out:
            out.append(name)
    return out


_IGNORED_STATUS = {"entered-in-error", "cancelled"}
#: elements recorded as observations (not conditions, exposures or demographics)
_OBSERVED = frozenset(n for n, e in ELEMENTS.items()
                      if e.kind not in ("condition", "exposure") and n not in DEMOGRAPHIC)


def _observation(prep: Prepared, item: Mapping[str, Any], loc: str) -> None:
    get = item.get
    name = get("element")
    if name.__class__ is not str or name not in _OBSERVED:  # the common case: a known name
        name = _element_of(item)
        if name is None:
            _unknown_name(prep, item, loc, "observation")
            return
        if name not in _OBSERVED:
            prep.issue(loc, "wrong_section", f"{name!r} is not an observation", name)
            # a record of it in the wrong place: it exists, and cannot be read as one
            prep.suspect.setdefault(name, []).append(
                f"{loc} records {name} among the observations")
            return
    el = ELEMENTS[name]
    if not item.keys() <= _OBSERVATION_KEYS:
        odd = _odd_keys(item, _OBSERVATION_KEYS)
        if odd:
            # "Status": "entered-in-error" would otherwise count as a final result
            raw_date = get("date")
            day = parse_date(raw_date)[0]
            _unusable(prep, name, day, str(raw_date).strip() if day is not None else "", loc,
                      "unknown_field", f"unknown field(s) {', '.join(map(short_repr, odd))} "
                      "that may change what the result says", loc)
            return
    status = get("status")
    if status is not None and isinstance(status, str) and status in _IGNORED_STATUS:
        # retracted: as if it had never been recorded
        prep.issue(loc, "status", f"status {short_repr(status)}: not used", name)
        return
    raw_date = get("date")
    day, complete = parse_date(raw_date)
    stamp = str(raw_date).strip() if day is not None else ""
    if day is not None and day > prep.as_of and not _on_or_before_in_utc(raw_date, prep.as_of):
        prep.issue(f"{loc}.date", "after_as_of",
                   f"dated {day}, after as_of {prep.as_of}: not used", name)
        return
    if day is not None and not complete:
        # "2026-10": it may be the newest result, and inside a window or not; dated at the
        # period's last possible day, it hides what it may be newer than
        last = min(_period_end(raw_date, day) or day, prep.as_of)
        _unusable(prep, name, last, stamp, loc, "partial_date",
                  f"partial date {short_repr(raw_date)}: when it was taken is not known",
                  f"{loc}.date")
        return

    if day is None:
        why = "no date" if raw_date is None else f"unusable date {short_repr(raw_date)}"
        raw_value = get("value")
        if isinstance(raw_value, str) and raw_value.startswith(UNREADABLE_PREFIX):
            # an adapter's unreadable record: its own reason first (a quote left open, ...)
            why = f"{cut(raw_value[len(UNREADABLE_PREFIX):].strip(), 200)}; {why}"
        _unusable(prep, name, day, stamp, loc, "date", why, f"{loc}.date")
        return
    if status is not None and not (isinstance(status, str) and status in _OK_STATUS):
        _unusable(prep, name, day, stamp, loc, "status",
                  f"status {short_repr(status)} is not final", loc)
        return
    source = _source(get("source"), loc)
    raw = get("value")
    comparator = get("comparator")
    if comparator is not None and comparator not in ("", "="):
        _unusable(prep, name, day, stamp, loc, "censored", f"censored value "
                  f"{item.get('comparator')}{raw}: cannot decide a threshold", loc)
        return
    value: Fraction | str | None
    if el.kind == "quantity":
        q = _quantity(prep, el, item, loc)
        if q.value is None:
            code, msg, where = q.problem
            _unusable(prep, name, day, stamp, loc, code, msg, loc + where)
            return
        prep.readings.setdefault(name, []).append(Reading(
            name, q.value, stamp, day, q.uln, q.shown, source, loc, q.code, q.ratio,
            q.ratio_shown, q.uln_shown, *time_span(raw_date), bool(q.range_problem)))
        return
    elif el.kind == "boolean":
        value = _boolean(raw)
        if value is None:
            _unusable(prep, name, day, stamp, loc, "value",
                      f"{name} must be true or false, got {short_repr(raw)}", loc)
            return
        shown = value
    else:
        unit = get("unit")
        if el.name in ("hbv_dna", "hcv_rna") and not isinstance(raw, (str, bool)):
            # log10 IU/mL ("log", UCUM "lg", or a log LOINC code): 0 is 1 IU/mL (detected), and
            # labs also write 0 for "not detected"; so 0 says "not detected" only in a linear
            # unit (IU/mL, copies/mL)
            norm = normalise_unit(unit) if isinstance(unit, str) else ""
            log = "log" in norm or norm.startswith("lg") or any(
                code in _LOG_VIRAL_LOINC for _, code in _codings(item))
            n = parse_number(raw)
            if n is not None and (n < 0 or (n == 0 and (log or norm not in _LINEAR_VL))):
                _unusable(prep, name, day, stamp, loc, "value", f"{name} {short_repr(raw)} "
                          f"{short_repr(unit)}: " + (
                              "a log value of 0 or less does not say whether the virus was "
                              "detected" if log else "0 without a linear unit (IU/mL, "
                              "copies/mL) does not say whether the virus was detected: as "
                              "log10 IU/mL it is 1 IU/mL"), loc)
                return
        value = _coded(el, raw)
        if value is None:
            _unusable(prep, name, day, stamp, loc, "value",
                      f"unusable value {short_repr(raw)} for {name} ({', '.join(el.values)})", loc)
            return
        if value in _UNINFORMATIVE:
            _unusable(prep, name, day, stamp, loc, "indeterminate", f"{name} result is {value}",
                      loc)
            return
        shown = value
    prep.readings.setdefault(name, []).append(
        Reading(name, value, stamp, day, None, shown, source, loc, value, None, "", "",
                *time_span(raw_date)))


#: provenance labels longer than this are cut in reports (a record's `source` is shown beside
#: every criterion that reads it; the input itself is kept whole, see `input_hash`)
MAX_SOURCE_CHARS = 200


def _source(given: Any, loc: str) -> str:
    return cut(str(given or loc), MAX_SOURCE_CHARS)


def _unusable(prep: Prepared, name: str, day: date | None, stamp: str, loc: str, code: str,
              msg: str, where: str) -> None:
    # An unusable result still counts as the newest evidence of its date: it may say
    # something the older usable results do not, so it hides them (see `_reading`).
    prep.issue(where, code, msg, name)
    prep.unusable.setdefault(name, []).append((day, stamp, msg, loc,
                                               time_span(stamp) if day is not None else
                                               (0, 0, False)))


def _system_name(system: str) -> str:
    return {SNOMED: "SNOMED CT", LOINC: "LOINC", PROJECT: "project"}.get(system, system)


def _broader_of(item: Mapping[str, Any]) -> list[str]:
    """Every element the entry's broader codes make possible, in code order."""
    out: list[str] = []
    for system, code in _codings(item):
        for name in condition_broader(system, code):
            if name not in out:
                out.append(name)
    return out


#: unknown element names checked for misspellings per patient; beyond this, every element is
#: treated as possibly misspelt (each check is a fuzzy match over the catalogue: a 2 MiB body
#: of 21,000 distinct unknown names took 7.5 s before this bound)
MAX_SPELLING_CHECKS = 200
def _close_element(name: str) -> str | None:
    """The catalogue element `name` may be a misspelling of (cached for short names, as
    `parse_date` caches dates: registries repeat their misspellings)."""
    return _close_cached(name) if len(name) <= _MAX_CACHED_TEXT else did_you_mean(name, ELEMENTS)


@lru_cache(maxsize=8192)
def _close_cached(name: str) -> str | None:
    return did_you_mean(name, ELEMENTS)


def _unknown_name(prep: Prepared, item: Mapping[str, Any], loc: str, what: str) -> None:
    """An entry we cannot map. A misspelt element name in canonical JSON may hide a relevant
    record, so a close match makes that element unusable instead of silently absent."""
    el = item.get("element")
    if isinstance(el, str):
        prep.unknown_names += 1
        if prep.unknown_names > MAX_SPELLING_CHECKS:
            if prep.unknown_names == MAX_SPELLING_CHECKS + 1:
                why = (f"more than {MAX_SPELLING_CHECKS} entries have unknown element names "
                       f"(from {loc} on, not checked for misspellings): a misspelt record of "
                       "this element cannot be ruled out")
                for name in ELEMENTS:
                    prep.suspect.setdefault(name, []).append(why)
                prep.issue(loc, "unknown_element", why)
            return
        close = _close_element(el)
        prep.issue(loc, "unknown_element", f"unknown element {short_repr(el)}"
                   + (f" (did you mean {close!r}?)" if close else ""), close)
        if close:
            prep.suspect.setdefault(close, []).append(
                f"{loc} has unknown element {short_repr(el)}")
        return
    prep.issue(loc, "unmapped", f"{what} code not used by any rule: "
               f"{short_repr(item.get('code') or item.get('codes'))}")


def _key(x: Any) -> Any:
    """A cache key that tells apart what equality does not (1, 1.0, True, "1"; 0.0 and -0.0
    print differently), or `_UNCACHED` for values whose messages could differ and for long
    text (see `_MAX_CACHED_TEXT`)."""
    t = type(x)
    if t is str:
        return x if len(x) <= _MAX_CACHED_TEXT else _UNCACHED
    if t is int:
        return x if -_MAX_CACHED_INT < x < _MAX_CACHED_INT else _UNCACHED
    if x is None:
        return x
    if t is float:
        return ("float", repr(x))
    return _UNCACHED


_UNCACHED = object()
_MAX_CACHED_INT = 10**18
#: (element, value, unit, has range, range high, range unit) -> _QuantityResult
_QUANTITIES: dict[tuple[Any, ...], _QuantityResult] = {}
_QUANTITIES_MAX = 200_000


class _QuantityResult(NamedTuple):
    value: Fraction | None     # canonical unit; None: unusable, see `problem`
    uln: Fraction | None
    shown: str
    problem: tuple[str, str, str]   # (code, message, location suffix) when value is None
    range_problem: str              # message when the reference range is unusable
    code: int | None
    ratio: int | None
    ratio_shown: str
    uln_shown: str


def _quantity(prep: Prepared, el: Element, item: Mapping[str, Any], loc: str
              ) -> _QuantityResult:
    """A measured value in the element's canonical unit, with its ULN when it has one.

    The work depends only on the element, value, unit and reference range, which registries
    repeat endlessly: results are cached (exact keys, see `_key`; the cache is pure, so it
    never changes an answer, and is emptied when large)."""
    raw = item.get("value")
    unit_raw = item.get("unit")
    rr = item.get("reference_range")
    has_rr = False
    high = rr_unit = None
    if el.uln and isinstance(rr, dict) and rr.get("high") is not None:
        has_rr = True
        high = rr.get("high")
        # a range without a unit is in the value's unit; one with a unit that is not text is
        # unusable (it was read as the value's unit)
        rr_unit = rr.get("unit") if rr.get("unit") is not None else unit_raw
    key = (el.name, _key(raw), _key(unit_raw), has_rr, _key(high), _key(rr_unit))
    hit = None if _UNCACHED in key else _QUANTITIES.get(key)
    if hit is not None:
        res = hit
    else:
        res = _quantity_core(el, raw, unit_raw, has_rr, high, rr_unit)
        if _UNCACHED not in key:
            if len(_QUANTITIES) >= _QUANTITIES_MAX:
                _QUANTITIES.clear()
            _QUANTITIES[key] = res
    if res.range_problem:
        prep.issue(f"{loc}.reference_range", "reference_range", res.range_problem, el.name)
    return res


#: a result more than this many times its own ULN is implausible (see `_quantity_core`)
MAX_X_ULN = 10_000


def _quantity_core(el: Element, raw: Any, unit_raw: Any, has_rr: bool, high_raw: Any,
                   rr_unit: Any) -> _QuantityResult:
    def bad(code: str, msg: str, where: str) -> _QuantityResult:
        return _QuantityResult(None, None, "", (code, msg, where), "", None, None, "", "")

    n = parse_number(raw)
    if n is None:
        if isinstance(raw, str) and raw.startswith(UNREADABLE_PREFIX):
            # an adapter's stand-in for a result it could not read (FHIR: a result from an
            # incomplete search page, a value it cannot map): its own words say why
            return bad("value", f"{el.name}: {cut(raw[len(UNREADABLE_PREFIX):].strip(), 200)}",
                       ".value")
        return bad("value", f"{el.name} needs a finite number, got {short_repr(raw)}", ".value")
    unit = normalise_unit(unit_raw if isinstance(unit_raw, str) else None)
    factor = el.units.get(unit)
    if factor is None:
        return bad("unit", f"unknown unit {short_repr(unit_raw)} for {el.name} (accepted: "
                   f"{', '.join(sorted(u for u in el.units if u))})", ".unit")
    value = n * factor if factor != 1 else n
    lo, hi = _BOUNDS[el.name]
    if lo is not None and hi is not None and not lo <= value <= hi:
        return bad("implausible", f"{el.name} {_fmt(n)} {unit_raw or ''} is outside the "
                   f"plausible range {_fmt(lo)}-{_fmt(hi)} {el.unit}", ".value")
    if el.integer and value.denominator != 1:
        return bad("value", f"{el.name} must be a whole number, got {short_repr(raw)}", ".value")
    uln = None
    range_problem = ""
    if has_rr:
        high = parse_number(high_raw)
        r_unit = normalise_unit(rr_unit if isinstance(rr_unit, str) else None)
        rfactor = el.units.get(r_unit)
        if el.range_in_value_unit and rfactor is not None and r_unit != unit:
            range_problem = (f"upper limit {short_repr(high_raw)} {rr_unit} is in another unit "
                             f"than the value ({unit_raw}): {el.label} cannot be converted "
                             "between them (BUN and urea differ)")
        elif high is None or high <= 0 or rfactor is None or not isinstance(rr_unit, str):
            range_problem = (f"unusable upper limit {short_repr(high_raw)} "
                             f"{rr_unit if isinstance(rr_unit, str) else short_repr(rr_unit)}")
        else:
            uln = high * rfactor
            band = el.uln_band
            if band is not None and not band[0] <= uln <= band[1]:
                # 106 read as mg/dL of creatinine (it was umol/L), 40 ukat/L of ALT: the ratio
                # would be off 17- to 88-fold, deciding x ULN criteria on a unit mix-up
                range_problem = (f"upper limit {short_repr(high_raw)} {rr_unit} is "
                                 f"{_fmt(uln)} {el.unit}, outside the usual band "
                                 f"{_fmt(band[0])}-{_fmt(band[1])} {el.unit} of {el.label} "
                                 "upper limits: a unit mix-up?")
                uln = None
    shown = f"{_fmt(n)} {unit_raw}".strip() if isinstance(unit_raw, str) else _fmt(n)
    ratio = ratio_shown = uln_shown = None
    if uln is not None and value > uln * MAX_X_ULN:
        # ALT 100,000 U/L is 2,500 x a ULN of 40: a larger ratio means the range (a high of
        # 1e-9, a unit slip) or the value is wrong, and would decide x ULN criteria on nonsense
        range_problem = (f"implausible upper limit {short_repr(high_raw)} {rr_unit or ''}: the "
                         f"value would be more than {MAX_X_ULN:,} x ULN")
        uln = None
    if uln is not None:
        r = value / uln
        ratio, ratio_shown, uln_shown = encode_number(r), _fmt(r), f"{_fmt(uln)} {el.unit}"
    return _QuantityResult(value, uln, shown, ("", "", ""), range_problem,
                           encode_number(value), ratio, ratio_shown or "", uln_shown or "")


def _boolean(raw: Any) -> str | None:
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, str) and raw.strip().lower() in ("true", "yes", "false", "no"):
        return "true" if raw.strip().lower() in ("true", "yes") else "false"
    return None


#: viral load LOINC codes reported in log10 units (HBV DNA, HCV RNA)
_LOG_VIRAL_LOINC = frozenset({"48398-2", "38180-6"})
#: linear viral load units (normalised spelling): in these, 0 means not detected
_LINEAR_VL = frozenset({"iu/ml", "[iu]/ml", "copies/ml", "{copies}/ml", "copies/ml{rna}",
                        "cp/ml", "cps/ml", "{cp}/ml"})


def _coded(el: Element, raw: Any) -> str | None:
    if el.name in ("hbv_dna", "hcv_rna") and not isinstance(raw, (str, bool)):
        n = parse_number(raw)
        if n is None or n < 0:
            return None
        return "detected" if n > 0 else "not_detected"
    if not isinstance(raw, str):
        return None
    s = coded_spelling(el, raw)
    if s in _UNINFORMATIVE:
        return s
    return s if s in el.values else None


def _condition(prep: Prepared, item: Mapping[str, Any], loc: str) -> None:
    el = item.get("element")
    if not (isinstance(el, str) and el in ELEMENTS):
        names = _elements_of_codes(item)
        if isinstance(el, str) and names:
            prep.issue(loc, "unknown_element", f"unknown element {short_repr(el)}; read by its "
                       f"code(s) as {', '.join(names)}", names[0])
        if len(names) > 1:
            # codes for two conditions (heart failure and an MI): a record of each, as the
            # FHIR adapter does, not only the first
            for n in names:
                _condition_of(prep, {**item, "element": n}, loc, n)
            return
    _condition_of(prep, item, loc, _element_of(item))


def _condition_of(prep: Prepared, item: Mapping[str, Any], loc: str, name: str | None) -> None:
    broader = _broader_of(item) if name is None else []
    if broader and item.get("present") is False:
        # "no atrial fibrillation" does not say "no clinically significant arrhythmia"
        for b in broader:
            prep.issue(loc, "broader_code", f"a documented absence of a concept broader than or "
                       f"beside {b!r} does not prove {b!r} absent: not used", b)
        return
    if broader:
        # e.g. "acute lymphoblastic leukemia" for B-ALL: possible, not proven; a code that may
        # be either of two (K55.0: an arterial thrombosis or a severe GI dysfunction) makes
        # each possible
        for b in broader:
            prep.issue(loc, "broader_code", f"coded with a broader concept than {b!r}: "
                       "unconfirmed", b)
            _condition_record(prep, {**item, "verification_status": "unconfirmed"}, loc, b)
        return
    if name is None:
        # unmapped diagnosis codes are normal (a record holds many): noted without alarm
        _unknown_name(prep, item, loc, "condition")
        codings = _codings(item)
        if isinstance(item.get("element"), str):
            # a name the catalogue does not know ("PE", "stroke") may be a listed condition
            if item.get("present") is not False:
                prep.unresolved.append(f"{loc} (element {short_repr(item['element'])})")
        elif not any(system in (ICD10, ICD10CM) for system, _ in codings):
            # ICD-10 codes are matched by prefix, so an unmatched one is some other disease;
            # anything else (a SNOMED child concept, a local code, no code) might be ours
            shown = ", ".join(f"{_system_name(system)} {code}" for system, code in codings)
            prep.unresolved.append(f"{loc} ({shown or 'no usable code'})")
        return
    _condition_record(prep, item, loc, name)


def _condition_record(prep: Prepared, item: Mapping[str, Any], loc: str, name: str) -> None:
    if ELEMENTS[name].kind != "condition":
        prep.issue(loc, "wrong_section", f"{name!r} is not a condition", name)
        # a record of it in the wrong place: it exists, and cannot be read as one
        prep.suspect.setdefault(name, []).append(f"{loc} records {name} among the conditions")
        return
    source = _source(item.get("source"), loc)
    if _refused_for_odd_keys(prep, item, _CONDITION_KEYS, loc, name, "condition"):
        return
    present = item.get("present")
    if present is False:
        d, _ = parse_date(item.get("date"))
        if d is None:
            prep.issue(f"{loc}.date", "date", "documented absence without a usable date: not "
                       "used", name)
        elif d > prep.as_of:
            prep.issue(f"{loc}.date", "after_as_of", f"dated {d}, after as_of: not used", name)
        else:
            prep.negatives.setdefault(name, []).append((d, source))
        return
    if present not in (None, True):
        prep.issue(f"{loc}.present", "value", "present must be true or false", name)
        prep.suspect.setdefault(name, []).append(f"{loc} has an unreadable 'present'")
        return
    ver = item.get("verification_status")
    if isinstance(ver, str):
        ver = ver.strip().lower()
        if ver in _NEVER:
            return
    onset, later = _event_day(prep, item, "onset", loc, name)
    if later:
        return
    onset_last = _period_end(item.get("onset"), onset)
    if onset is not None and item.get("onset_from") in _ONSET_UPPER_BOUNDS:
        # only a latest date: it began then or at any time before (a partial date: up to the
        # end of its month or year)
        onset, onset_last = None, onset_last
    abatement = abatement_last = None
    ended_unknown = False
    if item.get("abatement") is not None:
        raw_end = item.get("abatement")
        d, _ = parse_date(raw_end)
        if d is None:
            # an end is recorded: read as no end, the condition would count as still going on
            ended_unknown = True
            if not (isinstance(raw_end, str) and raw_end.strip().lower() == "unknown"):
                prep.issue(f"{loc}.abatement", "date", f"unusable abatement date "
                           f"{short_repr(raw_end)}: it ended, when is not known", name)
        elif d <= prep.as_of:
            abatement, abatement_last = d, min(_period_end(item.get("abatement"), d) or d,
                                               prep.as_of)
    clinical = item.get("clinical_status")
    clinical = clinical.strip().lower() if isinstance(clinical, str) else None
    # confirmed or not given counts; anything else (provisional, differential, unconfirmed,
    # or a status we do not know) is doubtful
    doubtful = ver is not None and ver != "confirmed"
    if doubtful and not (isinstance(ver, str) and ver in _DOUBTFUL):
        prep.issue(f"{loc}.verification_status", "value",
                   f"unknown verification status {short_repr(ver)}: read as unconfirmed", name)
    prep.conditions.setdefault(name, []).append(CondRecord(
        name, onset, abatement, clinical, doubtful, source, loc, onset_last, abatement_last,
        ended_unknown))


def _period_end(raw: Any, first: date | None) -> date | None:
    """The last day a date may mean: itself for a full date, the end of the month or year for a
    partial one."""
    if first is None:
        return None
    d, complete = parse_date(raw)
    if complete or d is None:
        return first
    return date(d.year, 12, 31) if _year_only(raw) else _month_end(d)


def _year_only(raw: Any) -> bool:
    """A partial date that gives only the year ("2025", also "2025T12:00")."""
    m = _DATE.match(str(raw).strip())
    return m is not None and not m.group(3)


_CONDITION_KEYS = frozenset({"element", "code", "codes", "onset", "abatement", "clinical_status",
                             "verification_status", "present", "date", "source", "onset_from",
                             "display", "text", "note", "id"})
_OBSERVATION_KEYS = frozenset({"element", "code", "codes", "value", "unit", "comparator",
                               "reference_range", "date", "status", "source", "display", "text",
                               "note", "id"})
_EXPOSURE_KEYS = frozenset({"element", "code", "codes", "days", "start", "end", "at", "source",
                            "display", "text", "note", "id"})


def _refused_for_odd_keys(prep: Prepared, item: Mapping[str, Any], known: frozenset[str],
                          loc: str, name: str, what: str) -> bool:
    """True (with an issue, the element suspect) when the record has fields that look like
    known ones written differently: it is not used, and what it may say is not absent."""
    odd = _odd_keys(item, known)
    if not odd:
        return False
    shown = ", ".join(map(short_repr, odd))
    article = "an" if what[0] in "aeiou" else "a"
    prep.issue(loc, "unknown_field", f"unknown field(s) {shown} in {article} {what} record: "
               "record not used", name)
    prep.suspect.setdefault(name, []).append(f"{loc} has field(s) {shown} that may change its "
                                             "meaning")
    return True


def _odd_keys(item: Mapping[str, Any], known: frozenset[str]) -> list[str]:
    """Keys of an entry that look like a known field written differently ("Present", "Status",
    "onset_date"): the field they mean is then read as absent, which could change what the
    record says, so the record cannot be used. Other extra keys are harmless and ignored."""
    if item.keys() <= known:
        return []
    return sorted(k for k in item
                  if k not in known and isinstance(k, str) and _looks_like_field(k, known))


@lru_cache(maxsize=4096)
def _looks_like_field(key: str, known: frozenset[str]) -> bool:
    if len(key) > 40:   # no misspelling of a field name is this long
        return False
    norm = key.strip().lower().replace("-", "_").replace(" ", "_")
    return norm in known or did_you_mean(norm, known) is not None


def _event_day(prep: Prepared, item: Mapping[str, Any], key: str, loc: str,
               name: str) -> tuple[date | None, bool]:
    """(date, after as_of) of an event's onset or start. An unusable date is None with an
    issue: the record is kept without it (its criteria become unknown), never dropped."""
    raw = item.get(key)
    if raw is None:
        return None, False
    day, _ = parse_date(raw)
    if day is None:
        prep.issue(f"{loc}.{key}", "date", f"unusable {key} {short_repr(raw)}", name)
        return None, False
    if day > prep.as_of:
        prep.issue(f"{loc}.{key}", "after_as_of", f"{key} {day} is after as_of: not used", name)
        return day, True
    return day, False


_EXPOSED = tuple(n for n, e in ELEMENTS.items() if e.kind == "exposure")
_CONDITIONS = tuple(n for n, e in ELEMENTS.items() if e.kind == "condition")
_SECTION_ELEMENTS = {"observations": tuple(sorted(_OBSERVED)), "conditions": _CONDITIONS,
                     "exposures": _EXPOSED}


def _unplaced_exposure(prep: Prepared, loc: str, why: str) -> None:
    """An exposure record we cannot read may be a course of any catalogue drug: no therapy
    review can then prove the days."""
    for n in _EXPOSED:
        prep.suspect.setdefault(n, []).append(f"{loc} {why} (it may be a {n} course)")


def _exposure(prep: Prepared, item: Mapping[str, Any], loc: str) -> None:
    name = item.get("element")
    if not isinstance(name, str) or name not in ELEMENTS or ELEMENTS[name].kind != "exposure":
        _unknown_name(prep, item, loc, "exposure")
        if not isinstance(name, str):
            _unplaced_exposure(prep, loc, "is an exposure record without an element name")
        elif name in ELEMENTS:
            prep.issue(loc, "wrong_section", f"{name!r} is not an exposure", name)
            prep.suspect.setdefault(name, []).append(f"{loc} records {name} among the exposures")
        return
    if _refused_for_odd_keys(prep, item, _EXPOSURE_KEYS, loc, name, "exposure"):
        return
    source = _source(item.get("source"), loc)
    if item.get("at") is not None and all(item.get(k) is None for k in ("start", "end", "days")):
        at, later = _event_day(prep, item, "at", loc, name)
        if later:
            return
        prep.exposures.setdefault(name, []).append(Exposure(
            name, None, None, source, loc, None,
            "" if at is not None and parse_date(item.get("at"))[1] else
            f"{name} given on {short_repr(item.get('at'))} ({loc}): not a full date", at))
        return
    start, later = _event_day(prep, item, "start", loc, name)
    if later:
        return
    problem = ""
    partial = item.get("start") is not None and start is not None and \
        not parse_date(item.get("start"))[1]
    end = None
    if item.get("end") is not None:
        d, complete = parse_date(item.get("end"))
        if d is None:
            prep.issue(f"{loc}.end", "date", f"unusable end {short_repr(item.get('end'))}", name)
            problem = f"{name} course {loc} has an unusable end date"
        else:
            end = d
            partial = partial or not complete
    days: int | None = None
    if item.get("days") is not None:
        n = parse_number(item["days"]) if not isinstance(item["days"], str) else None
        if n is None or n.denominator != 1 or not 0 <= n <= 3650:
            # kept with an unknown duration (the criterion becomes unknown), never dropped
            prep.issue(f"{loc}.days", "value", f"unusable days {short_repr(item['days'])}", name)
            problem = f"{name} course {loc} has unusable days"
        else:
            days = int(n)
    if partial:
        # a partial date cannot place the course: its days count only if stated, undated
        if days is None:
            problem = problem or f"{name} course {loc} has a partial date: its days are unknown"
        start = end = None
    elif start is not None and end is not None:
        if end < start:
            problem = problem or f"{name} course {loc} ends before it starts"
        elif days is not None and days != (end - start).days + 1:
            problem = problem or (f"{name} course {loc}: {days} days stated, but its dates span "
                                  f"{(end - start).days + 1}")
        end = min(end, prep.as_of)
    elif start is not None and days is not None:
        # stated days from a start date: only those up to as_of have been given
        # (on ordinals: start + days may lie past 9999-12-31)
        end = date.fromordinal(min(start.toordinal() + days - 1, prep.as_of.toordinal())) \
            if days > 0 else None
    elif start is not None and days is None:
        problem = problem or f"{name} exposure without a duration"
    elif start is None and end is not None:
        start = end = None   # an end alone places nothing: the stated days count, undated
    if start is None and days is None and not problem:
        problem = f"{name} exposure without a duration"
    prep.exposures.setdefault(name, []).append(
        Exposure(name, days, start, source, loc, end, problem))


# ---- filling slots --------------------------------------------------------------------------

@dataclass
class Facts:
    values: dict[str, int | str]
    evidence: dict[str, dict[str, Any]]


def _within(day: date, as_of: date, days: int | None) -> bool:
    return days is None or (as_of - day).days <= days


def fill(prep: Prepared, trial: Trial, detail: bool = True) -> Facts:
    """Engine values for every slot the trial reads, with evidence per slot.

    `detail=False` (the batch path) leaves out the display parts of the evidence (values,
    dates, sources, ratios): only `element` and, for unknown slots, `missing` are kept.
    """
    values: dict[str, int | str] = {}
    evidence: dict[str, dict[str, Any]] = {}
    filled = prep.filled
    for slot, key, ck, how, head in _plan(trial, detail):
        hit = filled.get(ck)
        if hit is None:
            ev = dict(head)
            if how == _READING:
                value = _reading(prep, slot, trial.site_uln, ev, detail)
            elif how == _PRESENT:
                value = _present(prep, slot, trial.review_max_age_days, ev, detail)
            elif how == _DAYS:
                value = _days(prep, slot, trial.review_max_age_days, ev)
            elif how == _AGE:
                value = _age(prep, ev)
            else:
                value = prep.sex
                if value is None:
                    ev["missing"] = "sex not recorded"
                else:
                    ev["value"] = value
            hit = filled[ck] = (value, ev)
        if hit[0] is not None:
            values[key] = hit[0]
        evidence[key] = hit[1]
    return Facts(values, evidence)


_READING, _PRESENT, _DAYS, _AGE, _SEX = range(5)
_PlanEntry = tuple[Slot, str, int, int, dict[str, Any]]
#: everything a slot's filling depends on besides the record -> a small integer, the key of
#: `Prepared.filled` (an int hashes at once; the tuple was hashed on every lookup). Grows only
#: with distinct rule content, not with patients.
_FILL_IDS: dict[tuple[Any, ...], int] = {}


def _plan(trial: Trial, detail: bool) -> list[_PlanEntry]:
    return _plans(trial)[detail]


@per_object(256)
def _plans(trial: Trial) -> dict[bool, list[_PlanEntry]]:
    """Per slot of the trial, computed once per trial object (with and without detail): the
    slot, its key, the cache key (everything its filling depends on besides the record, so
    trials screened with the same record share filled slots), how to fill it, and the evidence
    every filling starts from."""
    plans: dict[bool, list[_PlanEntry]] = {False: [], True: []}
    for slot in slots_of(trial):
        how = (_PRESENT if slot.mode == "present" else _DAYS if slot.mode == "days"
               else _AGE if slot.element == ("age",) else _SEX if slot.element == ("sex",)
               else _READING)
        head: dict[str, Any] = {"element": "+".join(slot.element)}
        if slot.within_days is not None:
            head["window_days"] = slot.within_days
        for detail, plan in plans.items():
            # the site ULNs by their text: hashing the Fractions themselves on every lookup
            # was a measurable share of fill
            ck = (slot.key, trial.review_max_age_days,
                  repr(trial.site_uln) if slot.mode == "uln" else "", detail)
            plan.append((slot, slot.key, _FILL_IDS.setdefault(ck, len(_FILL_IDS)), how, head))
    return plans


def _age(prep: Prepared, ev: dict[str, Any]) -> int | None:
    if prep.age is None:
        ev["missing"] = prep.age_missing or "no usable birth date or age"
        return None
    lo, hi = prep.age
    ev["source"] = prep.age_source
    if lo != hi:
        ev["missing"] = prep.age_missing or f"age at as_of is {lo} or {hi} (birth date is partial)"
        return None
    ev["value"] = lo
    return encode_number(Fraction(lo))


def _reading(prep: Prepared, slot: Slot, site_uln: tuple[tuple[str, Fraction], ...],
             ev: dict[str, Any], detail: bool = True) -> int | str | None:
    name = slot.element[0]
    readings = prep.readings.get(name, ())
    win = slot.within_days
    if win is None:
        usable = readings
    else:
        start = days_before(prep.as_of, win)
        # (results are in order of their moments, not their recorded days: filter them all)
        usable = [r for r in readings if r.day >= start]
    sticky = ELEMENTS[name].sticky
    if sticky is not None and usable:
        kept = next((r for r in usable if r.value == sticky), None)
        if kept is not None:
            # decisive whatever newer, unusable or conflicting results say (see Element.sticky)
            if detail:
                ev["value"] = kept.shown
                ev["date"] = kept.day.isoformat()
                ev["source"] = kept.source
                if kept is not usable[0]:
                    ev["basis"] = (f"a {sticky} result is not cleared by later results "
                                   f"(newest: {usable[0].shown} on {usable[0].day})")
            return kept.code
    if name in prep.suspect:
        # records that cannot be read, or not received: they may be newer than what was read
        # (a sticky value read above stands whatever they say)
        ev["missing"] = "; ".join(prep.suspect[name])
        return None
    top_lo, top_zoned = (usable[0].lo, usable[0].zoned) if usable else (0, False)
    for day, stamp, why, loc, (_, u_hi, u_zoned) in prep.unusable.get(name, ()):
        # an unusable result that may be as new as the newest usable one (or undated) hides it
        # (for a sticky element, any unusable result in the window may be the sticky value)
        if day is None or (_within(day, prep.as_of, win) and (
                not usable or sticky is not None or
                may_be_as_new(u_hi, u_zoned, top_lo, top_zoned))):
            when = f"of {stamp}" if day is not None else "without a date"
            ev["missing"] = f"{name} result {when} ({loc}) is unusable: {why}"
            return None
    if not usable:
        if readings:
            ev["missing"] = (f"newest {name} is from {readings[0].day}, older than "
                             f"{win} days before as_of")
            ev["stale"] = {"date": readings[0].day.isoformat(), "source": readings[0].source}
        else:
            ev["missing"] = f"no {name} result"
        return None
    newest = usable[0]
    if len(usable) > 1:
        # results that may be as new as the newest (same moment, or spans that overlap; with
        # local times and instants mixed, not only the next in order)
        same = [r for r in usable if may_be_as_new(r.hi, r.zoned, newest.lo, newest.zoned)]
        if len(same) > 1 and len({(r.value, r.uln) for r in same}) > 1:
            stamps = sorted({r.stamp for r in same})
            at = (f"at {stamps[0]}" if len(stamps) == 1 else
                  "that may be equally recent (" + ", ".join(stamps) + ")")
            ev["missing"] = (f"conflicting {name} results {at}: "
                             + ", ".join(sorted({r.shown for r in same})))
            return None
    if detail:
        ev["value"] = newest.shown
        ev["date"] = newest.day.isoformat()
        ev["source"] = newest.source
    if slot.mode == "uln":
        code, ratio_shown, uln_shown = newest.ratio, newest.ratio_shown, newest.uln_shown
        if newest.uln is None:
            if newest.range_unusable:
                ev["missing"] = (f"{name} result of {newest.day} has a reference range that "
                                 "cannot be used (see data issues)"
                                 + ("; the site default applies only to results without one"
                                    if name in dict(site_uln) else ""))
                return None
            uln = dict(site_uln).get(name)
            if uln is None:
                ev["missing"] = f"{name} result of {newest.day} has no reference range upper limit"
                return None
            ev["uln_source"] = "site default"
            assert isinstance(newest.value, Fraction)
            ratio = newest.value / uln
            code, ratio_shown = encode_number(ratio), _fmt(ratio)
            uln_shown = f"{_fmt(uln)} {ELEMENTS[name].unit}"
        if detail:
            ev["uln"] = uln_shown
            ev["ratio"] = ratio_shown
        if code is None:
            ev["missing"] = f"{name} ratio to ULN {ratio_shown} is outside the representable range"
        return code
    if newest.code is None:
        ev["missing"] = f"{name} value {newest.shown} is outside the representable range"
    return newest.code


def _fresh(d: date, prep: Prepared, max_age: int) -> bool:
    return (prep.as_of - d).days <= max_age


def _present(prep: Prepared, slot: Slot, max_age: int, ev: dict[str, Any],
             detail: bool = True) -> str | None:
    conds, suspect, negatives = prep.conditions, prep.suspect, prep.negatives
    for n in slot.element:
        if n in conds or n in suspect or n in negatives:
            break
    else:
        # nothing recorded about these conditions (the usual case): only a review can say
        return _reviewed_absent(prep, slot, max_age, ev)
    as_of, win = prep.as_of, slot.within_days
    start = days_before(as_of, win) if win is not None else None
    hits: list[CondRecord] = []
    doubts: list[str] = [why for name in slot.element for why in prep.suspect.get(name, [])]
    for name in slot.element:
        point = ELEMENTS[name].point_event
        for r in prep.conditions.get(name, []):
            placed, why = _place(r, slot.active, start, point)
            if placed is None:
                continue   # cannot fall in the window (or is not active), confirmed or not
            if r.doubtful:
                # placed in the window but not confirmed (provisional, broader code, ...)
                doubts.append(f"{name} ({r.source}) is not confirmed")
            elif placed:
                hits.append(r)
            else:
                doubts.append(why)
    if hits and slot.active and any(n in prep.suspect for n in slot.element):
        # records not received or not readable may say it ended (see the rule below)
        doubts.append(f"{hits[0].element} ({hits[0].source}) is active, but records of it "
                      "that were not received or cannot be read may say it ended")
        hits = []
    if hits and slot.active:
        # another record of the same condition that ended after this one began (or was
        # recorded later, ended at a time not given): the same episode, now over, or a
        # second one? The active status cannot be taken over it (a stale problem-list entry
        # beside a resolved one decided 'active heart failure')
        clean = []
        for r in hits:
            # the earliest it may have begun (a partial onset "2020": January)
            began = (r.onset if r.onset is not None else r.onset_last) or date.min
            ended = [o for o in prep.conditions.get(r.element, []) if o is not r and
                     not o.doubtful and (
                o.abatement is not None or o.clinical in _ENDED or o.ended_unknown) and (
                (o.abatement_last or o.abatement) is not None and
                (o.abatement_last or o.abatement or date.min) >= began or
                o.abatement is None and (o.onset_last or o.onset or date.min) >= began)]
            if ended:
                doubts.append(f"{r.element} ({r.source}) is active, but {ended[0].source} "
                              "says it ended after it began")
            else:
                clean.append(r)
        hits = clean
    if hits and prep.negatives:
        # a documented absence dated on or after a record's onset contradicts it: neither
        # can be taken over the other
        clean = []
        latest = {n: max(d for d, _ in negs) for n in {r.element for r in hits}
                  if (negs := prep.negatives.get(n))}
        for r in hits:
            began = r.onset_last or r.onset or date.min
            last_absent = latest.get(r.element)
            if last_absent is not None and last_absent >= began:
                doubts.append(f"{r.element} ({r.source}) is contradicted by a documented "
                              f"absence on {last_absent}")
            else:
                clean.append(r)
        hits = clean
    if hits:
        if detail:
            first = max(hits, key=lambda r: (r.onset or date.min, r.loc))
            ev.update({"value": "present", "source": first.source})
            if first.onset:
                ev["date"] = first.onset.isoformat()
        return "true"
    if doubts:
        ev["missing"] = "; ".join(sorted(doubts))
        return None
    negated = []
    for name in slot.element:
        fresh = [d for d, _ in prep.negatives.get(name, []) if _fresh(d, prep, max_age)]
        if fresh:
            negated.append(name)
    if len(negated) == len(slot.element):
        ev.update({"value": "absent", "basis": "documented absent"})
        return "false"
    return _reviewed_absent(prep, slot, max_age, ev)


def _place(r: CondRecord, active: bool, start: date | None, point: bool
           ) -> tuple[bool | None, str]:
    """Where a condition record stands for a test: (True, "") it counts; (None, "") it cannot
    count (ended before the window, or not active where the test asks for active); (False,
    why) it cannot be placed, so the test is unknown. `point`: the record is an event at its
    onset (a myocardial infarction), which does not last into a window."""
    name = r.element
    if r.ended_unknown and not point and not (active and r.clinical in _ENDED) and (
            active or start is not None and not (r.onset is not None and r.onset >= start)):
        # (an event at its onset, or a status that says it is over, needs no end date)
        # it ended at a time that cannot be read: still active, or into the window, not known
        return False, (f"{name} ({r.source}) ended at a time not recorded: whether it ended "
                       + ("by as_of" if active else "before the window") + " is not known")
    if r.abatement is not None and r.clinical in _ACTIVE and (
            active or start is not None and not (r.onset is not None and r.onset >= start)):
        # an end date and an active status (FHIR forbids the pair): did it end or not?
        return False, f"{name} ({r.source}) has an end date ({r.abatement}) but is {r.clinical}"
    if active:
        if r.abatement is not None or (r.clinical in _ENDED):
            return None, ""
        if r.clinical not in _ACTIVE:
            return False, f"{name} ({r.source}) has no clinical status"
    if start is None:
        return True, ""
    ab_last = r.abatement_last or r.abatement
    onset_last = r.onset_last or r.onset
    if onset_last is None:
        if ab_last is not None and ab_last < start:
            return None, ""
        return False, f"{name} ({r.source}) has no onset date"
    if r.onset is not None and r.onset >= start:
        return True, ""
    # it may have begun before the window: counts if it lasted into it
    lasted: bool | None   # True: lasted into the window; None: ended before it; False: unknown
    if point:
        lasted = None
    elif r.abatement is not None and ab_last is not None:
        lasted = True if r.abatement >= start else None if ab_last < start else False
    elif r.clinical in _ACTIVE:
        lasted = True
    else:
        lasted = False
    if lasted:
        return True, ""
    if onset_last >= start:
        # a partial onset date, or only the date it was recorded, reaching into the window
        when = (f"was recorded on {onset_last}; it began then or earlier" if r.onset is None
                else f"began between {r.onset} and {onset_last}")
        return False, f"{name} ({r.source}) {when}: maybe inside the window"
    if lasted is None:
        return None, ""
    if r.abatement is not None:
        return False, (f"{name} ({r.source}) ended between {r.abatement} and {ab_last}: maybe "
                       "inside the window")
    if r.clinical in _ENDED:
        return False, f"{name} ({r.source}) began {r.onset} and ended on an unknown date"
    return False, f"{name} ({r.source}) began {r.onset or 'on an unknown date'}; status unknown"


def _reviewed_absent(prep: Prepared, slot: Slot, max_age: int, ev: dict[str, Any]
                     ) -> str | None:
    """No record of the conditions: absent if a complete review is fresh, else unknown."""
    rev = prep.reviewed.get("conditions")
    if rev is not None and _fresh(rev, prep, max_age):
        if prep.unresolved:
            n = len(prep.unresolved)
            ev["missing"] = (f"no record of {' or '.join(slot.element)}; the condition review of "
                             f"{rev} would prove it absent, but {n} condition record"
                             f"{'s' if n > 1 else ''} could not be matched to the catalogue and "
                             f"may be a more specific form of it: {prep.unresolved[0]}"
                             + (f" and {n - 1} more" if n > 1 else ""))
            return None
        ev.update({"value": "absent", "basis": f"complete condition review on {rev}"})
        return "false"
    ev["missing"] = (f"no record of {' or '.join(slot.element)}, and absence is not documented "
                     f"(no condition review within {max_age} days of as_of)")
    return None


def _days(prep: Prepared, slot: Slot, max_age: int, ev: dict[str, Any]) -> int | None:
    name = slot.element[0]
    if name in prep.suspect:
        ev["missing"] = "; ".join(prep.suspect[name])
        return None
    recs = prep.exposures.get(name, [])
    problems = sorted({r.problem for r in recs if r.problem})
    if problems:
        ev["missing"] = "; ".join(problems)
        return None
    if recs:
        # Courses are merged by their dates, not added up: one course is often recorded twice
        # (a MedicationStatement and its MedicationAdministrations, pharmacy and nursing) and
        # infusion bags overlap. Undated courses cannot be matched against anything.
        spans = sorted((r.start, r.end) for r in recs if r.start is not None and
                       r.end is not None)
        union = 0
        cur_start = cur_end = None
        for a, b in spans:
            if cur_end is None or (a - cur_end).days > 1:
                if cur_end is not None and cur_start is not None:
                    union += (cur_end - cur_start).days + 1
                cur_start, cur_end = a, b
            elif b > cur_end:
                cur_end = b
        if cur_end is not None and cur_start is not None:
            union += (cur_end - cur_start).days + 1
        loose = sorted(r.at for r in recs if r.at is not None and not any(
            a <= r.at <= b for a, b in spans))
        if loose:
            # a dose on a day no dated course covers, for a duration not recorded (a bag of a
            # continuous infusion given by its time only): at least one more day, how many is
            # not known
            ev["missing"] = (f"{name} given on {loose[0]} for a duration not recorded, outside "
                             "every dated course: the days are not known")
            return None
        recs = [r for r in recs if r.at is None]
        undated = [r.days or 0 for r in recs if r.start is None]
        total = max([union, *undated])
        most = union + sum(undated)
        if undated and len(recs) > 1 and most != total:
            ev["missing"] = (f"{name} records without dates may describe the same course as "
                             f"others: between {total} and {most} days")
            return None
        ev.update({"value": f"{total} days", "source": ", ".join(sorted({r.source for r in recs}))})
        return encode_number(Fraction(total))
    rev = prep.reviewed.get("exposures")
    if rev is not None and _fresh(rev, prep, max_age):
        ev.update({"value": "0 days", "basis": f"complete therapy review on {rev}"})
        return encode_number(Fraction(0))
    ev["missing"] = (f"no {name} record, and the therapy history is not documented as reviewed "
                     f"within {max_age} days of as_of")
    return None
