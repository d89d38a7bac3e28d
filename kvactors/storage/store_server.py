"""StoreServer: the actor that serves one partition's table.

It is the only writer of its table while it runs. Each message is one operation; a
batch (`PutMany`) is applied as one storage transaction. Replies are the handler's
return value, so callers use `ask`; the store never waits on anyone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kvactors.dispatch import DispatchedActor, Dispatcher
from kvactors.storage.backends import Table, Write

__all__ = [
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


@dataclass(frozen=True, slots=True)
class Get:
    key: bytes


@dataclass(frozen=True, slots=True)
class GetMany:
    keys: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Put:
    key: bytes
    value: bytes


@dataclass(frozen=True, slots=True)
class PutMany:
    items: tuple[tuple[bytes, bytes], ...]


@dataclass(frozen=True, slots=True)
class Delete:
    key: bytes


StoreOp = Get | Put | Delete


@dataclass(frozen=True, slots=True)
class StoreBatch:
    """Operations from the request path, answered through callbacks, never by `ask`.

    The ops are applied in order, and all writes in one storage transaction, before
    `reply` gets one result per op (what Get, Put and Delete would return). If the
    StoreServer dies first, `failed(error, handled)` says whether the batch may have
    been partly applied (`handled`) or certainly was not.
    """

    ops: tuple[StoreOp, ...]
    reply: Callable[[list[Any]], None]
    failed: Callable[[BaseException, bool], None]

    def undelivered(self, error: BaseException, handled: bool) -> None:
        self.failed(error, handled)


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
            message.reply(self._apply_batch(message.ops))
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

    def _apply_batch(self, ops: tuple[StoreOp, ...]) -> list[Any]:
        # Writes go to the table in one transaction at the end (group commit); reads in
        # the batch see the batch's earlier writes through `written`.
        table = self._table
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
