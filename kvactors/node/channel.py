"""The node's replica channel: the one route of every replica op, to this node's
StoreServers (`LocalBatches`) or, in wire form, to its peers (`PeerCalls`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from kvactors.core.ops import AnyOp, Coordinate, MergeKey, MergeRecord, StoreOp, to_wire
from kvactors.core.versions import state_from_wire
from kvactors.net import rpc
from kvactors.node.local_batches import LocalBatches
from kvactors.node.peer_calls import PeerCalls
from kvactors.replication.channel import IGNORE_ANSWERS, ReplicaTarget, Settle

__all__ = ["NodeChannel"]

# The ops that only travel: a local StoreServer takes neither (`_for_local`).
_REMOTE_ONLY: Final = (MergeRecord, Coordinate)


class NodeChannel:
    """The `ReplicaChannel` of the node's quorum operations and background tasks."""

    def __init__(
        self,
        me: str,
        local: LocalBatches,
        peers: PeerCalls,
        client: rpc.RpcClient,
        timeout: float,
    ) -> None:
        self.me = me
        self._local = local
        self._peers = peers
        self._rpc = client
        self._timeout = timeout
        self.keep_hint: Callable[[str, int, bytes], None] | None = None
        """Keeps a hint (target, partition, key); set where hinted handoff runs."""
        self.read_repairs = 0
        # The last op encoded, and its wire form: a write sends the same MergeKey to each
        # other replica and each next owner, one after the other, and is encoded once.
        # Holding the op keeps its identity from being reused by another object.
        self._encoded: AnyOp | None = None
        self._encoded_wire: list[Any] = []

    def send(
        self, replica: str, partition: int, op: AnyOp, target: ReplicaTarget, tag: Any
    ) -> None:
        if replica == self.me:
            if isinstance(op, _REMOTE_ONLY):
                op = _for_local(op)
            self._local.queued[partition].append((target, tag, op))
            return
        # Inline, not a method: this runs for every replica of every write.
        wire = self._encoded_wire if op is self._encoded else self._encode(op)
        if type(op) is Coordinate:
            self._peers.to_coordinator(replica, wire, target, tag)
        else:
            self._peers.to_replica(replica, wire, target, tag)

    def send_later(self, replica: str, partition: int, op: MergeKey | MergeRecord) -> None:
        if replica == self.me:
            self.send(replica, partition, op, IGNORE_ANSWERS, None)
        else:
            wire = self._encoded_wire if op is self._encoded else self._encode(op)
            self._peers.later(replica, wire)

    def call_peer(self, endpoint: str, op: str, args: dict[str, Any], settle: Settle) -> None:
        self._rpc.call(endpoint, op, args, settle, self._timeout)

    def hint(self, partition: int, key: bytes, target: str) -> None:
        if self.keep_hint is not None:
            self.keep_hint(target, partition, key)

    def count_read_repair(self) -> None:
        self.read_repairs += 1

    def _encode(self, op: AnyOp) -> list[Any]:
        """`op`'s wire form, kept for the sends of the same op that follow."""
        self._encoded_wire = to_wire(op)  # TypeError: an op that never travels
        self._encoded = op
        return self._encoded_wire


def _for_local(op: MergeRecord | Coordinate) -> StoreOp:
    """A remote-only op addressed to this node, as its StoreServer takes it."""
    if type(op) is MergeRecord:
        return MergeKey(op.key, state_from_wire(op.wire_state))
    raise TypeError(f"this node coordinates its own writes (WriteKey), not {op!r:.100}")
