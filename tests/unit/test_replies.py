"""Tests for kvactors.net.replies: replies in either format, as clients decode them."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvactors.errors import (
    BadRequestError,
    InternalError,
    KVActorsError,
    OverloadedError,
    RequestTimeoutError,
    TooLargeError,
    UnavailableError,
)
from kvactors.net.protocol import MAX_ID_BYTES, Reply, WireFormat
from kvactors.net.replies import (
    decode_reply,
    delete_reply,
    encode_delete_reply,
    encode_error,
    encode_get_reply,
    encode_put_reply,
    encode_reply,
    get_many_reply,
    get_reply,
    item_failed,
    item_found,
    item_not_found,
    item_siblings,
    item_written,
    not_found_reply,
    ping_reply,
    put_many_reply,
    put_reply,
    reply_error,
    siblings_reply,
    status_reply,
)

MSGPACK = WireFormat.MSGPACK
JSON = WireFormat.JSON


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj)  # type: ignore[no-any-return]


def both_formats(test: Any) -> Any:
    return pytest.mark.parametrize("fmt", [MSGPACK, JSON], ids=["msgpack", "json"])(test)


STORED = pack({"name": "Ada"})
REPLIES = [
    (put_reply(7), {"ok": True, "id": 7}),
    (put_reply(7, b"ctx"), {"ok": True, "id": 7, "context": b"ctx"}),
    (
        get_reply(8, STORED, b"c"),
        {"ok": True, "id": 8, "found": True, "value": {"name": "Ada"}, "context": b"c"},
    ),
    (not_found_reply(8), {"ok": True, "id": 8, "found": False}),
    (
        siblings_reply("s", [STORED, pack(2)], b"c"),
        {"ok": True, "id": "s", "found": True, "siblings": [{"name": "Ada"}, 2], "context": b"c"},
    ),
    (siblings_reply(None, [], None), {"ok": True, "found": False, "siblings": []}),
    (delete_reply(9, True), {"ok": True, "id": 9, "deleted": True}),
    (delete_reply(9, False), {"ok": True, "id": 9, "deleted": False}),
    (ping_reply(None), {"ok": True}),
    (
        status_reply(b"i", {"node": "a", "partitions": [1, 2], "raw": b"\x00"}),
        {"ok": True, "id": b"i", "status": {"node": "a", "partitions": [1, 2], "raw": b"\x00"}},
    ),
    (
        get_many_reply(
            1,
            [
                item_found(STORED, b"c"),
                item_not_found(),
                item_siblings([pack(1), pack(2)], b"d"),
                item_failed(UnavailableError("2 of 3 replicas down")),
            ],
        ),
        {
            "ok": True,
            "id": 1,
            "results": [
                {"ok": True, "found": True, "value": {"name": "Ada"}, "context": b"c"},
                {"ok": True, "found": False},
                {"ok": True, "found": True, "siblings": [1, 2], "context": b"d"},
                {"ok": False, "error": {"code": "unavailable", "message": "2 of 3 replicas down"}},
            ],
        },
    ),
    (
        put_many_reply(
            2, [item_written(), item_written(b"c"), item_failed(RequestTimeoutError("t"))]
        ),
        {
            "ok": True,
            "id": 2,
            "results": [
                {"ok": True},
                {"ok": True, "context": b"c"},
                {"ok": False, "error": {"code": "timeout", "message": "t"}},
            ],
        },
    ),
]


@both_formats
@pytest.mark.parametrize(("reply", "expected"), REPLIES)
def test_replies_decode_to_the_documented_maps(fmt: WireFormat, reply: Any, expected: Any) -> None:
    frame = encode_reply(reply, fmt)
    assert frame.startswith(b"{") == (fmt is JSON)
    assert decode_reply(frame) == expected


@pytest.mark.parametrize("count", [15, 16, 2**16 - 1, 2**16])
def test_spliced_arrays_of_any_length_decode(count: int) -> None:
    # Array headers change size at 16 and at 65,536 entries.
    values = [pack(index % 100) for index in range(count)]
    reply = decode_reply(encode_reply(siblings_reply(None, values, None), MSGPACK))
    assert reply["siblings"] == [index % 100 for index in range(count)]
    results = [item_not_found()] * min(count, 16)
    batch = decode_reply(encode_reply(get_many_reply(None, results), MSGPACK))
    assert batch["results"] == [{"ok": True, "found": False}] * len(results)


def test_a_value_too_deep_for_json_becomes_an_internal_error_reply() -> None:
    deep = b"\x91" * 1020 + b"\x01"  # fine for msgpack, too deep for Python's json
    assert decode_reply(encode_reply(get_reply(3, deep, None), MSGPACK))["found"] is True
    reply = decode_reply(encode_reply(get_reply(3, deep, None), JSON))
    assert reply["ok"] is False and reply["id"] == 3
    assert reply["error"]["code"] == "internal"


@both_formats
@pytest.mark.parametrize(
    "error",
    [
        BadRequestError("bad"),
        TooLargeError("big"),
        UnavailableError("down"),
        RequestTimeoutError("slow"),
        OverloadedError("busy"),
        InternalError("oops"),
    ],
)
def test_error_replies_map_back_to_the_same_exception(
    fmt: WireFormat, error: KVActorsError
) -> None:
    reply = decode_reply(encode_error(error, 12, fmt))
    assert reply == {"ok": False, "id": 12, "error": {"code": error.code, "message": str(error)}}
    raised = reply_error(reply)
    assert type(raised) is type(error) and str(raised) == str(error)
    assert reply_error(decode_reply(encode_reply(ping_reply(1), fmt))) is None


@both_formats
def test_error_replies_survive_hostile_messages_and_ids(fmt: WireFormat) -> None:
    error = InternalError("\ud800" + "x" * 5000)
    reply = decode_reply(encode_error(error, [1, 2], fmt))
    assert "id" not in reply
    assert len(reply["error"]["message"]) <= 1000
    assert reply["error"]["message"].startswith("?x")


MALFORMED_REPLIES = [
    b"",
    b"\xc1",
    pack(5),
    pack({"ok": 1}),
    pack({"id": 1}),
    pack({"ok": False}),
    pack({"ok": False, "error": {"code": "timeout"}}),
    pack({"ok": False, "error": {"code": 1, "message": "m"}}),
    pack({"ok": True, "value": msgpack.ExtType(1, b"x")}),
    b'{"ok": true',
    b'{"ok": "yes"}',
]


@pytest.mark.parametrize("frame", MALFORMED_REPLIES)
def test_malformed_replies_raise_internal_error(frame: bytes) -> None:
    with pytest.raises(InternalError, match="malformed reply"):
        decode_reply(frame)


def test_unknown_error_codes_become_internal_errors() -> None:
    reply = decode_reply(pack({"ok": False, "error": {"code": "martian", "message": "m"}}))
    assert type(reply_error(reply)) is InternalError


# -- the one-key replies, encoded without a Reply ----------------------------------------

REQUEST_IDS = st.one_of(
    st.none(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.text(max_size=MAX_ID_BYTES // 4),
    st.binary(max_size=MAX_ID_BYTES),
)
STORED_VALUES = st.one_of(
    st.none(), st.builds(pack, st.integers(-(2**63), 2**64 - 1) | st.text() | st.binary())
)
CONTEXTS = st.one_of(st.none(), st.binary(max_size=64))
FORMATS = st.sampled_from([MSGPACK, JSON])


@given(REQUEST_IDS, st.booleans(), FORMATS)
def test_a_put_reply_encodes_as_its_reply_does(
    request_id: Any, conflict: bool, fmt: WireFormat
) -> None:
    expected = encode_reply(put_reply(request_id, conflict=conflict), fmt)
    assert encode_put_reply(request_id, conflict, fmt) == expected


@given(REQUEST_IDS, st.booleans(), FORMATS)
def test_a_delete_reply_encodes_as_its_reply_does(
    request_id: Any, deleted: bool, fmt: WireFormat
) -> None:
    expected = encode_reply(delete_reply(request_id, deleted), fmt)
    assert encode_delete_reply(request_id, deleted, fmt) == expected


@given(REQUEST_IDS, STORED_VALUES, CONTEXTS, FORMATS)
def test_a_get_reply_encodes_as_its_reply_does(
    request_id: Any, value: bytes | None, context: bytes | None, fmt: WireFormat
) -> None:
    expected = encode_reply(Reply(request_id, value is not None, value, None, context), fmt)
    frame = encode_get_reply(request_id, value, context, fmt)
    assert frame == expected
    reply = decode_reply(frame)
    assert reply["found"] is (value is not None)
    assert ("context" in reply) is (context is not None)
