"""The one ASGI middleware of the service: authentication, body size limit, metrics, access log,
and the last-resort error handler.

Position: `api/` edge, outermost layer around the FastAPI router (inside Starlette's own
ServerErrorMiddleware, which it never lets an exception reach).

Why here and not in FastAPI dependencies: FastAPI reads and parses the request body *before* it
resolves dependencies, so an unauthenticated or oversized request would be parsed first. Here
credentials and Content-Length are checked before a single body byte is read, and the bytes that
do arrive are counted as they stream in (a chunked request has no Content-Length).

Why pure ASGI: `BaseHTTPMiddleware` costs a task and a queue per request.

Logging: one access line per request with the method, the route *template*
(`/trials/{trial_id}/screen`), status and duration; never a body, a query string or a raw path.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Iterable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .cds_auth import CdsTrust, looks_like_jwt
from .errors import body_too_large, internal_error_records, log_internal_error, record
from .metrics import Metrics

access_log = logging.getLogger("api.access")

#: reachable without credentials: probes, metrics, docs, CDS discovery, capability links
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/docs", "/docs/oauth2-redirect",
                          "/redoc", "/openapi.json"})
PUBLIC_GET = frozenset({"/cds-services"})
PUBLIC_PREFIXES = ("/reports/",)


def _json(status: int, records: list[dict[str, Any]],
          headers: Iterable[tuple[bytes, bytes]] = ()) -> tuple[Message, Message]:
    body = json.dumps({"detail": records}, separators=(",", ":")).encode()
    start: Message = {"type": "http.response.start", "status": status,
                      "headers": [(b"content-type", b"application/json"),
                                  (b"content-length", str(len(body)).encode()), *headers]}
    return start, {"type": "http.response.body", "body": body}


class ServiceMiddleware:
    def __init__(self, app: ASGIApp, *, api_keys: tuple[str, ...], auth: bool,
                 max_body: int, metrics: Metrics, cds_trust: CdsTrust | None = None,
                 cds_paths: frozenset[str] = frozenset(), public_url: str | None = None):
        self.app = app
        self.keys = tuple(k.encode() for k in api_keys)
        self.auth = auth
        self.max_body = max_body
        self.metrics = metrics
        #: CDS Hooks: on `cds_paths` (POST), a JWT signed by a trusted CDS client is accepted
        #: besides an API key (api/cds_auth.py)
        self.cds_trust = cds_trust
        self.cds_paths = cds_paths
        self.public_url = public_url

    def _is_public(self, method: str, path: str) -> bool:
        return (path in PUBLIC_PATHS or (path in PUBLIC_GET and method in ("GET", "HEAD"))
                or path.startswith(PUBLIC_PREFIXES))

    def _audience(self, scope: Scope, headers: dict[bytes, bytes]) -> str:
        """This service's URL as a CDS client addresses it (the JWT's `aud`)."""
        path = str(scope.get("root_path", "")) + str(scope["path"])
        if self.public_url:
            return self.public_url + path
        host = headers.get(b"host", b"").decode("latin-1")
        return f"{scope.get('scheme', 'http')}://{host}{path}"

    def _credential_error(self, headers: dict[bytes, bytes], scope: Scope | None = None
                          ) -> tuple[int, str, str] | None:
        given: bytes | None = headers.get(b"x-api-key")
        authz = headers.get(b"authorization")
        if given is None and authz is not None:
            scheme, _, token = authz.partition(b" ")
            if scheme.lower() != b"bearer" or not token.strip():
                return 401, "unauthorized", "Authorization must be 'Bearer <api key>'"
            given = token.strip()
        if given is None:
            return 401, "unauthorized", ("missing credentials: send 'Authorization: Bearer "
                                         "<api key>' or 'X-API-Key: <api key>'")
        # compare against every key, without stopping at the first match
        ok = False
        for k in self.keys:
            ok |= hmac.compare_digest(k, given)
        if ok:
            return None
        if (self.cds_trust is not None and scope is not None and authz is not None
                and scope["path"] in self.cds_paths and looks_like_jwt(given)):
            why = self.cds_trust.verify(given.decode("latin-1"), self._audience(scope, headers))
            return None if why is None else (401, "unauthorized", f"CDS Hooks JWT rejected: {why}")
        return 403, "forbidden", "the API key is not valid"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        method: str = scope["method"]
        path: str = scope["path"]
        status = 0
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status = message["status"]
                started = True
            await send(message)

        async def reject(code: int, records: list[dict[str, Any]],
                         headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
            start, body = _json(code, records, headers)
            await send_wrapper(start)
            await send_wrapper(body)

        try:
            headers = dict(scope["headers"])
            if self.auth and not self._is_public(method, path):
                err = self._credential_error(headers, scope)
                if err is not None:
                    code, type_, msg = err
                    extra = [(b"www-authenticate", b"Bearer")] if code == 401 else []
                    # located at the header that carried the credential (X-API-Key wins)
                    where = "x-api-key" if b"x-api-key" in headers else "authorization"
                    await reject(code, [record(type_, ["header", where], msg)], extra)
                    return
            declared = headers.get(b"content-length")
            if declared is not None:
                try:
                    too_big = int(declared) > self.max_body
                except ValueError:
                    too_big = False  # the HTTP server has already refused a malformed header
                if too_big:
                    await reject(413, body_too_large(self.max_body).records,
                                 [(b"connection", b"close")])
                    return
            received = 0
            limit = self.max_body

            async def receive_wrapper() -> Message:
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > limit:
                        # an HTTPException: FastAPI re-raises it from its body reading, and the
                        # app's handler answers 413
                        raise body_too_large(limit)
                return message

            await self.app(scope, receive_wrapper, send_wrapper)
        except Exception as exc:  # the last resort: a bug; log it without its message
            ref, records = internal_error_records()
            log_internal_error(ref, exc, self._route(scope))
            if not started:
                await reject(500, records)
        finally:
            route = self._route(scope)
            dt = time.perf_counter() - t0
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(route).observe(dt)
            if access_log.isEnabledFor(logging.INFO):
                client = scope.get("client") or ("-", 0)
                access_log.info('%s "%s %s" %d %.1fms', client[0], method, route, status,
                                dt * 1000)

    @staticmethod
    def _route(scope: Scope) -> str:
        route = scope.get("route")
        p = getattr(route, "path", None)
        return p if isinstance(p, str) else "<unmatched>"
