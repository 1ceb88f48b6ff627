"""CDS Hooks client JWTs (api/cds_auth.py): a trusted EHR's signed token opens the CDS service,
and every way a token can be wrong, forged, stale or replayed is refused with a reason."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.app import create_app
from api.cds_auth import CdsTrust, TrustError
from api.settings import Settings, SettingsError

KEY = "cds-key-Rw5Tn8Jb2Xq7Lm4Z"
ISS = "https://ehr.example.org"
URL = "https://screener.example.org"
PATH = "/cds-services/trial-screening"
AUD = URL + PATH
HOOK = {"hook": "patient-view", "hookInstance": "b1c2d3e4-0000-4000-8000-000000000001",
        "context": {"userId": "Practitioner/1", "patientId": "p1"},
        "prefetch": {"patient": {"resourceType": "Patient", "id": "p1",
                                 "birthDate": "1985-03-14", "gender": "female"}}}

EC_KEY = ec.generate_private_key(ec.SECP384R1())
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_EC = ec.generate_private_key(ec.SECP384R1())
P256 = ec.generate_private_key(ec.SECP256R1())


def public_jwk(private: Any, kid: str) -> dict[str, Any]:
    algo = jwt.algorithms.ECAlgorithm if isinstance(private, ec.EllipticCurvePrivateKey) \
        else jwt.algorithms.RSAAlgorithm
    jwk = json.loads(algo.to_jwk(private.public_key()))
    jwk["kid"] = kid
    return jwk


def token(private: Any = EC_KEY, alg: str = "ES384", kid: str | None = "ec1",
          **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": ISS, "sub": "client-1", "aud": AUD, "iat": now, "exp": now + 120,
            "jti": str(uuid.uuid4())}
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode(body, private, algorithm=alg, headers={"kid": kid} if kid else None)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256_with_public_key() -> str:
    pem = EC_KEY.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    now = int(time.time())
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "ec1"}).encode())
    body = _b64(json.dumps({"iss": ISS, "aud": AUD, "iat": now, "exp": now + 60,
                            "jti": str(uuid.uuid4())}).encode())
    sig = hmac.new(pem, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(sig)}"


@pytest.fixture(scope="module")
def trust_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    d = tmp_path_factory.mktemp("trust")
    (d / "rsa.jwks.json").write_text(json.dumps({"keys": [public_jwk(RSA_KEY, "rsa1")]}))
    doc = {"clients": [
        {"iss": ISS, "jwks": {"keys": [public_jwk(EC_KEY, "ec1"), public_jwk(RSA_KEY, "rsa1")]}},
        {"iss": "https://other-ehr.example.org", "jwks_file": "rsa.jwks.json"},
    ]}
    (d / "trust.json").write_text(json.dumps(doc))
    return str(d / "trust.json")


@pytest.fixture(scope="module")
def client(trust_file: str) -> Iterator[TestClient]:
    app = create_app(Settings(api_keys=(KEY,), handle_sighup=False, public_url=URL,
                              cds_trust=trust_file))
    with TestClient(app) as c:
        yield c


def call(client: TestClient, bearer: str, path: str = PATH) -> Any:
    return client.post(path, json=HOOK, headers={"Authorization": f"Bearer {bearer}"})


def test_trusted_client_jwt_opens_the_cds_service(client: TestClient) -> None:
    r = call(client, token())
    assert r.status_code == 200, r.text
    assert r.json()["cards"]
    # RS384, and a key picked without kid
    assert call(client, token(RSA_KEY, "RS384", kid=None)).status_code == 200
    # the API key still works on the CDS service
    assert call(client, KEY).status_code == 200


def test_second_issuer_from_jwks_file(client: TestClient) -> None:
    assert call(client, token(RSA_KEY, "RS384", kid="rsa1",
                              iss="https://other-ehr.example.org")).status_code == 200
    # that issuer's file holds only the RSA key: an EC token in its name is refused
    r = call(client, token(iss="https://other-ehr.example.org"))
    assert r.status_code == 401


@pytest.mark.parametrize("bad,why", [
    (lambda: token(exp=int(time.time()) - 120, iat=int(time.time()) - 200), "expired"),
    (lambda: token(aud="https://elsewhere.example.org/cds-services/trial-screening"),
     "audience"),
    (lambda: token(iss="https://rogue.example.org"), "issuer"),
    (lambda: token(OTHER_EC), "signature"),
    (lambda: token(kid="unknown-kid"), "kid"),
    (lambda: token(jti=None), "jti"),
    (lambda: token(exp=None), "exp"),
    (lambda: token(iat=None), "iat"),
    (lambda: token(exp=int(time.time()) + 3600), "longer"),
    (lambda: token(iat=int(time.time()) + 600, exp=int(time.time()) + 700), "not valid yet"),
    (lambda: token(P256, "ES256"), "algorithm"),
    (lambda: jwt.encode({"iss": ISS, "aud": AUD, "exp": int(time.time()) + 60,
                         "iat": int(time.time()), "jti": "x"}, None, algorithm="none"),
     "algorithm"),
    # algorithm confusion: the public key used as an HMAC secret (signed by hand: PyJWT
    # itself refuses to make such a token)
    (lambda: hs256_with_public_key(), "algorithm"),
    (lambda: "not.a.jwt", "well-formed"),
])
def test_bad_tokens_are_refused_with_a_reason(client: TestClient, bad: Any, why: str) -> None:
    r = call(client, bad())
    assert r.status_code == 401, r.text
    (rec,) = r.json()["detail"]
    assert rec["type"] == "unauthorized" and why in rec["msg"]
    assert r.headers["www-authenticate"] == "Bearer"


def test_replayed_jti_is_refused(client: TestClient) -> None:
    t = token()
    assert call(client, t).status_code == 200
    r = call(client, t)
    assert r.status_code == 401 and "replayed" in r.json()["detail"][0]["msg"]


def test_jwt_opens_only_the_cds_service(client: TestClient) -> None:
    r = client.post("/screen", json={"patient": {}, "as_of": "2026-11-22"},
                    headers={"Authorization": f"Bearer {token()}"})
    assert r.status_code == 403


def test_audience_from_the_request_without_public_url(trust_file: str) -> None:
    app = create_app(Settings(api_keys=(KEY,), handle_sighup=False, cds_trust=trust_file))
    with TestClient(app, base_url="http://screener.local:8000") as c:
        ok = token(aud="http://screener.local:8000" + PATH)
        assert call(c, ok).status_code == 200
        assert call(c, token()).status_code == 401   # aud names another host


def test_without_trust_file_a_jwt_is_just_a_wrong_key() -> None:
    app = create_app(Settings(api_keys=(KEY,), handle_sighup=False, public_url=URL))
    with TestClient(app) as c:
        assert call(c, token()).status_code == 403


@pytest.mark.parametrize("doc,msg", [
    ("{", "not valid JSON"),
    ({"clients": []}, "clients"),
    ({"clients": [{"jwks": {"keys": []}}]}, "iss"),
    ({"clients": [{"iss": ISS}]}, "exactly one"),
    ({"clients": [{"iss": ISS, "jwks": {"keys": []}}]}, "non-empty"),
    ({"clients": [{"iss": ISS, "jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}}]},
     "private or symmetric"),
    ({"clients": [{"iss": ISS, "jwks": {"keys": [{"kty": "EC", "crv": "P-384", "x": "AA",
                                                  "y": "AA"}]}}]}, "not a usable public key"),
    ({"clients": [{"iss": ISS, "jwks_file": "missing.json"}]}, "cannot read"),
    ({"clients": [{"iss": ISS, "jwks": {"keys": [{"kty": "EC"}]}}]}, "not a usable"),
    # usable keys, one issuer twice: which client's keys count is not guessed
    ({"clients": [{"iss": ISS, "jwks": {"keys": [public_jwk(EC_KEY, "a")]}},
                  {"iss": ISS, "jwks": {"keys": [public_jwk(EC_KEY, "a")]}}]}, "listed twice"),
])
def test_broken_trust_files_stop_the_start(tmp_path: Path, doc: Any, msg: str) -> None:
    f = tmp_path / "trust.json"
    f.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    with pytest.raises(TrustError, match=msg):
        CdsTrust.from_file(str(f))
    with pytest.raises(SettingsError, match="SCREENER_CDS_TRUST"):
        Settings(api_keys=(KEY,), cds_trust=str(f))


def test_private_key_in_trust_file_is_refused(tmp_path: Path) -> None:
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(EC_KEY))   # has "d"
    f = tmp_path / "trust.json"
    f.write_text(json.dumps({"clients": [{"iss": ISS, "jwks": {"keys": [jwk]}}]}))
    with pytest.raises(TrustError, match="private"):
        CdsTrust.from_file(str(f))


def test_replay_memory_is_bounded(trust_file: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import api.cds_auth as ca
    monkeypatch.setattr(ca, "MAX_REMEMBERED", 3)
    trust = CdsTrust.from_file(trust_file)
    for _ in range(3):
        assert trust.verify(token(), AUD) is None
    assert "too many" in (trust.verify(token(), AUD) or "")

    # once those have expired (exp + leeway) they are forgotten and new tokens pass again
    class Later:
        @staticmethod
        def time() -> float:
            return time.time() + 200

    monkeypatch.setattr(ca, "time", Later)
    assert trust.verify(token(), AUD) is None


_json_value = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.text(max_size=12),
              st.floats(allow_nan=False, allow_infinity=False)),
    lambda kids: st.one_of(st.lists(kids, max_size=3),
                           st.dictionaries(st.text(max_size=5), kids, max_size=3)),
    max_leaves=8)


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=st.fixed_dictionaries(
           {"alg": st.one_of(st.sampled_from(["ES384", "RS384", "none", "HS256"]),
                             _json_value)},
           optional={"kid": st.one_of(st.sampled_from(["ec1", "rsa1"]), _json_value),
                     "typ": _json_value, "crit": _json_value}),
       claims=st.fixed_dictionaries(
           {"iss": st.one_of(st.just(ISS), _json_value)},
           optional={"aud": st.one_of(st.just(AUD), _json_value),
                     "exp": st.one_of(st.just(int(time.time()) + 60), _json_value),
                     "iat": st.one_of(st.just(int(time.time())), _json_value),
                     "jti": _json_value, "nbf": _json_value}),
       sig=st.binary(max_size=120), raw=st.text(max_size=60))
def test_verify_never_raises_on_hostile_tokens(trust_file: str, header: dict[str, Any],
                                               claims: dict[str, Any], sig: bytes,
                                               raw: str) -> None:
    trust = CdsTrust.from_file(trust_file)
    forged = ".".join([_b64(json.dumps(header).encode()), _b64(json.dumps(claims).encode()),
                       _b64(sig)])
    for t in (forged, raw, raw + "." + raw + "." + raw):
        assert isinstance(trust.verify(t, AUD), str)   # always refused, with a reason
