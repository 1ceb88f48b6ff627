"""CDS Hooks 2.0: discovery (`GET /cds-services`) and the `trial-screening` service for the
`patient-view` hook (`POST /cds-services/trial-screening`).

Position: `api/` edge; maps a hook request onto the same screening as `POST /screen`.

Decisions:
* **Prefetch only.** The service never calls the EHR's FHIR server (it has no network access to
  it by design, and a synchronous fetch would blow the latency budget). The discovery document
  asks for the Patient, the Observations with the codes the loaded rules read, the Conditions,
  and, when rules need them, medications and allergies. Without a prefetched Patient the answer
  is one card saying what is missing (a 412 would be allowed by the spec, but EHRs typically
  show nothing for an error, and then nobody learns that the integration is misconfigured).
  A prefetch key that is absent, null or an OperationOutcome (the EHR could not fetch it) is
  named in the card, and everything a search of its resource type may hold is `incomplete` in
  the canonical patient (unknown, never absent: the statements not sent may hold more days of
  therapy, the conditions not sent a pregnancy). A search result that is visibly incomplete (a
  `next` page link, a `total` above the matches sent, an OperationOutcome entry) is named in
  the card too, and the adapter marks what its resource type may hold the same way, since a
  newer result may be on a page that was not sent.
* **The patient in context is the screened patient.** The `patient` prefetch must have the id
  of `context.patientId` (else a `critical` card and nothing is screened), and the adapter is
  told to screen that Patient: any other Patient in the prefetch (an `_include`, a misrouted
  entry) is ignored, and so is every resource whose subject is another Patient.
* **as_of** is today's date in UTC, taken here at the edge (the core never reads the clock) and
  shown in every card and in its `extension`.
* **Indicator:** `info` for eligible and ineligible (information, no action forced),
  `warning` for needs_review (data or attestations are missing before the patient can be
  considered), `critical` only when the prefetched Patient is not the patient in context
  (the data cannot be trusted and nothing is screened).
* **Link:** the full JSON report, stored for a limited time under a random token
  (`api.reports`); opening it needs no API key, the token is the credential.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from screener.adapters.fhir import EXTRA_LOINC, searchset_incomplete, supplied_by
from screener.elements import DEMOGRAPHIC, ELEMENTS, LOINC, PROJECT
from screener.ir import slots_of
from screener.report import describe, dumps_bytes, printable
from screener.screen import Screener

from .errors import invalid
from .models import CdsRequest
from .reports import ReportStore
from .service import Context, from_resources, record_decisions, screen_all_reports

SERVICE_ID = "trial-screening"
HOOK = "patient-view"
SOURCE_LABEL = "Clinical-trial eligibility screener"
MAX_SUMMARY = 139  # the spec says "less than 140 characters"
_OBS_KINDS = ("quantity", "coded", "boolean")


# ---- discovery ------------------------------------------------------------------------------

def elements_used(screener: Screener) -> set[str]:
    return {name for c in screener.compiled.values() for slot in slots_of(c.trial)
            for name in slot.element}


def observation_codes(screener: Screener) -> list[str]:
    """`system|code` tokens for every observation-like element the loaded rules read: LOINC
    where the element has codes (with the other codes the adapter reads for it: hCG tests for
    pregnancy), the project CodeSystem where it has none (HCT-CI, donor)."""
    out: list[str] = []
    for name in sorted(elements_used(screener)):
        e = ELEMENTS.get(name)
        if e is None or e.kind not in _OBS_KINDS or name in DEMOGRAPHIC:
            continue
        if e.loinc:
            out += [f"{LOINC}|{code}" for code in (*e.loinc, *EXTRA_LOINC.get(name, ()))]
        else:
            out.append(f"{PROJECT}|{name}")
    return out


def prefetch_templates(screener: Screener) -> dict[str, str]:
    used = elements_used(screener)
    kinds = {ELEMENTS[n].kind for n in used if n in ELEMENTS}
    pid = "{{context.patientId}}"
    t = {
        "patient": f"Patient/{pid}",
        "observations": f"Observation?patient={pid}&code=" + ",".join(observation_codes(screener)),
        "conditions": f"Condition?patient={pid}",
    }
    if "exposure" in kinds:
        t["medicationStatements"] = f"MedicationStatement?patient={pid}"
        t["medicationAdministrations"] = f"MedicationAdministration?patient={pid}"
    # the only allergy the rules read is a drug hypersensitivity, recorded as AllergyIntolerance
    if any("hypersensitivity" in n for n in used):
        t["allergies"] = f"AllergyIntolerance?patient={pid}"
    return t


def discovery(screener: Screener) -> dict[str, Any]:
    trials = ", ".join(sorted(screener.compiled))
    return {"services": [{
        "hook": HOOK,
        "id": SERVICE_ID,
        "title": "Clinical-trial eligibility screening",
        "description": f"Screens the patient in context against the loaded trials ({trials}) "
                       "and returns one card per trial: eligible, needs review (with the "
                       "missing data and attestations), or ineligible, with the per-criterion "
                       "table.",
        "prefetch": prefetch_templates(screener),
        "usageRequirements": "Works from prefetch only: the service does not call the FHIR "
                             "server. Send every prefetch key; a missing one is screened as "
                             "missing data.",
    }]}


# ---- cards ----------------------------------------------------------------------------------

def _short(name: str) -> str:
    return name.upper() if len(name) <= 6 else name


def _fit(head: str, items: list[str], tail: str, limit: int = MAX_SUMMARY) -> str:
    """`head (a, b, c +2 more tail)` cut to the limit by dropping items, never mid-word."""
    for k in range(len(items), -1, -1):
        shown = items[:k]
        more = len(items) - k
        inner = ", ".join(shown) + (f" +{more} more" if more and shown else
                                    (f"{more} items" if more else ""))
        s = f"{head} ({inner}{tail})" if inner or tail else head
        if len(s) <= limit:
            return s
    return head[:limit]


def summary(report: dict[str, Any]) -> str:
    tid = report["trial"]["id"]
    status = report["status"]
    if status == "eligible":
        return _fit(f"{tid}: likely eligible, every criterion met or attested", [], "")
    if status == "ineligible":
        # what decided it: an inclusion that is not met, an exclusion that is met
        failing = [f"{c['id']} {_VERDICT[c['verdict']]}" for c in report["criteria"]
                   if not c["favourable"] and c["verdict"] in ("met", "not_met")]
        return _fit(f"{tid}: not eligible", failing, "")
    missing = [_short(m) for m in report["missing_data"]]
    pending = len(report["pending_attestations"])
    head = f"{tid}: needs review, {report['unresolved']} unresolved"
    tail = " missing" if missing else ""
    if pending:
        tail += f"; {pending} to attest" if missing else f"{pending} to attest"
    return _fit(head, missing, tail)


#: characters that make markdown inside a table cell (links, images, emphasis, code, strike,
#: cell breaks); HTML is written as entities
_MD_ACTIVE = frozenset("\\`*_[]!|~")
_HTML = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def _cell(text: Any, limit: int = 160) -> str:
    """Text for a markdown table cell: one line, cut at `limit`, and inert. Evidence quotes
    record content (FHIR sources, codes, display texts, units), and the EHR renders the card as
    markdown: a display text such as `[x](javascript:...)` or `<img ...>` must show as text,
    not become a link or HTML on the clinician's screen. `://` and `www.` are escaped too, so a
    URL in the data is not turned into a link by GitHub-flavoured autolinking."""
    s = printable(" ".join(str(text).split()))
    if len(s) > limit:
        s = s[: limit - 1] + "…"
    s = "".join(_HTML.get(ch) or ("\\" + ch if ch in _MD_ACTIVE else ch) for ch in s)
    return s.replace("://", ":\\/\\/").replace("www.", "www\\.")


def _evidence(c: dict[str, Any]) -> str:
    return describe(c, eq=" = ", on="on ")


_VERDICT = {"met": "met", "not_met": "not met", "unknown": "**unknown**",
            "not_applicable": "n/a"}


def detail(report: dict[str, Any], not_prefetched: list[str],
           incomplete: dict[str, str] | None = None, notes: list[str] | None = None) -> str:
    t = report["trial"]
    n = report["counts"]
    lines = [
        f"**{_cell(t['id'], 40)}** v{_cell(t['version'], 40)}: {_cell(t['title'], 200)}",
        "",
        f"Status **{report['status'].replace('_', ' ')}** as of {report['as_of']}: "
        f"{n['met']} met, {n['not_met']} not met, {n['unknown']} unknown, "
        f"{n['not_applicable']} not applicable.",
        "",
        "| Criterion | Kind | Verdict | Evidence / missing |",
        "|---|---|---|---|",
    ]
    for c in report["criteria"]:
        mark = "" if c["favourable"] else " ✗" if c["verdict"] != "unknown" else ""
        lines.append(f"| {c['id']} | {c['kind']} | {_VERDICT[c['verdict']]}{mark} | "
                     f"{_cell(_evidence(c))} |")
    lines.append("")
    if report["missing_data"]:
        labels = [f"{m} ({ELEMENTS[m].label})" if m in ELEMENTS else m
                  for m in report["missing_data"]]
        lines.append("**Missing data:** " + ", ".join(labels) + ".")
    if report["pending_attestations"]:
        lines.append("**Pending attestations:** " + ", ".join(report["pending_attestations"])
                     + ".")
    if not_prefetched:
        lines.append("**Not prefetched by the EHR (what it holds is unknown):** "
                     + ", ".join(_cell(k, 60) for k in not_prefetched) + ".")
    if incomplete:
        # the keys are the client's own (any text): escaped like record content
        lines.append("**Incomplete prefetch (data may be missing; newer results may exist):** "
                     + "; ".join(f"{_cell(k, 60)} ({_cell(v, 80)})"
                                 for k, v in sorted(incomplete.items())) + ".")
    lines += notes or []
    if report["data_issues_total"]:
        lines.append(f"**Data issues:** {report['data_issues_total']} (in the full report).")
    lines += ["", f"Ruleset `{t['ruleset_hash']}`, input `{report['input_hash']}`, "
              f"{report['engine']}."]
    return "\n".join(lines)


def _card(summary_: str, indicator: str, detail_: str, **extra: Any) -> dict[str, Any]:
    return {"uuid": str(uuid.uuid4()), "summary": summary_[:MAX_SUMMARY], "indicator": indicator,
            "detail": detail_, "source": {"label": SOURCE_LABEL}, **extra}


def report_card(report: dict[str, Any], link: str | None, not_prefetched: list[str],
                incomplete: dict[str, str] | None = None, notes: list[str] | None = None
                ) -> dict[str, Any]:
    extra: dict[str, Any] = {
        "extension": {"screener": {
            "trial": report["trial"]["id"], "status": report["status"],
            "as_of": report["as_of"], "input_hash": report["input_hash"],
            "ruleset_hash": report["trial"]["ruleset_hash"], "engine": report["engine"]}},
    }
    if link is not None:
        extra["links"] = [{"label": f"Full screening report ({report['trial']['id']})",
                           "url": link, "type": "absolute"}]
    indicator = "warning" if report["status"] == "needs_review" else "info"
    if incomplete:
        extra["extension"]["screener"]["incomplete_prefetch"] = sorted(incomplete)
    return _card(summary(report), indicator,
                 detail(report, not_prefetched, incomplete, notes), **extra)


# ---- the service ----------------------------------------------------------------------------

def _is_outcome(v: Any) -> bool:
    return isinstance(v, dict) and v.get("resourceType") == "OperationOutcome"


def _patient_ref(v: str) -> str:
    return v.split("/")[-1] if v.startswith("Patient/") else v


#: adapter issues that mean data about someone else was in the prefetch (and was left out)
_FOREIGN = ("fhir.extra_patient", "fhir.other_patient", "fhir.unresolved_subject")


def call(ctx: Context, store: ReportStore, base_url: str, req: CdsRequest) -> dict[str, Any]:
    """Answer one hook call (synchronous: it runs the engine)."""
    if req.hook != HOOK:
        raise invalid(["body", "hook"], f"service {SERVICE_ID!r} answers the {HOOK!r} hook, "
                      f"not {req.hook!r}", "unsupported_hook")
    today = datetime.now(UTC).date()
    expected = prefetch_templates(ctx.holder.current)
    prefetch = req.prefetch or {}
    patient = prefetch.get("patient")
    if not isinstance(patient, dict) or patient.get("resourceType") != "Patient":
        keys = ", ".join(expected)
        return {"cards": [_card(
            "Trial screening needs prefetched FHIR data; nothing was screened",
            "warning",
            "This service works from CDS Hooks prefetch only and received no Patient "
            f"resource. Configure the EHR to send the prefetch keys ({keys}) listed by "
            "`GET /cds-services`.")]}
    context_id = _patient_ref(req.context.patientId)
    if patient.get("id") != context_id:
        return {"cards": [_card(
            "Prefetched Patient is not the patient in context; nothing was screened",
            "critical",
            "The `patient` prefetch holds a different Patient id than `context.patientId`. "
            "Screening data that may belong to another patient would be unsafe.")]}
    not_prefetched = sorted(k for k in expected
                            if k != "patient" and (prefetch.get(k) is None
                                                   or _is_outcome(prefetch.get(k))))
    incomplete = {k: why for k, v in sorted(prefetch.items())
                  if (why := searchset_incomplete(v)) is not None}
    # the verified Patient first, and named: the adapter screens it and no other Patient
    resources: Iterable[Any] = [patient] + [v for k, v in sorted(prefetch.items())
                                            if k != "patient" and v is not None
                                            and not _is_outcome(v)]
    t0 = time.perf_counter()
    canon = from_resources(list(resources), context_id)
    # what a key not sent (or not fetched) would have held may exist: unknown, not absent
    for key in not_prefetched:
        why = (f"prefetch {key!r} was not sent by the EHR" if prefetch.get(key) is None else
               f"the EHR could not fetch prefetch {key!r} (OperationOutcome)")
        rtype = expected[key].split("?")[0].split("/")[0]
        for k in supplied_by(rtype):
            have = canon.patient.setdefault("incomplete", {})
            have[k] = f"{have[k]}; {why}" if k in have else why
    if canon.patient.get("id") != context_id:  # pragma: no cover - the adapter guarantees it
        return {"cards": [_card(
            "Screened data is not the patient in context; nothing was screened", "critical",
            "The FHIR adapter did not select the Patient of `context.patientId`.")]}
    reports = screen_all_reports(ctx, canon, today, None)
    record_decisions(ctx, reports, "cds-hooks", canon.format, time.perf_counter() - t0)
    notes = (["**Data about another patient in the prefetch was ignored** (the full report "
              "lists it)."] if any(i.get("code") in _FOREIGN for i in canon.issues) else [])
    cards = []
    for r in reports:
        full = dict(r)
        if canon.issues:
            full["adapter_issues"] = canon.issues
        token = store.put(dumps_bytes(full))
        cards.append(report_card(r, f"{base_url}/reports/{token}", not_prefetched,
                                 incomplete, notes))
    return {"cards": cards}
