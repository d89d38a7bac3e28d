"""The source side of a join's pull: a current replica answers the `pull` RPC op.

A joining node pulls every partition it will replicate from a current replica (see
`join_handoff`). Each call names up to `PARTITIONS_PER_PULL` partitions, each with a
cursor (the last key the joiner merged); the source answers, per partition, the keys
after the cursor in byte order with their states as stored, up to the call's `max_keys`
keys and about `max_bytes` of records in all, and how many keys are left after them.
It runs on the source's transport thread and reads the partition's table there.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any, Final

from kvactors.errors import BadRequestError
from kvactors.storage.records import read_wire_state
from kvactors.storage.tables import StorageBackend

__all__ = ["PARTITIONS_PER_PULL", "PULL", "PULL_BYTES", "serve_pull"]

PULL: Final = "pull"
"""The RPC op a joining node pulls partitions with."""

PARTITIONS_PER_PULL: Final = 64
"""Most partitions one pull call names (the source answers up to `max_keys` keys in all)."""

PULL_BYTES: Final = 1 << 20
"""About how many bytes of records one answer holds, unless the node says otherwise."""


def serve_pull(
    storage: StorageBackend, partitions: int, args: dict[str, Any], max_bytes: int = PULL_BYTES
) -> dict[str, Any]:
    """A joining node's pull: for each [partition, after] asked, the keys after `after`
    (in byte order) with their states, up to `max_keys` keys and about `max_bytes` of
    records in all (at least one key), and how many keys are left after them (0: the
    partition is done). BadRequestError on a malformed call."""
    asked = args.get("partitions")
    budget = args.get("max_keys")
    if type(budget) is not int or budget <= 0:
        raise BadRequestError("a pull needs max_keys, a positive integer")
    if not isinstance(asked, list) or len(asked) > PARTITIONS_PER_PULL:
        raise BadRequestError(f"a pull needs partitions: at most {PARTITIONS_PER_PULL} pairs")
    parts = []
    room = _Room(budget, max_bytes)
    for item in asked:
        match item:
            case [int(partition), bytes(after)] if 0 <= partition < partitions:
                items, left = _keys_after(storage, partition, after, room)
                parts.append([partition, items, left])
            case _:
                raise BadRequestError(f"a pull asks for [partition, after-key], got {item!r:.80}")
    return {"parts": parts}


@dataclass(slots=True)
class _Room:
    """What is left of a pull answer's budget: keys, and bytes of records."""

    keys: int
    size: int
    taken: int = 0

    def takes(self, record: bytes) -> bool:
        """Whether the answer has room for `record` (the first always fits); takes it."""
        if self.keys <= 0 or (self.taken and len(record) > self.size):
            return False
        self.keys -= 1
        self.size -= len(record)
        self.taken += 1
        return True


def _keys_after(
    storage: StorageBackend, partition: int, after: bytes, room: _Room
) -> tuple[list[list[Any]], int]:
    table = storage.open_table(partition)
    if room.keys <= 0 and not after:
        return [], len(table)  # the call's budget is spent: only the count is asked
    records = dict(table.items())
    keys = sorted(records)
    start = bisect.bisect_right(keys, after) if after else 0
    items = []
    for key in keys[start:]:
        record = records[key]
        if not room.takes(record):
            break
        # The record holds the state in wire form already: no state is built to send it.
        items.append([key, read_wire_state(record)])
    return items, len(keys) - start - len(items)
