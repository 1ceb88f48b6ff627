"""`python -m api --host 127.0.0.1 --port 8000 --workers 2`: run the service under uvicorn.

Position: the process entry point of the HTTP service.

Before any worker starts, the settings and the rule files are checked here, so a bad
configuration fails once, with its located errors, instead of in every worker. Then:
* with several workers, PROMETHEUS_MULTIPROC_DIR (metrics summed over workers),
  SCREENER_REPORT_DIR (CDS report links readable by any worker), SCREENER_REPORT_KEY (the
  key those report files are encrypted with, new for each run unless given) and
  SCREENER_SUPERVISOR_PID (a successful reload asks the supervisor for a rolling restart) are
  set for the workers; temporary directories made here are removed at exit;
* uvicorn's access log is off: the service writes its own, with route templates and no query
  strings (`api.access`).
Scale with processes, not threads: the rules engine holds the GIL and is serialised by a lock.
"""

from __future__ import annotations

import argparse
import base64
import copy
import os
import secrets
import shutil
import sys
import tempfile
from typing import Any

import uvicorn
from uvicorn.config import LOGGING_CONFIG

from screener.errors import RuleFileError

from .settings import Settings, SettingsError
from .state import load


def log_config(level: str, access: bool) -> dict[str, Any]:
    cfg = copy.deepcopy(LOGGING_CONFIG)
    cfg["loggers"]["api"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    cfg["loggers"]["api.access"] = {"handlers": ["default"],
                                    "level": "INFO" if access else "WARNING",
                                    "propagate": False}
    return cfg


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m api", description="Run the screener HTTP "
                                "service (settings from SCREENER_* environment variables, "
                                "see docs/api.md).")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--log-level", default="info",
                   choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--no-access-log", action="store_true", help="no per-request log line")
    args = p.parse_args(argv)
    if args.workers < 1:
        p.error("--workers must be at least 1")

    if not os.environ.get("SCREENER_REPORT_KEY", "").strip():
        # report files are encrypted with a key that lives as long as this run (its workers
        # inherit it); links made before a restart stop opening, which their 1-hour life allows
        os.environ["SCREENER_REPORT_KEY"] = base64.urlsafe_b64encode(
            secrets.token_bytes(32)).decode()
    try:
        settings = Settings.from_env()
    except SettingsError as e:
        print(f"python -m api: configuration error: {e}", file=sys.stderr)
        return 2
    try:
        load(settings.rules).close()
    except RuleFileError as e:
        for err in e.errors:
            print(err.format(), file=sys.stderr)
        print("python -m api: the rule files have errors; not starting", file=sys.stderr)
        return 2

    made: list[str] = []
    if settings.report_dir is None:
        d = tempfile.mkdtemp(prefix="screener-reports-")
        made.append(d)
        os.environ["SCREENER_REPORT_DIR"] = d
    if args.workers > 1:
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            d = tempfile.mkdtemp(prefix="screener-metrics-")
            made.append(d)
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = d
        os.environ["SCREENER_SUPERVISOR_PID"] = str(os.getpid())
    try:
        uvicorn.run("api.app:app", host=args.host, port=args.port, workers=args.workers,
                    access_log=False, log_config=log_config(args.log_level,
                                                            not args.no_access_log),
                    log_level=args.log_level, timeout_graceful_shutdown=10)
    finally:
        for d in made:
            shutil.rmtree(d, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
