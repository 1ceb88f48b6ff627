"""Service settings, read once from the environment.

Position: the edge of the HTTP service (`api/`). `create_app(settings)` takes a `Settings`; the
module-level `api.app:app` that uvicorn workers import builds one with `Settings.from_env()`.
Nothing below `api/` reads the environment.

The constructor refuses configurations that would be unsafe to run by accident: no API keys
without an explicit dev mode, placeholder or short keys, a decision log without a salt (the log
would then have to hold raw patient identifiers, or hashes anyone can reverse by guessing).
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

DEFAULT_RULES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "rules")
DEFAULT_MAX_BODY = 2 * 1024 * 1024
#: Secrets shorter than this are refused: an API key or salt must not be guessable.
MIN_SECRET_LEN = 16
_PLACEHOLDERS = ("changeme", "change-me", "change_me", "secret", "password", "default",
                 "example", "test", "dev", "apikey", "api-key", "api_key", "token", "salt",
                 "xxx", "todo", "replace", "your")


class SettingsError(ValueError):
    """The environment does not describe a configuration the service may start with."""


def _is_placeholder(secret: str) -> bool:
    low = secret.strip().lower()
    # a placeholder word padded to length ("changeme-changeme", "your-api-key-here") is still one
    stripped = low
    for word in sorted(_PLACEHOLDERS, key=len, reverse=True):
        stripped = stripped.replace(word, "")
    stripped = stripped.strip("-_.0123456789 ")
    return stripped in ("", "here") or len(set(low)) < 4


def check_secret(what: str, secret: str) -> None:
    if _is_placeholder(secret):
        raise SettingsError(f"{what} looks like a placeholder; generate a real one, e.g. "
                            "`python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`")
    if len(secret) < MIN_SECRET_LEN:
        raise SettingsError(f"{what} is shorter than {MIN_SECRET_LEN} characters")


@dataclass(frozen=True)
class Settings:
    rules: tuple[str, ...] = (DEFAULT_RULES,)
    api_keys: tuple[str, ...] = ()
    dev_mode: bool = False
    max_body_bytes: int = DEFAULT_MAX_BODY
    decision_log: str | None = None
    log_salt: str | None = field(default=None, repr=False)
    #: directory shared by the worker processes for CDS report links (None: in-process memory)
    report_dir: str | None = None
    report_ttl_seconds: int = 3600
    #: AES-256 key (urlsafe base64 of 32 bytes) for report files in `report_dir`; required
    #: with a directory (`python -m api` makes one per run)
    report_key: str | None = field(default=None, repr=False)
    #: absolute base URL used in CDS card links (None: taken from the request)
    public_url: str | None = None
    #: install a SIGHUP handler that reloads the rules (only possible in the main thread)
    handle_sighup: bool = True
    #: origins allowed to call from a browser (CDS Hooks clients such as sandboxes); none: no CORS
    cors_origins: tuple[str, ...] = ()
    #: pid of the uvicorn supervisor (set by `python -m api` with several workers); a successful
    #: reload asks it for a rolling restart so that every worker serves the same rules
    supervisor_pid: int | None = None
    #: after start-up, freeze the long-lived objects out of the garbage collector and collect
    #: young objects less often (on by default from the environment; off for apps built in
    #: tests). Measured on a 50-resource FHIR Bundle: about 11% less CPU per screen.
    tune_gc: bool = False
    #: CDS Hooks: a JSON file naming the CDS clients (EHRs) whose signed JWTs the CDS service
    #: accepts, with their public keys (api/cds_auth.py); None: API keys only
    cds_trust: str | None = None

    def __post_init__(self) -> None:
        if not self.rules:
            raise SettingsError("SCREENER_RULES names no rule file or directory")
        if not self.dev_mode:
            if not self.api_keys:
                raise SettingsError("SCREENER_API_KEYS is empty: set at least one key, or set "
                                    "SCREENER_DEV_MODE=1 to run without authentication")
            for i, key in enumerate(self.api_keys):
                check_secret(f"SCREENER_API_KEYS entry {i + 1}", key)
        if self.max_body_bytes < 1024:
            raise SettingsError("SCREENER_MAX_BODY_BYTES must be at least 1024")
        if self.decision_log:
            if not self.log_salt:
                raise SettingsError("SCREENER_DECISION_LOG is set but SCREENER_LOG_SALT is not: "
                                    "the log stores salted hashes, never patient identifiers")
            check_secret("SCREENER_LOG_SALT", self.log_salt)
        if self.report_dir is not None and self.report_key is None:
            raise SettingsError("SCREENER_REPORT_DIR is set but SCREENER_REPORT_KEY is not: "
                                "report files hold patient data and are stored encrypted; "
                                "`python -m api` makes a key per run, or generate one with "
                                "`python -c 'import base64, secrets; print(base64."
                                "urlsafe_b64encode(secrets.token_bytes(32)).decode())'`")
        if self.report_key is not None:
            self.report_key_bytes()   # refuse a malformed key at start-up
        if self.report_ttl_seconds < 1:
            raise SettingsError("SCREENER_REPORT_TTL must be a positive number of seconds")
        if self.public_url is not None and not self.public_url.startswith(("http://",
                                                                           "https://")):
            raise SettingsError("SCREENER_PUBLIC_URL must be an absolute http(s) URL")
        if self.cds_trust is not None:
            from .cds_auth import CdsTrust, TrustError
            try:
                CdsTrust.from_file(self.cds_trust)   # refuse to start on a broken file
            except TrustError as e:
                raise SettingsError(f"SCREENER_CDS_TRUST: {e}") from None

    def report_key_bytes(self) -> bytes | None:
        if self.report_key is None:
            return None
        try:
            key = base64.urlsafe_b64decode(self.report_key.encode("ascii"))
        except (ValueError, UnicodeEncodeError):
            key = b""
        if len(key) != 32:
            raise SettingsError("SCREENER_REPORT_KEY must be the urlsafe base64 text of 32 "
                                "random bytes")
        return key

    @property
    def auth_enabled(self) -> bool:
        return not self.dev_mode

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        e = os.environ if env is None else env

        def text(name: str) -> str | None:
            v = e.get(name, "").strip()
            return v or None

        def integer(name: str, default: int) -> int:
            v = text(name)
            if v is None:
                return default
            try:
                return int(v)
            except ValueError:
                raise SettingsError(f"{name} must be an integer, got {v!r}") from None

        def flag(name: str, default: bool) -> bool:
            v = (text(name) or ("1" if default else "0")).lower()
            if v not in ("0", "1", "true", "false", "yes", "no"):
                raise SettingsError(f"{name} must be 0 or 1, got {v!r}")
            return v in ("1", "true", "yes")

        rules = tuple(p.strip() for p in (text("SCREENER_RULES") or DEFAULT_RULES).split(",")
                      if p.strip())
        keys = tuple(k.strip() for k in (text("SCREENER_API_KEYS") or "").split(",")
                     if k.strip())
        sup = text("SCREENER_SUPERVISOR_PID")
        return cls(
            rules=rules,
            api_keys=keys,
            dev_mode=flag("SCREENER_DEV_MODE", False),
            max_body_bytes=integer("SCREENER_MAX_BODY_BYTES", DEFAULT_MAX_BODY),
            decision_log=text("SCREENER_DECISION_LOG"),
            log_salt=text("SCREENER_LOG_SALT"),
            report_dir=text("SCREENER_REPORT_DIR"),
            report_key=text("SCREENER_REPORT_KEY"),
            report_ttl_seconds=integer("SCREENER_REPORT_TTL", 3600),
            public_url=(text("SCREENER_PUBLIC_URL") or "").rstrip("/") or None,
            cors_origins=tuple(o.strip() for o in (text("SCREENER_CORS_ORIGINS") or "").split(",")
                               if o.strip()),
            supervisor_pid=int(sup) if sup and sup.isdigit() else None,
            tune_gc=flag("SCREENER_GC_TUNING", True),
            cds_trust=text("SCREENER_CDS_TRUST"),
        )
