"""What the routes do, without HTTP: strict JSON, input -> canonical patient -> Screener ->
report bytes, decision log and metrics.

Position: `api/` edge, called by `app` and `cds_hooks`. Every function here that screens is
synchronous and must run off the event loop (the routes use the screening thread, `executor`):
durable_rules holds the GIL in C and is serialised by a lock inside `screener.engine`, so running
it on the event loop would stall every other connection of the process.
"""

from __future__ import annotations

import email.message
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import TypeAdapter, ValidationError
from starlette.responses import Response

from screener import jsonfast
from screener.errors import PatientDataError, UnknownTrial, did_you_mean
from screener.report import AttestationError, dumps_bytes, normalise_attestations

from .decisions import DecisionLog
from .errors import ApiError, from_attestation_error, from_patient_error, invalid, unknown_trial
from .metrics import Metrics
from .models import ScreenAllRequest, ScreenRequest
from .state import ScreenerHolder

JSON = "application/json"


# ---- strict JSON ----------------------------------------------------------------------------

def parse_json_strict(raw: bytes) -> Any:
    """Strict JSON (`screener.jsonfast.loads_strict`: NaN / Infinity, duplicate keys and lone
    surrogates refused), with errors as located 422 records saying where the text is broken."""
    try:
        return jsonfast.loads_strict(raw)
    except jsonfast.ConstantError as e:
        raise invalid(["body"], f"{e.name} is not valid JSON (JSON has no NaN or Infinity)",
                      "json_invalid") from None
    except (jsonfast.SurrogateError, jsonfast.DuplicateKeyError) as e:
        raise invalid(["body"], str(e), "json_invalid") from None
    except json.JSONDecodeError as e:
        raise invalid(["body", e.pos], f"invalid JSON at line {e.lineno} column {e.colno}: "
                      f"{e.msg}", "json_invalid") from None
    except UnicodeDecodeError:
        raise invalid(["body"], "the body is not UTF-8 text", "json_invalid") from None
    except RecursionError:
        raise invalid(["body"], "JSON nested too deeply", "json_invalid") from None
    except ValueError as e:
        # the standard library's other refusals: an integer of more than 4,300 digits
        raise invalid(["body"], f"invalid JSON: {e}", "json_invalid") from None


class StrictRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = parse_json_strict(await self.body())
        return self._json


class StrictJSONRoute(APIRoute):
    """An APIRoute whose JSON body is parsed by `parse_json_strict` (FastAPI calls
    `request.json()`, which in Starlette accepts NaN)."""

    def get_route_handler(self) -> Any:
        handler = super().get_route_handler()

        async def strict_handler(request: Request) -> Response:
            response: Response = await handler(StrictRequest(request.scope, request.receive))
            return response

        return strict_handler


def _is_json(content_type: str | None) -> bool:
    """FastAPI's rule for reading a body as JSON (strict content type, its default)."""
    if not content_type:
        return False
    message = email.message.Message()
    message["content-type"] = content_type
    if message.get_content_maintype() != "application":
        return False
    subtype = message.get_content_subtype()
    return subtype == "json" or subtype.endswith("+json")


class LeanJSONRoute(StrictJSONRoute):
    """A route for the screening endpoints: declared like any FastAPI route (the OpenAPI
    description, examples and response models come from the declaration), but run without
    FastAPI's per-request dependency machinery.

    Why: on this project's 2-core VM, FastAPI 0.165's request handling (dependency solving,
    body field resolution, endpoint context, telemetry hooks) measured about 150-200 us of CPU
    per POST, against about 40 us for a plain Starlette route in the same app: more than the
    rules engine takes for a 38-criterion trial. The screening endpoints take only path strings
    and one JSON body model, so this handler does just that, the way FastAPI does it: the body
    is read as JSON only under a JSON content type (else it is validated as bytes and refused),
    parsed strictly (`parse_json_strict`), validated by the declared pydantic model, and its
    errors are raised as `RequestValidationError` with FastAPI's locations (`["body", ...]`),
    so the app's handlers answer as for any route. A test holds this route and FastAPI's own
    handling equal on a corpus of good and bad requests.

    Only for endpoints whose parameters are path parameters and exactly one body model.
    """

    def get_route_handler(self) -> Any:
        dependant = self.dependant
        special = (dependant.request_param_name, dependant.websocket_param_name,
                   dependant.http_connection_param_name, dependant.response_param_name,
                   dependant.background_tasks_param_name, dependant.security_scopes_param_name)
        if (len(dependant.body_params) != 1 or dependant.query_params or dependant.header_params
                or dependant.cookie_params or dependant.dependencies or any(special)):
            raise TypeError(f"LeanJSONRoute {self.path}: needs path parameters and one body "
                            "model, nothing else")
        field = dependant.body_params[0]
        body_name = field.name
        model = field.field_info.annotation
        if model is None:
            raise TypeError(f"LeanJSONRoute {self.path}: the body has no type")
        adapter: TypeAdapter[Any] = TypeAdapter(model)
        path_names = [p.name for p in dependant.path_params]
        endpoint: Callable[..., Awaitable[Response]] = self.endpoint

        async def lean_handler(request: Request) -> Response:
            raw = await request.body()
            if not raw:
                raise RequestValidationError([{"type": "missing", "loc": ("body",),
                                               "msg": "Field required", "input": None}])
            value: Any = parse_json_strict(raw) if _is_json(
                request.headers.get("content-type")) else raw
            try:
                body = adapter.validate_python(value, from_attributes=True)
            except ValidationError as e:
                raise RequestValidationError(
                    [{**err, "loc": ("body", *err["loc"])}
                     for err in e.errors(include_url=False)]) from None
            params = request.path_params
            return await endpoint(**{n: params[n] for n in path_names}, **{body_name: body})

        return lean_handler


# ---- screening ------------------------------------------------------------------------------

@dataclass
class Context:
    holder: ScreenerHolder
    metrics: Metrics
    decisions: DecisionLog | None


@dataclass
class Canonical:
    patient: Any
    issues: list[Any]
    format: str          # "canonical" | "fhir"
    loc: tuple[str, ...]  # where the patient came from in the request, for error locations


def to_canonical(patient: Mapping[str, Any] | None, fhir: Any) -> Canonical:
    if patient is not None:
        return Canonical(patient, [], "canonical", ("body", "patient"))
    from screener.adapters.fhir import bundle_to_patient
    doc, issues = bundle_to_patient(fhir)
    return Canonical(doc, list(issues), "fhir", ("body", "fhir"))


def from_resources(resources: list[Any], patient_id: str | None = None) -> Canonical:
    """A CDS Hooks prefetch; `patient_id`: the verified patient in context, the one screened."""
    from screener.adapters.fhir import resources_to_patient
    doc, issues = resources_to_patient(resources, patient_id)
    return Canonical(doc, list(issues), "fhir", ("body", "prefetch"))


def record_decisions(ctx: Context, reports: list[dict[str, Any]], via: str, fmt: str,
                     seconds: float) -> None:
    ctx.metrics.screen_latency.labels(fmt).observe(seconds)
    for r in reports:
        ctx.metrics.verdicts.labels(r["trial"]["id"], r["status"]).inc()
    if ctx.decisions is not None:
        ctx.decisions.write(reports, via=via, input_format=fmt)


def screen_one(ctx: Context, trial_id: str, req: ScreenRequest) -> bytes:
    t0 = time.perf_counter()
    with ctx.holder.lease() as s:
        try:
            s.get(trial_id)  # before any work: an unknown trial is a 404 whatever the body
        except UnknownTrial as e:
            raise unknown_trial(e) from None
        canon = to_canonical(req.patient, req.fhir)
        try:
            report = s.screen(trial_id, canon.patient, req.as_of, req.attestations)
        except PatientDataError as e:
            raise from_patient_error(e, canon.loc) from None
        except AttestationError as e:
            raise from_attestation_error(e) from None
        except RecursionError:
            raise invalid(list(canon.loc), "patient data nested too deeply") from None
    if canon.issues:  # as the CLI does: the key is there only when there is something to say
        report["adapter_issues"] = canon.issues
    record_decisions(ctx, [report], "api", canon.format, time.perf_counter() - t0)
    return dumps_bytes(report)


def check_attestations_by_trial(ctx_screener: Any, raw: Mapping[str, Any] | None) -> None:
    """POST /screen takes attestations per trial id; the core ignores ids it does not know,
    which would silently drop a typo'd trial id, so both levels are checked here."""
    for tid, att in (raw or {}).items():
        comp = ctx_screener.compiled.get(tid)
        if comp is None:
            hint = did_you_mean(tid, ctx_screener.compiled)
            raise invalid(["body", "attestations", tid], f"unknown trial {tid!r}"
                          + (f" (did you mean {hint!r}?)" if hint else ""), "unknown_trial")
        try:
            normalise_attestations(comp.trial, att)
        except AttestationError as e:
            # the core locates errors as ("attestations", criterion); here they sit one level
            # deeper, under the trial id
            inner = e.loc[1:] if e.loc[:1] == ("attestations",) else e.loc
            raise invalid(["body", "attestations", tid, *inner], e.msg, "attestation") from None


def screen_all_reports(ctx: Context, canon: Canonical, as_of: date,
                       attestations: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    with ctx.holder.lease() as s:
        check_attestations_by_trial(s, attestations)
        try:
            reports = s.screen_all(canon.patient, as_of, attestations)
        except PatientDataError as e:
            raise from_patient_error(e, canon.loc) from None
        except AttestationError as e:  # pragma: no cover - checked above
            raise from_attestation_error(e) from None
        except RecursionError:
            raise invalid(list(canon.loc), "patient data nested too deeply") from None
    return reports


def screen_all(ctx: Context, req: ScreenAllRequest) -> bytes:
    t0 = time.perf_counter()
    canon = to_canonical(req.patient, req.fhir)
    reports = screen_all_reports(ctx, canon, req.as_of, req.attestations)
    record_decisions(ctx, reports, "api", canon.format, time.perf_counter() - t0)
    body: dict[str, Any] = {
        "as_of": req.as_of.isoformat(),
        "input_hash": reports[0]["input_hash"] if reports else None,
        "reports": reports,
    }
    if canon.issues:
        body["adapter_issues"] = canon.issues
    return dumps_bytes(body)


def raise_if_unknown(holder: ScreenerHolder, trial_id: str) -> None:
    try:
        holder.current.get(trial_id)
    except UnknownTrial as e:
        raise unknown_trial(e) from None


__all__ = ["ApiError", "Context", "JSON", "StrictJSONRoute", "parse_json_strict", "screen_all",
           "screen_one"]
