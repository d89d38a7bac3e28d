"""StoreServer: the actor that serves one partition's table.

It is the only writer of its table while it runs. The embedded client `ask`s it one
operation (or one `GetMany`/`PutMany`) at a time; the request path `tell`s it a
`StoreBatch` and gets the results through a callback. Writes of one message are applied
as one storage transaction. The store never waits on anyone.

The messages of the request path are NamedTuples: immutable like frozen dataclasses, and
several times cheaper to build, which counts at one or more per request.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from kvactors.dispatch import DispatchedActor, Dispatcher
from kvactors.storage.backends import Table, Write

__all__ = [
    "BatchSink",
    "CrashNow",
    "Delete",
    "Get",
    "GetMany",
    "InjectedCrashError",
    "Put",
    "PutMany",
    "StoreBatch",
    "StoreServer",
]


class Get(NamedTuple):
    key: bytes


@dataclass(frozen=True, slots=True)
class GetMany:
    keys: tuple[bytes, ...]


class Put(NamedTuple):
    key: bytes
    value: bytes


@dataclass(frozen=True, slots=True)
class PutMany:
    items: tuple[tuple[bytes, bytes], ...]


class Delete(NamedTuple):
    key: bytes


StoreOp = Get | Put | Delete


class BatchSink(Protocol):
    """Who hears how a `StoreBatch` went; called on whichever thread ran the StoreServer."""

    def batch_done(self, token: Any, results: list[Any]) -> None: ...

    def batch_failed(self, token: Any, error: BaseException, handled: bool) -> None: ...


class StoreBatch(NamedTuple):
    """Operations from the request path, answered through a sink, never by `ask`.

    The ops are applied in order, and all writes in one storage transaction, before
    `sink.batch_done(token, results)` gets one result per op (what Get, Put and Delete
    would return). If the StoreServer dies first, `sink.batch_failed(token, error,
    handled)` says whether the batch may have been partly applied (`handled`) or
    certainly was not. A sink and a token rather than two callbacks: nothing to build per
    batch but the tuple itself.
    """

    ops: Sequence[StoreOp]
    sink: BatchSink
    token: Any

    def undelivered(self, error: BaseException, handled: bool) -> None:
        self.sink.batch_failed(self.token, error, handled)


@dataclass(frozen=True, slots=True)
class CrashNow:
    """Fault injection: the StoreServer raises `InjectedCrashError` when it handles this."""


class InjectedCrashError(RuntimeError):
    """The crash a `CrashNow` message causes."""


class StoreServer(DispatchedActor):
    """Serves get/put/delete for one partition over a table it does not own."""

    def __init__(self, partition: int, table: Table, dispatcher: Dispatcher | None = None) -> None:
        super().__init__(dispatcher)
        self.partition = partition
        self._table = table

    def __str__(self) -> str:
        return f"StoreServer[{self.partition}]"

    def _handle_receive(self, message: Any) -> Any:
        # The request path's message first, ahead of Pykka's checks for proxy calls.
        if type(message) is StoreBatch:
            message.sink.batch_done(message.token, self._apply_batch(message.ops))
            return None
        return super()._handle_receive(message)

    def on_receive(self, message: Any) -> Any:
        table = self._table
        match message:
            case Get(key):
                return table.get(key)
            case Put(key, value):
                table.apply(((key, value),))
                return None
            case Delete(key):
                existed = table.get(key) is not None
                if existed:
                    table.apply(((key, None),))
                return existed
            case GetMany(keys):
                return [table.get(key) for key in keys]
            case PutMany(items):
                writes: tuple[Write, ...] = items
                table.apply(writes)
                return None
            case CrashNow():
                raise InjectedCrashError(f"{self}: crash injected")
        return super().on_receive(message)

    def _apply_batch(self, ops: Sequence[StoreOp]) -> list[Any]:
        # Writes go to the table in one transaction at the end (group commit); reads in
        # the batch see the batch's earlier writes through `written`.
        table = self._table
        if len(ops) == 1 and type(ops[0]) is Get:
            return [table.get(ops[0].key)]  # the commonest batch: one read, nothing to merge
        written: dict[bytes, bytes | None] = {}
        writes: list[Write] = []
        results: list[Any] = []
        for op in ops:
            if type(op) is Get:
                results.append(written[op.key] if op.key in written else table.get(op.key))
            elif type(op) is Put:
                written[op.key] = op.value
                writes.append((op.key, op.value))
                results.append(None)
            else:
                key = op.key
                existed = (written[key] if key in written else table.get(key)) is not None
                written[key] = None
                writes.append((key, None))
                results.append(existed)
        if writes:
            table.apply(writes)
        return results
