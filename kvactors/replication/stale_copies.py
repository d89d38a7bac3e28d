"""Stale copies: after the ring switches, a member drops the partitions it no longer
replicates.

After a join (or a leave) switches the ring, the member a partition's preference list
lost keeps a stale copy. `StaleCopies` drops it once the partition has not been this
node's for `delay` seconds, with no member joining, leaving or dead and no hint of this
node's waiting (hint delivery reads this node's copies). A record is only dropped if it is
still the one that was read, so a write that reaches the old copy meanwhile survives
until the next sweep.

Runs on the transport thread, from its tick.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Final

from kvactors.core.membership import MemberStatus
from kvactors.core.ops import Forget
from kvactors.core.placement import RingHolder, RingSnapshot
from kvactors.errors import KVActorsError
from kvactors.replication.channel import ReplicaChannel
from kvactors.storage.tables import StorageBackend

__all__ = ["StaleCopies"]

logger = logging.getLogger(__name__)


class StaleCopies:
    """Drops the copies of partitions this node no longer replicates, once the cluster
    has settled for `delay` seconds (a negative delay keeps them)."""

    def __init__(
        self,
        me: str,
        ring: RingHolder,
        storage: StorageBackend,
        channel: ReplicaChannel,
        *,
        delay: float,
        holding: Callable[[], bool] = lambda: False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._me = me
        self._ring = ring
        self._holding = holding
        self._storage = storage
        self._channel = channel
        self._delay = delay
        self._clock = clock
        self._settled_since: tuple[int, float] | None = None  # (snapshot version, since)
        self._next_sweep = 0.0
        self.keys_dropped = 0
        self.partitions_dropped = 0

    def on_tick(self) -> None:
        if self._delay < 0:
            return
        snapshot, now = self._ring.current, self._clock()
        if not _settled(snapshot) or self._holding():
            # Hints still to deliver read this node's copies: they go first.
            self._settled_since = None
            return
        if self._settled_since is None or self._settled_since[0] != snapshot.version:
            self._settled_since = (snapshot.version, now)
            return
        if now - self._settled_since[1] < self._delay or now < self._next_sweep:
            return
        # Again every `delay`: a write from a node with an older view may land meanwhile.
        self._next_sweep = now + max(self._delay, 1.0)
        self._sweep(snapshot)

    def _sweep(self, snapshot: RingSnapshot) -> None:
        dropped = 0
        for partition, replicas in enumerate(snapshot.replica_sets):
            if self._me in replicas:
                continue
            table = self._storage.open_table(partition)
            if not len(table):
                continue
            self.partitions_dropped += 1
            for key, record in table.items():
                forget = Forget(key, record)
                self._channel.send(self._me, partition, forget, _DROPPED, self)
                dropped += 1
        if dropped:
            logger.info("dropping %d keys of partitions this node no longer replicates", dropped)


def _settled(snapshot: RingSnapshot) -> bool:
    """Nobody joining, leaving or dead: every replica set is the one it will stay."""
    return snapshot.next_ring is None and all(
        m.status in (MemberStatus.ALIVE, MemberStatus.LEFT) for m in snapshot.members
    )


class _Dropped:
    def replica_done(self, tag: Any, result: Any) -> None:
        if result:
            tag.keys_dropped += 1

    def replica_failed(self, tag: Any, error: KVActorsError) -> None:
        pass


_DROPPED: Final = _Dropped()
