"""The FastAPI application: thin routes over `screener.screen.Screener`.

Position: the HTTP edge of the project (docs/api.md). `create_app(settings)` builds an app;
`api.app:app` (what uvicorn workers import) is built lazily from the environment, so that
importing this module for `create_app` needs no configuration.

    GET  /trials, /trials/{id}            what is loaded (criteria, versions, ruleset hashes)
    POST /trials/{id}/screen, /screen     one patient against one / every trial
    GET  /cds-services                    CDS Hooks discovery   (api/cds_hooks.py)
    POST /cds-services/trial-screening    CDS Hooks patient-view
    GET  /reports/{token}                 full report behind a CDS card link
    POST /admin/reload                    re-load the rule files (also on SIGHUP)
    GET  /healthz, /readyz, /metrics, /docs

Every endpoint that screens hands the work to the process's screening thread
(`api/executor.py`) and awaits it: the rules engine never runs on the event loop, without
FastAPI's per-request threadpool hand-off (measured: more CPU than the engine's own work).
Responses that carry a report are the core's canonical JSON
(`screener.report.dumps`), not re-serialised.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypeVar

from fastapi import Body, FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from screener import __version__
from screener.engine import ENGINE_VERSION
from screener.ir import leaves

from . import cds_hooks
from .cds_auth import CdsTrust
from .decisions import DecisionLog
from .errors import (
    ApiError,
    http_exception_handler,
    record,
    rule_records,
    validation_exception_handler,
)
from .executor import ScreeningThread
from .metrics import Metrics
from .middleware import PUBLIC_GET, PUBLIC_PATHS, PUBLIC_PREFIXES, ServiceMiddleware
from .models import (
    CDS_EXAMPLE,
    SCREEN_ALL_EXAMPLES,
    SCREEN_EXAMPLES,
    CdsDiscovery,
    CdsRequest,
    CdsResponse,
    ErrorBody,
    ReloadResult,
    Report,
    ScreenAllRequest,
    ScreenAllResponse,
    ScreenRequest,
    TrialDetail,
    TrialList,
)
from .reports import ReportStore
from .service import JSON, Context, LeanJSONRoute, StrictJSONRoute, screen_all, screen_one
from .settings import Settings
from .state import ScreenerHolder, hashes

log = logging.getLogger("api")

ENGINE = f"screener {__version__} / {ENGINE_VERSION}"
_F = TypeVar("_F", bound=Callable[..., Any])
TrialId = Annotated[str, Path(description="trial id (NCT number)", examples=["NCT06930105"])]


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {c: {"model": ErrorBody} for c in codes}


def create_app(settings: Settings, lean_routes: bool = True) -> FastAPI:
    """The app. `lean_routes=False` runs the screening routes through FastAPI's own request
    handling instead of `LeanJSONRoute` (for the test that holds the two equal)."""
    holder = ScreenerHolder(settings.rules)
    metrics = Metrics()
    decisions = (DecisionLog(settings.decision_log, settings.log_salt or "")
                 if settings.decision_log else None)
    ctx = Context(holder, metrics, decisions)
    # every screen runs on this process's screening thread, never on the event loop
    screening = ScreeningThread()
    store = ReportStore(settings.report_dir, settings.report_ttl_seconds,
                        settings.report_key_bytes())

    def reload_rules(source: str) -> tuple[bool, dict[str, Any]]:
        outcome = holder.reload()
        metrics.reloads.labels("ok" if outcome.ok else "error").inc()
        if not outcome.ok:
            return False, {"records": rule_records(outcome.errors), "serving": outcome.trials}
        workers = "this process"
        sup = settings.supervisor_pid
        if sup is not None and os.getppid() == sup and source == "http":
            # several workers: the supervisor replaces them one by one, each loading the rules
            # this worker has just proved good, so that every worker serves the same ruleset
            os.kill(sup, signal.SIGHUP)
            workers = "this process; rolling restart of every worker requested"
        return True, {"reloaded": True, "trials": outcome.trials, "previous": outcome.previous,
                      "workers": workers}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        installed = False
        if settings.handle_sighup and threading.current_thread() is threading.main_thread():
            try:
                loop.add_signal_handler(
                    signal.SIGHUP, lambda: loop.run_in_executor(None, reload_rules, "signal"))
                installed = True
            except (NotImplementedError, RuntimeError, ValueError):
                log.warning("SIGHUP rule reload not available in this process")
        if settings.dev_mode:
            log.warning("SCREENER_DEV_MODE=1: authentication is OFF")
        if settings.tune_gc:
            # Rules, schemas and the app are built: move them out of the collector's reach (a
            # full collection would otherwise walk them again and again) and let young objects
            # pile up longer between collections (a parsed 50-resource Bundle is thousands of
            # short-lived dicts, freed by reference counting anyway).
            gc.collect()
            gc.freeze()
            gc.set_threshold(50_000, 20, 100)
        try:
            yield
        finally:
            # The Screener and the decision log stay open: the process is about to exit, which
            # frees both (log lines are unbuffered writes, nothing is lost), and an app whose
            # lifespan is run more than once (test clients) must still work afterwards.
            if installed:
                loop.remove_signal_handler(signal.SIGHUP)

    app = FastAPI(
        title="Clinical-trial eligibility screener",
        version=__version__,
        description="Screens one patient (canonical JSON or FHIR R4) against clinical-trial "
        "eligibility criteria and answers with a per-criterion report. Every report carries "
        "the ruleset hash, the input hash, `as_of` and the engine version, so a decision can be "
        "replayed. Authentication: `Authorization: Bearer <api key>` or `X-API-Key`; the CDS "
        "Hooks service also accepts the JWT of a trusted CDS client (`SCREENER_CDS_TRUST`).",
        lifespan=lifespan,
        responses=_errors(401, 403),
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.router.route_class = StrictJSONRoute
    app.state.holder = holder
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.reports = store
    app.add_exception_handler(StarletteHTTPException, http_exception_handler)
    app.add_exception_handler(RequestValidationError, validation_exception_handler)
    trust = (CdsTrust.from_file(settings.cds_trust)
             if settings.cds_trust and settings.auth_enabled else None)
    app.add_middleware(ServiceMiddleware, api_keys=settings.api_keys,
                       auth=settings.auth_enabled, max_body=settings.max_body_bytes,
                       metrics=metrics, cds_trust=trust,
                       cds_paths=frozenset({f"/cds-services/{cds_hooks.SERVICE_ID}"}),
                       public_url=settings.public_url)
    if settings.cors_origins:
        # added last, so it is the outer layer: a browser's preflight (OPTIONS, no credentials)
        # is answered here and never reaches authentication
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                           allow_methods=["GET", "POST"],
                           allow_headers=["authorization", "x-api-key", "content-type"])

    # ---- probes and metrics -----------------------------------------------------------------

    @app.get("/healthz", tags=["operations"], summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], summary="Readiness: rules loaded",
             responses={503: {"model": ErrorBody}})
    async def readyz() -> Response:
        loaded = hashes(holder.current)
        if not loaded:
            return JSONResponse({"detail": [record("not_ready", [], "no rules loaded")]}, 503)
        return JSONResponse({"status": "ready", "engine": ENGINE, "trials": loaded,
                             "generation": holder.generation})

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics",
             response_class=Response)
    async def metrics_endpoint() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    # ---- trials -----------------------------------------------------------------------------

    def _summary(c: Any) -> dict[str, Any]:
        t = c.trial
        inc = sum(1 for x in t.criteria if x.kind == "inclusion")
        return {"id": t.id, "title": t.title, "version": t.version, "ruleset_hash": c.hash,
                "inclusion": inc, "exclusion": len(t.criteria) - inc,
                "manual": sum(1 for x in t.criteria if x.manual)}

    @app.get("/trials", tags=["trials"], response_model=TrialList,
             summary="The loaded trials with their versions and ruleset hashes")
    async def list_trials() -> dict[str, Any]:
        return {"engine": ENGINE,
                "trials": [_summary(c) for c in holder.current.compiled.values()]}

    @app.get("/trials/{trial_id}", tags=["trials"], response_model=TrialDetail,
             summary="One trial's criteria: ids, kinds, texts, manual flags, data elements",
             responses=_errors(404))
    async def get_trial(trial_id: TrialId) -> dict[str, Any]:
        from .service import raise_if_unknown
        raise_if_unknown(holder, trial_id)
        c = holder.current.compiled[trial_id]
        crits = []
        for x in c.trial.criteria:
            els = sorted({n for leaf in leaves(x.logic) + leaves(x.applies_if)
                          for n in leaf.slot.element})
            crits.append({"id": x.id, "kind": x.kind, "text": x.text, "manual": x.manual,
                          "elements": els, **({"note": x.note} if x.note else {})})
        return {**_summary(c), "source": c.trial.source, "criteria": crits}

    # ---- screening --------------------------------------------------------------------------

    def screening_post(path: str, **kw: Any) -> Callable[[_F], _F]:
        """`@app.post` for the screening routes: `LeanJSONRoute` (see api/service.py)."""
        def register(fn: _F) -> _F:
            app.router.add_api_route(path, fn, methods=["POST"], route_class_override=(
                LeanJSONRoute if lean_routes else StrictJSONRoute), **kw)
            return fn
        return register

    @screening_post("/trials/{trial_id}/screen", tags=["screening"], response_class=Response,
                    summary="Screen one patient against one trial",
                    responses={200: {"model": Report, "content": {JSON: {}}},
                               **_errors(404, 413, 422)})
    async def screen_trial(trial_id: TrialId,
                           body: Annotated[ScreenRequest, Body(openapi_examples=SCREEN_EXAMPLES)]
                           ) -> Response:
        return Response(await screening.run(screen_one, ctx, trial_id, body), media_type=JSON)

    @screening_post("/screen", tags=["screening"], response_class=Response,
                    summary="Screen one patient against every loaded trial, ranked",
                    description="Ranked: eligible, then needs_review by fewest unresolved "
                    "criteria, then ineligible.",
                    responses={200: {"model": ScreenAllResponse, "content": {JSON: {}}},
                               **_errors(413, 422)})
    async def screen_every_trial(
            body: Annotated[ScreenAllRequest, Body(openapi_examples=SCREEN_ALL_EXAMPLES)]
    ) -> Response:
        return Response(await screening.run(screen_all, ctx, body), media_type=JSON)

    # ---- CDS Hooks --------------------------------------------------------------------------

    @app.get("/cds-services", tags=["cds-hooks"], response_model=CdsDiscovery,
             summary="CDS Hooks discovery")
    async def cds_discovery() -> dict[str, Any]:
        return cds_hooks.discovery(holder.current)

    @app.post(f"/cds-services/{cds_hooks.SERVICE_ID}", tags=["cds-hooks"],
              response_model=CdsResponse, response_model_exclude_none=True,
              summary="CDS Hooks patient-view: one card per trial", responses=_errors(413, 422))
    async def cds_trial_screening(
            request: Request,
            body: Annotated[CdsRequest, Body(openapi_examples={
                "patient-view": {"summary": "patient-view with prefetch", "value": CDS_EXAMPLE}})]
    ) -> dict[str, Any]:
        base = settings.public_url or str(request.base_url).rstrip("/")
        return await screening.run(cds_hooks.call, ctx, store, base, body)

    @app.get("/reports/{token}", tags=["cds-hooks"], response_class=Response,
             summary="The full report behind a CDS card link (expires; no API key: the token "
             "is the credential)",
             responses={200: {"model": ScreenAllResponse, "content": {JSON: {}}},
                        **_errors(404)})
    def get_report(token: Annotated[str, Path(max_length=64)]) -> Response:
        data = store.get(token)
        if data is None:
            raise ApiError(404, [record("not_found", ["path", "token"],
                                        "no such report, or it has expired")])
        return Response(data, media_type=JSON,
                        headers={"cache-control": "no-store", "referrer-policy": "no-referrer"})

    # ---- administration ---------------------------------------------------------------------

    @app.post("/admin/reload", tags=["operations"], response_model=ReloadResult,
              summary="Re-load the rule files; a bad file keeps the old rules serving",
              responses={422: {"model": ErrorBody, "description": "a rule file is bad: the "
                               "located errors; the previous rules are still serving"}})
    def admin_reload() -> Any:
        ok, result = reload_rules("http")
        if not ok:
            raise ApiError(422, result["records"], extra={"serving": result["serving"]})
        return result

    # ---- OpenAPI: security schemes; the public routes say they need none ---------------------

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description,
                             routes=app.routes)
        if settings.auth_enabled:
            comps = schema.setdefault("components", {})
            comps["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            }
            schema["security"] = [{"bearer": []}, {"apiKey": []}]
            for path, ops in schema.get("paths", {}).items():
                for method, op in ops.items():
                    if (path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)
                            or (path in PUBLIC_GET and method == "get")):
                        op["security"] = []
                        op.get("responses", {}).pop("401", None)
                        op.get("responses", {}).pop("403", None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


_app: FastAPI | None = None


def __getattr__(name: str) -> Any:
    # `uvicorn api.app:app` asks for `app`; it is built on first use, from the environment
    global _app
    if name == "app":
        if _app is None:
            _app = create_app(Settings.from_env())
        return _app
    raise AttributeError(name)
