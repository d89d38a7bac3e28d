"""Supervisor and SupervisedActor, tested with real Pykka actors (no mocks).

The test actors write what happens to them (start, stop, crash) into one thread-safe
`Journal`, so each test asserts the exact order in which a supervisor stopped and
started its children, and which refs were replaced. Nothing sleeps: tests wait on
conditions (the journal's condition variable, a child's thread ending, the exit
notice of a root supervisor) and then ask the supervisor something, which it answers
only after it has finished reacting to everything queued before.
"""

from __future__ import annotations

import queue
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pykka
import pytest

from kvactors.errors import ActorCrashedError, ChildStartError, RestartIntensityError
from kvactors.runtime.supervision import (
    ChildExited,
    ChildInfo,
    ChildSpec,
    ExitReason,
    Restart,
    Strategy,
    SupervisedActor,
    Supervisor,
    start_supervised,
)
from kvactors.testing import FakeClock, wait_until

# Seconds any single wait may take before the test fails; each wait normally takes
# milliseconds, so this only bounds how long a broken test takes to say so.
WAIT = 2.0

Event = tuple[str, str]  # (what happened, to whom): ("start", "a"), ("stop", "a"), ("crash", "a")
ActorRef = pykka.ActorRef[Any]


# -- test actors ---------------------------------------------------------------------


class Journal:
    """What the test actors did, in order, across all their threads."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._events: list[Event] = []
        self._threads: dict[str, threading.Thread] = {}  # actor urn -> the actor's thread
        self._start_failures: Counter[str] = Counter()

    def record(self, what: str, who: str) -> None:
        with self._changed:
            self._events.append((what, who))
            self._changed.notify_all()

    def record_start(self, who: str, urn: str) -> None:
        with self._changed:
            self._threads[urn] = threading.current_thread()
        self.record("start", who)

    def fail_next_starts(self, who: str, times: int) -> None:
        """Make the next `times` starts of `who` raise in on_start."""
        with self._changed:
            self._start_failures[who] = times

    def take_start_failure(self, who: str) -> bool:
        with self._changed:
            if self._start_failures[who] <= 0:
                return False
            self._start_failures[who] -= 1
            return True

    def events(self) -> list[Event]:
        with self._changed:
            return list(self._events)

    def clear(self) -> None:
        with self._changed:
            self._events.clear()

    def wait_for(self, count: int) -> None:
        """Wait until at least `count` events are recorded."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._events) >= count, timeout=WAIT):
                raise AssertionError(f"wanted {count} events within {WAIT}s, got {self._events}")

    def wait_exit(self, urn: str) -> None:
        """Wait until the actor `urn` has ended, so its exit notice has been sent."""
        with self._changed:
            thread = self._threads[urn]
        thread.join(WAIT)
        assert not thread.is_alive(), f"actor {urn} still running after {WAIT}s"


class BoomError(Exception):
    """The failure the tests inject."""


class StartFailedError(Exception):
    """Raised by a Worker's on_start when the journal says so."""


@dataclass(frozen=True, slots=True)
class Crash:
    """Tell a Worker to raise `error` while handling this message."""

    error: BaseException


@dataclass(frozen=True, slots=True)
class StopYourself:
    """Tell a Worker to stop itself normally."""


class Worker(SupervisedActor):
    """A child that records its life in the journal and fails on request."""

    def __init__(self, child_id: str, journal: Journal) -> None:
        super().__init__()
        self.child_id = child_id
        self.journal = journal

    def on_start(self) -> None:
        self.journal.record_start(self.child_id, self.actor_urn)
        if self.journal.take_start_failure(self.child_id):
            raise StartFailedError(self.child_id)

    def on_stop(self) -> None:
        self.journal.record("stop", self.child_id)

    def on_failure(self, *_exc_info: Any) -> None:
        self.journal.record("crash", self.child_id)

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Crash):
            raise message.error
        if isinstance(message, StopYourself):
            self.stop()
            return None
        return super().on_receive(message)

    def explode(self, error: BaseException) -> None:
        """Called through the proxy: a crash in an ask handler."""
        raise error

    def ping(self) -> str:
        return f"pong from {self.child_id}"


class RecordingSupervisor(Supervisor):
    """A Supervisor that records its own start, stop and crash under its name.

    It counts as started once its children are, and as stopped once they are.
    """

    def __init__(self, children: Sequence[ChildSpec], journal: Journal, **options: Any) -> None:
        super().__init__(children, **options)
        self.journal = journal

    def on_start(self) -> None:
        super().on_start()
        self.journal.record_start(self.name, self.actor_urn)

    def on_stop(self) -> None:
        super().on_stop()
        self.journal.record("stop", self.name)

    def on_failure(self, *exc_info: Any) -> None:
        super().on_failure(*exc_info)
        self.journal.record("crash", self.name)


class PlainActor(pykka.ThreadingActor):
    """An ordinary Pykka actor, outside any supervision."""

    use_daemon_thread = True

    def ping(self) -> str:
        return "pong"


class PlainStarts:
    """A start function that starts PlainActors, which no supervisor may adopt."""

    def __init__(self) -> None:
        self.refs: list[ActorRef] = []

    def __call__(self) -> ActorRef:
        self.refs.append(PlainActor.start())
        return self.refs[-1]

    def wait_all_stopped(self) -> None:
        """The refusal stops what the start function started; wait for that to finish."""
        wait_until(
            lambda: not any(ref.is_alive() for ref in self.refs),
            timeout=WAIT,
            message="a plain actor refused as a child is still running",
        )


# -- helpers -------------------------------------------------------------------------


def worker(
    child_id: str, journal: Journal, restart: Restart = Restart.PERMANENT, **options: Any
) -> ChildSpec:
    return ChildSpec(child_id, lambda: Worker.start(child_id, journal), restart=restart, **options)


def subtree(
    name: str, children: Sequence[ChildSpec], journal: Journal, **options: Any
) -> ChildSpec:
    return ChildSpec(
        name, lambda: RecordingSupervisor.start(children, journal, name=name, **options)
    )


def children_of(sup: ActorRef) -> list[ChildInfo]:
    """Also a barrier: the supervisor answers after reacting to all it was told before."""
    infos: list[ChildInfo] = sup.proxy().which_children().get(timeout=WAIT)
    return infos


def urns_of(sup: ActorRef) -> dict[str, str]:
    urns = {}
    for info in children_of(sup):
        assert info.ref is not None, f"{info.id} has no live ref"
        urns[info.id] = info.ref.actor_urn
    return urns


def child(sup: ActorRef, child_id: str) -> ActorRef:
    ref: ActorRef | None = sup.proxy().child_ref(child_id).get(timeout=WAIT)
    assert ref is not None, f"no child {child_id}"
    return ref


def restarts_of(sup: ActorRef) -> int:
    count: int = sup.proxy().restart_count().get(timeout=WAIT)
    return count


def starts(names: str) -> list[Event]:
    return [("start", name) for name in names]


def stops(names: str) -> list[Event]:
    return [("stop", name) for name in names]


def settle(journal: Journal, sup: ActorRef, count: int) -> list[Event]:
    """Wait for `count` events, then for the supervisor to finish; return all events."""
    journal.wait_for(count)
    children_of(sup)
    return journal.events()


def next_exit(exits: queue.Queue[ChildExited]) -> ChildExited:
    try:
        return exits.get(timeout=WAIT)
    except queue.Empty:
        raise AssertionError(f"no exit notice within {WAIT}s") from None


# -- fixtures ------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Fail a test that leaves an actor registered or an actor thread running.

    SupervisedActor threads are daemon threads: a leaked one would never hold up the
    process, so we look for it explicitly.
    """
    threads_before = set(threading.enumerate())
    yield
    leaked = pykka.ActorRegistry.get_all()
    pykka.ActorRegistry.stop_all(block=True, timeout=WAIT)

    def new_threads() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t not in threads_before and t.is_alive()]

    wait_until(lambda: not new_threads(), timeout=WAIT, message="actor threads outlived the test")
    assert not leaked, f"test left actors running: {leaked}"


@pytest.fixture
def journal() -> Journal:
    return Journal()


@pytest.fixture
def exits() -> queue.Queue[ChildExited]:
    """Exit notices of the root supervisors that `supervise` starts."""
    return queue.Queue()


@pytest.fixture
def supervise(
    no_leaks: None, journal: Journal, exits: queue.Queue[ChildExited]
) -> Iterator[Callable[..., ActorRef]]:
    """Start a root RecordingSupervisor (linked to `exits`); stop it after the test."""
    roots: list[ActorRef] = []

    def start(children: Sequence[ChildSpec], name: str = "root", **options: Any) -> ActorRef:
        def start_root() -> ActorRef:
            return RecordingSupervisor.start(children, journal, name=name, **options)

        ref = start_supervised(start_root, exits.put, name=name)
        roots.append(ref)
        return ref

    yield start
    for ref in reversed(roots):
        ref.stop(block=True, timeout=WAIT)  # False, harmlessly, when it is dead already
        # A root that crashed may still be stopping its children: wait for its thread.
        journal.wait_exit(ref.actor_urn)


@pytest.fixture
def bystander() -> Iterator[ActorRef]:
    ref = PlainActor.start()
    yield ref
    ref.stop(block=True, timeout=WAIT)


# -- strategies ----------------------------------------------------------------------

ALL = {"a", "b", "c", "d"}


@pytest.mark.parametrize(
    ("strategy", "crashed", "expected", "replaced"),
    [
        (Strategy.ONE_FOR_ONE, "b", [("crash", "b"), *starts("b")], {"b"}),
        (Strategy.ONE_FOR_ONE, "d", [("crash", "d"), *starts("d")], {"d"}),
        (Strategy.ONE_FOR_ALL, "b", [("crash", "b"), *stops("dca"), *starts("abcd")], ALL),
        (Strategy.ONE_FOR_ALL, "d", [("crash", "d"), *stops("cba"), *starts("abcd")], ALL),
        (
            Strategy.REST_FOR_ONE,
            "b",
            [("crash", "b"), *stops("dc"), *starts("bcd")],
            {"b", "c", "d"},
        ),
        (Strategy.REST_FOR_ONE, "a", [("crash", "a"), *stops("dcb"), *starts("abcd")], ALL),
        (Strategy.REST_FOR_ONE, "d", [("crash", "d"), *starts("d")], {"d"}),
    ],
    ids=lambda value: str(value) if isinstance(value, str) else None,
)
def test_strategy_restarts_exactly_its_group_in_order(
    supervise: Callable[..., ActorRef],
    journal: Journal,
    *,
    strategy: Strategy,
    crashed: str,
    expected: list[Event],
    replaced: set[str],
) -> None:
    sup = supervise([worker(name, journal) for name in "abcd"], strategy=strategy)
    assert journal.events() == [*starts("abcd"), ("start", "root")]
    before = urns_of(sup)
    old_refs = {info.id: info.ref for info in children_of(sup)}
    journal.clear()

    child(sup, crashed).tell(Crash(BoomError(crashed)))

    assert settle(journal, sup, len(expected)) == expected
    after = urns_of(sup)
    assert list(after) == ["a", "b", "c", "d"]  # restarted children keep their place
    assert {n for n in after if after[n] != before[n]} == replaced
    for name, ref in old_refs.items():
        assert ref is not None
        assert ref.is_alive() is (name not in replaced)
    assert restarts_of(sup) == 1  # a group restart counts once


# -- where a crash can happen ------------------------------------------------------

# Not Exceptions: plain Pykka would stop every actor in the process on these.
BASE_EXCEPTIONS = [SystemExit(3), KeyboardInterrupt()]


def test_crash_in_tell_handler_restarts_the_child(
    supervise: Callable[..., ActorRef], journal: Journal
) -> None:
    sup = supervise([worker("a", journal), worker("b", journal)])
    before = urns_of(sup)
    journal.clear()

    child(sup, "b").tell(Crash(BoomError("in tell")))

    assert settle(journal, sup, 2) == [("crash", "b"), ("start", "b")]
    after = urns_of(sup)
    assert after["a"] == before["a"]
    assert after["b"] != before["b"]
    assert child(sup, "b").proxy().ping().get(timeout=WAIT) == "pong from b"


def test_crash_in_ask_handler_reaches_the_caller_and_restarts_the_child(
    supervise: Callable[..., ActorRef], journal: Journal
) -> None:
    sup = supervise([worker("a", journal), worker("b", journal)])
    before = urns_of(sup)
    journal.clear()
    error = BoomError("in ask")

    with pytest.raises(BoomError) as caught:
        child(sup, "b").proxy().explode(error).get(timeout=WAIT)

    assert caught.value is error  # the original exception, not a wrapper
    assert settle(journal, sup, 2) == [("crash", "b"), ("start", "b")]
    after = urns_of(sup)
    assert after["a"] == before["a"]
    assert after["b"] != before["b"]


def test_crash_in_on_start_during_restart_is_retried_and_counted(
    supervise: Callable[..., ActorRef], journal: Journal
) -> None:
    sup = supervise([worker("a", journal), worker("b", journal)], max_restarts=3)
    journal.clear()
    journal.fail_next_starts("b", 2)

    child(sup, "b").tell(Crash(BoomError("first")))

    expected = [("crash", "b"), ("start", "b")] * 3  # two failed restarts, then one that holds
    assert settle(journal, sup, len(expected)) == expected
    assert restarts_of(sup) == 3  # the crash and each failed attempt
    assert child(sup, "b").proxy().ping().get(timeout=WAIT) == "pong from b"


def test_failed_restarts_count_toward_intensity(
    supervise: Callable[..., ActorRef], journal: Journal, exits: queue.Queue[ChildExited]
) -> None:
    sup = supervise(
        [worker("a", journal), worker("b", journal), worker("c", journal)], max_restarts=2
    )
    journal.clear()
    journal.fail_next_starts("b", 2)

    child(sup, "b").tell(Crash(BoomError("first")))

    exit_ = next_exit(exits)
    assert exit_.urn == sup.actor_urn
    assert isinstance(exit_.error, RestartIntensityError)
    # Third count (crash, failed start, failed start) is over the limit: give up, c then a.
    assert journal.events() == [
        ("crash", "b"),
        ("start", "b"),
        ("crash", "b"),
        ("start", "b"),
        ("crash", "b"),
        ("stop", "c"),
        ("stop", "a"),
        ("crash", "root"),
    ]


@pytest.mark.parametrize("error", BASE_EXCEPTIONS, ids=lambda error: type(error).__name__)
def test_base_exception_in_ask_crashes_only_that_actor(
    supervise: Callable[..., ActorRef],
    journal: Journal,
    bystander: ActorRef,
    error: BaseException,
) -> None:
    sup = supervise([worker("a", journal), worker("b", journal)])
    before = urns_of(sup)
    journal.clear()

    with pytest.raises(ActorCrashedError) as caught:
        child(sup, "b").proxy().explode(error).get(timeout=WAIT)

    assert caught.value.__cause__ is error
    assert settle(journal, sup, 2) == [("crash", "b"), ("start", "b")]
    after = urns_of(sup)
    assert after["a"] == before["a"]
    assert after["b"] != before["b"]
    # Pykka alone would have stopped every actor in the process.
    assert bystander.proxy().ping().get(timeout=WAIT) == "pong"
    registered = {ref.actor_urn for ref in pykka.ActorRegistry.get_all()}
    assert {bystander.actor_urn, sup.actor_urn, *after.values()} <= registered
    assert before["b"] not in registered


@pytest.mark.parametrize("error", BASE_EXCEPTIONS, ids=lambda error: type(error).__name__)
def test_base_exception_in_tell_crashes_only_that_actor(
    supervise: Callable[..., ActorRef],
    journal: Journal,
    bystander: ActorRef,
    error: BaseException,
) -> None:
    sup = supervise([worker("a", journal), worker("b", journal)])
    before = urns_of(sup)
    journal.clear()

    child(sup, "a").tell(Crash(error))

    assert settle(journal, sup, 2) == [("crash", "a"), ("start", "a")]
    after = urns_of(sup)
    assert after["a"] != before["a"]
    assert after["b"] == before["b"]
    assert bystander.proxy().ping().get(timeout=WAIT) == "pong"
    assert child(sup, "b").proxy().ping().get(timeout=WAIT) == "pong from b"


# -- failures while starting ---------------------------------------------------------


def test_on_start_failure_fails_the_supervisor_start_and_stops_started_siblings(
    journal: Journal, exits: queue.Queue[ChildExited]
) -> None:
    journal.fail_next_starts("b", 1)
    specs = [worker("a", journal), worker("b", journal), worker("c", journal)]

    with pytest.raises(ChildStartError) as caught:
        start_supervised(lambda: Supervisor.start(specs, name="root"), exits.put, name="root")

    assert journal.events() == [("start", "a"), ("start", "b"), ("crash", "b"), ("stop", "a")]
    inner = caught.value.__cause__
    assert isinstance(inner, ChildStartError)
    assert "root/b" in str(inner)
    assert isinstance(inner.__cause__, StartFailedError)
    assert pykka.ActorRegistry.get_all() == []


def test_on_start_failure_deep_in_a_tree_fails_the_root_start(
    journal: Journal, exits: queue.Queue[ChildExited]
) -> None:
    journal.fail_next_starts("y", 1)
    inner = subtree("inner", [worker("x", journal), worker("y", journal)], journal)
    specs = [worker("a", journal), inner, worker("c", journal)]

    with pytest.raises(ChildStartError):
        start_supervised(lambda: Supervisor.start(specs, name="root"), exits.put)

    assert journal.events() == [
        ("start", "a"),
        ("start", "x"),
        ("start", "y"),
        ("crash", "y"),
        ("stop", "x"),
        ("crash", "inner"),
        ("stop", "a"),
    ]
    assert pykka.ActorRegistry.get_all() == []


def test_on_start_taking_too_long_is_a_failed_start(exits: queue.Queue[ChildExited]) -> None:
    gate = threading.Event()

    class SlowStarter(SupervisedActor):
        def on_start(self) -> None:
            gate.wait(WAIT)

    started: list[ActorRef] = []

    def start() -> ActorRef:
        started.append(SlowStarter.start())
        return started[-1]

    with pytest.raises(ChildStartError, match="did not finish within"):
        start_supervised(start, exits.put, start_timeout=0.05)
    gate.set()
    wait_until(lambda: not started[0].is_alive(), timeout=WAIT, message="slow child not stopped")


def test_start_function_must_start_a_supervised_actor(exits: queue.Queue[ChildExited]) -> None:
    start_plain = PlainStarts()

    with pytest.raises(ChildStartError, match="must start a SupervisedActor"):
        start_supervised(start_plain, exits.put)
    assert len(start_plain.refs) == 1
    start_plain.wait_all_stopped()

    with pytest.raises(ChildStartError, match="must start a SupervisedActor"):
        start_supervised(lambda: None, exits.put)  # type: ignore[arg-type, return-value]

    def start_raising() -> ActorRef:
        raise BoomError("no start")

    with pytest.raises(ChildStartError) as caught:
        start_supervised(start_raising, exits.put)
    assert isinstance(caught.value.__cause__, BoomError)


def test_start_function_returning_a_proxy_leaks_no_actor(
    journal: Journal, exits: queue.Queue[ChildExited]
) -> None:
    started: list[ActorRef] = []

    def start_proxy() -> Any:
        started.append(Worker.start("p", journal))
        return started[-1].proxy()  # a proxy, not the ref the contract asks for

    try:
        with pytest.raises(ChildStartError):
            start_supervised(start_proxy, exits.put)
        wait_until(
            lambda: not started[0].is_alive(),
            timeout=0.5,
            message="the actor started by a rejected start function is still running",
        )
    finally:
        for ref in started:
            ref.stop(block=True, timeout=WAIT)


# -- restart intensity -------------------------------------------------------------


def test_too_many_restarts_stop_the_children_and_crash_the_supervisor(
    supervise: Callable[..., ActorRef], journal: Journal, exits: queue.Queue[ChildExited]
) -> None:
    clock = FakeClock()
    specs = [worker("a", journal), worker("b", journal), worker("c", journal)]
    sup = supervise(specs, max_restarts=2, max_seconds=10.0, clock=clock)
    journal.clear()

    for crash in range(1, 3):
        child(sup, "b").tell(Crash(BoomError(f"crash {crash}")))
        assert settle(journal, sup, 2 * crash)[-2:] == [("crash", "b"), ("start", "b")]
    assert restarts_of(sup) == 2
    journal.clear()

    child(sup, "b").tell(Crash(BoomError("one too many")))

    exit_ = next_exit(exits)
    assert (exit_.urn, exit_.reason) == (sup.actor_urn, ExitReason.CRASH)
    assert isinstance(exit_.error, RestartIntensityError)
    assert journal.events() == [("crash", "b"), ("stop", "c"), ("stop", "a"), ("crash", "root")]
    assert not sup.is_alive()
    assert pykka.ActorRegistry.get_all() == []


def test_restarts_spread_over_more_than_max_seconds_do_not_escalate(
    supervise: Callable[..., ActorRef], journal: Journal, exits: queue.Queue[ChildExited]
) -> None:
    clock = FakeClock()
    sup = supervise(
        [worker("a", journal), worker("b", journal)], max_restarts=2, max_seconds=10.0, clock=clock
    )
    journal.clear()

    # Six crashes, 6 s apart: never more than two restarts within any 10 s.
    for crash in range(1, 7):
        child(sup, "b").tell(Crash(BoomError(f"crash {crash}")))
        assert settle(journal, sup, 2 * crash)[-2:] == [("crash", "b"), ("start", "b")]
        clock.advance(6.0)

    assert restarts_of(sup) == 6
    assert sup.is_alive()
    assert exits.empty()


@pytest.mark.parametrize(("gap", "escalates"), [(10.0, True), (10.5, False)])
def test_intensity_window_includes_restarts_exactly_max_seconds_old(
    supervise: Callable[..., ActorRef],
    journal: Journal,
    exits: queue.Queue[ChildExited],
    gap: float,
    escalates: bool,
) -> None:
    """As OTP: a restart `max_seconds` ago still counts; one a moment older does not."""
    clock = FakeClock()
    sup = supervise([worker("a", journal)], max_restarts=2, max_seconds=10.0, clock=clock)
    journal.clear()
    for crash in range(1, 3):
        child(sup, "a").tell(Crash(BoomError(f"crash {crash}")))
        settle(journal, sup, 2 * crash)
    clock.advance(gap)
    journal.clear()

    child(sup, "a").tell(Crash(BoomError("third")))

    if escalates:
        assert isinstance(next_exit(exits).error, RestartIntensityError)
        assert journal.events() == [("crash", "a"), ("crash", "root")]
    else:
        assert settle(journal, sup, 2) == [("crash", "a"), ("start", "a")]
        assert exits.empty()


def test_escalation_reaches_the_parent_supervisor_which_restarts_the_subtree(
    supervise: Callable[..., ActorRef], journal: Journal
) -> None:
    inner = subtree("inner", [worker("a", journal), worker("b", journal)], journal, max_restarts=0)
    root = supervise([inner, worker("y", journal)])
    assert journal.events() == [
        ("start", "a"),
        ("start", "b"),
        ("start", "inner"),
        ("start", "y"),
        ("start", "root"),
    ]
    root_children = urns_of(root)
    inner_ref = child(root, "inner")
    journal.clear()

    child(inner_ref, "a").tell(Crash(BoomError("escalate")))

    assert settle(journal, root, 6) == [
        ("crash", "a"),
        ("stop", "b"),
        ("crash", "inner"),  # with RestartIntensityError, which the root sees
        ("start", "a"),
        ("start", "b"),
        ("start", "inner"),
    ]
    after = urns_of(root)
    assert after["inner"] != root_children["inner"]
    assert after["y"] == root_children["y"]
    assert not inner_ref.is_alive()
    assert restarts_of(root) == 1


# -- shutdown ----------------------------------------------------------------------


def test_shutdown_stops_children_in_reverse_order_through_nested_supervisors(
    supervise: Callable[..., ActorRef], journal: Journal, exits: queue.Queue[ChildExited]
) -> None:
    inner = subtree("inner", [worker("x", journal), worker("y", journal)], journal)
    root = supervise([worker("a", journal), inner, worker("c", journal)])
    assert journal.events() == [
        ("start", "a"),
        ("start", "x"),
        ("start", "y"),
        ("start", "inner"),
        ("start", "c"),
        ("start", "root"),
    ]
    journal.clear()

    assert root.stop(block=True, timeout=WAIT) is True

    assert journal.events() == [
        ("stop", "c"),
        ("stop", "y"),
        ("stop", "x"),
        ("stop", "inner"),
        ("stop", "a"),
        ("stop", "root"),
    ]
    exit_ = next_exit(exits)
    assert (exit_.urn, exit_.reason, exit_.error) == (root.actor_urn, ExitReason.NORMAL, None)
    assert pykka.ActorRegistry.get_all() == []


def test_restarted_and_added_children_stop_by_their_place_in_the_child_list(
    supervise: Callable[..., ActorRef], journal: Journal
) -> None:
    sup = supervise([worker("a", journal), worker("b", journal)])
    child(sup, "a").tell(Crash(BoomError("restart a last")))
    settle(journal, sup, 5)
    sup.proxy().start_child(worker("d", journal)).get(timeout=WAIT)
    journal.clear()

    sup.stop(block=True, timeout=WAIT)

    assert journal.events() == [("stop", "d"), ("stop", "b"), ("stop", "a"), ("stop", "root")]


# -- restart types -------------------------------------------------------------------


def crash_it(ref: ActorRef) -> None:
    ref.tell(Crash(BoomError("crash")))


def stop_itself(ref: ActorRef) -> None:
    ref.tell(StopYourself())


def stop_from_outside(ref: ActorRef) -> None:
    ref.stop(block=True, timeout=WAIT)


@pytest.mark.parametrize(
    ("restart", "end", "last_event", "restarted"),
    [
        (Restart.PERMANENT, crash_it, "crash", True),
        (Restart.PERMANENT, stop_itself, "stop", True),
        (Restart.PERMANENT, stop_from_outside, "stop", True),
        (Restart.TRANSIENT, crash_it, "crash", True),
        (Restart.TRANSIENT, stop_itself, "stop", False),
        (Restart.TRANSIENT, stop_from_outside, "stop", False),
        (Restart.TEMPORARY, crash_it, "crash", False),
        (Restart.TEMPORARY, stop_itself, "stop", False),
    ],
    ids=lambda value: getattr(value, "__name__", None) or str(value),
)
def test_restart_type_decides_whether_an_exit_restarts_the_child(
    supervise: Callable[..., ActorRef],
    journal: Journal,
    *,
    restart: Restart,
    end: Callable[[ActorRef], None],
    last_event: str,
    restarted: bool,
) -> None:
    sup = supervise([worker("a", journal), worker("t", journal, restart), worker("c", journal)])
    before = urns_of(sup)
    journal.clear()

    end(child(sup, "t"))
    journal.wait_exit(before["t"])  # its exit notice is in the supervisor's inbox now

    if restarted:
        assert settle(journal, sup, 2) == [(last_event, "t"), ("start", "t")]
        after = urns_of(sup)
        assert after["t"] != before["t"]
        assert restarts_of(sup) == 1
    else:
        assert settle(journal, sup, 1) == [(last_event, "t")]
        assert sup.proxy().child_ref("t").get(timeout=WAIT) is None
        after = {i.id: i.ref.actor_urn for i in children_of(sup) if i.ref is not None}
        assert "t" not in after
        assert restarts_of(sup) == 0
    assert (after["a"], after["c"]) == (before["a"], before["c"])


def test_temporary_child_leaves_which_children_after_it_exits(
    supervise: Callable[..., ActorRef], journal: Journal
) -> None:
    sup = supervise([worker("a", journal), worker("tmp", journal, Restart.TEMPORARY)])
    tmp_urn = urns_of(sup)["tmp"]

    crash_it(child(sup, "tmp"))
    journal.wait_exit(tmp_urn)

    assert [info.id for info in children_of(sup)] == ["a"]


def test_one_for_all_does_not_restart_temporary_siblings(
    supervise: Callable[..., ActorRef], journal: Journal
) -> None:
    specs = [
        worker("a", journal),
        worker("tmp", journal, Restart.TEMPORARY),
        worker("tr", journal, Restart.TRANSIENT),
        worker("c", journal),
    ]
    sup = supervise(specs, strategy=Strategy.ONE_FOR_ALL)
    journal.clear()

    crash_it(child(sup, "a"))

    expected = [("crash", "a"), ("stop", "c"), ("stop", "tr"), ("stop", "tmp")]
    expected += [("start", "a"), ("start", "tr"), ("start", "c")]
    assert settle(journal, sup, len(expected)) == expected
    assert [(i.id, i.restart) for i in children_of(sup)] == [
        ("a", Restart.PERMANENT),
        ("tr", Restart.TRANSIENT),
        ("c", Restart.PERMANENT),
    ]


# -- dynamic children --------------------------------------------------------------


def test_start_child_adds_a_supervised_child_after_the_others(
    supervise: Callable[..., ActorRef], journal: Journal
) -> None:
    sup = supervise([worker("a", journal)])
    journal.clear()

    ref = sup.proxy().start_child(worker("d", journal, Restart.TRANSIENT)).get(timeout=WAIT)

    assert journal.events() == [("start", "d")]  # on_start has run when start_child returns
    assert ref.proxy().ping().get(timeout=WAIT) == "pong from d"
    assert [(i.id, i.restart) for i in children_of(sup)] == [
        ("a", Restart.PERMANENT),
        ("d", Restart.TRANSIENT),
    ]
    assert child(sup, "d") is ref
    journal.clear()

    crash_it(ref)  # a dynamic child is supervised like the others

    assert settle(journal, sup, 2) == [("crash", "d"), ("start", "d")]
    assert child(sup, "d").actor_urn != ref.actor_urn


def test_terminate_child_stops_it_for_good(
    supervise: Callable[..., ActorRef], journal: Journal
) -> None:
    sup = supervise([worker("a", journal), worker("b", journal), worker("c", journal)])
    b_urn = urns_of(sup)["b"]
    journal.clear()

    assert sup.proxy().terminate_child("b").get(timeout=WAIT) is True

    journal.wait_exit(b_urn)  # its exit notice reached the supervisor before what follows
    assert [info.id for info in children_of(sup)] == ["a", "c"]
    assert journal.events() == [("stop", "b")]  # permanent, yet not restarted
    assert restarts_of(sup) == 0
    assert sup.proxy().terminate_child("b").get(timeout=WAIT) is False
    assert sup.proxy().terminate_child("nobody").get(timeout=WAIT) is False
    assert sup.proxy().child_ref("b").get(timeout=WAIT) is None


def test_duplicate_child_ids_are_refused(
    supervise: Callable[..., ActorRef], journal: Journal
) -> None:
    with pytest.raises(ValueError, match="duplicate child ids: a"):
        Supervisor.start([worker("a", journal), worker("b", journal), worker("a", journal)])
    assert journal.events() == []  # refused before anything started

    sup = supervise([worker("a", journal)])
    with pytest.raises(ValueError, match="exists already"):
        sup.proxy().start_child(worker("a", journal)).get(timeout=WAIT)


@pytest.mark.parametrize("rejection", ["on_start fails", "plain actor"])
def test_start_child_reports_a_failed_start_to_the_caller(
    supervise: Callable[..., ActorRef], journal: Journal, rejection: str
) -> None:
    sup = supervise([worker("a", journal)])
    journal.clear()
    journal.fail_next_starts("x", 1)
    start_plain = PlainStarts()
    spec = {"on_start fails": worker("x", journal), "plain actor": ChildSpec("p", start_plain)}

    with pytest.raises(ChildStartError) as caught:
        sup.proxy().start_child(spec[rejection]).get(timeout=WAIT)

    if rejection == "on_start fails":
        assert isinstance(caught.value.__cause__, StartFailedError)
        assert journal.events()[:2] == [("start", "x"), ("crash", "x")]
    else:
        assert "must start a SupervisedActor" in str(caught.value)
        start_plain.wait_all_stopped()


@pytest.mark.parametrize("rejection", ["duplicate id", "on_start fails", "plain actor"])
def test_a_refused_start_child_leaves_the_supervisor_and_its_children_running(
    supervise: Callable[..., ActorRef], journal: Journal, rejection: str
) -> None:
    """A bad start_child request is the caller's error; OTP answers {error, _} and goes on."""
    sup = supervise([worker("a", journal), worker("b", journal)])
    before = urns_of(sup)
    journal.clear()
    journal.fail_next_starts("x", 1)
    start_plain = PlainStarts()
    spec = {
        "duplicate id": worker("a", journal),
        "on_start fails": worker("x", journal),
        "plain actor": ChildSpec("p", start_plain),
    }

    with pytest.raises((ValueError, ChildStartError)):
        sup.proxy().start_child(spec[rejection]).get(timeout=WAIT)
    start_plain.wait_all_stopped()

    try:
        after = urns_of(sup)
    except pykka.ActorDeadError:
        pytest.fail("the supervisor crashed on a refused start_child")
    assert after == before
    assert ("stop", "a") not in journal.events()


def test_restart_count_counts_every_restart_and_nothing_else(
    supervise: Callable[..., ActorRef], journal: Journal
) -> None:
    sup = supervise(
        [worker("a", journal), worker("b", journal), worker("c", journal, Restart.TEMPORARY)],
        strategy=Strategy.ONE_FOR_ALL,
        max_restarts=10,
    )
    assert restarts_of(sup) == 0
    journal.clear()

    crash_it(child(sup, "a"))  # one group restart (c, temporary, is not restarted): one
    settle(journal, sup, 5)
    assert restarts_of(sup) == 1

    stop_itself(child(sup, "b"))  # a permanent child's normal exit is restarted too
    settle(journal, sup, 5 + 4)
    assert restarts_of(sup) == 2

    assert sup.proxy().terminate_child("b").get(timeout=WAIT) is True
    assert restarts_of(sup) == 2
