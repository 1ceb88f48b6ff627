"""screener/schema/patient.schema.json: the canonical patient format's own JSON Schema.

It must describe what the project itself produces (fixture patients, the documented example,
the FHIR adapter's output for real FHIR examples) and what the normalizer reads (the same
field names), and refuse what the normalizer cannot read as meant.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from screener import normalize
from screener.adapters.fhir import bundle_to_patient

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((ROOT / "screener" / "schema" / "patient.schema.json").read_text())
VALIDATOR = Draft202012Validator(SCHEMA)
EXAMPLES = ROOT.parent / "shared" / "fhir-examples"
FHIR_FILES = sorted(EXAMPLES.rglob("*.json")) if EXAMPLES.is_dir() else []


def errors(doc: Any) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in VALIDATOR.iter_errors(doc)]


def test_schema_is_valid_draft_2020_12() -> None:
    Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"


@pytest.mark.parametrize("path", sorted((ROOT / "fixtures" / "patients").glob("*.json")),
                         ids=lambda p: p.name)
def test_fixture_patients_are_valid(path: Path) -> None:
    assert errors(json.loads(path.read_text())) == []


def test_the_documented_example_is_valid() -> None:
    text = (ROOT / "docs" / "patient-format.md").read_text()
    block = re.search(r"```json\n(.*?)```", text, re.S)
    assert block is not None
    assert errors(json.loads(block.group(1))) == []


@pytest.mark.skipif(not FHIR_FILES, reason="../shared/fhir-examples not present")
def test_fhir_adapter_output_is_valid_for_every_shared_example() -> None:
    bad = {}
    for f in FHIR_FILES:
        patient, _ = bundle_to_patient(json.loads(f.read_text(encoding="utf-8")))
        errs = errors(patient)
        if errs:
            bad[f.name] = errs[:3]
    assert bad == {}


def test_field_names_are_the_normalizers() -> None:
    """The schema and the normalizer's field checks name the same fields."""
    assert set(SCHEMA["properties"]) == normalize._PATIENT_KEYS
    defs = SCHEMA["$defs"]
    assert set(defs["observation"]["properties"]) == normalize._OBSERVATION_KEYS
    assert set(defs["condition"]["properties"]) == normalize._CONDITION_KEYS
    assert set(defs["exposure"]["properties"]) == normalize._EXPOSURE_KEYS


@pytest.mark.parametrize("doc, where", [
    ({"Conditions": []}, ""),
    ({"observations": [{"element": "ecog", "value": 1}]}, "observations/0"),
    ({"observations": [{"value": 1, "date": "2026-11-01"}]}, "observations/0"),
    ({"conditions": [{"element": "dvt", "Present": False}]}, "conditions/0"),
    ({"exposures": [{"element": "blinatumomab", "days": -1}]}, "exposures/0/days"),
    ({"birth_date": "14.03.1985"}, "birth_date"),
    ({"reviewed": {"conditions": "2026-11"}}, "reviewed/conditions"),
])
def test_malformed_records_are_refused(doc: dict[str, Any], where: str) -> None:
    errs = errors(doc)
    assert errs and any(e.startswith(where + ":") for e in errs), errs
