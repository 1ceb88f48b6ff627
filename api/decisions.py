"""The decision log: one JSON line per screening decision, appended, never rewritten.

Position: `api/` edge, written after the core has produced a report.

A line holds what is needed to replay and audit a decision, and nothing that identifies the
patient:

    {"time": "2026-11-22T10:31:07.120Z", "event": "screen", "via": "api", "trial": "NCT06930105",
     "ruleset_hash": "sha256:...", "engine": "screener 0.1.0 / durable_rules 2.0.28",
     "as_of": "2026-11-22", "input": "hmac-sha256:...", "patient": "hmac-sha256:...",
     "input_format": "canonical", "status": "needs_review", "unresolved": 12,
     "counts": {...}, "verdicts": {"inc_age": "met", ...}, "attested": ["inc_..."],
     "missing_data": ["ecog", "lvef"], "data_issues_total": 0}

* `patient` is HMAC-SHA256(salt, patient id): the same patient gives the same value (decisions
  can be grouped), and without the salt the id cannot be recovered by guessing MRNs.
* `input` is HMAC-SHA256(salt, input_hash). The plain input hash is in the response; hashed again
  with the salt here, because a small record (id, birth date, sex) could otherwise be found by
  brute force. Whoever holds the salt and a response finds its line.
* `time` is when the decision was logged; it is not in the report (the report depends only on
  input, as_of and rules).
* No evidence values, no dates of birth, no free text, no data issue messages.

Each line is written with a single `write(2)` on an O_APPEND descriptor, so lines from several
worker processes never interleave.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any


class DecisionLog:
    def __init__(self, path: str, salt: str):
        self.path = path
        self._salt = salt.encode()
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        # 0o600: decisions are clinical information about (pseudonymous) patients
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._lock = threading.Lock()

    def pseudonym(self, value: str) -> str:
        return "hmac-sha256:" + hmac.new(self._salt, value.encode(), hashlib.sha256).hexdigest()

    def line(self, report: Mapping[str, Any], *, via: str, input_format: str,
             now: datetime | None = None) -> dict[str, Any]:
        t = (now or datetime.now(UTC)).astimezone(UTC)
        pid = report.get("patient_id")
        return {
            "time": t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z",
            "event": "screen",
            "via": via,
            "trial": report["trial"]["id"],
            "trial_version": report["trial"]["version"],
            "ruleset_hash": report["trial"]["ruleset_hash"],
            "engine": report["engine"],
            "as_of": report["as_of"],
            "input": self.pseudonym(str(report["input_hash"])),
            "patient": self.pseudonym(str(pid)) if pid is not None else None,
            "input_format": input_format,
            "status": report["status"],
            "unresolved": report["unresolved"],
            "counts": report["counts"],
            "verdicts": {c["id"]: c["verdict"] for c in report["criteria"]},
            "attested": sorted(c["id"] for c in report["criteria"] if "attested" in c),
            "missing_data": report["missing_data"],
            "data_issues_total": report["data_issues_total"],
        }

    def write(self, reports: Sequence[Mapping[str, Any]], *, via: str, input_format: str) -> None:
        if not reports:
            return
        now = datetime.now(UTC)
        blob = "".join(json.dumps(self.line(r, via=via, input_format=input_format, now=now),
                                  sort_keys=True, separators=(",", ":")) + "\n"
                       for r in reports).encode()
        with self._lock:
            view = memoryview(blob)
            while view:  # one write(2) in practice; the loop only guards a short write
                view = view[os.write(self._fd, view):]

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
