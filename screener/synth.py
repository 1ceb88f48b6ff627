"""Deterministic synthetic registry: canonical patient JSON for load tests and demos.

Pipeline position: a stand-in for the adapters. It produces what a registry table would become
(registry table -> canonical patient JSON -> normalize -> engine), so benchmarks and the
distributed runner can push millions of realistic patients through normalize and the engine
without real data.

The cohort imitates an adult B-ALL transplant-candidate registry: ages mostly 18-60 with some
adolescents (16-17) and some older patients (61-75); ECOG mostly 0-2; organ-function labs with
*site-specific* reference ranges and units (four sites: ALT ULN 40/45/50/56 U/L, bilirubin and
creatinine in mg/dL or umol/L, BUN in mg/dL or urea in mmol/L), mostly normal with a tail of
elevated results; dates mostly within 60 days of ``as_of`` and some stale ones; about 25%
BCR-ABL1 positive; serologies mostly negative; comorbid conditions with onset dates; some prior
blinatumomab; ``reviewed`` dates on most patients. Missingness is deliberate: each element is
absent independently 5-30% of the time, and about 3% of patients carry only an age and the
diagnosis. None of the frequencies is epidemiology; they are chosen so that every rule path
(eligible, excluded, unknown) is exercised.

Determinism: everything comes from one ``random.Random(seed)`` (never the global generator,
never the clock), consumed in a fixed order, so the same ``(n, seed, as_of)`` gives identical
output on every run and platform. Patient ``k`` depends on the patients before it, so a prefix
of a larger run equals a smaller run with the same seed.
"""

from __future__ import annotations

import json
import random
from bisect import bisect
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

from .elements import ELEMENTS, SNOMED

Patient = dict[str, Any]

#: Probability that an element is absent from a (non-minimal) patient. Independent per element.
#: The order matters: generate() unpacks one draw per entry into named flags in this order.
MISSING: dict[str, float] = {
    "ecog": 0.08, "hct_ci": 0.25, "alt": 0.05, "ast": 0.08, "bilirubin_total": 0.06,
    "creatinine": 0.05, "bun": 0.15, "lvef": 0.18, "fev1_pct_pred": 0.25, "fvc_pct_pred": 0.28,
    "dlco_pct_pred": 0.30, "marrow_blasts_pct": 0.12, "cd19_pct": 0.22, "bcr_abl1": 0.10,
    "disease_status": 0.05, "cns_status": 0.20, "hbsag": 0.10, "hbcab": 0.15, "hcv_ab": 0.10,
    "hiv_ab": 0.12, "syphilis_nontreponemal": 0.30, "donor_type": 0.15,
    "childbearing_potential": 0.15, "pregnant": 0.20,
}
#: Share of patients that carry only an age and the B-ALL diagnosis.
MINIMAL = 0.03

# Per-site laboratory conventions: (ALT ULN, AST ULN, bilirubin (unit, low, ULN, decimals),
# creatinine (unit, low, ULN, decimals), BUN/urea (unit, low, ULN, decimals)).
_Lab = tuple[str, float, float, int]
_SITES: tuple[tuple[int, int, _Lab, _Lab, _Lab], ...] = (
    (40, 40, ("mg/dL", 0.2, 1.2, 1), ("mg/dL", 0.6, 1.2, 2), ("mg/dL", 7, 20, 0)),
    (45, 35, ("umol/L", 3, 21, 0), ("umol/L", 53, 106, 0), ("mmol/L", 2.5, 8.3, 1)),
    (50, 40, ("mg/dL", 0.1, 1.0, 1), ("mg/dL", 0.7, 1.3, 2), ("mg/dL", 8, 23, 0)),
    (56, 42, ("umol/L", 2, 20, 0), ("umol/L", 62, 110, 0), ("mmol/L", 2.9, 7.1, 1)),
)

_ECOG = ((0, 1, 2, 3, 4), (0.35, 0.40, 0.15, 0.07, 0.03))
_HCTCI = ((0, 1, 2, 3, 4, 5, 6), (0.30, 0.20, 0.17, 0.13, 0.10, 0.06, 0.04))
_STATUS = (("remission", "relapsed", "newly_diagnosed", "refractory"), (0.45, 0.25, 0.20, 0.10))
_CNS = (("cns1", "cns2", "cns3"), (0.85, 0.08, 0.07))
_DONOR = (("unrelated", "matched_sibling", "haploidentical", "none", "cord"),
          (0.35, 0.25, 0.25, 0.10, 0.05))
_BCR = (("negative", "positive", "indeterminate"), (0.72, 0.25, 0.03))

#: (condition, probability, probability that it has resolved)
_COMORBID: tuple[tuple[str, float, float], ...] = (
    ("dvt", 0.06, 0.6), ("pulmonary_embolism", 0.03, 0.5), ("arterial_thrombosis", 0.02, 0.3),
    ("heart_failure", 0.02, 0.1), ("myocardial_infarction", 0.015, 0.0),
    ("gi_bleeding", 0.015, 0.7), ("severe_arrhythmia", 0.01, 0.3),
    ("unstable_angina", 0.005, 0.5), ("uncontrolled_hypertension", 0.01, 0.2),
    ("epilepsy", 0.01, 0.0), ("active_infection", 0.08, 0.4),
    ("renal_dysfunction", 0.01, 0.3), ("decompensated_liver", 0.005, 0.2),
    ("respiratory_insufficiency", 0.005, 0.5), ("gi_dysfunction", 0.01, 0.5),
    ("high_risk_cv_procedure", 0.005, 0.0), ("blinatumomab_hypersensitivity", 0.005, 0.0),
)
#: Oldest date we ever need, in days before as_of (birth dates of 76-year-olds).
_HORIZON = 76 * 366 + 400


def _cum(weights: tuple[float, ...]) -> tuple[float, ...]:
    """Cumulative weights for ``values[bisect(cum, r)]``: several times faster than choices()."""
    out, total = [], 0.0
    for w in weights[:-1]:
        total += w
        out.append(total)
    return tuple(out)




def _years_before(d: date, years: int) -> date:
    try:
        return d.replace(year=d.year - years)
    except ValueError:  # 29 February in a non-leap year
        return d.replace(year=d.year - years, day=28)


def generate(n: int, seed: int, as_of: str) -> Iterator[Patient]:
    """Yield ``n`` canonical patients ``synth-000000001``...; deterministic in (n, seed, as_of)."""
    ref = date.fromisoformat(as_of)
    rng = random.Random(seed)
    r = rng.random
    base = ref.toordinal()
    missing = tuple(MISSING.values())
    # born[a]: ordinal of the latest birth date that makes a patient exactly `a` years old at
    # as_of; born[a + 1] is the first date that is too early.
    born = [_years_before(ref, a).toordinal() for a in range(82)]
    cum_ecog, cum_hctci, cum_status, cum_cns, cum_donor, cum_bcr = (
        _cum(c[1]) for c in (_ECOG, _HCTCI, _STATUS, _CNS, _DONOR, _BCR))
    # ISO text of "k days before as_of", computed once: date arithmetic per field is the
    # slowest part of naive generation.
    ago = [date.fromordinal(base - k).isoformat() for k in range(_HORIZON)]

    def recent() -> int:
        """Days before as_of of a work-up result: mostly within 60 days, 15% stale."""
        if r() < 0.85:
            return int(r() * 61)
        return 61 + int(r() * 300)

    def quantity(name: str, value: float, unit: str, day: int) -> dict[str, Any]:
        return {"element": name, "value": value, "unit": unit, "date": ago[day]}

    def lab(name: str, unit: str, low: float, uln: float, digits: int, day: int,
            elevated: float, tail: float) -> dict[str, Any]:
        # Mostly inside the normal range; a tail between 1x and (1 + tail)x ULN, skewed low.
        if r() < elevated:
            v = uln * (1.0 + r() * r() * tail)
        else:
            v = low * 0.8 + r() * (uln - low * 0.8)
        value: float = round(v, digits) if digits else int(round(v))
        if value <= 0:
            value = round(low, digits) if digits else max(int(low), 1)
        obs: dict[str, Any] = {"element": name, "value": value, "unit": unit,
                               "date": ago[day]}
        if r() >= 0.05:  # 5% of results come without a reference range
            obs["reference_range"] = {"low": low, "high": uln, "unit": unit}
        s = r()
        if s < 0.03:
            obs["status"] = "final"
        elif s < 0.035:
            obs["status"] = "preliminary"
        return obs

    def coded(name: str, value: Any, day: int) -> dict[str, Any]:
        return {"element": name, "value": value, "date": ago[day]}

    def condition(name: str, onset: int, resolved: float) -> dict[str, Any]:
        c: dict[str, Any]
        snomed = ELEMENTS[name].snomed
        if snomed and r() < 0.1:
            # A share of records carry a code instead of an element name, as FHIR input does.
            c = {"codes": [{"system": SNOMED, "code": snomed[0]}]}
        else:
            c = {"element": name}
        c["onset"] = ago[onset]
        if resolved and r() < resolved and onset > 1:
            c["abatement"] = ago[onset - 1 - int(r() * min(onset - 1, 120))]
        return c

    for i in range(1, n + 1):
        pid = f"synth-{i:09d}"
        u = r()
        age = 16 + int(r() * 2) if u < 0.05 else (18 + int(r() * 43) if u < 0.88
                                                   else 61 + int(r() * 15))
        dx_day = 10 + int(r() * 50) if r() < 0.2 else 60 + int(r() * 1400)
        dx: dict[str, Any] = {"element": "b_all", "onset": ago[dx_day],
                              "verification_status": "confirmed"}
        if r() < 0.7:
            dx["clinical_status"] = "active"
        if r() < MINIMAL:
            yield {"id": pid, "age": age, "conditions": [dx]}
            continue

        female = r() < 0.45
        birth = born[age] - int(r() * (born[age] - born[age + 1]))
        p: Patient = {"id": pid, "birth_date": ago[base - birth],
                      "sex": "female" if female else "male"}
        obs: list[dict[str, Any]] = []
        # One draw per element, in MISSING order, so each element is missing independently.
        (k_ecog, k_hct_ci, k_alt, k_ast, k_bili, k_creat, k_bun, k_lvef, k_fev1, k_fvc, k_dlco,
         k_blasts, k_cd19, k_bcr, k_status, k_cns, k_hbsag, k_hbcab, k_hcv_ab, k_hiv_ab,
         k_syphilis, k_donor, k_cbp, k_pregnant) = [r() >= m for m in missing]
        workup = recent()

        if k_ecog:
            obs.append(quantity("ecog", _ECOG[0][bisect(cum_ecog, r())], "{score}", workup))
        if k_hct_ci:
            obs.append(quantity("hct_ci", _HCTCI[0][bisect(cum_hctci, r())], "{score}", recent()))

        alt_uln, ast_uln, bili, creat, bun = _SITES[int(r() * len(_SITES))]
        labs_day = workup if r() < 0.8 else recent()
        if k_alt:
            obs.append(lab("alt", "U/L", 0 if alt_uln != 56 else 7, alt_uln, 0, labs_day,
                           0.15, 9.0))
        if k_ast:
            obs.append(lab("ast", "U/L", 0 if ast_uln != 42 else 10, ast_uln, 0, labs_day,
                           0.12, 7.0))
        if k_bili:
            obs.append(lab("bilirubin_total", *bili, labs_day, 0.10, 5.0))
        if k_creat:
            obs.append(lab("creatinine", *creat, labs_day, 0.08, 3.0))
        if k_bun:
            obs.append(lab("bun", *bun, labs_day, 0.08, 2.0))

        if k_lvef:
            ef = 50 + int(r() * 21) if r() >= 0.08 else 25 + int(r() * 25)
            obs.append(quantity("lvef", ef, "%", recent()))
        pft_day = recent()
        for name, kept, low_share, centre in (("fev1_pct_pred", k_fev1, 0.07, 65.0),
                                              ("fvc_pct_pred", k_fvc, 0.05, 70.0),
                                              ("dlco_pct_pred", k_dlco, 0.10, 50.0)):
            if kept:
                pct = 30 + r() * 35 if r() < low_share else centre + (r() + r()) * 25
                obs.append(quantity(name, int(round(pct)), "%", pft_day))

        status = _STATUS[0][bisect(cum_status, r())]
        marrow_day = recent()
        if k_status:
            obs.append(coded("disease_status", status, marrow_day))
        if k_blasts:
            blasts = (r() * 4.9 if status == "remission" else
                      20 + r() * 75 if status == "newly_diagnosed" else 5 + r() * 90)
            obs.append(quantity("marrow_blasts_pct", round(blasts, 1), "%", marrow_day))
        if k_cd19:
            cd19 = 80 + r() * 20 if r() >= 0.10 else r() * 30
            obs.append(quantity("cd19_pct", round(cd19, 1), "%", marrow_day))
        if k_bcr:
            obs.append(coded("bcr_abl1", _BCR[0][bisect(cum_bcr, r())], marrow_day))
        cns = _CNS[0][bisect(cum_cns, r())]
        if k_cns:
            obs.append(coded("cns_status", cns, recent()))

        sero_day = recent()
        results: dict[str, str] = {}
        for name, kept, pos in (("hbsag", k_hbsag, 0.02), ("hbcab", k_hbcab, 0.08),
                                ("hcv_ab", k_hcv_ab, 0.02), ("hiv_ab", k_hiv_ab, 0.01),
                                ("syphilis_nontreponemal", k_syphilis, 0.015)):
            s = r()
            val = "positive" if s < pos else "indeterminate" if s < pos + 0.005 else "negative"
            results[name] = val
            if kept:
                obs.append(coded(name, val, sero_day))
        if results["hbsag"] == "positive" or results["hbcab"] == "positive":
            if r() < 0.85:
                hit = 0.5 if results["hbsag"] == "positive" else 0.1
                obs.append(coded("hbv_dna", "detected" if r() < hit else "not_detected",
                                 sero_day))
        elif r() < 0.05:
            obs.append(coded("hbv_dna", "not_detected", sero_day))
        if results["hcv_ab"] == "positive" and r() < 0.9:
            obs.append(coded("hcv_rna", "detected" if r() < 0.4 else "not_detected", sero_day))

        if k_donor:
            donor = _DONOR[0][bisect(cum_donor, r())]
            donor_day = recent()
            obs.append(coded("donor_type", donor, donor_day))
            match: int | None = None
            if donor == "matched_sibling":
                match = 10
            elif donor == "unrelated":
                match = 10 if r() < 0.7 else 9 - int(r() * 2)
            elif donor == "haploidentical":
                match = 5 + int(r() * 2)
            elif donor == "cord":
                match = 5 + int(r() * 4)
            if match is not None:
                obs.append(quantity("donor_hla_match", match, "/10", donor_day))

        if female:
            cbp = r() < (0.85 if age <= 50 else 0.08)
            repro_day = int(r() * 30)
            if k_cbp:
                obs.append(coded("childbearing_potential", cbp, repro_day))
            if k_pregnant:
                obs.append(coded("pregnant", cbp and r() < 0.015, repro_day))
            if cbp and r() < 0.3:
                obs.append(coded("lactating", r() < 0.02, repro_day))
        p["observations"] = obs

        conds: list[dict[str, Any]] = [dx]
        for name, prob, resolved in _COMORBID:
            if r() < prob:
                onset = int(r() * 180) if r() < 0.5 else 180 + int(r() * 3470)
                conds.append(condition(name, onset, resolved))
                if name in ("dvt", "pulmonary_embolism") and r() < 0.7:
                    # the symptom status is charted for most, not all, thromboses
                    obs.append(coded("vte_symptomatic", r() < 0.8, onset))
        if cns == "cns3" and r() < 0.7:
            conds.append(condition("cns_leukemia", max(dx_day - int(r() * 10), 0), 0.3))
        if results["hiv_ab"] == "positive" and r() < 0.8:
            conds.append(condition("hiv_infection", 200 + int(r() * 3000), 0.0))
        reviewed_conditions = r() < 0.8
        if not reviewed_conditions and r() < 0.3:
            # A documented negative instead of a list review: proves absence on that date only.
            conds.append({"element": "heart_failure", "present": False,
                          "date": ago[int(r() * 90)]})
        p["conditions"] = conds

        exposures: list[dict[str, Any]] = []
        if r() < (0.35 if status in ("relapsed", "refractory") else 0.08):
            days = 7 + int(r() * 50)
            start = 60 + int(r() * 640)
            if r() < 0.7:
                exposures.append({"element": "blinatumomab", "start": ago[start],
                                  "end": ago[max(start - days + 1, 0)]})
            else:
                exposures.append({"element": "blinatumomab", "days": days})
        p["exposures"] = exposures

        reviewed: dict[str, str] = {}
        if reviewed_conditions:
            reviewed["conditions"] = ago[int(r() * 30)]
        if r() < 0.7:
            reviewed["exposures"] = ago[int(r() * 30)]
        if reviewed:
            p["reviewed"] = reviewed
        yield p


def write_ndjson(path: str | Path, n: int, seed: int, as_of: str) -> int:
    """Write ``generate(n, seed, as_of)`` as NDJSON (sorted keys, compact); return the count."""
    count = 0
    dumps = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode
    buf: list[str] = []
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with Path(path).open("w", encoding="utf-8", newline="\n") as fh:
        for p in generate(n, seed, as_of):
            buf.append(dumps(p))
            count += 1
            if len(buf) >= 1000:  # batch writes: one write call per line is measurably slower
                fh.write("\n".join(buf) + "\n")
                buf.clear()
        if buf:
            fh.write("\n".join(buf) + "\n")
    return count
