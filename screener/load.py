"""Stage 1 of the pipeline: load a rule file as plain data *with source positions*.

YAML is composed into a node tree by PyYAML's safe composer; we build the Python values ourselves
so that every value and every mapping key keeps its line and column (1-based). Deliberate
differences from plain ``yaml.safe_load``:

* duplicate mapping keys are an error (YAML silently keeps the last one);
* timestamps stay strings (JSON Schema and the IR want ISO strings, not ``datetime``);
* only ``true`` / ``false`` are booleans: YAML 1.1's ``yes`` / ``no`` / ``on`` / ``off`` stay
  strings, so a coded value ``no`` is never turned into ``False`` behind the author's back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from .errors import RuleError

Path = tuple[str | int, ...]

MAX_RULE_FILE_BYTES = 2 * 1024 * 1024
#: values a rule file may expand to. A real one has a few thousand; YAML aliases can make a
#: small file expand without bound (the "billion laughs"), which ran `screener check` out of
#: memory before this limit.
MAX_VALUES = 200_000


@dataclass
class Located:
    """A loaded document plus where each of its parts came from."""

    data: Any
    path: str
    text: str
    #: JSON path -> (line, column) of the value
    values: dict[Path, tuple[int, int]] = field(default_factory=dict)
    #: JSON path -> (line, column) of the mapping key that introduced it
    keys: dict[Path, tuple[int, int]] = field(default_factory=dict)

    def pos(self, p: Path, key: bool = False) -> tuple[int, int]:
        """Best position for a path: the exact node, else the nearest ancestor."""
        table = self.keys if key else self.values
        q = tuple(p)
        while q:
            if q in table:
                return table[q]
            if not key and q in self.keys:
                return self.keys[q]
            q = q[:-1]
        return self.values.get((), (1, 1))


class _LoadError(Exception):
    def __init__(self, err: RuleError):
        self.err = err


def _scalar(node: yaml.ScalarNode) -> Any:
    tag = node.tag
    if tag == "tag:yaml.org,2002:null":
        return None
    if tag == "tag:yaml.org,2002:bool":
        low = node.value.lower()
        return low == "true" if low in ("true", "false") else node.value
    if tag == "tag:yaml.org,2002:int":
        return yaml.SafeLoader.construct_yaml_int(_CONSTRUCTOR, node)
    if tag == "tag:yaml.org,2002:float":
        return yaml.SafeLoader.construct_yaml_float(_CONSTRUCTOR, node)
    return node.value


_CONSTRUCTOR = yaml.SafeLoader("")


def load_text(text: str, path: str) -> Located:
    """Parse YAML text. Raises `_LoadError` wrapped as a list of RuleError by `load`."""
    doc = Located(data=None, path=path, text=text)
    budget = MAX_VALUES

    def build(node: yaml.Node, p: Path) -> Any:
        nonlocal budget
        budget -= 1
        if budget < 0:
            raise _LoadError(RuleError(path, node.start_mark.line + 1, node.start_mark.column + 1,
                                       "yaml.too_large", f"the document expands to more than "
                                       f"{MAX_VALUES:,} values (YAML aliases repeating a block?)"))
        doc.values[p] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, yaml.ScalarNode):
            return _scalar(node)
        if isinstance(node, yaml.SequenceNode):
            return [build(child, p + (i,)) for i, child in enumerate(node.value)]
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            for knode, vnode in node.value:
                if not isinstance(knode, yaml.ScalarNode):
                    raise _LoadError(RuleError(path, knode.start_mark.line + 1,
                                               knode.start_mark.column + 1, "yaml.key_type",
                                               "mapping keys must be plain strings"))
                key = str(knode.value)
                if key == "<<":
                    raise _LoadError(RuleError(path, knode.start_mark.line + 1,
                                               knode.start_mark.column + 1, "yaml.merge_key",
                                               "YAML merge keys ('<<') are not supported"))
                if key in out:
                    first = doc.keys[p + (key,)]
                    raise _LoadError(RuleError(
                        path, knode.start_mark.line + 1, knode.start_mark.column + 1,
                        "yaml.duplicate_key",
                        f"duplicate key {key!r} (first defined at line {first[0]})"))
                doc.keys[p + (key,)] = (knode.start_mark.line + 1, knode.start_mark.column + 1)
                out[key] = build(vnode, p + (key,))
            return out
        raise _LoadError(RuleError(path, 1, 1, "yaml.node", "unsupported YAML node"))

    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise _LoadError(RuleError(path, line, col, "yaml.syntax",
                                   f"{e.problem or e.context or 'invalid YAML'}")) from None
    except yaml.YAMLError as e:  # reader errors (bad bytes) carry no problem_mark
        raise _LoadError(RuleError(path, 1, 1, "yaml.syntax", str(e).splitlines()[0])) from None
    if len(nodes) != 1:
        raise _LoadError(RuleError(path, 1, 1, "yaml.documents",
                                   f"expected exactly one YAML document, found {len(nodes)}"))
    doc.data = build(nodes[0], ())
    return doc


def load(path: str) -> tuple[Located | None, list[RuleError]]:
    """Read and parse one rule file; never raises for bad content."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_RULE_FILE_BYTES + 1)
    except OSError as e:
        return None, [RuleError(path, 1, 1, "file.unreadable", f"cannot read file: {e.strerror}")]
    if len(raw) > MAX_RULE_FILE_BYTES:
        return None, [RuleError(path, 1, 1, "file.too_large",
                                f"rule file is larger than {MAX_RULE_FILE_BYTES} bytes")]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        return None, [RuleError(path, line, 1, "file.encoding", "file is not valid UTF-8")]
    return loads(text, path)


def loads(text: str, path: str = "<string>") -> tuple[Located | None, list[RuleError]]:
    try:
        return load_text(text, path), []
    except _LoadError as e:
        return None, [e.err]
    except RecursionError:
        return None, [RuleError(path, 1, 1, "yaml.depth", "document is nested too deeply")]
