"""Dispatched actors on ThreadDispatcher and NodeDispatcher: each actor handles its
messages in order and one at a time, actors take turns on a thread, crashes and stops
are reported as for any supervised actor, and the dispatchers' threads end on stop."""

from __future__ import annotations

import collections
import functools
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pykka
import pytest

from kvactors.errors import ActorCrashedError
from kvactors.net.transport import SocketOptions, Transport, TransportHandlers
from kvactors.runtime.dispatch import (
    NOT_RUN,
    DispatchedActor,
    NodeDispatcher,
    ThreadDispatcher,
    dispatcher_of,
    run_now,
    tell,
)
from kvactors.runtime.supervision import ChildExited, ExitReason, start_supervised
from kvactors.testing import wait_until

Log = list[tuple[str, Any, str]]
"""(actor, message, thread) per message handled."""


@dataclass(frozen=True)
class Gate:
    """Holds the thread that handles it until released."""

    entered: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    def hold(self) -> None:
        self.entered.set()
        assert self.release.wait(5.0), "the gate was never released"


@dataclass(frozen=True)
class Call:
    """Runs `call` inside the actor."""

    call: Callable[[], object]


@dataclass
class Unanswered:
    """A message that wants to know when it was not handled (Undeliverable)."""

    outcomes: list[tuple[str, bool]]

    def undelivered(self, error: BaseException, handled: bool) -> None:
        self.outcomes.append((type(error).__name__, handled))


class Recorder(DispatchedActor):
    def __init__(self, dispatcher: Any, log: Log, name: str = "recorder") -> None:
        super().__init__(dispatcher)
        self._log = log
        self._name = name

    def _note(self, message: Any) -> None:
        self._log.append((self._name, message, threading.current_thread().name))

    def on_start(self) -> None:
        self._note("started")

    def on_stop(self) -> None:
        self._note("stopped")

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Gate):
            message.hold()
        elif isinstance(message, Call):
            return message.call()
        elif message == "crash":
            raise RuntimeError(f"{self._name} crashed on purpose")
        self._note(message)
        return message


def handled(log: Log, actor: str) -> list[Any]:
    return [message for name, message, _ in log if name == actor]


def thread_names(dispatcher: ThreadDispatcher) -> list[str]:
    return sorted(thread.name for thread in dispatcher.threads if thread.is_alive())


def threads_of(log: Log, actor: str) -> set[str]:
    return {thread for name, message, thread in log if name == actor}


@pytest.fixture
def dispatchers() -> Iterator[Callable[..., ThreadDispatcher]]:
    """A factory of ThreadDispatchers, each stopped (and checked stopped) after the test."""
    made: list[ThreadDispatcher] = []

    def make(**kwargs: Any) -> ThreadDispatcher:
        made.append(ThreadDispatcher(**kwargs))
        return made[-1]

    yield make
    pykka.ActorRegistry.stop_all(block=True, timeout=10)
    for dispatcher in made:
        assert dispatcher.stop(5.0)
        assert dispatcher.threads == ()


# -- ThreadDispatcher ----------------------------------------------------------------------


@pytest.mark.parametrize(("threads", "throughput"), [(0, 1), (1, 0)])
def test_needs_a_thread_and_a_positive_throughput(threads: int, throughput: int) -> None:
    with pytest.raises(ValueError, match="at least one thread"):
        ThreadDispatcher(threads=threads, throughput=throughput)


def test_threads_start_with_the_first_actor(dispatchers: Callable[..., ThreadDispatcher]) -> None:
    dispatcher = dispatchers(threads=2, name="pool")
    assert dispatcher.threads == ()
    log: Log = []
    ref = Recorder.start(dispatcher, log)
    assert ref.ask("hello") == "hello"
    assert thread_names(dispatcher) == ["pool-0", "pool-1"]
    assert threads_of(log, "recorder") <= {"pool-0", "pool-1"}
    ref.stop()


def test_messages_are_handled_in_order(dispatchers: Callable[..., ThreadDispatcher]) -> None:
    dispatcher = dispatchers(threads=3, throughput=7)
    log: Log = []
    ref = Recorder.start(dispatcher, log)
    for n in range(1000):
        ref.tell(n)
    assert ref.ask("last") == "last"
    assert handled(log, "recorder") == ["started", *range(1000), "last"]
    ref.stop()
    assert handled(log, "recorder")[-1] == "stopped"


def test_an_actor_handles_one_message_at_a_time(
    dispatchers: Callable[..., ThreadDispatcher],
) -> None:
    """Four threads, senders on four more, a small throughput: the actor hops between
    threads often, yet never runs on two at once, and each sender's order holds."""
    dispatcher = dispatchers(threads=4, throughput=3)
    inside = [0]
    most = [0]
    seen: list[tuple[int, int]] = []

    def visit(sender: int, n: int) -> None:
        inside[0] += 1  # only ever touched inside the actor: no lock, on purpose
        most[0] = max(most[0], inside[0])
        threading.Event().wait(0.00001)  # let other threads run, as a real handler would
        seen.append((sender, n))
        inside[0] -= 1

    log: Log = []
    ref = Recorder.start(dispatcher, log)

    def send(sender: int) -> None:
        for n in range(300):
            ref.tell(Call(functools.partial(visit, sender, n)))

    senders = [threading.Thread(target=send, args=(s,)) for s in range(4)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()
    assert ref.ask("done") == "done"
    assert len(seen) == 1200
    assert most[0] == 1
    for sender_id in range(4):
        assert [n for s, n in seen if s == sender_id] == list(range(300))
    ref.stop()


def test_actors_take_turns_by_throughput(dispatchers: Callable[..., ThreadDispatcher]) -> None:
    dispatcher = dispatchers(threads=1, throughput=2)
    log: Log = []
    gate_keeper = Recorder.start(dispatcher, log, "gate")
    a = Recorder.start(dispatcher, log, "a")
    b = Recorder.start(dispatcher, log, "b")
    assert a.ask("ready") == b.ask("ready") == "ready"
    gate = Gate()
    gate_keeper.tell(gate)
    assert gate.entered.wait(5.0)
    for n in range(6):  # while the only thread is held, a's mail is queued before b's
        a.tell(n)
    for n in range(6):
        b.tell(n)
    log.clear()
    gate.release.set()
    wait_until(lambda: len(log) == 13, message=lambda: f"handled: {log}")
    turns = [(name, message) for name, message, _ in log if name in "ab"]
    assert turns == [
        ("a", 0), ("a", 1), ("b", 0), ("b", 1),
        ("a", 2), ("a", 3), ("b", 2), ("b", 3),
        ("a", 4), ("a", 5), ("b", 4), ("b", 5),
    ]  # fmt: skip
    for ref in (gate_keeper, a, b):
        ref.stop()


def test_a_crash_is_reported_to_the_supervisor(
    dispatchers: Callable[..., ThreadDispatcher],
) -> None:
    dispatcher = dispatchers(threads=1)
    exits: list[ChildExited] = []
    log: Log = []
    ref = start_supervised(lambda: Recorder.start(dispatcher, log, "doomed"), exits.append)
    bystander = Recorder.start(dispatcher, log, "bystander")
    with pytest.raises(RuntimeError, match="crashed on purpose"):
        ref.ask("crash")  # the asker gets the error...
    wait_until(lambda: exits, message="no exit reported")
    [exit_] = exits  # ...and the supervisor the crash
    assert exit_.urn == ref.actor_urn
    assert exit_.reason is ExitReason.CRASH
    assert isinstance(exit_.error, RuntimeError)
    assert not ref.is_alive()
    with pytest.raises(pykka.ActorDeadError):
        ref.tell("after")
    assert "after" not in handled(log, "doomed")
    assert bystander.ask("still here") == "still here"  # the thread survived the crash
    bystander.stop()


def test_a_crash_in_on_start_is_a_failed_start(
    dispatchers: Callable[..., ThreadDispatcher],
) -> None:
    class BadStart(Recorder):
        def on_start(self) -> None:
            raise RuntimeError("cannot start")

    dispatcher = dispatchers(threads=1)
    with pytest.raises(Exception, match="cannot start"):
        start_supervised(lambda: BadStart.start(dispatcher, []), lambda _: None)


def test_stop_is_a_normal_exit_and_tells_what_was_left(
    dispatchers: Callable[..., ThreadDispatcher],
) -> None:
    dispatcher = dispatchers(threads=1, name="stopper")
    exits: list[ChildExited] = []
    log: Log = []
    gate_keeper = Recorder.start(dispatcher, log, "gate")
    ref = start_supervised(lambda: Recorder.start(dispatcher, log, "worker"), exits.append)
    gate = Gate()
    gate_keeper.tell(gate)
    assert gate.entered.wait(5.0)
    outcomes: list[tuple[str, bool]] = []
    ref.tell("before")
    stopped = ref.stop(block=False)
    ref.tell(Unanswered(outcomes))  # after the stop: never handled
    gate.release.set()
    stopped.get(timeout=5.0)
    assert handled(log, "worker") == ["started", "before", "stopped"]
    assert threads_of(log, "worker") == {"stopper-0"}
    assert outcomes == [("ActorDeadError", False)]
    wait_until(lambda: exits)
    assert exits[0].reason is ExitReason.NORMAL
    gate_keeper.stop()


def test_stop_runs_what_was_scheduled_then_joins(
    dispatchers: Callable[..., ThreadDispatcher],
) -> None:
    dispatcher = dispatchers(threads=2, name="joined")
    log: Log = []
    gate_keeper = Recorder.start(dispatcher, log, "gate")
    worker = Recorder.start(dispatcher, log, "worker")
    assert worker.ask("ready") == "ready"
    gate = Gate()
    gate_keeper.tell(gate)
    assert gate.entered.wait(5.0)
    threads = dispatcher.threads
    worker.tell("queued before the stop")
    result: list[bool] = []
    stopping = threading.Thread(target=lambda: result.append(dispatcher.stop(5.0)))
    stopping.start()
    gate.release.set()
    stopping.join(10.0)
    assert result == [True]
    assert "queued before the stop" in handled(log, "worker")
    assert thread_names(dispatcher) == []
    assert not any(thread.is_alive() for thread in threads)
    # Mail after a stop starts the threads again.
    assert worker.ask("after") == "after"
    assert thread_names(dispatcher) == ["joined-0", "joined-1"]
    for ref in (gate_keeper, worker):
        ref.stop()


def test_stop_says_when_a_thread_did_not_end(
    dispatchers: Callable[..., ThreadDispatcher],
) -> None:
    dispatcher = dispatchers(threads=1)
    gate_keeper = Recorder.start(dispatcher, [], "gate")
    gate = Gate()
    gate_keeper.tell(gate)
    assert gate.entered.wait(5.0)
    [thread] = dispatcher.threads
    assert dispatcher.stop(0.05) is False
    gate.release.set()
    thread.join(5.0)
    assert not thread.is_alive()
    gate_keeper.stop()


def test_an_actor_may_stop_its_own_dispatcher(
    dispatchers: Callable[..., ThreadDispatcher],
) -> None:
    dispatcher = dispatchers(threads=1)
    ref = Recorder.start(dispatcher, [])
    assert ref.ask("ready") == "ready"
    [thread] = dispatcher.threads
    assert ref.ask(Call(dispatcher.stop)) is True  # no deadlock joining itself
    thread.join(5.0)
    assert not thread.is_alive()
    ref.stop()


def test_tell_queues_for_a_thread_dispatcher(
    dispatchers: Callable[..., ThreadDispatcher],
) -> None:
    dispatcher = dispatchers(threads=1, name="queued")
    log: Log = []
    ref = Recorder.start(dispatcher, log)
    tell(ref, "m")
    assert ref.ask("sync") == "sync"
    assert log[1] == ("recorder", "m", "queued-0")
    ref.stop()
    with pytest.raises(pykka.ActorDeadError):
        tell(ref, "too late")


# -- NodeDispatcher ----------------------------------------------------------------------


class ManualLoop:
    """An event loop run by hand, on the thread that made it."""

    def __init__(self) -> None:
        self.owner = threading.get_ident()
        self.calls: collections.deque[Callable[[], None]] = collections.deque()
        self.closed = False

    def call_soon(self, call: Callable[[], None]) -> bool:
        if self.closed:
            return False
        self.calls.append(call)
        return True

    def in_loop_thread(self) -> bool:
        return threading.get_ident() == self.owner

    def run(self) -> int:
        ran = 0
        while self.calls:
            self.calls.popleft()()
            ran += 1
        return ran


@pytest.fixture
def node_dispatcher() -> Iterator[NodeDispatcher]:
    dispatcher = NodeDispatcher(name="node-dispatcher")
    yield dispatcher
    pykka.ActorRegistry.stop_all(block=True, timeout=10)
    assert dispatcher.stop(5.0)
    assert "node-dispatcher-0" not in {t.name for t in threading.enumerate()}


def from_other_thread(action: Callable[[], object]) -> None:
    thread = threading.Thread(target=action)
    thread.start()
    thread.join(5.0)


def test_unattached_actors_run_on_the_node_s_own_thread(node_dispatcher: NodeDispatcher) -> None:
    log: Log = []
    ref = Recorder.start(node_dispatcher, log)
    assert ref.ask("hi") == "hi"
    assert threads_of(log, "recorder") == {"node-dispatcher-0"}
    assert not node_dispatcher.runs_here()
    ref.stop()


def test_attached_mail_from_the_loop_is_handled_there_and_then(
    node_dispatcher: NodeDispatcher,
) -> None:
    loop = ManualLoop()
    node_dispatcher.attach(loop)
    assert node_dispatcher.runs_here()
    log: Log = []
    ref = Recorder.start(node_dispatcher, log)
    assert handled(log, "recorder") == ["started"]  # on_start ran inside start()
    ref.tell("told")
    tell(ref, "delivered")
    assert handled(log, "recorder") == ["started", "told", "delivered"]
    assert threads_of(log, "recorder") == {threading.current_thread().name}
    assert loop.run() == 0  # nothing was queued on the loop
    ref.stop()
    assert handled(log, "recorder")[-1] == "stopped"


def test_attached_mail_from_other_threads_waits_for_the_loop(
    node_dispatcher: NodeDispatcher,
) -> None:
    loop = ManualLoop()
    node_dispatcher.attach(loop)
    log: Log = []
    ref = Recorder.start(node_dispatcher, log)
    for n in range(3):
        from_other_thread(functools.partial(ref.tell, n))
    from_other_thread(lambda: tell(ref, "via tell"))
    assert handled(log, "recorder") == ["started"]
    assert loop.run() == 1  # one slice for all four messages
    assert handled(log, "recorder") == ["started", 0, 1, 2, "via tell"]
    assert threads_of(log, "recorder") == {threading.current_thread().name}
    ref.stop()


def test_a_closed_loop_hands_the_actor_to_the_threads(node_dispatcher: NodeDispatcher) -> None:
    loop = ManualLoop()
    node_dispatcher.attach(loop)
    log: Log = []
    ref = Recorder.start(node_dispatcher, log)
    loop.closed = True
    from_other_thread(lambda: ref.tell("after close"))
    wait_until(lambda: "after close" in handled(log, "recorder"))
    assert log[-1][2] == "node-dispatcher-0"
    from_other_thread(ref.stop)


def test_detach(node_dispatcher: NodeDispatcher) -> None:
    loop = ManualLoop()
    node_dispatcher.attach(loop)
    node_dispatcher.detach(ManualLoop())  # another loop's detach changes nothing
    assert node_dispatcher.runs_here()
    node_dispatcher.detach(loop)
    assert not node_dispatcher.runs_here()
    log: Log = []
    ref = Recorder.start(node_dispatcher, log)
    assert ref.ask("hi") == "hi"
    assert threads_of(log, "recorder") == {"node-dispatcher-0"}
    assert loop.calls == collections.deque()
    ref.stop()


def test_a_given_fallback_is_its_giver_s_to_stop(
    dispatchers: Callable[..., ThreadDispatcher],
) -> None:
    fallback = dispatchers(name="given")
    dispatcher = NodeDispatcher(fallback)
    ref = Recorder.start(dispatcher, [])
    assert ref.ask("hi") == "hi"
    ref.stop()
    assert dispatcher.stop()
    assert thread_names(fallback) == ["given-0"]


# -- run_now: a handler run by an idle actor on the caller's thread ----------------------


def test_run_now_has_an_idle_actor_run_the_handler_on_this_thread(
    node_dispatcher: NodeDispatcher,
) -> None:
    loop = ManualLoop()
    node_dispatcher.attach(loop)
    log: Log = []
    ref = Recorder.start(node_dispatcher, log)
    assert dispatcher_of(ref) is node_dispatcher
    assert run_now(ref, node_dispatcher, Recorder.on_receive, "direct") == "direct"
    assert handled(log, "recorder") == ["started", "direct"]
    assert threads_of(log, "recorder") == {threading.current_thread().name}

    def tells_itself(actor: Recorder) -> str:
        actor.actor_ref.tell("told meanwhile")
        assert handled(log, "recorder")[-1] == "direct"  # the actor is busy: mail waits
        return "returned"

    # Mail the handler caused is handled after it, before run_now returns.
    assert run_now(ref, node_dispatcher, tells_itself) == "returned"
    assert handled(log, "recorder")[-1] == "told meanwhile"
    assert loop.run() == 0  # nothing was queued on the loop
    assert ref.ask("asked") == "asked"  # and the actor is idle again
    ref.stop()


def test_run_now_never_overtakes_mail(node_dispatcher: NodeDispatcher) -> None:
    loop = ManualLoop()
    node_dispatcher.attach(loop)
    log: Log = []
    ref = Recorder.start(node_dispatcher, log)
    from_other_thread(lambda: ref.tell("sent first"))  # its slice waits for the loop
    assert run_now(ref, node_dispatcher, Recorder.on_receive, "direct") is NOT_RUN
    assert handled(log, "recorder") == ["started"]
    assert loop.run() == 1
    assert handled(log, "recorder") == ["started", "sent first"]
    assert run_now(ref, node_dispatcher, Recorder.on_receive, "direct") == "direct"
    ref.stop()


def test_run_now_only_where_the_actor_s_dispatcher_runs(
    node_dispatcher: NodeDispatcher,
) -> None:
    log: Log = []
    ref = Recorder.start(node_dispatcher, log)  # not attached: its thread runs it
    ref.ask("started for sure")
    other = NodeDispatcher(name="other")
    for here in (None, other):
        assert run_now(ref, here, Recorder.on_receive, "direct") is NOT_RUN
    assert "direct" not in handled(log, "recorder")
    ref.stop()
    assert run_now(ref, node_dispatcher, Recorder.on_receive, "after the stop") is NOT_RUN
    assert other.stop()

    plain = pykka.ThreadingActor.start()  # not a dispatched actor
    assert dispatcher_of(plain) is None
    assert run_now(plain, node_dispatcher, lambda actor: actor) is NOT_RUN
    plain.stop()


def test_a_crash_in_run_now_is_the_actor_s_crash(node_dispatcher: NodeDispatcher) -> None:
    loop = ManualLoop()
    node_dispatcher.attach(loop)
    exits: list[ChildExited] = []
    log: Log = []
    ref = start_supervised(lambda: Recorder.start(node_dispatcher, log, "doomed"), exits.append)
    outcomes: list[tuple[str, bool]] = []

    def crashes(actor: Recorder) -> None:
        actor.actor_ref.tell(Unanswered(outcomes))  # mail that came meanwhile
        raise RuntimeError("crashed on purpose")

    with pytest.raises(RuntimeError, match="crashed on purpose"):
        run_now(ref, node_dispatcher, crashes)
    [exit_] = exits  # the supervisor heard of it before run_now returned
    assert (exit_.urn, exit_.reason) == (ref.actor_urn, ExitReason.CRASH)
    assert isinstance(exit_.error, RuntimeError)
    assert outcomes == [("ActorDeadError", False)]  # never handled: safe to send again
    assert not ref.is_alive()
    assert run_now(ref, node_dispatcher, Recorder.on_receive, "after") is NOT_RUN
    assert "stopped" not in handled(log, "doomed")  # a crash, not a stop


def test_run_now_hands_a_base_exception_back_as_an_actor_crash(
    node_dispatcher: NodeDispatcher,
) -> None:
    loop = ManualLoop()
    node_dispatcher.attach(loop)
    exits: list[ChildExited] = []
    ref = start_supervised(lambda: Recorder.start(node_dispatcher, []), exits.append)

    def exits_the_process(_actor: Recorder) -> None:
        raise SystemExit(3)

    with pytest.raises(ActorCrashedError) as raised:
        run_now(ref, node_dispatcher, exits_the_process)
    assert isinstance(raised.value.__cause__, SystemExit)
    assert [e.reason for e in exits] == [ExitReason.CRASH]
    assert not ref.is_alive()


def _idle() -> TransportHandlers:
    """Transport handlers with nothing to do."""
    return TransportHandlers(
        client_frames=lambda frames: None,
        peer_request=lambda frames: None,
        peer_reply=lambda endpoint, frames: None,
        flush=lambda: None,
        tick=lambda now: None,
        close=lambda: None,
    )


def test_attached_to_a_transport_actors_run_on_its_thread(
    node_dispatcher: NodeDispatcher,
) -> None:
    transport = Transport(
        "tcp://127.0.0.1:0", SocketOptions(max_message_bytes=1 << 16), name="loop-thread"
    )
    transport.start(_idle())
    try:
        node_dispatcher.attach(transport)
        log: Log = []
        ref = Recorder.start(node_dispatcher, log)
        assert ref.ask("served") == "served"
        assert threads_of(log, "recorder") == {"loop-thread"}
    finally:
        transport.stop()  # still attached: the closed loop refuses the next slices
    assert ref.ask("after the transport") == "after the transport"
    assert log[-1][2] == "node-dispatcher-0"
    node_dispatcher.detach(transport)
    ref.stop()
