"""The node's replica channel: how quorum operations and background tasks reach
replicas, this node's StoreServers (`LocalBatches`) or its peers (`PeerCalls`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kvactors.core.ops import StoreOp
from kvactors.errors import KVActorsError
from kvactors.net import rpc
from kvactors.node.local_batches import LocalBatches
from kvactors.node.peer_calls import PeerCalls
from kvactors.replication.coordinator import ReplicaTarget

__all__ = ["NodeChannel"]


class NodeChannel:
    """The `ReplicaChannel` of the coordinator and the channel of the background tasks."""

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

    def to_local(self, partition: int, op: StoreOp, target: ReplicaTarget, tag: Any) -> None:
        self._local.queued[partition].append((target, tag, op))

    def to_peer(self, name: str, wire_op: list[Any], target: ReplicaTarget, tag: Any) -> None:
        self._peers.to_replica(name, wire_op, target, tag)

    def to_peer_later(self, name: str, wire_op: list[Any]) -> None:
        self._peers.later(name, wire_op)

    def coordinate_at(self, name: str, wire_op: list[Any], target: ReplicaTarget, tag: Any) -> None:
        self._peers.to_coordinator(name, wire_op, target, tag)

    def call_peer(
        self,
        endpoint: str,
        op: str,
        args: dict[str, Any],
        settle: Callable[[Any, KVActorsError | None], None],
    ) -> None:
        """One RPC of a background task, answered through `settle`."""
        self._rpc.call(endpoint, op, args, settle, self._timeout)

    def hint(self, partition: int, key: bytes, target: str) -> None:
        if self.keep_hint is not None:
            self.keep_hint(target, partition, key)

    def count_read_repair(self) -> None:
        self.read_repairs += 1
