"""Peer calls: replica operations for other members, batched into RPCs.

The ops of one pass of the transport for one member travel as one call (`store` for replica ops,
`coordinate` for writes a replica coordinates), cut where a call would outgrow the
frame the peer accepts. Merges nobody waits for (to joining next owners) wait for the
tick, or for a call's worth, to share a call. Each op hears its own answer, or the
error of its call as a whole. Runs on the transport thread.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from kvactors.core.ops import wire_bytes
from kvactors.core.placement import RingHolder
from kvactors.core.versions import check_state_bounds, state_from_wire
from kvactors.errors import InternalError, KVActorsError, UnavailableError, error_for_code
from kvactors.net import rpc
from kvactors.replication.channel import IGNORE_ANSWERS, ReplicaTarget

__all__ = ["COORDINATE", "PeerCalls", "PeerEntry", "call_bounds"]

COORDINATE = "coordinate"
"""The RPC op that asks a replica to coordinate writes for a node that is not one."""

PeerEntry = tuple[ReplicaTarget, Any, list[Any]]
"""One queued op for a peer: who hears the answer, its tag, and the op in wire form."""

# Most ops in one call to a peer: its answer (values read) must fit the DEALER's limit,
# `SocketOptions.reply_frames` frames.
CALL_OPS = 64
# Most merges `later` holds for one member before it sends them without the tick: a
# call's worth.
_LATER_OPS = CALL_OPS

_Answered = Callable[[ReplicaTarget, Any, list[Any], Any], None]


class PeerCalls:
    """Per member, the replica ops and forwarded writes of this flush."""

    def __init__(
        self,
        client: rpc.RpcClient,
        ring: RingHolder,
        timeout: float,
        call_bytes: int,
        schedule: Callable[[Callable[[], None]], object],
        *,
        max_clock_skew: float = 60.0,
    ) -> None:
        """`schedule(flush)` has `flush` run once the transport has drained what is
        ready (the transport's `call_soon`): a pass with nothing for peers costs
        nothing here."""
        self._rpc = client
        self._schedule = schedule
        self._max_clock_skew = max_clock_skew
        self._scheduled = False
        self._ring = ring
        self._timeout = timeout
        self._call_bytes = call_bytes
        self._to_replicas: defaultdict[str, list[PeerEntry]] = defaultdict(list)
        self._to_coordinators: defaultdict[str, list[PeerEntry]] = defaultdict(list)
        self._later: defaultdict[str, list[PeerEntry]] = defaultdict(list)
        self.replica_calls = 0
        self.forwarded = 0

    def to_replica(self, name: str, wire_op: list[Any], target: ReplicaTarget, tag: Any) -> None:
        """A replica op for member `name`, sent on this flush."""
        self._queue(self._to_replicas, name, (target, tag, wire_op))

    def to_coordinator(
        self, name: str, wire_op: list[Any], target: ReplicaTarget, tag: Any
    ) -> None:
        """A write for member `name` to coordinate, sent on this flush."""
        self._queue(self._to_coordinators, name, (target, tag, wire_op))

    def later(self, name: str, wire_op: list[Any]) -> None:
        """A merge nobody waits for: sent on the tick, or once a call's worth waits."""
        endpoint = self._ring.current.endpoint_of(name)
        if endpoint is None:
            return  # not a member any more: nobody to tell
        entries = self._later[endpoint]
        entries.append((IGNORE_ANSWERS, None, wire_op))
        if len(entries) >= _LATER_OPS:
            self._call_replicas(endpoint, self._later.pop(endpoint))

    def flush(self) -> None:
        self._scheduled = False
        if self._to_replicas:
            to_replicas, self._to_replicas = self._to_replicas, defaultdict(list)
            for endpoint, entries in to_replicas.items():
                self._call_replicas(endpoint, entries)
        if self._to_coordinators:
            to_coordinators, self._to_coordinators = self._to_coordinators, defaultdict(list)
            for endpoint, entries in to_coordinators.items():
                self._call_coordinator(endpoint, entries)

    def on_tick(self) -> None:
        if self._later:
            later, self._later = self._later, defaultdict(list)
            for endpoint, entries in later.items():
                self._call_replicas(endpoint, entries)

    def _queue(
        self, queues: defaultdict[str, list[PeerEntry]], name: str, entry: PeerEntry
    ) -> None:
        """Queue `entry` for member `name`'s next call, if it is still a member."""
        endpoint = self._ring.current.endpoint_of(name)
        if endpoint is None:
            entry[0].replica_failed(entry[1], UnavailableError(f"{name} is not a member any more"))
        else:
            queues[endpoint].append(entry)
            if not self._scheduled:
                self._scheduled = True
                self._schedule(self.flush)

    def _call_replicas(self, endpoint: str, entries: list[PeerEntry]) -> None:
        """The replica ops for one peer, as `store` calls."""

        def answered(target: ReplicaTarget, tag: Any, wire_op: list[Any], answer: Any) -> None:
            if wire_op[0] != "read":
                target.replica_done(tag, answer)
                return
            try:
                state = state_from_wire(answer)
                # A peer's answer is input like any other: a state stamped too far
                # ahead would carry this node's clock there through read repair.
                check_state_bounds(state, int((time.time() + self._max_clock_skew) * 1000))
            except ValueError as exc:
                target.replica_failed(tag, InternalError(f"{endpoint}: {exc}"))
            else:
                target.replica_done(tag, state)

        self.replica_calls += 1
        self._call(endpoint, rpc.STORE, entries, answered)

    def _call_coordinator(self, endpoint: str, entries: list[PeerEntry]) -> None:
        """Writes for a replica to coordinate, as `coordinate` calls."""

        def answered(target: ReplicaTarget, tag: Any, _wire_op: list[Any], answer: Any) -> None:
            if isinstance(answer, list) and len(answer) == 3 and answer[0] == "ok":
                target.replica_done(tag, answer[1:])
            elif isinstance(answer, list) and len(answer) == 3 and answer[0] == "error":
                target.replica_failed(tag, error_for_code(str(answer[1]), str(answer[2])))
            else:
                failure = InternalError(f"{endpoint} answered a write with {answer!r:.100}")
                target.replica_failed(tag, failure)

        self.forwarded += len(entries)
        self._call(endpoint, COORDINATE, entries, answered)

    def _call(self, endpoint: str, op: str, entries: list[PeerEntry], answered: _Answered) -> None:
        """`entries`' ops in as few RPCs as fit a frame (`call_bounds`)."""
        for start, end in call_bounds(entries, self._call_bytes):
            self._call_once(endpoint, op, entries[start:end], answered)

    def _call_once(
        self, endpoint: str, op: str, entries: list[PeerEntry], answered: _Answered
    ) -> None:
        def settle(result: Any, error: KVActorsError | None) -> None:
            results = result.get("results") if isinstance(result, dict) else None
            if error is None and (not isinstance(results, list) or len(results) != len(entries)):
                error = InternalError(f"{endpoint} answered a {op} call with {result!r:.100}")
            if error is not None:
                for target, tag, _ in entries:
                    target.replica_failed(tag, error)
                return
            assert isinstance(results, list)
            for (target, tag, wire_op), answer in zip(entries, results):  # noqa: B905
                answered(target, tag, wire_op, answer)

        ops = [entry[2] for entry in entries]
        self._rpc.call(endpoint, op, {"ops": ops}, settle, self._timeout)


def call_bounds(entries: list[PeerEntry], max_bytes: int) -> list[tuple[int, int]]:
    """Where to cut `entries` into calls of at most CALL_OPS ops and about `max_bytes`
    (the peer's ROUTER disconnects a larger frame); one op alone is always a call."""
    if len(entries) <= 1:
        return [(0, 1)] if entries else []
    bounds = []
    start = size = 0
    for index, (_, _, wire_op) in enumerate(entries):
        op_size = wire_bytes(wire_op)
        if index > start and (index - start >= CALL_OPS or size + op_size > max_bytes):
            bounds.append((start, index))
            start, size = index, 0
        size += op_size
    bounds.append((start, len(entries)))
    return bounds
