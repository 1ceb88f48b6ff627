"""The rule-language JSON Schema (draft 2020-12), built from the element catalogue.

The shipped file ``screener/schema/trial.schema.json`` is this dict serialised; a test keeps them
identical, and ``python -m screener.schema`` rewrites the file. Every keyword carries a
description and an example so that editors (yaml-language-server) offer completion and hover.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .elements import ELEMENTS

SCHEMA_ID = "https://screener.invalid/schema/trial.schema.json"
SCHEMA_PATH = Path(__file__).parent / "schema" / "trial.schema.json"

OPS = ("<", "<=", ">", ">=", "==", "!=", "in", "not_in", "between")

FACTS = sorted(n for n, e in ELEMENTS.items() if e.kind != "condition")
CONDITIONS = sorted(n for n, e in ELEMENTS.items() if e.kind == "condition")

_scalar = {"type": ["number", "string", "boolean"]}


def build() -> dict[str, Any]:
    node_ref = {"$ref": "#/$defs/logic"}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "Clinical trial eligibility rules",
        "description": "One trial: its identity and its inclusion and exclusion criteria. "
                       "See docs/rules.md.",
        "type": "object",
        "additionalProperties": False,
        "required": ["trial", "title", "version", "source", "criteria"],
        "properties": {
            "trial": {"type": "string", "pattern": "^NCT[0-9]{8}$",
                      "description": "ClinicalTrials.gov registration number.",
                      "examples": ["NCT06930105"]},
            "title": {"type": "string", "minLength": 1, "description": "Official title."},
            "version": {"type": "string", "minLength": 1,
                        "description": "Version of this rule file (bump on every change).",
                        "examples": ["1.0.0"]},
            "source": {"type": "string", "minLength": 1,
                       "description": "Where the criteria text comes from: a path relative to "
                                      "the rule file, or a URL.",
                       "examples": ["../../shared/trials/NCT06930105.txt"]},
            "defaults": {
                "type": "object", "additionalProperties": False,
                "description": "Trial-wide defaults.",
                "properties": {
                    "review_max_age_days": {
                        "type": "integer", "minimum": 0, "maximum": 3650,
                        "description": "How old (days before as_of) a documented absence or a "
                                       "complete record review may be and still prove that a "
                                       "condition or exposure is absent. Default 30.",
                        "examples": [30]},
                },
            },
            "site_uln": {
                "type": "object",
                "description": "Site default upper limits of normal, used only when a lab "
                               "result carries no reference range of its own.",
                "propertyNames": {"enum": sorted(n for n, e in ELEMENTS.items() if e.uln)},
                "additionalProperties": {
                    "type": "object", "additionalProperties": False,
                    "required": ["value", "unit"],
                    "properties": {"value": {"type": "number", "exclusiveMinimum": 0},
                                   "unit": {"type": "string"}}},
                "examples": [{"alt": {"value": 40, "unit": "U/L"}}],
            },
            "examples": {"type": "array", "items": {"$ref": "#/$defs/example"},
                         "description": "Example patients with expected trial status."},
            "criteria": {"type": "array", "minItems": 1,
                         "items": {"$ref": "#/$defs/criterion"},
                         "description": "Inclusion and exclusion criteria in protocol order."},
        },
        "$defs": {
            "criterion": {
                "type": "object", "additionalProperties": False,
                "required": ["id", "kind", "text"],
                "description": "One criterion. Exactly one of `logic` or `manual: true`.",
                "properties": {
                    "id": {"type": "string", "pattern": "^[a-z][a-z0-9_]*$", "maxLength": 64,
                           "description": "Stable identifier (never reuse for another meaning).",
                           "examples": ["inc_age"]},
                    "kind": {"enum": ["inclusion", "exclusion"],
                             "description": "inclusion: must be met; exclusion: must not be met."},
                    "text": {"type": "string", "minLength": 1,
                             "description": "The protocol's own words, verbatim."},
                    "logic": {**node_ref, "description": "What the data must show."},
                    "manual": {"type": "boolean",
                               "description": "Data cannot decide this: it resolves only by an "
                                              "attestation given with the request."},
                    "applies_if": {**node_ref,
                                   "description": "When false, the verdict is not_applicable."},
                    "on_unknown": {
                        "type": "object", "additionalProperties": False,
                        "required": ["verdict", "reason"],
                        "description": "Missing-data policy (default: the verdict stays "
                                       "unknown). Changing it needs a reason.",
                        "properties": {
                            "verdict": {"enum": ["met", "not_met"]},
                            "reason": {"type": "string", "minLength": 10}},
                    },
                    "note": {"type": "string",
                             "description": "Encoding decision and why (for reviewers)."},
                    "examples": {"type": "array", "items": {"$ref": "#/$defs/example"}},
                },
            },
            "example": {
                "type": "object", "additionalProperties": False,
                "required": ["name", "patient"],
                "description": "An example patient and what the rules must conclude.",
                "properties": {
                    "name": {"type": "string"},
                    "as_of": {"type": "string", "format": "date"},
                    "patient": {"type": "object"},
                    "attest": {"type": "object"},
                    "verdict": {"enum": ["met", "not_met", "unknown", "not_applicable"]},
                    "status": {"enum": ["eligible", "ineligible", "needs_review"]},
                },
            },
            "logic": {
                "type": "object", "additionalProperties": False,
                "minProperties": 1,
                "description": "all / any / not, a fact comparison, or a condition test.",
                "examples": [{"fact": "ecog", "op": "<=", "value": 2},
                             {"fact": "alt", "op": "<=", "x_uln": 3, "within_days": 30},
                             {"condition": ["dvt", "pulmonary_embolism"], "within_days": 180}],
                "properties": {
                    "all": {"type": "array", "minItems": 1, "items": node_ref,
                            "description": "True when every part is true (Kleene AND)."},
                    "any": {"type": "array", "minItems": 1, "items": node_ref,
                            "description": "True when some part is true (Kleene OR)."},
                    "not": {**node_ref, "description": "Negation; unknown stays unknown."},
                    "fact": {"enum": FACTS,
                             "description": "A data element (see docs/data-elements.md)."},
                    "op": {"enum": list(OPS), "description": "Comparison operator."},
                    "value": {"oneOf": [_scalar, {"type": "array", "items": _scalar,
                                                  "minItems": 1}],
                              "description": "Threshold in the element's canonical unit, a "
                                             "coded value, or a list for in / not_in / between."},
                    "x_uln": {"type": "number", "exclusiveMinimum": 0,
                              "description": "Threshold as a multiple of the result's upper "
                                             "limit of normal.", "examples": [3]},
                    "within_days": {"type": "integer", "minimum": 0, "maximum": 36500,
                                    "description": "Only data dated at most this many days "
                                                   "before as_of counts (newest wins)."},
                    "condition": {"oneOf": [{"enum": CONDITIONS},
                                            {"type": "array", "minItems": 1,
                                             "items": {"enum": CONDITIONS}}],
                                  "description": "True when any listed condition is recorded "
                                                 "(in the window)."},
                    "active": {"type": "boolean",
                               "description": "Only conditions still active at as_of count."},
                },
            },
        },
    }


def write() -> None:
    SCHEMA_PATH.write_text(json.dumps(build(), indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    write()
