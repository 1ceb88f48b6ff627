"""Per-patient screening time for each seed trial: Rete path vs reference evaluator, one run.

    python bench/engine.py [--n 3000] [--record]

Patients are generated deterministically (a mix of complete, sparse and out-of-range records).
Three timings per trial, alternating in blocks so machine noise hits all alike:

* `screen`     the whole single-patient path the API uses: prepare + fill + engine + report;
* `engine`     only the engine call for one patient (facts already filled): Rete vs reference,
               in blocks alternating with the other paths (caches as a single API request
               leaves them) and back to back (patient after patient, as a registry run);
* `batch`      the engine on 256 patients per session (the registry path), per patient.

Prints median and p99 in microseconds and the Rete / reference ratios. `--record` appends the
figures, with date and machine, to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import _results  # noqa: E402

from screener.normalize import fill, prepare  # noqa: E402
from screener.screen import Screener  # noqa: E402

AS_OF = date(2026, 11, 22)
LABS = {"alt": 40, "ast": 40, "bilirubin_total": 1.2, "bun": 20, "creatinine": 1.1}


def patient(rnd: random.Random, i: int) -> dict[str, Any]:
    obs: list[dict[str, Any]] = []

    def add(element: str, value: Any, **kw: Any) -> None:
        if rnd.random() < 0.85:
            obs.append({"element": element, "value": value,
                        "date": f"2026-11-{rnd.randint(1, 21):02d}", **kw})

    for el, uln in LABS.items():
        add(el, round(uln * rnd.uniform(0.2, 4), 2), unit="mg/dL" if uln < 10 else "U/L",
            reference_range={"high": uln})
    add("ecog", rnd.randint(0, 4))
    add("hct_ci", rnd.randint(0, 5))
    for el in ("lvef", "fev1_pct_pred", "fvc_pct_pred", "dlco_pct_pred"):
        add(el, rnd.randint(35, 95), unit="%")
    add("marrow_blasts_pct", round(rnd.uniform(0, 30), 1), unit="%")
    add("cd19_pct", rnd.randint(5, 99), unit="%")
    for el in ("hbsag", "hbcab", "hcv_ab", "hiv_ab", "syphilis_nontreponemal", "bcr_abl1"):
        add(el, "positive" if rnd.random() < 0.1 else "negative")
    add("donor_type", rnd.choice(["matched_sibling", "unrelated", "haploidentical", "none"]))
    add("donor_hla_match", rnd.randint(6, 10))
    add("disease_status", rnd.choice(["newly_diagnosed", "relapsed"]))
    add("cns_status", rnd.choice(["cns1", "cns1", "cns2"]))
    add("pregnant", False)
    add("childbearing_potential", rnd.random() < 0.5)
    conds = [{"element": "b_all", "onset": "2026-10-01"}]
    if rnd.random() < 0.1:
        conds.append({"element": "dvt", "onset": f"2026-{rnd.randint(1, 11):02d}-01"})
    p = {"id": f"b{i}", "birth_date": f"{rnd.randint(1950, 2012)}-0{rnd.randint(1, 9)}-15",
         "sex": rnd.choice(["female", "male"]), "observations": obs, "conditions": conds,
         "exposures": [{"element": "blinatumomab", "days": rnd.randint(0, 20)}]}
    if rnd.random() < 0.7:
        p["reviewed"] = {"conditions": "2026-11-20", "exposures": "2026-11-20"}
    return p


def timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter_ns()
    fn()
    return (time.perf_counter_ns() - t) / 1000


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    rnd = random.Random(42)
    pts = [patient(rnd, i) for i in range(args.n)]
    rete = Screener.from_paths([str(ROOT / "rules")])
    ref = Screener.from_paths([str(ROOT / "rules")], engine="reference")
    rows = []
    for tid in sorted(rete.compiled):
        crete, cref = rete.get(tid), ref.get(tid)
        facts = [fill(prepare(p, AS_OF), crete.trial).values for p in pts]
        for p in pts[:200]:  # warm up both paths
            rete.screen(tid, p, AS_OF)
            ref.screen(tid, p, AS_OF)
        t: dict[str, list[float]] = {k: [] for k in
                                     ("screen_rete", "screen_ref", "engine_rete", "engine_ref")}
        # paths alternate in blocks of 100 patients: machine noise hits all paths alike,
        # while each path runs warm (timing the four paths patient by patient measured each
        # one with the caches the others had just filled)
        # (the lambdas run inside this iteration: B023 does not apply)
        paths: dict[str, Callable[[int], Any]] = {
            "screen_rete": lambda i: rete.screen(tid, pts[i], AS_OF),  # noqa: B023
            "screen_ref": lambda i: ref.screen(tid, pts[i], AS_OF),  # noqa: B023
            "engine_rete": lambda i: rete.fired(crete, facts[i]),  # noqa: B023
            "engine_ref": lambda i: ref.fired(cref, facts[i]),  # noqa: B023
        }
        for start in range(0, len(pts), 100):
            block = range(start, min(start + 100, len(pts)))
            for name, fn in paths.items():
                # as timeit does: no garbage collection inside a timed block, so one path
                # does not pay for the garbage another left
                gc.collect()
                gc.disable()
                try:
                    t[name] += [timed(lambda: fn(i)) for i in block]  # noqa: B023
                finally:
                    gc.enable()
        # the engine alone, patient after patient with nothing in between (as a registry run
        # calls it); each call still timed on its own, so the median is per patient
        warm: dict[str, list[float]] = {"rete": [], "ref": []}
        for _ in range(2):
            for name, scr, comp in (("rete", rete, crete), ("ref", ref, cref)):
                gc.collect()
                gc.disable()
                try:
                    warm[name] = [timed(lambda: scr.fired(comp, f)) for f in facts]  # noqa: B023
                finally:
                    gc.enable()
        t["warm_rete"], t["warm_ref"] = warm["rete"], warm["ref"]
        chunks = [facts[i:i + 256] for i in range(0, len(facts), 256)]
        tb_rete = sum(timed(lambda: rete.fired_many(tid, c)) for c in chunks) / len(facts)  # noqa: B023
        tb_ref = sum(timed(lambda: ref.fired_many(tid, c)) for c in chunks) / len(facts)  # noqa: B023
        # sanity: both engines agree on every patient of the run
        assert [rete.fired(crete, f) for f in facts[:500]] == \
               [ref.fired(cref, f) for f in facts[:500]]
        n_rules = len(crete.definition)
        rows.append((tid, n_rules, {k: (statistics.median(v), pct(v, 0.99))
                                    for k, v in t.items()}, tb_rete, tb_ref))
    lines = ["| trial | rules | path | Rete median / p99 (us) | reference median / p99 (us) "
             "| ratio (median) |", "|---|---:|---|---:|---:|---:|"]
    for tid, n_rules, s, tb_rete, tb_ref in rows:
        for path, label in (("screen", "screen (1 patient)"), ("engine", "engine (1 patient)"),
                            ("warm", "engine (1 patient, back to back)")):
            r, f = s[f"{path}_rete"], s[f"{path}_ref"]
            lines.append(f"| {tid} | {n_rules} | {label} | {r[0]:.0f} / {r[1]:.0f} "
                         f"| {f[0]:.0f} / {f[1]:.0f} | {r[0] / f[0]:.1f} |")
        lines.append(f"| {tid} | {n_rules} | engine (batch path, 256 per call), mean | "
                     f"{tb_rete:.1f} | {tb_ref:.1f} | {tb_rete / tb_ref:.1f} |")
    table = "\n".join(lines)
    print(table)
    if args.record:
        _results.append(f"\n## Engine (bench/engine.py) — {date.today()} — "
                        f"{_results.machine()}\n\n`python bench/engine.py --n {args.n}`; per "
                        f"patient-trial; target: Rete path median <= 100 us.\n\n{table}\n")


if __name__ == "__main__":
    main()
