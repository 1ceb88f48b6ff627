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
* Several patients may share one session (`screen_many`): each patient is one fact with its own
  `id`, fired rules carry the fact back, and rules never join facts, so patients cannot interact.
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
from collections.abc import Iterable, Sequence
from typing import Any

import durable_rules_engine as _dre

from .compile import djb2
from .errors import ScreenerError

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


def _fact_json(fact: dict[str, Any], index: int, prefix: dict[str, str] | None = None) -> str:
    """One fact as JSON, with the session id, its index and the sentinel field.

    `prefix` maps each slot key a rule tests to `"<registered short name>":`; keys not in it
    are dropped (no rule tests them). Without `prefix`, every key is kept under its own name.
    Facts hold only slot keys and integer codes or short coded strings (the normalizer's
    contract), so joining them directly is exact and about three times faster than renaming
    and `json.dumps`. The text is verified by C-speed string checks (quote count, no
    backslash, no control character); any other value type, or any string that would need
    escaping, takes `json.dumps` instead, and the engine rejects what it cannot represent.
    """
    if prefix is None:
        prefix = {k: json.dumps(k) + ":" for k in fact}
    parts = [f'{{"sid":"{_SID}","id":"{index}","{SENTINEL_FIELD}":1']
    n_str = 0
    try:
        for k, v in fact.items():
            pre = prefix.get(k)
            if pre is None:
                continue
            if type(v) is int:
                parts.append(pre + str(v))
            else:
                # a str concatenates; anything else (bool, float, None) raises TypeError
                parts.append(pre + '"' + v + '"')
                n_str += 1
        text = ",".join(parts) + "}"
        # head: 10 quotes; each prefix 2; each string value 2 more
        if text.count('"') == 8 + 2 * len(parts) + 2 * n_str and "\\" not in text \
                and text.isprintable():
            return text
    except TypeError:
        pass
    full: dict[str, Any] = {"sid": _SID, "id": str(index), SENTINEL_FIELD: 1}
    for k, v in fact.items():
        if k in prefix:
            full[json.loads(prefix[k][:-1])] = v
    return json.dumps(full, ensure_ascii=False, separators=(",", ":"))


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


def _collect(raw: str, out: list[set[str]], base: int) -> None:
    """Record one fired rule of a many-facts call without parsing the whole JSON.

    A message is `{"<rule>":{"m":{"sid":"1","id":"<n>", ...}}}` (one rule per message; the
    fact comes back as `_fact_json` wrote it). Parsing it with `json.loads` cost about 25 us
    per fired rule, most of the engine time; rule names and our field values never contain
    quotes, so slicing is exact.
    """
    end = raw.index('"', 2)
    i = raw.index('"id":"', end) + 6
    k = int(raw[i:raw.index('"', i)]) - base
    if not 0 <= k < len(out):
        raise EngineError(f"action for fact {k + base} outside this call: engine state is "
                          "inconsistent")
    out[k].add(raw[2:end])


class Ruleset:
    """One registered durable_rules ruleset."""

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
        self._prefix = {k: json.dumps(short) + ":" for k, short in self._short.items()}
        full = {r: _rename(rule, self._short) for r, rule in definition.items()}
        full[SENTINEL_RULE] = {"all": [{"m": {"$eq": {SENTINEL_FIELD: 1}}}]}
        with _lock:
            try:
                self._handle = _dre.create_ruleset(self.name, json.dumps(full))
            except Exception as e:  # the binding raises plain Exception with a code
                raise EngineError(f"durable_rules refused ruleset {name!r}: {e}") from e
        self._closed = False
        self._next_id = 0
        self._in_session = 0

    def close(self) -> None:
        with _lock:
            if not self._closed:
                self._closed = True
                _dre.delete_ruleset(self._handle)

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
            handle = self._handle
            clean = False
            try:
                try:
                    result = _dre.assert_facts(handle, "[" + _fact_json(fact, index,
                                                                        self._prefix) + "]")
                except Exception as e:
                    raise EngineError(f"durable_rules rejected the fact: {e}") from e
                state_handle = result[1]
                msg = _dre.start_action_for_state(handle, state_handle)
                raw = msg[1] if msg else None
                add, complete = out.add, _dre.complete_and_start_action
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

    def fired_many(self, facts: Sequence[dict[str, Any]]) -> list[set[str]]:
        """Names of fired rules, per fact. Facts must not contain 'sid' or 'id'.

        The session is kept for up to `SESSION_FACTS` facts and then deleted: creating and
        deleting a session costs about as much as evaluating a small trial. Each call asserts
        facts with fresh ids and drains every action before returning, so no action of one
        call can be read by another; rules never join facts, so earlier facts change nothing.
        """
        if not facts:
            return []
        out: list[set[str]] = [set() for _ in facts]
        with _lock:
            if self._closed:
                raise EngineError(f"ruleset {self.name} is closed")
            base = self._next_id
            self._next_id += len(facts)
            payload = "[" + ",".join(_fact_json(f, base + i, self._prefix)
                                     for i, f in enumerate(facts)) + "]"
            clean = False
            try:
                try:
                    result = _dre.assert_facts(self._handle, payload)
                except Exception:
                    # isolate the bad fact: retry one by one in fresh sessions
                    self._delete()
                    return self._one_by_one(facts)
                state_handle = result[1]
                msg = _dre.start_action_for_state(self._handle, state_handle)
                raw = msg[1] if msg else None
                while raw:
                    _collect(raw, out, base)
                    raw = _dre.complete_and_start_action(self._handle, state_handle)
                for names in out:
                    names.discard(SENTINEL_RULE)
                self._in_session += len(facts)
                clean = True
            finally:
                if not clean or self._in_session >= SESSION_FACTS:
                    self._delete()
        return out

    def _one_by_one(self, facts: Iterable[dict[str, Any]]) -> list[set[str]]:
        res: list[set[str]] = []
        for f in facts:
            try:
                res.append(self.fired(f))
            except EngineError:
                res.append({"__rejected__"})
        return res

    def _delete(self) -> None:
        self._in_session = 0
        try:
            _dre.delete_state(self._handle, _SID)
        except Exception:
            pass  # no state was created (e.g. the fact matched no rule)
