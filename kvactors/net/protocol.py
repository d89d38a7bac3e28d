"""The client wire protocol: decoding and validating requests, encoding replies.

This module is the whole contract between a kvactors node and its clients in any
language; ``docs/protocol.md`` tells the same for client authors and must agree with it.
It does no I/O: the transport hands it one frame and sends back the bytes it returns.

Frames and formats
------------------
A request is one frame holding one msgpack map, or one JSON object. A frame whose first
byte, after optional ASCII whitespace (space, tab, CR, LF), is ``{`` is JSON and is
answered in JSON; every other frame is msgpack and is answered in msgpack (a msgpack map
never starts with one of those bytes, so the test is unambiguous). The codec works on the
payload frame alone: the ZeroMQ envelope (routing id, empty delimiter) is the transport's.

Requests (``op`` may also be spelled ``operation``, the seed's JSON field)::

    {"op": "put",    "key": K, "value": V, "id": ID}     optional: context, w, timeout_ms
    {"op": "get",    "key": K, "id": ID}                 optional: r, siblings, timeout_ms
    {"op": "delete", "key": K, "id": ID}                 optional: context, w, timeout_ms
    {"op": "get_many", "keys": [K, ...]}                 optional: r, siblings, timeout_ms
    {"op": "put_many", "items": [[K, V], [K, V, CONTEXT], ...]}  optional: w, timeout_ms
    {"op": "ping"}   {"op": "status"}   {"op": "leave"}  optional: timeout_ms

- ``id`` (optional on every request): an integer (64-bit), a string or bytes of at most
  256 bytes; it is echoed in the reply, in success and in error replies alike, whenever
  it could be read (not when the id itself is invalid, or the frame is too broken to
  find it).
- ``key``: a string (stored as its UTF-8 bytes, so ``"a"`` and ``b"a"`` are one key) or
  bytes, at most ``max_key_bytes`` (64 KiB by default).
- ``value``: any msgpack value (map keys str or bytes; no extension types), at most
  ``max_value_bytes`` (1 MiB by default) in its msgpack encoding.
- ``r``, ``w``: quorum sizes, positive integers; ``timeout_ms``: positive integer.
- ``context``: bytes, the opaque causal context a get returned (at most 68,355 bytes,
  the largest context a node makes).
- ``siblings``: boolean; true asks for every concurrent version instead of one.
- ``null``/nil for an optional field means the field is absent. Any other field, or a
  field the operation does not take, is a ``bad_request``.
- ``get_many`` and ``put_many`` take 1 to ``max_batch_items`` (1000) keys or items.

Replies are maps with ``"ok"`` and, when the request had one, ``"id"``::

    put        {"ok": true, "id": 7}            (+ "conflict": true when siblings remain)
    get        {"ok": true, "id": 8, "found": true, "value": V, "context": C}
               {"ok": true, "id": 8, "found": false, "context": C}
               with siblings: {"ok": true, "found": true, "siblings": [V, ...], "context": C}
    delete     {"ok": true, "id": 9, "deleted": true}
    get_many   {"ok": true, "results": [ITEM, ...]}   one ITEM per key, in request order
    put_many   {"ok": true, "results": [ITEM, ...]}   one ITEM per item, in request order
    ping       {"ok": true}
    status     {"ok": true, "status": {...}}
    ITEM       {"ok": true, "found": true, "value": V, "context": C} (get_many),
               {"ok": true} (put_many) or {"ok": false, "error": ERROR}
    error      {"ok": false, "id": 9, "error": {"code": "bad_request", "message": "..."}}

Error codes: ``bad_request``, ``too_large``, ``unavailable``, ``timeout``, ``overloaded``,
``internal`` (``kvactors.errors`` maps each to an exception class).

Bytes in JSON
-------------
JSON has no bytes, so in both directions (requests and replies) a JSON object with the
single member ``"$bytes"`` whose value is a string stands for bytes::

    {"$bytes": "<standard base64, with padding>"}        e.g. b"\\x00\\x01" -> {"$bytes": "AAE="}

A msgpack map that JSON cannot write as an object (one with a bytes key, or whose only
key is ``"$bytes"`` or ``"$map"``) is written as ``{"$map": [[KEY, VALUE], ...]}``, and
such an object is read back as that map. Any other JSON object is an ordinary map.
So a key is a JSON string (a str key) or ``{"$bytes": ...}`` (a bytes key), a context is
always ``{"$bytes": ...}``, and a JSON client reads back exactly the value a msgpack
client stored. Non-finite floats are written ``NaN``, ``Infinity``, ``-Infinity`` (as
Python's and JavaScript's JSON readers accept). Integers must fit in 64 bits.

Limits and safety
-----------------
- A frame is at most ``max_frame_bytes``: by default ``2 * (max_key_bytes +
  max_value_bytes + max context) + 64 KiB``, about 2.3 MiB, room for a key, a value and a
  context even as base64 in JSON. The node's transport sets ZeroMQ's ``MAXMSGSIZE`` to
  the same number, so over the network a larger frame never reaches the codec: libzmq
  drops the sender's connection and no reply comes (the codec's own ``too_large`` check
  serves frames that reach it some other way).
- msgpack is decoded in one call whose string, bytes, array and map limits are capped by
  the frame's length, so no declared length (say 4 GB) allocates more than the frame
  holds; extension types (timestamps included) are refused, map keys must be str or bytes,
  nesting is bounded by msgpack's own stack (1024 levels), and bytes after the first
  object are an error. JSON must be UTF-8; its nesting is bounded by Python's recursion
  limit (about 1000 levels), integers by 64 bits; trailing whitespace is allowed, any other
  trailing bytes are an error. A failure is always a ``bad_request`` or ``too_large``
  reply naming the field, never a crash.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from enum import StrEnum
from typing import Any, Final, NamedTuple

import msgpack

from kvactors.codec import encode_value, normalize_key
from kvactors.config import NodeConfig
from kvactors.core.context import MAX_CONTEXT_BYTES
from kvactors.errors import (
    BadRequestError,
    ConfigError,
    InternalError,
    KVActorsError,
    TooLargeError,
    error_for_code,
)

__all__ = [
    "DEFAULT_MAX_BATCH_ITEMS",
    "DEFAULT_MAX_CONTEXT_BYTES",
    "MAX_ID_BYTES",
    "Codec",
    "ItemResult",
    "Op",
    "ProtocolError",
    "ProtocolTooLargeError",
    "PutItem",
    "Reply",
    "Request",
    "RequestId",
    "WireFormat",
    "decode_reply",
    "default_max_frame_bytes",
    "delete_reply",
    "encode_error",
    "encode_reply",
    "encode_request",
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

RequestId = int | str | bytes
"""What a client may use as a request id: echoed back unchanged."""

MAX_ID_BYTES: Final = 256
DEFAULT_MAX_CONTEXT_BYTES: Final = MAX_CONTEXT_BYTES  # the largest context versions.py makes
DEFAULT_MAX_BATCH_ITEMS: Final = 1000
_FRAME_SLACK_BYTES: Final = 64 * 1024  # room for op, id, quorums and map headers
_MAX_SMALL_INT: Final = 2**31 - 1  # r, w, timeout_ms: what any client language holds in an int32
_MAX_MESSAGE_CHARS: Final = 1000  # error messages are for humans; never echo a whole frame
_MAX_JSON_INT_CHARS: Final = 24  # 64-bit ints need at most 20; longer text is refused unparsed


class WireFormat(StrEnum):
    """The encoding of a frame; a reply uses its request's."""

    MSGPACK = "msgpack"
    JSON = "json"


class Op(StrEnum):
    """The operations a client may ask for."""

    PUT = "put"
    GET = "get"
    DELETE = "delete"
    GET_MANY = "get_many"
    PUT_MANY = "put_many"
    PING = "ping"
    STATUS = "status"
    LEAVE = "leave"


class PutItem(NamedTuple):
    """One write of a put_many: key, msgpack-encoded value, causal context (or None)."""

    key: bytes
    value_bytes: bytes
    context: bytes | None


class Request(NamedTuple):
    """One validated client request.

    A NamedTuple (immutable, slotted) rather than a frozen dataclass: building one is the
    hot path of every request, and a frozen dataclass costs about 3 us to build, a tuple 0.5.

    `key` is empty and `value_bytes` empty for operations that take none. `value_bytes` is
    the value's canonical msgpack encoding, ready to store as is.
    """

    op: Op
    fmt: WireFormat
    request_id: RequestId | None
    key: bytes
    value_bytes: bytes
    context: bytes | None
    r: int | None
    w: int | None
    timeout_ms: int | None
    siblings: bool
    keys: tuple[bytes, ...]
    items: tuple[PutItem, ...]


class ItemResult(NamedTuple):
    """The outcome for one key of a get_many or one item of a put_many."""

    error: KVActorsError | None = None
    found: bool | None = None
    value_bytes: bytes | None = None
    siblings: tuple[bytes, ...] | None = None
    context: bytes | None = None


class Reply(NamedTuple):
    """A successful reply; fields left None are not sent. Build with the *_reply functions.

    Values travel as their stored msgpack bytes and are spliced into a msgpack reply
    without being decoded again.
    """

    request_id: RequestId | None = None
    found: bool | None = None
    value_bytes: bytes | None = None
    siblings: tuple[bytes, ...] | None = None
    context: bytes | None = None
    deleted: bool | None = None
    results: tuple[ItemResult, ...] | None = None
    status: Mapping[str, Any] | None = None
    conflict: bool | None = None


class ProtocolError(BadRequestError):
    """A request that cannot be served, with what is needed to answer it anyway.

    `fmt` is the format to answer in and `request_id` the id to echo (None when the frame
    was too broken to find one). Its code is ``bad_request``, or ``too_large`` for a
    `ProtocolTooLargeError`.
    """

    def __init__(self, message: str, fmt: WireFormat, request_id: RequestId | None) -> None:
        super().__init__(message)
        self.fmt = fmt
        self.request_id = request_id

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.fmt, self.request_id))


class ProtocolTooLargeError(ProtocolError, TooLargeError):
    """A request with a frame, key, value or context over its size limit."""


def default_max_frame_bytes(max_key_bytes: int, max_value_bytes: int) -> int:
    """The frame limit that fits one key, one value and a context even as JSON base64."""
    return 2 * (max_key_bytes + max_value_bytes + DEFAULT_MAX_CONTEXT_BYTES) + _FRAME_SLACK_BYTES


# -- decoding requests ----------------------------------------------------------------


class _ThreadPacker(threading.local):
    """One reusable msgpack Packer per thread: packb() builds a new Packer per call,
    which costs more than packing a small request's value. A Packer is not thread-safe,
    hence one per thread. It resets itself after each pack, and after a failed one."""

    def __init__(self) -> None:
        self.pack: Callable[[Any], bytes] = msgpack.Packer().pack


_PACKER: Final = _ThreadPacker()

_MISSING: Final[Any] = object()
# Enum members fetched once: reading `WireFormat.JSON` off the class costs about as much
# as a whole field check, and these are read on every request.
_MSGPACK: Final = WireFormat.MSGPACK
_JSON: Final = WireFormat.JSON
_JSON_WHITESPACE: Final = b" \t\r\n"
_COMMON_FIELDS: Final = frozenset({"op", "operation", "id", "timeout_ms"})
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

_Payload = tuple[bytes, bytes, tuple[bytes, ...], tuple[PutItem, ...]]
"""What an op carries besides its options: key, value_bytes, keys, items."""
_NO_PAYLOAD: Final[_Payload] = (b"", b"", (), ())


class _Options(NamedTuple):
    context: bytes | None
    r: int | None
    w: int | None
    timeout_ms: int | None
    siblings: bool


_NO_OPTIONS: Final = _Options(None, None, None, None, False)


class _OpSpec(NamedTuple):
    op: Op
    fields: frozenset[str]
    required: int  # how many fields every request of this op has: op and its payload
    payload: Callable[[dict[str, Any]], _Payload]


# Builds a Request from the tuple of its fields in order: half the cost of Request(...),
# whose generated __new__ is a Python function. Every call passes all twelve fields.
_new_request: Final = tuple.__new__


class Codec:
    """Decodes and validates request frames against the node's limits. Thread-safe."""

    __slots__ = (
        "_json_decoder",
        "_specs",
        "max_batch_items",
        "max_context_bytes",
        "max_frame_bytes",
        "max_key_bytes",
        "max_value_bytes",
    )

    def __init__(
        self,
        max_key_bytes: int = 64 * 1024,
        max_value_bytes: int = 1024 * 1024,
        max_frame_bytes: int | None = None,
        *,
        max_context_bytes: int = DEFAULT_MAX_CONTEXT_BYTES,
        max_batch_items: int = DEFAULT_MAX_BATCH_ITEMS,
    ) -> None:
        if max_frame_bytes is None:
            max_frame_bytes = default_max_frame_bytes(max_key_bytes, max_value_bytes)
        limits = (max_key_bytes, max_value_bytes, max_frame_bytes, max_context_bytes)
        if min(limits) <= 0 or max_batch_items <= 0:
            raise ConfigError("codec limits must be positive")
        self.max_key_bytes = max_key_bytes
        self.max_value_bytes = max_value_bytes
        self.max_frame_bytes = max_frame_bytes
        self.max_context_bytes = max_context_bytes
        self.max_batch_items = max_batch_items
        self._json_decoder = json.JSONDecoder(
            object_pairs_hook=_map_from_json_pairs, parse_int=_parse_json_int
        )
        specs = [
            _OpSpec(Op.PUT, frozenset({"key", "value", "context", "w"}), 3, self._key_and_value),
            _OpSpec(Op.GET, frozenset({"key", "r", "siblings"}), 2, self._key_only),
            _OpSpec(Op.DELETE, frozenset({"key", "context", "w"}), 2, self._key_only),
            _OpSpec(Op.GET_MANY, frozenset({"keys", "r", "siblings"}), 2, self._keys),
            _OpSpec(Op.PUT_MANY, frozenset({"items", "w"}), 2, self._items),
            _OpSpec(Op.PING, frozenset(), 1, _no_payload),
            _OpSpec(Op.STATUS, frozenset(), 1, _no_payload),
            _OpSpec(Op.LEAVE, frozenset(), 1, _no_payload),
        ]
        # Keyed by the op's name as it arrives: a str hashes faster than an Enum member.
        self._specs = {
            spec.op.value: spec._replace(fields=spec.fields | _COMMON_FIELDS) for spec in specs
        }

    @classmethod
    def from_config(cls, config: NodeConfig) -> Codec:
        """A codec with the key and value limits of a node's config."""
        return cls(config.max_key_bytes, config.max_value_bytes)

    def decode_request(self, frame: bytes | bytearray | memoryview) -> Request:
        """The validated request in `frame`; raises `ProtocolError` (or its too-large kind)."""
        if type(frame) is not bytes:
            frame = bytes(frame)
        # Every msgpack map starts with a byte >= 0x80; only other frames can be JSON.
        fmt = _MSGPACK if frame and frame[0] >= 0x80 else _detect_format(frame)
        if len(frame) > self.max_frame_bytes:
            raise ProtocolTooLargeError(
                f"frame is {len(frame)} bytes; the limit is {self.max_frame_bytes}", fmt, None
            )
        message = _unpack_request(frame) if fmt is _MSGPACK else self._parse_json(frame)
        return self._validate(message, fmt)

    def key_bytes(self, key: object) -> bytes:
        """The stored form of a key; raises BadRequestError or TooLargeError."""
        return normalize_key(key, self.max_key_bytes)

    def value_bytes(self, value: object) -> bytes:
        """The canonical msgpack encoding of a value; raises BadRequestError or TooLargeError."""
        return encode_value(value, self.max_value_bytes)

    def _validate(self, message: dict[str, Any], fmt: WireFormat) -> Request:
        request_id = None
        try:
            raw_id = message.get("id")
            if raw_id is not None:
                request_id = _request_id(raw_id)
            name = message.get("op")
            spec = self._specs.get(name) if type(name) is str else None
            if spec is None or "operation" in message:
                spec = self._spec_the_slow_way(message)
            if not spec.fields.issuperset(message):
                raise BadRequestError(_unknown_fields(message, spec))
            key, value_bytes, keys, items = spec.payload(message)
            # Most requests carry no option: skip looking for each when none can be there.
            has_id = raw_id is not None or "id" in message
            options = _NO_OPTIONS
            if len(message) != spec.required + has_id:
                options = self._options(message)
            context, r, w, timeout_ms, siblings = options
            return _new_request(
                Request,
                (
                    spec.op,
                    fmt,
                    request_id,
                    key,
                    value_bytes,
                    context,
                    r,
                    w,
                    timeout_ms,
                    siblings,
                    keys,
                    items,
                ),
            )
        except TooLargeError as exc:
            raise ProtocolTooLargeError(str(exc), fmt, request_id) from None
        except BadRequestError as exc:
            raise ProtocolError(str(exc), fmt, request_id) from None

    # -- what each op carries -----------------------------------------------------------

    def _key_only(self, message: dict[str, Any]) -> _Payload:
        return (self._key(message.get("key", _MISSING), "key"), b"", (), ())

    def _key_and_value(self, message: dict[str, Any]) -> _Payload:
        key = self._key(message.get("key", _MISSING), "key")
        return (key, self._value(message.get("value", _MISSING), "value"), (), ())

    def _keys(self, message: dict[str, Any]) -> _Payload:
        raw_keys = self._batch(message.get("keys", _MISSING), "keys")
        keys = tuple([self._key(key, f"keys[{index}]") for index, key in enumerate(raw_keys)])
        return (b"", b"", keys, ())

    def _items(self, message: dict[str, Any]) -> _Payload:
        items = []
        for index, item in enumerate(self._batch(message.get("items", _MISSING), "items")):
            field = f"items[{index}]"
            if type(item) is not list or not 2 <= len(item) <= 3:
                raise BadRequestError(f"{field} must be [key, value] or [key, value, context]")
            context = self._context(item[2], f"{field} context") if len(item) == 3 else None
            key = self._key(item[0], f"{field} key")
            items.append(PutItem(key, self._value(item[1], f"{field} value"), context))
        return (b"", b"", (), tuple(items))

    def _options(self, message: dict[str, Any]) -> _Options:
        # Fields an op does not take were refused already, so reading all is safe.
        return _Options(
            self._context(message.get("context"), "context"),
            _positive_int(message.get("r"), "r"),
            _positive_int(message.get("w"), "w"),
            _positive_int(message.get("timeout_ms"), "timeout_ms"),
            _flag(message.get("siblings"), "siblings"),
        )

    # -- fields -------------------------------------------------------------------------

    def _spec_the_slow_way(self, message: dict[str, Any]) -> _OpSpec:
        """The op of a request that uses the alias `operation`, or an error naming the fault."""
        name = message.get("op", _MISSING)
        alias = message.get("operation", _MISSING)
        if name is _MISSING:
            name = alias
        elif alias is not _MISSING and alias != name:
            raise BadRequestError("op and operation disagree; send only one of them")
        if name is _MISSING:
            raise BadRequestError("op is required")
        if type(name) is not str:
            raise BadRequestError(f"op must be a string, got {_type_name(name)}")
        spec = self._specs.get(name)
        if spec is None:
            names = ", ".join(self._specs)
            raise BadRequestError(_bounded(f"unknown op {name!r}; the ops are {names}"))
        return spec

    def _key(self, raw: Any, field: str) -> bytes:
        kind = type(raw)
        if kind is bytes:
            if len(raw) <= self.max_key_bytes:
                return raw  # type: ignore[no-any-return]
        elif kind is str:
            if raw.isascii() and len(raw) <= self.max_key_bytes:
                return raw.encode()  # type: ignore[no-any-return]
        elif raw is _MISSING:
            raise BadRequestError(f"{field} is required")
        # Non-ASCII text, oversized and wrong keys: the same rules and messages as the
        # embedded API, so a key means the same thing however it arrives.
        try:
            return normalize_key(raw, self.max_key_bytes)
        except BadRequestError as exc:
            if field == "key":
                raise
            raise type(exc)(f"{field}: {exc}") from None

    def _value(self, raw: Any, field: str) -> bytes:
        if raw is _MISSING:
            raise BadRequestError(f"{field} is required")
        try:
            # This thread's Packer: ~0.4 us cheaper than encode_value's packb call, same
            # bytes (use_bin_type is msgpack's default). Failures take the slow path below.
            packed: bytes = _PACKER.pack(raw)
            if len(packed) <= self.max_value_bytes:
                return packed
        except (TypeError, ValueError, OverflowError):
            pass
        try:
            return encode_value(raw, self.max_value_bytes)  # raises, with the message
        except BadRequestError as exc:
            if field == "value":
                raise
            raise type(exc)(f"{field}: {exc}") from None

    def _context(self, raw: Any, field: str) -> bytes | None:
        if raw is None:
            return None
        if type(raw) is not bytes:
            raise BadRequestError(
                f"{field} must be bytes (as a get returned it), got {_type_name(raw)}"
            )
        if len(raw) > self.max_context_bytes:
            raise TooLargeError(
                f"{field} is {len(raw)} bytes; the limit is {self.max_context_bytes}"
            )
        return raw

    def _batch(self, raw: Any, field: str) -> list[Any]:
        if raw is _MISSING:
            raise BadRequestError(f"{field} is required")
        if type(raw) is not list:
            raise BadRequestError(f"{field} must be an array, got {_type_name(raw)}")
        if not raw:
            raise BadRequestError(f"{field} must not be empty")
        if len(raw) > self.max_batch_items:
            raise BadRequestError(
                f"{field} has {len(raw)} entries; the limit is {self.max_batch_items}"
            )
        return raw

    def _parse_json(self, frame: bytes) -> dict[str, Any]:
        try:
            text = frame.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("JSON request is not valid UTF-8", _JSON, None) from None
        try:
            message = self._json_decoder.decode(text)
        except RecursionError:
            raise ProtocolError("JSON request is nested too deeply", _JSON, None) from None
        except json.JSONDecodeError as exc:
            raise ProtocolError(
                f"invalid JSON: {exc.msg} at character {exc.pos}", _JSON, None
            ) from None
        except BadRequestError as exc:  # from the $bytes, $map and integer hooks
            # The JSON itself is well formed, so its id can be read and echoed.
            raise ProtocolError(str(exc), _JSON, _recover_json_id(text)) from None
        if type(message) is not dict:
            # Only `{"$bytes": ...}` or `{"$map": ...}` at top level gets here.
            raise ProtocolError(f"request must be a map, got {_type_name(message)}", _JSON, None)
        return message


def _detect_format(frame: bytes) -> WireFormat:
    """JSON if the first byte after ASCII whitespace is `{`, msgpack otherwise."""
    if frame[:1] == b"{" or frame.lstrip(_JSON_WHITESPACE)[:1] == b"{":
        return _JSON
    return _MSGPACK


def _unpack_request(frame: bytes) -> dict[str, Any]:
    size = len(frame)
    try:
        message = msgpack.unpackb(
            frame,
            raw=False,
            use_list=True,
            strict_map_key=True,
            # Capped by the frame (itself at most max_frame_bytes): a declared length can
            # never make the decoder allocate more than the bytes that arrived.
            max_str_len=size,
            max_bin_len=size,
            max_array_len=size,
            max_map_len=size // 2,
            max_ext_len=0,
            ext_hook=_refuse_ext,
        )
    except (ValueError, TypeError, OverflowError, RecursionError, msgpack.UnpackException) as exc:
        raise ProtocolError(
            _msgpack_failure(frame, exc), _MSGPACK, _recover_msgpack_id(frame)
        ) from None
    if type(message) is not dict:
        raise ProtocolError(
            f"request must be a msgpack map, got {_type_name(message)}", _MSGPACK, None
        )
    return message


def _refuse_ext(code: int, data: bytes) -> Any:
    # Only zero-length extensions get here; max_ext_len=0 refuses the others, timestamps too.
    raise BadRequestError("msgpack extension types are not accepted")


def _msgpack_failure(frame: bytes, exc: Exception) -> str:
    if not frame:
        return "empty frame"
    if isinstance(exc, BadRequestError):
        return str(exc)
    if isinstance(exc, msgpack.StackError | RecursionError):
        return "request is nested too deeply"
    if isinstance(exc, msgpack.ExtraData):
        return "trailing bytes after the request"
    if isinstance(exc, UnicodeDecodeError):
        return "a msgpack string is not valid UTF-8"
    text = str(exc)
    if "map key" in text:
        return "map keys must be str or bytes"
    if "max_ext_len" in text:
        return "msgpack extension types are not accepted"
    if "incomplete input" in text:
        return "truncated msgpack"
    return _bounded(f"invalid msgpack: {text or type(exc).__name__}")


def _recover_msgpack_id(frame: bytes) -> RequestId | None:
    """The id of a frame that failed to decode, if its top-level map reaches it intact."""
    if not frame:
        return None
    size = len(frame)
    unpacker = msgpack.Unpacker(
        raw=False,
        max_buffer_size=size,
        max_str_len=size,
        max_bin_len=size,
        max_array_len=size,
        max_map_len=size // 2,
        max_ext_len=0,
        ext_hook=_refuse_ext,
    )
    try:
        unpacker.feed(frame)
        for _ in range(unpacker.read_map_header()):
            if unpacker.unpack() == "id":
                return _request_id(unpacker.unpack())
            unpacker.skip()  # parses without building objects, so a bad value is passed over
    except (ValueError, TypeError, OverflowError, RecursionError, msgpack.UnpackException):
        return None
    return None


def _recover_json_id(text: str) -> RequestId | None:
    """The id of well-formed JSON that a $bytes, $map or integer check refused."""
    try:
        message = _PLAIN_JSON_DECODER.decode(text)
        raw = message.get("id") if type(message) is dict else None
        if type(raw) is dict and len(raw) == 1 and _BYTES_TAG in raw:
            raw = _bytes_from_json(raw[_BYTES_TAG])
        return _request_id(raw)
    except (ValueError, RecursionError):  # JSONDecodeError and BadRequestError are ValueErrors
        return None


def _request_id(raw: Any) -> RequestId | None:
    kind = type(raw)
    if kind is int:
        if not -(2**63) <= raw < 2**64:
            raise BadRequestError("id must fit in 64 bits")
        return raw  # type: ignore[no-any-return]
    if kind is str:
        size = len(raw) if raw.isascii() else _utf8_size(raw, "id")
        if size > MAX_ID_BYTES:
            raise BadRequestError(f"id is longer than {MAX_ID_BYTES} bytes")
        return raw  # type: ignore[no-any-return]
    if kind is bytes:
        if len(raw) > MAX_ID_BYTES:
            raise BadRequestError(f"id is longer than {MAX_ID_BYTES} bytes")
        return raw  # type: ignore[no-any-return]
    if raw is None:
        return None
    raise BadRequestError(f"id must be an integer, string or bytes, got {_type_name(raw)}")


def _utf8_size(text: str, field: str) -> int:
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:  # lone surrogates, possible in JSON's \ud800 escapes
        raise BadRequestError(f"{field} is not valid Unicode text") from None


def _unknown_fields(message: dict[str, Any], spec: _OpSpec) -> str:
    extra = ", ".join(sorted(repr(name) for name in message.keys() - spec.fields))
    return _bounded(f"{spec.op.value} does not take the field(s) {extra}")


def _no_payload(message: dict[str, Any]) -> _Payload:
    return _NO_PAYLOAD


def _positive_int(raw: Any, field: str) -> int | None:
    if raw is None:
        return None
    if type(raw) is not int or not 0 < raw <= _MAX_SMALL_INT:
        raise BadRequestError(f"{field} must be a positive integer up to {_MAX_SMALL_INT}")
    return raw


def _flag(raw: Any, field: str) -> bool:
    if raw is None:
        return False
    if type(raw) is not bool:
        raise BadRequestError(f"{field} must be a boolean, got {_type_name(raw)}")
    return raw


def _type_name(value: object) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def _bounded(message: str) -> str:
    if len(message) <= _MAX_MESSAGE_CHARS:
        return message
    return message[: _MAX_MESSAGE_CHARS - 3] + "..."


# -- JSON <-> msgpack data model ----------------------------------------------------------

_BYTES_TAG: Final = "$bytes"
_MAP_TAG: Final = "$map"


def _map_from_json_pairs(pairs: list[tuple[str, Any]]) -> Any:
    """object_pairs_hook: undo the $bytes and $map forms while parsing, without a second walk."""
    if len(pairs) == 1:
        name, content = pairs[0]
        if name == _BYTES_TAG:
            return _bytes_from_json(content)
        if name == _MAP_TAG:
            return _map_from_json_entries(content)
    return dict(pairs)


def _bytes_from_json(content: Any) -> bytes:
    if type(content) is not str:
        raise BadRequestError(f"$bytes must be a base64 string, got {_type_name(content)}")
    try:
        return base64.b64decode(content, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequestError("$bytes is not valid base64") from None


def _map_from_json_entries(content: Any) -> dict[str | bytes, Any]:
    if type(content) is not list:
        raise BadRequestError(
            f"$map must be an array of [key, value] pairs, got {_type_name(content)}"
        )
    result: dict[str | bytes, Any] = {}
    for entry in content:
        if type(entry) is not list or len(entry) != 2:
            raise BadRequestError("$map must be an array of [key, value] pairs")
        key, value = entry
        if type(key) is not str and type(key) is not bytes:
            raise BadRequestError(f"$map keys must be strings or $bytes, got {_type_name(key)}")
        result[key] = value
    return result


def _parse_json_int(text: str) -> int:
    # Refuse before converting: int() of a megabyte of digits is slow, and such a number
    # could never be stored anyway.
    if len(text) > _MAX_JSON_INT_CHARS:
        raise BadRequestError("JSON integer is too long; integers must fit in 64 bits")
    return int(text)


def _json_int_or_none(text: str) -> int | None:
    return None if len(text) > _MAX_JSON_INT_CHARS else int(text)


# JSON read without the $bytes, $map and integer checks, only to find a refused request's id.
_PLAIN_JSON_DECODER: Final = json.JSONDecoder(parse_int=_json_int_or_none)


def _map_to_json(pairs: list[tuple[Any, Any]]) -> Any:
    """object_pairs_hook for msgpack: maps JSON cannot write as objects become $map."""
    looks_tagged = len(pairs) == 1 and pairs[0][0] in (_BYTES_TAG, _MAP_TAG)
    if not looks_tagged and all(type(key) is str for key, _ in pairs):
        return dict(pairs)
    return {_MAP_TAG: [[key, value] for key, value in pairs]}


def _json_default(value: object) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return {_BYTES_TAG: base64.b64encode(value).decode("ascii")}
    raise TypeError(f"{type(value).__name__} cannot be written as JSON")


def _json_ready(packed: bytes) -> Any:
    """A msgpack encoding decoded into objects json can write (bytes are left to default)."""
    return msgpack.unpackb(packed, raw=False, strict_map_key=False, object_pairs_hook=_map_to_json)


_JSON_ENCODER: Final = json.JSONEncoder(default=_json_default, separators=(",", ":"))


def _dump_json(obj: Any) -> bytes:
    return _JSON_ENCODER.encode(obj).encode("ascii")


# -- replies ------------------------------------------------------------------------------


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
        return _dump_json(_reply_json(reply))
    except (RecursionError, ValueError) as exc:
        # A value nested deeper than json can write (msgpack allows 1024 levels).
        problem = InternalError(
            f"the reply cannot be written as JSON ({type(exc).__name__}); use msgpack"
        )
        return encode_error(problem, reply.request_id, fmt)


def encode_error(error: KVActorsError, request_id: object, fmt: WireFormat) -> bytes:
    """The frame for an error reply; never raises, whatever the error holds."""
    reply: dict[str, Any] = {"ok": False}
    safe_id = _echoable_id(request_id)
    if safe_id is not None:
        reply["id"] = safe_id
    reply["error"] = _error_body(error)
    if fmt is _JSON:
        return _dump_json(reply)
    return msgpack.packb(reply)  # type: ignore[no-any-return]


def _echoable_id(request_id: object) -> RequestId | None:
    try:
        return _request_id(request_id)
    except BadRequestError:
        return None


def _error_body(error: KVActorsError) -> dict[str, str]:
    code = error.code if type(error.code) is str else InternalError.code
    message = _bounded(str(error)) or code
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


def _pack_reply(reply: Reply) -> bytes:
    """The reply as a msgpack map assembled from encoded pieces; values are spliced in as
    stored, never decoded and re-encoded."""
    request_id, found, value_bytes, siblings, context, deleted, results, status, conflict = reply
    parts = [b"", _OK_TRUE]  # parts[0] becomes the map header once the count is known
    count = 1
    if request_id is not None:
        parts += (_ID, _PACKER.pack(request_id))
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
        parts += (_CONTEXT, _PACKER.pack(context))
        count += 1
    if deleted is not None:
        parts.append(_DELETED_TRUE if deleted else _DELETED_FALSE)
        count += 1
    if results is not None:
        parts += (_RESULTS, _array_header(len(results)), *map(_pack_item, results))
        count += 1
    if status is not None:
        parts += (_STATUS, _PACKER.pack(status))
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
        parts += (_CONTEXT, _PACKER.pack(context))
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
        fields["status"] = _json_ready(msgpack.packb(reply.status))
    if reply.value_bytes is not None:
        fields["value"] = _json_ready(reply.value_bytes)
    if reply.siblings is not None:
        fields["siblings"] = [_json_ready(value) for value in reply.siblings]
    if reply.results is not None:
        fields["results"] = [_item_json(item) for item in reply.results]
    return fields


def _item_json(item: ItemResult) -> dict[str, Any]:
    fields = _plain_item_fields(item)
    if item.error is None:
        if item.value_bytes is not None:
            fields["value"] = _json_ready(item.value_bytes)
        if item.siblings is not None:
            fields["siblings"] = [_json_ready(value) for value in item.siblings]
    return fields


# -- client side --------------------------------------------------------------------------


def encode_request(
    op: Op | str,
    *,
    key: str | bytes | None = None,
    value: Any = _MISSING,
    request_id: RequestId | None = None,
    context: bytes | None = None,
    r: int | None = None,
    w: int | None = None,
    timeout_ms: int | None = None,
    siblings: bool | None = None,
    keys: Sequence[str | bytes] | None = None,
    items: Sequence[Sequence[Any]] | None = None,
    fmt: WireFormat = WireFormat.MSGPACK,
) -> bytes:
    """A request frame, for clients; fields left None are not sent. The node validates it."""
    message: dict[str, Any] = {"op": str(op)}
    optional = {
        "id": request_id,
        "key": key,
        "context": context,
        "r": r,
        "w": w,
        "timeout_ms": timeout_ms,
        "siblings": siblings,
        "keys": None if keys is None else list(keys),
        "items": None if items is None else [list(item) for item in items],
    }
    message.update((name, content) for name, content in optional.items() if content is not None)
    if value is not _MISSING:
        message["value"] = value
    try:
        packed: bytes = msgpack.packb(message)
    except (TypeError, ValueError, OverflowError) as exc:
        raise BadRequestError(_bounded(f"request cannot be encoded as msgpack: {exc}")) from None
    if fmt is _MSGPACK:
        return packed
    return _dump_json(_json_ready(packed))


def decode_reply(frame: bytes | bytearray | memoryview) -> dict[str, Any]:
    """A reply frame as a map, bytes and maps restored; raises InternalError if malformed.

    An error reply is returned, not raised: see `reply_error`.
    """
    if type(frame) is not bytes:
        frame = bytes(frame)
    try:
        if _detect_format(frame) is _JSON:
            reply = json.loads(
                frame.decode("utf-8"),
                object_pairs_hook=_map_from_json_pairs,
                parse_int=_parse_json_int,
            )
        else:
            reply = msgpack.unpackb(
                frame, raw=False, strict_map_key=False, max_ext_len=0, ext_hook=_refuse_ext
            )
    except (ValueError, TypeError, OverflowError, RecursionError, msgpack.UnpackException) as exc:
        raise InternalError(_bounded(f"malformed reply: {exc or type(exc).__name__}")) from None
    _check_reply(reply)
    return reply  # type: ignore[no-any-return]


def _check_reply(reply: Any) -> None:
    def malformed(why: str) -> InternalError:
        return InternalError(f"malformed reply: {why}")

    if type(reply) is not dict:
        raise malformed(f"expected a map, got {_type_name(reply)}")
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
