"""Keys and values as the store keeps them: keys as bytes, values as msgpack bytes.

The data model clients see (docs/protocol.md, "Request fields"). A key is str (stored
as its UTF-8 bytes, so "a" and b"a" are the same key) or bytes. A value is anything
msgpack encodes; it is stored encoded, so the store never holds a caller's mutable
object and never pickles.
"""

from __future__ import annotations

from typing import Any

import msgpack

from kvactors.errors import BadRequestError, TooLargeError

__all__ = ["Key", "decode_value", "encode_value", "normalize_key"]

Key = str | bytes
"""What callers may use as a key."""


def normalize_key(key: object, max_bytes: int) -> bytes:
    """The stored form of a key; raises BadRequestError or TooLargeError."""
    if isinstance(key, bytes):
        raw = key
    elif isinstance(key, str):
        try:
            raw = key.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise BadRequestError(f"key is not valid UTF-8: {exc.reason}") from None
    elif isinstance(key, bytearray | memoryview):
        raw = bytes(key)
    else:
        raise BadRequestError(f"key must be str or bytes, not {type(key).__name__}")
    if len(raw) > max_bytes:
        raise TooLargeError(f"key is {len(raw)} bytes; the limit is {max_bytes}")
    return raw


def encode_value(value: Any, max_bytes: int) -> bytes:
    """The msgpack encoding of a value; raises BadRequestError or TooLargeError."""
    try:
        encoded: bytes = msgpack.packb(value, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise BadRequestError(f"value cannot be stored as msgpack: {exc}") from None
    if len(encoded) > max_bytes:
        raise TooLargeError(f"value is {len(encoded)} bytes encoded; the limit is {max_bytes}")
    return encoded


def decode_value(encoded: bytes) -> Any:
    """A fresh object from a stored value (lists for tuples, as msgpack has no tuple)."""
    # Stored bytes were encoded by us, so any map key msgpack produced is acceptable.
    return msgpack.unpackb(encoded, raw=False, strict_map_key=False)
