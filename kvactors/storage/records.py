"""The record of one key: a replica's `KeyState` as the bytes a table stores.

Layout (format 1)::

    byte 0      RECORD_FORMAT (1)
    bytes 1..   msgpack (bin type for bytes, str for names) of a 5-element array:
                [winner value (bin, or nil when missing or deleted),
                 context (bin: the encoded causal context of the whole state),
                 context clock (the same context as a clock),
                 obsolete clock,
                 [version, ...]]
                clock   = [node, counter, ...]           (flat, nodes ascending)
                version = [value (bin or nil), dot node, dot counter, past clock,
                           stamp wall_ms, stamp logical, stamp node (nil: the dot's node)]

The last two elements are `state_to_wire(state)`; the first three are derived from it and
kept in front so that the commonest operations need no state at all: a read of the
winning value with its context (`read_winner`), and a write without a client context,
which supersedes everything and so needs only the context (`read_blind_base`). A
1-sibling record costs the value twice plus about 50 bytes.

The leading byte lets a later format be read beside this one. Every reader checks it
first (one byte compare), so a record of another format is refused, never misread: it
raises `RecordFormatError`, a `StorageError` (so a request that meets one fails with an
``internal`` error and the store keeps serving) and a ValueError, whose message names the
format found and the one this code reads. `decode_state` checks everything else too (for
bytes from a disk or a peer), and raises RecordFormatError on any corruption, never any
other exception; the `trusted` readers check nothing but the format byte, for records
this process wrote.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from itertools import chain
from typing import Any

import msgpack

from kvactors.core.clocks import VectorClock
from kvactors.core.context import MAX_NODE_NAME_BYTES
from kvactors.core.versions import (
    KeyState,
    flat_entries,
    state_from_wire,
    state_to_wire,
    trusted_clock_from_flat,
    trusted_state_from_parts,
)
from kvactors.errors import StorageError

__all__ = [
    "RECORD_FORMAT",
    "RecordFormatError",
    "decode_state",
    "decode_trusted_state",
    "encode_state",
    "read_blind_base",
    "read_winner",
    "read_wire_state",
    "record_size_bound",
]

RECORD_FORMAT = 1
_FORMAT_PREFIX = bytes((RECORD_FORMAT,))
_FIELDS = 5


class RecordFormatError(StorageError, ValueError):
    """Stored bytes that are not a record this code can read: another format, or corrupt."""


def _format_error(data: bytes) -> RecordFormatError:
    """The error for a record whose first byte is not RECORD_FORMAT: it names both formats."""
    if not data:
        return RecordFormatError("empty record")
    return RecordFormatError(
        f"record format {data[0]} is not one this node reads (it reads record format "
        f"{RECORD_FORMAT})"
    )


class _ThreadPacker(threading.local):
    """One reusable msgpack Packer per thread: `msgpack.packb` builds a Packer (and its
    buffer) per call, which costs more than packing a small record."""

    def __init__(self) -> None:
        self.pack: Callable[[Any], bytes] = msgpack.Packer().pack


_PACKER = _ThreadPacker()


def encode_state(state: KeyState) -> bytes:
    """The record for `state`; `decode_state` gives back an equal state."""
    versions = state.versions
    fields = [
        versions[0].value if versions else None,
        state.encoded_context(),  # kept by the state, for whoever reads it next
        flat_entries(state.context.entries),  # msgpack packs a tuple as an array
        *state_to_wire(state),
    ]
    # msgpack >= 1.0 (setup.cfg) packs bytes as bin and str as str by default.
    return _FORMAT_PREFIX + _PACKER.pack(fields)


# Upper bounds of the parts of a record, for `record_size_bound`. A clock entry: a name
# (msgpack str header and bytes) and a uint64, or in a context a name's length, its bytes
# and a varint. A version: its array, value and past headers, a dot, a stamp and two
# names at most.
_ENTRY_BOUND = MAX_NODE_NAME_BYTES + 3 + 9
_VERSION_BOUND = 2 * (MAX_NODE_NAME_BYTES + 3) + 5 * 9
_RECORD_BOUND = 64


def record_size_bound(state: KeyState) -> int:
    """At least `len(encode_state(state))`, from counts alone (no name is measured, no
    byte encoded): cheap enough to ask of every write, and close enough that only a
    state near a size limit needs encoding to know its size."""
    versions = state.versions
    entries = 2 * len(state.context.entries) + len(state.obsolete.entries)
    if len(versions) == 1:  # the usual state: the loop below, unrolled
        only = versions[0]
        value = only.value
        size = 0 if value is None else len(value)
        entries += len(only.past.entries)
        return _RECORD_BOUND + _VERSION_BOUND + 2 * size + entries * _ENTRY_BOUND
    size = _RECORD_BOUND + (len(versions[0].value or b"") if versions else 0)
    for version in versions:
        entries += len(version.past.entries)
        size += _VERSION_BOUND + len(version.value or b"")
    return size + entries * _ENTRY_BOUND


def decode_state(data: bytes) -> KeyState:
    """The state a record holds; raises RecordFormatError on another format or corruption."""
    if data[:1] != _FORMAT_PREFIX:
        raise _format_error(data)
    try:
        fields = msgpack.unpackb(data[1:], raw=False, strict_map_key=True)
        if not isinstance(fields, list) or len(fields) != _FIELDS:
            raise RecordFormatError("a record holds [value, context, clock, obsolete, versions]")
        value, context, clock, obsolete, versions = fields
        state = state_from_wire([obsolete, versions])
    except (ValueError, TypeError, msgpack.UnpackException) as error:
        if isinstance(error, RecordFormatError):
            raise
        raise RecordFormatError(f"corrupt record: {error}") from error
    winner = state.winner
    flat = list(chain(*state.context.entries))
    if (
        value != (None if winner is None else winner.value)
        or context != state.encoded_context()
        or clock != flat
    ):
        raise RecordFormatError("corrupt record: its header does not match its versions")
    return state


def decode_trusted_state(data: bytes) -> KeyState:
    """`decode_state` for a record this process wrote (in memory or on its disk): no
    checks but the format byte, so it costs little more than unpacking. Never for bytes
    from a peer."""
    _, context, _, obsolete, versions = _unpack(data)
    # The state keeps the record's encoded context: a get that reads it needs no encoding.
    return trusted_state_from_parts(obsolete, versions, context)


def read_winner(data: bytes) -> tuple[bytes | None, bytes]:
    """(winning value or None, encoded context) of a record this process wrote: what a
    plain get answers, without building the state."""
    # Every reader checks the format byte inline (a call would cost more than the compare).
    if data[:1] != _FORMAT_PREFIX:
        raise _format_error(data)
    # The two leading fields are read in place, leaving the clocks and versions packed:
    # `_bin_at` twice, unrolled (every get comes here). The value is nil or bin...
    marker = data[_FIRST_FIELD]
    if marker == _NIL:
        value = None
        position = _FIRST_FIELD + 1
    else:
        if marker == _BIN8:
            start = _FIRST_FIELD + 2
            position = start + data[_FIRST_FIELD + 1]
        else:
            start = _FIRST_FIELD + (3 if marker == _BIN16 else 5)
            position = start + int.from_bytes(data[_FIRST_FIELD + 1 : start], "big")
        value = data[start:position]
    # ... and the context is bin, shorter than 64 KiB but for a history of 256 long names.
    marker = data[position]
    if marker == _BIN8:
        start = position + 2
        return value, data[start : start + data[position + 1]]
    context, _ = _bin_at(data, position)
    assert context is not None  # every record has a context
    return value, context


def read_blind_base(data: bytes) -> tuple[bool, VectorClock]:
    """(a live value is there, the key's context as a clock) of a record this process
    wrote: all a write without a client context needs (`blind_write`)."""
    # `_unpack`, inlined: every write without a context comes here.
    if data[:1] != _FORMAT_PREFIX:
        raise _format_error(data)
    fields = msgpack.unpackb(data[1:] if len(data) <= _SMALL_RECORD else memoryview(data)[1:])
    return fields[0] is not None, trusted_clock_from_flat(fields[2])


def read_wire_state(data: bytes) -> list[Any]:
    """The state of a record this process wrote, in `state_to_wire` form, without
    building it: what a peer is sent. (The receiver checks it: `state_from_wire`.)"""
    wire: list[Any] = _unpack(data)[3:]
    return wire


# Below the size, copying a record's body costs less than a memoryview of it.
_SMALL_RECORD = 4096


def _unpack(data: bytes) -> Any:
    if data[:1] != _FORMAT_PREFIX:
        raise _format_error(data)
    body = data[1:] if len(data) <= _SMALL_RECORD else memoryview(data)[1:]
    return msgpack.unpackb(body)  # msgpack >= 1.0: str as str, arrays as lists


# The first field of a record this process wrote: after the format byte and the msgpack
# header of a 5-element array (one byte, 0x95).
_FIRST_FIELD = 2
_NIL = 0xC0
_BIN8, _BIN16 = 0xC4, 0xC5  # else bin 32; the length follows in 1, 2 or 4 bytes


def _bin_at(data: bytes, position: int) -> tuple[bytes | None, int]:
    """(the msgpack bin or nil at `position` of a record this process wrote, the position
    after it). No checks: for trusted records only."""
    marker = data[position]
    if marker == _NIL:
        return None, position + 1
    if marker == _BIN8:
        start = position + 2
        end = start + data[position + 1]
    else:
        start = position + (3 if marker == _BIN16 else 5)
        end = start + int.from_bytes(data[position + 1 : start], "big")
    return data[start:end], end
