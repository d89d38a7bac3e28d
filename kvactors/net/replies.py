"""Replies: the builders a node answers with (`put_reply`, `get_reply`, ...,
`item_found`, ...), their encoding in the request's format (`encode_reply`,
`encode_error`) and, for clients, `decode_reply` and `reply_error`. docs/protocol.md
lists every reply.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import msgpack

from kvactors.errors import BadRequestError, InternalError, KVActorsError, error_for_code
from kvactors.net.json_form import (
    dump_json,
    json_ready,
    map_from_json_pairs,
    parse_json_int,
    type_name,
)
from kvactors.net.protocol import (
    PACKER,
    ItemResult,
    Reply,
    Request,
    RequestId,
    WireFormat,
    bounded,
    checked_request_id,
    detect_format,
    refuse_ext,
)

__all__ = [
    "Replies",
    "SendToClient",
    "decode_reply",
    "delete_reply",
    "encode_delete_reply",
    "encode_error",
    "encode_get_reply",
    "encode_put_reply",
    "encode_reply",
    "get_many_reply",
    "get_reply",
    "item_failed",
    "item_found",
    "item_not_found",
    "item_siblings",
    "item_written",
    "not_found_reply",
    "ping_reply",
    "put_many_reply",
    "put_reply",
    "reply_error",
    "siblings_reply",
    "status_reply",
]

# Enum members fetched once, as in kvactors.net.protocol: read on every reply.
_MSGPACK: Final = WireFormat.MSGPACK
_JSON: Final = WireFormat.JSON


def put_reply(
    request_id: RequestId | None, context: bytes | None = None, *, conflict: bool = False
) -> Reply:
    """A put was stored; `conflict`: the key now has concurrent siblings."""
    return Reply(
        request_id, None, None, None, context, None, None, None, True if conflict else None
    )


def get_reply(request_id: RequestId | None, value_bytes: bytes, context: bytes | None) -> Reply:
    """A get found `value_bytes` (the stored msgpack encoding)."""
    return Reply(request_id, True, value_bytes, None, context)


def not_found_reply(request_id: RequestId | None, context: bytes | None = None) -> Reply:
    """A get found nothing (or a tombstone, whose context may be passed back)."""
    return Reply(request_id, False, None, None, context)


def siblings_reply(
    request_id: RequestId | None, values: Sequence[bytes], context: bytes | None
) -> Reply:
    """A get that asked for siblings: every concurrent value, msgpack-encoded."""
    return Reply(request_id, bool(values), None, tuple(values), context)


def delete_reply(request_id: RequestId | None, deleted: bool) -> Reply:
    """A delete was applied; `deleted` says whether there was a value to delete."""
    return Reply(request_id, None, None, None, None, deleted)


def get_many_reply(request_id: RequestId | None, results: Sequence[ItemResult]) -> Reply:
    """A get_many: one result per requested key, in request order."""
    return Reply(request_id, results=tuple(results))


def put_many_reply(request_id: RequestId | None, results: Sequence[ItemResult]) -> Reply:
    """A put_many: one result per item, in request order."""
    return Reply(request_id, results=tuple(results))


def ping_reply(request_id: RequestId | None) -> Reply:
    """The node is up."""
    return Reply(request_id)


def status_reply(request_id: RequestId | None, status: Mapping[str, Any]) -> Reply:
    """The node's status: a map with str keys and msgpack-encodable values."""
    return Reply(request_id, status=status)


def item_found(value_bytes: bytes, context: bytes | None) -> ItemResult:
    """get_many: a key with a value."""
    return ItemResult(None, True, value_bytes, None, context)


def item_siblings(values: Sequence[bytes], context: bytes | None) -> ItemResult:
    """get_many with siblings: every concurrent value of a key."""
    return ItemResult(None, bool(values), None, tuple(values), context)


def item_not_found(context: bytes | None = None) -> ItemResult:
    """get_many: a key without a value."""
    return ItemResult(None, False, None, None, context)


def item_written(context: bytes | None = None) -> ItemResult:
    """put_many: an item was stored."""
    return ItemResult(None, None, None, None, context)


def item_failed(error: KVActorsError) -> ItemResult:
    """get_many or put_many: one key or item failed (the others may not have)."""
    return ItemResult(error)


def encode_reply(reply: Reply, fmt: WireFormat) -> bytes:
    """The frame for a successful reply, in the request's format."""
    if fmt is _MSGPACK:
        return _pack_reply(reply)
    try:
        return dump_json(_reply_json(reply))
    except (RecursionError, ValueError) as exc:
        # A value nested deeper than json can write (msgpack allows 1024 levels).
        problem = InternalError(
            f"the reply cannot be written as JSON ({type(exc).__name__}); use msgpack"
        )
        return encode_error(problem, reply.request_id, fmt)


def encode_put_reply(request_id: RequestId | None, conflict: bool, fmt: WireFormat) -> bytes:
    """`encode_reply(put_reply(request_id, conflict=conflict), fmt)`, without the Reply:
    the reply of every put."""
    if fmt is not _MSGPACK:
        return encode_reply(put_reply(request_id, conflict=conflict), fmt)
    if request_id is None:
        return _PUT_CONFLICT if conflict else _PUT
    if conflict:
        return _PUT_CONFLICT_ID + PACKER.pack(request_id) + _CONFLICT_TRUE
    return _PUT_ID + PACKER.pack(request_id)


def encode_delete_reply(request_id: RequestId | None, deleted: bool, fmt: WireFormat) -> bytes:
    """`encode_reply(delete_reply(request_id, deleted), fmt)`, without the Reply."""
    if fmt is not _MSGPACK:
        return encode_reply(delete_reply(request_id, deleted), fmt)
    flag = _DELETED_TRUE if deleted else _DELETED_FALSE
    if request_id is None:
        return _MAP_HEADERS[2] + _OK_TRUE + flag
    return b"".join((_MAP_HEADERS[3], _OK_TRUE, _ID, PACKER.pack(request_id), flag))


def encode_get_reply(
    request_id: RequestId | None, value_bytes: bytes | None, context: bytes | None, fmt: WireFormat
) -> bytes:
    """The reply of a get without siblings: found when `value_bytes` is not None (as
    `encode_reply(Reply(request_id, value_bytes is not None, value_bytes, None,
    context), fmt)`, without the Reply)."""
    if fmt is not _MSGPACK:
        return encode_reply(
            Reply(request_id, value_bytes is not None, value_bytes, None, context), fmt
        )
    count = 2
    parts = [b"", _OK_TRUE]
    if request_id is not None:
        parts += (_ID, PACKER.pack(request_id))
        count = 3
    if value_bytes is None:
        parts.append(_FOUND_FALSE)
    else:
        parts += (_FOUND_TRUE, _VALUE, value_bytes)
        count += 1
    if context is not None:
        parts += (_CONTEXT, PACKER.pack(context))
        count += 1
    parts[0] = _MAP_HEADERS[count]
    return b"".join(parts)


def encode_error(error: KVActorsError, request_id: object, fmt: WireFormat) -> bytes:
    """The frame for an error reply; never raises, whatever the error holds."""
    reply: dict[str, Any] = {"ok": False}
    safe_id = _echoable_id(request_id)
    if safe_id is not None:
        reply["id"] = safe_id
    reply["error"] = _error_body(error)
    if fmt is _JSON:
        return dump_json(reply)
    return msgpack.packb(reply)  # type: ignore[no-any-return]


def _echoable_id(request_id: object) -> RequestId | None:
    try:
        return checked_request_id(request_id)
    except BadRequestError:
        return None


def _error_body(error: KVActorsError) -> dict[str, str]:
    code = error.code if type(error.code) is str else InternalError.code
    message = bounded(str(error)) or code
    # Lone surrogates cannot be encoded as UTF-8; replace them rather than fail the reply.
    return {"code": code, "message": message.encode("utf-8", "replace").decode("utf-8")}


def _plain_fields(reply: Reply) -> dict[str, Any]:
    fields: dict[str, Any] = {"ok": True}
    if reply.request_id is not None:
        fields["id"] = reply.request_id
    if reply.found is not None:
        fields["found"] = reply.found
    if reply.context is not None:
        fields["context"] = reply.context
    if reply.deleted is not None:
        fields["deleted"] = reply.deleted
    if reply.status is not None:
        fields["status"] = reply.status
    if reply.conflict:
        fields["conflict"] = True
    return fields


def _plain_item_fields(item: ItemResult) -> dict[str, Any]:
    if item.error is not None:
        return {"ok": False, "error": _error_body(item.error)}
    fields: dict[str, Any] = {"ok": True}
    if item.found is not None:
        fields["found"] = item.found
    if item.context is not None:
        fields["context"] = item.context
    return fields


def _name(field: str) -> bytes:
    packed: bytes = msgpack.packb(field)
    return packed


_ID: Final = _name("id")
_VALUE: Final = _name("value")
_SIBLINGS: Final = _name("siblings")
_CONTEXT: Final = _name("context")
_RESULTS: Final = _name("results")
_STATUS: Final = _name("status")
_ERROR: Final = _name("error")
_OK_TRUE: Final = _name("ok") + b"\xc3"
_OK_FALSE: Final = _name("ok") + b"\xc2"
_FOUND_TRUE: Final = _name("found") + b"\xc3"
_FOUND_FALSE: Final = _name("found") + b"\xc2"
_DELETED_TRUE: Final = _name("deleted") + b"\xc3"
_DELETED_FALSE: Final = _name("deleted") + b"\xc2"
_CONFLICT_TRUE: Final = _name("conflict") + b"\xc3"
# Replies and result items have fewer than 16 fields: their map header is one byte.
_MAP_HEADERS: Final = tuple(bytes((0x80 | count,)) for count in range(16))
# A put's reply is one of four shapes: with or without an id, and a conflict.
_PUT: Final = _MAP_HEADERS[1] + _OK_TRUE
_PUT_CONFLICT: Final = _MAP_HEADERS[2] + _OK_TRUE + _CONFLICT_TRUE
_PUT_ID: Final = _MAP_HEADERS[2] + _OK_TRUE + _ID
_PUT_CONFLICT_ID: Final = _MAP_HEADERS[3] + _OK_TRUE + _ID


def _pack_reply(reply: Reply) -> bytes:
    """The reply as a msgpack map assembled from encoded pieces; values are spliced in as
    stored, never decoded and re-encoded."""
    request_id, found, value_bytes, siblings, context, deleted, results, status, conflict = reply
    parts = [b"", _OK_TRUE]  # parts[0] becomes the map header once the count is known
    count = 1
    if request_id is not None:
        parts += (_ID, PACKER.pack(request_id))
        count += 1
    if found is not None:
        parts.append(_FOUND_TRUE if found else _FOUND_FALSE)
        count += 1
    if value_bytes is not None:
        parts += (_VALUE, value_bytes)
        count += 1
    if siblings is not None:
        parts += (_SIBLINGS, _array_header(len(siblings)), *siblings)
        count += 1
    if context is not None:
        parts += (_CONTEXT, PACKER.pack(context))
        count += 1
    if deleted is not None:
        parts.append(_DELETED_TRUE if deleted else _DELETED_FALSE)
        count += 1
    if results is not None:
        parts += (_RESULTS, _array_header(len(results)), *map(_pack_item, results))
        count += 1
    if status is not None:
        parts += (_STATUS, PACKER.pack(status))
        count += 1
    if conflict:
        parts.append(_CONFLICT_TRUE)
        count += 1
    parts[0] = _MAP_HEADERS[count]
    return b"".join(parts)


def _pack_item(item: ItemResult) -> bytes:
    error, found, value_bytes, siblings, context = item
    if error is not None:
        body: bytes = msgpack.packb(_error_body(error))
        return _MAP_HEADERS[2] + _OK_FALSE + _ERROR + body
    parts = [b"", _OK_TRUE]
    count = 1
    if found is not None:
        parts.append(_FOUND_TRUE if found else _FOUND_FALSE)
        count += 1
    if value_bytes is not None:
        parts += (_VALUE, value_bytes)
        count += 1
    if siblings is not None:
        parts += (_SIBLINGS, _array_header(len(siblings)), *siblings)
        count += 1
    if context is not None:
        parts += (_CONTEXT, PACKER.pack(context))
        count += 1
    parts[0] = _MAP_HEADERS[count]
    return b"".join(parts)


def _array_header(length: int) -> bytes:
    if length < 16:
        return bytes((0x90 | length,))
    if length < 2**16:
        return b"\xdc" + length.to_bytes(2, "big")
    return b"\xdd" + length.to_bytes(4, "big")


def _reply_json(reply: Reply) -> dict[str, Any]:
    fields = _plain_fields(reply)
    if reply.status is not None:
        fields["status"] = json_ready(msgpack.packb(reply.status))
    if reply.value_bytes is not None:
        fields["value"] = json_ready(reply.value_bytes)
    if reply.siblings is not None:
        fields["siblings"] = [json_ready(value) for value in reply.siblings]
    if reply.results is not None:
        fields["results"] = [_item_json(item) for item in reply.results]
    return fields


def _item_json(item: ItemResult) -> dict[str, Any]:
    fields = _plain_item_fields(item)
    if item.error is None:
        if item.value_bytes is not None:
            fields["value"] = json_ready(item.value_bytes)
        if item.siblings is not None:
            fields["siblings"] = [json_ready(value) for value in item.siblings]
    return fields


# -- sending --------------------------------------------------------------------------


SendToClient = Callable[[list[bytes], bytes | None], bool | None]
"""Sends a reply's frames, counted against an account (a secure client's key; None:
its connection's own); False when it dropped the reply because the client does not read."""


class Replies:
    """Sends frames to clients (through `send`, the transport's), counting errors."""

    __slots__ = ("errors", "max_frame_bytes", "send")

    def __init__(self, send: SendToClient, max_frame_bytes: int | None = None) -> None:
        self.send = send
        self.errors = 0
        self.max_frame_bytes = max_frame_bytes
        """The frame a reply must fit (a get_many's is cut to it); None: no cut."""

    def reply(self, envelope: list[bytes], request: Request, reply: Reply) -> None:
        self.send([*envelope, encode_reply(reply, request.fmt)], None)

    def error(
        self,
        envelope: list[bytes],
        error: KVActorsError,
        request_id: Any,
        fmt: WireFormat,
        account: bytes | None = None,
    ) -> None:
        self.errors += 1
        self.send([*envelope, encode_error(error, request_id, fmt)], account)


# -- client side --------------------------------------------------------------------------


def decode_reply(frame: bytes | bytearray | memoryview) -> dict[str, Any]:
    """A reply frame as a map, bytes and maps restored; raises InternalError if malformed.

    An error reply is returned, not raised: see `reply_error`.
    """
    if type(frame) is not bytes:
        frame = bytes(frame)
    try:
        if detect_format(frame) is _JSON:
            reply = json.loads(
                frame.decode("utf-8"),
                object_pairs_hook=map_from_json_pairs,
                parse_int=parse_json_int,
            )
        else:
            reply = msgpack.unpackb(
                frame, raw=False, strict_map_key=False, max_ext_len=0, ext_hook=refuse_ext
            )
    except (ValueError, TypeError, OverflowError, RecursionError, msgpack.UnpackException) as exc:
        raise InternalError(bounded(f"malformed reply: {exc or type(exc).__name__}")) from None
    _check_reply(reply)
    return reply  # type: ignore[no-any-return]


def _check_reply(reply: Any) -> None:
    def malformed(why: str) -> InternalError:
        return InternalError(f"malformed reply: {why}")

    if type(reply) is not dict:
        raise malformed(f"expected a map, got {type_name(reply)}")
    ok = reply.get("ok")
    if type(ok) is not bool:
        raise malformed("ok must be a boolean")
    if ok:
        return
    error = reply.get("error")
    if type(error) is not dict:
        raise malformed("an error reply needs an error map")
    if type(error.get("code")) is not str or type(error.get("message")) is not str:
        raise malformed("error needs a string code and a string message")


def reply_error(reply: Mapping[str, Any]) -> KVActorsError | None:
    """The exception an error reply (from `decode_reply`) stands for; None if it is a success."""
    if reply.get("ok", False):
        return None
    error = reply["error"]
    return error_for_code(error["code"], error["message"])
