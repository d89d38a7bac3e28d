"""Tests for kvactors.net.protocol: request decoding and validation, the id echoed in
replies, requests as clients encode them."""

from __future__ import annotations

import ast
import base64
import json
import math
import pickle
import tracemalloc
from pathlib import Path
from types import ModuleType
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvactors.config import NodeConfig
from kvactors.errors import (
    BadRequestError,
    KVActorsError,
    TooLargeError,
)
from kvactors.net import json_form, protocol, replies
from kvactors.net.protocol import (
    Codec,
    Op,
    ProtocolError,
    ProtocolTooLargeError,
    PutItem,
    Request,
    WireFormat,
    encode_request,
)
from kvactors.net.replies import (
    decode_reply,
    encode_error,
    encode_reply,
    get_reply,
    ping_reply,
    put_reply,
)

MSGPACK = WireFormat.MSGPACK
JSON = WireFormat.JSON
CODEC = Codec()
# Small limits so that limit tests need small frames.
SMALL = Codec(
    max_key_bytes=16,
    max_value_bytes=64,
    max_frame_bytes=400,
    max_context_bytes=8,
    max_batch_items=3,
)


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj)  # type: ignore[no-any-return]


def as_json(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def b64(data: bytes) -> dict[str, str]:
    return {"$bytes": base64.b64encode(data).decode()}


def jsonable(obj: Any) -> Any:
    """`obj` with bytes values written the documented JSON way (bytes keys as Latin-1)."""
    if isinstance(obj, bytes):
        return b64(obj)
    if isinstance(obj, list | tuple):
        return [jsonable(item) for item in obj]
    if isinstance(obj, dict):
        return {
            key.decode("latin-1") if isinstance(key, bytes) else key: jsonable(value)
            for key, value in obj.items()
        }
    return obj


def frame_in(fmt: WireFormat, obj: dict[str, Any]) -> bytes:
    """`obj` as a request frame in `fmt`."""
    return pack(obj) if fmt is MSGPACK else as_json(jsonable(obj))


def rejected(frame: bytes, codec: Codec = CODEC) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        codec.decode_request(frame)
    return caught.value


def both_formats(test: Any) -> Any:
    return pytest.mark.parametrize("fmt", [MSGPACK, JSON], ids=["msgpack", "json"])(test)


# -- each op ------------------------------------------------------------------------------


@both_formats
def test_put_with_every_field(fmt: WireFormat) -> None:
    frame = frame_in(
        fmt,
        {
            "op": "put",
            "key": "user:1",
            "value": {"name": "Ada", "langs": ["en", 2]},
            "id": 7,
            "context": b"\x01ctx",
            "w": 2,
            "timeout_ms": 1500,
        },
    )
    request = CODEC.decode_request(frame)
    assert request.op is Op.PUT
    assert request.fmt is fmt
    assert request.key == b"user:1"
    assert request.value_bytes == pack({"name": "Ada", "langs": ["en", 2]})
    assert (request.request_id, request.context, request.w, request.timeout_ms) == (
        7,
        b"\x01ctx",
        2,
        1500,
    )
    assert request.r is None


@both_formats
def test_get_with_every_field(fmt: WireFormat) -> None:
    frame = frame_in(
        fmt, {"op": "get", "key": "k", "id": "req-8", "r": 3, "siblings": True, "timeout_ms": 9}
    )
    request = CODEC.decode_request(frame)
    assert (request.op, request.key, request.request_id) == (Op.GET, b"k", "req-8")
    assert (request.r, request.siblings, request.timeout_ms) == (3, True, 9)
    assert request.value_bytes == b""


@both_formats
def test_get_defaults_when_optional_fields_are_absent_or_null(fmt: WireFormat) -> None:
    bare = CODEC.decode_request(frame_in(fmt, {"op": "get", "key": "k"}))
    nulls = CODEC.decode_request(
        frame_in(fmt, {"op": "get", "key": "k", "id": None, "r": None, "siblings": None})
    )
    for request in (bare, nulls):
        assert (request.request_id, request.r, request.siblings, request.timeout_ms) == (
            None,
            None,
            False,
            None,
        )


@both_formats
def test_delete(fmt: WireFormat) -> None:
    frame = frame_in(fmt, {"op": "delete", "key": b"\xffraw", "id": 9, "context": b"c", "w": 1})
    request = CODEC.decode_request(frame)
    assert (request.op, request.key, request.context, request.w) == (
        Op.DELETE,
        b"\xffraw",
        b"c",
        1,
    )


def test_get_many_and_put_many() -> None:
    get_many = CODEC.decode_request(
        pack({"op": "get_many", "keys": ["a", b"b", "é"], "r": 1, "siblings": False})
    )
    assert get_many.op is Op.GET_MANY
    assert get_many.keys == (b"a", b"b", "é".encode())
    put_many = CODEC.decode_request(
        pack({"op": "put_many", "items": [["a", 1], [b"b", [True, None], b"ctx"]], "w": 3})
    )
    assert put_many.op is Op.PUT_MANY
    assert put_many.items == (
        PutItem(b"a", pack(1), None),
        PutItem(b"b", pack([True, None]), b"ctx"),
    )
    assert put_many.w == 3


@both_formats
@pytest.mark.parametrize("op", [Op.PING, Op.STATUS])
def test_ping_and_status(fmt: WireFormat, op: Op) -> None:
    request = CODEC.decode_request(frame_in(fmt, {"op": op.value, "id": 1}))
    assert (request.op, request.request_id, request.key) == (op, 1, b"")


@both_formats
def test_operation_is_an_alias_of_op(fmt: WireFormat) -> None:
    aliased = CODEC.decode_request(frame_in(fmt, {"operation": "get", "key": "k", "id": 1}))
    both = CODEC.decode_request(frame_in(fmt, {"op": "get", "operation": "get", "key": "k"}))
    assert aliased.op is Op.GET and aliased.key == b"k"
    assert both.op is Op.GET
    error = rejected(frame_in(fmt, {"op": "get", "operation": "put", "key": "k", "id": 2}))
    assert error.code == "bad_request" and "disagree" in str(error)
    assert error.request_id == 2


def test_str_and_bytes_keys_are_the_same_key_as_utf8() -> None:
    by_text = CODEC.decode_request(pack({"op": "get", "key": "ключ"}))
    by_bytes = CODEC.decode_request(pack({"op": "get", "key": "ключ".encode()}))
    by_json = CODEC.decode_request(as_json({"op": "get", "key": "ключ"}))
    assert by_text.key == by_bytes.key == by_json.key == "ключ".encode()


def test_value_bytes_is_the_canonical_msgpack_encoding() -> None:
    # A str8 header for a 3-character string is valid but not canonical (fixstr is).
    frame = b"\x83\xa2op\xa3put\xa3key\xa1k\xa5value\xd9\x03abc"
    request = CODEC.decode_request(frame)
    assert request.value_bytes == b"\xa3abc" == pack("abc")
    assert msgpack.unpackb(request.value_bytes) == "abc"


def test_request_is_immutable() -> None:
    request = CODEC.decode_request(pack({"op": "get", "key": "k"}))
    with pytest.raises(AttributeError):
        request.key = b"other"  # type: ignore[misc]


# -- envelope independence ----------------------------------------------------------------


def test_codec_takes_the_payload_frame_in_any_buffer_type() -> None:
    # A DEALER client may send [b"", frame] or [frame]: the transport strips the
    # envelope and the codec sees the same payload frame, whatever buffer holds it.
    frame = pack({"op": "get", "key": "k", "id": 3})
    expected = CODEC.decode_request(frame)
    assert CODEC.decode_request(bytearray(frame)) == expected
    assert CODEC.decode_request(memoryview(frame)) == expected


def test_envelope_frames_given_as_payload_are_bad_requests_not_crashes() -> None:
    empty_delimiter = rejected(b"")
    assert (empty_delimiter.code, empty_delimiter.fmt) == ("bad_request", MSGPACK)
    routing_id = rejected(b"\x00\x80\x00\x41\xa7")  # a ROUTER-made identity
    assert routing_id.code == "bad_request"


def test_replies_are_one_self_contained_frame() -> None:
    frame = encode_reply(put_reply(5), MSGPACK)
    assert isinstance(frame, bytes)
    assert msgpack.unpackb(frame) == {"ok": True, "id": 5}


# -- id echo ------------------------------------------------------------------------------


@both_formats
@pytest.mark.parametrize("request_id", [0, -(2**63), 2**64 - 1, "", "a" * 256, "é" * 128, b"\x00"])
def test_id_is_echoed_in_success_replies(fmt: WireFormat, request_id: Any) -> None:
    request = CODEC.decode_request(frame_in(fmt, {"op": "ping", "id": request_id}))
    reply = decode_reply(encode_reply(ping_reply(request.request_id), request.fmt))
    assert reply == {"ok": True, "id": request_id}


@both_formats
def test_id_is_echoed_in_error_replies(fmt: WireFormat) -> None:
    error = rejected(frame_in(fmt, {"op": "get", "key": 12, "id": "abc"}))
    assert (error.fmt, error.request_id) == (fmt, "abc")
    frame = encode_error(error, error.request_id, error.fmt)
    assert frame.startswith(b"{") == (fmt is JSON)
    reply = decode_reply(frame)
    assert reply["ok"] is False and reply["id"] == "abc"
    assert reply["error"]["code"] == "bad_request"
    assert "key must be str or bytes" in reply["error"]["message"]


@pytest.mark.parametrize(
    ("prefix", "suffix"),
    [(b"\x84\xa2id\x05", b""), (b"\x84", b"\xa2id\x05")],
    ids=["first", "last"],
)
def test_id_is_recovered_from_a_frame_that_fails_to_decode(prefix: bytes, suffix: bytes) -> None:
    # The value holds an extension type, so the frame as a whole cannot be decoded.
    frame = prefix + b"\xa2op\xa3put\xa3key\xa1k\xa5value\xd4\x05\x00" + suffix
    error = rejected(frame)
    assert error.request_id == 5
    assert "extension" in str(error)


def test_an_invalid_id_is_not_echoed() -> None:
    error = rejected(pack({"op": "ping", "id": 1.5}))
    assert error.request_id is None
    assert "id must be" in str(error)
    assert "id" not in decode_reply(encode_error(error, 1.5, MSGPACK))


# -- every error path ---------------------------------------------------------------------

LONG = "x" * 257
BAD_FIELDS = [
    ({"key": "k"}, "op is required"),
    ({"op": "fly", "key": "k"}, "unknown op 'fly'"),
    ({"op": "GET", "key": "k"}, "unknown op"),
    ({"op": 3, "key": "k"}, "op must be a string"),
    ({"op": None, "key": "k"}, "op must be a string"),
    ({"op": "get"}, "key is required"),
    ({"op": "get", "key": 12}, "key must be str or bytes"),
    ({"op": "get", "key": None}, "key must be str or bytes"),
    ({"op": "get", "key": ["k"]}, "key must be str or bytes"),
    ({"op": "put", "key": "k"}, "value is required"),
    ({"op": "put", "key": "k", "value": 1, "context": "text"}, "context must be bytes"),
    ({"op": "delete", "key": "k", "context": 5}, "context must be bytes"),
    ({"op": "get", "key": "k", "r": 0}, "r must be a positive integer"),
    ({"op": "get", "key": "k", "r": -1}, "r must be a positive integer"),
    ({"op": "get", "key": "k", "r": "2"}, "r must be a positive integer"),
    ({"op": "get", "key": "k", "r": True}, "r must be a positive integer"),
    ({"op": "get", "key": "k", "r": 2.0}, "r must be a positive integer"),
    ({"op": "put", "key": "k", "value": 1, "w": 2**31}, "w must be a positive integer"),
    ({"op": "delete", "key": "k", "w": [1]}, "w must be a positive integer"),
    ({"op": "ping", "timeout_ms": 0}, "timeout_ms must be a positive integer"),
    ({"op": "get", "key": "k", "siblings": 1}, "siblings must be a boolean"),
    ({"op": "get", "key": "k", "siblings": "yes"}, "siblings must be a boolean"),
    ({"op": "ping", "id": 1.5}, "id must be an integer, string or bytes"),
    ({"op": "ping", "id": True}, "id must be an integer, string or bytes"),
    ({"op": "ping", "id": [1]}, "id must be an integer, string or bytes"),
    ({"op": "ping", "id": LONG}, "id is longer than 256 bytes"),
    ({"op": "ping", "id": "é" * 129}, "id is longer than 256 bytes"),
    ({"op": "get", "key": "k", "value": 1}, "get does not take the field(s) 'value'"),
    ({"op": "get", "key": "k", "vlaue": 1}, "'vlaue'"),
    ({"op": "ping", "key": "k"}, "ping does not take"),
    ({"op": "get_many"}, "keys is required"),
    ({"op": "get_many", "keys": "k"}, "keys must be an array"),
    ({"op": "get_many", "keys": []}, "keys must not be empty"),
    ({"op": "get_many", "keys": ["a", 5]}, "keys[1]: key must be str or bytes"),
    ({"op": "put_many"}, "items is required"),
    ({"op": "put_many", "items": {"a": 1}}, "items must be an array"),
    ({"op": "put_many", "items": []}, "items must not be empty"),
    ({"op": "put_many", "items": ["a"]}, "items[0] must be [key, value]"),
    ({"op": "put_many", "items": [["a"]]}, "items[0] must be [key, value]"),
    ({"op": "put_many", "items": [["a", 1, b"c", 4]]}, "items[0] must be [key, value]"),
    ({"op": "put_many", "items": [["a", 1], [2, 1]]}, "items[1] key: key must be str or bytes"),
    ({"op": "put_many", "items": [["a", 1, "ctx"]]}, "items[0] context must be bytes"),
]


@both_formats
@pytest.mark.parametrize(("fields", "fragment"), BAD_FIELDS)
def test_bad_fields_are_bad_requests_naming_the_field(
    fmt: WireFormat, fields: dict[str, Any], fragment: str
) -> None:
    error = rejected(frame_in(fmt, {**fields, "id": 77} if "id" not in fields else fields))
    assert type(error) is ProtocolError
    assert error.code == "bad_request"
    assert fragment in str(error)
    assert error.fmt is fmt
    if "id" not in fields:
        assert error.request_id == 77


def test_unknown_top_level_bytes_field_is_named() -> None:
    error = rejected(pack({"op": "get", "key": "k", b"op": "x"}))
    assert "b'op'" in str(error)


TOO_LARGE = [
    ({"op": "get", "key": "k" * 17}, "key is 17 bytes"),
    ({"op": "get", "key": "é" * 9}, "key is 18 bytes"),  # UTF-8 bytes are what count
    ({"op": "get", "key": b"k" * 17}, "key is 17 bytes"),
    ({"op": "put", "key": "k", "value": b"v" * 63}, "value is 65 bytes"),
    ({"op": "put", "key": "k", "value": ["v" * 31, "w" * 31]}, "value is 65 bytes"),
    ({"op": "put", "key": "k", "value": 1, "context": b"c" * 9}, "context is 9 bytes"),
    ({"op": "get_many", "keys": ["a", "k" * 17]}, "keys[1]: key is 17 bytes"),
    ({"op": "put_many", "items": [["k", b"v" * 63]]}, "items[0] value: value is 65 bytes"),
]


@both_formats
@pytest.mark.parametrize(("fields", "fragment"), TOO_LARGE)
def test_oversized_fields_are_too_large(
    fmt: WireFormat, fields: dict[str, Any], fragment: str
) -> None:
    error = rejected(frame_in(fmt, {**fields, "id": 4}), SMALL)
    assert isinstance(error, ProtocolTooLargeError)
    assert isinstance(error, TooLargeError)
    assert error.code == "too_large"
    assert fragment in str(error)
    assert (error.fmt, error.request_id) == (fmt, 4)


@both_formats
def test_fields_at_their_limits_are_accepted(fmt: WireFormat) -> None:
    put = SMALL.decode_request(
        frame_in(fmt, {"op": "put", "key": "é" * 8, "value": b"v" * 62, "context": b"c" * 8})
    )
    assert (len(put.key), len(put.value_bytes), len(put.context or b"")) == (16, 64, 8)
    batch = SMALL.decode_request(frame_in(fmt, {"op": "get_many", "keys": ["a", "b", "c"]}))
    assert len(batch.keys) == 3


def test_too_many_batch_entries() -> None:
    error = rejected(pack({"op": "get_many", "keys": ["a", "b", "c", "d"]}), SMALL)
    assert error.code == "bad_request" and "the limit is 3" in str(error)


@both_formats
def test_frame_over_the_limit_is_too_large_in_its_own_format(fmt: WireFormat) -> None:
    fields = {"op": "put", "key": "k", "value": "v" * 400, "id": 1}
    error = rejected(frame_in(fmt, fields), SMALL)
    assert (error.code, error.fmt) == ("too_large", fmt)
    assert "frame is" in str(error)


def test_default_frame_limit_fits_a_largest_bytes_value_sent_as_json() -> None:
    codec = Codec()
    value = b"\xff" * (codec.max_value_bytes - 5)  # bin32 header is 5 bytes
    frame = as_json({"op": "put", "key": "k" * codec.max_key_bytes, "value": b64(value)})
    assert len(frame) > codec.max_value_bytes  # base64 made it bigger...
    assert codec.decode_request(frame).value_bytes == pack(value)  # ...and it still fits


MALFORMED_MSGPACK = [
    (b"\x81\x01\x02", "map keys must be str or bytes"),
    (pack({"op": "put", "key": "k", "value": {1: 2}}), "map keys must be str or bytes"),
    (pack({"op": "put", "key": "k", "value": {(1,): 2}}), "map keys must be str or bytes"),
    (pack({"op": "put", "key": "k", "value": msgpack.ExtType(5, b"abc")}), "extension"),
    (b"\x83\xa2op\xa3put\xa3key\xa1k\xa5value\xc7\x00\x05", "extension"),  # zero length
    (pack({"op": "put", "key": "k", "value": msgpack.Timestamp(1, 2)}), "extension"),
    (pack({"op": "get", "key": "k"})[:-1], "truncated"),
    (pack({"op": "get", "key": "k"}) + b"\x00", "trailing bytes"),
    (pack({"op": "get", "key": "k"}) * 2, "trailing bytes"),
    (b"\x82\xa2op\xa3get\xa3key\xa2\xff\xfe", "not valid UTF-8"),
    (b"\xc1", "invalid msgpack"),
    (pack(5), "request must be a msgpack map, got integer"),
    (pack(["op", "get"]), "request must be a msgpack map, got array"),
    (pack("get"), "request must be a msgpack map, got string"),
    (pack(None), "request must be a msgpack map, got null"),
    (b"\x91" * 10_000 + b"\x01", "nested too deeply"),
    (b"\x83\xa2op\xa3put\xa3key\xa1k\xa5value" + b"\x91" * 10_000 + b"\x01", "nested too deeply"),
    (b"\x81\xa1a" * 10_000 + b"\x01", "nested too deeply"),
]


@pytest.mark.parametrize(("frame", "fragment"), MALFORMED_MSGPACK)
def test_malformed_msgpack_is_a_bad_request(frame: bytes, fragment: str) -> None:
    error = rejected(frame)
    assert (error.code, error.fmt) == ("bad_request", MSGPACK)
    assert fragment in str(error)


@pytest.mark.parametrize("header", [b"\xc6", b"\xdb", b"\xdd", b"\xdf", b"\xc9"])
def test_a_declared_length_of_4_gb_gives_an_error_not_an_allocation(header: bytes) -> None:
    # bin32, str32, array32, map32, ext32 declaring 0xFFFFFFFF bytes or entries.
    for frame in (
        header + b"\xff\xff\xff\xff" + b"\x00" * 8,
        b"\x83\xa2op\xa3put\xa3key\xa1k\xa5value" + header + b"\xff\xff\xff\xff\x01abc",
    ):
        tracemalloc.start()
        try:
            error = rejected(frame)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert error.code == "bad_request"
        assert peak < 1_000_000


@pytest.mark.parametrize(
    ("header", "limit"), [(b"\xdd", "max_array_len"), (b"\xdf", "max_map_len")]
)
def test_a_declared_count_is_capped_by_the_frame_itself(header: bytes, limit: str) -> None:
    # An array32 or map32 declaring 1,000,000 entries in a 13-byte frame is refused for
    # its count, before any entry is read: the cap is the frame's length, not a
    # library-wide one (a count under that would be read until the bytes ran out).
    error = rejected(header + b"\x00\x0f\x42\x40" + b"\x00" * 8)
    assert error.code == "bad_request"
    assert f"exceeds {limit}" in str(error)


MALFORMED_JSON = [
    (b"{", "invalid JSON"),
    (b'{"op": "get", "key": "k"', "invalid JSON"),
    (b'{"op": "get", "key": "k"} x', "Extra data"),
    (b'{"op": "get", "key": "k"}{}', "Extra data"),
    (b"{'op': 'get'}", "invalid JSON"),
    (b'{"op": "get", "key": "\xff"}', "not valid UTF-8"),
    (b'{"$bytes": "AAE="}', "request must be a map, got bytes"),
    (b'{"op": "get", "key": {"$bytes": 5}}', "$bytes must be a base64 string"),
    (b'{"op": "get", "key": {"$bytes": "A"}}', "$bytes is not valid base64"),
    (b'{"op": "get", "key": {"$bytes": "AA=="}, "x": {"$bytes": "!!!!"}}', "not valid base64"),
    (b'{"op": "put", "key": "k", "value": {"$map": 5}}', "$map must be an array"),
    (b'{"op": "put", "key": "k", "value": {"$map": [[1, 2]]}}', "$map keys must be"),
    (b'{"op": "put", "key": "k", "value": {"$map": [["a"]]}}', "$map must be an array"),
    (b'{"op": "get", "key": "\\ud800"}', "key is not valid UTF-8"),
    (b'{"op": "ping", "id": "\\udc00"}', "id is not valid Unicode"),
    (b'{"op": "put", "key": "k", "value": "\\ud800"}', "value cannot be stored"),
    (b'{"op": "put", "key": "k", "value": 18446744073709551616}', "value cannot be stored"),
    (b'{"op": "ping", "id": 18446744073709551616}', "id must fit in 64 bits"),
    (b'{"op": "ping", "id": ' + b"9" * 5000 + b"}", "integer is too long"),
    (b'{"op": "put", "key": "k", "value": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", "deeply"),
    (b'{"op": "put", "key": "k", "value": ' + b'{"a":' * 10_000 + b"1" + b"}" * 10_001, "deeply"),
]


@pytest.mark.parametrize(("frame", "fragment"), MALFORMED_JSON)
def test_malformed_json_is_a_bad_request_answered_in_json(frame: bytes, fragment: str) -> None:
    error = rejected(frame)
    assert (error.code, error.fmt) == ("bad_request", JSON)
    assert fragment in str(error)
    assert decode_reply(encode_error(error, error.request_id, error.fmt))["ok"] is False


def test_json_is_recognised_after_ascii_whitespace_only() -> None:
    assert CODEC.decode_request(b' \t\r\n{"op": "ping"}').fmt is JSON
    assert CODEC.decode_request(b'{"op": "ping"}\n').fmt is JSON  # trailing whitespace is JSON
    assert rejected(b'\x0b{"op": "ping"}').fmt is MSGPACK  # vertical tab is not JSON's


def test_json_numbers_keep_their_msgpack_meaning() -> None:
    frame = b'{"op": "put", "key": "k", "value": [1e999, -0.0, 18446744073709551615, NaN]}'
    value = msgpack.unpackb(CODEC.decode_request(frame).value_bytes)
    assert value[0] == math.inf and math.copysign(1, value[1]) == -1
    assert value[2] == 2**64 - 1 and math.isnan(value[3])


# -- the JSON bytes mapping ---------------------------------------------------------------


def test_json_bytes_mapping_in_requests() -> None:
    frame = as_json(
        {
            "op": "put",
            "key": b64(b"\x00key"),
            "value": {"blob": b64(b"\x00\x01"), "list": [b64(b"")], "text": "$bytes"},
            "context": b64(b"ctx"),
        }
    )
    request = CODEC.decode_request(frame)
    assert request.key == b"\x00key"
    assert request.context == b"ctx"
    assert msgpack.unpackb(request.value_bytes) == {
        "blob": b"\x00\x01",
        "list": [b""],
        "text": "$bytes",
    }


def test_json_bytes_mapping_in_replies() -> None:
    stored = pack({"blob": b"\x00\x01", b"raw": 1, "n": [b"x"]})
    frame = encode_reply(get_reply(1, stored, b"ctx"), JSON)
    assert json.loads(frame) == {
        "ok": True,
        "id": 1,
        "found": True,
        "context": {"$bytes": "Y3R4"},
        "value": {
            "$map": [
                ["blob", {"$bytes": "AAE="}],
                [{"$bytes": "cmF3"}, 1],
                ["n", [{"$bytes": "eA=="}]],
            ]
        },
    }
    assert decode_reply(frame)["value"] == msgpack.unpackb(stored)


def test_a_literal_map_that_looks_like_a_tag_survives_json() -> None:
    literals: list[dict[str, Any]] = [{"$bytes": "AAE="}, {"$map": []}]
    for literal in literals:
        stored = pack(literal)
        written = encode_reply(get_reply(None, stored, None), JSON)
        ((tag, content),) = literal.items()
        assert json.loads(written)["value"] == {"$map": [[tag, content]]}
        assert decode_reply(written)["value"] == literal
        # A JSON client writing back what it read stores exactly the same value.
        value_json = json.loads(written)["value"]
        put = CODEC.decode_request(as_json({"op": "put", "key": "k", "value": value_json}))
        assert put.value_bytes == stored


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=4) | st.binary(max_size=4), children, max_size=4)
    ),
    max_leaves=10,
)


@settings(max_examples=150, deadline=None)
@given(value=json_values, key=st.text(min_size=1, max_size=8) | st.binary(max_size=8))
def test_json_and_msgpack_clients_store_and_read_the_same_value(value: Any, key: Any) -> None:
    from_json = CODEC.decode_request(encode_request("put", key=key, value=value, fmt=JSON))
    from_msgpack = CODEC.decode_request(encode_request("put", key=key, value=value))
    assert from_json._replace(fmt=MSGPACK) == from_msgpack
    stored = from_msgpack.value_bytes
    as_read_by_json = decode_reply(encode_reply(get_reply(1, stored, None), JSON))
    as_read_by_msgpack = decode_reply(encode_reply(get_reply(1, stored, None), MSGPACK))
    assert as_read_by_json == as_read_by_msgpack
    assert as_read_by_msgpack["value"] == msgpack.unpackb(pack(value))


# -- client-side request encoding ----------------------------------------------------------


@both_formats
def test_encode_request_builds_what_the_codec_accepts(fmt: WireFormat) -> None:
    frame = encode_request(
        Op.PUT,
        key=b"\x00k",
        value={"a": [1, b"\x02"]},
        request_id="r1",
        context=b"c",
        w=2,
        timeout_ms=100,
        fmt=fmt,
    )
    request = CODEC.decode_request(frame)
    assert request == Request(
        Op.PUT, fmt, "r1", b"\x00k", pack({"a": [1, b"\x02"]}), b"c", None, 2, 100, False, (), ()
    )
    batch = CODEC.decode_request(
        encode_request("put_many", items=[("a", 1), (b"b", None, b"c")], fmt=fmt)
    )
    assert batch.items == (PutItem(b"a", pack(1), None), PutItem(b"b", pack(None), b"c"))
    keys = CODEC.decode_request(
        encode_request("get_many", keys=["a", b"b"], siblings=True, fmt=fmt)
    )
    assert (keys.keys, keys.siblings) == ((b"a", b"b"), True)


def test_encode_request_refuses_values_msgpack_cannot_hold() -> None:
    with pytest.raises(BadRequestError, match="cannot be encoded"):
        encode_request("put", key="k", value={1, 2})


# -- construction and plumbing ---------------------------------------------------------------


def test_codec_from_config_uses_the_config_limits() -> None:
    codec = Codec.from_config(NodeConfig(name="n", max_key_bytes=10, max_value_bytes=20))
    assert (codec.max_key_bytes, codec.max_value_bytes) == (10, 20)
    assert codec.max_frame_bytes == protocol.default_max_frame_bytes(10, 20)
    assert rejected(pack({"op": "get", "key": "k" * 11}), codec).code == "too_large"


def test_codec_refuses_nonpositive_limits() -> None:
    with pytest.raises(BadRequestError):
        Codec(max_key_bytes=0)


@pytest.mark.parametrize(
    "error",
    [ProtocolError("bad", JSON, 5), ProtocolTooLargeError("big", MSGPACK, "x")],
)
def test_protocol_errors_pickle_with_their_reply_details(error: ProtocolError) -> None:
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), str(copy), copy.fmt, copy.request_id, copy.code) == (
        type(error),
        str(error),
        error.fmt,
        error.request_id,
        error.code,
    )


@pytest.mark.parametrize("module", [protocol, replies, json_form])
def test_the_wire_code_imports_no_actor_or_socket_library(module: ModuleType) -> None:
    tree = ast.parse(Path(str(module.__file__)).read_text(encoding="utf-8"))
    roots = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    roots |= {
        node.module.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module
    }
    assert "kvactors" in roots  # the check sees imports at all
    assert not roots & {"pykka", "zmq"}


def test_key_and_value_helpers_follow_the_wire_rules() -> None:
    assert SMALL.key_bytes("é") == "é".encode()
    assert SMALL.value_bytes([1, b"x"]) == pack([1, b"x"])
    with pytest.raises(TooLargeError):
        SMALL.key_bytes("k" * 17)
    with pytest.raises(TooLargeError):
        SMALL.value_bytes(b"v" * 63)
    with pytest.raises(BadRequestError):
        SMALL.value_bytes({1, 2})


def test_a_value_that_fails_to_pack_leaves_nothing_behind_for_the_next_one() -> None:
    # The per-thread Packer must start clean after a failure half-way through a value.
    failed = rejected(b'{"op": "put", "key": "k", "value": ["abc", "\\ud800"]}')
    assert "cannot be stored" in str(failed)
    assert CODEC.decode_request(pack({"op": "put", "key": "k", "value": 1})).value_bytes == b"\x01"


# -- robustness: nothing but a ProtocolError, and it always makes a reply ----------------------


def check_decode_is_safe(frame: bytes, codec: Codec = CODEC) -> None:
    try:
        request = codec.decode_request(frame)
    except ProtocolError as error:
        assert isinstance(error, KVActorsError)
        assert error.code in ("bad_request", "too_large")
        reply = decode_reply(encode_error(error, error.request_id, error.fmt))
        assert reply["ok"] is False and reply["error"]["code"] == error.code
        assert reply.get("id") == error.request_id
        return
    assert isinstance(request, Request)
    assert len(request.key) <= codec.max_key_bytes
    assert len(request.value_bytes) <= codec.max_value_bytes
    if request.value_bytes:
        msgpack.unpackb(request.value_bytes, strict_map_key=True)
    reply = decode_reply(encode_reply(put_reply(request.request_id), request.fmt))
    assert reply.get("id") == request.request_id


FIELD_NAMES = st.sampled_from(
    [
        *("op", "operation", "id", "key", "value", "context", "r", "w", "timeout_ms"),
        *("siblings", "keys", "items", "bogus"),
    ]
)
OP_NAMES = st.sampled_from([op.value for op in Op] + ["nope"])
random_requests = st.dictionaries(FIELD_NAMES, OP_NAMES | json_values, max_size=6)
JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6)
json_documents = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.text(max_size=6) | FIELD_NAMES, children, max_size=4)
    ),
    max_leaves=8,
)
# 1,400 random byte strings and 600 random structures (each also cut and mutated).
FUZZ_BYTES = settings(
    max_examples=1400, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
FUZZ_STRUCTURES = settings(
    max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@FUZZ_BYTES
@given(frame=st.binary(max_size=64) | st.binary(max_size=64).map(lambda b: b"{" + b))
def test_random_bytes_never_escape_as_anything_but_a_protocol_error(frame: bytes) -> None:
    check_decode_is_safe(frame)
    check_decode_is_safe(frame, SMALL)


@FUZZ_STRUCTURES
@given(
    structure=random_requests | json_documents,
    as_msgpack=st.booleans(),
    cut=st.integers(min_value=0),
    flip=st.integers(0, 255),
)
def test_random_structures_and_their_mutations_are_handled(
    structure: Any, as_msgpack: bool, cut: int, flip: int
) -> None:
    try:
        frame = pack(structure) if as_msgpack else as_json(jsonable(structure))
    except OverflowError:  # an integer beyond 64 bits: only JSON can carry it
        frame = as_json(jsonable(structure))
    check_decode_is_safe(frame)
    check_decode_is_safe(frame, SMALL)
    cut %= len(frame)
    check_decode_is_safe(frame[:cut])
    check_decode_is_safe(frame[:cut] + bytes((flip,)) + frame[cut + 1 :])
