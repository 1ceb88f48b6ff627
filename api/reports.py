"""Short-lived store of full reports behind CDS Hooks card links (`GET /reports/{token}`).

Position: `api/` edge, used only by `cds_hooks`.

A card's link is opened by the clinician's browser, which holds no API key, so the link itself is
the credential: a random 128-bit token, valid for `ttl` seconds (default one hour). The report is
patient data, so it is kept no longer than that, in a directory only this user can read
(0700 / 0600), or in process memory when no directory is configured. With several worker
processes the directory must be shared (`python -m api` creates one), otherwise a link made by
one worker is not found by another.

Files are encrypted (AES-256-GCM, a fresh 96-bit nonce per report, the token as associated
data, so a file renamed to another token does not open) with a key the workers share
(`SCREENER_REPORT_KEY`; `python -m api` makes one per run and hands it to its workers through
the environment). A copy of the directory, a backup or a leftover file after a crash is
unreadable without the key, which lives only in the service's memory and environment; after a
restart with a new key the old links no longer open (they are short-lived anyway).
"""

from __future__ import annotations

import os
import re
import secrets
import threading
import time
from collections import OrderedDict

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{22}$")
MAX_ENTRIES = 10_000
#: AES-256-GCM key and nonce sizes
KEY_BYTES = 32
_NONCE = 12


class ReportStore:
    def __init__(self, directory: str | None, ttl_seconds: int, key: bytes | None = None):
        if directory is not None and (key is None or len(key) != KEY_BYTES):
            raise ValueError(f"a report directory needs a {KEY_BYTES}-byte key: report files "
                             "are patient data and are stored encrypted")
        self.dir = directory
        self.ttl = ttl_seconds
        self._aead = AESGCM(key) if directory is not None and key is not None else None
        self._mem: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._lock = threading.Lock()
        self._last_sweep = 0.0
        if directory is not None:
            os.makedirs(directory, mode=0o700, exist_ok=True)

    def put(self, body: bytes) -> str:
        token = secrets.token_urlsafe(16)  # 22 characters
        now = time.time()
        if self.dir is None:
            with self._lock:
                self._mem[token] = (now + self.ttl, body)
                while len(self._mem) > MAX_ENTRIES:
                    self._mem.popitem(last=False)
        else:
            assert self._aead is not None
            nonce = os.urandom(_NONCE)
            sealed = nonce + self._aead.encrypt(nonce, body, token.encode())
            path = os.path.join(self.dir, token)
            fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(sealed)
            os.replace(path + ".tmp", path)
            if now - self._last_sweep > 60:
                self._last_sweep = now
                self.sweep(now)
        return token

    def get(self, token: str) -> bytes | None:
        if not _TOKEN.match(token):
            return None
        now = time.time()
        if self.dir is None:
            with self._lock:
                item = self._mem.get(token)
            if item is None or item[0] < now:
                return None
            return item[1]
        path = os.path.join(self.dir, token)
        try:
            if os.stat(path).st_mtime + self.ttl < now:
                return None
            with open(path, "rb") as fh:
                sealed = fh.read()
        except OSError:
            return None
        assert self._aead is not None
        try:
            return self._aead.decrypt(sealed[:_NONCE], sealed[_NONCE:], token.encode())
        except (InvalidTag, ValueError):
            return None   # another key (a previous run), a damaged or swapped file

    def sweep(self, now: float | None = None) -> None:
        """Delete expired reports (a directory store is shared, so any worker may do it)."""
        now = time.time() if now is None else now
        if self.dir is None:
            with self._lock:
                for k in [k for k, (exp, _) in self._mem.items() if exp < now]:
                    del self._mem[k]
            return
        try:
            names = os.listdir(self.dir)
        except OSError:
            return
        for name in names:
            path = os.path.join(self.dir, name)
            try:
                if os.stat(path).st_mtime + self.ttl < now:
                    os.unlink(path)
            except OSError:
                pass  # another worker removed it first
