"""The intermediate representation: frozen, hashable, with source spans.

Pipeline position: produced by `parse`, consumed by `compile` (Rete), `reference` (oracle) and
`normalize` (which data slots to fill). Nothing here knows about YAML or durable_rules.

A *slot* is one value the rules read from a patient: e.g. "newest ALT within 30 days, as a
multiple of its ULN". Leaves name their slot; the normalizer fills slots; both evaluators only
compare slot values. Slot values are integers (numbers scaled by `SCALE`) or short strings, never
floats: that keeps exact decimal boundaries (ALT exactly 3.0 x ULN) and keeps every value inside
what durable_rules can parse.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property
from typing import Literal, TypeVar

#: numbers are carried as integers: twice the value in millionths (see `encode_number`)
SCALE = 1_000_000
Obj = TypeVar("Obj")
R = TypeVar("R")
#: largest magnitude a number may have and still be encoded (keeps codes below 2**63)
MAX_MAGNITUDE = 10**12


def encode_number(x: Fraction) -> int | None:
    """Exact order-preserving integer code for a number.

    A value that is a whole number of millionths v becomes 2v; any value strictly between v and
    v+1 millionths becomes 2v+1. Thresholds in rules are whole millionths (even codes), so
    <, <=, >, >=, == and != on codes give exactly the answer on the real values, however many
    decimals a ratio such as 121/40 has. None when the magnitude is out of range.
    """
    n, d = x.numerator, x.denominator
    if abs(n) >= MAX_MAGNITUDE * d:
        return None
    whole, rest = divmod(n * SCALE, d)  # floor division, also for negative values
    return 2 * whole if rest == 0 else 2 * whole + 1


def decode_number(code: int) -> Fraction:
    """Inverse of `encode_number` for even codes (odd codes return the lower bound)."""
    return Fraction(code // 2, SCALE)

Op = Literal["<", "<=", ">", ">=", "==", "!=", "in", "not_in", "between"]
Kind = Literal["inclusion", "exclusion"]
Verdict = Literal["met", "not_met", "unknown", "not_applicable"]


@dataclass(frozen=True)
class Span:
    path: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}"


@dataclass(frozen=True, order=True)
class Slot:
    """What to extract from the patient. `mode` is value | uln | present | days."""

    element: tuple[str, ...]
    mode: str
    within_days: int | None = None
    active: bool = False

    @cached_property
    def key(self) -> str:
        win = "any" if self.within_days is None else f"{self.within_days}d"
        act = "_active" if self.active else ""
        return f"{'_'.join(self.element)}__{self.mode}__{win}{act}"


SlotValue = int | str


@dataclass(frozen=True)
class Compare:
    slot: Slot
    op: Op
    #: one value, or two for between, or several for in / not_in; numbers scaled by SCALE
    values: tuple[SlotValue, ...]
    span: Span
    #: the threshold as the author wrote it (for evidence and messages)
    shown: str = ""


@dataclass(frozen=True)
class Present:
    """A condition / event is recorded (optionally within a window, optionally still active)."""

    slot: Slot
    span: Span


@dataclass(frozen=True)
class All:
    parts: tuple[Node, ...]


@dataclass(frozen=True)
class Any_:
    parts: tuple[Node, ...]


@dataclass(frozen=True)
class Not:
    part: Node


Node = Compare | Present | All | Any_ | Not


@dataclass(frozen=True)
class OnUnknown:
    verdict: Literal["met", "not_met"]
    reason: str


@dataclass(frozen=True)
class Criterion:
    id: str
    kind: Kind
    text: str
    logic: Node | None
    manual: bool
    applies_if: Node | None
    on_unknown: OnUnknown | None
    span: Span
    note: str = ""


@dataclass(frozen=True)
class Trial:
    id: str
    title: str
    version: str
    source: str
    criteria: tuple[Criterion, ...]
    review_max_age_days: int
    #: element -> ULN in the element's canonical unit, used when a result has no range
    site_uln: tuple[tuple[str, Fraction], ...]
    path: str
    #: sha256 of the rule file bytes
    sha256: str


def leaves(node: Node | None) -> list[Compare | Present]:
    if node is None:
        return []
    if isinstance(node, (Compare, Present)):
        return [node]
    if isinstance(node, Not):
        return leaves(node.part)
    return [x for p in node.parts for x in leaves(p)]


def per_object(limit: int) -> Callable[[Callable[[Obj], R]], Callable[[Obj], R]]:
    """Memoise a one-argument function by the identity of its argument.

    For work derived from frozen rule objects (trials, criteria, logic nodes) on hot paths:
    hashing such an object walks it whole, so the cache is keyed by `id()` and keeps the object
    itself, which both guards against a reused id and keeps the entry valid. Rule reloads leave
    old objects behind, so the cache is emptied when it reaches `limit` entries.
    """
    def wrap(fn: Callable[[Obj], R]) -> Callable[[Obj], R]:
        cache: dict[int, tuple[Obj, R]] = {}

        @functools.wraps(fn)
        def memo(obj: Obj) -> R:
            hit = cache.get(id(obj))
            if hit is not None and hit[0] is obj:
                return hit[1]
            value = fn(obj)
            if len(cache) >= limit:
                cache.clear()
            cache[id(obj)] = (obj, value)
            return value
        return memo
    return wrap


@per_object(256)
def slots_of(trial: Trial) -> list[Slot]:
    """Every slot the trial's rules read, sorted by key (cached per trial object)."""
    seen: dict[str, Slot] = {}
    for c in trial.criteria:
        for leaf in leaves(c.logic) + leaves(c.applies_if):
            seen.setdefault(leaf.slot.key, leaf.slot)
    return [seen[k] for k in sorted(seen)]
