"""Stage 4: compile the IR into a durable_rules ruleset definition (plain JSON data).

Three-valued logic on a two-valued engine: every criterion C becomes two rules,

    C__T   fires when C's logic is true
    C__F   fires when C's logic is false (negation pushed to the leaves, De Morgan)

and, when the criterion has ``applies_if``, two more (``C__AT`` / ``C__AF``). A leaf whose slot is
absent from the fact matches neither polarity (durable_rules never satisfies a comparison on a
missing field), so when neither rule fires the value is unknown. That is strong Kleene logic:
``all`` false as soon as one part is false, ``any`` true as soon as one part is true, unknown
otherwise. `reference.py` evaluates the same IR directly; property tests hold them equal.

The output is plain data (a golden-file test pins it). Property names are slot keys; since
durable_rules identifies names and string values by a 32-bit djb2 hash only, the compiler
refuses a ruleset in which two distinct identifiers share a hash.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .errors import RuleError, RuleFileError
from .ir import All, Compare, Node, Not, Present, Trial, slots_of

_NEG = {"<": ">=", "<=": ">", ">": "<=", ">=": "<", "==": "!=", "!=": "==",
        "in": "not_in", "not_in": "in"}
_DR = {"<": "$lt", "<=": "$lte", ">": "$gt", ">=": "$gte", "==": "$eq", "!=": "$neq"}
#: names durable_rules itself puts in facts
RESERVED = ("sid", "id", "$s", "__seen", "__seen__")

Expr = dict[str, Any]


def _and(xs: list[Expr]) -> Expr:
    return xs[0] if len(xs) == 1 else {"$and": xs}


def _or(xs: list[Expr]) -> Expr:
    return xs[0] if len(xs) == 1 else {"$or": xs}


def _leaf(key: str, op: str, values: tuple[Any, ...]) -> Expr:
    if op == "in":
        return _or([{"$eq": {key: v}} for v in values])
    if op == "not_in":
        return _and([{"$neq": {key: v}} for v in values])
    if op == "between":
        lo, hi = values
        return {"$and": [{"$gte": {key: lo}}, {"$lte": {key: hi}}]}
    return {_DR[op]: {key: values[0]}}


def expr(node: Node, polarity: bool) -> Expr:
    """Durable expression that matches exactly when `node` evaluates to `polarity`."""
    if isinstance(node, Compare):
        key = node.slot.key
        if polarity:
            return _leaf(key, node.op, node.values)
        if node.op == "between":
            lo, hi = node.values
            return {"$or": [{"$lt": {key: lo}}, {"$gt": {key: hi}}]}
        return _leaf(key, _NEG[node.op], node.values)
    if isinstance(node, Present):
        return {"$eq": {node.slot.key: "true" if polarity else "false"}}
    if isinstance(node, Not):
        return expr(node.part, not polarity)
    parts = [expr(p, polarity) for p in node.parts]
    conj = isinstance(node, All) == polarity
    return _and(parts) if conj else _or(parts)


def rule_names(cid: str) -> dict[str, str]:
    return {"T": f"{cid}__T", "F": f"{cid}__F", "AT": f"{cid}__AT", "AF": f"{cid}__AF"}


#: durable_rules limits, measured (a helper's probe of 2.0.28): a rule may hold at most 31
#: sequence expressions, and every $and / $or takes two (a 16th node: error 113 when the ruleset
#: is created, so no trial of the directory loads)
MAX_LOGIC_NODES = 15
#: the matching walk keeps a fixed stack of 64 entries: every distinct first test of a rule that
#: is true for a fact takes one, so does every true branch of an $or, and the sentinel one more.
#: Past it the process dies (segfault / abort in delete_state). The engine splits a trial's rules
#: into parts that each stay under this bound (a margin below 64); one criterion alone above it
#: is refused here.
MAX_STACK = 56


def compile_trial(trial: Trial) -> dict[str, Any]:
    """IR -> durable_rules ruleset definition (rule name -> rule)."""
    rules: dict[str, Any] = {}
    problems: list[RuleError] = []
    for c in trial.criteria:
        names = rule_names(c.id)
        mine: dict[str, Any] = {}
        if c.logic is not None:
            mine[names["T"]] = {"all": [{"m": expr(c.logic, True)}]}
            mine[names["F"]] = {"all": [{"m": expr(c.logic, False)}]}
        if c.applies_if is not None:
            mine[names["AT"]] = {"all": [{"m": expr(c.applies_if, True)}]}
            mine[names["AF"]] = {"all": [{"m": expr(c.applies_if, False)}]}
        where = (c.span.path, c.span.line, c.span.column)
        for name, rule in mine.items():
            n = logic_nodes(rule["all"][0]["m"])
            if n > MAX_LOGIC_NODES:
                problems.append(RuleError(*where, "compile.too_complex",
                                          f"criterion {c.id!r}: rule {name} needs {n} all / any "
                                          f"/ between / in nodes; the engine takes at most "
                                          f"{MAX_LOGIC_NODES} per rule: split the criterion"))
                break
        else:
            bound = stack_bound(list(mine.values()))
            if bound > MAX_STACK:
                problems.append(RuleError(*where, "compile.too_wide",
                                          f"criterion {c.id!r}: up to {bound} of its tests can "
                                          f"be true at once; the engine takes at most "
                                          f"{MAX_STACK}: split the criterion"))
        rules.update(mine)
    if problems:
        raise RuleFileError(problems)
    _check_hashes(trial, rules)
    return rules


def logic_nodes(e: Expr) -> int:
    """The $and / $or nodes of an expression (see MAX_LOGIC_NODES)."""
    ((op, arg),) = e.items()
    if op in ("$and", "$or"):
        return 1 + sum(logic_nodes(x) for x in arg)
    return 0


def _roots(e: Expr, out: set[str]) -> None:
    """The tests that start matching paths: the first part of an $and, every branch of an $or
    (durable_rules shares identical tests between rules, so they are counted once)."""
    ((op, arg),) = e.items()
    if op == "$and":
        _roots(arg[0], out)
    elif op == "$or":
        for x in arg:
            _roots(x, out)
    else:
        out.add(json.dumps(e, sort_keys=True))


_TRUE = {"$lt": lambda x, v: x < v, "$lte": lambda x, v: x <= v, "$gt": lambda x, v: x > v,
         "$gte": lambda x, v: x >= v, "$eq": lambda x, v: x == v, "$neq": lambda x, v: x != v}


def stack_bound(rules: list[dict[str, Any]]) -> int:
    """The most distinct root tests of these rules that one fact can make true at once (see
    MAX_STACK). Slots are independent, so per slot the worst value is found by trying every
    threshold and its neighbours (numbers are integer codes) or every tested string and one
    other; the bound is the sum over slots."""
    roots: set[str] = set()
    for r in rules:
        _roots(r["all"][0]["m"], roots)
    by_slot: dict[str, list[tuple[str, Any]]] = {}
    for t in roots:
        ((op, kv),) = json.loads(t).items()
        ((key, v),) = kv.items()
        by_slot.setdefault(key, []).append((op, v))
    total = 0
    for tests in by_slot.values():
        vals = [v for _, v in tests]
        cands: set[Any] = set()
        if all(isinstance(v, int) for v in vals):
            for v in vals:
                cands |= {v - 1, v, v + 1}
        else:
            cands = set(vals) | {"\x00other"}
        total += max(sum(1 for op, v in tests if type(x) is type(v) and _TRUE[op](x, v))
                     for x in cands)
    return total


def djb2(s: str) -> int:
    h = 5381
    for b in s.encode("utf-8"):
        # durable_rules adds a C `char`, which is signed on x86
        h = (h * 33 + (b - 256 if b > 127 else b)) & 0xFFFFFFFF
    return h


def _strings(x: Any, out: set[str]) -> None:
    if isinstance(x, dict):
        for k, v in x.items():
            out.add(k)
            _strings(v, out)
    elif isinstance(x, list):
        for v in x:
            _strings(v, out)
    elif isinstance(x, str):
        out.add(x)


def _check_hashes(trial: Trial, rules: dict[str, Any]) -> None:
    names: set[str] = set(RESERVED) | {s.key for s in slots_of(trial)}
    _strings(list(rules.values()), names)
    names = {n for n in names if not n.startswith("$")} | set(RESERVED)
    seen: dict[int, str] = {}
    for n in sorted(names):
        h = djb2(n)
        if h in seen and seen[h] != n:
            raise RuleFileError([RuleError(trial.path, 1, 1, "compile.hash_collision",
                                           f"identifiers {seen[h]!r} and {n!r} collide in "
                                           "durable_rules' 32-bit hash; rename one")])
        seen[h] = n


def ruleset_hash(trial: Trial, definition: dict[str, Any]) -> str:
    """Identity of what is screened: the compiled network plus the criteria metadata."""
    meta = [(c.id, c.kind, c.text, c.manual, c.on_unknown and c.on_unknown.verdict)
            for c in trial.criteria]
    blob = json.dumps({"trial": trial.id, "version": trial.version, "rules": definition,
                       "criteria": meta, "review_max_age_days": trial.review_max_age_days,
                       "site_uln": [(n, str(v)) for n, v in trial.site_uln]},
                      sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()
