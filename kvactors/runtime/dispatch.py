"""Dispatched actors: many actors on a few threads, as Akka's dispatchers run them.

A Pykka `ThreadingActor` is one OS thread. A node has a StoreServer per partition, and
a batch of requests touches many partitions at once; with a thread each, every batch
costs a thread wake-up and a GIL hand-off per partition. A `DispatchedActor` keeps
everything that makes it an actor (its own mailbox, messages handled one at a time and
in order, `tell`/`ask`/proxies, supervision, crash reporting) but has no thread of its
own: when a message arrives, the actor is queued on a `Dispatcher`, whose threads run
it for up to `throughput` messages at a time. A batch for ten partitions is then one
wake-up of one dispatcher thread.

A node's StoreServers run on its `NodeDispatcher`: on the transport thread while the
node serves the network, so a request is decoded, applied by its partition's StoreServer
and answered on one thread with no hand-off at all (as fast as the single loop of a bare
server), and on a `ThreadDispatcher` otherwise (embedded nodes, start-up, shutdown).
A caller on that thread may go further and have an idle actor run a handler now, with
no message at all (`run_now`): the work of a `tell` and its slice without the envelope,
the mailbox or the dispatch, and with the same crash handling and supervision.

The one rule: a dispatched actor's handlers must not block waiting for another actor
(no `ask().get()`), since that could wait for a message only the same thread would
handle. The request path never blocks, so StoreServers qualify.
"""

from __future__ import annotations

import collections
import enum
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, Final, NamedTuple, Protocol, TypeVar

import pykka

from kvactors.errors import ActorCrashedError
from kvactors.runtime.supervision import SupervisedActor

__all__ = [
    "NOT_RUN",
    "DispatchedActor",
    "Dispatcher",
    "NodeDispatcher",
    "NotRun",
    "ThreadDispatcher",
    "default_dispatcher",
    "dispatcher_of",
    "run_now",
    "tell",
]

logger = logging.getLogger(__name__)


# Messages an actor handles before others get their turn on the same thread.
THROUGHPUT = 256


class Dispatcher(Protocol):
    """Runs dispatched actors that have mail."""

    def schedule(self, actor: DispatchedActor) -> None:
        """Run `actor._run_slice(THROUGHPUT)` soon, on some thread. Safe from any thread."""

    def runs_here(self) -> bool:
        """True if this dispatcher runs its actors on the calling thread itself."""


class ThreadDispatcher:
    """A few daemon threads that run whichever dispatched actors have mail.

    The threads start with the first slice scheduled and end with `stop()`, which joins
    them: a stopped node leaves no thread behind. Mail scheduled after a stop starts
    them again, so the dispatcher of a node that is started anew works as before.
    """

    def __init__(
        self, threads: int = 1, throughput: int = THROUGHPUT, name: str = "dispatcher"
    ) -> None:
        if threads < 1 or throughput < 1:
            raise ValueError("a dispatcher needs at least one thread and a positive throughput")
        self.throughput = throughput
        self._size = threads
        self._name = name
        # Both replaced as one under the lock: a stop leaves its sentinels in the queue
        # its threads read, and later mail goes to a new queue with threads of its own.
        self._lock = threading.Lock()
        self._runnable: queue.SimpleQueue[DispatchedActor | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []

    def schedule(self, actor: DispatchedActor) -> None:
        with self._lock:
            if not self._threads:
                self._start_threads()
            self._runnable.put(actor)

    def runs_here(self) -> bool:
        return False

    @property
    def threads(self) -> tuple[threading.Thread, ...]:
        """The threads running now (none before the first slice and after `stop()`)."""
        return tuple(self._threads)

    def stop(self, timeout: float = 10.0) -> bool:
        """End the threads once the slices scheduled before this call have run, and join
        them; False if one was still running at the deadline. Stop a dispatcher once
        its actors have stopped: an actor that gets mail later starts new threads."""
        with self._lock:
            threads, self._threads = self._threads, []
            runnable, self._runnable = self._runnable, queue.SimpleQueue()
            for _ in threads:
                runnable.put(None)
        deadline = time.monotonic() + timeout
        me = threading.current_thread()
        for thread in threads:
            if thread is not me:  # a slice stopping its own dispatcher: it ends on return
                thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [thread.name for thread in threads if thread is not me and thread.is_alive()]
        if stuck:
            logger.warning("dispatcher threads did not stop within %.1fs: %s", timeout, stuck)
        return not stuck

    def _start_threads(self) -> None:
        """Start the threads, reading the current queue; the caller holds the lock."""
        self._threads = [
            threading.Thread(
                target=self._work, args=(self._runnable,), name=f"{self._name}-{n}", daemon=True
            )
            for n in range(self._size)
        ]
        for thread in self._threads:
            thread.start()

    def _work(self, runnable: queue.SimpleQueue[DispatchedActor | None]) -> None:
        while (actor := runnable.get()) is not None:
            try:
                actor._run_slice(self.throughput)
            except BaseException:  # a bug in the slice itself; the actor's own crashes are caught
                logger.exception("dispatcher: running %s failed", actor)


_default: ThreadDispatcher | None = None
_default_lock = threading.Lock()


def default_dispatcher() -> ThreadDispatcher:
    """The process-wide thread dispatcher, for dispatched actors given none.

    Its thread starts on first use and runs until `default_dispatcher().stop()`; a node
    (`ActorSystem`) does not use it, its `NodeDispatcher` has threads of its own.
    """
    global _default  # noqa: PLW0603 - one lazily created pool per process
    with _default_lock:
        if _default is None:
            _default = ThreadDispatcher(name="kvactors-dispatcher")
        return _default


class EventLoop(Protocol):
    """A loop that runs queued calls on its own thread (the transport is one)."""

    def call_soon(self, call: Callable[[], None]) -> bool:
        """Queue `call` on the loop's thread; False if the loop has closed."""

    def in_loop_thread(self) -> bool:
        """True when called on the loop's own thread."""


class NodeDispatcher:
    """Runs a node's actors on its transport thread when there is one, else on threads.

    The transport attaches itself while it runs. Mail sent from the transport thread is
    handled there and then, as Akka's calling-thread dispatcher would: the sender is the
    only thread that runs these actors, so nothing can run them concurrently. Mail from
    other threads is queued on the loop. A slice handed to a loop that has just closed is
    refused and goes to the thread dispatcher instead, so no actor is left scheduled on
    a loop that will not run it.

    Without a `fallback`, the node gets a `ThreadDispatcher` of its own, named `name`,
    whose thread `stop()` ends; a fallback given is its giver's to stop.
    """

    def __init__(
        self, fallback: Dispatcher | None = None, name: str = "kvactors-dispatcher"
    ) -> None:
        self._owned: ThreadDispatcher | None = None
        if fallback is None:
            fallback = self._owned = ThreadDispatcher(name=name)
        self._fallback = fallback
        self._loop: EventLoop | None = None

    def stop(self, timeout: float = 10.0) -> bool:
        """End the threads of the node's own thread dispatcher (see `ThreadDispatcher.stop`)."""
        return self._owned.stop(timeout) if self._owned is not None else True

    def attach(self, loop: EventLoop) -> None:
        self._loop = loop

    def detach(self, loop: EventLoop) -> None:
        if self._loop is loop:
            self._loop = None

    def runs_here(self) -> bool:
        loop = self._loop
        return loop is not None and loop.in_loop_thread()

    def schedule(self, actor: DispatchedActor) -> None:
        loop = self._loop
        if loop is not None:
            if loop.in_loop_thread():
                actor._run_slice(THROUGHPUT)
                return
            if loop.call_soon(lambda: actor._run_slice(THROUGHPUT)):
                return
        self._fallback.schedule(actor)


class _Tell(NamedTuple):
    """The envelope of a `tell` (Pykka's own is private); the actor loop reads both fields."""

    message: Any
    reply_to: None = None


def tell(ref: pykka.ActorRef[Any], message: Any) -> None:
    """`ref.tell(message)`, handled there and then when it can be.

    When the actor is a dispatched one, idle, and its dispatcher runs it on this very
    thread, queueing the message only to run it at once would be wasted work: it is
    handled now, exactly as the dispatcher would have. Otherwise this is `ref.tell`
    (and raises `pykka.ActorDeadError` for a stopped actor).
    """
    inbox = ref.actor_inbox
    if type(inbox) is _Mailbox and inbox.deliver(message):
        return
    ref.tell(message)


class NotRun(enum.Enum):
    """What `run_now` returns when the actor could not run the handler there and then."""

    NOT_RUN = "not run"


NOT_RUN: Final = NotRun.NOT_RUN

R = TypeVar("R")


def dispatcher_of(ref: pykka.ActorRef[Any]) -> Dispatcher | None:
    """The dispatcher that runs `ref`'s actor; None if it is not a dispatched actor."""
    inbox = ref.actor_inbox
    return inbox._actor._dispatcher if type(inbox) is _Mailbox else None


def run_now(
    ref: pykka.ActorRef[Any], here: Dispatcher | None, handle: Callable[..., R], *args: Any
) -> R | NotRun:
    """`handle(actor, *args)` run by `ref`'s actor now, on this thread, as its next
    message would be; `NOT_RUN` (and nothing ran) when it cannot be, and then the caller
    sends its message instead, behind whatever mail the actor has.

    `handle` is a method of the actor's class, called unbound (`StoreServer.apply_batch`).
    `here` is a dispatcher the caller has found to run its actors on this very thread
    (`runs_here()`), a check made once for many calls rather than on each. The actor
    runs the handler only if it is `here`'s, idle (no slice scheduled or running, no
    mail: a handler never overtakes a message sent before it), started and not stopping;
    while it runs, the actor is as busy as in a slice, so nothing else runs it.

    An exception from `handle` is the actor's crash, as in the handler of a `tell`: it
    stops, `on_failure` runs, its mail that came meanwhile is told it was not handled,
    and its supervisor hears of it (and restarts it). The exception is then raised here,
    the caller's to act on (a `BaseException` other than an `Exception` as an
    `ActorCrashedError`, as an `ask` would).
    """
    inbox = ref.actor_inbox
    if type(inbox) is not _Mailbox or inbox.messages:
        return NOT_RUN
    actor = inbox._actor
    if actor._scheduled or actor._halted or actor._dispatcher is not here:
        return NOT_RUN
    with actor._schedule_lock:
        if actor._scheduled or actor._finished:
            return NOT_RUN
        actor._scheduled = True
    try:
        result = handle(actor, *args)
    except BaseException as exc:
        actor._crash(exc, f"running {getattr(handle, '__qualname__', handle)}")
        actor._run_slice(THROUGHPUT)  # halted: it finishes and its supervisor is told
        if isinstance(exc, Exception):
            raise
        raise ActorCrashedError(f"{actor} crashed on {exc!r}") from exc
    if not inbox.messages and not actor._halted:  # the common case, inline: idle again
        with actor._schedule_lock:
            if not inbox.messages:
                actor._scheduled = False
                return result
    _end_slice(actor)
    return result


def _end_slice(actor: DispatchedActor) -> None:
    """After a message handled outside `_run_slice`, what the end of a slice would do:
    run the mail that came meanwhile, finish an actor the message stopped, or leave it
    idle."""
    if actor._mailbox.messages or actor._halted:
        actor._run_slice(THROUGHPUT)
        return
    with actor._schedule_lock:
        if not actor._mailbox.messages:
            actor._scheduled = False
            return
    actor._dispatcher.schedule(actor)


class _Mailbox:
    """A Pykka inbox whose `put` also queues its actor on the dispatcher."""

    __slots__ = ("_actor", "messages")

    def __init__(self, actor: DispatchedActor) -> None:
        self.messages: collections.deque[Any] = collections.deque()
        self._actor = actor

    def put(self, envelope: Any, /) -> None:
        self.messages.append(envelope)
        self._actor._wake()

    def deliver(self, message: Any) -> bool:
        """Handle `message` now if the actor is idle and runs on this thread; else False."""
        actor = self._actor
        if actor._scheduled or self.messages or not actor._dispatcher.runs_here():
            return False
        with actor._schedule_lock:
            if actor._scheduled or actor._finished:
                return False
            actor._scheduled = True
        if not actor._set_up or actor._halted:
            self.messages.append(_Tell(message))
            actor._run_slice(THROUGHPUT)
            return True
        # The common case, without the queue: handle it, then finish the slice as
        # `_run_slice` would (mail that came meanwhile, a stop the message caused).
        actor._handle_envelope(_Tell(message))
        _end_slice(actor)
        return True

    def get(self) -> Any:
        return self.messages.popleft()

    def empty(self) -> bool:
        return not self.messages


class DispatchedActor(SupervisedActor):
    """A `SupervisedActor` run by a `Dispatcher` instead of a thread of its own."""

    def __init__(self, dispatcher: Dispatcher | None = None) -> None:
        self._dispatcher: Dispatcher = dispatcher or default_dispatcher()
        self._schedule_lock = threading.Lock()
        self._scheduled = True  # until the first slice has run on_start
        self._set_up = False
        self._finished = False
        super().__init__()

    def _create_actor_inbox(self) -> Any:  # type: ignore[override]
        self._mailbox = _Mailbox(self)
        return self._mailbox

    def _start_actor_loop(self) -> None:
        self._dispatcher.schedule(self)

    def _wake(self) -> None:
        with self._schedule_lock:
            if self._scheduled or self._finished:
                return
            self._scheduled = True
        self._dispatcher.schedule(self)

    def _run_slice(self, throughput: int) -> None:
        """Handle up to `throughput` messages; called by one dispatcher thread at a time."""
        if not self._set_up:
            self._set_up = True
            self._actor_loop_setup()
        messages = self._mailbox.messages
        handle = self._handle_envelope
        budget = throughput
        while budget and messages and not self._halted:
            handle(messages.popleft())
            budget -= 1
        if self._halted:
            self._finish()
            return
        with self._schedule_lock:
            if not messages:
                self._scheduled = False
                return
        self._dispatcher.schedule(self)  # more mail: back of the queue, others go first

    def _finish(self) -> None:
        with self._schedule_lock:
            self._finished = True
        try:
            self._actor_loop_teardown()
        finally:
            self._report_exit()
