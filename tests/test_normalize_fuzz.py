"""Fuzz: arbitrary JSON-shaped patients never crash the pipeline.

Whatever arrives, `screen` returns a report or raises PatientDataError (a clear 422-type
error); nothing else. Shapes are drawn close to the canonical format (right keys, wrong value
types) so that the deep paths are reached, not only the top-level type check.
"""

from __future__ import annotations

import json
from datetime import date
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from screener.errors import PatientDataError
from screener.report import dumps_bytes
from screener.screen import Screener

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20),
                      st.floats(allow_nan=True, allow_infinity=True),
                      st.text(max_size=12), st.sampled_from(
                          ["2026-11-01", "2026-13-45", "1990", "2026-11", "U/L", "%", "mg/dL",
                           "positive", "final", "active", "refuted", "alt", "ecog", "dvt",
                           "b_all", "blinatumomab", "hbsag", "<", "true"]))
json_any = st.recursive(json_leaf, lambda kids: st.one_of(
    st.lists(kids, max_size=3), st.dictionaries(st.text(max_size=8), kids, max_size=3)),
    max_leaves=10)
KEYS = ["element", "value", "unit", "date", "status", "comparator", "reference_range", "code",
        "codes", "onset", "abatement", "clinical_status", "verification_status", "present",
        "days", "start", "end", "source"]
NAMES = ["alt", "ecog", "hbsag", "hbv_dna", "pregnant", "dvt", "b_all", "arterial_thrombosis",
         "blinatumomab", "cns_leukemia", "donor_type", "marrow_blasts_pct"]
entry = st.one_of(
    json_any,
    st.dictionaries(st.sampled_from(KEYS), json_any, max_size=8),
    # a known element with arbitrary other fields: reaches the per-kind checks
    st.fixed_dictionaries({"element": st.sampled_from(NAMES)},
                          optional={k: json_any for k in KEYS if k != "element"}))
patient = st.one_of(json_any, st.fixed_dictionaries({}, optional={
    "id": json_any, "birth_date": json_any, "age": json_any, "sex": json_any,
    "observations": st.one_of(json_any, st.lists(entry, max_size=5)),
    "conditions": st.one_of(json_any, st.lists(entry, max_size=5)),
    "exposures": st.one_of(json_any, st.lists(entry, max_size=3)),
    "reviewed": st.one_of(json_any, st.fixed_dictionaries(
        {}, optional={"conditions": json_any, "exposures": json_any})),
}))


# well-formed lists of arbitrary entries, so one bad top-level field does not end every example
strict_patient = st.fixed_dictionaries({
    "observations": st.lists(entry, max_size=6), "conditions": st.lists(entry, max_size=6),
    "exposures": st.lists(entry, max_size=3),
    "reviewed": st.just({"conditions": "2026-11-20", "exposures": "2026-11-20"})},
    optional={"birth_date": json_any, "sex": json_any})
patient = st.one_of(patient, strict_patient)


@settings(max_examples=400, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(p=patient)
def test_no_crash_on_arbitrary_patients(screener: Screener, p: Any) -> None:
    for trial in ("NCT06930105", "NCT06111625"):
        try:
            r = screener.screen(trial, p, date(2026, 11, 22))
        except PatientDataError:
            continue
        assert r["status"] in ("eligible", "ineligible", "needs_review")
        # the fast serialiser writes exactly what the standard library would, whatever the
        # record held (reports carry no floats: values are shown as text)
        assert dumps_bytes(r) == json.dumps(r, sort_keys=True, ensure_ascii=False,
                                            allow_nan=False, separators=(",", ":")).encode()
