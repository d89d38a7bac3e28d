"""StoreServer: the actor that serves one partition's table.

It is the only writer of its table while it runs. Each message is one operation; a
batch (`PutMany`) is applied as one storage transaction. Replies are the handler's
return value, so callers use `ask`; the store never waits on anyone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kvactors.storage.backends import Table, Write
from kvactors.supervision import SupervisedActor

__all__ = [
    "CrashNow",
    "Delete",
    "Get",
    "GetMany",
    "InjectedCrashError",
    "Put",
    "PutMany",
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


@dataclass(frozen=True, slots=True)
class CrashNow:
    """Fault injection: the StoreServer raises `InjectedCrashError` when it handles this."""


class InjectedCrashError(RuntimeError):
    """The crash a `CrashNow` message causes."""


class StoreServer(SupervisedActor):
    """Serves get/put/delete for one partition over a table it does not own."""

    def __init__(self, partition: int, table: Table) -> None:
        super().__init__()
        self.partition = partition
        self._table = table

    def __str__(self) -> str:
        return f"StoreServer[{self.partition}]"

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
