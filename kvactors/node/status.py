"""Status: the node's view of the cluster and its own counters (the `status` reply)."""

from __future__ import annotations

from typing import Any

from kvactors.config import NodeConfig
from kvactors.core.placement import RingSnapshot
from kvactors.storage.tables import StorageBackend

__all__ = ["cluster_status", "storage_status"]


def cluster_status(config: NodeConfig, snapshot: RingSnapshot) -> dict[str, Any]:
    """Who this node is, the members it knows and the ring and quorums it uses."""
    owned = snapshot.partitions_owned()
    return {
        "node": config.name,
        "endpoint": config.endpoint,
        "partitions": config.partitions,
        "members": [
            {
                "name": member.name,
                "endpoint": member.client_endpoint or member.endpoint,
                "peer_endpoint": member.endpoint,
                "status": member.status.value,
                "incarnation": member.incarnation,
                "partitions": owned.get(member.name, 0),
            }
            for member in snapshot.members
        ],
        "ring": {
            "version": snapshot.version,
            "owners": len(snapshot.ring.members),
            "balance": round(snapshot.ring.balance(1), 4),
        },
        "replication": {
            "replicas": config.replicas,
            "n": snapshot.n_val,
            "r": min(config.read_quorum, snapshot.n_val),
            "w": min(config.write_quorum, snapshot.n_val),
        },
    }


def storage_status(
    config: NodeConfig, backend: StorageBackend | None, syncs: int
) -> dict[str, Any]:
    """Keys, bytes and partitions stored here, and the backend's own counters."""
    status: dict[str, Any] = {"backend": config.storage, "syncs": syncs}
    if backend is not None:
        counts = [
            (table, len(table)) for table in map(backend.open_table, range(config.partitions))
        ]
        status["keys"] = sum(count for _, count in counts)
        status["bytes"] = sum(table.size() for table, count in counts if count)
        status["partitions"] = sum(1 for _, count in counts if count)
        status.update(backend.stats())
    return status
