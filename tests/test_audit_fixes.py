"""Wrong verdicts found by the 2026-11-23 audit of the normalizer, each pinned here.

Every case had given a met / not_met that the data do not support (or the opposite of what they
say); the expected verdicts are the clinically careful ones, mostly `unknown` with a reason.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import pytest

from screener.screen import Screener

ROOT = Path(__file__).resolve().parents[1]
AS_OF = date(2026, 11, 22)
T1, T2 = "NCT06930105", "NCT06111625"


def verdict(s: Screener, patient: dict[str, Any], criterion: str, trial: str = T1,
            as_of: date = AS_OF) -> dict[str, Any]:
    report = s.screen(trial, patient, as_of)
    return next(c for c in report["criteria"] if c["id"] == criterion)


def ecog(value: int, when: str) -> dict[str, Any]:
    return {"element": "ecog", "value": value, "date": when}


# --- which result is the newest: moments, not text -------------------------------------------

@pytest.mark.parametrize("older, newer", [
    # a zone makes 23:00-05:00 the later instant, though its text sorts first
    (ecog(1, "2026-11-21T01:00Z"), ecog(4, "2026-11-20T23:00-05:00")),
    # fractions of a second sort before "Z" as text
    (ecog(1, "2026-11-20T10:00:00Z"), ecog(4, "2026-11-20T10:00:00.500Z")),
    # a leading space sorted the newer date first as text
    (ecog(1, "2026-11-01"), ecog(4, " 2026-11-20")),
])
def test_newest_is_the_latest_moment(screener: Screener, older: dict[str, Any],
                                     newer: dict[str, Any]) -> None:
    for order in ([older, newer], [newer, older]):
        v = verdict(screener, {"observations": order}, "inc_ecog")
        assert v["verdict"] == "not_met", v   # ECOG 4 is the newest


@pytest.mark.parametrize("a, b", [
    (ecog(1, "2026-11-20T08:00Z"), ecog(4, "2026-11-20T03:00-05:00")),   # one instant
    (ecog(1, "2026-11-20T10:00Z"), ecog(4, "2026-11-20")),               # date vs time
    (ecog(1, "2026-11-10"), ecog(4, "2026-11")),                         # partial date
    (ecog(1, "2026-11-20T10:00"), ecog(4, "2026-11-20T12:00Z")),         # no zone
])
def test_results_that_may_be_equally_recent_and_disagree_are_unknown(
        screener: Screener, a: dict[str, Any], b: dict[str, Any]) -> None:
    for order in ([a, b], [b, a]):
        v = verdict(screener, {"observations": order}, "inc_ecog")
        assert v["verdict"] == "unknown", v
        assert "conflicting ecog results" in v["missing"][0]["reason"]


def test_results_on_distinct_days_still_order(screener: Screener) -> None:
    v = verdict(screener, {"observations": [ecog(4, "2026-11-19"), ecog(1, "2026-11-20")]},
                "inc_ecog")
    assert v["verdict"] == "met"


# --- a site default ULN stands in only for results without a range ---------------------------

def test_site_uln_does_not_replace_an_unusable_range(tmp_path: Path) -> None:
    text = (ROOT / "rules" / f"{T1}.yaml").read_text()
    text = text.replace("defaults:\n", "site_uln:\n  alt: {value: 40, unit: U/L}\n"
                        "  ast: {value: 40, unit: U/L}\ndefaults:\n", 1)
    (tmp_path / f"{T1}.yaml").write_text(text)
    s = Screener.from_paths([str(tmp_path)])
    try:
        def alt(**kw: Any) -> dict[str, Any]:
            return {"observations": [
                {"element": "alt", "value": 100, "unit": "U/L", "date": "2026-11-20", **kw},
                {"element": "ast", "value": 20, "unit": "U/L", "date": "2026-11-20"}]}
        # no range at all: the site default (40) gives 2.5 x ULN
        assert verdict(s, alt(), "inc_liver_transaminases")["verdict"] == "met"
        # the lab's own range is there but unusable: not replaced by the site default
        for rr in ({"high": "25 U/L"}, {"high": 0}, {"high": 25, "unit": "furlongs"}):
            v = verdict(s, alt(reference_range=rr), "inc_liver_transaminases")
            assert v["verdict"] == "unknown", (rr, v)
            assert any("site default applies only" in m["reason"] for m in v["missing"])
    finally:
        s.close()


def test_an_instant_that_may_be_as_new_as_a_local_date_is_a_conflict_too(
        screener: Screener) -> None:
    """Not only the next result in order: a zoned time that falls on the newest local date's
    day in some zone is as new as it."""
    obs = [ecog(1, "2026-11-20"), ecog(1, "2026-11-19"), ecog(4, "2026-11-20T11:00Z")]
    v = verdict(screener, {"observations": obs}, "inc_ecog")
    assert v["verdict"] == "unknown", v
