"""Background tasks: the replication work a node does on the transport's tick.

Anti-entropy exchanges, hint delivery, a leaving node's handoff, a joining node's pull
and the dropping of stale copies each run a step per tick, on the transport thread, and
reach replicas through the node's channel. When a join or a leave handoff completes,
the gossip protocol hears it as a message (`Joined`, `HandedOver`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from typing import Any

from kvactors.core.handoff import leave_transfers
from kvactors.core.membership import HandedOver, Joined, MemberStatus
from kvactors.errors import UnavailableError
from kvactors.node.channel import NodeChannel
from kvactors.node.services import NodeServices
from kvactors.replication.anti_entropy import AntiEntropy
from kvactors.replication.hints import HintedHandoff
from kvactors.replication.join_handoff import CatchUp, JoinHandoff, Repairs
from kvactors.replication.leave_handoff import LeaveHandoff
from kvactors.replication.stale_copies import StaleCopies

__all__ = ["BackgroundTasks"]

logger = logging.getLogger(__name__)


class BackgroundTasks:
    """The node's background tasks, each present where the node's setup runs it."""

    def __init__(self, services: NodeServices, channel: NodeChannel) -> None:
        config = services.config
        self._services = services
        self._channel = channel
        storage = services.storage
        self.hints = (
            None
            if storage is None or not config.hinted_handoff
            else HintedHandoff(
                storage.open_hints(),
                services.ring,
                channel,
                time.time,
                max_age=config.hint_max_age,
                max_bytes=config.hint_max_bytes,
            )
        )
        if self.hints is not None:
            channel.keep_hint = self.hints.add
        self.stale_copies = (
            None
            if storage is None
            else StaleCopies(
                config.name,
                services.ring,
                storage,
                channel,
                delay=config.handoff_drop_delay,
                holding=self._hints_waiting,
            )
        )
        trees = services.trees
        self.anti_entropy = (
            None
            if trees is None
            else AntiEntropy(
                config.name,
                trees,
                services.ring,
                channel,
                interval=config.anti_entropy_interval,
                max_keys=config.anti_entropy_max_keys,
            )
        )
        self.join = (
            JoinHandoff(
                config.name,
                services.ring,
                channel,
                replicas=config.replicas,
                concurrency=config.handoff_concurrency,
                catch_up=self._catch_up(),
                # The joiner told every member of itself at contact (`sync_everyone`);
                # two gossip rounds more cover a lost message.
                settle=2 * config.gossip_interval,
                rate=config.handoff_rate,
            )
            if config.join_handoff and services.incarnation == 0
            else None
        )
        self.leave: LeaveHandoff | None = None
        # Whether the gossip protocol has heard that the join (leave) handoff is done.
        self._joined_told = self.join is None
        self._handed_over_told = False

    def on_tick(self, now: float) -> None:
        if self.anti_entropy is not None:
            self.anti_entropy.on_tick(now)
        if self.hints is not None:
            self.hints.on_tick(now)
        self._hand_over_if_leaving()
        self._take_over_if_joining()
        if self.stale_copies is not None:
            self.stale_copies.on_tick()

    def status(self) -> dict[str, Any]:
        """The tasks' part of the node's `status`."""
        hints, stale = self.hints, self.stale_copies
        return {
            "handoff": None if self.leave is None else self.leave.status(),
            "join": None if self.join is None else self.join.status(),
            "dropped": None
            if stale is None
            else {"partitions": stale.partitions_dropped, "keys": stale.keys_dropped},
            "hints": None if hints is None else {"pending": hints.pending(), **asdict(hints.stats)},
            "anti_entropy": (
                None if self.anti_entropy is None else asdict(self.anti_entropy.stats)
            ),
        }

    def _hints_waiting(self) -> bool:
        return self.hints is not None and bool(self.hints.pending())

    def _catch_up(self) -> tuple[CatchUp, Repairs] | None:
        anti_entropy = self.anti_entropy
        if anti_entropy is None:
            return None
        return anti_entropy.exchange_now, lambda: anti_entropy.stats.keys_repaired

    def _hand_over_if_leaving(self) -> None:
        if self._handed_over_told:
            return
        if self.leave is None:
            self.leave = self._leave_handoff()
            if self.leave is None:
                return
        self.leave.on_tick()
        if self.leave.finished:
            self._handed_over_told = self._tell_gossip(HandedOver())

    def _leave_handoff(self) -> LeaveHandoff | None:
        """The handoff of this node's partitions, once the ring says it is leaving."""
        services, config = self._services, self._services.config
        snapshot = services.ring.current
        me = snapshot.members_by_name.get(config.name)
        storage = services.storage
        if me is None or me.status is not MemberStatus.LEAVING or storage is None:
            return None
        staying = [name for name in snapshot.ring.members if name != config.name]
        pairs = leave_transfers(config.name, staying, config.partitions, config.replicas)
        return LeaveHandoff(pairs, storage, self._channel, concurrency=config.handoff_concurrency)

    def _take_over_if_joining(self) -> None:
        if self._joined_told or self.join is None:
            return
        self.join.on_tick()
        if self.join.finished:
            self._joined_told = self._tell_gossip(Joined())

    def _tell_gossip(self, message: object) -> bool:
        """Whether the gossip protocol got `message` (else it is sent on a later tick)."""
        try:
            self._services.tell_gossip(message)
        except UnavailableError:
            return False
        return True
