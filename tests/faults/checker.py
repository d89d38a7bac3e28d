"""The checker of the fault-injection suite: what a recorded history says happened.

A history is the list of operation records the workloads wrote (one JSON object a line,
read into dicts by the caller). Each record has:

- ``process``: who ran it; a process runs one operation at a time, so the completion that
  follows an invocation of the same process is that invocation's outcome;
- ``type``: ``invoke``, then ``ok`` (acknowledged), ``fail`` (refused) or ``info`` (the
  outcome is unknown: a timeout or a lost connection);
- ``f``: ``put`` (set workload: a new key), ``add`` (register workload: an element added to
  the set stored under a hot key) or ``read`` (the final reads, by process ``final``);
- ``key``, ``value``, ``time`` (seconds, from one monotonic clock all processes share) and,
  optionally, ``node`` (the node the request went to).

The final reads, made after the faults are healed and the replicas have converged, say
what survived: for a ``put`` the value read (None when the key was not found), for an
``add`` the union of every sibling of the hot key (a list of elements).

Pure: no I/O, no clock, no randomness. `check` returns a `Summary`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["FINAL_PROCESS", "Operation", "Summary", "Window", "check", "pair_operations"]

FINAL_PROCESS = "final"
"""The process name of the final reads."""

WRITES = frozenset({"put", "add"})
COMPLETIONS = frozenset({"ok", "fail", "info"})


@dataclass(frozen=True, slots=True)
class Window:
    """A span of time during which a fault was in force: [start, end)."""

    start: float
    end: float

    def __contains__(self, moment: object) -> bool:
        return isinstance(moment, int | float) and self.start <= moment < self.end


@dataclass(frozen=True, slots=True)
class Operation:
    """An invocation and its outcome: ``ok``, ``fail``, ``info``, or None (never completed)."""

    process: str
    f: str
    key: str
    value: Any
    invoked_at: float
    outcome: str | None
    completed_at: float | None
    node: str | None
    result: Any = None
    """The value the completion carried (what a read returned)."""


@dataclass(frozen=True, slots=True)
class Summary:
    """What a history shows. Counts are of workload operations (final reads excluded)."""

    operations: int
    acknowledged: int
    """Writes (put or add) completed ``ok``."""
    failed: int
    unknown: int
    """Operations completed ``info``, or invoked and never completed."""
    lost: int
    """Acknowledged writes absent from the final reads."""
    lost_writes: tuple[tuple[str, Any], ...]
    """(key, value) of each lost write, sorted."""
    unexpected: int
    """Values in the final reads that no operation ever tried to write (corruption)."""
    unread: int
    """Acknowledged writes whose key the final reads did not cover (not checked)."""
    fault_operations: int
    """Operations invoked inside a fault window (on the nodes asked about, if any)."""
    fault_ok: int
    availability: float | None
    """fault_ok / fault_operations; None when nothing ran during a fault."""


def _text(value: object) -> str:
    return str(value)


def pair_operations(history: Iterable[Mapping[str, Any]]) -> list[Operation]:
    """Each invocation with the completion that followed it in its process, in order.

    Raises ValueError on a history that breaks the rules (a completion without an
    invocation, two invocations at once in one process, an unknown type).
    """
    pending: dict[str, Mapping[str, Any]] = {}
    operations: list[Operation] = []

    def close(invocation: Mapping[str, Any], completion: Mapping[str, Any] | None) -> None:
        node = invocation.get("node")
        operations.append(
            Operation(
                process=_text(invocation["process"]),
                f=_text(invocation["f"]),
                key=_text(invocation["key"]),
                value=invocation.get("value"),
                invoked_at=float(invocation["time"]),
                outcome=None if completion is None else str(completion["type"]),
                completed_at=None if completion is None else float(completion["time"]),
                node=None if node is None else _text(node),
                result=None if completion is None else completion.get("value"),
            )
        )

    for record in history:
        process, kind = _text(record["process"]), record["type"]
        if kind == "invoke":
            if process in pending:
                raise ValueError(f"process {process} invoked twice without a completion")
            pending[process] = record
        elif kind in COMPLETIONS:
            invocation = pending.pop(process, None)
            if invocation is None:
                raise ValueError(f"process {process}: {kind} without an invocation")
            close(invocation, record)
        else:
            raise ValueError(f"unknown record type {kind!r}")
    for invocation in pending.values():
        close(invocation, None)
    operations.sort(key=lambda operation: operation.invoked_at)
    return operations


def _final_reads(operations: Sequence[Operation]) -> dict[tuple[str, str], Any]:
    """(f it checks, key) -> what the last successful final read of the key returned."""
    reads: dict[tuple[str, str], Any] = {}
    for operation in operations:
        if operation.process == FINAL_PROCESS and operation.outcome == "ok":
            reads[(operation.f, operation.key)] = operation.result
    return reads


def _as_elements(value: object) -> set[str]:
    if value is None:
        return set()
    if isinstance(value, list | tuple | set | frozenset):
        return {_text(element) for element in value}
    return {_text(value)}


def _loss(
    writes: Sequence[Operation], reads: Mapping[tuple[str, str], Any]
) -> tuple[list[tuple[str, Any]], int, int]:
    """(lost writes, unexpected values, unread acknowledged writes)."""
    lost: list[tuple[str, Any]] = []
    unread = 0
    attempted_puts: dict[str, set[str]] = {}
    attempted_adds: dict[str, set[str]] = {}
    for write in writes:
        table = attempted_puts if write.f == "put" else attempted_adds
        table.setdefault(write.key, set()).add(_text(write.value))
    for write in writes:
        if write.outcome != "ok":
            continue
        check = "put" if write.f == "put" else "add"
        if (check, write.key) not in reads:
            unread += 1
            continue
        read = reads[(check, write.key)]
        if write.f == "put":
            # A put's key is unique to it: what is read must be what was written.
            if read is None or _text(read) != _text(write.value):
                lost.append((write.key, write.value))
        elif _text(write.value) not in _as_elements(read):
            lost.append((write.key, write.value))
    unexpected = 0
    for (f, key), read in reads.items():
        if f == "put":
            unexpected += read is not None and _text(read) not in attempted_puts.get(key, set())
        else:
            unexpected += len(_as_elements(read) - attempted_adds.get(key, set()))
    return lost, unexpected, unread


def _availability(
    operations: Sequence[Operation], windows: Sequence[Window], nodes: Iterable[str] | None
) -> tuple[int, int]:
    """(operations invoked in a window, of which completed ok)."""
    wanted = None if nodes is None else set(nodes)
    inside = [
        operation
        for operation in operations
        if any(operation.invoked_at in window for window in windows)
        and (wanted is None or operation.node in wanted)
    ]
    return len(inside), sum(operation.outcome == "ok" for operation in inside)


def check(
    history: Iterable[Mapping[str, Any]],
    fault_windows: Sequence[Window] = (),
    nodes: Iterable[str] | None = None,
) -> Summary:
    """The summary of `history`; availability counts operations invoked inside
    `fault_windows` and sent to one of `nodes` (every node when None)."""
    paired = pair_operations(history)
    workload = [operation for operation in paired if operation.process != FINAL_PROCESS]
    writes = [operation for operation in workload if operation.f in WRITES]
    lost, unexpected, unread = _loss(writes, _final_reads(paired))
    in_fault, ok_in_fault = _availability(workload, fault_windows, nodes)
    return Summary(
        operations=len(workload),
        acknowledged=sum(write.outcome == "ok" for write in writes),
        failed=sum(operation.outcome == "fail" for operation in workload),
        unknown=sum(operation.outcome in (None, "info") for operation in workload),
        lost=len(lost),
        lost_writes=tuple(sorted(lost, key=lambda pair: (pair[0], _text(pair[1])))),
        unexpected=unexpected,
        unread=unread,
        fault_operations=in_fault,
        fault_ok=ok_in_fault,
        availability=ok_in_fault / in_fault if in_fault else None,
    )
