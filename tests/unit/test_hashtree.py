"""Tests for kvactors.core.hashtree: order independence, incremental updates, exact
and cheap diffs, and the top-down exchange API."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from kvactors.core import hashtree
from kvactors.core.hashtree import HashTree, TreeDiff, compare_trees, diff, record_digest

# Small shapes crowd keys into shared buckets (where cancelling bugs show); the default
# shape is the one partitions will use.
SHAPES = [(2, 1), (4, 2), (3, 3), (16, 3)]
PROPERTY = settings(max_examples=120, deadline=None)

# A small key pool makes two drawn item sets overlap, so diffs are partial, not total.
keys = st.binary(max_size=6)
digests = st.binary(min_size=0, max_size=4)
item_maps = st.dictionaries(keys, digests, max_size=40)
shapes = st.sampled_from(SHAPES)


def expected_bucket(key: bytes, leaves: int) -> int:
    """The placement the module promises: seeded XXH3-64 of the key bytes, mod the leaves."""
    return xxhash.xxh3_64_intdigest(key, int.from_bytes(b"hashtree", "big")) % leaves


def snapshot(tree: HashTree) -> tuple[object, ...]:
    """Everything observable about a tree, for comparing two trees."""
    levels = tuple(tree.level(level) for level in range(tree.depth + 1))
    contents = tuple(tree.bucket_keys(bucket) for bucket in range(tree.leaf_count))
    return (tree.fanout, tree.depth, len(tree), levels, contents)


def by_bucket(items: Mapping[bytes, bytes], leaves: int) -> dict[int, dict[bytes, bytes]]:
    grouped: dict[int, dict[bytes, bytes]] = {}
    for key, digest in items.items():
        grouped.setdefault(expected_bucket(key, leaves), {})[key] = digest
    return grouped


@PROPERTY
@given(shape=shapes, items=item_maps, data=st.data())
def test_the_same_items_in_any_order_give_the_same_tree(
    shape: tuple[int, int], items: dict[bytes, bytes], data: st.DataObject
) -> None:
    shuffled = data.draw(st.permutations(list(items.items())))
    in_order = HashTree.from_items(items.items(), *shape)
    reordered = HashTree.from_items(shuffled, *shape)
    assert in_order.root() == reordered.root()
    assert snapshot(in_order) == snapshot(reordered)


@PROPERTY
@given(
    shape=shapes,
    ops=st.lists(st.tuples(keys, st.none() | digests, st.booleans()), max_size=80),
)
def test_incremental_updates_equal_a_tree_rebuilt_from_the_final_items(
    shape: tuple[int, int], ops: list[tuple[bytes, bytes | None, bool]]
) -> None:
    tree = HashTree(*shape)
    final: dict[bytes, bytes] = {}
    for key, digest, read_root in ops:
        tree.update(key, digest)
        if digest is None:
            final.pop(key, None)
        else:
            final[key] = digest
        if read_root:  # a read in between clears dirty marks; later writes must set them again
            tree.root()
    assert snapshot(tree) == snapshot(HashTree.from_items(final.items(), *shape))


@PROPERTY
@given(shape=shapes, items_a=item_maps, items_b=item_maps)
def test_diff_returns_exactly_the_buckets_whose_contents_differ(
    shape: tuple[int, int], items_a: dict[bytes, bytes], items_b: dict[bytes, bytes]
) -> None:
    a = HashTree.from_items(items_a.items(), *shape)
    b = HashTree.from_items(items_b.items(), *shape)
    grouped_a = by_bucket(items_a, a.leaf_count)
    grouped_b = by_bucket(items_b, b.leaf_count)
    expected = [i for i in range(a.leaf_count) if grouped_a.get(i, {}) != grouped_b.get(i, {})]
    assert diff(a, b) == expected
    assert diff(b, a) == expected
    assert (diff(a, b) == []) == (items_a == items_b)
    for bucket in expected:  # the final exchange hands over exactly these keys
        assert a.bucket_keys(bucket) == grouped_a.get(bucket, {})
        assert b.bucket_keys(bucket) == grouped_b.get(bucket, {})


@PROPERTY
@given(items=item_maps, target=keys, digest=digests)
def test_diff_stays_exact_when_two_trees_hold_the_same_pairs_in_other_histories(
    items: dict[bytes, bytes], target: bytes, digest: bytes
) -> None:
    # b reaches the same items as a by a detour: add or change a key, then undo it.
    a = HashTree.from_items(items.items(), 4, 2)
    b = HashTree.from_items(items.items(), 4, 2)
    b.root()
    b.update(target, digest + b"!")
    b.root()
    b.update(target, items.get(target))
    assert diff(a, b) == []
    assert a.root() == b.root()


BIG = {f"key-{i:05d}".encode(): i.to_bytes(4, "big") for i in range(10_000)}
CHANGES = {
    "changed digest": (b"key-04242", b"new"),
    "added key": (b"key-99999", b"\x00"),
    "removed key": (b"key-00007", None),
}


@pytest.mark.parametrize("shape", [(16, 3), (8, 4)])
@pytest.mark.parametrize("change", list(CHANGES), ids=list(CHANGES))
def test_one_differing_key_among_ten_thousand_costs_one_path(
    shape: tuple[int, int], change: str
) -> None:
    fanout, depth = shape
    a = HashTree.from_items(BIG.items(), fanout, depth)
    b = HashTree.from_items(BIG.items(), fanout, depth)
    key, digest = CHANGES[change]
    b.update(key, digest)
    result = compare_trees(a, b)
    assert result.buckets == (expected_bucket(key, a.leaf_count),)
    # The root, then each level's `fanout` children of the one differing node: at most
    # depth * fanout comparisons below the root, out of thousands of nodes.
    assert result.comparisons == 1 + depth * fanout


def test_equal_trees_compare_only_their_roots() -> None:
    a = HashTree.from_items(BIG.items())
    b = HashTree.from_items(reversed(BIG.items()))
    assert compare_trees(a, b) == TreeDiff(buckets=(), comparisons=1)
    assert len(a) == len(b) == len(BIG)


@PROPERTY
@given(shape=shapes, items_a=item_maps, items_b=item_maps)
def test_a_top_down_exchange_through_children_finds_the_diff(
    shape: tuple[int, int], items_a: dict[bytes, bytes], items_b: dict[bytes, bytes]
) -> None:
    # What two replicas would do over the wire: trade the root, then the children of
    # every node whose hash differs, down to the leaf buckets.
    a = HashTree.from_items(items_a.items(), *shape)
    b = HashTree.from_items(items_b.items(), *shape)
    paths: list[tuple[int, ...]] = [()] if a.root() != b.root() else []
    for _ in range(a.depth):
        paths = [
            (*path, position)
            for path in paths
            for position, (ha, hb) in enumerate(
                zip(a.children(path), b.children(path), strict=True)
            )
            if ha != hb
        ]
    buckets = [sum(p * a.fanout ** (a.depth - 1 - i) for i, p in enumerate(path)) for path in paths]
    assert buckets == diff(a, b)


@given(shape=shapes, items=item_maps)
@settings(max_examples=60, deadline=None)
def test_levels_children_and_buckets_agree(
    shape: tuple[int, int], items: dict[bytes, bytes]
) -> None:
    tree = HashTree.from_items(items.items(), *shape)
    fanout, depth = shape
    assert tree.level(0) == (tree.root(),)
    assert tree.children(()) == tree.level(1)
    assert len(tree.level(depth)) == tree.leaf_count == fanout**depth
    assert tree.children((0,) * (depth - 1)) == tree.level(depth)[:fanout]
    assert tree.node_hashes(depth, [tree.leaf_count - 1]) == tree.level(depth)[-1:]
    assert len(tree) == len(items)
    gathered = {k: v for b in range(tree.leaf_count) for k, v in tree.bucket_keys(b).items()}
    assert gathered == items
    for key in items:
        assert key in tree.bucket_keys(tree.bucket_of(key))
        assert tree.bucket_of(key) == expected_bucket(key, tree.leaf_count)


def test_an_empty_tree_and_a_tree_emptied_by_removals_are_alike() -> None:
    tree = HashTree.from_items([(b"a", b"1"), (b"b", b"2")])
    before = tree.root()
    tree.update(b"a", None)
    tree.update(b"b", None)
    tree.update(b"never-there", None)
    assert tree.root() != before
    assert snapshot(tree) == snapshot(HashTree())
    assert len(tree) == 0


def test_pairs_are_hashed_unambiguously() -> None:
    # Same concatenated bytes, different split between key and digest. The keys may land in
    # different buckets, so compare the one non-empty bucket's hash, wherever it is.
    def filled_bucket_hashes(key: bytes, digest: bytes) -> list[int]:
        return [h for h in HashTree.from_items([(key, digest)], 2, 1).level(1) if h]

    assert filled_bucket_hashes(b"ab", b"c") != filled_bucket_hashes(b"a", b"bc")


def test_bad_shapes_and_indices_are_refused() -> None:
    with pytest.raises(ValueError):
        HashTree(fanout=1)
    with pytest.raises(ValueError):
        HashTree(depth=0)
    tree = HashTree(4, 2)
    for bad_call in (
        lambda: tree.level(3),
        lambda: tree.level(-1),
        lambda: tree.node_hashes(1, [4]),
        lambda: tree.children((0, 0)),
        lambda: tree.children((4,)),
        lambda: tree.bucket_keys(16),
        lambda: diff(tree, HashTree(4, 3)),  # walkable, but not comparable
    ):
        with pytest.raises(ValueError):
            bad_call()


def test_bucket_keys_is_a_copy_the_caller_may_change() -> None:
    tree = HashTree.from_items([(b"k", b"v")], 4, 2)
    handed_out = tree.bucket_keys(tree.bucket_of(b"k"))
    handed_out[b"k"] = b"changed"
    handed_out[b"other"] = b"x"
    assert tree.bucket_keys(tree.bucket_of(b"k")) == {b"k": b"v"}
    assert len(tree) == 1


# -- writes are noted, and taken in by the next read -------------------------------------

READERS = {
    "root": lambda tree: tree.root(),
    "len": len,
    "level": lambda tree: tree.level(tree.depth),
    "node_hashes": lambda tree: tree.node_hashes(1, [0]),
    "children": lambda tree: tree.children(()),
    "bucket_keys": lambda tree: [tree.bucket_keys(b) for b in range(tree.leaf_count)],
}


@pytest.mark.parametrize("reader", list(READERS), ids=list(READERS))
def test_every_read_sees_the_writes_before_it(reader: str) -> None:
    read = READERS[reader]
    items = {b"k%d" % i: b"d%d" % i for i in range(50)}
    tree = HashTree.from_items(items.items(), 4, 2)
    read(tree)
    tree.update(b"k1", b"changed")
    tree.update(b"k2", None)
    tree.update(b"new", b"n")
    final = {**items, b"k1": b"changed", b"new": b"n"}
    del final[b"k2"]
    assert read(tree) == read(HashTree.from_items(final.items(), 4, 2))


records = st.binary(max_size=30)


@PROPERTY
@given(
    shape=shapes,
    batches=st.lists(st.lists(st.tuples(keys, st.none() | records), max_size=5), max_size=20),
)
def test_update_records_is_update_with_each_record_s_digest(
    shape: tuple[int, int], batches: list[list[tuple[bytes, bytes | None]]]
) -> None:
    by_records = HashTree(*shape)
    by_digests = HashTree(*shape)
    for batch in batches:
        by_records.update_records(batch)
        for key, record in batch:
            by_digests.update(key, None if record is None else record_digest(record))
    assert snapshot(by_records) == snapshot(by_digests)


def test_many_writes_between_reads_equal_a_tree_built_from_the_final_items() -> None:
    # Enough keys, overwritten and removed, that a tree takes its notes in unread.
    tree = HashTree(16, 2)
    final: dict[bytes, bytes] = {}
    for round_ in range(3):
        writes: list[tuple[bytes, bytes | None]] = []
        for index in range(1500):
            key = b"key-%d" % index
            record = None if (index + round_) % 7 == 0 else b"r%d-%d" % (round_, index)
            writes.append((key, record))
            if record is None:
                final.pop(key, None)
            else:
                final[key] = record_digest(record)
        for start in range(0, len(writes), 3):
            tree.update_records(writes[start : start + 3])
    assert snapshot(tree) == snapshot(HashTree.from_items(final.items(), 16, 2))


def test_a_tree_nobody_reads_keeps_a_bounded_number_of_notes() -> None:
    # A node without peers never reads its trees: its writes must not pile up as notes.
    by_digests, by_records = HashTree(64, 1), HashTree(64, 1)
    for index in range(5 * hashtree._MAX_PENDING):
        by_digests.update(b"k%d" % index, b"d")
        by_records.update_records([(b"k%d" % index, b"record")])
    for tree in (by_digests, by_records):
        assert len(tree._pending) <= hashtree._MAX_PENDING
        assert len(tree) == 5 * hashtree._MAX_PENDING
