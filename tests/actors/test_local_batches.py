"""LocalBatches with real StoreServers under a StoreSupervisor, on a node dispatcher
attached to a loop the test runs by hand, as the transport runs its own: an idle
StoreServer applies its batch during the flush, with no message; a busy one gets the
batch behind its mail; a crash fails the batch's ops and has the StoreServer restarted;
ops for a restarting one wait for it; under group commit results wait for the sync."""

from __future__ import annotations

import collections
import logging
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import pykka
import pytest

from kvactors.core.ops import Get, Put, StoreOp
from kvactors.errors import InternalError, KVActorsError
from kvactors.node.group_commit import GroupCommit
from kvactors.node.local_batches import LocalBatches
from kvactors.runtime.dispatch import NodeDispatcher
from kvactors.runtime.supervision import start_supervised
from kvactors.storage.memory import MemoryBackend
from kvactors.storage.replica import Replica
from kvactors.storage.store_server import StoreBatch
from kvactors.storage.store_supervisor import PartitionDirectory, StoreSupervisor
from kvactors.testing import wait_until

PARTITIONS = 4
P = 2  # the partition the tests write to


class ManualLoop:
    """An event loop run by hand, on the thread that made it (the transport's stand-in)."""

    def __init__(self) -> None:
        self.owner = threading.get_ident()
        self.calls: collections.deque[Callable[[], None]] = collections.deque()

    def call_soon(self, call: Callable[[], None]) -> bool:
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


@dataclass
class Target:
    """Hears each op's outcome, as a request's pending slot would."""

    done: list[tuple[Any, Any]] = field(default_factory=list)
    failed: list[tuple[Any, KVActorsError]] = field(default_factory=list)

    def replica_done(self, tag: Any, result: Any) -> None:
        self.done.append((tag, result))

    def replica_failed(self, tag: Any, error: KVActorsError) -> None:
        self.failed.append((tag, error))


@dataclass
class Node:
    loop: ManualLoop
    batches: LocalBatches
    directory: PartitionDirectory
    backend: MemoryBackend
    supervisor: pykka.ActorRef[StoreSupervisor]
    target: Target = field(default_factory=Target)

    def send(self, tag: Any, op: StoreOp, partition: int = P) -> None:
        self.batches.queued[partition].append((self.target, tag, op))

    def flush(self) -> None:
        self.batches.flush()

    def restarted(self, old: pykka.ActorRef[Any]) -> bool:
        """Whether the partition has a new StoreServer (running the loop meanwhile, where
        the new one's first slice waits)."""
        self.loop.run()
        current = self.directory.current(P)
        return current is not None and current is not old and current.is_alive()


@pytest.fixture
def node() -> Iterator[Node]:
    dispatcher = NodeDispatcher(name="batches-dispatcher")
    directory, backend = PartitionDirectory(PARTITIONS), MemoryBackend()
    supervisor = start_supervised(
        lambda: StoreSupervisor.start(backend, directory, range(PARTITIONS), dispatcher=dispatcher),
        lambda _: None,
    )
    # Attached once the StoreServers are up, as a node attaches its transport.
    loop = ManualLoop()
    dispatcher.attach(loop)
    batches = LocalBatches(directory, loop.call_soon, loop.in_loop_thread)
    node = Node(loop, batches, directory, backend, supervisor)
    node.send("warm-up", Put(b"warm-up", b"w"))
    node.flush()  # the first batch goes by message: it shows the dispatcher
    assert node.target.done == [("warm-up", None)]
    node.target.done.clear()
    yield node
    dispatcher.detach(loop)
    supervisor.stop()
    assert dispatcher.stop(5.0)


def calls_during(action: Callable[[], None]) -> set[str]:
    """The names of the functions called on this thread while `action` runs."""
    names: set[str] = set()

    def profile(frame: FrameType, event: str, _arg: Any) -> None:
        if event == "call":
            names.add(frame.f_code.co_name)

    sys.setprofile(profile)
    try:
        action()
    finally:
        sys.setprofile(None)
    return names


def test_an_idle_store_server_applies_its_batch_during_the_flush(node: Node) -> None:
    node.send("put", Put(b"k", b"v"))
    node.send("get", Get(b"k"))
    node.send("elsewhere", Get(b"k"), partition=P + 1)
    calls = calls_during(node.flush)
    assert node.target.done == [("put", None), ("get", b"v"), ("elsewhere", None)]
    assert "run_now" in calls and "apply_batch" in calls
    assert not {"tell", "deliver", "_handle_envelope", "batch_done"} & calls  # no message
    assert node.loop.run() == 0


def test_a_busy_store_server_gets_the_batch_behind_its_mail(node: Node) -> None:
    ref = node.directory.current(P)
    assert ref is not None
    first = [(node.target, "first", Put(b"k", b"first"))]
    # From another thread: queued, its slice waits for the loop.
    sender = threading.Thread(
        target=lambda: ref.tell(StoreBatch([first[0][2]], node.batches, (P, first)))
    )
    sender.start()
    sender.join(5.0)
    node.send("second", Put(b"k", b"second"))
    node.send("read", Get(b"k"))
    node.flush()
    assert node.target.done == []  # it did not overtake the mail
    node.loop.run()
    assert node.target.done == [("first", None), ("second", None), ("read", b"second")]


def test_a_failing_answer_fails_its_batch_not_the_flush(node: Node) -> None:
    class Refusing(Target):
        def replica_done(self, tag: Any, result: Any) -> None:
            raise RuntimeError(f"cannot take {tag}")

    ref = node.directory.current(P)
    refusing = Refusing()
    node.batches.queued[P].append((refusing, "refused", Put(b"k", b"v")))
    node.send("elsewhere", Put(b"k", b"v"), partition=P + 1)
    node.flush()  # raises nothing: the transport would have died of it
    assert node.target.done == [("elsewhere", None)]
    node.loop.run()
    assert [(tag, type(error)) for tag, error in refusing.failed] == [("refused", InternalError)]
    assert node.directory.current(P) is ref and ref is not None and ref.is_alive()


@pytest.fixture
def crash_on_boom(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Replicas crash (an unexpected error, not a refusal) on the first batch that writes
    key b"boom"; returns the names of the threads they crashed on."""
    crashed_on: list[str] = []
    apply = Replica.apply

    def crashing_apply(replica: Replica, ops: Sequence[StoreOp]) -> Any:
        if not crashed_on and any(op.key == b"boom" for op in ops):
            crashed_on.append(threading.current_thread().name)
            raise RuntimeError("the replica failed")
        return apply(replica, ops)

    monkeypatch.setattr(Replica, "apply", crashing_apply)
    return crashed_on


def test_a_crash_on_a_batch_fails_its_ops_and_the_store_server_is_restarted(
    node: Node, crash_on_boom: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    old = node.directory.current(P)
    assert old is not None
    node.send("boom", Put(b"boom", b"x"))
    node.send("with it", Put(b"k", b"v"))
    with caplog.at_level(logging.ERROR):
        node.flush()
    assert crash_on_boom == [threading.current_thread().name]  # applied during the flush
    assert "crashed in running StoreServer.apply_batch" in caplog.text
    assert not old.is_alive()
    node.loop.run()
    assert [tag for tag, _ in node.target.failed] == ["boom", "with it"]
    assert all(isinstance(error, InternalError) for _, error in node.target.failed)
    assert node.target.done == []

    wait_until(lambda: node.restarted(old), message="no new StoreServer")
    assert node.supervisor.proxy().restart_count().get() == 1
    node.send("again", Put(b"boom", b"y"))
    node.send("read", Get(b"boom"))
    node.flush()
    assert node.target.done == [("again", None), ("read", b"y")]


def test_ops_for_a_restarting_store_server_wait_for_it(
    node: Node, crash_on_boom: list[str]
) -> None:
    old = node.directory.current(P)
    assert old is not None
    node.send("boom", Put(b"boom", b"x"))
    node.flush()
    # The new StoreServer cannot start before the loop runs: the partition has none.
    node.send("waits", Put(b"k", b"v"))
    node.flush()
    node.batches.on_tick()
    node.flush()
    assert node.target.done == []
    wait_until(lambda: node.restarted(old), message="no new StoreServer")
    node.batches.on_tick()  # the parked op goes to the new StoreServer
    node.flush()
    assert node.target.done == [("waits", None)]


def test_under_group_commit_results_wait_for_the_sync(node: Node) -> None:
    released = threading.Event()
    syncing = threading.Event()

    def sync() -> None:
        syncing.set()
        assert released.wait(5.0), "the sync was never released"

    group = GroupCommit(
        node.backend, sync, node.loop.call_soon, node.batches.done, node.batches.failed
    )
    node.batches.group = group
    try:
        node.send("put", Put(b"k", b"v"))
        calls = calls_during(node.flush)
        assert "run_now" in calls  # applied during the flush...
        assert syncing.wait(5.0)
        assert node.loop.run() == 0
        assert node.target.done == []  # ...acknowledged only after the sync
        released.set()
        wait_until(lambda: node.loop.run() and node.target.done, message="no acknowledgement")
        assert node.target.done == [("put", None)]
    finally:
        released.set()
        group.stop()
