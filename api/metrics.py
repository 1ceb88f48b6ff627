"""Prometheus metrics of the HTTP service (`GET /metrics`).

Position: `api/` edge. Labels carry routes (templates such as `/trials/{trial_id}/screen`, never
raw paths), status codes, trial ids and verdicts: nothing about a patient.

With several worker processes each process counts its own requests; `python -m api` then sets
PROMETHEUS_MULTIPROC_DIR so that a scrape, whichever worker answers it, sums every worker's
files (prometheus_client's multiprocess mode; only counters and histograms are used, which that
mode sums correctly).
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.075, 0.1, 0.25,
                    0.5, 1.0, 2.5)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        # one registry per app: tests build many apps in one process
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("screener_http_requests_total", "HTTP requests",
                                ["method", "route", "status"], registry=r)
        self.latency = Histogram("screener_http_request_duration_seconds",
                                 "HTTP request latency (whole request)", ["route"],
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.screen_latency = Histogram("screener_screen_duration_seconds",
                                        "Time to screen one request (adapter, normaliser, "
                                        "engine, report), excluding HTTP", ["input_format"],
                                        buckets=_LATENCY_BUCKETS, registry=r)
        self.verdicts = Counter("screener_decisions_total", "Screening decisions by trial and "
                                "status", ["trial", "status"], registry=r)
        self.reloads = Counter("screener_rule_reloads_total", "Rule reloads", ["result"],
                               registry=r)

    def render(self) -> bytes:
        mp_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if mp_dir and os.path.isdir(mp_dir):
            from prometheus_client import multiprocess
            reg = CollectorRegistry()
            multiprocess.MultiProcessCollector(reg, path=mp_dir)  # type: ignore[no-untyped-call]
            return generate_latest(reg)
        return generate_latest(self.registry)
