"""The client wire protocol: the request and reply types, request decoding and
validation (`Codec`), and `encode_request` for clients.

docs/protocol.md is the contract for client authors (frames and formats, requests,
replies, errors, bytes in JSON, limits) and must agree with this code. Replies are built
and encoded in kvactors.net.replies; the JSON form of msgpack data is in
kvactors.net.json_form. No I/O: the transport hands the codec one frame and sends back
the bytes it is given.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping, Sequence
from enum import StrEnum
from typing import Any, Final, NamedTuple

import msgpack

from kvactors.codec import encode_value, normalize_key
from kvactors.config import NodeConfig
from kvactors.core.context import MAX_CONTEXT_BYTES
from kvactors.errors import BadRequestError, ConfigError, KVActorsError, TooLargeError
from kvactors.net.json_form import (
    BYTES_TAG,
    bytes_from_json,
    decode_plain_json,
    dump_json,
    json_ready,
    map_from_json_pairs,
    parse_json_int,
    type_name,
)

__all__ = [
    "DEFAULT_MAX_BATCH_ITEMS",
    "DEFAULT_MAX_CONTEXT_BYTES",
    "MAX_ID_BYTES",
    "PACKER",
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
    "bounded",
    "checked_request_id",
    "default_max_frame_bytes",
    "detect_format",
    "encode_request",
    "refuse_ext",
]

RequestId = int | str | bytes
"""What a client may use as a request id: echoed back unchanged."""

MAX_ID_BYTES: Final = 256
DEFAULT_MAX_CONTEXT_BYTES: Final = MAX_CONTEXT_BYTES  # the largest context a node makes
DEFAULT_MAX_BATCH_ITEMS: Final = 1000
_FRAME_SLACK_BYTES: Final = 64 * 1024  # room for op, id, quorums and map headers
_MAX_SMALL_INT: Final = 2**31 - 1  # r, w, timeout_ms: what any client language holds in an int32
_MIN_INT_ID: Final = -(2**63)  # an integer id fits in 64 bits, signed or not
_MAX_INT_ID: Final = 2**64 - 1
_MAX_MESSAGE_CHARS: Final = 1000  # error messages are for humans; never echo a whole frame


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
    REMOVE = "remove"


class PutItem(NamedTuple):
    """One write of a put_many: key, msgpack-encoded value, causal context (or None)."""

    key: bytes
    value_bytes: bytes
    context: bytes | None


class Request(NamedTuple):
    """One validated client request.

    A NamedTuple (immutable, slotted) rather than a frozen dataclass: building one is the
    hot path of every request, and a frozen dataclass costs several times as much to build.

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


PACKER: Final = _ThreadPacker()
"""This thread's msgpack Packer (`PACKER.pack(obj)`); kvactors.net.replies packs with it too."""

_MISSING: Final[Any] = object()
# Enum members fetched once: reading `WireFormat.JSON` off the class costs about as much
# as a whole field check, and these are read on every request.
_MSGPACK: Final = WireFormat.MSGPACK
_JSON: Final = WireFormat.JSON
_JSON_WHITESPACE: Final = b" \t\r\n"
_COMMON_FIELDS: Final = frozenset({"op", "operation", "id", "timeout_ms"})
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
            object_pairs_hook=map_from_json_pairs, parse_int=parse_json_int
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
            _OpSpec(Op.REMOVE, frozenset({"node"}), 2, _member_name),
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
        fmt = _MSGPACK if frame and frame[0] >= 0x80 else detect_format(frame)
        if len(frame) > self.max_frame_bytes:
            raise ProtocolTooLargeError(
                f"frame is {len(frame)} bytes; the limit is {self.max_frame_bytes}", fmt, None
            )
        if fmt is not _MSGPACK:
            return self._validate(self._parse_json(frame), fmt)
        try:
            # Strings as str, arrays as lists, map keys str or bytes only; and every
            # declared length capped by the frame's own (itself at most max_frame_bytes),
            # so that no length can make the decoder allocate more than the bytes that
            # arrived: each of these is unpackb's default (its max_*_len default to the
            # buffer's length, the map's to half of it), so only extension types are
            # named. Parsing keyword arguments is a good part of the call for a small
            # request.
            message = msgpack.unpackb(frame, max_ext_len=0, ext_hook=refuse_ext)
        except (
            ValueError,
            TypeError,
            OverflowError,
            RecursionError,
            msgpack.UnpackException,
        ) as exc:
            raise ProtocolError(
                _msgpack_failure(frame, exc), _MSGPACK, _recover_msgpack_id(frame)
            ) from None
        if type(message) is not dict:
            raise ProtocolError(
                f"request must be a msgpack map, got {type_name(message)}", _MSGPACK, None
            )
        return self._validate(message, _MSGPACK)

    def key_bytes(self, key: object) -> bytes:
        """The stored form of a key; raises BadRequestError or TooLargeError."""
        return normalize_key(key, self.max_key_bytes)

    def value_bytes(self, value: object) -> bytes:
        """The canonical msgpack encoding of a value; raises BadRequestError or TooLargeError."""
        return encode_value(value, self.max_value_bytes)

    def _validate(self, message: dict[str, Any], fmt: WireFormat) -> Request:
        request_id: RequestId | None = None
        try:
            raw_id = message.get("id")
            if raw_id is not None:
                # An int id is the usual one: checked here, without a call.
                if type(raw_id) is int and _MIN_INT_ID <= raw_id <= _MAX_INT_ID:
                    request_id = raw_id
                else:
                    request_id = checked_request_id(raw_id)
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
        raw = message.get("key", _MISSING)
        # The usual key (ASCII text or bytes, within the limit) without a call; `_key`
        # for the others, and for every error.
        kind = type(raw)
        if kind is str and len(raw) <= self.max_key_bytes and raw.isascii():
            return (raw.encode(), b"", (), ())
        if kind is bytes and len(raw) <= self.max_key_bytes:
            return (raw, b"", (), ())
        return (self._key(raw, "key"), b"", (), ())

    def _key_and_value(self, message: dict[str, Any]) -> _Payload:
        raw = message.get("key", _MISSING)
        kind = type(raw)  # as in _key_only
        if kind is str and len(raw) <= self.max_key_bytes and raw.isascii():
            key = raw.encode()
        elif kind is bytes and len(raw) <= self.max_key_bytes:
            key = raw
        else:
            key = self._key(raw, "key")
        raw = message.get("value", _MISSING)
        try:  # as _value does, without the call
            value: bytes | None = PACKER.pack(raw)
        except (TypeError, ValueError, OverflowError):
            value = None
        if value is None or len(value) > self.max_value_bytes:
            value = self._value(raw, "value")  # its errors, and their messages
        return (key, value, (), ())

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
            raise BadRequestError(f"op must be a string, got {type_name(name)}")
        spec = self._specs.get(name)
        if spec is None:
            names = ", ".join(self._specs)
            raise BadRequestError(bounded(f"unknown op {name!r}; the ops are {names}"))
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
            # This thread's Packer: cheaper than encode_value's packb call, which builds a
            # Packer each time; same bytes (use_bin_type is msgpack's default). Failures
            # take the slow path below.
            packed: bytes = PACKER.pack(raw)
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
                f"{field} must be bytes (as a get returned it), got {type_name(raw)}"
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
            raise BadRequestError(f"{field} must be an array, got {type_name(raw)}")
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
            raise ProtocolError(f"request must be a map, got {type_name(message)}", _JSON, None)
        return message


def detect_format(frame: bytes) -> WireFormat:
    """The format of a frame, request or reply: JSON if the first byte after ASCII
    whitespace is `{`, msgpack otherwise."""
    if frame[:1] == b"{" or frame.lstrip(_JSON_WHITESPACE)[:1] == b"{":
        return _JSON
    return _MSGPACK


def refuse_ext(code: int, data: bytes) -> Any:
    """msgpack's ext_hook for frames from clients: extension types are refused."""
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
    return bounded(f"invalid msgpack: {text or type(exc).__name__}")


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
        ext_hook=refuse_ext,
    )
    try:
        unpacker.feed(frame)
        for _ in range(unpacker.read_map_header()):
            if unpacker.unpack() == "id":
                return checked_request_id(unpacker.unpack())
            unpacker.skip()  # parses without building objects, so a bad value is passed over
    except (ValueError, TypeError, OverflowError, RecursionError, msgpack.UnpackException):
        return None
    return None


def _recover_json_id(text: str) -> RequestId | None:
    """The id of well-formed JSON that a $bytes, $map or integer check refused."""
    try:
        message = decode_plain_json(text)
        raw = message.get("id") if type(message) is dict else None
        if type(raw) is dict and len(raw) == 1 and BYTES_TAG in raw:
            raw = bytes_from_json(raw[BYTES_TAG])
        return checked_request_id(raw)
    except (ValueError, RecursionError):  # JSONDecodeError and BadRequestError are ValueErrors
        return None


def checked_request_id(raw: Any) -> RequestId | None:
    """`raw` as a request id, if it is one a client may send; BadRequestError otherwise."""
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
    raise BadRequestError(f"id must be an integer, string or bytes, got {type_name(raw)}")


def _utf8_size(text: str, field: str) -> int:
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:  # lone surrogates, possible in JSON's \ud800 escapes
        raise BadRequestError(f"{field} is not valid Unicode text") from None


def _unknown_fields(message: dict[str, Any], spec: _OpSpec) -> str:
    extra = ", ".join(sorted(repr(name) for name in message.keys() - spec.fields))
    return bounded(f"{spec.op.value} does not take the field(s) {extra}")


def _no_payload(message: dict[str, Any]) -> _Payload:
    return _NO_PAYLOAD


MAX_MEMBER_NAME_BYTES: Final = 255


def _member_name(message: dict[str, Any]) -> _Payload:
    """`remove`: the member's name (printable, at most 255 bytes), carried as the key."""
    name = message.get("node", _MISSING)
    if type(name) is not str or not name or not name.isprintable():
        raise BadRequestError("node must be a member's name: a non-empty printable string")
    encoded = name.encode("utf-8")
    if len(encoded) > MAX_MEMBER_NAME_BYTES:
        raise BadRequestError(f"node must be at most {MAX_MEMBER_NAME_BYTES} bytes")
    return (encoded, b"", (), ())


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
        raise BadRequestError(f"{field} must be a boolean, got {type_name(raw)}")
    return raw


def bounded(message: str) -> str:
    """An error message cut to a length fit to send (never a whole frame echoed)."""
    if len(message) <= _MAX_MESSAGE_CHARS:
        return message
    return message[: _MAX_MESSAGE_CHARS - 3] + "..."


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
    node: str | None = None,
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
        "node": node,
    }
    message.update((name, content) for name, content in optional.items() if content is not None)
    if value is not _MISSING:
        message["value"] = value
    try:
        packed: bytes = msgpack.packb(message)
    except (TypeError, ValueError, OverflowError) as exc:
        raise BadRequestError(bounded(f"request cannot be encoded as msgpack: {exc}")) from None
    if fmt is _MSGPACK:
        return packed
    return dump_json(json_ready(packed))
