"""Stage 2: check a loaded rule file against the JSON Schema and report *every* error.

jsonschema knows only JSON paths; `Located` maps them back to YAML line and column. Errors from
``oneOf`` / ``anyOf`` are reduced to their most useful leaf (jsonschema's ``best_match`` idea), and
unknown keys and enum misses get a did-you-mean suggestion.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

import jsonschema
from jsonschema import Draft202012Validator

from .elements import ELEMENTS
from .errors import RuleError, did_you_mean
from .load import Located
from .schema import SCHEMA_PATH


@lru_cache(maxsize=1)
def validator() -> Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def _leaves(err: jsonschema.ValidationError) -> Iterator[jsonschema.ValidationError]:
    if err.context:
        best = jsonschema.exceptions.best_match(err.context)
        if best is not None:
            yield from _leaves(best)
            return
    yield err


def _allowed_keys(schema: dict[str, Any]) -> list[str]:
    return list(schema.get("properties", {}))


def schema_errors(doc: Located) -> list[RuleError]:
    out: list[RuleError] = []
    for top in validator().iter_errors(doc.data):
        for e in _leaves(top):
            out.extend(_convert(doc, e))
    return sorted(set(out))


def _convert(doc: Located, e: jsonschema.ValidationError) -> list[RuleError]:
    path = tuple(e.absolute_path)
    line, col = doc.pos(path)
    kw = e.validator
    if kw == "additionalProperties" and isinstance(e.instance, dict):
        allowed = _allowed_keys(e.schema)
        errs = []
        for key in sorted(k for k in e.instance if k not in allowed):
            kl, kc = doc.pos(path + (key,), key=True)
            errs.append(RuleError(doc.path, kl, kc, "schema.unknown_field",
                                  f"unknown field {key!r}",
                                  suggestion=did_you_mean(key, allowed)))
        return errs
    if kw == "required":
        missing = str(e.message).split("'")[1] if "'" in e.message else e.message
        return [RuleError(doc.path, line, col, "schema.required",
                          f"missing required field {missing!r}")]
    if kw == "enum":
        allowed = [str(v) for v in e.validator_value]
        where = f" for {path[-1]!r}" if path and isinstance(path[-1], str) else ""
        # long lists (element names) are not spelled out: the suggestion and the docs are
        # more useful, and the message stays stable when the catalogue grows
        shown = ", ".join(allowed) if len(allowed) <= 12 else "see docs/data-elements.md"
        blank_op = e.instance == "" and path and path[-1] == "op"
        return [RuleError(doc.path, line, col, "schema.enum",
                          f"{e.instance!r} is not an allowed value{where} ({shown})"
                          + ("; an unquoted '>' starts a YAML block: quote operators, "
                             "op: \">\"" if blank_op else ""),
                          suggestion=_suggest(str(e.instance), allowed))]
    if kw == "type":
        expected = e.validator_value
        exp = " or ".join(expected) if isinstance(expected, list) else expected
        return [RuleError(doc.path, line, col, "schema.type",
                          f"expected {exp}, got {_json_type(e.instance)}"
                          + ("" if e.instance is None else f" {_short(e.instance)}"))]
    if kw == "propertyNames":
        return [RuleError(doc.path, line, col, "schema.enum", e.message)]
    return [RuleError(doc.path, line, col, f"schema.{kw}", _short_message(e.message))]


#: how operators are also written (maths, SQL, other rule languages) -> ours
_OP_SYNONYMS = {"=": "==", "eq": "==", "equals": "==", "is": "==", "≠": "!=", "<>": "!=",
                "ne": "!=", "neq": "!=", "≤": "<=", "=<": "<=", "le": "<=", "lte": "<=",
                "≥": ">=", "=>": ">=", "ge": ">=", "gte": ">=", "lt": "<", "gt": ">",
                "in_set": "in", "not in": "not_in", "notin": "not_in", "range": "between"}


def _suggest(word: str, allowed: list[str]) -> str | None:
    """Did-you-mean for an enum miss. For data element names, the element's own label is a
    better guide than spelling: 'deep_vein_thrombosis' is 'dvt', not 'arterial_thrombosis'."""
    if "==" in allowed and "<=" in allowed:   # the operator list
        syn = _OP_SYNONYMS.get(word.strip().lower())
        if syn in allowed:
            return syn
    spoken = " ".join(word.lower().replace("_", " ").split())
    if len(spoken) >= 4:
        hits = [n for n in allowed if n in ELEMENTS and spoken in ELEMENTS[n].label.lower()]
        if len(hits) == 1:
            return hits[0]
    return did_you_mean(word, allowed)


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"


def _short(v: Any) -> str:
    s = json.dumps(v, default=str)
    return s if len(s) <= 40 else s[:37] + "..."


def _short_message(msg: str) -> str:
    return msg if len(msg) <= 160 else msg[:157] + "..."
