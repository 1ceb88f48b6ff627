"""screener.jsonfast: orjson only where it gives exactly what json.loads gives."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from screener import jsonfast

_EDGES = [2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 10**18, 10**19]
leaf = st.one_of(st.none(), st.booleans(), st.integers(-(10**30), 10**30),
                 st.sampled_from(_EDGES), st.sampled_from([float(x) for x in _EDGES]),
                 st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20),
                 # long digit runs inside strings (narratives quoting ids and seeds), next to
                 # escaped quotes and backslashes
                 st.from_regex(r'[a-z :\\"-]{0,5}-?[0-9]{17,40}[a-z \\"]{0,5}', fullmatch=True))
key = st.one_of(st.text(max_size=6), st.from_regex(r'[\\"]{0,2}[0-9]{19,22}', fullmatch=True))
doc = st.recursive(leaf, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                st.dictionaries(key, kids, max_size=4)),
                   max_leaves=25)


@settings(max_examples=600, deadline=None, derandomize=True)
@given(d=doc, indent=st.sampled_from([None, 1]), ascii=st.booleans())
def test_same_document_as_the_standard_library(d: Any, indent: int | None, ascii: bool) -> None:
    raw = json.dumps(d, indent=indent, ensure_ascii=ascii).encode()
    got = jsonfast.loads(raw)
    want = json.loads(raw)
    if got is not jsonfast.FALLBACK:
        # same values and the same types (1 stays int, 1.0 float, big ints exact)
        assert json.dumps(got) == json.dumps(want)
        assert repr(got) == repr(want)


@pytest.mark.parametrize("raw", [
    b'{"id": 123456789012345678901234567890}',   # orjson would give a float
    b'{"v": NaN}', b'{"v": Infinity}', b'[1e400]',  # the standard library decides
    b'"\\ud800"', b'{"a": ', "{\"a\": 1}".encode("utf-16"), b"[" * 2000 + b"]" * 2000,
])
def test_falls_back_where_orjson_differs_or_refuses(raw: bytes) -> None:
    assert jsonfast.loads(raw) is jsonfast.FALLBACK


def test_long_digit_runs_inside_strings_keep_the_fast_path() -> None:
    raw = b'{"text": "Person seed: -5005083896250721271", "n": 12, "f": 1.5e18}'
    got = jsonfast.loads(raw)
    assert got is not jsonfast.FALLBACK and repr(got) == repr(json.loads(raw))
    # the same digits as a number: an overflowed integer, the standard library decides
    assert jsonfast.loads(b'{"seed": -50050838962507212719}') is jsonfast.FALLBACK
    assert jsonfast.loads_strict(b'{"seed": -50050838962507212719}') == \
        {"seed": -50050838962507212719}


def test_duplicate_keys_keep_the_last_like_the_standard_library() -> None:
    assert jsonfast.loads(b'{"a": 1, "a": 2}') == json.loads(b'{"a": 1, "a": 2}') == {"a": 2}


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
