"""The reference evaluator: strong Kleene logic over the IR, in plain Python.

It reads the same slot values the engine gets and is the oracle the property tests hold the Rete
path to. It is deliberately small and obvious; it is also the `--engine reference` path of the
CLI and benchmarks (never the production default).

Truth values are `True`, `False` and `UNKNOWN` (a distinct falsy sentinel: missing is never
`None` and never `False`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .compile import rule_names
from .ir import All, Compare, Node, Not, Present, Trial


class _Unknown:
    _instance = None

    def __new__(cls) -> _Unknown:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN: Any = _Unknown()
Tri = Any  # True | False | UNKNOWN


def _cmp(op: str, x: Any, values: tuple[Any, ...]) -> bool:
    if op == "in":
        return x in values
    if op == "not_in":
        return x not in values
    if op == "between":
        return bool(values[0] <= x <= values[1])
    v = values[0]
    if type(x) is not type(v):  # the normalizer guarantees types; mismatch is never a match
        return False
    return bool({"<": x < v, "<=": x <= v, ">": x > v, ">=": x >= v, "==": x == v,
                 "!=": x != v}[op])


def evaluate(node: Node, facts: Mapping[str, Any]) -> Tri:
    if isinstance(node, Compare):
        x = facts.get(node.slot.key)
        return UNKNOWN if x is None else _cmp(node.op, x, node.values)
    if isinstance(node, Present):
        x = facts.get(node.slot.key)
        return UNKNOWN if x is None else x == "true"
    if isinstance(node, Not):
        v = evaluate(node.part, facts)
        return UNKNOWN if v is UNKNOWN else not v
    vals = [evaluate(p, facts) for p in node.parts]
    if isinstance(node, All):
        if any(v is False for v in vals):
            return False
        return True if all(v is True for v in vals) else UNKNOWN
    if any(v is True for v in vals):
        return True
    return False if all(v is False for v in vals) else UNKNOWN


def fired(trial: Trial, facts: Mapping[str, Any]) -> set[str]:
    """The rule names the Rete network would fire, computed by the reference logic."""
    out: set[str] = set()
    for c in trial.criteria:
        names = rule_names(c.id)
        for node, t, f in ((c.logic, "T", "F"), (c.applies_if, "AT", "AF")):
            if node is None:
                continue
            v = evaluate(node, facts)
            if v is True:
                out.add(names[t])
            elif v is False:
                out.add(names[f])
    return out
