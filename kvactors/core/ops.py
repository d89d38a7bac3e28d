"""The replica-operation vocabulary: what a coordinator, a background task or the
embedded client asks of one partition's replica.

Replica operations (`ReadKey`, `MergeKey`, `WriteKey`, ...) go to every replica of a key;
the embedded single-node operations (`Get`, `Put`, `Delete`, `GetMany`, `PutMany`) read the
winning value and write without a causal context.

An op for a replica on another node travels in its wire form (`to_wire`, a msgpack-able
list such as ``["merge", key, state]``) and is read back there by `from_wire`, which
checks it as hostile input; docs/protocol.md lists the forms. Only the node's channel
sees the difference: the state machines that send ops name the replica, not the route.

They are NamedTuples: immutable like frozen dataclasses, and several times cheaper to
build, which counts at one or more per request.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from kvactors.core.clocks import VectorClock
from kvactors.core.versions import KeyState, state_from_wire, state_to_wire
from kvactors.errors import BadRequestError, TooLargeError

__all__ = [
    "AnyOp",
    "Coordinate",
    "Delete",
    "Forget",
    "Get",
    "GetMany",
    "MergeKey",
    "MergeMany",
    "MergeRecord",
    "Put",
    "PutMany",
    "ReadKey",
    "ReadWinner",
    "RemoteOp",
    "StoreOp",
    "WriteKey",
    "Written",
    "from_wire",
    "to_wire",
    "wire_bytes",
]


class Get(NamedTuple):
    """The winning value's bytes, or None (missing or deleted)."""

    key: bytes


@dataclass(frozen=True, slots=True)
class GetMany:
    keys: tuple[bytes, ...]


class Put(NamedTuple):
    """Write without a causal context: supersedes every version this replica holds."""

    key: bytes
    value: bytes


@dataclass(frozen=True, slots=True)
class PutMany:
    items: tuple[tuple[bytes, bytes], ...]


class Delete(NamedTuple):
    """A tombstone without a causal context; answers whether a live value was there."""

    key: bytes


class ReadKey(NamedTuple):
    """A replica's `KeyState` of `key` (EMPTY_STATE when it has none)."""

    key: bytes


class ReadWinner(NamedTuple):
    """(winning value or None, encoded context) of `key`: a plain get where this replica
    is the key's only one, answered without building its state."""

    key: bytes


class WriteKey(NamedTuple):
    """Coordinate a client write here: make its version, store it, answer `Written`.

    `value` None writes a tombstone. `context` None is a write without a context, which
    supersedes whatever this replica holds.
    """

    key: bytes
    value: bytes | None
    context: VectorClock | None


class MergeKey(NamedTuple):
    """Join `state` into this replica's state of `key` (replication, read repair);
    answers None."""

    key: bytes
    state: KeyState


class MergeMany(NamedTuple):
    """`MergeKey` for each (key, state) of `items`, as one operation: a bulk transfer's
    batch costs one message and one answer (None), not one per key."""

    items: Sequence[tuple[bytes, KeyState]]


class Forget(NamedTuple):
    """Delete the key's record outright (no tombstone) if it is still `record`: a copy
    this node no longer replicates. Answers whether it was deleted."""

    key: bytes
    record: bytes


class Written(NamedTuple):
    """What a coordinated write left: the new state, and whether a live value preceded it."""

    state: KeyState
    existed: bool


class MergeRecord(NamedTuple):
    """`MergeKey` for a replica elsewhere, with the state as stored: a record's own wire
    form (`records.read_wire_state`), sent without being decoded and encoded again."""

    key: bytes
    wire_state: list[Any]


class Coordinate(NamedTuple):
    """A client write for a replica elsewhere to coordinate (this node holds no replica
    of the key): the value (None deletes), the client's context as it sent it, and the W
    it asked for. Answered `[existed, siblings]`."""

    key: bytes
    value: bytes | None
    context: bytes | None
    w: int | None


StoreOp = Get | Put | Delete | ReadKey | ReadWinner | WriteKey | MergeKey | MergeMany | Forget

RemoteOp = Get | Put | Delete | ReadKey | MergeKey | MergeRecord | Coordinate
"""The ops that can travel to another node."""

AnyOp = StoreOp | RemoteOp
"""Any op a replica channel carries."""

CheckValue = Callable[[bytes], bytes]
"""Checks a value from the wire (size, one msgpack object); returns it or raises."""


def to_wire(op: AnyOp) -> list[Any]:
    """The wire form of `op`, for a replica on another node; TypeError for an op that
    only this node's StoreServers take (`WriteKey`, `MergeMany`, ...)."""
    # The hot path first: every replicated write sends a merge to each other replica.
    if type(op) is MergeKey:
        return ["merge", op.key, state_to_wire(op.state)]
    if type(op) is ReadKey:
        return ["read", op.key]
    if type(op) is MergeRecord:
        return ["merge", op.key, op.wire_state]
    if type(op) is Coordinate:
        return ["write", op.key, op.value, op.context, op.w]
    if type(op) is Put:
        return ["put", op.key, op.value]
    if type(op) is Get:
        return ["get", op.key]
    if type(op) is Delete:
        return ["delete", op.key]
    raise TypeError(f"not an op that travels: {op!r:.100}")


_FORMS: Final = {
    "read": "key",
    "merge": "key, state",
    "write": "key, value or nil, context or nil, w (a positive integer) or nil",
    "get": "key",
    "put": "key, value",
    "delete": "key",
}
"""The arguments of each op's wire form, for the errors that refuse a malformed one."""


def from_wire(
    raw: object, max_key_bytes: int, check_value: CheckValue
) -> Get | Put | Delete | ReadKey | MergeKey | Coordinate:
    """The op a peer sent, checked as hostile input: a malformed one raises
    BadRequestError naming its shape and the form it should have (its subclass
    TooLargeError for a key over `max_key_bytes`), never anything else. Every value
    passes `check_value`; a `Coordinate`'s context is checked where it is coordinated
    (`context.client_context`)."""
    match raw:
        case ["merge", bytes(key), state] if len(key) <= max_key_bytes:
            return MergeKey(key, _checked_state(state, check_value))
        case ["read", bytes(key)] if len(key) <= max_key_bytes:
            return ReadKey(key)
        case ["write", bytes(key), bytes() | None as value, bytes() | None as context, w] if len(
            key
        ) <= max_key_bytes and (w is None or (type(w) is int and w > 0)):
            return Coordinate(key, None if value is None else check_value(value), context, w)
        case ["get", bytes(key)] if len(key) <= max_key_bytes:
            return Get(key)
        case ["put", bytes(key), bytes(value)] if len(key) <= max_key_bytes:
            return Put(key, check_value(value))
        case ["delete", bytes(key)] if len(key) <= max_key_bytes:
            return Delete(key)
    raise _refusal(raw, max_key_bytes)


def _refusal(raw: object, max_key_bytes: int) -> BadRequestError:
    """Why `from_wire` refuses `raw` (off its fast path, which matches the valid forms)."""
    match raw:
        case [str(verb), bytes(key), *_] if verb in _FORMS and len(key) > max_key_bytes:
            return TooLargeError(
                f"{verb} op: the key is {len(key)} bytes; the limit is {max_key_bytes}"
            )
        case [str(verb), *_] if verb in _FORMS:
            return BadRequestError(
                f"malformed {verb} op {_shape(raw)}: its form is [{verb!r}, {_FORMS[verb]}]"
            )
    return BadRequestError(f"not a replica op: {_shape(raw)}; the ops are {', '.join(_FORMS)}")


def wire_bytes(wire_op: list[Any]) -> int:
    """About the encoded size of an op's wire form (`to_wire`): its key and values."""
    verb, key = wire_op[0], wire_op[1]
    if verb == "merge":
        versions = wire_op[2][1]
        return len(key) + sum(len(v[0]) + 64 for v in versions if v[0]) + 64 * len(versions)
    if verb == "write":
        value, context = wire_op[2], wire_op[3]
        return len(key) + len(value or b"") + len(context or b"") + 16
    if verb == "put":
        return len(key) + len(wire_op[2]) + 16
    return len(key) + 16


def _checked_state(wire: object, check_value: CheckValue) -> KeyState:
    try:
        state = state_from_wire(wire)
    except ValueError as exc:
        raise BadRequestError(f"merge op: {exc}") from None  # exc names the key state
    for version in state.versions:
        if version.value is not None:
            check_value(version.value)
    return state


def _shape(raw: object) -> str:
    """A short description of a malformed op that is safe for any input (no deep repr):
    its verb, if it has one, and the types of what follows."""
    if not isinstance(raw, list):
        return type(raw).__name__
    items = [
        repr(item[:20]) if index == 0 and isinstance(item, str) else type(item).__name__
        for index, item in enumerate(raw[:5])
    ]
    return "[" + ", ".join(items) + (", ...]" if len(raw) > 5 else "]")
