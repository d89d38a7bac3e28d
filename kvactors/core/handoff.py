"""Ownership handoff planning: what moves, from whom to whom, when the ring changes.

When membership changes, every partition whose replica set gains a member must be copied
to that member from one that already holds it. This module is the pure half of that
work, and the one place that says what moves: `plan_transfers` compares the ring before
and the ring after and returns a `Plan` of `Transfer`s. Its users add what each needs:

- a joining node pulls what `pull_sources` names (JoinHandoff);
- a leaving node streams what `leave_transfers` names: the plan of its leave, with
  itself the only sender (LeaveHandoff);
- `kvactors status --plan` counts the plans of a join and of each member's leave.

Choices
-------
- One transfer per (partition, new replica) pair. A partition that only loses a replica
  needs no data moved: the member it lost drops its copy after the switch.
- The source is an old replica that can send (is alive), preferably one that stays a
  replica (it keeps serving the partition, so a leaving node is not held up by being a
  source).
- Sources are spread by load: transfers are visited in (partition, target) order and each
  takes the least-loaded candidate so far, ties broken by a stable hash of (partition,
  target, candidate). Without that, the first member of each preference list would serve
  far more than its share.
- A partition with a new replica but no old replica that can send is reported as
  `unrecoverable`: no transfer can rebuild it (only hints or anti-entropy from elsewhere
  could).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Collection, Set
from dataclasses import dataclass

from kvactors.core.ring import Ring

__all__ = ["Plan", "Transfer", "leave_transfers", "plan_change", "plan_transfers", "pull_sources"]


@dataclass(frozen=True, slots=True)
class Transfer:
    """Copy `partition` from `source` (an old replica) to `target` (a new replica)."""

    partition: int
    source: str
    target: str


@dataclass(frozen=True, slots=True)
class Plan:
    """The transfers a membership change needs, sorted by (partition, target)."""

    transfers: tuple[Transfer, ...]
    unrecoverable: tuple[int, ...]
    """Partitions that gain a replica while none of their old replicas can send, ascending."""

    @property
    def partitions_moving(self) -> int:
        """How many distinct partitions have at least one transfer."""
        return len({transfer.partition for transfer in self.transfers})

    def sources_for(self, target: str) -> dict[int, str]:
        """The partitions `target` receives, each with the member that sends it."""
        return {t.partition: t.source for t in self.transfers if t.target == target}


def plan_transfers(old: Ring, new: Ring, n: int, *, senders: Set[str] | None = None) -> Plan:
    """Every transfer that moving from `old` to `new` (first n replicas) needs.

    `senders` limits the sources (to the members alive, say); None means every old
    replica can send. When both rings have at least n members, the number of transfers
    equals `moved_replicas(old, new, n)` if every old replica can send; a ring shrinking
    below n loses slots without gaining any, which moved_replicas counts and no transfer
    needs.
    """
    if old.partitions != new.partitions:
        raise ValueError(f"rings differ in partitions: {old.partitions} != {new.partitions}")
    if n < 0:
        raise ValueError(f"n must not be negative, got {n}")
    load: Counter[str] = Counter()
    transfers: list[Transfer] = []
    unrecoverable: list[int] = []
    for partition in range(old.partitions):
        before = old.preference_list(partition, n)
        after = new.preference_list(partition, n)
        targets = sorted(set(after) - set(before))
        if not targets:
            continue
        candidates = _candidate_sources(before, after, senders)
        if not candidates:
            unrecoverable.append(partition)
            continue
        for target in targets:
            source = _least_loaded(candidates, partition, target, load)
            load[source] += 1
            transfers.append(Transfer(partition=partition, source=source, target=target))
    return Plan(transfers=tuple(transfers), unrecoverable=tuple(unrecoverable))


def plan_change(
    before: Collection[str],
    after: Collection[str],
    *,
    partitions: int,
    replicas: int,
    senders: Set[str] | None = None,
) -> Plan:
    """`plan_transfers` from the ring of the members `before` to the ring of those
    `after`, each built as every node builds it. Nobody left after: nothing moves.

    A leaving node passes itself as the only sender: it streams what it replicated, so
    the plan holds the partitions it held, and only those (a partition whose replica set
    the new ring reshuffles without the leaver in it is `unrecoverable` here: another
    member would have to send it)."""
    if not after:
        return Plan(transfers=(), unrecoverable=())
    old = Ring.build(list(before), partitions=partitions, replicas=replicas)
    new = Ring.build(list(after), partitions=partitions, replicas=replicas)
    return plan_transfers(old, new, replicas, senders=senders)


def pull_sources(old: Ring, new: Ring, n: int, *, joiner: str, alive: Set[str]) -> dict[int, str]:
    """The partitions `joiner` gains from `old` to `new`, each with the member to pull it
    from: an alive old replica, spread by load as `plan_transfers` spreads them.

    A partition no alive replica holds stays wanted, from an old replica that may come
    back (a later plan picks a live one): owning it empty would leave it a copy short
    once the old owners drop theirs."""
    plan = plan_transfers(old, new, n, senders=alive)
    sources = plan.sources_for(joiner)
    if plan.unrecoverable:
        for partition, source in plan_transfers(old, new, n).sources_for(joiner).items():
            sources.setdefault(partition, source)
    return sources


def leave_transfers(
    me: str, staying: list[str], partitions: int, replicas: int
) -> list[tuple[int, str]]:
    """(partition, member) pairs: each partition `me` replicates and each member that
    enters the partition's first N once `me` is gone. `me` streams them all: the plan of
    its leave with itself the only sender."""
    plan = plan_change(
        [*staying, me], staying, partitions=partitions, replicas=replicas, senders={me}
    )
    return [(transfer.partition, transfer.target) for transfer in plan.transfers]


# ------------------------------------------------------------------------------ sources


def _candidate_sources(
    before: tuple[str, ...], after: tuple[str, ...], senders: Set[str] | None
) -> tuple[str, ...]:
    """Old replicas that can send; only those that stay replicas, if any do."""
    holders = [m for m in before if senders is None or m in senders]
    staying = [m for m in holders if m in after]
    return tuple(staying or holders)


def _least_loaded(
    candidates: tuple[str, ...], partition: int, target: str, load: Counter[str]
) -> str:
    return min(candidates, key=lambda c: (load[c], _tie_break(partition, target, c), c))


def _tie_break(partition: int, target: str, candidate: str) -> bytes:
    """A stable, evenly spread order among equally loaded candidates."""
    material = b"\x00".join([str(partition).encode(), _encode(target), _encode(candidate)])
    return hashlib.blake2b(material, digest_size=8).digest()


def _encode(name: str) -> bytes:
    return name.encode("utf-8", "surrogatepass")
