"""Tests for kvactors.replication.anti_entropy: the serving side (`answer`) against real
partition trees, and whole exchanges between two simulated nodes.

A `Cluster` holds a few `Node`s, each with a dict store of `KeyState`s and the real
`PartitionTrees` over it (updated with the record digest of every stored state, as a
StoreServer does). `SimulatedChannel` is a node's `ReplicaChannel`: it serves `call_peer`
by calling `answer` on the peer's trees, and the repair's `ReadKey` and `MergeKey` ops
against the stores. Nothing is answered at once: every answer is queued and `Cluster.run`
delivers them in order, as the transport thread would. Arguments, ops and answers that
cross the network go through msgpack, so what the wire would mangle is mangled here too.
No sockets, no threads, no sleeps.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict
from functools import cache
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvactors.core.clocks import HlcStamp
from kvactors.core.hashtree import (
    HashTree,
    PartitionTrees,
    new_partition_tree,
    record_digest,
)
from kvactors.core.membership import Member, MemberStatus
from kvactors.core.ops import AnyOp, MergeKey, ReadKey, from_wire, to_wire
from kvactors.core.placement import RingHolder, RingSnapshot, build_snapshot
from kvactors.core.versions import (
    EMPTY_STATE,
    KeyState,
    coordinate_write,
    merge_states,
    state_from_wire,
    state_to_wire,
)
from kvactors.errors import BadRequestError, KVActorsError, UnavailableError
from kvactors.replication.anti_entropy import AAE, AntiEntropy, AntiEntropyStats, answer
from kvactors.storage.records import encode_state
from kvactors.testing import FakeChannel

INTERVAL = 10.0
PARTITIONS = 16

# ------------------------------------------------------------------------------- states


def write(base: KeyState, node: str, value: bytes | None, wall_ms: int) -> KeyState:
    """`node` coordinates a write of `value` after reading `base`."""
    return coordinate_write(base, node, base.context, value, HlcStamp(wall_ms, 0, node))


A1 = write(EMPTY_STATE, "a", b"a1", 1)
B1 = write(EMPTY_STATE, "b", b"b1", 2)  # concurrent with A1: siblings
A2 = write(A1, "a", b"a2", 3)  # supersedes A1
AB = merge_states(A1, B1)
B2 = write(AB, "b", b"b2", 4)  # supersedes A1 and B1
GONE = write(A2, "a", None, 5)  # a tombstone over A2
STATE_POOL = (A1, B1, A2, AB, B2, GONE)


def nth_key(index: int) -> bytes:
    return b"key:%d" % index


def digest_of(state: KeyState) -> bytes:
    return record_digest(encode_state(state))


def wire(value: Any) -> Any:
    """`value` as the peer receives it: through msgpack, as the RPC layer sends it."""
    return msgpack.unpackb(msgpack.packb(value))


# ------------------------------------------------------------------------ the simulation


def member(name: str, status: MemberStatus = MemberStatus.ALIVE) -> Member:
    return Member(name, endpoint(name), status, 0, 0)


def endpoint(name: str) -> str:
    return f"tcp://{name}:5555"


@cache
def snapshot_for(
    me: str, statuses: tuple[tuple[str, MemberStatus], ...], partitions: int, replicas: int
) -> RingSnapshot:
    """`me`'s view of the members (snapshots are immutable, so one per view is enough)."""
    members = [member(name, status) for name, status in statuses]
    return build_snapshot(0, member(me), members, partitions, replicas)


class Node:
    """One node: a store of key states and the hash trees of the partitions it replicates."""

    def __init__(self, name: str, cluster: Cluster, snapshot: RingSnapshot, max_keys: int):
        self.name = name
        self.snapshot = snapshot
        self.store: dict[bytes, KeyState] = {}
        self.trees = PartitionTrees(snapshot.ring.partitions)
        for partition, replicas in enumerate(snapshot.replica_sets):
            if name in replicas:
                self.trees.publish(partition, new_partition_tree())
        self.channel = SimulatedChannel(self, cluster)
        self.aae = AntiEntropy(
            name,
            self.trees,
            RingHolder(snapshot),
            self.channel,
            interval=cluster.interval,
            max_keys=max_keys,
        )

    def partition_of(self, key: bytes) -> int:
        return self.snapshot.ring.partition_of(key)

    def put(self, key: bytes, state: KeyState) -> None:
        """Store `state` and update the key's tree entry, as a StoreServer's commit does."""
        tree = self.trees.get(self.partition_of(key))
        assert tree is not None, f"{self.name} does not replicate {key!r}"
        self.store[key] = state
        tree.update(key, digest_of(state))

    def read(self, key: bytes) -> KeyState:
        return self.store.get(key, EMPTY_STATE)

    def merge(self, key: bytes, state: KeyState) -> None:
        joined = merge_states(self.read(key), state)
        if joined != self.read(key):
            self.put(key, joined)

    def roots(self) -> list[int | None]:
        return [
            None if tree is None else tree.root()
            for tree in map(self.trees.get, range(len(self.trees)))
        ]


class SimulatedChannel(FakeChannel):
    """A node's channel: the shared `FakeChannel`, whose ops are served from the simulated
    stores and trees, answering later (through the cluster's queue), and logged. An op for
    the peer travels as on the wire: `to_wire`, msgpack, `from_wire`."""

    def __init__(self, node: Node, cluster: Cluster) -> None:
        super().__init__(node.name)
        self._node = node
        self._cluster = cluster

    def send(self, replica: str, partition: int, op: AnyOp, target: Any, tag: Any) -> None:
        super().send(replica, partition, op, target, tag)  # checks an op for a peer travels
        self.take()  # answered here, not by the test
        node = self._cluster.nodes[replica]
        assert isinstance(op, ReadKey | MergeKey), op
        assert partition == node.partition_of(op.key), "an op went to the wrong partition"
        local = replica == self.me
        served: AnyOp = op
        if local:
            self._cluster.log.append((self.me, replica, type(op).__name__, op.key))
        else:
            raw = wire(to_wire(op))
            self._cluster.log.append((self.me, replica, raw[0], op.key))
            served = from_wire(raw, 1 << 16, lambda value: value)

        def serve() -> None:
            if not local and self._cluster.fail_peer_ops:
                target.replica_failed(tag, UnavailableError(f"{replica} is down"))
            elif isinstance(served, ReadKey):
                # Every read answers a KeyState; a peer's has been through msgpack.
                state = node.read(served.key)
                if not local:
                    state = state_from_wire(wire(state_to_wire(state)))
                target.replica_done(tag, state)
            elif isinstance(served, MergeKey):
                node.merge(served.key, served.state)
                target.replica_done(tag, None)
            else:
                raise AssertionError(f"unexpected op {served!r}")

        self._cluster.later(serve)

    def call_peer(
        self,
        endpoint: str,
        op: str,
        args: dict[str, Any],
        settle: Callable[[Any, KVActorsError | None], None],
    ) -> None:
        assert op == AAE
        cluster = self._cluster
        peer = cluster.by_endpoint[endpoint]
        sent = wire(args)
        cluster.calls.append((self._node.name, peer.name, sent["step"]))
        cluster.args.append(sent)

        def serve() -> None:
            if sent["step"] in cluster.failing_steps:
                settle(None, UnavailableError(f"{peer.name} did not answer"))
                return
            try:
                result = wire(answer(peer.trees, sent))
            except BadRequestError as error:  # the RPC layer answers with the error
                settle(None, error)
                return
            settle(cluster.tamper(sent["step"], result), None)

        cluster.later(serve)


class Cluster:
    """Nodes that share one answer queue; `run` delivers the answers in order."""

    def __init__(
        self,
        statuses: Iterable[tuple[str, MemberStatus]] = (
            ("a", MemberStatus.ALIVE),
            ("b", MemberStatus.ALIVE),
        ),
        *,
        partitions: int = PARTITIONS,
        replicas: int = 2,
        max_keys: int = 10_000,
        interval: float = INTERVAL,
    ) -> None:
        view = tuple(statuses)
        self.interval = interval
        self.queue: deque[Callable[[], None]] = deque()
        self.calls: list[tuple[str, str, str]] = []  # (from, to, aae step)
        self.args: list[dict[str, Any]] = []  # the arguments of each of `calls`
        self.log: list[tuple[str, str, str, bytes]] = []  # (from, to, op, key) of the repair
        self.failing_steps: set[str] = set()
        self.fail_peer_ops = False
        self.tamper: Callable[[str, Any], Any] = lambda _step, result: result
        self.nodes = {
            name: Node(name, self, snapshot_for(name, view, partitions, replicas), max_keys)
            for name, _ in view
        }
        self.by_endpoint = {endpoint(name): node for name, node in self.nodes.items()}

    def later(self, action: Callable[[], None]) -> None:
        self.queue.append(action)

    def run(self) -> None:
        """Deliver every queued answer, and those they cause, until nothing is left."""
        for _ in range(100_000):
            if not self.queue:
                return
            self.queue.popleft()()
        raise AssertionError("the exchange never settled")

    def exchange(self, initiator: str, now: float) -> AntiEntropyStats:
        """One tick of `initiator` at `now`, then every answer; the stats' change."""
        stats = self.nodes[initiator].aae.stats
        before = asdict(stats)
        self.nodes[initiator].aae.on_tick(now)
        self.run()
        return AntiEntropyStats(
            **{name: value - before[name] for name, value in asdict(stats).items()}
        )


def fill(node: Node, states: dict[bytes, KeyState]) -> None:
    for key, state in states.items():
        node.put(key, state)


def assert_converged(cluster: Cluster) -> None:
    a, b = cluster.nodes["a"], cluster.nodes["b"]
    assert a.store == b.store
    assert a.roots() == b.roots()


def steps(cluster: Cluster) -> list[str]:
    return [step for _, _, step in cluster.calls]


# --------------------------------------------------------------------- answer: the peer's side

SERVED = 6  # partitions 0..5 have a tree; 6 and 7 have none (not replicated here)
TREE_PARTITIONS = 8


def served_trees(items: dict[int, dict[bytes, bytes]]) -> PartitionTrees:
    """Trees for partitions 0..SERVED-1 holding `items` (partition -> key -> digest)."""
    trees = PartitionTrees(TREE_PARTITIONS)
    for partition in range(SERVED):
        tree = new_partition_tree()
        for key, digest in items.get(partition, {}).items():
            tree.update(key, digest)
        trees.publish(partition, tree)
    return trees


ITEMS = {
    0: {nth_key(i): digest_of(STATE_POOL[i % len(STATE_POOL)]) for i in range(20)},
    2: {nth_key(100): digest_of(A1)},
    3: {nth_key(100): digest_of(B1)},  # the same key, another version: another root
}


def reference_tree(items: dict[bytes, bytes]) -> HashTree:
    """A tree built apart from the served ones, of the partitions' shape."""
    shape = new_partition_tree()
    return HashTree.from_items(items.items(), shape.fanout, shape.depth)


def test_roots_answers_each_asked_partition_in_order_and_nil_without_a_tree() -> None:
    trees = served_trees(ITEMS)
    asked = [3, 0, 6, 2, 1, 3, 7]
    result = answer(trees, {"step": "roots", "partitions": asked})
    expected = [None if p >= SERVED else reference_tree(ITEMS.get(p, {})).root() for p in asked]
    assert result == {"roots": expected}
    roots = result["roots"]
    # Different contents, different roots; empty partitions share the empty tree's root.
    assert len({roots[0], roots[1], roots[3], roots[4]}) == 4
    assert roots[4] == new_partition_tree().root()
    assert wire(result) == result  # it crosses the network unchanged


def test_buckets_answers_the_leaf_hashes_and_only_occupied_buckets_are_nonzero() -> None:
    trees = served_trees(ITEMS)
    result = answer(trees, {"step": "buckets", "partitions": [2, 7, 0, 1]})
    two, seven, zero, one = result["buckets"]
    assert seven is None
    shape = new_partition_tree()
    for leaves, items in ((two, ITEMS[2]), (zero, ITEMS[0]), (one, {})):
        assert leaves == list(reference_tree(items).level(shape.depth))
        assert len(leaves) == shape.leaf_count
        occupied = {shape.bucket_of(k) for k in items}
        assert {b for b, h in enumerate(leaves) if h != 0} == occupied
    assert wire(result) == result


def test_keys_answers_the_keys_and_digests_of_the_wanted_buckets() -> None:
    trees = served_trees(ITEMS)
    shape = new_partition_tree()
    by_bucket: dict[int, dict[bytes, bytes]] = {}
    for key, digest in ITEMS[0].items():
        by_bucket.setdefault(shape.bucket_of(key), {})[key] = digest
    full = sorted(by_bucket)[:3]
    empty = next(b for b in range(shape.leaf_count) if b not in by_bucket)
    wanted = [[0, [*full, empty]], [6, [0, 1]], [1, [empty]], [3, [shape.bucket_of(nth_key(100))]]]
    result = wire(answer(trees, {"step": "keys", "wanted": wanted}))
    zero, six, one, three = result["keys"]
    assert {bytes(k): bytes(d) for k, d in zero} == {
        k: d for b in full for k, d in by_bucket[b].items()
    }
    assert len(zero) == sum(len(by_bucket[b]) for b in full)  # each key once
    assert six is None
    assert one == []
    assert three == [[nth_key(100), digest_of(B1)]]


def test_the_answers_follow_the_trees_as_they_change() -> None:
    trees = served_trees({})
    before = answer(trees, {"step": "roots", "partitions": [4]})
    tree = trees.get(4)
    assert tree is not None
    tree.update(nth_key(1), digest_of(A1))
    after = answer(trees, {"step": "roots", "partitions": [4]})
    assert before != after
    bucket = tree.bucket_of(nth_key(1))
    assert answer(trees, {"step": "keys", "wanted": [[4, [bucket]]]}) == {
        "keys": [[[nth_key(1), digest_of(A1)]]]
    }
    tree.update(nth_key(1), None)
    assert answer(trees, {"step": "roots", "partitions": [4]}) == before


MALFORMED: list[dict[str, Any]] = [
    {},
    {"step": None},
    {"step": "nope", "partitions": [0]},
    {"step": b"roots", "partitions": [0]},  # bytes, not the op's str
    {"step": ["roots"], "partitions": [0]},
    *(
        {"step": step, **partitions}
        for step in ("roots", "buckets")
        for partitions in (
            {},
            {"partitions": None},
            {"partitions": 0},
            {"partitions": "0"},
            {"partitions": {"0": 0}},
            {"partitions": [TREE_PARTITIONS]},
            {"partitions": [0, 1, -1]},
            {"partitions": [1.0]},
            {"partitions": [True]},
            {"partitions": [False]},
            {"partitions": ["1"]},
            {"partitions": [None]},
            {"partitions": [[0]]},
            {"partitions": [2**70]},
        )
    ),
    {"step": "keys"},
    {"step": "keys", "wanted": None},
    {"step": "keys", "wanted": {"0": [0]}},
    {"step": "keys", "wanted": "0"},
    {"step": "keys", "wanted": [0]},
    {"step": "keys", "wanted": [None]},
    {"step": "keys", "wanted": [[0]]},
    {"step": "keys", "wanted": [[0, 1]]},
    {"step": "keys", "wanted": [[0, [0], 1]]},
    {"step": "keys", "wanted": [["0", [0]]]},
    {"step": "keys", "wanted": [[1.0, [0]]]},
    {"step": "keys", "wanted": [[TREE_PARTITIONS, [0]]]},
    {"step": "keys", "wanted": [[-1, [0]]]},
    {"step": "keys", "wanted": [[0, [64]]]},
    {"step": "keys", "wanted": [[0, [-1]]]},
    {"step": "keys", "wanted": [[0, [0, 2**70]]]},
    {"step": "keys", "wanted": [[0, [True]]]},
    {"step": "keys", "wanted": [[0, [1.0]]]},
    {"step": "keys", "wanted": [[0, ["1"]]]},
    {"step": "keys", "wanted": [[0, [None]]]},
    {"step": "keys", "wanted": [[1, [0]], [0, [64]]]},  # one bad item spoils the call
]


@pytest.mark.parametrize("args", MALFORMED, ids=repr)
def test_a_malformed_call_is_a_bad_request(args: dict[str, Any]) -> None:
    with pytest.raises(BadRequestError):
        answer(served_trees(ITEMS), args)


def test_a_bool_partition_in_a_keys_call_is_a_bad_request() -> None:
    with pytest.raises(BadRequestError):
        answer(served_trees(ITEMS), {"step": "keys", "wanted": [[True, [0]]]})


leaves: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 70),
    st.integers(),
    st.floats(),
    st.text(max_size=4),
    st.binary(max_size=4),
)
msgpack_values: st.SearchStrategy[Any] = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=12,
)
# A known step three times in four, anything else the fourth.
steps_drawn = st.sampled_from(["roots", "buckets", "keys", ""]).flatmap(
    lambda step: st.just(step) if step else msgpack_values
)
# Valid and near-valid shapes (one bad element among good ones) reach the deeper checks
# and the answers far more often than arbitrary values would.
partition_numbers = st.integers(0, TREE_PARTITIONS - 1)
near_numbers: st.SearchStrategy[Any] = st.one_of(st.integers(-1, TREE_PARTITIONS), leaves)
partition_lists = st.one_of(
    st.lists(partition_numbers, max_size=5),
    st.lists(st.one_of(partition_numbers, near_numbers), max_size=5),
    msgpack_values,
)
bucket_lists = st.one_of(
    st.lists(st.integers(0, 63), max_size=4),
    st.lists(st.one_of(st.integers(-1, 64), leaves), max_size=4),
)
wanted_items = st.one_of(
    st.tuples(partition_numbers, bucket_lists).map(list),
    st.tuples(st.one_of(near_numbers, st.booleans()), bucket_lists).map(list),
    msgpack_values,
)
wanted_lists = st.one_of(
    st.lists(st.tuples(partition_numbers, bucket_lists).map(list), max_size=4),
    st.lists(wanted_items, max_size=4),
    msgpack_values,
)


FUZZ_TREES = served_trees(ITEMS)  # `answer` only reads them


@settings(max_examples=300, deadline=None)
@given(
    step=steps_drawn,
    partitions=st.one_of(st.none(), partition_lists),
    wanted=st.one_of(st.none(), wanted_lists),
    extra=st.dictionaries(st.text(max_size=3), msgpack_values, max_size=2),
)
def test_answer_gives_a_dict_or_a_bad_request_for_any_arguments(
    step: Any, partitions: Any, wanted: Any, extra: dict[str, Any]
) -> None:
    args = {**extra, "step": step}
    if partitions is not None:
        args["partitions"] = partitions
    if wanted is not None:
        args["wanted"] = wanted
    try:
        result = answer(FUZZ_TREES, args)
    except BadRequestError:
        return
    assert isinstance(result, dict)
    assert list(result) == [step]
    asked = args["wanted"] if step == "keys" else args["partitions"]
    assert len(result[step]) == len(asked)
    assert wire(result) == result


# ------------------------------------------------------------------------- whole exchanges


@pytest.mark.parametrize("initiator", ["a", "b"])
def test_identical_stores_finish_after_the_roots_with_no_repair(initiator: str) -> None:
    cluster = Cluster()
    states = {nth_key(i): STATE_POOL[i % len(STATE_POOL)] for i in range(40)}
    for node in cluster.nodes.values():
        fill(node, states)
    delta = cluster.exchange(initiator, 0.0)
    assert delta == AntiEntropyStats(exchanges=1)
    assert steps(cluster) == ["roots"]
    assert cluster.log == []
    assert_converged(cluster)


@pytest.mark.parametrize("initiator", ["a", "b"])
def test_keys_on_one_side_only_are_copied_both_ways(initiator: str) -> None:
    cluster = Cluster()
    a, b = cluster.nodes["a"], cluster.nodes["b"]
    common = {nth_key(i): A2 for i in range(10)}
    only_a = {nth_key(i): STATE_POOL[i % 6] for i in range(10, 20)}
    only_b = {nth_key(i): STATE_POOL[i % 6] for i in range(20, 25)}
    fill(a, common | only_a)
    fill(b, common | only_b)
    differing = only_a | only_b
    partitions = {a.partition_of(k) for k in differing}
    delta = cluster.exchange(initiator, 0.0)
    assert delta == AntiEntropyStats(
        exchanges=1, partitions_differing=len(partitions), keys_repaired=len(differing)
    )
    assert a.store == b.store == common | only_a | only_b
    assert_converged(cluster)
    assert steps(cluster) == ["roots", "buckets", "keys"]
    # Only the differing keys were read, once on each side; the common ones were not.
    reads = sorted((op, k) for _, _, op, k in cluster.log if op in ("ReadKey", "read"))
    assert reads == sorted([("ReadKey", k) for k in differing] + [("read", k) for k in differing])
    # Each side was sent only what it lacked (empty states are not merged).
    merged_into = {(to, k) for _, to, op, k in cluster.log if op in ("MergeKey", "merge")}
    assert merged_into == {("b", k) for k in only_a} | {("a", k) for k in only_b}


def test_differing_versions_end_as_their_join_on_both_sides() -> None:
    cluster = Cluster()
    a, b = cluster.nodes["a"], cluster.nodes["b"]
    pairs = {
        nth_key(1): (A1, B1),  # concurrent: both siblings survive
        nth_key(2): (A1, A2),  # b has the newer write
        nth_key(3): (B2, A2),  # concurrent again
        nth_key(4): (GONE, AB),  # a tombstone against siblings
        nth_key(5): (AB, AB),  # already equal
    }
    for key, (mine, theirs) in pairs.items():
        a.put(key, mine)
        b.put(key, theirs)
    delta = cluster.exchange("a", 0.0)
    assert delta.keys_repaired == 4
    expected = {key: merge_states(mine, theirs) for key, (mine, theirs) in pairs.items()}
    assert a.store == b.store == expected
    assert len(expected[nth_key(1)].live) == 2
    assert expected[nth_key(2)] == A2
    assert_converged(cluster)


def test_an_empty_node_is_filled_from_a_full_one() -> None:
    cluster = Cluster()
    a, b = cluster.nodes["a"], cluster.nodes["b"]
    fill(a, {nth_key(i): STATE_POOL[i % 6] for i in range(300)})
    delta = cluster.exchange("b", 0.0)
    assert delta.keys_repaired == 300
    assert delta.keys_deferred == 0
    assert len(b.store) == 300
    assert_converged(cluster)
    assert cluster.exchange("b", INTERVAL) == AntiEntropyStats(exchanges=1)


def test_max_keys_bounds_each_exchange_and_later_ones_finish_the_job() -> None:
    cluster = Cluster(max_keys=10)
    a, b = cluster.nodes["a"], cluster.nodes["b"]
    fill(a, {nth_key(i): A1 for i in range(25)})
    first = cluster.exchange("a", 0.0)
    assert (first.keys_repaired, first.keys_deferred, len(b.store)) == (10, 15, 10)
    second = cluster.exchange("a", INTERVAL)
    assert (second.keys_repaired, second.keys_deferred, len(b.store)) == (10, 5, 20)
    third = cluster.exchange("a", 2 * INTERVAL)
    assert (third.keys_repaired, third.keys_deferred, len(b.store)) == (5, 0, 25)
    assert_converged(cluster)
    assert cluster.exchange("a", 3 * INTERVAL) == AntiEntropyStats(exchanges=1)
    assert a.aae.stats.exchanges == 4


def test_partitions_are_compared_a_slice_at_a_time_within_the_budget() -> None:
    """128 shared partitions take two `buckets` and `keys` calls; a small budget stops the
    exchange after the first slice."""
    cluster = Cluster(partitions=128)
    a = cluster.nodes["a"]
    fill(a, {nth_key(i): B1 for i in range(600)})
    differing = {a.partition_of(nth_key(i)) for i in range(600)}
    assert min(differing) < 64 <= max(differing)  # both slices have work
    delta = cluster.exchange("a", 0.0)
    assert steps(cluster) == ["roots", "buckets", "keys", "buckets", "keys"]
    assert (delta.partitions_differing, delta.keys_repaired) == (len(differing), 600)
    assert_converged(cluster)

    small = Cluster(partitions=128, max_keys=5)
    fill(small.nodes["a"], {nth_key(i): B1 for i in range(600)})
    delta = small.exchange("a", 0.0)
    assert steps(small) == ["roots", "buckets", "keys"]
    assert delta.keys_repaired == 5
    assert len(small.nodes["b"].store) == 5


@pytest.mark.parametrize("without_tree", ["a", "b"])
def test_a_partition_one_side_does_not_serve_is_left_alone(without_tree: str) -> None:
    cluster = Cluster()
    a, b = cluster.nodes["a"], cluster.nodes["b"]
    states = {nth_key(i): A1 for i in range(40)}
    fill(a, states)
    withdrawn = a.partition_of(nth_key(0))
    node = cluster.nodes[without_tree]
    tree = node.trees.get(withdrawn)
    assert tree is not None
    node.trees.withdraw(withdrawn, tree)
    delta = cluster.exchange("a", 0.0)
    assert delta.exchanges == 1
    copied = {k: s for k, s in states.items() if a.partition_of(k) != withdrawn}
    assert 0 < len(copied) < len(states)
    assert b.store == copied
    assert delta.keys_repaired == len(copied)
    if without_tree == "b":  # the peer answered nil: the partition is not even counted
        assert delta.partitions_differing == len({a.partition_of(k) for k in copied})
        asked = [
            p for args in cluster.args if args["step"] == "buckets" for p in args["partitions"]
        ]
        assert withdrawn not in asked


def test_the_key_budget_spans_the_slices() -> None:
    """One key in each of 100 partitions: the first slice (64 differing partitions) takes
    64 keys of the budget of 80, the second slice the 16 left, and no more."""
    cluster = Cluster(partitions=128, max_keys=80)
    a, b = cluster.nodes["a"], cluster.nodes["b"]
    one_per_partition: dict[int, bytes] = {}
    for k in map(nth_key, range(5000)):
        one_per_partition.setdefault(a.partition_of(k), k)
    fill(a, {one_per_partition[p]: A1 for p in range(100)})
    delta = cluster.exchange("a", 0.0)
    assert steps(cluster) == ["roots", "buckets", "keys", "buckets", "keys"]
    assert (delta.partitions_differing, delta.keys_repaired, delta.keys_deferred) == (100, 80, 20)
    assert len(b.store) == 80
    cluster.exchange("a", INTERVAL)
    assert_converged(cluster)


def test_exchanges_are_paced_by_the_interval_and_run_one_at_a_time() -> None:
    cluster = Cluster()
    a = cluster.nodes["a"]
    fill(a, {nth_key(1): A1})
    a.aae.on_tick(100.0)
    assert len(cluster.calls) == 1
    a.aae.on_tick(500.0)  # the first exchange still runs: no second one
    assert len(cluster.calls) == 1
    cluster.run()
    assert a.aae.stats.exchanges == 1
    assert steps(cluster) == ["roots", "buckets", "keys"]
    a.aae.on_tick(100.0 + INTERVAL - 0.001)
    assert len(cluster.calls) == 3
    a.aae.on_tick(100.0 + INTERVAL)
    assert steps(cluster)[3:] == ["roots"]
    cluster.run()
    assert a.aae.stats.exchanges == 2


@pytest.mark.parametrize("interval", [0.0, -1.0])
def test_a_non_positive_interval_turns_exchanges_off(interval: float) -> None:
    cluster = Cluster(interval=interval)
    fill(cluster.nodes["a"], {nth_key(i): A1 for i in range(5)})
    for now in (0.0, 1.0, 1e6):
        cluster.exchange("a", now)
        cluster.exchange("b", now)
    assert cluster.calls == []
    assert cluster.nodes["b"].store == {}
    assert cluster.nodes["a"].aae.stats == AntiEntropyStats()


@pytest.mark.parametrize("step", ["roots", "buckets", "keys"])
def test_a_failed_call_fails_the_exchange_and_the_next_tick_starts_anew(step: str) -> None:
    cluster = Cluster()
    a, b = cluster.nodes["a"], cluster.nodes["b"]
    fill(a, {nth_key(i): A1 for i in range(5)})
    cluster.failing_steps.add(step)
    delta = cluster.exchange("a", 0.0)
    assert delta == AntiEntropyStats(
        failed_exchanges=1,
        partitions_differing=0 if step == "roots" else delta.partitions_differing,
    )
    assert steps(cluster)[-1] == step
    assert b.store == {}
    assert cluster.log == []
    cluster.failing_steps.clear()
    delta = cluster.exchange("a", INTERVAL)
    assert (delta.exchanges, delta.failed_exchanges, delta.keys_repaired) == (1, 0, 5)
    assert_converged(cluster)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda step, result: [result],  # not a dict
        lambda step, result: {},  # no field
        lambda step, result: {step: result[step][:-1]},  # one answer short
        lambda step, result: {step: [*result[step], None]},  # one too many
        lambda step, result: {step: "x" * 3},
    ],
    ids=["list", "empty", "short", "long", "str"],
)
@pytest.mark.parametrize("at", ["roots", "buckets", "keys"])
def test_a_malformed_answer_fails_the_exchange(tamper: Callable[[str, Any], Any], at: str) -> None:
    cluster = Cluster()
    fill(cluster.nodes["a"], {nth_key(i): A1 for i in range(5)})
    cluster.tamper = lambda step, result: tamper(step, result) if step == at else result
    delta = cluster.exchange("a", 0.0)
    assert (delta.exchanges, delta.failed_exchanges) == (0, 1)
    assert cluster.nodes["b"].store == {}
    cluster.tamper = lambda step, result: result
    assert cluster.exchange("a", INTERVAL).exchanges == 1
    assert_converged(cluster)


def test_a_failed_repair_fails_the_exchange_and_a_later_one_repairs() -> None:
    cluster = Cluster()
    a, b = cluster.nodes["a"], cluster.nodes["b"]
    fill(a, {nth_key(i): A1 for i in range(3)})
    fill(b, {nth_key(i): B1 for i in range(3, 6)})
    cluster.fail_peer_ops = True
    delta = cluster.exchange("a", 0.0)
    assert (delta.exchanges, delta.failed_exchanges) == (0, 1)
    assert a.store == {nth_key(i): A1 for i in range(3)}  # their reads failed: nothing came
    assert b.store == {nth_key(i): B1 for i in range(3, 6)}
    cluster.fail_peer_ops = False
    delta = cluster.exchange("a", INTERVAL)
    assert (delta.exchanges, delta.failed_exchanges) == (1, 0)
    assert_converged(cluster)


def test_peers_are_taken_in_turn() -> None:
    alive = (("a", MemberStatus.ALIVE), ("b", MemberStatus.ALIVE), ("c", MemberStatus.ALIVE))
    cluster = Cluster(alive)
    for turn in range(6):
        cluster.exchange("a", turn * INTERVAL)
    assert [to for _, to, step in cluster.calls if step == "roots"] == ["b", "c"] * 3
    assert cluster.nodes["a"].aae.stats.exchanges == 6


def test_a_dead_member_is_no_peer() -> None:
    view = (("a", MemberStatus.ALIVE), ("b", MemberStatus.DEAD), ("c", MemberStatus.ALIVE))
    cluster = Cluster(view)
    for turn in range(4):
        cluster.exchange("a", turn * INTERVAL)
    assert [to for _, to, _ in cluster.calls] == ["c"] * 4


def test_a_peer_sharing_no_partition_is_never_asked() -> None:
    # N=1: every partition has one replica, so no two nodes share one.
    cluster = Cluster(replicas=1)
    fill(cluster.nodes["a"], {})
    for turn in range(3):
        cluster.exchange("a", turn * INTERVAL)
    assert cluster.calls == []
    assert cluster.nodes["a"].aae.stats == AntiEntropyStats()


def test_only_the_partitions_both_replicate_are_compared() -> None:
    alive = (("a", MemberStatus.ALIVE), ("b", MemberStatus.ALIVE), ("c", MemberStatus.ALIVE))
    cluster = Cluster(alive)
    a = cluster.nodes["a"]
    asked: list[list[int]] = []
    original = a.channel.call_peer

    def spy(
        endpoint: str,
        op: str,
        args: dict[str, Any],
        settle: Callable[[Any, KVActorsError | None], None],
    ) -> None:
        if args["step"] == "roots":
            asked.append(list(args["partitions"]))
        original(endpoint, op, args, settle)

    a.channel.call_peer = spy  # type: ignore[method-assign]
    cluster.exchange("a", 0.0)
    cluster.exchange("a", INTERVAL)
    for peer, partitions in zip("bc", asked, strict=True):
        expected = [
            p for p, replicas in enumerate(a.snapshot.replica_sets) if {"a", peer} <= set(replicas)
        ]
        assert partitions == expected
        assert 0 < len(expected) < PARTITIONS


# --------------------------------------------------------------------------- convergence

store_maps = st.dictionaries(st.integers(0, 40), st.sampled_from(STATE_POOL), max_size=25)


@settings(max_examples=100, deadline=None)
@given(
    mine=store_maps,
    theirs=store_maps,
    max_keys=st.integers(1, 8),
    partitions=st.sampled_from([8, 16]),
    initiators=st.lists(st.sampled_from("ab"), min_size=1),
)
def test_repeated_exchanges_converge_at_max_keys_per_exchange(
    mine: dict[int, KeyState],
    theirs: dict[int, KeyState],
    max_keys: int,
    partitions: int,
    initiators: list[str],
) -> None:
    cluster = Cluster(partitions=partitions, max_keys=max_keys)
    a, b = cluster.nodes["a"], cluster.nodes["b"]
    fill(a, {nth_key(i): state for i, state in mine.items()})
    fill(b, {nth_key(i): state for i, state in theirs.items()})
    expected = {
        nth_key(i): merge_states(mine.get(i, EMPTY_STATE), theirs.get(i, EMPTY_STATE))
        for i in mine.keys() | theirs.keys()
    }
    differing = sum(1 for i in mine.keys() | theirs.keys() if mine.get(i) != theirs.get(i))
    needed = math.ceil(differing / max_keys)
    repaired = 0
    for turn in range(needed):
        # Both nodes may start exchanges: any order of initiators converges as fast.
        initiator = initiators[turn % len(initiators)]
        delta = cluster.exchange(initiator, turn * INTERVAL)
        assert delta.exchanges == 1
        assert delta.keys_repaired == min(max_keys, differing - repaired)
        repaired += delta.keys_repaired
    assert a.store == b.store == expected
    assert_converged(cluster)
    # Nothing is left to repair.
    last = cluster.exchange("a", needed * INTERVAL)
    assert last == AntiEntropyStats(exchanges=1)
