"""screener.jsonfast: strict JSON (duplicate keys, NaN / Infinity, lone surrogates refused)."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from screener import jsonfast

_EDGES = [2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 10**18, 10**19]
leaf = st.one_of(st.none(), st.booleans(), st.integers(-(10**30), 10**30),
                 st.sampled_from(_EDGES), st.sampled_from([float(x) for x in _EDGES]),
                 st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20),
                 st.from_regex(r'[a-z :\\"-]{0,5}-?[0-9]{17,40}[a-z \\"]{0,5}', fullmatch=True))
key = st.one_of(st.text(max_size=6), st.from_regex(r'[\\"]{0,2}[0-9]{19,22}', fullmatch=True))
doc = st.recursive(leaf, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                st.dictionaries(key, kids, max_size=4)),
                   max_leaves=25)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(d=doc, indent=st.sampled_from([None, 1]), ascii=st.booleans(), pick=st.integers(0, 50))
def test_documents_are_read_exactly_and_any_repeated_key_is_refused(
        d: Any, indent: int | None, ascii: bool, pick: int) -> None:
    raw = json.dumps(d, indent=indent, ensure_ascii=ascii)
    got = jsonfast.loads_strict(raw.encode())
    # the hook builds every object itself: same values, types, key order as the standard
    # library's own dicts (1 stays int, 1.0 float, big ints exact)
    assert repr(got) == repr(json.loads(raw))
    # now repeat one key of one object (as a sender that writes a field twice would)
    twice = _repeat_a_key(d, pick, lambda x: json.dumps(x, indent=indent,
                                                        ensure_ascii=ascii).encode(), b": ")
    if twice is not None:
        with pytest.raises(jsonfast.DuplicateKeyError) as e:
            jsonfast.loads_strict(twice[0])
        assert e.value.key == twice[1]


@settings(max_examples=300, deadline=None, derandomize=True)
@given(d=doc, pick=st.integers(0, 50))
def test_the_compact_fast_path_reads_the_same_and_still_refuses_a_repeated_key(
        d: Any, pick: int) -> None:
    try:
        raw = orjson.dumps(d)          # compact, as orjson writes it: the fast path
    except TypeError:                  # an integer beyond 64 bits: not writable by orjson
        return
    assert repr(jsonfast.loads_strict(raw)) == repr(json.loads(raw))
    assert repr(jsonfast.loads_strict(b" " + raw + b"\n")) == repr(json.loads(raw))
    twice = _repeat_a_key(d, pick, orjson.dumps, b":")
    if twice is not None:
        with pytest.raises(jsonfast.DuplicateKeyError):
            jsonfast.loads_strict(twice[0])


def _repeat_a_key(d: Any, pick: int, dumps: Any, sep: bytes) -> tuple[bytes, str] | None:
    """`d` written by `dumps` (key-value separator `sep`) with the first key of one of its
    objects written twice, the first time with the value 0; None if it has no such object."""
    objects = [x for x in _walk(d) if isinstance(x, dict) and x]
    if not objects:
        return None
    target = objects[pick % len(objects)]
    key = next(iter(target))
    marked = {"__marker__": 1, **target}
    target.clear()
    target.update(marked)
    text, marker = dumps(d), b'"__marker__"' + sep + b"1"
    at = text.index(marker)
    return text[:at] + dumps(key) + sep + b"0" + text[at + len(marker):], key


def _walk(x: Any) -> Any:
    yield x
    if isinstance(x, dict):
        for v in x.values():
            yield from _walk(v)
    elif isinstance(x, list):
        for v in x:
            yield from _walk(v)


def test_big_integers_stay_exact() -> None:
    assert jsonfast.loads_strict(b'{"seed": -50050838962507212719}') == \
        {"seed": -50050838962507212719}
    assert jsonfast.loads_strict(b"[" + b"9" * 4300 + b"]") == [int("9" * 4300)]


def test_an_integer_too_long_to_convert_is_invalid_json_with_a_plain_message() -> None:
    with pytest.raises(ValueError, match="more than 4,300 digits") as e:
        jsonfast.loads_strict(b'{"age": ' + b"9" * 4301 + b"}")
    assert "set_int_max_str_digits" not in str(e.value)


@pytest.mark.parametrize(("raw", "key"), [
    (b'{"birth_date": "1985-03-14", "birth_date": "2015-03-14"}', "birth_date"),
    (b'{"a": 1, "b": {"v": 15, "u": "%", "v": 3}}', "v"),      # nested
    (b'[{"x": 1}, {"x": 2, "y": 1, "x": 2}]', "x"),           # even with equal values
    (b'{"\\u0061": 1, "a": 2}', "a"),                          # the same key, escaped
])
def test_duplicate_keys_are_refused_and_named(raw: bytes, key: str) -> None:
    with pytest.raises(jsonfast.DuplicateKeyError) as e:
        jsonfast.loads_strict(raw)
    assert e.value.key == key and f'"{key}"' in str(e.value)


def test_keys_that_differ_only_in_case_or_space_are_not_duplicates() -> None:
    assert jsonfast.loads_strict(b'{"a": 1, "A": 2, "a ": 3}') == {"a": 1, "A": 2, "a ": 3}


@pytest.mark.parametrize("raw", [b'{"v": NaN}', b'{"v": Infinity}', b'[-Infinity]'])
def test_nan_and_infinity_are_refused(raw: bytes) -> None:
    with pytest.raises(jsonfast.ConstantError):
        jsonfast.loads_strict(raw)


@pytest.mark.parametrize("raw", [
    b'{"id": "\\ud800"}', b'{"\\udc00": 1}', b'[[{"a": ["x\\uDBFFy"]}]]',
    b'{"a": "\\ude00\\ud83d"}',   # a pair in the wrong order is two lone surrogates
])
def test_lone_surrogates_are_refused(raw: bytes) -> None:
    with pytest.raises(jsonfast.SurrogateError):
        jsonfast.loads_strict(raw)


def test_surrogate_pairs_and_escaped_backslashes_are_text() -> None:
    assert jsonfast.loads_strict(b'{"a": "\\ud83d\\ude00"}') == {"a": "\U0001f600"}
    assert jsonfast.loads_strict(b'{"a": "\\\\ud800"}') == {"a": "\\ud800"}
