"""Broken rule files and their pinned findings: `screener check` on each file of
fixtures/invalid/ must print exactly the lines in the sidecar NAME.expected (findings and their
hints, paths relative to the repo root; the summary line is not pinned) and exit 1 when one of
them is an error, 0 when all are warnings.

To add a case: write NAME.yaml (first line: a comment saying what is broken), run
`screener check fixtures/invalid/NAME.yaml`, read the output critically, and save it minus the
summary line as NAME.expected.
"""

from __future__ import annotations

import re
from io import StringIO
from pathlib import Path

import pytest

from screener import cli
from screener.lint import CODES

ROOT = Path(__file__).resolve().parents[1]
INVALID = ROOT / "fixtures" / "invalid"
CASES = sorted(p.stem for p in INVALID.glob("*.yaml"))
#: codes that need more than one file: covered in tests/test_lint.py instead
MULTI_FILE = {"lint.duplicate_trial"}


def check(rel_path: str) -> tuple[int, list[str]]:
    out, err = StringIO(), StringIO()
    code = cli.run(cli.parse_args(["check", rel_path]), out, err)
    assert err.getvalue() == ""
    lines = out.getvalue().splitlines()
    assert re.fullmatch(r"1 file\(s\) checked: \d+ error\(s\), \d+ warning\(s\)", lines[-1])
    return code, lines[:-1]


@pytest.mark.parametrize("name", [pytest.param(n, id=n) for n in CASES])
def test_pinned_findings(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    expected = (INVALID / f"{name}.expected").read_text(encoding="utf-8").splitlines()
    code, lines = check(f"fixtures/invalid/{name}.yaml")
    assert lines == expected
    has_error = any(re.search(r": error\[", x) for x in expected)
    assert code == (1 if has_error else 0)


def test_every_fixture_has_findings_and_a_comment() -> None:
    assert len(CASES) >= 25
    for name in CASES:
        expected = (INVALID / f"{name}.expected").read_text(encoding="utf-8")
        assert expected.strip(), name
        first = (INVALID / f"{name}.yaml").read_bytes().split(b"\n", 1)[0]
        assert first.startswith(b"#") or name == "empty_file", name


def test_fixtures_cover_every_check() -> None:
    pinned = "".join(p.read_text(encoding="utf-8") for p in INVALID.glob("*.expected"))
    seen = set(re.findall(r"(?:error|warning)\[([A-Za-z_.]+)\]", pinned))
    missing = set(CODES) - MULTI_FILE - seen
    assert not missing, f"no fixture pins {sorted(missing)}"
    core = {"yaml.syntax", "yaml.duplicate_key", "yaml.documents", "file.encoding",
            "schema.unknown_field", "schema.type", "schema.enum", "schema.required",
            "schema.pattern", "schema.minItems", "schema.minimum", "rule.duplicate_id",
            "rule.empty_text", "rule.logic_or_manual", "rule.x_uln_not_allowed",
            "rule.empty_range", "rule.value_shape", "rule.unknown_value", "rule.op_type",
            "rule.value_type"}
    assert core <= seen, sorted(core - seen)


def test_every_expected_file_has_its_rule_file() -> None:
    for p in INVALID.glob("*.expected"):
        assert (INVALID / f"{p.stem}.yaml").exists(), p.name


def test_check_json_carries_the_same_findings(monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    monkeypatch.chdir(ROOT)
    out, err = StringIO(), StringIO()
    code = cli.run(cli.parse_args(["check", "--format", "json",
                                   "fixtures/invalid/unit_suspect.yaml"]), out, err)
    findings = json.loads(out.getvalue())
    assert code == 0
    assert [f["code"] for f in findings] == ["lint.always_met", "lint.unit_suspect",
                                             "lint.unit_suspect"]
    assert all({"path", "line", "column", "severity", "message", "hint"} <= set(f)
               for f in findings)
