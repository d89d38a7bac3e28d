"""Placement: who replicates which partition, as one node sees it at one moment.

`build_snapshot` turns a member table into an immutable `RingSnapshot` (the ring of the
members that own data, the joining members' next ring, the replicas the dead members
would be);
`RingHolder` holds the current one, which request paths read without asking any actor,
as Erlang code reads a `persistent_term`.

A joining member owns nothing yet: it is the *next owner* of the partitions it will
take (riak_core's "next" field). The snapshot carries a second ring with the joining
members in it; writes reach the next owners too, while they pull each partition from a
current owner (JoinHandoff), and the ring switches to them only once the member has
every partition and announces itself alive.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from kvactors.core.membership import Member, MemberStatus
from kvactors.core.ring import Ring

__all__ = ["RingHolder", "RingSnapshot", "build_snapshot"]

# Members that own partitions. A suspect still owns its share: suspicion is often wrong.
# A leaving member owns nothing: its slots pass to the others at once, so new writes reach
# the members that take over while it streams them what it holds (LeaveHandoff).
# A joining member owns nothing until its join handoff is done (it is a next owner).
_OWNING = frozenset({MemberStatus.ALIVE, MemberStatus.SUSPECT})


@dataclass(frozen=True, slots=True)
class RingSnapshot:
    """Who owns what, as this node sees it at one moment. Immutable; read it freely."""

    version: int
    me: str
    ring: Ring
    members: tuple[Member, ...]
    """Every member this node knows of, owning or not, sorted by name."""
    route: tuple[str | None, ...] = field(repr=False)
    """Per partition: None when this node owns it, else the owner's endpoint."""
    endpoints: Mapping[str, str] = field(default_factory=dict, repr=False)
    """The endpoint of each owning or joining member, by name."""
    n_val: int = 1
    """N: replicas per key, the configured count capped at the cluster's size. The size
    counts dead members too (they may come back), so losing nodes does not lower N: the
    quorums then become unreachable, and requests fail with `unavailable` instead of
    quietly keeping fewer copies."""

    replica_sets: tuple[tuple[str, ...], ...] = field(default=(), repr=False)
    """Per partition: the names of its replicas, preferred first (`replicas`)."""

    missing_replica_sets: tuple[tuple[str, ...], ...] = field(default=(), repr=False)
    """Per partition, while members are dead: the dead members whose replica slots the
    ring has given to others for now (`missing_replicas`; empty when no member is dead)."""

    next_ring: Ring | None = field(default=None, repr=False)
    """The ring once the joining members own their shares; None when nobody joins."""

    next_owner_sets: tuple[tuple[str, ...], ...] = field(default=(), repr=False)
    """Per partition, while members join: the joining members that will be among its
    replicas (`next_owners`), who take its writes already; empty when nobody joins."""

    suspects: frozenset[str] = frozenset()
    """Owning members suspected of having failed: still replicas (suspicion is often
    wrong), but the last a write is forwarded to."""

    detached: bool = False
    """This node is joining and no member of the cluster has answered it yet: it knows
    nobody to replicate to, so it takes no data requests (a write acknowledged by it
    alone could vanish once it learns where the key's replicas really are)."""

    @property
    def joining(self) -> tuple[str, ...]:
        """The members joining now, by name."""
        return tuple(m.name for m in self.members if m.status is MemberStatus.JOINING)

    def next_owners(self, partition: int) -> tuple[str, ...]:
        """The joining members that will replicate `partition`: writes go to them too."""
        return self.next_owner_sets[partition] if self.next_owner_sets else ()

    def missing_replicas(self, partition: int) -> tuple[str, ...]:
        """The dead members that would be replicas of `partition` if they were alive:
        writes keep hints for them (hinted handoff)."""
        return self.missing_replica_sets[partition] if self.missing_replica_sets else ()

    def forward_order(self, partition: int) -> tuple[str, ...]:
        """The partition's replicas in the order a non-replica forwards a write to
        them: preferred first, suspects last (a silent replica would make the write wait
        out its timeout)."""
        replicas = self.replicas(partition)
        if not self.suspects or not self.suspects.intersection(replicas):
            return replicas
        return tuple(sorted(replicas, key=lambda name: name in self.suspects))

    def replicas(self, partition: int) -> tuple[str, ...]:
        """The names of the partition's replicas, preferred first: N, or fewer when fewer
        members are up."""
        if self.replica_sets:
            return self.replica_sets[partition]
        return self.ring.preference_list(partition, self.n_val)

    def endpoint_of(self, name: str) -> str | None:
        """The endpoint of owning or joining member `name`; None if it is neither."""
        return self.endpoints.get(name)

    @property
    def members_by_name(self) -> dict[str, Member]:
        return {member.name: member for member in self.members}

    def owner(self, partition: int) -> str:
        """The name of the member that owns `partition` (the head of its preference list)."""
        return self.ring.preference_list(partition, 1)[0]

    def partitions_owned(self) -> dict[str, int]:
        """Partitions each owning member heads the preference list of."""
        return self.ring.replica_counts(1)


def build_snapshot(
    version: int, me: Member, members: Iterable[Member], partitions: int, replicas: int = 3
) -> RingSnapshot:
    """The snapshot for `members`; `me` always owns a share, even before anyone knows it."""
    known = {member.name: member for member in members}
    known[me.name] = known.get(me.name, me)
    owners = [m for m in known.values() if m.status in _OWNING]
    if not owners:
        owners = [known[me.name]]  # alone, even while leaving: someone must own the keys
    ring = Ring.build([m.name for m in owners], partitions=partitions, replicas=replicas)
    owner_names = {m.name for m in owners}
    joining = [
        m for m in known.values() if m.status is MemberStatus.JOINING and m.name not in owner_names
    ]
    # Joining members do not count towards N until they own: a second node joining a
    # first must not make every write wait for a W of 2 that one owner cannot give.
    cluster_size = sum(
        1 for m in known.values() if m.status is not MemberStatus.LEFT and m not in joining
    )
    endpoints: dict[str, str] = {m.name: m.endpoint for m in owners}
    route = tuple(
        None if head == me.name else endpoints[head]
        for head in (ring.preference_list(p, 1)[0] for p in range(partitions))
    )
    members_sorted = tuple(sorted(known.values(), key=lambda m: m.name))
    n_val = max(1, min(replicas, cluster_size))
    replica_sets = tuple(ring.preference_list(p, n_val) for p in range(partitions))
    next_ring, next_owner_sets = _next_owners(owners, joining, replica_sets, replicas=replicas)
    endpoints.update((m.name, m.endpoint) for m in joining)  # reachable, owning nothing
    return RingSnapshot(
        version,
        me.name,
        ring,
        members_sorted,
        route,
        dict(endpoints),
        n_val,
        replica_sets,
        missing_replica_sets=_missing_replicas(
            known.values(), owners, replica_sets, n_val=n_val, replicas=replicas
        ),
        next_ring=next_ring,
        next_owner_sets=next_owner_sets,
        detached=known[me.name].status is MemberStatus.JOINING and len(known) == 1,
        suspects=frozenset(m.name for m in owners if m.status is MemberStatus.SUSPECT),
    )


def _next_owners(
    owners: list[Member],
    joining: list[Member],
    replica_sets: tuple[tuple[str, ...], ...],
    *,
    replicas: int,
) -> tuple[Ring | None, tuple[tuple[str, ...], ...]]:
    """The ring with the joining members in it, and per partition the joining members
    that ring makes its replicas."""
    if not joining:
        return None, ()
    partitions = len(replica_sets)
    names = [m.name for m in [*owners, *joining]]
    full = Ring.build(names, partitions=partitions, replicas=replicas)
    n_next = max(1, min(replicas, len(names)))
    joining_names = {m.name for m in joining}
    next_owner_sets = tuple(
        tuple(name for name in full.preference_list(p, n_next) if name in joining_names)
        for p in range(partitions)
    )
    return full, next_owner_sets


def _missing_replicas(
    known: Iterable[Member],
    owners: list[Member],
    replica_sets: tuple[tuple[str, ...], ...],
    *,
    n_val: int,
    replicas: int,
) -> tuple[tuple[str, ...], ...]:
    """Per partition, the dead members the ring of the living has replaced."""
    partitions = len(replica_sets)
    dead = [m for m in known if m.status is MemberStatus.DEAD]
    if not dead:
        return ()
    full = Ring.build([m.name for m in [*owners, *dead]], partitions=partitions, replicas=replicas)
    dead_names = {m.name for m in dead}
    return tuple(
        tuple(
            name
            for name in full.preference_list(p, n_val)
            if name in dead_names and name not in replica_sets[p]
        )
        for p in range(partitions)
    )


class RingHolder:
    """The current RingSnapshot. One writer (the ResponsibilityManager), any readers."""

    __slots__ = ("current",)

    def __init__(self, initial: RingSnapshot) -> None:
        self.current = initial

    def publish(self, snapshot: RingSnapshot) -> None:
        # A single reference assignment: readers see the old snapshot or the new one.
        self.current = snapshot
