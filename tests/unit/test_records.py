"""Tests for kvactors.storage.records: the durable record of one key's state."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvactors.core.clocks import MAX_COUNTER, Dot, HlcStamp, VectorClock
from kvactors.core.context import encode_context
from kvactors.core.versions import (
    EMPTY_STATE,
    KeyState,
    Version,
    coordinate_write,
    state_from_wire,
    state_to_wire,
)
from kvactors.storage.records import (
    RECORD_FORMAT,
    RecordFormatError,
    decode_state,
    decode_trusted_state,
    encode_state,
    read_blind_base,
    read_winner,
    read_wire_state,
)

names = st.sampled_from(("a", "b", "node-1")) | st.text(min_size=1, max_size=6)
clocks = st.dictionaries(names, st.integers(0, MAX_COUNTER), max_size=3).map(VectorClock.from_dict)
states = st.builds(
    KeyState.from_versions,
    st.lists(
        st.builds(
            Version,
            st.none() | st.binary(max_size=40),
            st.builds(Dot, names, st.integers(1, MAX_COUNTER)),
            clocks,
            st.builds(HlcStamp, st.integers(0, MAX_COUNTER), st.integers(0, 9), names),
        ),
        max_size=4,
    ),
    clocks,
)


def one_sibling_state() -> KeyState:
    first = coordinate_write(EMPTY_STATE, "n1", VectorClock(), b"x" * 100, HlcStamp(1, 0, "n1"))
    return coordinate_write(first, "n1", first.context, b"y" * 100, HlcStamp(2, 0, "n1"))


@given(states)
@settings(max_examples=60)
def test_roundtrip(state: KeyState) -> None:
    record = encode_state(state)
    assert isinstance(record, bytes)
    assert record[0] == RECORD_FORMAT
    assert decode_state(record) == state


def test_layout_is_the_format_byte_then_winner_context_and_the_wire_form() -> None:
    state = one_sibling_state()
    record = encode_state(state)
    assert record[:1] == b"\x01"
    winner, context, clock, *wire = msgpack.unpackb(record[1:])
    assert wire == state_to_wire(state)
    assert (winner, context) == (b"y" * 100, encode_context(state.context))
    assert clock == [item for entry in state.context.entries for item in entry]
    assert read_winner(record) == (winner, context)
    assert read_blind_base(record) == (True, state.context)
    assert decode_trusted_state(record) == state
    # Compact: the value twice (the winner up front) plus a small fixed overhead.
    assert len(record) <= 2 * 100 + 50
    assert decode_state(encode_state(EMPTY_STATE)) == EMPTY_STATE
    assert read_winner(encode_state(EMPTY_STATE)) == (None, encode_context(VectorClock()))
    assert read_blind_base(encode_state(EMPTY_STATE)) == (False, VectorClock())


def test_a_record_whose_header_disagrees_with_its_versions_is_corrupt() -> None:
    winner, context, clock, *wire = msgpack.unpackb(encode_state(one_sibling_state())[1:])
    for header in ([b"other", context, clock], [winner, b"\x01\x00", clock], [winner, context, []]):
        with pytest.raises(RecordFormatError, match="header"):
            decode_state(b"\x01" + msgpack.packb([*header, *wire]))


@pytest.mark.parametrize(
    "record",
    [
        b"",
        b"\x00",
        b"\x02"
        + msgpack.packb([None, b"\x01\x00", [], [], []]),  # a format this code does not know
        b"\x01",  # no body
        b"\x01\xc1",  # a byte msgpack never uses
        b"\x01" + msgpack.packb([None, b"\x01\x00", [], [], []]) + b"\x00",  # trailing bytes
        b"\x01" + msgpack.packb([[], []]),  # too few fields
        b"\x01" + msgpack.packb({"a": 1}),
        b"\x01" + msgpack.packb({1: 1}),
        b"\x01" + msgpack.packb([None, b"", [], ["a", 0], []]),
        b"\x01" + msgpack.packb([None, b"", [], [], [["v", "a", 1, [], 1, 0, None]]]),  # str
        b"\x01\x95\xc0\xc0\x90\x90\x91\xc4\x05ab",  # bin shorter than announced
        b"\x01\x95\xc0\xc0\x90\x90\x91\x97\xa2\xff\xfe",  # invalid UTF-8 in a name
        b"\x01" + b"\x91" * 5000,  # deeply nested
    ],
)
def test_rejects_unknown_formats_and_corruption(record: bytes) -> None:
    with pytest.raises(RecordFormatError):
        decode_state(record)


def test_record_format_error_is_a_value_error() -> None:
    assert issubclass(RecordFormatError, ValueError)


@given(st.binary(max_size=80))
@settings(max_examples=200)
def test_random_bytes_raise_only_record_format_error(data: bytes) -> None:
    try:
        decode_state(b"\x01" + data)
    except RecordFormatError:
        return


@given(states, st.data())
@settings(max_examples=100)
def test_corrupted_records_decode_or_raise_record_format_error(
    state: KeyState, data: st.DataObject
) -> None:
    record = bytearray(encode_state(state))
    for _ in range(data.draw(st.integers(1, 3))):
        position = data.draw(st.integers(0, len(record) - 1))
        record[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(record)))
    try:
        decoded = decode_state(bytes(record[:cut]))
    except RecordFormatError:
        return
    # A corruption that still decodes is a valid, canonical state.
    assert KeyState(decoded.obsolete, decoded.versions) == decoded


# The trusted readers against the checked decoder: `read_winner` reads the two leading
# fields in place, whatever msgpack size class (bin 8, 16 or 32) each was packed in, and
# `decode_trusted_state` hands on the record's encoded context; `read_wire_state` is the
# state in the form a peer decodes.


@given(states)
@settings(max_examples=60)
def test_trusted_readers_agree_with_the_checked_decoder(state: KeyState) -> None:
    record = encode_state(state)
    checked = decode_state(record)
    winner = checked.winner
    assert read_winner(record) == (
        None if winner is None else winner.value,
        encode_context(checked.context),
    )
    assert read_blind_base(record) == (
        winner is not None and winner.value is not None,
        checked.context,
    )
    trusted = decode_trusted_state(record)
    assert trusted == checked
    assert trusted.encoded_context() == encode_context(checked.context)
    assert state_from_wire(read_wire_state(record)) == checked


@pytest.mark.parametrize("size", [0, 1, 255, 256, 65535, 65536, 70000])
@pytest.mark.parametrize("nodes", [1, 40])  # 40 long names: a context over 255 bytes
def test_read_winner_reads_every_size_of_value_and_context(size: int, nodes: int) -> None:
    state = EMPTY_STATE
    for index in range(nodes):
        node = f"node-{index:02d}".ljust(12, "x")
        state = coordinate_write(state, node, state.context, b"v" * size, HlcStamp(index, 0, node))
    record = encode_state(state)
    context = encode_context(state.context)
    assert (nodes == 1) == (len(context) <= 255)
    assert read_winner(record) == (b"v" * size, context)
    assert decode_trusted_state(record) == state  # a large record is read through a view
    deleted = coordinate_write(state, "node-00", state.context, None, HlcStamp(99, 0, "node-00"))
    assert read_winner(encode_state(deleted)) == (None, encode_context(deleted.context))
