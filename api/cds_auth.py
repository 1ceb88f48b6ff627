"""CDS Hooks 2.0 client authentication: the JWT an EHR sends with every service call.

Position: `api/` edge, used by `middleware` before a single body byte is read.

A CDS client (the EHR) signs a short-lived JWT with its private key and sends it as
`Authorization: Bearer <jwt>` on each call to the CDS service. This module verifies it against
the public keys of the clients this deployment trusts, configured in a file
(`SCREENER_CDS_TRUST`, see docs/api.md):

    {"clients": [{"iss": "https://ehr.example.org",
                  "jwks": {"keys": [{"kty": "EC", "crv": "P-384", "kid": "k1", ...}]}},
                 {"iss": "https://other-ehr.example.org", "jwks_file": "other-ehr.jwks.json"}]}

What is checked, per the CDS Hooks 2.0 "Trusting CDS Clients" section:

* the signature, with a key of the token's own issuer (`kid` selects it when given); only the
  asymmetric algorithms the spec names, ES384 and RS384 (never `none`, never HMAC: a public key
  used as an HMAC secret is the classic way to forge such tokens);
* `iss` is a configured client; `aud` is this service's URL (`SCREENER_PUBLIC_URL` + path when
  set, else the URL the request was sent to);
* `exp` is present and not passed, and at most five minutes after `iat` (the spec's ceiling),
  `iat` and `jti` are present; 30 s of clock skew are allowed;
* `jti` is not replayed: each worker process remembers the ids it has accepted until they
  expire (a token replayed to *another* worker of the same deployment is not caught; the
  short lifetime bounds that window).

The `jku` header is never fetched (the service has no network access by design): keys come only
from the trust file. A token that fails says why in the 401 answer, without echoing claims.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt

ALGORITHMS = ("ES384", "RS384")
#: the spec: `exp` "no more than five minutes in the future"
MAX_LIFETIME_SECONDS = 300
LEEWAY_SECONDS = 30
#: accepted `jti`s remembered per process; when full, expired ones are dropped first and a
#: new token is refused if none has expired (a flood of valid tokens, not a normal EHR)
MAX_REMEMBERED = 100_000
_KEY_TYPES = {"ES384": "EC", "RS384": "RSA"}


class TrustError(ValueError):
    """The trust file cannot be used (the service refuses to start)."""


@dataclass(frozen=True)
class _Key:
    kid: str | None
    kty: str
    key: Any


def _load_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except OSError as e:
        raise TrustError(f"{path}: cannot read ({e.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TrustError(f"{path}: not valid JSON ({e})") from None


def _keys(jwks: Any, where: str) -> list[_Key]:
    if not isinstance(jwks, Mapping) or not isinstance(jwks.get("keys"), list) \
            or not jwks["keys"]:
        raise TrustError(f"{where}: a JWK Set needs a non-empty \"keys\" list")
    out = []
    for i, jwk in enumerate(jwks["keys"]):
        if not isinstance(jwk, Mapping):
            raise TrustError(f"{where}: keys[{i}] is not an object")
        if any(k in jwk for k in ("d", "p", "q", "k")):
            raise TrustError(f"{where}: keys[{i}] holds private or symmetric key material; "
                             "the trust file takes public keys only")
        kty = jwk.get("kty")
        if kty not in ("EC", "RSA"):
            raise TrustError(f"{where}: keys[{i}] has kty {kty!r}; ES384 needs EC (P-384) and "
                             "RS384 needs RSA keys")
        try:
            key = jwt.PyJWK.from_dict(dict(jwk), algorithm="ES384" if kty == "EC" else "RS384")
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError) as e:
            raise TrustError(f"{where}: keys[{i}] is not a usable public key ({e})") from None
        kid = jwk.get("kid")
        out.append(_Key(kid if isinstance(kid, str) else None, kty, key.key))
    return out


class CdsTrust:
    """The CDS clients this deployment trusts, and the `jti`s this process has accepted."""

    def __init__(self, clients: Mapping[str, list[_Key]]):
        self.clients = dict(clients)
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_file(cls, path: str) -> CdsTrust:
        doc = _load_json(path)
        base = os.path.dirname(os.path.abspath(path))
        if not isinstance(doc, Mapping) or not isinstance(doc.get("clients"), list) \
                or not doc["clients"]:
            raise TrustError(f"{path}: needs {{\"clients\": [{{\"iss\": ..., \"jwks\": ...}}]}}")
        clients: dict[str, list[_Key]] = {}
        for i, c in enumerate(doc["clients"]):
            where = f"{path}: clients[{i}]"
            if not isinstance(c, Mapping) or not isinstance(c.get("iss"), str) or not c["iss"]:
                raise TrustError(f"{where} needs an \"iss\" (the client's issuer URL)")
            if c["iss"] in clients:
                raise TrustError(f"{where}: issuer {c['iss']!r} is listed twice")
            if ("jwks" in c) == ("jwks_file" in c):
                raise TrustError(f"{where} needs exactly one of \"jwks\" or \"jwks_file\"")
            if "jwks" in c:
                clients[c["iss"]] = _keys(c["jwks"], where)
            else:
                f = c["jwks_file"]
                if not isinstance(f, str):
                    raise TrustError(f"{where}: \"jwks_file\" must be a path")
                f = f if os.path.isabs(f) else os.path.join(base, f)
                clients[c["iss"]] = _keys(_load_json(f), f)
        return cls(clients)

    def verify(self, token: str, audience: str) -> str | None:
        """None when the token is good; else why it is not (for the 401 answer)."""
        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            return "the bearer token is not a well-formed JWT"
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            return "the JWT algorithm is not accepted (ES384 or RS384 only)"
        iss = claims.get("iss")
        keys = self.clients.get(iss) if isinstance(iss, str) else None
        if not keys:
            return "the JWT issuer is not a trusted CDS client"
        kid = header.get("kid")
        candidates = [k for k in keys if k.kty == _KEY_TYPES[alg]
                      and (kid is None or k.kid is None or k.kid == kid)]
        if not candidates:
            return "no key of this issuer matches the JWT's kid and algorithm"
        verified: dict[str, Any] | None = None
        last = "the JWT signature does not verify"
        for k in candidates:
            try:
                verified = jwt.decode(
                    token, k.key, algorithms=[alg], audience=audience, issuer=iss,
                    leeway=LEEWAY_SECONDS,
                    options={"require": ["iss", "aud", "exp", "iat", "jti"]})
                break
            except jwt.InvalidSignatureError:
                continue
            except jwt.ExpiredSignatureError:
                return "the JWT has expired"
            except jwt.InvalidAudienceError:
                return f"the JWT audience is not this service ({audience})"
            except jwt.MissingRequiredClaimError as e:
                return f"the JWT lacks the {e.claim!r} claim"
            except jwt.ImmatureSignatureError:
                return "the JWT is not valid yet (iat or nbf in the future)"
            except jwt.PyJWTError as e:
                last = f"the JWT is not valid ({type(e).__name__})"
                break
        if verified is None:
            return last
        exp, iat, jti = verified["exp"], verified["iat"], verified["jti"]
        if not isinstance(exp, (int, float)) or not isinstance(iat, (int, float)):
            return "the JWT's exp and iat must be numbers"
        if exp - iat > MAX_LIFETIME_SECONDS:
            return f"the JWT lives longer than {MAX_LIFETIME_SECONDS} s (exp - iat)"
        if not isinstance(jti, str) or not jti:
            return "the JWT's jti must be a non-empty string"
        return self._remember(f"{iss}\x00{jti}", float(exp) + LEEWAY_SECONDS, time.time())

    def _remember(self, key: str, until: float, now: float) -> str | None:
        with self._lock:
            seen = self._seen
            if key in seen and seen[key] > now:
                return "the JWT was already used (jti replayed)"
            if len(seen) >= MAX_REMEMBERED:
                for k in [k for k, t in seen.items() if t <= now]:
                    del seen[k]
                if len(seen) >= MAX_REMEMBERED:
                    return "too many CDS tokens in flight; try again shortly"
            seen[key] = until
            return None


def looks_like_jwt(token: bytes) -> bool:
    """Three dot-separated segments (checked only after the token failed as an API key)."""
    return token.count(b".") == 2
