"""The consistent-hash ring: partitions, virtual-node tokens and balanced preference lists.

The seed's `ConsistentHashRing`, kept pure: a `Ring` is an immutable value built from the
*set* of member names, so every node that knows the same members computes the same ring,
whatever order it learnt them in. ResponsibilityManager rebuilds it on every membership
change and publishes it; request paths only index into it.

Layout
------
- Keys live on a 64-bit ring. Q partitions (a power of two) split it into equal arcs:
  partition p starts at p * 2**64 / Q, and a key's partition is the top log2(Q) bits of its
  XXH3-64 point (`key_hash`, `partition_of`, from `kvactors.core.hashing`).
- Each member places V tokens on the ring, at positions hashed from its name and the token
  index (`_token_positions`). A member's distance to a partition is the clockwise distance
  from the partition's point to the member's nearest token. Plain consistent hashing gives
  each partition the N members nearest clockwise.

Why not plain consistent hashing
--------------------------------
With about 100 partition replicas per member (Q=1024, N=3, 32 members), nearest-N leaves
the busiest member typically 15-25% above the average whatever V is: each partition's
owners are an independent draw, so a member's count spreads like a binomial one. Bounded
loads in the usual form (walk clockwise, skip full members, partition after partition)
fix the balance but cascade: at Q=1024 a join moved more than 1.10x the ideal in ~10% of
our runs, at Q=256 in about half.

The algorithm: a stable allocation on member rankings, with a load cap
----------------------------------------------------------------------
1. Each member ranks every partition by its distance to it, nearest first. Comparing ranks
   rather than raw distances gives every member the same supply of near partitions, which
   nearly halves the spread of the uncapped counts (~5% instead of 8-10% at Q=1024 and 32
   members).
2. Rank by rank (0, 1, 2, ...), each member in a fixed order (by the hash of its name)
   claims its partition of that rank while the partition still needs replicas and the
   member is under the cap, floor(1.10 x N*Q/n) (`_load_cap`). This is the stable
   allocation in which partitions and members both prefer small ranks. In small, crowded
   rings the pass can leave a slot empty; a swap then fills it within the cap
   (`_fill_leftovers`; it never happened at the defaults).
3. Without the cap this is rendezvous hashing over ranks: a join only hands slots to the
   newcomer, and a removal only takes the leaver's. The cap binds for the few members the
   draw favoured most; they shift a slot or two when the member count changes, and that
   "cascade" is the only movement beyond the ideal.
4. A partition's preference list is its N members ordered clockwise (nearest first). Asking
   for more than N continues with the other members in clockwise order: the fallbacks of a
   sloppy quorum.

The balance target (busiest <= 1.10 x average) and N distinct members per partition hold by
construction. (Only when the average is under ten replicas, far from the defaults, can the
cap be the average rounded up, which is more than 1.10x it.) Movement is the hard part.

Defaults, and what they achieve
-------------------------------
Q = 2048 (`DEFAULT_PARTITIONS`), V = 256 (`DEFAULT_TOKENS`), N = 3, cap 1.10 (`LOAD_LIMIT`).
Measured while choosing them, first at Q = 1024 over 2200 random joins (3 to 32 members;
a removal is the same pair of rings reversed):

- busiest / average: worst 1.0999, never above 1.10.
- moved replicas / ideal (N*Q/(n+1)): mean 1.004, 99th percentile 1.10, worst 1.13; above
  1.10 in 1.0% of joins, all of them onto rings of 22 or more members.
- V = 128: 4% of joins above 1.10; V = 512: no better than 256 and slower to build.
- Q = 512: 13% of 400 joins above 1.10 (worst 1.27). Q = 256: 35% (worst 1.42).
- Q = 2048 (the default): none of 1100 joins above 1.10, worst 1.099; the property tests
  (tests/unit/test_ring.py) assert 1.10 for joins and removals at the defaults.

So at Q <= 1024 the 1.10 movement target holds for ~99% of joins, not all. The uncapped
counts spread by ~5% at 32 members, which is near the floor for any placement in which a
member's preferences depend only on its own name (the spread comes from the other members'
independent draws), so some members always sit at the cap. Meeting 1.10 in every case needs
a larger Q (the spread shrinks as 1/sqrt(Q)) or a ring that remembers its history, as
riak_core's claim does, which a function of the member set cannot.

Why Q = 2048 is affordable: a node runs a StoreServer per partition, but StoreServers are
dispatched actors (kvactors.runtime.dispatch) with no thread of their own; 2048 of them start in
about 0.4 s. Cost of the ring: 32 members at the defaults build in about ten milliseconds
once the members' placements are memoised (they depend only on name, Q and V; about a
millisecond each to compute the first time).
"""

from __future__ import annotations

import hashlib
import struct
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from kvactors.core.hashing import key_hash, partition_of

__all__ = [
    "DEFAULT_PARTITIONS",
    "DEFAULT_REPLICAS",
    "DEFAULT_TOKENS",
    "LOAD_LIMIT",
    "MAX_PARTITIONS",
    "Ring",
    "key_hash",
    "moved_replicas",
    "partition_of",
]

HASH_BITS = 64

DEFAULT_PARTITIONS = 2048
"""Q: the least that met the 1.10 movement target in every measured join."""

DEFAULT_TOKENS = 256
"""V, tokens per member. Fewer make the members' rankings lumpy and movement worse."""

DEFAULT_REPLICAS = 3
"""N, members per preference list."""

MAX_PARTITIONS = 1 << 16
"""Partition indices are stored as 16-bit numbers."""

LOAD_LIMIT = 1.10
"""No member holds more than this times the average number of partition replicas."""

# LOAD_LIMIT as an exact fraction, so the cap never rounds above it.
_LIMIT_NUMERATOR = 11
_LIMIT_DENOMINATOR = 10

# Placements are ~10 KB each; enough for every member a long-lived node meets.
_PLACEMENT_CACHE_SIZE = 1024


@dataclass(frozen=True, slots=True)
class _Placement:
    """Where one member sits relative to every partition; depends on name, Q and V only."""

    distances: array[int]
    """Per partition: clockwise distance from its point to the member's nearest token."""

    ranking: array[int]
    """The partitions, nearest first (ties by partition index)."""


@dataclass(frozen=True, slots=True)
class Ring:
    """An immutable ring: members, partitions and each partition's preference list.

    Build it with `Ring.build`. Rings built from the same member set and parameters are
    equal and have the same preference lists.
    """

    members: tuple[str, ...]
    """Member names, sorted."""
    partitions: int
    tokens_per_member: int
    replicas: int
    _preferences: tuple[tuple[str, ...], ...] = field(repr=False, compare=False)
    _claim_order: tuple[str, ...] = field(repr=False, compare=False)
    _placements: tuple[_Placement, ...] = field(repr=False, compare=False)
    _walks: dict[int, tuple[str, ...]] = field(repr=False, compare=False)

    @classmethod
    def build(
        cls,
        members: Iterable[str],
        partitions: int = DEFAULT_PARTITIONS,
        tokens_per_member: int = DEFAULT_TOKENS,
        replicas: int = DEFAULT_REPLICAS,
    ) -> Ring:
        """The ring of a member set (duplicates and order do not matter)."""
        names = set(members)
        _check_members(names)
        _check_partitions(partitions)
        _check_positive("tokens_per_member", tokens_per_member)
        _check_positive("replicas", replicas)
        # Ordered by hash, not by name, so that a newcomer lands anywhere in the order.
        claim_order = tuple(sorted(names, key=lambda name: (key_hash(_encode(name)), name)))
        placements = tuple(_placement(name, partitions, tokens_per_member) for name in claim_order)
        owners = _allocate(placements, partitions, min(replicas, len(names)))
        preferences = tuple(
            [
                tuple([claim_order[i] for i in _clockwise(placements, partition, claimed)])
                for partition, claimed in enumerate(owners)
            ]
        )
        return cls(
            members=tuple(sorted(names)),
            partitions=partitions,
            tokens_per_member=tokens_per_member,
            replicas=replicas,
            _preferences=preferences,
            _claim_order=claim_order,
            _placements=placements,
            _walks={},
        )

    def partition_of(self, key: bytes) -> int:
        """The partition `key` falls in."""
        return partition_of(key, self.partitions)

    def owners(self, key: bytes) -> tuple[str, ...]:
        """The members that hold `key` (its partition's N replicas), in preference order."""
        return self._preferences[partition_of(key, self.partitions)]

    def preference_list(self, partition: int, n: int | None = None) -> tuple[str, ...]:
        """The first n members for `partition`; n defaults to the ring's N replicas.

        The first N are the partition's replicas, nearest clockwise first; beyond N the
        other members follow in clockwise order. Shorter when the ring has fewer members.
        """
        if not 0 <= partition < self.partitions:
            raise ValueError(f"partition must be in [0, {self.partitions}), got {partition}")
        wanted = self.replicas if n is None else n
        if wanted < 0:
            raise ValueError(f"n must not be negative, got {wanted}")
        replicas = self._preferences[partition]
        if wanted == len(replicas):
            return replicas
        if wanted < len(replicas):
            return replicas[:wanted]
        return self._walk(partition)[:wanted]

    def replica_counts(self, n: int | None = None) -> dict[str, int]:
        """How many preference lists of length n each member is in."""
        counts = dict.fromkeys(self.members, 0)
        for partition in range(self.partitions):
            for member in self.preference_list(partition, n):
                counts[member] += 1
        return counts

    def balance(self, n: int | None = None) -> float:
        """The busiest member's count over the average count (1.0 is perfect balance)."""
        counts = self.replica_counts(n)
        wanted = self.replicas if n is None else n
        average = min(wanted, len(self.members)) * self.partitions / len(self.members)
        return max(counts.values()) / average if average else 1.0

    def _walk(self, partition: int) -> tuple[str, ...]:
        """Every member for `partition`: its replicas, then the others clockwise."""
        walk = self._walks.get(partition)
        if walk is None:
            replicas = self._preferences[partition]
            others = [i for i, name in enumerate(self._claim_order) if name not in replicas]
            rest = _clockwise(self._placements, partition, others)
            walk = replicas + tuple(self._claim_order[i] for i in rest)
            # Readers may race to fill this in; they all store the same value.
            self._walks[partition] = walk
        return walk


def moved_replicas(old: Ring, new: Ring, n: int | None = None) -> int:
    """How many (partition, member) replica slots differ between two rings.

    Per partition, a slot handed from one member to another counts once, and so does a
    slot that appears or disappears (a ring growing past, or shrinking below, n members).
    n defaults to the old ring's N.
    """
    if old.partitions != new.partitions:
        raise ValueError(f"rings differ in partitions: {old.partitions} != {new.partitions}")
    wanted = old.replicas if n is None else n
    moved = 0
    for partition in range(old.partitions):
        before = set(old.preference_list(partition, wanted))
        after = set(new.preference_list(partition, wanted))
        moved += max(len(after - before), len(before - after))
    return moved


# ------------------------------------------------------------------------------ allocation


def _load_cap(replicas: int, partitions: int, members: int) -> int:
    """The most replicas one member may hold: floor(LOAD_LIMIT x average), and at least the
    average rounded up, without which the slots could not all be filled."""
    slots = replicas * partitions
    limit = slots * _LIMIT_NUMERATOR // (_LIMIT_DENOMINATOR * members)
    return max(limit, -(-slots // members))


def _allocate(placements: Sequence[_Placement], partitions: int, replicas: int) -> list[list[int]]:
    """Each partition's replicas, as indices into `placements`, in the order they claimed
    it: rank by rank, members in `placements` order, each under the load cap."""
    cap = _load_cap(replicas, partitions, len(placements))
    needed = [replicas] * partitions
    owners: list[list[int]] = [[] for _ in range(partitions)]
    loads = [0] * len(placements)
    unfilled = replicas * partitions
    for claims in zip(*(placement.ranking for placement in placements), strict=True):
        for member, partition in enumerate(claims):
            if needed[partition] and loads[member] < cap:
                needed[partition] -= 1
                owners[partition].append(member)
                loads[member] += 1
                unfilled -= 1
        if not unfilled:
            return owners
    _fill_leftovers(owners, needed, loads, cap)
    return owners


def _fill_leftovers(owners: list[list[int]], needed: list[int], loads: list[int], cap: int) -> None:
    """Fill the slots the capped pass left, within the cap. Rare (never seen at the
    defaults): a partition stays short when every member with room already holds it,
    having claimed it on the way. One of those members then takes over another partition
    from a member that does not hold the short one, and that member moves in instead."""
    for partition, missing in enumerate(needed):
        for _ in range(missing):
            short = owners[partition]
            receiver, donor, other = _swap_for(short, owners, loads, cap)
            owners[other][owners[other].index(donor)] = receiver
            short.append(donor)
            loads[receiver] += 1
        needed[partition] = 0


def _swap_for(
    short: list[int], owners: list[list[int]], loads: list[int], cap: int
) -> tuple[int, int, int]:
    """(receiver, donor, other partition): the receiver has room and does not hold the
    other partition, the donor holds it but not the short partition.

    One always exists. Slots are empty, so some member has room and lacks a partition
    (else the loads would add up to every slot). Every member with room holds every short
    partition, so the partitions it lacks are full, and a full partition holds a member
    the short one lacks. Swaps keep that true: the donor, lacking the short partition,
    had no room, and its load does not change."""
    with_room = sorted(
        (m for m in range(len(loads)) if loads[m] < cap), key=lambda m: (loads[m], m)
    )
    for receiver in with_room:
        for other, held in enumerate(owners):
            if receiver in held:
                continue
            for donor in held:
                if donor not in short:
                    return receiver, donor, other
    raise AssertionError("no member has room for an unfilled slot")  # see the docstring


def _clockwise(
    placements: Sequence[_Placement], partition: int, members: Iterable[int]
) -> list[int]:
    """`members` (indices into `placements`) nearest first from the partition's point."""
    keyed = sorted([(placements[member].distances[partition], member) for member in members])
    return [member for _, member in keyed]


# ------------------------------------------------------------------------------ placement


@lru_cache(maxsize=_PLACEMENT_CACHE_SIZE)
def _placement(name: str, partitions: int, tokens: int) -> _Placement:
    """A member's distance to every partition, and its ranking of them."""
    shift = HASH_BITS - (partitions.bit_length() - 1)
    step = 1 << shift
    distances = [0] * partitions
    # A token is the nearest clockwise for the partition points in (previous token, token],
    # which are the points first..last-1. The first token's previous one is the last token,
    # one turn back, so its points may start at a negative index (counting from the end).
    positions = _token_positions(name, tokens)
    first = (positions[-1] >> shift) + 1 - partitions
    for position in positions:
        last = (position >> shift) + 1
        if first < last:
            if first < 0:
                distances[first:] = range(position - first * step, position, -step)
                first = 0
            distances[first:last] = range(position - first * step, position - last * step, -step)
            first = last
    ranking = sorted(range(partitions), key=distances.__getitem__)
    return _Placement(distances=array("Q", distances), ranking=array("H", ranking))


def _token_positions(name: str, tokens: int) -> list[int]:
    """The member's V token positions, sorted.

    Token i is the big-endian bytes 8*(i % 8) to 8*(i % 8) + 8 of the 64-byte blake2b of
    the name, a zero byte and the 4-byte block number i // 8: one hash per 8 tokens.
    """
    prefix = _encode(name) + b"\x00"
    blocks = b"".join(
        hashlib.blake2b(prefix + block.to_bytes(4, "big"), digest_size=64).digest()
        for block in range((tokens + 7) // 8)
    )
    return sorted(struct.unpack(f">{tokens}Q", blocks[: 8 * tokens]))


def _encode(name: str) -> bytes:
    # surrogatepass: any str is a valid member name, even one no codec would print.
    return name.encode("utf-8", "surrogatepass")


# ------------------------------------------------------------------------------ validation


def _check_members(names: set[str]) -> None:
    if not names:
        raise ValueError("a ring needs at least one member")
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"member names must be str, got {type(name).__name__}")


def _check_partitions(partitions: int) -> None:
    if (
        isinstance(partitions, bool)
        or not isinstance(partitions, int)
        or not 1 <= partitions <= MAX_PARTITIONS
        or partitions & (partitions - 1)
    ):
        raise ValueError(
            f"partitions must be a power of two from 1 to {MAX_PARTITIONS}, got {partitions!r}"
        )


def _check_positive(what: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive int, got {value!r}")
