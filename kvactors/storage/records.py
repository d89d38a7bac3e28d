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

The leading byte lets a later format be read beside this one; a record in an unknown
format, or one that does not decode to a valid state, raises `RecordFormatError` (a
ValueError) and never any other exception. `decode_state` checks everything (for bytes
from a disk or a peer); the `trusted` readers check nothing, for records this process
wrote into its own memory.
"""

from __future__ import annotations

from typing import Any

import msgpack

from kvactors.distribution.versions import (
    KeyState,
    VectorClock,
    encode_context,
    state_from_wire,
    state_to_wire,
    trusted_clock_from_flat,
    trusted_state_from_wire,
)

__all__ = [
    "RECORD_FORMAT",
    "RecordFormatError",
    "decode_state",
    "decode_trusted_state",
    "encode_state",
    "read_blind_base",
    "read_winner",
]

RECORD_FORMAT = 1
_FORMAT_PREFIX = bytes((RECORD_FORMAT,))
_FIELDS = 5


class RecordFormatError(ValueError):
    """Stored bytes that are not a record this code can read."""


def encode_state(state: KeyState) -> bytes:
    """The record for `state`; `decode_state` gives back an equal state."""
    winner = state.winner
    obsolete, versions = state_to_wire(state)
    context = state.context  # computed once for both forms
    fields = [
        None if winner is None else winner.value,
        encode_context(context),
        [item for entry in context.entries for item in entry],
        obsolete,
        versions,
    ]
    packed: bytes = msgpack.packb(fields, use_bin_type=True)
    return _FORMAT_PREFIX + packed


def decode_state(data: bytes) -> KeyState:
    """The state a record holds; raises RecordFormatError on an unknown format or corruption."""
    if not data:
        raise RecordFormatError("empty record")
    if data[0] != RECORD_FORMAT:
        raise RecordFormatError(f"unknown record format {data[0]}")
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
    flat = [item for entry in state.context.entries for item in entry]
    if (
        value != (None if winner is None else winner.value)
        or context != state.encoded_context()
        or clock != flat
    ):
        raise RecordFormatError("corrupt record: its header does not match its versions")
    return state


def decode_trusted_state(data: bytes) -> KeyState:
    """`decode_state` for a record this process wrote and kept in its own memory: no
    checks, so it costs little more than unpacking. Never for bytes from a disk or a peer."""
    fields = _unpack(data)
    return trusted_state_from_wire(fields[3:])


def read_winner(data: bytes) -> tuple[bytes | None, bytes]:
    """(winning value or None, encoded context) of a record this process wrote: what a
    plain get answers, without building the state."""
    fields = _unpack(data)
    return fields[0], fields[1]


def read_blind_base(data: bytes) -> tuple[bool, VectorClock]:
    """(a live value is there, the key's context as a clock) of a record this process
    wrote: all a write without a client context needs (`blind_write`)."""
    fields = _unpack(data)
    return fields[0] is not None, trusted_clock_from_flat(fields[2])


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(memoryview(data)[1:], raw=False, use_list=True)
