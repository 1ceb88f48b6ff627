"""Error records for the HTTP service: every error body is `{"detail": [{type, loc, msg}, ...]}`.

Position: `api/` edge. Core exceptions (`screener.errors`, `screener.report.AttestationError`)
are mapped to status codes here, in one place:

    422  invalid input: malformed JSON, NaN / Infinity, wrong types, PatientDataError,
         AttestationError, a rule reload that found bad files
    404  unknown trial (the message carries a did-you-mean), unknown route
    413  body too large            401 missing credentials        403 wrong key

Records never echo request content: pydantic's `input` and `ctx` are dropped, because the
content is patient data and error bodies end up in client logs.
"""

from __future__ import annotations

import logging
import re
import traceback
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from screener.errors import PatientDataError, RuleError, UnknownTrial
from screener.report import AttestationError

log = logging.getLogger("api.errors")

Loc = Sequence[str | int]
Record = dict[str, Any]


def record(type_: str, loc: Loc, msg: str) -> Record:
    return {"type": type_, "loc": list(loc), "msg": msg}


class ApiError(StarletteHTTPException):
    """An error with its records. A subclass of HTTPException on purpose: FastAPI re-raises
    HTTPExceptions raised while it reads the body (the size limit is enforced there)."""

    def __init__(self, status: int, records: Iterable[Record],
                 headers: dict[str, str] | None = None, extra: dict[str, Any] | None = None):
        self.records = list(records)
        self.extra = extra or {}
        super().__init__(status, detail="; ".join(r["msg"] for r in self.records),
                         headers=headers)


def invalid(loc: Loc, msg: str, type_: str = "value_error") -> ApiError:
    return ApiError(422, [record(type_, loc, msg)])


def body_too_large(limit: int) -> ApiError:
    return ApiError(413, [record("too_large", ["body"],
                                 f"request body is larger than {limit} bytes")])


def unknown_trial(e: UnknownTrial) -> ApiError:
    return ApiError(404, [record("unknown_trial", ["path", "trial_id"], str(e))])


def from_patient_error(e: PatientDataError, prefix: Loc) -> ApiError:
    return ApiError(422, [record(e.type, [*prefix, *e.loc], e.msg)])


def from_attestation_error(e: AttestationError, prefix: Loc = ("body",)) -> ApiError:
    return ApiError(422, [record("attestation", [*prefix, *e.loc], e.msg)])


def rule_records(errors: Iterable[RuleError]) -> list[Record]:
    return [record(f"rule.{e.code}", [e.path, e.line, e.column], e.format()) for e in errors]


def error_response(status: int, records: list[Record], headers: Mapping[str, str] | None = None,
                   extra: dict[str, Any] | None = None) -> JSONResponse:
    return JSONResponse({"detail": records, **(extra or {})}, status_code=status,
                        headers=headers)


_HTTP_TYPES = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized",
               403: "forbidden", 413: "too_large"}


async def http_exception_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if isinstance(exc, ApiError):
        return error_response(exc.status_code, exc.records, exc.headers, exc.extra)
    msg = exc.detail if isinstance(exc.detail, str) else "error"
    return error_response(exc.status_code,
                          [record(_HTTP_TYPES.get(exc.status_code, "http_error"),
                                  ["path"] if exc.status_code in (404, 405) else [], msg)],
                          exc.headers)


#: labels pydantic puts into an error's location for the member of a union it tried
#: ("dict[str,literal['met','not_met',True]]"): a type, not a place in the request
_UNION_MEMBER = re.compile(r"^(?:dict|list|literal|function-[a-z]+)\[.*\]$")


def _clean_validation(errors: Sequence[Any]) -> list[Record]:
    out: list[Record] = []
    for err in errors:
        loc = [x if isinstance(x, (str, int)) else str(x) for x in err.get("loc", ())
               if not (isinstance(x, str) and _UNION_MEMBER.match(x))]
        out.append(record(str(err.get("type", "value_error")), loc,
                          str(err.get("msg", "invalid value"))))
    return out


async def validation_exception_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(422, _clean_validation(exc.errors()))


def internal_error_records() -> tuple[str, list[Record]]:
    ref = uuid.uuid4().hex[:12]
    return ref, [record("internal_error", [], f"internal error (reference {ref}); this is a "
                        "bug in the screener service, not in the request")]


def log_internal_error(ref: str, exc: BaseException, route: str) -> None:
    """Log a bug without its message: exception messages can quote patient data
    (`invalid literal for int(): '1985-03-14'`); the type and the frames are enough to find it."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = " <- ".join(f"{f.filename.rsplit('/', 2)[-1] if f.filename else '?'}:{f.lineno}"
                        f" {f.name}" for f in reversed(frames[-8:]))
    log.error("internal error %s on %s: %s at %s", ref, route, type(exc).__name__, where)
