"""The checker on hand-made and generated histories: it finds lost writes, and only those."""

from __future__ import annotations

import random
from typing import Any

import pytest
from checker import FINAL_PROCESS, Window, check, pair_operations
from hypothesis import given
from hypothesis import strategies as st

Record = dict[str, Any]


def op(  # noqa: PLR0917 - a record reads best as one positional line
    process: object, kind: str, f: str, key: str, value: Any, time: float, **extra: Any
) -> Record:
    return {
        "process": process,
        "type": kind,
        "f": f,
        "key": key,
        "value": value,
        "time": time,
        **extra,
    }


def final_read(key: str, value: Any, time: float, f: str = "put") -> list[Record]:
    return [
        op(FINAL_PROCESS, "invoke", f, key, None, time),
        op(FINAL_PROCESS, "ok", f, key, value, time + 0.001),
    ]


# -- hand-made histories -----------------------------------------------------------------


def test_a_history_with_every_acknowledged_write_read_back_loses_nothing() -> None:
    history = [
        op(0, "invoke", "put", "k0", "v0", 1.0),
        op(1, "invoke", "put", "k1", "v1", 1.1),
        op(0, "ok", "put", "k0", "v0", 1.2),
        op(1, "fail", "put", "k1", "v1", 1.3),
        op(0, "invoke", "put", "k2", "v2", 1.4),
        op(0, "info", "put", "k2", "v2", 2.4),
        *final_read("k0", "v0", 5.0),
        *final_read("k1", None, 5.0),
        *final_read("k2", "v2", 5.0),  # an unknown write may have landed: not unexpected
    ]
    summary = check(history)
    assert (summary.operations, summary.acknowledged, summary.failed, summary.unknown) == (
        3,
        1,
        1,
        1,
    )
    assert (summary.lost, summary.unexpected, summary.unread) == (0, 0, 0)


def test_an_acknowledged_put_missing_from_the_final_read_is_flagged_lost() -> None:
    history = [
        op(0, "invoke", "put", "k0", "v0", 1.0),
        op(0, "ok", "put", "k0", "v0", 1.1),
        op(0, "invoke", "put", "k1", "v1", 1.2),
        op(0, "ok", "put", "k1", "v1", 1.3),
        *final_read("k0", "v0", 5.0),
        *final_read("k1", None, 5.0),
    ]
    summary = check(history)
    assert summary.lost == 1
    assert summary.lost_writes == (("k1", "v1"),)


def test_a_put_read_back_with_another_value_is_lost_and_the_value_unexpected() -> None:
    history = [
        op(0, "invoke", "put", "k0", "v0", 1.0),
        op(0, "ok", "put", "k0", "v0", 1.1),
        *final_read("k0", "garbage", 5.0),
    ]
    summary = check(history)
    assert (summary.lost, summary.unexpected) == (1, 1)


def test_an_element_acknowledged_added_but_missing_from_the_register_is_lost() -> None:
    history = [
        op("a", "invoke", "add", "hot0", 1, 1.0),
        op("b", "invoke", "add", "hot0", 2, 1.0),
        op("a", "ok", "add", "hot0", 1, 1.1),
        op("b", "ok", "add", "hot0", 2, 1.2),
        op("a", "invoke", "add", "hot0", 3, 1.3),
        op("a", "fail", "add", "hot0", 3, 1.4),
        *final_read("hot0", [1, 7], 5.0, f="add"),
    ]
    summary = check(history)
    assert summary.lost_writes == (("hot0", 2),)
    assert summary.unexpected == 1  # 7 was never added by anyone


def test_writes_whose_key_was_never_read_at_the_end_are_unread_not_lost() -> None:
    history = [op(0, "invoke", "put", "k0", "v0", 1.0), op(0, "ok", "put", "k0", "v0", 1.1)]
    summary = check(history)
    assert (summary.lost, summary.unread) == (0, 1)


def test_a_failed_final_read_does_not_count_as_a_read() -> None:
    history = [
        op(0, "invoke", "put", "k0", "v0", 1.0),
        op(0, "ok", "put", "k0", "v0", 1.1),
        op(FINAL_PROCESS, "invoke", "put", "k0", None, 5.0),
        op(FINAL_PROCESS, "fail", "put", "k0", None, 5.1),
    ]
    assert check(history).unread == 1


def test_availability_counts_operations_invoked_in_the_window_on_the_asked_nodes() -> None:
    history = [
        op(0, "invoke", "put", "k0", "v", 0.5, node="n1"),  # before the fault
        op(0, "fail", "put", "k0", "v", 0.6),
        op(0, "invoke", "put", "k1", "v", 1.0, node="n1"),
        op(0, "ok", "put", "k1", "v", 1.1),
        op(0, "invoke", "put", "k2", "v", 1.2, node="n1"),
        op(0, "info", "put", "k2", "v", 3.5),  # invoked inside, completed after: counts
        op(1, "invoke", "put", "k3", "v", 1.5, node="n5"),
        op(1, "fail", "put", "k3", "v", 1.6),
        op(1, "invoke", "put", "k4", "v", 3.0, node="n1"),  # at the window's end: outside
    ]
    window = Window(1.0, 3.0)
    everywhere = check(history, [window])
    assert (everywhere.fault_operations, everywhere.fault_ok) == (3, 1)
    majority = check(history, [window], nodes=["n1", "n2"])
    assert (majority.fault_operations, majority.fault_ok) == (2, 1)
    assert majority.availability == pytest.approx(0.5)
    assert check(history, []).availability is None
    assert check(history).unknown == 2  # one info, one never completed


@pytest.mark.parametrize(
    "records",
    [
        [op(0, "ok", "put", "k", "v", 1.0)],
        [op(0, "invoke", "put", "k", "v", 1.0), op(0, "invoke", "put", "j", "v", 1.1)],
        [op(0, "begin", "put", "k", "v", 1.0)],
    ],
    ids=["completion-without-invoke", "two-invokes", "unknown-type"],
)
def test_a_malformed_history_is_refused(records: list[Record]) -> None:
    with pytest.raises(ValueError):
        pair_operations(records)


# -- generated histories -------------------------------------------------------------------

OUTCOMES = ("ok", "fail", "info", None)


@st.composite
def set_histories(draw: st.DrawFn) -> tuple[list[Record], set[str], int]:
    """A set workload of a few processes, interleaved at random, with final reads that
    hold every acknowledged key and some of the others. Returns (history, acknowledged
    keys, seed of the interleaving)."""
    processes = draw(st.integers(1, 4))
    per_process = [draw(st.lists(st.sampled_from(OUTCOMES), max_size=12)) for _ in range(processes)]
    landed_if_unacked = draw(st.booleans())
    seed = draw(st.integers(0, 2**32 - 1))
    rng = random.Random(seed)
    queues = [
        [(f"p{p}-{n}", outcome) for n, outcome in enumerate(outcomes)]
        for p, outcomes in enumerate(per_process)
    ]
    history: list[Record] = []
    acknowledged: set[str] = set()
    landed: set[str] = set()
    clock = 0.0
    # Interleave: each step, a random process with work left invokes and completes one op,
    # its completion possibly after other processes' invocations.
    open_ops: dict[int, tuple[str, str | None]] = {}
    while any(queues) or open_ops:
        clock += 0.01
        ready = [p for p, queue in enumerate(queues) if queue and p not in open_ops]
        if ready and (not open_ops or rng.random() < 0.5):
            p = rng.choice(ready)
            key, outcome = queues[p].pop(0)
            history.append(op(p, "invoke", "put", key, key, clock))
            open_ops[p] = (key, outcome)
            continue
        p = rng.choice(sorted(open_ops))
        key, outcome = open_ops.pop(p)
        if outcome is not None:
            history.append(op(p, outcome, "put", key, key, clock))
        if outcome == "ok":
            acknowledged.add(key)
        elif outcome != "fail" and landed_if_unacked:
            landed.add(key)
        if outcome is None:  # never completed: the process stops there
            queues[p].clear()
    for key in sorted(
        {r["key"] for r in history if r["type"] == "invoke"}
    ):  # every key attempted gets a final read
        history += final_read(key, key if key in acknowledged | landed else None, clock + 1)
    return history, acknowledged, seed


@given(set_histories())
def test_generated_histories_that_keep_every_acknowledged_write_lose_nothing(
    case: tuple[list[Record], set[str], int],
) -> None:
    history, acknowledged, _ = case
    summary = check(history)
    assert summary.lost == 0
    assert summary.acknowledged == len(acknowledged)
    assert summary.unexpected == 0 and summary.unread == 0


@given(set_histories(), st.data())
def test_generated_histories_with_dropped_acknowledged_writes_report_exactly_those(
    case: tuple[list[Record], set[str], int], data: st.DataObject
) -> None:
    history, acknowledged, _ = case
    if not acknowledged:
        return
    dropped = set(data.draw(st.lists(st.sampled_from(sorted(acknowledged)), min_size=1)))
    damaged = [
        {**r, "value": None}
        if r["process"] == FINAL_PROCESS and r["type"] == "ok" and r["key"] in dropped
        else r
        for r in history
    ]
    summary = check(damaged)
    assert summary.lost == len(dropped)
    assert {key for key, _ in summary.lost_writes} == dropped


@given(set_histories(), st.floats(0, 1), st.floats(0, 1))
def test_availability_is_the_share_of_operations_in_the_window_that_succeeded(
    case: tuple[list[Record], set[str], int], start: float, length: float
) -> None:
    history, _, _ = case
    window = Window(start, start + length)
    invoked_in = {
        (r["process"], r["key"])
        for r in history
        if r["type"] == "invoke" and r["process"] != FINAL_PROCESS and r["time"] in window
    }
    succeeded = {(r["process"], r["key"]) for r in history if r["type"] == "ok"}
    summary = check(history, [window])
    assert summary.fault_operations == len(invoked_in)
    assert summary.fault_ok == len(invoked_in & succeeded)
    if invoked_in:
        assert summary.availability == pytest.approx(len(invoked_in & succeeded) / len(invoked_in))
    else:
        assert summary.availability is None


@given(
    st.lists(st.tuples(st.integers(0, 3), st.sampled_from(OUTCOMES[:3])), max_size=30),
    st.data(),
)
def test_register_elements_lost_are_the_acknowledged_ones_missing_from_the_final_set(
    adds: list[tuple[int, str]], data: st.DataObject
) -> None:
    history: list[Record] = []
    for element, (process, outcome) in enumerate(adds):
        history.append(op(process, "invoke", "add", "hot", element, float(element)))
        history.append(op(process, outcome, "add", "hot", element, element + 0.5))
    acknowledged = {element for element, (_, outcome) in enumerate(adds) if outcome == "ok"}
    kept = set(data.draw(st.lists(st.sampled_from(sorted(acknowledged)))) if acknowledged else [])
    history += final_read("hot", sorted(kept), 100.0, f="add")
    summary = check(history)
    assert {value for _, value in summary.lost_writes} == acknowledged - kept
    assert summary.unexpected == 0
