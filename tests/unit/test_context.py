"""Tests for kvactors.core.context: the causal context a client carries."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvactors.core.clocks import MAX_COUNTER, VectorClock
from kvactors.core.context import (
    MAX_CONTEXT_BYTES,
    MAX_CONTEXT_ENTRIES,
    MAX_NODE_NAME_BYTES,
    client_context,
    decode_context,
    encode_context,
)
from kvactors.errors import BadRequestError


def clock(**counters: int) -> VectorClock:
    return VectorClock.from_dict(counters)


# ------------------------------------------------------------------------- client context

node_names = st.text(st.characters(codec="utf-8"), min_size=1, max_size=MAX_NODE_NAME_BYTES).filter(
    lambda name: len(name.encode()) <= MAX_NODE_NAME_BYTES
)
context_clocks = st.dictionaries(node_names, st.integers(1, MAX_COUNTER), max_size=8).map(
    VectorClock.from_dict
)


@given(context_clocks)
def test_context_roundtrip(context_clock: VectorClock) -> None:
    encoded = encode_context(context_clock)
    assert isinstance(encoded, bytes)
    assert len(encoded) <= MAX_CONTEXT_BYTES
    assert decode_context(encoded) == context_clock


@given(st.binary(max_size=64))
def test_random_bytes_decode_canonically_or_raise(data: bytes) -> None:
    try:
        decoded = decode_context(data)
    except ValueError:
        return
    assert encode_context(decoded) == data


@given(context_clocks, st.data())
def test_mutated_contexts_decode_canonically_or_raise(
    context_clock: VectorClock, data: st.DataObject
) -> None:
    encoded = bytearray(encode_context(context_clock))
    position = data.draw(st.integers(0, len(encoded) - 1))
    encoded[position] = data.draw(st.integers(0, 255))
    try:
        decoded = decode_context(bytes(encoded))
    except ValueError:
        return
    assert encode_context(decoded) == bytes(encoded)


@given(context_clocks)
def test_truncated_or_extended_contexts_raise(context_clock: VectorClock) -> None:
    encoded = encode_context(context_clock)
    for end in range(len(encoded)):
        with pytest.raises(ValueError):
            decode_context(encoded[:end])
    with pytest.raises(ValueError):
        decode_context(encoded + b"\x00")


def test_context_layout() -> None:
    assert encode_context(VectorClock()) == b"\x01\x00"
    assert encode_context(clock(a=1, b=300)) == b"\x01\x02\x01a\x01\x01b\xac\x02"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x02\x00",  # unknown format
        b"\x01\x80\x00",  # count varint padded
        b"\x01\x01\x01a\x00",  # zero counter
        b"\x01\x01\x00\x01",  # empty name
        b"\x01\x01\x01a\x81\x00",  # counter varint padded
        b"\x01\x02\x01b\x01\x01a\x01",  # names not sorted
        b"\x01\x02\x01a\x01\x01a\x02",  # duplicate name
        b"\x01\x01\x01\xff\x01",  # name is not UTF-8
        b"\x01\x01\x01a" + b"\xff" * 10 + b"\x01",  # varint too long
        b"\x01\x01\x01a" + b"\xff" * 9 + b"\x02",  # counter above 2**64 - 1
        b"\x01\x01\x80\x02" + b"a" * 256 + b"\x01",  # name longer than 255 bytes
        b"\x01\x81\x02",  # 257 entries announced
        "text",
        None,
        12,
    ],
)
def test_malformed_contexts_raise(data: object) -> None:
    with pytest.raises(ValueError):
        decode_context(data)


def test_oversized_context_is_refused_before_parsing() -> None:
    with pytest.raises(ValueError, match="too large"):
        decode_context(b"\x01\x00" + b"\x00" * MAX_CONTEXT_BYTES)


def test_largest_context_fits_the_limit() -> None:
    longest = [
        f"{index:03d}".ljust(MAX_NODE_NAME_BYTES, "n") for index in range(MAX_CONTEXT_ENTRIES)
    ]
    biggest = VectorClock.from_dict(dict.fromkeys(longest, MAX_COUNTER))
    encoded = encode_context(biggest)
    assert len(encoded) <= MAX_CONTEXT_BYTES
    assert decode_context(encoded) == biggest


def test_encode_rejects_clocks_outside_the_limits() -> None:
    with pytest.raises(ValueError):
        encode_context(
            VectorClock.from_dict({f"n{i:04d}": 1 for i in range(MAX_CONTEXT_ENTRIES + 1)})
        )
    with pytest.raises(ValueError):
        encode_context(VectorClock.from_dict({"x" * (MAX_NODE_NAME_BYTES + 1): 1}))


def test_client_context_is_the_clock_and_the_bytes_a_client_sent() -> None:
    encoded = encode_context(clock(a=3, b=1))
    assert client_context(encoded) == (clock(a=3, b=1), encoded)
    assert client_context(None) is None


@pytest.mark.parametrize("sent", [b"", b"\x02\x00", b"\x01\x01\x01a\x00"])
def test_a_context_no_node_made_is_a_bad_request(sent: bytes) -> None:
    with pytest.raises(BadRequestError, match="context is not one a node made: "):
        client_context(sent)


def reference_varint(number: int) -> bytes:
    out = bytearray()
    while number > 0x7F:
        out.append(number & 0x7F | 0x80)
        number >>= 7
    out.append(number)
    return bytes(out)


# Every size of varint, at its edges, and where the fast path hands over to the loop.
VARINT_EDGES = sorted(
    {n for bits in range(7, 71, 7) for n in (2**bits - 1, 2**bits) if 1 <= n <= MAX_COUNTER}
    | {1, 2**56 - 2, MAX_COUNTER, (1_700_000_000_000 << 10) + 1023}
)


@pytest.mark.parametrize("counter", VARINT_EDGES)
def test_context_counters_are_minimal_varints_at_every_size(counter: int) -> None:
    encoded = encode_context(clock(a=counter))
    assert encoded == b"\x01\x01\x01a" + reference_varint(counter)
    assert decode_context(encoded) == clock(a=counter)


@given(st.integers(1, MAX_COUNTER), st.integers(1, 2**56))
def test_context_counters_are_minimal_varints(counter: int, clock_sized: int) -> None:
    encoded = encode_context(clock(a=counter, b=clock_sized))
    expected = b"\x01\x02\x01a" + reference_varint(counter) + b"\x01b"
    assert encoded == expected + reference_varint(clock_sized)


def test_context_entry_counts_are_varints() -> None:
    many = VectorClock.from_dict({f"n{index:03d}": 1 for index in range(200)})
    encoded = encode_context(many)
    assert encoded[:3] == b"\x01" + reference_varint(200)
    assert decode_context(encoded) == many
