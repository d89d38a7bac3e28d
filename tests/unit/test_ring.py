"""Tests for kvactors.core.ring: key placement, balance, movement, determinism."""

from __future__ import annotations

import hashlib
import math
import random

import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from kvactors.core.ring import (
    DEFAULT_PARTITIONS,
    DEFAULT_REPLICAS,
    LOAD_LIMIT,
    Ring,
    key_hash,
    moved_replicas,
    partition_of,
)

N = DEFAULT_REPLICAS
Q = DEFAULT_PARTITIONS

# Joins and removals move at most this many times the ideal share of replicas: the issue's
# target, met at the default Q=2048 (at Q=1024 about 1% of joins pass it; see the module
# docstring).
MOVEMENT_BOUND = LOAD_LIMIT

# Member names: random, but drawn from a fixed pool so that each name's placement (about a
# millisecond to compute) is memoised across examples and the file stays fast.
_pool_rng = random.Random(20240611)
NAME_POOL = [f"node-{_pool_rng.getrandbits(40):010x}" for _ in range(240)] + [
    "127.0.0.1:5555",
    "tcp://10.0.0.7:7000",
    "ñodo-λ",
    "",
]


@st.composite
def member_sets(draw: st.DrawFn, min_size: int = 3, max_size: int = 32) -> list[str]:
    """A random set of pool names, its size drawn first: lists left to Hypothesis stay
    short, and the larger rings are where balance and movement are hardest."""
    size = draw(st.integers(min_size, max_size))
    return draw(st.lists(st.sampled_from(NAME_POOL), min_size=size, max_size=size, unique=True))


# Derandomized: the movement bounds are statistical (see the ring's docstring), and a run
# that drew one of the rare member sets above them would fail at random. The examples are
# the same on every run; the known counterexample is pinned below as an expected failure.
PROPERTY = settings(max_examples=150, deadline=None, derandomize=True)
SMALLER_PROPERTY = settings(max_examples=100, deadline=None, derandomize=True)


def xxh3_point(key: bytes) -> int:
    return xxhash.xxh3_64(key).intdigest()


def every_preference_list(built: Ring, n: int | None = None) -> list[tuple[str, ...]]:
    return [built.preference_list(p, n) for p in range(built.partitions)]


# ------------------------------------------------------------------------------ the module


# ------------------------------------------------------------------------------ key placement


@given(st.binary(max_size=64))
def test_key_hash_is_the_xxh3_64_point(key: bytes) -> None:
    assert key_hash(key) == xxh3_point(key)


@given(st.binary(max_size=64), st.integers(min_value=0, max_value=16))
def test_partition_is_the_arc_holding_the_key_point(key: bytes, bits: int) -> None:
    partitions = 1 << bits
    partition = partition_of(key, partitions)
    arc = (1 << 64) // partitions
    assert 0 <= partition < partitions
    assert partition * arc <= xxh3_point(key) < (partition + 1) * arc


def test_partition_of_known_keys_matches_xxh3_computed_here() -> None:
    built = Ring.build(["a", "b", "c"], partitions=256)
    for key in (b"", b"user:1", "ключ".encode(), bytes(range(256))):
        expected = xxh3_point(key) >> 56
        assert built.partition_of(key) == expected
        assert partition_of(key, 256) == expected
        assert built.owners(key) == built.preference_list(expected)


# ------------------------------------------------------------------------------ the targets


@SMALLER_PROPERTY
@given(member_sets())
def test_busiest_member_holds_at_most_1_10_of_the_average(names: list[str]) -> None:
    built = Ring.build(names)
    counts = built.replica_counts()
    average = N * Q / len(names)
    assert sum(counts.values()) == N * Q
    assert max(counts.values()) <= LOAD_LIMIT * average
    assert built.balance() == pytest.approx(max(counts.values()) / average)


@SMALLER_PROPERTY
@given(member_sets(min_size=1))
def test_preference_lists_hold_n_distinct_members(names: list[str]) -> None:
    built = Ring.build(names)
    expected = min(N, len(names))
    for preference in every_preference_list(built):
        assert len(preference) == expected
        assert len(set(preference)) == expected
        assert set(preference) <= set(names)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    st.lists(st.text(max_size=6), min_size=1, max_size=14, unique=True),
    st.integers(min_value=0, max_value=5),
    st.integers(min_value=1, max_value=8),
    st.integers(min_value=1, max_value=5),
)
def test_rings_of_any_shape_fill_every_slot_within_the_cap(
    names: list[str], bits: int, replicas: int, tokens: int
) -> None:
    """Small, crowded rings are where the capped pass can leave slots empty; they must
    still be filled with distinct members and nobody above the cap (1.10x the average,
    or the average rounded up when that is more)."""
    partitions = 1 << bits
    built = Ring.build(names, partitions=partitions, tokens_per_member=tokens, replicas=replicas)
    expected = min(replicas, len(names))
    for preference in every_preference_list(built):
        assert len(set(preference)) == len(preference) == expected
    average = expected * partitions / len(names)
    assert max(built.replica_counts().values()) <= max(LOAD_LIMIT * average, math.ceil(average))


@PROPERTY
@given(member_sets(max_size=31), st.data())
def test_a_join_moves_little_more_than_the_newcomers_share(
    names: list[str], data: st.DataObject
) -> None:
    newcomer = data.draw(st.sampled_from([name for name in NAME_POOL if name not in names]))
    before = Ring.build(names)
    after = Ring.build([*names, newcomer])
    ideal = N * Q / (len(names) + 1)
    newcomer_share = after.replica_counts()[newcomer]
    moved = moved_replicas(before, after)
    assert newcomer_share <= LOAD_LIMIT * ideal
    assert newcomer_share <= moved <= MOVEMENT_BOUND * ideal


@SMALLER_PROPERTY
@given(member_sets(min_size=4), st.data())
def test_a_removal_moves_little_more_than_the_leavers_share(
    names: list[str], data: st.DataObject
) -> None:
    leaver = data.draw(st.sampled_from(names))
    before = Ring.build(names)
    after = Ring.build([name for name in names if name != leaver])
    ideal = N * Q / len(names)
    leaver_share = before.replica_counts()[leaver]
    moved = moved_replicas(before, after)
    assert leaver_share <= moved <= MOVEMENT_BOUND * ideal


@pytest.mark.xfail(
    strict=True,
    reason="known: this removal from 16 members moves 424 replicas, 1.104x the ideal 384; "
    "the capped allocation's cascade can exceed 1.10 on rare member sets",
)
def test_a_known_removal_that_moves_more_than_1_10_of_the_leavers_share() -> None:
    names = [
        "node-0c603c1616", "node-0f9faa7001", "node-ce0ac92aa6", "node-d20297efbb",
        "node-c95d0a2a43", "node-f7646caacb", "node-91a5735623", "node-d19b9b1325",
        "node-cf4243ed52", "node-f69f374cd6", "node-5f600fb75e", "node-feaf1ac6da",
        "node-d30dd7b1fe", "node-49261c8618", "node-77705bdd12", "node-56c55a45f8",
    ]  # fmt: skip
    before = Ring.build(names)
    after = Ring.build(names[1:])
    assert moved_replicas(before, after) <= MOVEMENT_BOUND * N * Q / len(names)


def test_every_join_onto_a_large_ring_meets_the_1_10_movement_target() -> None:
    """Where movement is worst, joins that bring the ring to 22 to 32 members, 100 seeded
    cases all within 1.10. Bounded loads in the usual clockwise form fail this."""
    rng = random.Random(7)
    ratios = []
    for _ in range(100):
        names = rng.sample(NAME_POOL, rng.randint(22, 32))
        before, after = Ring.build(names[:-1]), Ring.build(names)
        ratios.append(moved_replicas(before, after) / (N * Q / len(names)))
    assert sum(ratio <= 1.10 for ratio in ratios) == 100
    assert sum(ratios) / len(ratios) <= 1.02


# ------------------------------------------------------------------------------ determinism


@settings(max_examples=25, deadline=None, derandomize=True)
@given(member_sets(), st.data())
def test_the_ring_depends_on_the_member_set_only(names: list[str], data: st.DataObject) -> None:
    shuffled = data.draw(st.permutations(names))
    with_duplicates = shuffled + shuffled[: len(shuffled) // 2]
    first, second = Ring.build(names), Ring.build(iter(with_duplicates))
    assert first == second
    assert hash(first) == hash(second)
    assert every_preference_list(first) == every_preference_list(second)
    assert every_preference_list(first, 6) == every_preference_list(second, 6)


def test_rings_of_different_member_sets_differ() -> None:
    names = NAME_POOL[:8]
    assert Ring.build(names) != Ring.build(names[:7])
    assert every_preference_list(Ring.build(names)) != every_preference_list(Ring.build(names[:7]))


def test_clockwise_order_follows_the_documented_token_hash() -> None:
    """Replicas, and the members after them, are in clockwise order of their nearest
    token, recomputed here from blake2b alone (so nothing depends on Python's hash seed)."""
    names = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta"]
    built = Ring.build(names, partitions=64, tokens_per_member=16)
    for partition in range(64):
        point = partition << 58
        walk = built.preference_list(partition, len(names))
        distances = {name: _nearest_token_distance(name, point, 16) for name in walk}
        replicas, rest = list(walk[:N]), list(walk[N:])
        assert replicas == sorted(replicas, key=distances.__getitem__)
        assert rest == sorted(rest, key=distances.__getitem__)


def _nearest_token_distance(name: str, point: int, tokens: int) -> int:
    """Clockwise distance from `point` to the member's nearest token, computed here from
    the documented token derivation: 64-byte blake2b(name, 0x00, 4-byte block), 8 tokens
    of 8 big-endian bytes per block."""
    prefix = name.encode() + b"\x00"
    positions = []
    for block in range((tokens + 7) // 8):
        digest = hashlib.blake2b(prefix + block.to_bytes(4, "big"), digest_size=64).digest()
        positions += [int.from_bytes(digest[i : i + 8], "big") for i in range(0, 64, 8)]
    return min((position - point) % (1 << 64) for position in positions[:tokens])


# ------------------------------------------------------------------------------ small rings


def test_a_single_member_holds_every_partition() -> None:
    built = Ring.build(["solo"])
    assert every_preference_list(built) == [("solo",)] * Q
    assert built.preference_list(0, 5) == ("solo",)
    assert built.owners(b"any key") == ("solo",)
    assert built.replica_counts() == {"solo": Q}
    assert built.balance() == 1.0


def test_fewer_members_than_replicas_all_hold_every_partition() -> None:
    built = Ring.build(["a", "b"], partitions=32)
    for preference in every_preference_list(built):
        assert sorted(preference) == ["a", "b"]
    assert built.replica_counts() == {"a": 32, "b": 32}
    assert built.balance() == 1.0


@settings(max_examples=30, deadline=None, derandomize=True)
@given(member_sets(min_size=1, max_size=12))
def test_asking_for_more_than_n_walks_on_through_every_member(names: list[str]) -> None:
    built = Ring.build(names, partitions=64)
    for partition in range(64):
        walk = built.preference_list(partition, len(names) + 5)
        assert sorted(walk) == sorted(names)
        for n in range(len(names) + 2):
            assert built.preference_list(partition, n) == walk[:n]
        assert built.preference_list(partition) == walk[: min(N, len(names))]


def test_replica_counts_for_longer_lists_count_every_slot() -> None:
    built = Ring.build(NAME_POOL[:10], partitions=128)
    counts = built.replica_counts(5)
    assert sum(counts.values()) == 5 * 128
    assert built.replica_counts(10) == dict.fromkeys(NAME_POOL[:10], 128)
    assert built.balance(10) == 1.0


def test_growing_past_n_members_adds_the_newcomer_everywhere() -> None:
    before, after = (
        Ring.build(["a", "b"], partitions=64),
        Ring.build(["a", "b", "c"], partitions=64),
    )
    assert moved_replicas(before, after) == 64
    assert moved_replicas(after, before) == 64
    assert moved_replicas(after, after) == 0


# ------------------------------------------------------------------------------ bad input


def test_an_empty_ring_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one member"):
        Ring.build([])


@pytest.mark.parametrize("partitions", [0, -8, 3, 100, 1000, 1 << 17, True, 64.0])
def test_partitions_must_be_a_power_of_two(partitions: object) -> None:
    with pytest.raises(ValueError, match="power of two"):
        Ring.build(["a"], partitions=partitions)  # type: ignore[arg-type]


@pytest.mark.parametrize("field", ["tokens_per_member", "replicas"])
@pytest.mark.parametrize("value", [0, -1, True])
def test_tokens_and_replicas_must_be_positive(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        Ring.build(["a"], **{field: value})  # type: ignore[arg-type]


def test_member_names_must_be_strings() -> None:
    with pytest.raises(TypeError, match="str"):
        Ring.build(["a", b"b"])  # type: ignore[list-item]


def test_out_of_range_partitions_and_negative_lengths_are_refused() -> None:
    built = Ring.build(["a", "b", "c"], partitions=16)
    for partition in (-1, 16):
        with pytest.raises(ValueError, match="partition"):
            built.preference_list(partition)
    with pytest.raises(ValueError, match="negative"):
        built.preference_list(0, -1)


def test_rings_of_different_sizes_cannot_be_compared() -> None:
    with pytest.raises(ValueError, match="partitions"):
        moved_replicas(Ring.build(["a"], partitions=16), Ring.build(["a"], partitions=32))
