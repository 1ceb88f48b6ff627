"""screener.jsonfast: orjson only where it gives exactly what json.loads gives."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from screener import jsonfast

leaf = st.one_of(st.none(), st.booleans(), st.integers(-(10**30), 10**30),
                 st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20))
doc = st.recursive(leaf, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                st.dictionaries(st.text(max_size=6), kids,
                                                                max_size=4)), max_leaves=25)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(d=doc)
def test_same_document_as_the_standard_library(d: Any) -> None:
    raw = json.dumps(d).encode()
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


def test_duplicate_keys_keep_the_last_like_the_standard_library() -> None:
    assert jsonfast.loads(b'{"a": 1, "a": 2}') == json.loads(b'{"a": 1, "a": 2}') == {"a": 2}
