"""MembershipManager: the member table of this node, and who wants to hear of changes.

The GossipProtocol tells it the table whenever membership changes (a member joins,
becomes suspect, dead, alive again, leaves); it logs the change in words and passes the
new table to every subscriber (the ResponsibilityManager rebuilds the ring from it).

One gossip message can change many members at once (a forged one most of all), so an update
logs at most `_MAX_CHANGE_LINES` changes and counts the rest in one line; names and
endpoints are escaped (`printable`) on their way into the log.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import pykka

from kvactors.core.membership import Member, MemberChange, MembersChanged, printable
from kvactors.node.services import NodeServices
from kvactors.runtime.supervision import SupervisedActor

__all__ = ["MembershipManager", "Subscribe", "TableUpdate"]

logger = logging.getLogger(__name__)

# Membership changes one update logs line by line; the rest are counted in one line.
_MAX_CHANGE_LINES = 16


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Send me `MembersChanged` now and after every change."""

    subscriber: pykka.ActorRef[Any]


@dataclass(frozen=True, slots=True)
class TableUpdate:
    """From the GossipProtocol: the table after `changes`."""

    me: Member
    members: tuple[Member, ...]
    changes: tuple[MemberChange, ...]


class MembershipManager(SupervisedActor):
    """Keeps the latest member table and tells subscribers of every change."""

    def __init__(self, services: NodeServices) -> None:
        super().__init__()
        self._services = services
        self._me = services.ring.current.members_by_name[services.config.name]
        self._members: tuple[Member, ...] = (self._me,)
        self._subscribers: list[pykka.ActorRef[Any]] = []

    def on_start(self) -> None:
        self._services.membership = self.actor_ref

    def __str__(self) -> str:
        return f"MembershipManager {self._me.name}"

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, TableUpdate):
            self._update(message)
            return None
        if isinstance(message, Subscribe):
            self._subscribers.append(message.subscriber)
            message.subscriber.tell(MembersChanged(self._me, self._members))
            return None
        return super().on_receive(message)

    def members(self) -> tuple[Member, ...]:
        """Every member this node knows of (call through the proxy)."""
        return self._members

    def _update(self, update: TableUpdate) -> None:
        self._me, self._members = update.me, update.members
        for change in update.changes[:_MAX_CHANGE_LINES]:
            logger.info("member %s", _describe(change))
        if len(update.changes) > _MAX_CHANGE_LINES:
            logger.info("and %d more membership changes", len(update.changes) - _MAX_CHANGE_LINES)
        news = MembersChanged(update.me, update.members)
        alive = []
        for subscriber in self._subscribers:
            try:
                subscriber.tell(news)
            except pykka.ActorDeadError:
                continue  # it has been restarted; its successor subscribes again
            alive.append(subscriber)
        self._subscribers = alive


def _describe(change: MemberChange) -> str:
    after = change.after
    where = f"{printable(after.name)} ({printable(after.endpoint)})"
    if change.before is None:
        return f"{where} is known: {after.status.value}, incarnation {after.incarnation}"
    if change.before.status is not after.status:
        return (
            f"{where} is now {after.status.value} (was {change.before.status.value}), "
            f"incarnation {after.incarnation}"
        )
    return f"{where}: incarnation {after.incarnation}, {after.status.value}"
