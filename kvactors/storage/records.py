"""The durable record of one key: a replica's `KeyState` as the bytes a table stores.

Layout (format 1)::

    byte 0      RECORD_FORMAT (1)
    bytes 1..   msgpack (bin type for bytes, str for names) of `state_to_wire(state)`:
                [obsolete clock, [version, ...]]
                clock   = [node, counter, ...]           (flat, nodes ascending)
                version = [value (bin or nil), dot node, dot counter, past clock,
                           stamp wall_ms, stamp logical, stamp node (nil: the dot's node)]

A 1-sibling record with an empty obsolete clock and a one-entry past costs the value plus
about 25 bytes. The leading byte lets a later format be read beside this one; a record in
an unknown format, or one that does not decode to a valid state, raises
`RecordFormatError` (a ValueError) and never any other exception.

Every put decodes and encodes one record, so both sides avoid work a valid state does not
need: `decode_state` validates every field (a corrupt record must not become a state) but
builds the result in one pass.
"""

from __future__ import annotations

import msgpack

from kvactors.distribution.versions import (
    KeyState,
    state_from_wire,
    state_to_wire,
    trusted_state_from_wire,
)

__all__ = [
    "RECORD_FORMAT",
    "RecordFormatError",
    "decode_state",
    "decode_trusted_state",
    "encode_state",
]

RECORD_FORMAT = 1
_FORMAT_PREFIX = bytes((RECORD_FORMAT,))


class RecordFormatError(ValueError):
    """Stored bytes that are not a record this code can read."""


def encode_state(state: KeyState) -> bytes:
    """The record for `state`; `decode_state` gives back an equal state."""
    packed: bytes = msgpack.packb(state_to_wire(state), use_bin_type=True)
    return _FORMAT_PREFIX + packed


def decode_state(data: bytes) -> KeyState:
    """The state a record holds; raises RecordFormatError on an unknown format or corruption."""
    if not data:
        raise RecordFormatError("empty record")
    if data[0] != RECORD_FORMAT:
        raise RecordFormatError(f"unknown record format {data[0]}")
    try:
        wire = msgpack.unpackb(data[1:], raw=False, strict_map_key=True)
        return state_from_wire(wire)
    except (ValueError, TypeError, msgpack.UnpackException) as error:
        raise RecordFormatError(f"corrupt record: {error}") from error


def decode_trusted_state(data: bytes) -> KeyState:
    """`decode_state` for a record this process wrote and kept in its own memory: no
    checks, so it costs little more than unpacking. Never for bytes from a disk or a peer."""
    return trusted_state_from_wire(_unpack(memoryview(data)[1:]))


def _unpack(data: memoryview) -> object:
    return msgpack.unpackb(data, raw=False, use_list=True)
