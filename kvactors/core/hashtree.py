"""A hash tree over one partition's keys and versions, for active anti-entropy.

Each partition keeps a `HashTree` of (key, version digest) pairs, updated on every write.
Two replicas compare trees top-down (`root`, then `children` of the nodes that differ) and
exchange only the keys of the leaf buckets whose hashes differ (`bucket_keys`), as Riak's
AAE and Cassandra's Merkle trees do. `diff` does that walk locally and counts the node
hashes it compared, which is what an exchange would send over the wire.

The tree has a fixed shape: `fanout ** depth` leaf buckets, so two replicas built with the
same shape can compare node for node without agreeing on anything else. A write costs one
dict assignment: `update` (or `update_records`, for a batch of written records) only notes
the key's new digest. Every read of the tree first folds the noted digests in (the bucket
sums, then dirty marks on the inner nodes above the changed buckets, which are rehashed
when read), so a burst of writes between two exchanges costs each key once, whatever
number of times it was written, and rehashes each dirty inner node once. A tree that is
not read folds its notes in once it holds a thousand or so, which bounds their memory.

Pure logic: no I/O, no clock, no randomness; hashing is XXH3-64, stable across processes.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from xxhash import xxh3_64_digest, xxh3_64_intdigest

__all__ = [
    "HashTree",
    "PartitionTrees",
    "TreeDiff",
    "compare_trees",
    "diff",
    "new_partition_tree",
    "record_digest",
]

_MASK64 = (1 << 64) - 1
# Seed for leaf-bucket placement, distinct from the ring's seed 0 (see `bucket_of`).
_BUCKET_SEED = int.from_bytes(b"hashtree", "big")
# Keys a tree notes before it folds them in unread: a few hundred microseconds of work at
# once, and a bounded number of digests held twice.
_MAX_PENDING = 1024


def _combine_children(hashes: Sequence[int]) -> int:
    """An inner node's hash: XXH3 of its children's hashes in order.

    Unlike the buckets this is position-sensitive (a real Merkle node), and recomputing it
    costs one hash over `fanout` words, which laziness makes rare.
    """
    return xxh3_64_intdigest(struct.pack(f"<{len(hashes)}Q", *hashes))


@dataclass(frozen=True, slots=True)
class TreeDiff:
    """The outcome of comparing two trees: the differing leaf buckets (ascending) and how
    many node hashes were compared to find them (the cost of an exchange)."""

    buckets: tuple[int, ...]
    comparisons: int


class HashTree:
    """A fixed-shape hash tree of `fanout ** depth` leaf buckets over (key, digest) pairs.

    Levels are numbered from 0 (the root) to `depth` (the leaves); node `i` of level `l`
    has children `i * fanout ... i * fanout + fanout - 1` on level `l + 1`.
    """

    __slots__ = ("_buckets", "_depth", "_dirty", "_fanout", "_levels", "_pending", "_size")

    def __init__(self, fanout: int = 16, depth: int = 3) -> None:
        if fanout < 2 or depth < 1:
            raise ValueError(f"need fanout >= 2 and depth >= 1, got {fanout=} {depth=}")
        self._fanout = fanout
        self._depth = depth
        self._size = 0
        self._buckets: dict[int, dict[bytes, bytes]] = {}
        self._levels = _empty_levels(fanout, depth)
        # Invariant: if an inner node is dirty, so are all its ancestors. It lets a write
        # stop climbing at the first dirty ancestor, and a read trust every clean node.
        self._dirty: list[set[int]] = [set() for _ in range(depth)]
        # Each key written since the last read, with its newest digest (None: forgotten).
        # Folded into the buckets before any read (`_fold`), or once it holds more than
        # _MAX_PENDING keys, which bounds the memory it holds.
        self._pending: dict[bytes, bytes | None] = {}

    @classmethod
    def from_items(
        cls, items: Iterable[tuple[bytes, bytes]], fanout: int = 16, depth: int = 3
    ) -> HashTree:
        """A tree holding `items`, (key, digest) pairs; a repeated key keeps its last digest."""
        tree = cls(fanout, depth)
        for key, digest in items:
            tree.update(key, digest)
        return tree

    @property
    def fanout(self) -> int:
        return self._fanout

    @property
    def depth(self) -> int:
        return self._depth

    @property
    def leaf_count(self) -> int:
        return len(self._levels[self._depth])

    def __len__(self) -> int:
        """The number of keys tracked."""
        if self._pending:
            self._fold()
        return self._size

    def bucket_of(self, key: bytes) -> int:
        """The leaf bucket of `key`.

        Seeded apart from the ring's hash: a partition's keys all share the top bits of
        their ring point, so reusing that point would crowd them into a few buckets.
        """
        return xxh3_64_intdigest(key, _BUCKET_SEED) % self.leaf_count

    def update(self, key: bytes, digest: bytes | None) -> None:
        """Set `key`'s version digest; None forgets the key. Only noted here: the tree
        takes it in before it is next read, or once it holds many notes (a tree nobody
        reads, on a node without peers, must not keep every digest twice)."""
        pending = self._pending
        pending[key] = digest
        if len(pending) > _MAX_PENDING:
            self._fold()

    def update_records(self, writes: Iterable[tuple[bytes, bytes | None]]) -> None:
        """`update(key, record_digest(record))` for each written (key, record), a record
        of None forgetting the key: what a batch of writes to a partition's table does
        to its tree, in one call. Digests are taken now, so no record is kept."""
        pending = self._pending
        for key, record in writes:
            pending[key] = None if record is None else xxh3_64_digest(record)
        if len(pending) > _MAX_PENDING:
            self._fold()

    def _fold(self) -> None:
        """Take the noted digests into the bucket sums, and mark the inner nodes above the
        changed buckets dirty."""
        pending = self._pending
        self._pending = {}
        buckets = self._buckets
        leaves = self._levels[self._depth]
        leaf_count = len(leaves)
        size = self._size
        changed: set[int] = set()
        for key, digest in pending.items():
            bucket = xxh3_64_intdigest(key, _BUCKET_SEED) % leaf_count  # `bucket_of`
            entries = buckets.get(bucket)
            old = None if entries is None else entries.get(key)
            if old == digest:
                continue
            # Bucket hash = sum mod 2**64 of its pair hashes (additive set hashing), so a
            # write subtracts the old pair and adds the new one in O(1), in any order. Sum
            # rather than XOR: XOR is linear bit by bit, so any two pairs whose hashes
            # agree on a bit cancel there, and a pair counted twice by a bug would vanish;
            # with a sum, carries mix the bits. Either way two different buckets collide
            # with probability about 2**-64 for honest keys; XXH3 is not cryptographic, so
            # a client choosing keys on purpose could hide a difference, which would cost
            # a missed repair, not a wrong value.
            leaf = leaves[bucket]
            # A pair's hash: its key's length goes first so that (b"ab", b"c") and
            # (b"a", b"bc") hash apart.
            prefix = len(key).to_bytes(8, "big") + key
            if old is not None:
                assert entries is not None  # it held the old digest
                leaf -= xxh3_64_intdigest(prefix + old)
                size -= 1
                if digest is None:
                    del entries[key]
                    if not entries:  # only non-empty buckets keep a dict
                        del buckets[bucket]
            if digest is not None:
                leaf += xxh3_64_intdigest(prefix + digest)
                if entries is None:
                    entries = buckets[bucket] = {}
                entries[key] = digest
                size += 1
            leaves[bucket] = leaf & _MASK64
            changed.add(bucket)
        self._size = size
        for bucket in changed:
            self._mark_ancestors_dirty(bucket)

    def root(self) -> int:
        """The root hash: equal roots mean (but for a 2**-64 chance) equal contents."""
        if self._pending:
            self._fold()
        return self._node(0, 0)

    def level(self, level: int) -> tuple[int, ...]:
        """Every node hash of `level` (0 is the root, `depth` the leaf buckets)."""
        self._check_level(level)
        return self.node_hashes(level, range(self._fanout**level))

    def node_hashes(self, level: int, indices: Iterable[int]) -> tuple[int, ...]:
        """The hashes of the nodes `indices` of `level`: what one exchange round sends."""
        self._check_level(level)
        if self._pending:
            self._fold()
        width = self._fanout**level
        hashes = []
        for index in indices:
            if not 0 <= index < width:
                raise ValueError(f"node {index} is not on level {level} (width {width})")
            hashes.append(self._node(level, index))
        return tuple(hashes)

    def children(self, path: Sequence[int]) -> tuple[int, ...]:
        """The child hashes of the node reached from the root by `path`, child positions
        (each below `fanout`); `()` names the root. The node must not be a leaf."""
        if len(path) >= self._depth:
            raise ValueError(f"path {tuple(path)} does not name an inner node")
        index = 0
        for position in path:
            if not 0 <= position < self._fanout:
                raise ValueError(f"child position {position} not below fanout {self._fanout}")
            index = index * self._fanout + position
        first = index * self._fanout
        return self.node_hashes(len(path) + 1, range(first, first + self._fanout))

    def bucket_keys(self, bucket: int) -> dict[bytes, bytes]:
        """A copy of the keys and digests in leaf `bucket`, for the final exchange."""
        if not 0 <= bucket < self.leaf_count:
            raise ValueError(f"bucket {bucket} not below {self.leaf_count}")
        if self._pending:
            self._fold()
        return dict(self._buckets.get(bucket, {}))

    def _node(self, level: int, index: int) -> int:
        # Recursion is at most `depth` deep and visits only dirty nodes below this one.
        if level < self._depth and index in self._dirty[level]:
            first = index * self._fanout
            if level + 1 == self._depth:  # the leaves are always current: slice them
                kids = self._levels[self._depth][first : first + self._fanout]
            else:
                children = range(first, first + self._fanout)
                kids = [self._node(level + 1, child) for child in children]
            self._levels[level][index] = _combine_children(kids)
            self._dirty[level].discard(index)
        return self._levels[level][index]

    def _mark_ancestors_dirty(self, bucket: int) -> None:
        index = bucket
        for level in range(self._depth - 1, -1, -1):
            index //= self._fanout
            if index in self._dirty[level]:
                return  # the invariant: everything above is dirty already
            self._dirty[level].add(index)

    def _check_level(self, level: int) -> None:
        if not 0 <= level <= self._depth:
            raise ValueError(f"level {level} not in 0..{self._depth}")


def _empty_levels(fanout: int, depth: int) -> list[list[int]]:
    """Node hashes of an empty tree, level by level: an empty bucket hashes to 0 (the empty
    sum), and every node of a level is then alike, so each level's hash is computed once."""
    empty = 0
    levels = [[empty] * fanout**depth]
    for level in range(depth - 1, -1, -1):
        empty = _combine_children([empty] * fanout)
        levels.append([empty] * fanout**level)
    levels.reverse()
    return levels


def compare_trees(a: HashTree, b: HashTree) -> TreeDiff:
    """Walk two same-shaped trees top-down, descending only where hashes differ, as an
    exchange between replicas would."""
    if (a.fanout, a.depth) != (b.fanout, b.depth):
        raise ValueError(
            f"trees differ in shape: {a.fanout}**{a.depth} vs {b.fanout}**{b.depth} buckets"
        )
    candidates: list[int] = [0]
    comparisons = 0
    for level in range(a.depth):
        comparisons += len(candidates)
        differing = _differing_nodes(a, b, level, candidates)
        candidates = [c for i in differing for c in range(i * a.fanout, (i + 1) * a.fanout)]
    comparisons += len(candidates)
    return TreeDiff(tuple(_differing_nodes(a, b, a.depth, candidates)), comparisons)


def _differing_nodes(a: HashTree, b: HashTree, level: int, indices: list[int]) -> list[int]:
    hashes = zip(a.node_hashes(level, indices), b.node_hashes(level, indices), strict=True)
    return [index for index, (ha, hb) in zip(indices, hashes, strict=True) if ha != hb]


def diff(a: HashTree, b: HashTree) -> list[int]:
    """The leaf buckets (ascending) whose hashes differ between `a` and `b`."""
    return list(compare_trees(a, b).buckets)


# -- one tree per partition ------------------------------------------------------------------

# One level of 64 buckets: about 50 keys per partition at 100,000 keys a node, so a
# differing key costs its bucket's few dozen keys and digests; a deeper tree would pay an
# extra round trip per level for nothing at that size.
_PARTITION_FANOUT = 64
_PARTITION_DEPTH = 1


def new_partition_tree() -> HashTree:
    """An empty partition tree, of the shape every node uses (they must agree to compare)."""
    return HashTree(_PARTITION_FANOUT, _PARTITION_DEPTH)


def record_digest(record: bytes) -> bytes:
    """A tree entry's digest of one stored record: records are canonical, so replicas
    holding the same versions of a key hold the same bytes, and the same digest."""
    return xxh3_64_digest(record)


class PartitionTrees:
    """The current hash tree of each partition, published by its StoreServer.

    Used on the transport thread, where StoreServers run while the node serves the
    network (the only time anti-entropy runs); a tree is published whole, once built.
    """

    __slots__ = ("_trees",)

    def __init__(self, partitions: int) -> None:
        self._trees: list[HashTree | None] = [None] * partitions

    def __len__(self) -> int:
        return len(self._trees)

    def get(self, partition: int) -> HashTree | None:
        return self._trees[partition]

    def publish(self, partition: int, tree: HashTree) -> None:
        self._trees[partition] = tree

    def withdraw(self, partition: int, tree: HashTree) -> None:
        """Forget `tree` unless a newer StoreServer has published its own already."""
        if self._trees[partition] is tree:
            self._trees[partition] = None
