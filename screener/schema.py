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
_VERDICT = ["met", "not_met", "unknown", "not_applicable"]


def _example_properties(trial: bool = False) -> dict[str, Any]:
    """Fields of an example; a trial example pins status / verdicts, a criterion one verdict.
    Both accept every field so that a misplaced one gets a precise message from
    `screener check` (example.*) instead of 'unknown field'."""
    return {
        "name": {"type": "string", "minLength": 1,
                 "description": "What the example shows (unique within its list).",
                 "examples": ["ALT exactly 3.0 x ULN is met"]},
        "as_of": {"type": "string", "format": "date",
                  "description": "Screening date (default: defaults.example_as_of).",
                  "examples": ["2026-01-15"]},
        "patient": {"type": "object",
                    "description": "A canonical patient record (docs/patient-format.md).",
                    "examples": [{"birth_date": "1990-05-01", "observations": [
                        {"element": "ecog", "value": 1, "date": "2026-01-10"}]}]},
        "attest": {"type": "object",
                   "description": "Attestations of manual criteria: criterion id -> met, "
                                  "not_met or true (in the patient's favour).",
                   "additionalProperties": {"enum": ["met", "not_met", True]},
                   "examples": [{"inc_consent": "met"}]},
        "verdict": {"enum": _VERDICT,
                    "description": "Expected verdict of the criterion "
                                   + ("(criterion examples only)." if trial else
                                      "the example belongs to."),
                    "examples": ["not_met"]},
        "status": {"enum": ["eligible", "ineligible", "needs_review"],
                   "description": "Expected trial status (trial examples only).",
                   "examples": ["eligible"]},
        "verdicts": {"type": "object",
                     "description": "Expected verdicts of some criteria, by id (trial examples "
                                    "only).",
                     "additionalProperties": {"enum": _VERDICT},
                     "examples": [{"inc_age": "met", "exc_hiv": "not_met"}]},
        "note": {"type": "string", "description": "Why this example matters (for reviewers).",
                 "examples": ["boundary: the protocol says 'more than 14 days'"]},
    }


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
            "title": {"type": "string", "minLength": 1, "description": "Official title.",
                      "examples": ["Short-term Blinatumomab as a Bridge Therapy for Allo-HSCT "
                                   "in Low Burden B-ALL"]},
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
                "examples": [{"review_max_age_days": 30, "example_as_of": "2026-01-15"}],
                "properties": {
                    "review_max_age_days": {
                        "type": "integer", "minimum": 0, "maximum": 3650,
                        "description": "How old (days before as_of) a documented absence or a "
                                       "complete record review may be and still prove that a "
                                       "condition or exposure is absent. Default 30.",
                        "examples": [30]},
                    "example_as_of": {
                        "type": "string", "format": "date",
                        "description": "Screening date for every example that gives no "
                                       "as_of of its own (`screener test`).",
                        "examples": ["2026-01-15"]},
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
                    "description": "The site's upper limit of normal for this lab.",
                    "properties": {
                        "value": {"type": "number", "exclusiveMinimum": 0,
                                  "description": "Upper limit of normal.", "examples": [40]},
                        "unit": {"type": "string",
                                 "description": "Unit of the value (one the element accepts).",
                                 "examples": ["U/L"]}}},
                "examples": [{"alt": {"value": 40, "unit": "U/L"}}],
            },
            "examples": {"type": "array", "items": {"$ref": "#/$defs/trial_example"},
                         "description": "Example patients with the expected trial status (and "
                                        "optionally some criteria's verdicts); `screener test` "
                                        "runs them.",
                         "examples": [[{"name": "fit adult, all data", "status": "eligible",
                                        "patient": {"age": 40}}]]},
            "criteria": {"type": "array", "minItems": 1,
                         "items": {"$ref": "#/$defs/criterion"},
                         "description": "Inclusion and exclusion criteria in protocol order.",
                         "examples": [[{"id": "inc_age", "kind": "inclusion",
                                        "text": "patients with age ≥ 16 years;",
                                        "logic": {"fact": "age", "op": ">=", "value": 16}}]]},
        },
        "$defs": {
            "criterion": {
                "type": "object", "additionalProperties": False,
                "required": ["id", "kind", "text"],
                "description": "One criterion. Exactly one of `logic` or `manual: true`.",
                "examples": [{"id": "exc_hiv", "kind": "exclusion",
                              "text": "HIV: HIV antibody-positive.",
                              "logic": {"fact": "hiv_ab", "op": "==", "value": "positive",
                                        "within_days": 90}}],
                "properties": {
                    "id": {"type": "string", "pattern": "^[a-z][a-z0-9_]*$", "maxLength": 64,
                           "description": "Stable identifier (never reuse for another meaning).",
                           "examples": ["inc_age"]},
                    "kind": {"enum": ["inclusion", "exclusion"],
                             "description": "inclusion: must be met; exclusion: must not be met.",
                             "examples": ["inclusion"]},
                    "text": {"type": "string", "minLength": 1,
                             "description": "The protocol's own words, verbatim (checked "
                                            "against the source file).",
                             "examples": ["2. patients with age ≥ 16 years;"]},
                    "logic": {**node_ref, "description": "What the data must show for the "
                                                         "criterion to be met.",
                              "examples": [{"fact": "ecog", "op": "<=", "value": 2,
                                            "within_days": 30}]},
                    "manual": {"type": "boolean",
                               "description": "Data cannot decide this: it resolves only by an "
                                              "attestation given with the request.",
                               "examples": [True]},
                    "applies_if": {**node_ref,
                                   "description": "When false, the verdict is not_applicable.",
                                   "examples": [{"fact": "sex", "op": "!=", "value": "male"}]},
                    "on_unknown": {
                        "type": "object", "additionalProperties": False,
                        "required": ["verdict", "reason"],
                        "description": "Missing-data policy (default: the verdict stays "
                                       "unknown). Changing it needs a reason.",
                        "examples": [{"verdict": "not_met",
                                      "reason": "the protocol says an untested patient is "
                                                "not excluded"}],
                        "properties": {
                            "verdict": {"enum": ["met", "not_met"],
                                        "description": "Verdict used when the data cannot "
                                                       "decide.",
                                        "examples": ["not_met"]},
                            "reason": {"type": "string", "minLength": 10,
                                       "description": "Why missing data may be resolved this "
                                                      "way (shown in every report).",
                                       "examples": ["protocol: no test means not excluded"]}},
                    },
                    "note": {"type": "string",
                             "description": "Encoding decision and why (for reviewers).",
                             "examples": ["3 months = 90 days."]},
                    "examples": {"type": "array", "items": {"$ref": "#/$defs/example"},
                                 "description": "Example patients with this criterion's "
                                                "expected verdict; `screener test` runs them.",
                                 "examples": [[{"name": "17 is too young", "verdict": "not_met",
                                                "patient": {"age": 17}}]]},
                },
            },
            "example": {
                "type": "object", "additionalProperties": False,
                "required": ["name", "patient"],
                "description": "An example patient and the verdict this criterion must give.",
                "examples": [{"name": "61 is too old", "patient": {"age": 61},
                              "verdict": "not_met"}],
                "properties": _example_properties(),
            },
            "trial_example": {
                "type": "object", "additionalProperties": False,
                "required": ["name", "patient"],
                "description": "An example patient and the trial status (and optionally the "
                               "verdicts) the rules must give.",
                "examples": [{"name": "no data", "patient": {"age": 40},
                              "status": "needs_review", "verdicts": {"inc_age": "met"}}],
                "properties": _example_properties(trial=True),
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
                            "description": "True when every part is true, false when some "
                                           "part is false, else unknown (Kleene AND).",
                            "examples": [[{"fact": "alt", "op": "<=", "x_uln": 3},
                                          {"fact": "ast", "op": "<=", "x_uln": 3}]]},
                    "any": {"type": "array", "minItems": 1, "items": node_ref,
                            "description": "True when some part is true, false when every "
                                           "part is false, else unknown (Kleene OR).",
                            "examples": [[{"fact": "donor_type", "op": "==",
                                           "value": "matched_sibling"},
                                          {"fact": "donor_type", "op": "==",
                                           "value": "haploidentical"}]]},
                    "not": {**node_ref, "description": "Negation; unknown stays unknown.",
                            "examples": [{"condition": "myocardial_infarction",
                                          "within_days": 28}]},
                    "fact": {"enum": FACTS,
                             "description": "A data element (see docs/data-elements.md).",
                             "examples": ["ecog"]},
                    "op": {"enum": list(OPS),
                           "description": "Comparison operator: < <= > >= == != on one value; "
                                          "in / not_in on a list; between on [low, high] "
                                          "(inclusive).",
                           "examples": ["<="]},
                    "value": {"oneOf": [_scalar, {"type": "array", "items": _scalar,
                                                  "minItems": 1}],
                              "description": "Threshold in the element's canonical unit, a "
                                             "coded value, or a list for in / not_in / between.",
                              "examples": [2, "positive", [18, 60]]},
                    "x_uln": {"type": "number", "exclusiveMinimum": 0,
                              "description": "Threshold as a multiple of the result's upper "
                                             "limit of normal.", "examples": [3]},
                    "within_days": {"type": "integer", "minimum": 0, "maximum": 36500,
                                    "description": "Only data dated at most this many days "
                                                   "before as_of counts (newest wins).",
                                    "examples": [30]},
                    "condition": {"oneOf": [{"enum": CONDITIONS},
                                            {"type": "array", "minItems": 1,
                                             "items": {"enum": CONDITIONS}}],
                                  "description": "True when any listed condition is recorded "
                                                 "(in the window).",
                                  "examples": ["b_all", ["dvt", "pulmonary_embolism"]]},
                    "active": {"type": "boolean",
                               "description": "Only conditions still active at as_of count.",
                               "examples": [True]},
                },
            },
        },
    }


def write() -> None:
    SCHEMA_PATH.write_text(json.dumps(build(), indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    write()
