"""The replica-operation vocabulary: what a coordinator, a background task or the
embedded client asks of one partition's replica.

Replica operations (`ReadKey`, `MergeKey`, `WriteKey`, ...) go to every replica of a key;
the embedded single-node operations (`Get`, `Put`, `Delete`, `GetMany`, `PutMany`) read the
winning value and write without a causal context.

They are NamedTuples: immutable like frozen dataclasses, and several times cheaper to
build, which counts at one or more per request.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from kvactors.core.clocks import VectorClock
from kvactors.core.versions import KeyState

__all__ = [
    "Delete",
    "Forget",
    "Get",
    "GetMany",
    "MergeKey",
    "MergeMany",
    "Put",
    "PutMany",
    "ReadKey",
    "ReadWinner",
    "StoreOp",
    "WriteKey",
    "Written",
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


StoreOp = Get | Put | Delete | ReadKey | ReadWinner | WriteKey | MergeKey | MergeMany | Forget
