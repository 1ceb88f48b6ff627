"""The screening routes run through `api.service.LeanJSONRoute` (without FastAPI's per-request
dependency machinery, for speed). This holds them equal to FastAPI's own handling of the same
declarations: for every request of a corpus of good and bad ones, the same status, the same
body bytes and the same content type."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.settings import Settings

KEY = "lean-key-Pq8Wd3Zn6Rt1Hy4M"
AUTH = {"Authorization": f"Bearer {KEY}"}
PATIENT: dict[str, Any] = {
    "id": "pt-lean-1",
    "birth_date": "1979-06-02",
    "sex": "female",
    "observations": [
        {"element": "alt", "value": 52, "unit": "U/L", "reference_range": {"high": 40},
         "date": "2026-11-01"},
        {"element": "ecog", "value": 3, "date": "2026-11-10"},
    ],
    "conditions": [{"element": "b_all", "onset": "2026-10-01", "clinical_status": "active"}],
}
BUNDLE = {"resourceType": "Bundle", "type": "collection", "entry": [
    {"resource": {"resourceType": "Patient", "id": "p1", "gender": "male",
                  "birthDate": "1960-01-01"}}]}
JSON_CT = {"content-type": "application/json"}


def _body(x: Any) -> bytes:
    return json.dumps(x).encode()


GOOD = {"patient": PATIENT, "as_of": "2026-11-22"}
#: (path, body bytes, headers beyond auth)
CORPUS: list[tuple[str, bytes, dict[str, str]]] = [
    (path, body, headers)
    for path in ("/trials/NCT06930105/screen", "/screen", "/trials/NCT00000000/screen",
                 "/trials/nct06930105/screen")
    for body, headers in [
        (_body(GOOD), JSON_CT),
        (_body({"fhir": BUNDLE, "as_of": "2026-11-22"}), JSON_CT),
        (_body({**GOOD, "attestations": ["inc_diagnostic_workup"]}), JSON_CT),
        (_body({**GOOD, "attestations": {"NCT06930105": ["inc_diagnostic_workup"]}}), JSON_CT),
        (_body({**GOOD, "attestations": {"no_such": "met"}}), JSON_CT),
        (_body({**GOOD, "attestations": 7}), JSON_CT),
        # pydantic's lax Literal[True] took 1 / 1.0 as true: refused, on both paths alike
        (_body({**GOOD, "attestations": {"inc_consent": 1}}), JSON_CT),
        (_body({**GOOD, "attestations": {"inc_consent": 1.0}}), JSON_CT),
        (_body({**GOOD, "attestations": {"NCT06930105": {"inc_consent": 1.0}}}), JSON_CT),
        (_body({**GOOD, "attestations": {"inc_consent": True}}), JSON_CT),
        (b"", JSON_CT),
        (b"", {}),
        (_body(GOOD), {}),                                    # no content type
        (_body(GOOD), {"content-type": "text/plain"}),
        (_body(GOOD), {"content-type": "application/fhir+json"}),
        (_body(GOOD), {"content-type": "application/json; charset=utf-8"}),
        (_body(GOOD), {"content-type": "application/x-www-form-urlencoded"}),
        (b"[]", JSON_CT), (b"null", JSON_CT), (b"7", JSON_CT), (b'"x"', JSON_CT),
        (b"{}", JSON_CT),
        (b'{"patient": {}, "as_of": "2026-11-22", "extra": 1}', JSON_CT),
        (_body({"patient": PATIENT, "fhir": BUNDLE, "as_of": "2026-11-22"}), JSON_CT),
        (_body({"patient": PATIENT}), JSON_CT),
        (_body({"patient": PATIENT, "as_of": "2026-13-01"}), JSON_CT),
        (_body({"patient": PATIENT, "as_of": 20261122}), JSON_CT),
        (_body({"patient": PATIENT, "as_of": None}), JSON_CT),
        (_body({"patient": [PATIENT], "as_of": "2026-11-22"}), JSON_CT),
        (_body({"patient": {"resourceType": "Patient"}, "as_of": "2026-11-22"}), JSON_CT),
        (_body({"patient": {"birth_date": True, "observations": "x"}, "as_of": "2026-11-22"}),
         JSON_CT),
        (b'{"patient": {"age": NaN}, "as_of": "2026-11-22"}', JSON_CT),
        (b'{"patient": {"age": 1e999}, "as_of": "2026-11-22"}', JSON_CT),
        (b'{"patient": {"age": 40, "age": 4}, "as_of": "2026-11-22"}', JSON_CT),
        (b'{"patient": {"age": ' + b"9" * 4301 + b'}, "as_of": "2026-11-22"}', JSON_CT),
        (b'{"patient": ', JSON_CT),
        (b'\xff\xfe{"a": 1}', JSON_CT),
        (b"[" * 5000 + b"]" * 5000, JSON_CT),
        (b'{"patient": {"id": "\\ud800"}, "as_of": "2026-11-22"}', JSON_CT),
        (b'{"patient": {"\\udfff": 1}, "as_of": "2026-11-22"}', JSON_CT),
        (_body({"fhir": [{"resourceType": "Observation"}], "as_of": "2026-11-22"}), JSON_CT),
        (_body({"fhir": "text", "as_of": "2026-11-22"}), JSON_CT),
    ]
]


@pytest.fixture(scope="module")
def clients() -> Iterator[tuple[TestClient, TestClient]]:
    settings = Settings(api_keys=(KEY,), handle_sighup=False, max_body_bytes=256 * 1024)
    lean, standard = create_app(settings), create_app(settings, lean_routes=False)
    with TestClient(lean) as a, TestClient(standard) as b:
        yield a, b


def test_the_screening_routes_are_lean() -> None:
    from api.service import LeanJSONRoute
    app = create_app(Settings(api_keys=(KEY,), handle_sighup=False))
    lean = {r.path for r in app.routes if isinstance(r, LeanJSONRoute)}
    assert lean == {"/trials/{trial_id}/screen", "/screen"}


@pytest.mark.parametrize("i", range(len(CORPUS)))
def test_lean_route_answers_as_fastapi_does(clients: tuple[TestClient, TestClient],
                                            i: int) -> None:
    path, body, headers = CORPUS[i]
    lean, standard = clients
    a = lean.post(path, content=body, headers={**AUTH, **headers})
    b = standard.post(path, content=body, headers={**AUTH, **headers})
    assert a.status_code != 500
    assert (a.status_code, a.headers.get("content-type"), a.content) == \
        (b.status_code, b.headers.get("content-type"), b.content)


def test_corpus_reaches_both_outcomes(clients: tuple[TestClient, TestClient]) -> None:
    # the corpus is not all errors (nor all successes): both paths are exercised
    lean, _ = clients
    codes = {lean.post(p, content=b, headers={**AUTH, **h}).status_code for p, b, h in CORPUS}
    assert {200, 404, 422} <= codes


def test_openapi_is_unchanged_by_lean_routes() -> None:
    settings = Settings(api_keys=(KEY,), handle_sighup=False)
    assert create_app(settings).openapi() == create_app(settings, lean_routes=False).openapi()


def test_lean_route_refuses_endpoints_it_cannot_serve() -> None:
    # anything besides path parameters and one body model would be silently dropped: refused
    # when the route is built, not at the first request
    from fastapi import FastAPI, Request

    from api.models import ScreenRequest
    from api.service import LeanJSONRoute

    async def with_request(request: Request, body: ScreenRequest) -> None: ...

    async def with_query(q: int, body: ScreenRequest) -> None: ...

    for fn in (with_request, with_query):
        app = FastAPI()
        with pytest.raises(TypeError, match="LeanJSONRoute"):
            app.router.add_api_route("/x", fn, methods=["POST"],
                                     route_class_override=LeanJSONRoute)
