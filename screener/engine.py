"""Stage 5: run compiled rulesets on durable_rules. The ONLY module that imports durable.

How the engine is used, and why (see docs/engine.md and shared notes on durable_rules 2.0.28):

* We drive the C binding (`durable_rules_engine`) directly with the JSON ruleset the DSL would
  produce. No `Host`: its two timer threads run pending actions of any session and were measured
  to give wrong verdict sets and segfaults. We register no Python actions (19 us per callback);
  fired rule names are read through `start_action_for_state` / `complete_and_start_action`.
* Facts, not events: an event is consumed by the first rule that fires; a fact fires every
  matching rule, and each criterion needs its own rules to fire.
* One session alive at a time per ruleset, with a fixed session id: sids are matched by a
  32-bit hash and a ruleset holds at most 1024 sessions. The session is deleted after
  `SESSION_FACTS` facts, and at once after any error.
* Consecutive patients share one session: each patient is one fact with its own `id`, asserted
  alone and all its actions drained before the next (one fact per assert was measured faster
  than many facts per assert), and rules never join facts, so patients cannot interact.
* The C code holds the GIL and is not thread-safe: a lock serialises calls. Scale with processes.
* A ruleset name can be registered once and never replaced: each ruleset is registered under a
  name that includes its hash, and `close()` frees it with `delete_ruleset`.
* Every fact carries `__seen: 1` and the ruleset gets one sentinel rule matching it, so every
  assert takes the engine's normal "handled" path. Measured here: a fact that matched no rule
  (result code 1), followed by `delete_state`, segfaulted inside the C library depending on what
  else the process had loaded.
* Values reaching the engine are integers (scaled) or short known strings, made so by the
  normalizer; anything else is refused before it gets here.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Iterable
from typing import Any

import durable_rules_engine as _dre

from .compile import MAX_STACK, djb2, stack_bound
from .errors import ScreenerError, short_repr

ENGINE_VERSION = "durable_rules 2.0.28"
_SID = "1"
SENTINEL_RULE = "__seen__"
SENTINEL_FIELD = "__seen"
#: facts asserted into one session before it is deleted (bounded memory, 1024-session limit
#: never approached: one session per ruleset is alive at a time)
SESSION_FACTS = 256
_counter = itertools.count()
_lock = threading.RLock()


class EngineError(ScreenerError):
    pass


#: integers beyond this are refused: durable_rules saturates values past 2**63 silently
_MAX_INT = 1 << 62


def _fact_json(fact: dict[str, Any], index: int, prefix: dict[str, str] | None = None) -> str:
    """One fact as JSON, with the session id, its index and the sentinel field.

    `prefix` maps each slot key a rule tests to `"<registered short name>":`; keys not in it
    are dropped (no rule tests them), and so are None values (unknown is absence). Without
    `prefix`, every key is kept under its own name.

    Only what the normalizer produces is accepted: integers (codes, |v| < 2**62) and plain
    printable strings without quotes or backslashes. Anything else raises EngineError before
    the C library sees it: measured here, a float such as 1e-05 in a fact crashed the process
    (segmentation fault) once the session held an earlier fact, and integers beyond 2**63
    saturate silently. The joined text is verified by C-speed string checks (quote count, no
    backslash, printable), so a string cannot break out of its quotes.
    """
    if prefix is None:
        prefix = {k: json.dumps(k) + ":" for k in fact}
    parts = [f'{{"sid":"{_SID}","id":"{index}","{SENTINEL_FIELD}":1']
    n_str = 0
    for k, v in fact.items():
        pre = prefix.get(k)
        if pre is None or v is None:
            continue   # no rule tests it / unknown: absent, as the normalizer leaves it
        tv = type(v)
        if tv is int and -_MAX_INT < v < _MAX_INT:
            parts.append(pre + str(v))
        elif tv is str:
            parts.append(pre + '"' + v + '"')
            n_str += 1
        else:
            raise EngineError(f"value of {k!r} is {type(v).__name__} {short_repr(v, 40)}: "
                              "the engine takes only integer codes and short strings")
    text = ",".join(parts) + "}"
    # head: 10 quotes; each prefix 2; each string value 2 more
    if text.count('"') != 8 + 2 * len(parts) + 2 * n_str or "\\" in text \
            or not text.isprintable():
        raise EngineError("a fact key or string value needs escaping: the engine takes only "
                          "plain printable text without quotes or backslashes")
    return text


_LOGIC = ("$and", "$or")


def _properties(x: Any) -> set[str]:
    """Fact property names a rule (or expression) tests."""
    if isinstance(x, list):
        return {p for item in x for p in _properties(item)}
    if not isinstance(x, dict):
        return set()
    out: set[str] = set()
    for k, v in x.items():
        if k in _LOGIC or k in ("all", "any", "m"):
            out |= _properties(v)
        elif k.startswith("$") and isinstance(v, dict):
            out |= set(v)
    return out


def _rename(x: Any, names: dict[str, str]) -> Any:
    if isinstance(x, list):
        return [_rename(item, names) for item in x]
    if not isinstance(x, dict):
        return x
    out: dict[str, Any] = {}
    for k, v in x.items():
        if k in _LOGIC or k in ("all", "any", "m"):
            out[k] = _rename(v, names)
        elif k.startswith("$") and isinstance(v, dict):
            out[k] = {names.get(p, p): val for p, val in v.items()}
        else:
            out[k] = v
    return out


def _hash_distinct(names: list[str]) -> bool:
    """durable_rules matches property names by a 32-bit djb2 hash only."""
    all_names = names + ["sid", "id", SENTINEL_FIELD]
    return len({djb2(n) for n in all_names}) == len(set(all_names))


def partition(definition: dict[str, Any]) -> list[dict[str, Any]]:
    """The rules split into parts that each stay within the engine's match stack (see
    compile.MAX_STACK), keeping a criterion's rules together and in order. One part for every
    trial whose tests cannot overflow it (both seed trials)."""
    if stack_bound(list(definition.values())) <= MAX_STACK:
        return [definition]
    groups: dict[str, dict[str, Any]] = {}
    for name, rule in definition.items():
        groups.setdefault(name.rsplit("__", 1)[0], {})[name] = rule
    parts: list[dict[str, Any]] = [{}]
    for group in groups.values():
        trial = {**parts[-1], **group}
        if parts[-1] and stack_bound(list(trial.values())) > MAX_STACK:
            parts.append(dict(group))   # compile refuses a criterion too wide on its own
        else:
            parts[-1] = trial
    return parts


class Ruleset:
    """One trial's compiled rules on durable_rules: one registered ruleset, or several when
    the trial could overflow the engine's match stack in one (`partition`)."""

    def __init__(self, name: str, definition: dict[str, Any]):
        self.name = f"{name}#{next(_counter)}"
        self.rule_names = frozenset(definition)
        # Every action message echoes the whole fact, so property names are registered short
        # ("f0", "f1", ...: measured about 15% of the engine time for a 38-criterion trial).
        # Facts keep the readable slot keys; `_fact_json` renames them on the way in.
        props = sorted({p for rule in definition.values() for p in _properties(rule)})
        self._short = {p: f"f{i}" for i, p in enumerate(props)}
        if not _hash_distinct(list(self._short.values())):  # pragma: no cover - f-names differ
            self._short = {p: p for p in props}
        #: per part: (registered handle, prefix of the slot keys its rules test)
        self._parts: list[tuple[int, dict[str, str]]] = []
        self._closed = False
        with _lock:
            try:
                for i, part in enumerate(partition(definition)):
                    used = {p for rule in part.values() for p in _properties(rule)}
                    prefix = {k: json.dumps(short) + ":" for k, short in self._short.items()
                              if k in used}
                    full = {r: _rename(rule, self._short) for r, rule in part.items()}
                    full[SENTINEL_RULE] = {"all": [{"m": {"$eq": {SENTINEL_FIELD: 1}}}]}
                    part_name = self.name if i == 0 else f"{self.name}/{i}"
                    self._parts.append((_dre.create_ruleset(part_name, json.dumps(full)),
                                        prefix))
            except Exception as e:  # the binding raises plain Exception with a code
                for handle, _ in self._parts:
                    _dre.delete_ruleset(handle)
                self._closed = True
                raise EngineError(f"durable_rules refused ruleset {name!r}: {e}") from e
        self._handle, self._prefix = self._parts[0]
        self._next_id = 0
        self._in_session = 0

    @property
    def parts(self) -> int:
        return len(self._parts)

    def close(self) -> None:
        with _lock:
            if not self._closed:
                self._closed = True
                for handle, _ in self._parts:
                    _dre.delete_ruleset(handle)

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass

    def fired(self, fact: dict[str, Any]) -> set[str]:
        """Names of the rules that fire for one fact (the API path).

        The same protocol as `fired_many` for a single fact, written out because this is the
        per-request hot path: every action drained here is this fact's (each call drains all
        its actions, and a fact fires only its own rules), so only the rule name is read.
        """
        out: set[str] = set()
        with _lock:
            if self._closed:
                raise EngineError(f"ruleset {self.name} is closed")
            index = self._next_id
            self._next_id += 1
            # refused values raise here, before the C library sees them; the session is intact
            payloads = ["[" + _fact_json(fact, index, prefix) + "]"
                        for _, prefix in self._parts]
            clean = False
            try:
                add, complete = out.add, _dre.complete_and_start_action
                for (handle, _), payload in zip(self._parts, payloads, strict=True):
                    try:
                        result = _dre.assert_facts(handle, payload)
                    except Exception as e:
                        raise EngineError(f"durable_rules rejected the fact: {e}") from e
                    state_handle = result[1]
                    msg = _dre.start_action_for_state(handle, state_handle)
                    raw = msg[1] if msg else None
                    while raw:
                        add(raw[2:raw.index('"', 2)])
                        raw = complete(handle, state_handle)
                self._in_session += 1
                clean = True
            finally:
                if not clean or self._in_session >= SESSION_FACTS:
                    self._delete()
        out.discard(SENTINEL_RULE)
        return out

    def fired_many(self, facts: Iterable[dict[str, Any]]) -> list[set[str]]:
        """Names of fired rules, per fact; `{"__rejected__"}` for a fact the engine refused
        (the others are unaffected: a refused assert deletes the session, and the next fact
        starts a fresh one).

        One fact per assert: measured faster per fact than asserting 256 facts in one call
        and sorting the actions out by fact id (NCT06930105: 68 against 109 us per fact),
        and every action drained belongs to the one fact just asserted.
        """
        res: list[set[str]] = []
        for f in facts:
            try:
                res.append(self.fired(f))
            except EngineError:
                res.append({"__rejected__"})
        return res

    def _delete(self) -> None:
        self._in_session = 0
        for handle, _ in self._parts:
            try:
                _dre.delete_state(handle, _SID)
            except Exception:
                pass  # no state was created (e.g. the fact matched no rule)
