"""Memory of the registry-table adapter on long-format exports of growing size.

    python bench/tabular_memory.py [--sizes 20000,80000,320000] [--rows 12] [--record]

For each size N, writes (not timed) a tab-separated export shaped like the SMART sample tables
in ../shared/registry-examples: a patients table of N rows and a labs table of N x ROWS rows in
random patient order (a registry groups by patient only loosely), then reads every record with
`screener.adapters.tabular.iter_patients` in a fresh child process and reports its peak RSS
(VmHWM), the time, and the on-disk size of the labs table. The issue's requirement is that
memory stays flat whatever the input size: the peak should not grow with N.

`--record` appends the table, with date and machine, to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import _results  # noqa: E402

MAPPING = """version: 1
patients: {file: patients.txt, id: PID, birth_date: dob, sex: gender}
labs:
  file: labs.txt
  patient_id: PID
  code: LOINC
  system: loinc
  value: VALUE
  unit: UNITS
  high: HIGH
  date: DATE
  unmapped: summary
"""
#: (LOINC, unit, value range, ULN) of rows written: ALT, AST, creatinine, bilirubin, HDL (not
#: a catalogue element: summarised as unmapped, as in the SMART export)
LABS = [("1742-6", "U/L", (5, 200), 40), ("1920-8", "U/L", (5, 200), 40),
        ("2160-0", "mg/dL", (0.4, 3.0), 1.2), ("1975-2", "mg/dL", (0.1, 4.0), 1.2),
        ("2085-9", "mg/dL", (20, 90), 199)]


def write_export(d: Path, n: int, rows: int, seed: int = 7) -> int:
    rnd = random.Random(seed)
    with open(d / "patients.txt", "w") as fh:
        fh.write("PID\tdob\tgender\n")
        for i in range(n):
            fh.write(f"{1000000 + i}\t{rnd.randint(1950, 2005)}-0{rnd.randint(1, 9)}-1"
                     f"{rnd.randint(0, 9)}\t{rnd.choice(['male', 'female'])}\n")
    order = [1000000 + i for i in range(n) for _ in range(rows)]
    rnd.shuffle(order)
    with open(d / "labs.txt", "w") as fh:
        fh.write("PID\tDATE\tLOINC\tVALUE\tHIGH\tUNITS\n")
        for pid in order:
            code, unit, (lo, hi), uln = LABS[rnd.randrange(len(LABS))]
            fh.write(f"{pid}\t2026-{rnd.randint(1, 11):02d}-{rnd.randint(1, 28):02d}\t{code}\t"
                     f"{round(rnd.uniform(lo, hi), 1)}\t{uln}\t{unit}\n")
    (d / "map.yaml").write_text(MAPPING)
    return (d / "labs.txt").stat().st_size


def child(d: str) -> None:
    from screener.adapters.tabular import iter_patients, load_mapping
    t = time.perf_counter()
    n = obs = 0
    for _, patient, _issues in iter_patients(load_mapping(Path(d) / "map.yaml"), d):
        if patient is not None:
            n += 1
            obs += len(patient["observations"])
    print(json.dumps({"patients": n, "observations": obs, "seconds": time.perf_counter() - t,
                      "peak_mib": peak_mib()}))


def peak_mib() -> float:
    """This process's peak RSS since it started its program: VmHWM (Linux). ru_maxrss is not
    used: across fork + exec it keeps the parent's high-water mark, which here is the parent
    that has just written a large export (it made a 320,000-patient run read 175 MiB instead
    of the child's own 93)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="20000,80000,320000")
    ap.add_argument("--rows", type=int, default=12)
    ap.add_argument("--record", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.child)
        return
    lines = ["| patients | lab rows | labs table (MiB) | records read | seconds | peak RSS (MiB) |",
             "|---:|---:|---:|---:|---:|---:|"]
    for n in [int(x) for x in a.sizes.split(",")]:
        with tempfile.TemporaryDirectory(prefix="tabmem-") as d:
            size = write_export(Path(d), n, a.rows)
            out = subprocess.run([sys.executable, __file__, "--child", d], check=True,
                                 capture_output=True, text=True).stdout
            r = json.loads(out)
            line = (f"| {n:,} | {n * a.rows:,} | {size / 2**20:.0f} | {r['patients']:,} | "
                    f"{r['seconds']:.1f} | {r['peak_mib']:.0f} |")
            print(line, flush=True)
            lines.append(line)
    if a.record:
        _results.append(f"\n## Registry tables, long format: memory (bench/tabular_memory.py) "
                        f"— {date.today()} — {_results.machine()}\n\n`python "
                        f"bench/tabular_memory.py --sizes {a.sizes} --rows {a.rows}`: labs rows "
                        f"in random patient order, every record read through `iter_patients`."
                        f"\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
