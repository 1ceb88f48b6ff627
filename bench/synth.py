"""Synthetic registry generation rate (patients/s), in memory and to NDJSON.

    python bench/synth.py [--n 50000] [--record]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from screener.synth import generate, write_ndjson  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    t = time.perf_counter()
    n = sum(1 for _ in generate(args.n, 1, "2026-11-22"))
    gen = n / (time.perf_counter() - t)
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        write_ndjson(os.path.join(d, "p.ndjson"), args.n, 1, "2026-11-22")
        nd = args.n / (time.perf_counter() - t)
    line = f"| {args.n} | {gen:,.0f} | {nd:,.0f} |"
    print("| patients | generate /s | write NDJSON /s |\n|---:|---:|---:|\n" + line)
    if args.record:
        machine = (f"{platform.machine()}, {os.cpu_count()} cores, "
                   f"Python {platform.python_version()}")
        with open(ROOT / "bench" / "RESULTS.md", "a") as fh:
            fh.write(f"\n## Synthetic registry (bench/synth.py) — {date.today()} — {machine}\n\n"
                     f"| patients | generate /s | write NDJSON /s |\n|---:|---:|---:|\n{line}\n")


if __name__ == "__main__":
    main()
