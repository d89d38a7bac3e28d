"""Keys and values as stored: normalisation, encoding, limits."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvactors.codec import decode_value, encode_value, normalize_key
from kvactors.errors import BadRequestError, TooLargeError

msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=20,
)


@given(msgpack_values)
def test_any_msgpack_value_round_trips(value: object) -> None:
    assert decode_value(encode_value(value, 1 << 20)) == value


def test_str_keys_are_their_utf8_bytes() -> None:
    assert normalize_key("ключ", 100) == "ключ".encode()
    assert normalize_key(b"\xff", 100) == b"\xff"
    assert normalize_key(bytearray(b"ab"), 100) == b"ab"


@pytest.mark.parametrize("key", [1, 1.5, None, ["k"], ("k",), "\udc80"])
def test_keys_of_other_types_or_invalid_utf8_are_bad_requests(key: object) -> None:
    with pytest.raises(BadRequestError):
        normalize_key(key, 100)


def test_key_limit_counts_encoded_bytes() -> None:
    assert normalize_key("é" * 2, 4) == "éé".encode()
    with pytest.raises(TooLargeError):
        normalize_key("é" * 3, 4)


@pytest.mark.parametrize("value", [{1, 2}, object(), 2**64, -(2**63) - 1, complex(1, 2)])
def test_values_msgpack_cannot_encode_are_bad_requests(value: object) -> None:
    with pytest.raises(BadRequestError) as raised:
        encode_value(value, 1 << 20)
    assert not isinstance(raised.value, TooLargeError)


def test_deeply_nested_values_are_refused_not_crashing() -> None:
    value: list[object] = []
    for _ in range(10_000):
        value = [value]
    with pytest.raises(BadRequestError):
        encode_value(value, 1 << 20)


def test_value_limit_counts_encoded_bytes() -> None:
    assert len(encode_value(b"x" * 10, 12)) == 12  # bin8 header of 2 bytes
    with pytest.raises(TooLargeError):
        encode_value(b"x" * 11, 12)
