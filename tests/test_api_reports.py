"""CDS report links (api/reports.py): report files are patient data, stored encrypted; a link
opens only with its own token, the run's key and within its lifetime."""

from __future__ import annotations

import base64
import os
import secrets
import time
from pathlib import Path

import pytest

from api.reports import ReportStore
from api.settings import Settings, SettingsError

KEY = secrets.token_bytes(32)
REPORT = b'{"patient_id":"pt-secret-4711","status":"eligible","criteria":[]}'


def test_files_on_disk_are_encrypted_and_open_with_their_token(tmp_path: Path) -> None:
    store = ReportStore(str(tmp_path), 3600, KEY)
    token = store.put(REPORT)
    (f,) = list(tmp_path.iterdir())
    raw = f.read_bytes()
    assert b"pt-secret-4711" not in raw and b"eligible" not in raw
    assert oct(f.stat().st_mode & 0o777) == "0o600"
    assert store.get(token) == REPORT
    # another worker of the same run (same key, same directory) opens it too
    assert ReportStore(str(tmp_path), 3600, KEY).get(token) == REPORT


def test_a_file_opens_only_under_its_own_token_and_key(tmp_path: Path) -> None:
    store = ReportStore(str(tmp_path), 3600, KEY)
    a, b = store.put(REPORT), store.put(b'{"other": 1}')
    # swap the files: each is sealed to its token, so neither opens under the other's name
    pa, pb = tmp_path / a, tmp_path / b
    da, db = pa.read_bytes(), pb.read_bytes()
    pa.write_bytes(db)
    pb.write_bytes(da)
    assert store.get(a) is None and store.get(b) is None
    # a previous run's key
    c = store.put(REPORT)
    assert ReportStore(str(tmp_path), 3600, secrets.token_bytes(32)).get(c) is None
    # damaged or truncated files
    (tmp_path / c).write_bytes(b"short")
    assert store.get(c) is None


def test_expired_links_do_not_open_and_are_swept(tmp_path: Path) -> None:
    store = ReportStore(str(tmp_path), 60, KEY)
    token = store.put(REPORT)
    old = time.time() - 120
    os.utime(tmp_path / token, (old, old))
    assert store.get(token) is None
    store.sweep()
    assert not (tmp_path / token).exists()


def test_memory_store_needs_no_key() -> None:
    store = ReportStore(None, 3600)
    assert store.get(store.put(REPORT)) == REPORT


def test_a_directory_store_without_a_good_key_is_refused(tmp_path: Path) -> None:
    for key in (None, b"short"):
        with pytest.raises(ValueError, match="key"):
            ReportStore(str(tmp_path), 3600, key)


def test_settings_require_a_well_formed_key_with_a_report_dir(tmp_path: Path) -> None:
    api_key = "reports-key-Tq7Zp2Wm9Xk4Rb6N"
    with pytest.raises(SettingsError, match="SCREENER_REPORT_KEY is not"):
        Settings(api_keys=(api_key,), report_dir=str(tmp_path))
    for bad in ("not base64 !", base64.urlsafe_b64encode(b"x" * 16).decode()):
        with pytest.raises(SettingsError, match="32 random bytes"):
            Settings(api_keys=(api_key,), report_dir=str(tmp_path), report_key=bad)
    good = base64.urlsafe_b64encode(KEY).decode()
    s = Settings.from_env({"SCREENER_API_KEYS": api_key, "SCREENER_REPORT_DIR": str(tmp_path),
                           "SCREENER_REPORT_KEY": good})
    assert s.report_key_bytes() == KEY
    assert good not in repr(s)   # the key stays out of logs and tracebacks
