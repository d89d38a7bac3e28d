"""The replica channel: how the replication state machines reach replicas.

A state machine (a quorum read or write, an anti-entropy exchange, a hint's delivery, a
join's pull, a leave's transfer) names the replica an op is for, never the route: the
channel applies the op on this node's StoreServer when the replica is this node, and
sends it in its wire form (`core.ops.to_wire`) to that member otherwise, as
riak_core's `riak_core_vnode_master:command/3` sends the same message to a local or a
remote vnode. The answer comes back the same way either way, a `ReadKey`'s as a decoded
`KeyState`. The node implements it (`node.channel.NodeChannel`);
`kvactors.testing.FakeChannel` records what is sent, for tests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from kvactors.core.ops import AnyOp, MergeKey, MergeRecord
from kvactors.errors import KVActorsError

__all__ = ["IGNORE_ANSWERS", "ReplicaChannel", "ReplicaTarget", "Settle"]


class ReplicaTarget(Protocol):
    """Who hears a replica's answer; `tag` says which replica (or attempt) it was."""

    def replica_done(self, tag: Any, result: Any) -> None: ...

    def replica_failed(self, tag: Any, error: KVActorsError) -> None: ...


class _IgnoreAnswers:
    """The target of replica ops nobody waits for (read repair, anti-entropy repairs,
    merges to next owners): their answers, and their failures, go nowhere."""

    def replica_done(self, tag: Any, result: Any) -> None:
        pass

    def replica_failed(self, tag: Any, error: KVActorsError) -> None:
        pass


IGNORE_ANSWERS: ReplicaTarget = _IgnoreAnswers()

Settle = Callable[[Any, KVActorsError | None], None]
"""Hears an RPC's result, or its error."""


class ReplicaChannel(Protocol):
    """How replica ops reach the replicas of a partition, wherever they are. Answers
    come back on the transport thread; a refusal (a member that is not one any more)
    may come at once, inside `send`."""

    @property
    def me(self) -> str:
        """This node's name: a replica named so is this node's StoreServer."""

    def send(
        self, replica: str, partition: int, op: AnyOp, target: ReplicaTarget, tag: Any
    ) -> None:
        """Apply `op` on `replica`'s copy of `partition`; the answer (or the failure)
        reaches `target` with `tag`.

        For another member, `op` must be one that travels (`RemoteOp`); a `ReadKey`
        answers a `KeyState` either way. A `Coordinate` has `replica` coordinate the
        write (it answers ``[existed, siblings]``), so it names another member.
        """

    def send_later(self, replica: str, partition: int, op: MergeKey | MergeRecord) -> None:
        """A merge nobody waits for (its answer is ignored): for another member it may
        wait up to a tick to share one call with others."""

    def call_peer(self, endpoint: str, op: str, args: dict[str, Any], settle: Settle) -> None:
        """One RPC of a background task (an exchange's tree step, a pull), answered
        through `settle`."""

    def hint(self, partition: int, key: bytes, target: str) -> None:
        """Keep a hint: replica `target` lacks `key`, which this node holds."""

    def count_read_repair(self) -> None:
        """Count one read repair sent (the node's status reports them)."""
