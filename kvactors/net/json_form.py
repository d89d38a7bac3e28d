"""The JSON form of the msgpack data model, both ways, for clients that speak JSON
(docs/protocol.md, "Bytes in JSON"): bytes are ``{"$bytes": "<base64>"}``, a map JSON
cannot write as an object is ``{"$map": [[key, value], ...]}``, integers fit in 64 bits.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any, Final

import msgpack

from kvactors.errors import BadRequestError

__all__ = [
    "BYTES_TAG",
    "MAP_TAG",
    "bytes_from_json",
    "decode_plain_json",
    "dump_json",
    "json_ready",
    "map_from_json_pairs",
    "parse_json_int",
    "type_name",
]

BYTES_TAG: Final = "$bytes"
MAP_TAG: Final = "$map"
_MAX_JSON_INT_CHARS: Final = 24  # 64-bit ints need at most 20; longer text is refused unparsed
_TYPE_NAMES: Final[Mapping[type, str]] = {
    bool: "boolean",
    int: "integer",
    float: "float",
    str: "string",
    bytes: "bytes",
    list: "array",
    dict: "map",
    type(None): "null",
}


def type_name(value: object) -> str:
    """What a client calls the type of `value` (a decoded msgpack or JSON value)."""
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def map_from_json_pairs(pairs: list[tuple[str, Any]]) -> Any:
    """object_pairs_hook for json: undo the $bytes and $map forms while parsing, without a
    second walk."""
    if len(pairs) == 1:
        name, content = pairs[0]
        if name == BYTES_TAG:
            return bytes_from_json(content)
        if name == MAP_TAG:
            return _map_from_json_entries(content)
    return dict(pairs)


def bytes_from_json(content: Any) -> bytes:
    """The bytes of a $bytes member's content; BadRequestError unless it is base64."""
    if type(content) is not str:
        raise BadRequestError(f"$bytes must be a base64 string, got {type_name(content)}")
    try:
        return base64.b64decode(content, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequestError("$bytes is not valid base64") from None


def _map_from_json_entries(content: Any) -> dict[str | bytes, Any]:
    if type(content) is not list:
        raise BadRequestError(
            f"$map must be an array of [key, value] pairs, got {type_name(content)}"
        )
    result: dict[str | bytes, Any] = {}
    for entry in content:
        if type(entry) is not list or len(entry) != 2:
            raise BadRequestError("$map must be an array of [key, value] pairs")
        key, value = entry
        if type(key) is not str and type(key) is not bytes:
            raise BadRequestError(f"$map keys must be strings or $bytes, got {type_name(key)}")
        result[key] = value
    return result


def parse_json_int(text: str) -> int:
    """parse_int for json: an integer of at most 64 bits' digits; BadRequestError otherwise."""
    # Refuse before converting: int() of a megabyte of digits is slow, and such a number
    # could never be stored anyway.
    if len(text) > _MAX_JSON_INT_CHARS:
        raise BadRequestError("JSON integer is too long; integers must fit in 64 bits")
    return int(text)


def _json_int_or_none(text: str) -> int | None:
    return None if len(text) > _MAX_JSON_INT_CHARS else int(text)


_PLAIN_JSON_DECODER: Final = json.JSONDecoder(parse_int=_json_int_or_none)


def decode_plain_json(text: str) -> Any:
    """JSON read without the $bytes, $map and integer checks (an integer too long to read
    becomes None), only to find the id of a request the checks refused."""
    return _PLAIN_JSON_DECODER.decode(text)


def _map_to_json(pairs: list[tuple[Any, Any]]) -> Any:
    """object_pairs_hook for msgpack: maps JSON cannot write as objects become $map."""
    looks_tagged = len(pairs) == 1 and pairs[0][0] in (BYTES_TAG, MAP_TAG)
    if not looks_tagged and all(type(key) is str for key, _ in pairs):
        return dict(pairs)
    return {MAP_TAG: [[key, value] for key, value in pairs]}


def _json_default(value: object) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return {BYTES_TAG: base64.b64encode(value).decode("ascii")}
    raise TypeError(f"{type(value).__name__} cannot be written as JSON")


def json_ready(packed: bytes) -> Any:
    """A msgpack encoding decoded into objects json can write (bytes are left to default)."""
    return msgpack.unpackb(packed, raw=False, strict_map_key=False, object_pairs_hook=_map_to_json)


_JSON_ENCODER: Final = json.JSONEncoder(default=_json_default, separators=(",", ":"))


def dump_json(obj: Any) -> bytes:
    """`obj` as compact JSON, bytes written in the $bytes form."""
    return _JSON_ENCODER.encode(obj).encode("ascii")
