"""NodeResponsibilityManager: ring + members -> which node owns a key.

It listens to the MembershipManager; on every change of membership it builds the
consistent-hash ring of the members that own data (alive and suspect ones: dead, leaving
and left members drop out until they return) and publishes an immutable `RingSnapshot`
(kvactors.core.placement) in a `RingHolder`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pykka

from kvactors.core.membership import MembersChanged
from kvactors.core.placement import RingHolder, RingSnapshot, build_snapshot
from kvactors.runtime.supervision import SupervisedActor

__all__ = ["ResponsibilityManager"]

logger = logging.getLogger(__name__)


class ResponsibilityManager(SupervisedActor):
    """Rebuilds the ring on every membership change and publishes it; `on_snapshot` hears
    of each new snapshot (a durable node remembers its members with it)."""

    def __init__(
        self,
        holder: RingHolder,
        partitions: int,
        subscribe: Callable[[pykka.ActorRef[Any]], None],
        replicas: int = 3,
        on_snapshot: Callable[[RingSnapshot], None] | None = None,
    ) -> None:
        super().__init__()
        self._on_snapshot = on_snapshot
        self._holder = holder
        self._partitions = partitions
        self._replicas = replicas
        self._subscribe = subscribe

    def on_start(self) -> None:
        self._subscribe(self.actor_ref)

    def __str__(self) -> str:
        return "ResponsibilityManager"

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, MembersChanged):
            self._rebuild(message)
            return None
        return super().on_receive(message)

    def _rebuild(self, change: MembersChanged) -> None:
        old = self._holder.current
        snapshot = build_snapshot(
            old.version + 1, change.me, change.members, self._partitions, self._replicas
        )
        if snapshot.ring.members != old.ring.members:
            logger.info(
                "ring rebuilt: %d owning members (%s), balance %.3f",
                len(snapshot.ring.members),
                ", ".join(snapshot.ring.members),
                snapshot.ring.balance(1),
            )
        self._holder.publish(snapshot)
        if self._on_snapshot is not None:
            self._on_snapshot(snapshot)
