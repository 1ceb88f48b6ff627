"""Benchmark: registry batch screening end to end (screener/batch.py).

    python bench/batch.py                 # 1,000,000 synthetic patients, both seed trials
    python bench/batch.py --n 50000       # smaller
    python bench/batch.py --configs rete:1,rete:2,reference:2 --no-record

What is measured. The synthetic registry (`screener.synth`, fixed seed) is first written to a
temporary NDJSON file; that is NOT timed. Each configuration (evaluator x worker processes) then
runs `batch.run_batch` in a fresh child process (so CPU and memory figures of one configuration
never mix with another's): read NDJSON -> parse -> normalize -> fill -> engine -> verdicts ->
Parquet parts -> summary and HTML report. Reported per configuration:

* patient-trial screens per second, wall clock, end to end (start of run_batch to the summary
  written), and that rate divided by the number of workers ("per core");
* screens per CPU-second: all CPU time of the driver and its workers (user + sys, from wait4);
  unlike the wall-clock rate this does not drop when other jobs share the machine;
* peak RSS: the largest sum over the driver and all its worker processes, sampled every 0.2 s
  with psutil (when installed), and the largest single process (ru_maxrss);
* where worker time goes, in microseconds per patient (both trials): parse, prepare, fill,
  engine, verdicts, encode (measured inside the workers).

Results are printed as a table and appended to bench/RESULTS.md under
"## Batch (bench/batch.py)" with the date and machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TRIALS = ["NCT06111625", "NCT06930105"]
AS_OF = "2026-11-22"
HEADING = "## Batch (bench/batch.py)"
TARGET_RATE_PER_CORE = 10_000
TARGET_RSS = 1 << 30


def _child(args: argparse.Namespace) -> None:
    """One configuration, in this (fresh) process; prints one JSON line of results."""
    from screener.batch import BatchOptions, run_batch
    opts = BatchOptions(trials=TRIALS, inputs=[args.input], out=args.out,
                        as_of=date.fromisoformat(AS_OF), workers=args.workers,
                        engine=args.engine, chunk_size=args.chunk_size, progress=False,
                        force=True)
    t0 = time.perf_counter()
    summary, stats = run_batch(opts, sys.stderr)
    wall = time.perf_counter() - t0
    print(json.dumps({"wall": wall, "screened": stats.screened, "records": stats.records,
                      "worker_seconds": stats.worker_seconds,
                      "status": {t["id"]: t["status"] for t in summary["trials"]}}))


def _tree_sample(pid: int, cpu: dict[int, float]) -> int:
    """Sum of RSS over `pid` and its descendants; records each one's CPU seconds in `cpu`."""
    import psutil
    try:
        p = psutil.Process(pid)
        procs = [p, *p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for q in procs:
        try:
            with q.oneshot():
                total += q.memory_info().rss
                t = q.cpu_times()
                cpu[q.pid] = max(cpu.get(q.pid, 0.0), t.user + t.system)
        except psutil.NoSuchProcess:
            pass
    return total


def run_config(engine: str, workers: int, input_path: str, chunk_size: int,
               tmp: Path) -> dict[str, Any]:
    out = tmp / f"out-{engine}-{workers}"
    cmd = [sys.executable, __file__, "--child", "--input", input_path, "--out", str(out),
           "--engine", engine, "--workers", str(workers), "--chunk-size", str(chunk_size)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0]
    cpu_by_pid: dict[int, float] = {}
    stop = threading.Event()

    def sample() -> None:
        try:
            import psutil  # noqa: F401
        except ImportError:
            return
        while not stop.is_set():
            peak[0] = max(peak[0], _tree_sample(proc.pid, cpu_by_pid))
            stop.wait(0.2)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    # wait4: the driver's own rusage (its pool workers are children of the forkserver process,
    # so their CPU is taken from the psutil samples instead)
    _, status, ru = os.wait4(proc.pid, 0)
    wall_total = time.perf_counter() - t0
    stop.set()
    th.join()
    stdout = proc.stdout.read() if proc.stdout else ""
    stderr = proc.stderr.read() if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"configuration {engine}:{workers} failed:\n{stderr}")
    res = json.loads(stdout.strip().splitlines()[-1])
    shutil.rmtree(out, ignore_errors=True)
    screens = res["screened"] * len(TRIALS)
    # CPU of every process of the tree as last sampled (up to 0.2 s of a worker's final
    # moments can be missed), never less than the driver's exact figure
    driver_cpu = ru.ru_utime + ru.ru_stime
    cpu = max(sum(v for k, v in cpu_by_pid.items() if k != proc.pid) + driver_cpu, driver_cpu)
    return {
        "engine": engine, "workers": workers, "patients": res["screened"],
        "records": res["records"], "wall": res["wall"], "wall_process": wall_total,
        "rate": screens / res["wall"], "rate_per_core": screens / res["wall"] / workers,
        "cpu": cpu, "rate_per_cpu_second": screens / cpu if cpu else 0.0,
        "peak_rss_sum": peak[0] or None, "max_rss_one": ru.ru_maxrss * 1024,
        "us_per_patient": {k: v / max(res["screened"], 1) * 1e6
                           for k, v in res["worker_seconds"].items()},
        "status": res["status"],
    }


def _mib(x: int | None) -> str:
    return "n/a" if not x else f"{x / (1 << 20):,.0f}"


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| evaluator | workers | patients | wall (s) | screens/s | per core | "
             "screens per CPU-s | peak RSS sum (MiB) | largest process (MiB) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['engine']} | {r['workers']} | {r['patients']:,} | {r['wall']:,.1f} | "
                     f"{r['rate']:,.0f} | {r['rate_per_core']:,.0f} | "
                     f"{r['rate_per_cpu_second']:,.0f} | {_mib(r['peak_rss_sum'])} | "
                     f"{_mib(r['max_rss_one'])} |")
    stages = ("parse", "prepare", "fill", "engine", "verdicts", "encode")
    lines += ["", "Worker time per patient (both trials), microseconds:", "",
              "| evaluator | workers | " + " | ".join(stages) + " | total |",
              "|---|---:|" + "---:|" * (len(stages) + 1)]
    for r in rows:
        us = r["us_per_patient"]
        lines.append(f"| {r['engine']} | {r['workers']} | "
                     + " | ".join(f"{us.get(s, 0):,.0f}" for s in stages)
                     + f" | {sum(us.values()):,.0f} |")
    return "\n".join(lines)


def record(text: str, path: Path) -> None:
    """Append under our heading (created if missing), before the next section."""
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    if HEADING not in old:
        new = old.rstrip("\n") + ("\n\n" if old.strip() else "") + HEADING + "\n\n" + text + "\n"
    else:
        start = old.index(HEADING) + len(HEADING)
        nxt = old.find("\n## ", start)
        end = len(old) if nxt < 0 else nxt + 1
        new = old[:end].rstrip("\n") + "\n\n" + text + "\n" + ("\n" + old[end:] if nxt >= 0
                                                               else "")
    path.write_text(new, encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--configs", default="rete:1,rete:2,reference:2",
                    help="evaluator:workers,... (default rete:1,rete:2,reference:2)")
    ap.add_argument("--chunk-size", type=int, default=2000)
    ap.add_argument("--input", help="use this NDJSON instead of generating one")
    ap.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    ap.add_argument("--results", default=str(ROOT / "bench" / "RESULTS.md"))
    # internal: one configuration in a child process
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--engine", default="rete", help=argparse.SUPPRESS)
    ap.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args)
        return

    from screener import synth
    configs = [(c.split(":")[0], int(c.split(":")[1])) for c in args.configs.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmpd:
        tmp = Path(tmpd)
        if args.input:
            input_path, n = args.input, sum(1 for _ in open(args.input, "rb"))
            gen_s = 0.0
        else:
            input_path = str(tmp / "registry.ndjson")
            t0 = time.perf_counter()
            n = synth.write_ndjson(input_path, args.n, args.seed, AS_OF)
            gen_s = time.perf_counter() - t0
            print(f"generated {n:,} synthetic patients ({os.path.getsize(input_path) / 2**20:,.0f}"
                  f" MiB NDJSON) in {gen_s:.0f} s (not timed)", flush=True)
        rows = []
        for engine, workers in configs:
            print(f"running {engine} with {workers} worker(s) ...", flush=True)
            r = run_config(engine, workers, input_path, args.chunk_size, tmp)
            print(f"  {r['rate']:,.0f} screens/s ({r['rate_per_core']:,.0f} per core, "
                  f"{r['rate_per_cpu_second']:,.0f} per CPU-second), peak RSS sum "
                  f"{_mib(r['peak_rss_sum'])} MiB", flush=True)
            rows.append(r)
    statuses = {json.dumps(r["status"], sort_keys=True) for r in rows}
    same = len(statuses) == 1
    load = os.getloadavg()
    head = (f"### {date.today().isoformat()} — {platform.machine()}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}, {platform.system()}; "
            f"load average at the end {load[0]:.1f}")
    text = "\n".join([
        head, "",
        f"`python bench/batch.py --n {args.n} --configs {args.configs}`: {n:,} synthetic "
        f"patients (seed {args.seed}, NDJSON generated first, not timed) x {len(TRIALS)} trials "
        f"({', '.join(TRIALS)}), chunk size {args.chunk_size}. End to end = NDJSON in, Parquet "
        "matrix parts + summary + HTML report out.",
        "",
        table(rows), "",
        f"Targets: >= {TARGET_RATE_PER_CORE:,} patient-trial screens/s per core; peak RSS < 1 GiB."
        f" Met: rate per core {'yes' if all(r['rate_per_core'] >= TARGET_RATE_PER_CORE for r in rows) else 'no'}"  # noqa: E501
        f", RSS {'yes' if all((r['peak_rss_sum'] or r['max_rss_one']) < TARGET_RSS for r in rows) else 'no'}."  # noqa: E501
        f" Status counts identical across configurations: {'yes' if same else 'NO'}.",
    ])
    print()
    print(text)
    if not args.no_record:
        record(text, Path(args.results))
        print(f"\nappended to {args.results}")


if __name__ == "__main__":
    main()
