"""Tests for kvactors.core.quorum: decisions, late replies, stale replicas, repair."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvactors.core.clocks import Dot, HlcStamp, VectorClock
from kvactors.core.quorum import Decision, Outcome, QuorumKind, QuorumTracker
from kvactors.core.versions import EMPTY_STATE, KeyState, Version, coordinate_write, merge_states

NODES = ("a", "b", "c")


@dataclass(frozen=True, slots=True)
class Event:
    """One input to a tracker: a reply, an error, or the timeout (replica is None)."""

    kind: str  # "reply" | "error" | "timeout"
    replica: str | None = None


def feed(tracker: QuorumTracker, event: Event) -> Decision:
    if event.kind == "reply":
        assert event.replica is not None
        return tracker.on_reply(event.replica)
    if event.kind == "error":
        assert event.replica is not None
        return tracker.on_error(event.replica, "unavailable")
    return tracker.on_timeout()


def reference_decision(
    replicas: tuple[str, ...], required: int, events: list[Event]
) -> tuple[int, Outcome] | None:
    """(index of the deciding event, outcome): -1 when decided at construction, None if never.

    Computed from positions rather than by counting as events arrive: success is decided by
    the `required`-th replica whose first answer is a reply, unavailability by the
    (n - required + 1)-th replica whose first answer is an error, and the earliest wins.
    """
    if required > len(replicas):
        return (-1, Outcome.UNAVAILABLE)
    first_answers: dict[str, tuple[int, str]] = {}
    for index, event in enumerate(events):
        if event.replica in replicas and event.replica not in first_answers:
            first_answers[event.replica] = (index, event.kind)
    reply_positions = sorted(i for i, kind in first_answers.values() if kind == "reply")
    error_positions = sorted(i for i, kind in first_answers.values() if kind == "error")
    candidates: list[tuple[int, Outcome]] = []
    if len(reply_positions) >= required:
        candidates.append((reply_positions[required - 1], Outcome.SUCCESS))
    tolerable_errors = len(replicas) - required
    if len(error_positions) > tolerable_errors:
        candidates.append((error_positions[tolerable_errors], Outcome.UNAVAILABLE))
    timeouts = [i for i, event in enumerate(events) if event.kind == "timeout"]
    if timeouts:
        candidates.append((timeouts[0], Outcome.TIMEOUT))
    return min(candidates, key=lambda candidate: candidate[0], default=None)


def check_run(replicas: tuple[str, ...], required: int, events: list[Event]) -> None:
    expected = reference_decision(replicas, required, events)
    tracker = QuorumTracker(QuorumKind.WRITE, replicas, required)
    if expected is not None and expected[0] == -1:
        assert tracker.decision == Decision(expected[1])
    else:
        assert tracker.decision == Decision(Outcome.PENDING)
    for index, event in enumerate(events):
        decision = feed(tracker, event)
        if expected is None or index < expected[0]:
            assert decision == Decision(Outcome.PENDING, is_new=False)
        elif index == expected[0]:
            assert decision == Decision(expected[1], is_new=True)
        else:
            assert decision == Decision(expected[1], is_new=False)
    final = expected[1] if expected is not None else Outcome.PENDING
    assert tracker.decision == Decision(final)


# ------------------------------------------------------------------------------ the module


# ---------------------------------------------------------------------------- decisions


@st.composite
def runs(draw: st.DrawFn) -> tuple[tuple[str, ...], int, list[Event]]:
    size = draw(st.integers(1, 5))
    replicas = tuple(f"r{index}" for index in range(size))
    required = draw(st.integers(1, size + 1))
    events: list[Event] = []
    for replica in replicas:
        fate = draw(st.sampled_from(("reply", "error", "silent")))
        if fate != "silent":
            events.append(Event(fate, replica))
    # Noise a confused or retrying peer produces: second answers and strangers.
    noise = st.builds(
        Event, st.sampled_from(("reply", "error")), st.sampled_from((*replicas, "stranger"))
    )
    events += draw(st.lists(noise, max_size=3))
    events += [Event("timeout")] * draw(st.integers(0, 2))
    return replicas, required, draw(st.permutations(events))


@given(runs())
def test_decision_matches_reference_for_any_order(
    run: tuple[tuple[str, ...], int, list[Event]],
) -> None:
    check_run(*run)


def test_decision_matches_reference_for_every_order_of_three_replicas() -> None:
    replicas = ("r0", "r1", "r2")
    checked = 0
    for fates in itertools.product(("reply", "error", "silent"), repeat=len(replicas)):
        answers = [
            Event(fate, r) for fate, r in zip(fates, replicas, strict=True) if fate != "silent"
        ]
        for with_timeout in (False, True):
            events = [*answers, Event("timeout")] if with_timeout else answers
            for order in set(itertools.permutations(events)):
                for required in range(1, len(replicas) + 2):
                    check_run(replicas, required, list(order))
                    checked += 1
    # 356 distinct orders of fates and timeout (sum over k answers of C(3,k) 2^k (k! + (k+1)!)),
    # each with required = 1..4.
    assert checked == 356 * 4


def test_success_at_the_required_reply() -> None:
    tracker = QuorumTracker(QuorumKind.WRITE, ("a", "b", "c"), 2)
    assert tracker.on_reply("a") == Decision(Outcome.PENDING)
    assert tracker.on_reply("a") == Decision(Outcome.PENDING)  # counted once
    assert tracker.on_reply("stranger") == Decision(Outcome.PENDING)
    assert tracker.on_reply("b") == Decision(Outcome.SUCCESS, is_new=True)
    assert tracker.on_timeout() == Decision(Outcome.SUCCESS)
    complete_before_c = tracker.complete
    assert tracker.on_error("c", "timeout") == Decision(Outcome.SUCCESS)
    assert (complete_before_c, tracker.complete) == (False, True)
    assert tracker.replied() == ("a", "b")
    assert tracker.errors() == (("c", "timeout"),)


def test_unavailable_as_soon_as_the_quorum_is_out_of_reach() -> None:
    tracker = QuorumTracker(QuorumKind.WRITE, ("a", "b", "c"), 2)
    assert tracker.on_error("a", "overloaded") == Decision(Outcome.PENDING)
    assert tracker.on_error("b", "unavailable") == Decision(Outcome.UNAVAILABLE, is_new=True)
    assert tracker.on_reply("c") == Decision(Outcome.UNAVAILABLE)
    assert tracker.errors() == (("a", "overloaded"), ("b", "unavailable"))


def test_timeout_before_success() -> None:
    tracker = QuorumTracker(QuorumKind.READ, ("a", "b", "c"), 2)
    tracker.on_reply("a")
    assert tracker.on_timeout() == Decision(Outcome.TIMEOUT, is_new=True)
    assert tracker.on_reply("b") == Decision(Outcome.TIMEOUT)
    assert tracker.on_timeout() == Decision(Outcome.TIMEOUT)


def test_required_above_replica_count_is_unavailable_at_once() -> None:
    tracker = QuorumTracker(QuorumKind.READ, ("a", "b"), 3)
    assert tracker.decision == Decision(Outcome.UNAVAILABLE)
    assert tracker.decision.is_final
    assert tracker.on_reply("a") == Decision(Outcome.UNAVAILABLE)


@pytest.mark.parametrize(("replicas", "required"), [(("a", "b"), 0), (("a", "a"), 1)])
def test_rejects_impossible_setups(replicas: tuple[str, ...], required: int) -> None:
    with pytest.raises(ValueError):
        QuorumTracker(QuorumKind.WRITE, replicas, required)


# ------------------------------------------------------------------------ reads and repair


def written(value: bytes, wall_ms: int, node: str = "a", base: KeyState = EMPTY_STATE) -> KeyState:
    """`base` after a blind write of `value` through `node` (concurrent with `base`)."""
    return coordinate_write(base, node, VectorClock(), value, HlcStamp(wall_ms, 0, node))


def overwritten(state: KeyState, value: bytes, wall_ms: int, node: str = "a") -> KeyState:
    """`state` after a read-modify-write through `node`: supersedes everything in it."""
    return coordinate_write(state, node, state.context, value, HlcStamp(wall_ms, 0, node))


# Small domains so replies often share versions and dots.
key_states = st.builds(
    KeyState.from_versions,
    st.lists(
        st.builds(
            Version,
            st.none() | st.sampled_from((b"x", b"y")),
            st.builds(Dot, st.sampled_from(NODES), st.integers(1, 3)),
            st.dictionaries(st.sampled_from(NODES), st.integers(0, 3)).map(VectorClock.from_dict),
            st.builds(HlcStamp, st.integers(0, 3), st.just(0), st.sampled_from(NODES)),
        ),
        max_size=3,
    ),
    st.dictionaries(st.sampled_from(NODES), st.integers(0, 3)).map(VectorClock.from_dict),
)


@st.composite
def read_runs(
    draw: st.DrawFn,
) -> tuple[tuple[str, ...], int, dict[str, KeyState], list[str]]:
    size = draw(st.integers(1, 4))
    replicas = tuple(f"r{index}" for index in range(size))
    replies = {replica: draw(key_states) for replica in replicas}
    answering = draw(st.lists(st.sampled_from(replicas), unique=True))
    order = draw(st.permutations(answering))
    required = draw(st.integers(1, size))
    return replicas, required, replies, order


@given(read_runs())
@settings(max_examples=60)
def test_read_merges_replies_and_finds_stale_replicas(
    run: tuple[tuple[str, ...], int, dict[str, KeyState], list[str]],
) -> None:
    replicas, required, replies, order = run
    tracker = QuorumTracker(QuorumKind.READ, replicas, required)
    for replica in order:
        tracker.on_reply(replica, replies[replica])
    # Late replies after success are merged too.
    assert tracker.decision.outcome == (
        Outcome.SUCCESS if len(order) >= required else Outcome.PENDING
    )
    expected = EMPTY_STATE
    for replica in reversed(order):
        expected = merge_states(replies[replica], expected)
    assert tracker.merged == expected
    assert tracker.stale_replicas() == tuple(
        replica for replica in replicas if replica in order and replies[replica] != expected
    )
    for replica in replicas:
        repair = tracker.repair_for(replica)
        if replica not in order or replies[replica] == expected:
            assert repair is None
        else:
            assert repair is not None
            assert merge_states(replies[replica], repair) == expected


def test_not_found_reply_is_stale_when_another_replica_found_the_key() -> None:
    stored = written(b"v", 5)
    tracker = QuorumTracker(QuorumKind.READ, ("a", "b", "c"), 2)
    assert tracker.on_reply("a", EMPTY_STATE) == Decision(Outcome.PENDING)
    assert tracker.on_reply("b", stored) == Decision(Outcome.SUCCESS, is_new=True)
    assert tracker.merged == stored
    assert tracker.stale_replicas() == ("a",)
    assert tracker.repair_for("a") == stored
    assert tracker.repair_for("b") is None
    assert tracker.repair_for("c") is None


def test_not_found_everywhere_is_not_stale() -> None:
    tracker = QuorumTracker(QuorumKind.READ, ("a", "b"), 2)
    tracker.on_reply("a")
    tracker.on_reply("b", EMPTY_STATE)
    assert tracker.merged == EMPTY_STATE
    assert tracker.stale_replicas() == ()
    assert tracker.repair_for("a") is None


def test_late_reply_after_success_updates_merge_and_staleness() -> None:
    old = written(b"old", 1)
    new = overwritten(old, b"new", 2)
    tracker = QuorumTracker(QuorumKind.READ, ("a", "b", "c"), 2)
    tracker.on_reply("a", old)
    assert tracker.on_reply("b", old).is_new
    assert tracker.stale_replicas() == ()
    assert tracker.on_reply("c", new) == Decision(Outcome.SUCCESS)
    assert tracker.merged == new
    assert tracker.stale_replicas() == ("a", "b")
    assert tracker.repair_for("a") == new
    assert tracker.complete


def test_replicas_that_learned_the_same_by_different_paths_are_up_to_date() -> None:
    # "a" stored the old version and later received its overwrite; "c" got the overwrite
    # only. Both now know the same, so neither needs repair.
    old = written(b"old", 1)
    new = overwritten(old, b"new", 2, node="c")
    tracker = QuorumTracker(QuorumKind.READ, ("a", "c"), 2)
    tracker.on_reply("a", merge_states(old, new))
    tracker.on_reply("c", new)
    assert tracker.stale_replicas() == ()
    assert tracker.merged == new


def test_concurrent_siblings_from_different_replicas_are_both_kept() -> None:
    left = written(b"left", 3, "a")
    right = written(b"right", 4, "b")
    tracker = QuorumTracker(QuorumKind.READ, ("a", "b"), 2)
    tracker.on_reply("a", left)
    tracker.on_reply("b", right)
    assert [v.value for v in tracker.merged.versions] == [b"right", b"left"]
    assert tracker.stale_replicas() == ("a", "b")
    assert tracker.repair_for("a") == tracker.merged


def test_concurrent_writes_through_one_coordinator_both_reach_the_reader() -> None:
    base = written(b"base", 1)
    left = overwritten(base, b"left", 2)
    both = coordinate_write(left, "a", base.context, b"right", HlcStamp(3, 0, "a"))
    tracker = QuorumTracker(QuorumKind.READ, ("a", "b"), 2)
    tracker.on_reply("a", both)
    tracker.on_reply("b", left)
    assert {v.value for v in tracker.merged.versions} == {b"left", b"right"}
    assert tracker.stale_replicas() == ("b",)


def test_failed_replicas_are_not_reported_stale() -> None:
    tracker = QuorumTracker(QuorumKind.READ, ("a", "b", "c"), 1)
    tracker.on_reply("a", written(b"v", 1))
    tracker.on_error("b", "internal")
    assert tracker.stale_replicas() == ()
    assert tracker.repair_for("b") is None


def test_writes_ignore_reply_payloads() -> None:
    tracker = QuorumTracker(QuorumKind.WRITE, ("a", "b"), 1)
    tracker.on_reply("a", written(b"v", 1))
    tracker.on_reply("b")
    assert tracker.merged == EMPTY_STATE
    assert tracker.stale_replicas() == ()
