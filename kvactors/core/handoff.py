"""Ownership handoff planning: which partitions stream from whom to whom, and when.

When membership changes, every partition whose replica set gains a member must be copied
to that member from one that already holds it (issue 6, DESIGN.md section 6). This module
is the pure half of that work: it compares two rings and returns a `Plan` of `Transfer`s,
and `schedule` picks which of them to start next under a concurrency limit. The handoff
actors carry the plan out; `kvactors status --plan` reports it before a join or leave.

Choices
-------
- One transfer per (partition, new replica) pair. A partition that only loses a replica
  needs no data moved: the leaver drops its copy after the switch.
- The source is an old replica that is alive, preferably one that stays a replica (it
  keeps serving the partition, so a leaving node is not held up by being a source).
- Sources are spread by load: transfers are visited in (partition, target) order and each
  takes the least-loaded candidate so far, ties broken by a stable hash of (partition,
  target, candidate). Without that, the first member of each preference list would serve
  far more than its share.
- A partition with a new replica but no alive old replica is reported as `unrecoverable`:
  no transfer can rebuild it (only hints or anti-entropy from elsewhere could).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from kvactors.core.ring import Ring

__all__ = ["Plan", "Transfer", "plan_transfers", "schedule"]


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
    """Partitions that gain a replica while none of their old replicas is alive, ascending."""

    @property
    def partitions_moving(self) -> int:
        """How many distinct partitions have at least one transfer."""
        return len({transfer.partition for transfer in self.transfers})

    def by_target(self) -> dict[str, int]:
        """Transfers per receiving member."""
        return dict(sorted(Counter(t.target for t in self.transfers).items()))

    def by_source(self) -> dict[str, int]:
        """Transfers per sending member."""
        return dict(sorted(Counter(t.source for t in self.transfers).items()))

    def bytes_estimate(self, bytes_per_partition: Mapping[int, int]) -> int:
        """Bytes the plan copies: each transfer sends its whole partition. A partition
        missing from the mapping counts as empty (the sources report only what they hold)."""
        return sum(bytes_per_partition.get(t.partition, 0) for t in self.transfers)

    def without(self, finished: Collection[Transfer]) -> Plan:
        """The plan left once `finished` transfers are done."""
        done = set(finished)
        remaining = tuple(t for t in self.transfers if t not in done)
        return Plan(transfers=remaining, unrecoverable=self.unrecoverable)


def plan_transfers(old: Ring, new: Ring, n: int, *, alive: frozenset[str] | None = None) -> Plan:
    """Every transfer that moving from `old` to `new` (first n replicas) needs.

    `alive` limits the sources; None means every old replica can send. When both rings
    have at least n members, the number of transfers equals `moved_replicas(old, new, n)`
    if every old replica is alive; a ring shrinking below n loses slots without gaining
    any, which moved_replicas counts and no transfer needs.
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
        candidates = _candidate_sources(before, after, alive)
        if not candidates:
            unrecoverable.append(partition)
            continue
        for target in targets:
            source = _least_loaded(candidates, partition, target, load)
            load[source] += 1
            transfers.append(Transfer(partition=partition, source=source, target=target))
    return Plan(transfers=tuple(transfers), unrecoverable=tuple(unrecoverable))


def schedule(plan: Plan, running: Collection[Transfer], limit: int) -> tuple[Transfer, ...]:
    """The transfers to start now, in plan order, so that at most `limit` run at once.

    Transfers whose source and target are both idle come first, one per member
    (riak_core's flow control: a node streams one partition at a time). Slots still free
    after that go to the pending transfers on the least busy members, so a single join
    still runs `limit` transfers into the newcomer instead of one. Transfers in `running`
    are not started again; pass `plan.without(finished)` to leave out the finished ones.
    """
    if limit < 0:
        raise ValueError(f"limit must not be negative, got {limit}")
    busy = set(running)
    pending = [t for t in plan.transfers if t not in busy]
    slots = limit - len(busy)
    if slots <= 0 or not pending:
        return ()
    load: Counter[str] = Counter()
    for transfer in busy:
        load[transfer.source] += 1
        load[transfer.target] += 1
    chosen = _pick_least_busy(pending, load, slots)
    return tuple(t for t in pending if t in chosen)


# ------------------------------------------------------------------------------ sources


def _candidate_sources(
    before: tuple[str, ...], after: tuple[str, ...], alive: frozenset[str] | None
) -> tuple[str, ...]:
    """Alive old replicas; only those that stay replicas, if any do."""
    holders = [m for m in before if alive is None or m in alive]
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


# ------------------------------------------------------------------------------ scheduling


def _pick_least_busy(pending: list[Transfer], load: Counter[str], slots: int) -> set[Transfer]:
    """Up to `slots` transfers, one at a time, each on the least busy source and target
    (ties in plan order). Transfers on two idle members come first, so members double up
    only once none is left."""
    chosen: set[Transfer] = set()
    left = list(pending)
    for _ in range(min(slots, len(left))):
        # min() returns the first of equals, so ties go in plan order.
        best = min(left, key=lambda t: load[t.source] + load[t.target])
        left.remove(best)
        chosen.add(best)
        load[best.source] += 1
        load[best.target] += 1
    return chosen
