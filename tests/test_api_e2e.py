"""End-to-end: the service as a real uvicorn process on 127.0.0.1, screened over HTTP.

One server (one worker) serves the whole module, pointed at a copy of rules/ in a temporary
directory so that the reload test can break a file. A second, short-lived server with two
workers checks that a multi-process deployment screens and reloads as one.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import shutil
import signal
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from api.localserver import LocalServer
from screener.report import dumps
from screener.screen import Screener

ROOT = Path(__file__).resolve().parents[1]
FHIR = ROOT.parent / "shared" / "fhir-examples"
KEY = "e2e-key-7Hq2Lm9Vx4Rt8Nb3"
SALT = "e2e-salt-Pw6Kd2Jf8Ys5Qa1Z"
MAX_BODY = 256 * 1024
AUTH = {"Authorization": f"Bearer {KEY}"}
TRIAL = "NCT06930105"

PATIENT = {
    "id": "pt-e2e-4711",
    "birth_date": "1985-03-14",
    "sex": "female",
    "observations": [
        {"element": "alt", "value": 52, "unit": "U/L",
         "reference_range": {"low": 0, "high": 40, "unit": "U/L"},
         "date": "2026-11-01", "status": "final", "source": "Observation/abc"},
        {"element": "ecog", "value": 1, "date": "2026-11-10"},
    ],
    "conditions": [{"element": "b_all", "onset": "2026-10-01", "clinical_status": "active",
                    "verification_status": "confirmed", "source": "Condition/1"}],
}
AS_OF = "2026-11-22"


def us_core(*names: str) -> list[dict[str, Any]]:
    return [json.loads((FHIR / "us-core" / n).read_text()) for n in names]


def searchset(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "total": len(resources),
            "entry": [{"fullUrl": f"https://ehr.example/fhir/{r['resourceType']}/{r['id']}",
                       "resource": r, "search": {"mode": "match"}} for r in resources]}


@pytest.fixture(scope="module")
def rules_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("rules")
    for f in (ROOT / "rules").glob("*.yaml"):
        shutil.copy(f, d / f.name)
    return d


EHR_ISS = "https://ehr.e2e.example.org"
EHR_KEY = ec.generate_private_key(ec.SECP384R1())


@pytest.fixture(scope="module")
def server(rules_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    logdir = tmp_path_factory.mktemp("log")
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(EHR_KEY.public_key()))
    trust = logdir / "cds-trust.json"
    trust.write_text(json.dumps({"clients": [{"iss": EHR_ISS, "jwks": {"keys": [jwk]}}]}))
    env = {"SCREENER_RULES": str(rules_dir), "SCREENER_API_KEYS": KEY,
           "SCREENER_MAX_BODY_BYTES": str(MAX_BODY), "SCREENER_CDS_TRUST": str(trust),
           "SCREENER_DECISION_LOG": str(logdir / "decisions.jsonl"), "SCREENER_LOG_SALT": SALT}
    with LocalServer(env) as srv:
        srv.decision_log = logdir / "decisions.jsonl"  # type: ignore[attr-defined]
        yield srv


@pytest.fixture(scope="module")
def client(server: LocalServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=20) as c:
        yield c


def test_canonical_screen_is_the_cli_report(client: httpx.Client, rules_dir: Path) -> None:
    r = client.post(f"/trials/{TRIAL}/screen", headers=AUTH,
                    json={"patient": PATIENT, "as_of": AS_OF})
    assert r.status_code == 200, r.text
    report = r.json()
    for key in ("as_of", "input_hash", "engine"):
        assert report[key]
    assert report["as_of"] == AS_OF
    assert report["trial"]["ruleset_hash"].startswith("sha256:")
    # byte-identical to what the core (and so the CLI's --format json) produces
    s = Screener.from_paths([str(rules_dir)])
    try:
        assert r.content == dumps(s.screen(TRIAL, PATIENT, date(2026, 11, 22))).encode()
    finally:
        s.close()


def test_fhir_bundle_screen(client: httpx.Client) -> None:
    resources = us_core("patient-example.json", "observation-serum-bun.json",
                        "observation-serum-creatinine.json", "observation-pregnancy-status.json",
                        "condition-duodenal-ulcer.json", "observation-cbc-hemoglobin.json")
    bundle = {"resourceType": "Bundle", "type": "collection",
              "entry": [{"resource": x} for x in resources]}
    r = client.post(f"/trials/{TRIAL}/screen", headers=AUTH,
                    json={"fhir": bundle, "as_of": "2005-07-20"})
    assert r.status_code == 200, r.text
    rep = r.json()
    assert rep["patient_id"] == "example" and rep["as_of"] == "2005-07-20"
    kidney = [e for c in rep["criteria"] for e in c["evidence"] if e.get("element") == "creatinine"
              and "ratio" in e]
    assert kidney, rep["criteria"]
    # 1.0 mg/dL against the reference range high of 0.6 mg/dL, computed here independently
    assert abs(float(kidney[0]["ratio"]) - 1.0 / 0.6) < 0.01
    kidney_crit = next(c for c in rep["criteria"]
                       if any(e.get("element") == "creatinine" for e in c["evidence"]))
    assert kidney_crit["verdict"] == "not_met"  # 1.67 x ULN > 1.25 x ULN


def test_screen_all_ranked(client: httpx.Client) -> None:
    r = client.post("/screen", headers=AUTH, json={"patient": PATIENT, "as_of": AS_OF})
    assert r.status_code == 200, r.text
    body = r.json()
    rank = {"eligible": 0, "needs_review": 1, "ineligible": 2}
    keys = [(rank[x["status"]], x["unresolved"]) for x in body["reports"]]
    assert keys == sorted(keys) and len(keys) == 2
    assert {x["input_hash"] for x in body["reports"]} == {body["input_hash"]}


def test_cds_hooks_discovery_and_patient_view(client: httpx.Client) -> None:
    d = client.get("/cds-services")
    assert d.status_code == 200
    svc = d.json()["services"][0]
    assert svc["id"] == "trial-screening" and svc["hook"] == "patient-view"
    assert svc["prefetch"]["patient"] == "Patient/{{context.patientId}}"
    assert "http://loinc.org|2160-0" in svc["prefetch"]["observations"]  # creatinine
    assert svc["prefetch"]["conditions"] == "Condition?patient={{context.patientId}}"

    patient, = us_core("patient-example.json")
    obs = us_core("observation-serum-bun.json", "observation-serum-creatinine.json")
    cond = us_core("condition-duodenal-ulcer.json")
    call = {"hook": "patient-view", "hookInstance": "2f8e0b4c-3b7e-4b8e-9d5e-1f2a3b4c5d6e",
            "context": {"userId": "Practitioner/1", "patientId": "example"},
            "prefetch": {"patient": patient, "observations": searchset(obs),
                         "conditions": searchset(cond)}}
    r = client.post("/cds-services/trial-screening", headers=AUTH, json=call)
    assert r.status_code == 200, r.text
    cards = r.json()["cards"]
    assert len(cards) == 2
    today = date.today().isoformat()  # the service takes today's date (UTC) at the edge
    for card in cards:
        assert len(card["summary"]) < 140
        assert card["indicator"] in ("info", "warning", "critical")
        assert card["source"]["label"]
        assert "| Criterion |" in card["detail"]
        ext = card["extension"]["screener"]
        assert ext["input_hash"].startswith("sha256:") and ext["ruleset_hash"]
        assert ext["as_of"] in (today, date.fromordinal(date.today().toordinal() + 1).isoformat(),
                                date.fromordinal(date.today().toordinal() - 1).isoformat())
        link = card["links"][0]["url"]
        full = httpx.get(link, timeout=10)  # the link is opened by a browser: no API key
        assert full.status_code == 200
        assert full.json()["trial"]["id"] == ext["trial"]

    # without prefetch: one card that says so, nothing screened
    r = client.post("/cds-services/trial-screening", headers=AUTH,
                    json={**call, "prefetch": None})
    assert r.status_code == 200
    (card,) = r.json()["cards"]
    assert "prefetch" in card["summary"].lower()


def test_cds_hooks_call_signed_by_a_trusted_ehr(client: httpx.Client,
                                               server: LocalServer) -> None:
    """What an EHR sends: a short-lived ES384 JWT for this service's URL, not an API key."""
    now = int(time.time())
    aud = f"{server.url}/cds-services/trial-screening"
    token = jwt.encode({"iss": EHR_ISS, "sub": "ehr-client", "aud": aud, "iat": now,
                        "exp": now + 60, "jti": "e2e-1"}, EHR_KEY, algorithm="ES384")
    call = {"hook": "patient-view", "hookInstance": "5d0c9a3e-2222-4b8e-9d5e-1f2a3b4c5d6e",
            "context": {"userId": "Practitioner/1", "patientId": "p1"},
            "prefetch": {"patient": {"resourceType": "Patient", "id": "p1",
                                     "birthDate": "1985-03-14", "gender": "female"}}}
    auth = {"Authorization": f"Bearer {token}"}
    r = client.post("/cds-services/trial-screening", headers=auth, json=call)
    assert r.status_code == 200, r.text
    assert len(r.json()["cards"]) == 2
    r = client.post("/cds-services/trial-screening", headers=auth, json=call)   # replayed
    assert r.status_code == 401 and "replayed" in r.json()["detail"][0]["msg"]
    r = client.post(f"/trials/{TRIAL}/screen", headers=auth,                    # not a key
                    json={"patient": PATIENT, "as_of": AS_OF})
    assert r.status_code == 403


def test_unauthenticated_and_wrong_key(client: httpx.Client) -> None:
    body = {"patient": PATIENT, "as_of": AS_OF}
    r = client.post(f"/trials/{TRIAL}/screen", json=body)
    assert r.status_code == 401
    assert r.json()["detail"][0]["type"] == "unauthorized"
    assert r.headers["www-authenticate"] == "Bearer"
    r = client.post(f"/trials/{TRIAL}/screen", json=body,
                    headers={"Authorization": "Bearer not-the-key-0000000000"})
    assert r.status_code == 403
    r = client.post(f"/trials/{TRIAL}/screen", json=body, headers={"X-API-Key": KEY})
    assert r.status_code == 200


def test_oversized_body_413(client: httpx.Client) -> None:
    big = {"patient": {**PATIENT, "padding": "x" * (MAX_BODY + 10)}, "as_of": AS_OF}
    r = client.post(f"/trials/{TRIAL}/screen", headers=AUTH, json=big)
    assert r.status_code == 413
    assert r.json()["detail"][0]["type"] == "too_large"

    # chunked: no Content-Length, the bytes are counted as they arrive
    def chunks() -> Iterator[bytes]:
        yield b'{"as_of": "2026-11-22", "patient": {"padding": "'
        for _ in range(MAX_BODY // 4096 + 2):
            yield b"y" * 4096
        yield b'"}}'

    r = client.post(f"/trials/{TRIAL}/screen", content=chunks(),
                    headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 413


@pytest.mark.parametrize("raw, where", [
    (b'{"patient": {"id": "x"}, "as_of": "2026-11-22"', "column"),
    (b'{"patient": {"id": "x", "age": NaN}, "as_of": "2026-11-22"}', "NaN"),
    (b'{"patient": {"id": "x", "age": Infinity}, "as_of": "2026-11-22"}', "Infinity"),
])
def test_invalid_json_422(client: httpx.Client, raw: bytes, where: str) -> None:
    r = client.post(f"/trials/{TRIAL}/screen", content=raw,
                    headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 422
    (rec,) = r.json()["detail"]
    assert rec["type"] == "json_invalid" and where in rec["msg"]


def test_unknown_trial_404(client: httpx.Client) -> None:
    r = client.post("/trials/NCT0693010/screen", headers=AUTH,
                    json={"patient": PATIENT, "as_of": AS_OF})
    assert r.status_code == 404
    assert "did you mean 'NCT06930105'" in r.json()["detail"][0]["msg"]


def test_decision_log_has_no_patient_data(client: httpx.Client, server: LocalServer) -> None:
    client.post(f"/trials/{TRIAL}/screen", headers=AUTH, json={"patient": PATIENT, "as_of": AS_OF})
    text = server.decision_log.read_text()  # type: ignore[attr-defined]
    lines = [json.loads(x) for x in text.splitlines()]
    assert lines
    assert PATIENT["id"] not in text and "4711" not in text
    assert PATIENT["birth_date"] not in text and "1985" not in text
    expected = "hmac-sha256:" + hmac.new(SALT.encode(), PATIENT["id"].encode(),
                                         hashlib.sha256).hexdigest()
    mine = [x for x in lines if x["patient"] == expected]
    assert mine and all(x["ruleset_hash"] and x["as_of"] and x["engine"] and x["time"]
                        for x in mine)
    # the server's own log (access log included) holds no patient data either
    out = server.output()
    assert PATIENT["id"] not in out and PATIENT["birth_date"] not in out


def _hash(client: httpx.Client) -> str:
    return str(client.get("/readyz").json()["trials"][TRIAL])


def test_reload_with_a_broken_rule_file_keeps_the_old_rules(
        client: httpx.Client, server: LocalServer, rules_dir: Path) -> None:
    before = _hash(client)
    f = rules_dir / f"{TRIAL}.yaml"
    original = f.read_text()
    try:
        f.write_text(original.replace("kind: inclusion", "kind: inclusoin", 1))
        r = client.post("/admin/reload", headers=AUTH)
        assert r.status_code == 422
        body = r.json()
        assert body["serving"][TRIAL] == before
        rec = body["detail"][0]
        assert rec["loc"][0].endswith(f"{TRIAL}.yaml") and isinstance(rec["loc"][1], int)
        assert "inclusoin" in rec["msg"]
        # the old rules still serve
        ok = client.post(f"/trials/{TRIAL}/screen", headers=AUTH,
                         json={"patient": PATIENT, "as_of": AS_OF})
        assert ok.status_code == 200 and ok.json()["trial"]["ruleset_hash"] == before
        # SIGHUP with the broken file: same outcome, the process keeps serving
        server.signal(signal.SIGHUP)
        time.sleep(1.0)
        assert _hash(client) == before
        assert "rule reload failed" in server.output()
        # a good change is picked up, with a new ruleset hash
        f.write_text(original.replace("Patients (Age 18-60 years)",
                                      "Patients (age 18-60 years)"))
        r = client.post("/admin/reload", headers=AUTH)
        assert r.status_code == 200, r.text
        assert r.json()["trials"][TRIAL] != before
        assert _hash(client) == r.json()["trials"][TRIAL]
    finally:
        f.write_text(original)
        client.post("/admin/reload", headers=AUTH)
    assert _hash(client) == before


def test_two_workers_screen_and_reload_together(rules_dir: Path) -> None:
    env = {"SCREENER_RULES": str(rules_dir), "SCREENER_API_KEYS": KEY}
    with LocalServer(env, workers=2) as srv, httpx.Client(base_url=srv.url, timeout=20) as c:
        for _ in range(6):  # connections land on either worker
            with httpx.Client(base_url=srv.url, timeout=20) as fresh:
                r = fresh.post("/screen", headers=AUTH, json={"patient": PATIENT, "as_of": AS_OF})
                assert r.status_code == 200
        r = c.post("/admin/reload", headers=AUTH)
        assert r.status_code == 200 and "rolling restart" in r.json()["workers"]
        metrics = c.get("/metrics").text
        # counted over both workers (multiprocess metrics): 6 screens whichever worker answers
        line = next(x for x in metrics.splitlines()
                    if x.startswith("screener_http_requests_total") and 'route="/screen"' in x)
        assert float(line.rsplit(" ", 1)[1]) == 6.0
