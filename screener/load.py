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

import re
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
#: keys and indexes from the document root to a value (a criterion's logic nested 40 `all`s
#: deep is about 85). Deeper documents made the schema validator recurse past Python's limit.
MAX_DEPTH = 120


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
    def __init__(self, err: RuleError | list[RuleError]):
        self.errs = err if isinstance(err, list) else [err]


#: the only number spellings taken: YAML 1.1 also reads 020 as octal 16, 1:30 as base-60 90,
#: 0x10, 0b1010 and 1_000, which a rule author writing a threshold or a window does not mean
_DECIMAL_INT = re.compile(r"[-+]?(?:0|[1-9][0-9]*)")
_DECIMAL_FLOAT = re.compile(r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?"
                            r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)")


#: tags whose scalars are kept as their text (dates stay strings; the schema checks them)
_TEXT_TAGS = frozenset(f"tag:yaml.org,2002:{t}" for t in ("str", "timestamp", "value", "merge"))


def _scalar(node: yaml.ScalarNode, path: str) -> Any:
    tag = node.tag
    if tag == "tag:yaml.org,2002:null":
        return None
    if tag == "tag:yaml.org,2002:bool":
        low = node.value.lower()
        return low == "true" if low in ("true", "false") else node.value
    if tag in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float"):
        text = node.value
        is_int = tag.endswith("int")
        if not (_DECIMAL_INT if is_int else _DECIMAL_FLOAT).fullmatch(text):
            if node.style is None and re.fullmatch(r"[-+]?[0-9][0-9a-fA-FxXbB_:.]*", text):
                msg = (f"write numbers in plain decimal: YAML 1.1 reads {text!r} as octal, "
                       "hexadecimal, binary, base 60 or with '_' separators; quote it if it "
                       "is text")
            else:
                msg = f"{text!r} is tagged as a number but is not one"
            raise _LoadError(RuleError(path, node.start_mark.line + 1,
                                       node.start_mark.column + 1, "yaml.number", msg))
        if is_int:
            return int(text)
        return yaml.SafeLoader.construct_yaml_float(_CONSTRUCTOR, node)
    if tag not in _TEXT_TAGS:
        raise _LoadError(RuleError(
            path, node.start_mark.line + 1, node.start_mark.column + 1, "yaml.tag",
            f"YAML tag {tag!r} is not supported" + (
                " (an operator starting with '!' must be quoted: op: \"!=\")"
                if tag == "!" or tag.startswith("!=") else "")))
    return node.value


_CONSTRUCTOR = yaml.SafeLoader("")


def load_text(text: str, path: str) -> Located:
    """Parse YAML text. Raises `_LoadError` wrapped as a list of RuleError by `load`."""
    doc = Located(data=None, path=path, text=text)
    budget = MAX_VALUES
    problems: list[RuleError] = []   # bad scalars: all of them are reported, not the first

    def build(node: yaml.Node, p: Path) -> Any:
        nonlocal budget
        budget -= 1
        if budget < 0:
            raise _LoadError(RuleError(path, node.start_mark.line + 1, node.start_mark.column + 1,
                                       "yaml.too_large", f"the document expands to more than "
                                       f"{MAX_VALUES:,} values (YAML aliases repeating a block?)"))
        if len(p) > MAX_DEPTH:
            raise _LoadError(RuleError(path, node.start_mark.line + 1, node.start_mark.column + 1,
                                       "yaml.depth", f"nested more than {MAX_DEPTH} levels deep"))
        doc.values[p] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, yaml.ScalarNode):
            try:
                return _scalar(node, path)
            except _LoadError as e:
                problems.extend(e.errs)
                return None
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
                if key == "<<" and knode.tag == "tag:yaml.org,2002:merge":   # quoted: a key
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
    except yaml.YAMLError as e:  # reader errors (bad characters) carry a position instead
        pos = getattr(e, "position", None)
        line, col = 1, 1
        if isinstance(pos, int) and 0 <= pos <= len(text):
            line = text.count("\n", 0, pos) + 1
            col = pos - (text.rfind("\n", 0, pos) + 1) + 1
        raise _LoadError(RuleError(path, line, col, "yaml.syntax",
                                   str(e).splitlines()[0])) from None
    if len(nodes) != 1:
        raise _LoadError(RuleError(path, 1, 1, "yaml.documents",
                                   f"expected exactly one YAML document, found {len(nodes)}"))
    doc.data = build(nodes[0], ())
    if problems:
        raise _LoadError(problems)
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
        return None, e.errs
    except RecursionError:
        return None, [RuleError(path, 1, 1, "yaml.depth", "document is nested too deeply")]
