"""OTP-style supervision for Pykka actors.

Pykka alone logs an actor's unhandled exception and stops that actor; nobody is told,
an exception in an `ask` handler does not stop the actor at all, and a `BaseException`
stops every actor in the process. This module gives Pykka what Erlang/OTP has:

- `SupervisedActor`, a `pykka.ThreadingActor` whose every exit (normal or crash, in
  `on_start`, in a `tell` handler or in an `ask` handler) is reported to its parent;
- `Supervisor`, an actor that starts children from ordered `ChildSpec`s, restarts them
  by their `Restart` type and its `Strategy`, and gives up (stops its children in
  reverse order and crashes, so its own parent is told) when restarts exceed
  `max_restarts` within `max_seconds`.

The parent link is set while the child is constructed, before its `on_start` runs, so
no crash can happen before the parent is listening. This relies on Pykka 4's actor
loop hooks (`_actor_loop_setup`, `_actor_loop_running`), which we override; the
supervision tests pin that behaviour.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

import pykka

from kvactors.errors import (
    ActorCrashedError,
    ChildStartError,
    DuplicateChildError,
    RestartIntensityError,
)

__all__ = [
    "ChildExited",
    "ChildInfo",
    "ChildSpec",
    "ExitReason",
    "Restart",
    "Strategy",
    "SupervisedActor",
    "Supervisor",
    "Undeliverable",
    "start_supervised",
]

logger = logging.getLogger(__name__)


class Restart(enum.StrEnum):
    """When a child is restarted, as in OTP."""

    PERMANENT = "permanent"  # always
    TRANSIENT = "transient"  # only after a crash
    TEMPORARY = "temporary"  # never


class Strategy(enum.StrEnum):
    """Which children a crash restarts, as in OTP."""

    ONE_FOR_ONE = "one_for_one"  # the crashed child alone
    ONE_FOR_ALL = "one_for_all"  # every child
    REST_FOR_ONE = "rest_for_one"  # the crashed child and those started after it


class ExitReason(enum.StrEnum):
    NORMAL = "normal"
    CRASH = "crash"


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """How to start one child and what to do when it exits."""

    id: str
    start: Callable[[], pykka.ActorRef[Any]]
    """Starts the child and returns its ref; the actor must be a `SupervisedActor`."""
    restart: Restart = Restart.PERMANENT
    shutdown: float = 5.0
    """Seconds a graceful stop may take before the child's thread is abandoned."""
    start_timeout: float = 10.0
    """Seconds `on_start` may take before the start counts as failed."""


@dataclass(frozen=True, slots=True)
class ChildExited:
    """Sent to a parent when a child's actor loop has ended."""

    urn: str
    reason: ExitReason
    error: BaseException | None = None


@dataclass(frozen=True, slots=True)
class ChildInfo:
    """One row of `Supervisor.which_children()`."""

    id: str
    ref: pykka.ActorRef[Any] | None
    restart: Restart


@runtime_checkable
class Undeliverable(Protocol):
    """A `tell` message that wants to know when it will get no answer.

    The request path sends `tell`s that answer through a callback, never `ask`s it
    waits on; such a message learns here that its actor crashed while handling it
    (`handled=True`: it may have been partly applied) or stopped before handling it
    (`handled=False`: it was not applied, so sending it again is safe).
    """

    def undelivered(self, error: BaseException, handled: bool) -> None: ...


@dataclass(slots=True)
class _Link:
    """The tie between a child and whoever supervises it, made before the child runs."""

    notify: Callable[[ChildExited], None]
    started: threading.Event = field(default_factory=threading.Event)
    claimed: bool = False
    actor: pykka.ActorRef[Any] | None = None  # the actor that claimed this link
    start_error: BaseException | None = None


# The link waiting to be claimed by the next SupervisedActor constructed on this thread.
_pending = threading.local()


@contextmanager
def _linked_to(link: _Link) -> Iterator[None]:
    _pending.link = link
    try:
        yield
    finally:
        _pending.link = None


class SupervisedActor(pykka.ThreadingActor):
    """A Pykka actor that reports every exit to its parent.

    A crash is an unhandled exception in `on_start` or in any message handler. The
    actor stops, the `ask` caller (if any) gets the exception, `on_failure` runs, and
    the parent is told. A `BaseException` that is not an `Exception` counts as a crash
    of this actor alone: the caller sees an `ActorCrashedError`.
    """

    # A child stuck past its shutdown timeout must not keep the process alive.
    use_daemon_thread = True

    refusals: ClassVar[tuple[type[Exception], ...]] = ()
    """Exceptions an `ask` handler raises to refuse a request: they go to the caller
    and the actor keeps running, its state untouched. Anything else is a crash."""

    def __init__(self) -> None:
        super().__init__()
        self._link: _Link | None = getattr(_pending, "link", None)
        _pending.link = None  # actors this one creates get no parent by accident
        if self._link is not None:
            self._link.claimed = True
            self._link.actor = self.actor_ref
        self._exit_error: BaseException | None = None
        # A plain mirror of `actor_stopped`, cheap to read after every message.
        self._halted = False

    # -- Pykka loop hooks -------------------------------------------------------------

    def _actor_loop(self) -> None:
        try:
            super()._actor_loop()
        finally:
            self._report_exit()

    def _actor_loop_setup(self) -> None:
        try:
            self.on_start()
        except BaseException as exc:  # a crash in on_start is a failed start
            if self._link is not None:
                self._link.start_error = exc
            self._crash(exc, "on_start")
        finally:
            if self._link is not None:
                self._link.started.set()

    def _actor_loop_running(self) -> None:
        while not self.actor_stopped.is_set():
            self._handle_envelope(self.actor_inbox.get())

    def _handle_envelope(self, envelope: Any) -> None:
        """Handle one message; any exception is a crash of this actor."""
        try:
            response = self._handle_receive(envelope.message)
        except BaseException as exc:
            # Answer the caller first, so a caller that sees the actor stopped with
            # its future still open knows its message was never handled.
            if envelope.reply_to is not None:
                envelope.reply_to.set_exception(exc_info=_caller_exc_info(self, exc))
                if isinstance(exc, self.refusals):
                    return
            elif isinstance(envelope.message, Undeliverable):
                _tell_undelivered(envelope.message, exc, handled=True)
            self._crash(exc, f"handling {type(envelope.message).__name__}")
            return
        if envelope.reply_to is not None:
            envelope.reply_to.set(response)

    def _actor_loop_teardown(self) -> None:
        # Pykka fails the waiting `ask`s; the waiting `tell`s that want to know are told.
        error = pykka.ActorDeadError(f"{self} stopped before handling the message")
        others = []
        while not self.actor_inbox.empty():  # this thread is the only consumer
            envelope = self.actor_inbox.get()
            if envelope.reply_to is None and isinstance(envelope.message, Undeliverable):
                _tell_undelivered(envelope.message, error, handled=False)
            else:
                others.append(envelope)
        for envelope in others:
            self.actor_inbox.put(envelope)
        super()._actor_loop_teardown()

    # -- crash and exit ----------------------------------------------------------------

    def _stop(self) -> None:
        self._halted = True
        super()._stop()

    def _crash(self, exc: BaseException, during: str) -> None:
        self._exit_error = exc
        self._halted = True
        logger.error("%s crashed in %s: %r", self, during, exc, exc_info=exc)
        pykka.ActorRegistry.unregister(self.actor_ref)
        self.actor_stopped.set()
        try:
            self.on_failure(type(exc), exc, exc.__traceback__)
        except Exception:
            logger.exception("on_failure of %s raised", self)

    def _report_exit(self) -> None:
        reason = ExitReason.NORMAL if self._exit_error is None else ExitReason.CRASH
        if self._link is None:
            return
        try:
            self._link.notify(ChildExited(self.actor_urn, reason, self._exit_error))
        except pykka.ActorDeadError:
            pass  # the parent is gone already; nobody is left to tell
        except Exception:
            logger.exception("could not report the exit of %s", self)


def _tell_undelivered(message: Undeliverable, error: BaseException, handled: bool) -> None:
    try:
        message.undelivered(error, handled)
    except Exception:
        logger.exception("undelivered() of %s raised", type(message).__name__)


def _caller_exc_info(actor: SupervisedActor, exc: BaseException) -> Any:
    if isinstance(exc, Exception):
        return (type(exc), exc, exc.__traceback__)
    wrapped = ActorCrashedError(f"{actor} crashed on {exc!r}")
    wrapped.__cause__ = exc
    return (ActorCrashedError, wrapped, exc.__traceback__)


def start_supervised(
    start: Callable[[], pykka.ActorRef[Any]],
    notify: Callable[[ChildExited], None],
    *,
    start_timeout: float = 10.0,
    name: str = "child",
) -> pykka.ActorRef[Any]:
    """Start a `SupervisedActor` linked to `notify` and wait until its `on_start` is done.

    Raises `ChildStartError` when `start` raises, returns something other than a
    `SupervisedActor`'s ref, or the actor's `on_start` fails or takes too long.
    """
    link = _Link(notify)
    with _linked_to(link):
        try:
            ref = start()
        except Exception as exc:
            raise ChildStartError(f"{name}: start function raised {exc!r}") from exc
    if not link.claimed or not isinstance(ref, pykka.ActorRef):
        if isinstance(ref, pykka.ActorRef):
            ref.stop(block=False)
        if link.actor is not None and link.actor is not ref:  # e.g. a proxy came back
            link.actor.stop(block=False)
        raise ChildStartError(f"{name}: start function must start a SupervisedActor")
    if not link.started.wait(start_timeout):
        ref.stop(block=False)
        raise ChildStartError(f"{name}: on_start did not finish within {start_timeout}s")
    if link.start_error is not None:
        raise ChildStartError(f"{name}: on_start raised {link.start_error!r}") from link.start_error
    return ref


@dataclass(slots=True)
class _Child:
    spec: ChildSpec
    ref: pykka.ActorRef[Any] | None = None


class Supervisor(SupervisedActor):
    """Starts, watches and restarts children, as an OTP supervisor does.

    Talk to it through its proxy (`ref.proxy().start_child(spec).get()`) or `ask`.
    Subclasses may override `on_child_started` and `on_child_stopped` to keep their
    own view of the children (StoreSupervisor publishes its StoreServers that way).
    """

    # A refused start_child is the caller's error, not the supervisor's crash.
    refusals = (DuplicateChildError, ChildStartError)

    def __init__(
        self,
        children: Sequence[ChildSpec] = (),
        *,
        strategy: Strategy = Strategy.ONE_FOR_ONE,
        max_restarts: int = 3,
        max_seconds: float = 5.0,
        name: str = "supervisor",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        _check_unique_ids(children)
        self.name = name
        self._strategy = Strategy(strategy)
        self._max_restarts = max_restarts
        self._max_seconds = max_seconds
        self._clock = clock
        self._children: list[_Child] = [_Child(spec) for spec in children]
        self._by_urn: dict[str, _Child] = {}
        self._recent_restarts: deque[float] = deque()
        self._restart_count = 0

    def __str__(self) -> str:
        return f"Supervisor {self.name}"

    # -- lifecycle -----------------------------------------------------------------------

    def on_start(self) -> None:
        try:
            for child in self._children:
                self._start(child)
        except ChildStartError:
            self._terminate_all()
            raise

    def on_stop(self) -> None:
        self._terminate_all()

    def on_failure(self, *_exc_info: Any) -> None:
        self._terminate_all()

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, ChildExited):
            self._child_exited(message)
            return None
        return super().on_receive(message)

    # -- public API (call through the proxy) -------------------------------------------

    def start_child(self, spec: ChildSpec) -> pykka.ActorRef[Any]:
        """Start a new child after the existing ones; raises ChildStartError on failure."""
        if self._find(spec.id) is not None:
            raise DuplicateChildError(f"{self.name}: a child with id {spec.id!r} exists already")
        child = _Child(spec)
        self._start(child)
        self._children.append(child)
        assert child.ref is not None
        return child.ref

    def terminate_child(self, child_id: str) -> bool:
        """Stop a child and forget its spec; False if there is no such child."""
        child = self._find(child_id)
        if child is None:
            return False
        self._terminate(child)
        self._children.remove(child)
        return True

    def which_children(self) -> list[ChildInfo]:
        return [ChildInfo(c.spec.id, c.ref, c.spec.restart) for c in self._children]

    def child_ref(self, child_id: str) -> pykka.ActorRef[Any] | None:
        child = self._find(child_id)
        return None if child is None else child.ref

    def restart_count(self) -> int:
        """Restarts done since this supervisor started (a group restart counts once)."""
        return self._restart_count

    # -- hooks for subclasses -----------------------------------------------------------

    def on_child_started(self, child_id: str, ref: pykka.ActorRef[Any]) -> None:
        """Called after each (re)start of a child."""

    def on_child_stopped(self, child_id: str, ref: pykka.ActorRef[Any]) -> None:
        """Called when a child has exited or been terminated."""

    # -- internals -----------------------------------------------------------------------

    def _find(self, child_id: str) -> _Child | None:
        return next((c for c in self._children if c.spec.id == child_id), None)

    def _start(self, child: _Child) -> None:
        spec = child.spec
        ref = start_supervised(
            spec.start,
            self.actor_ref.tell,
            start_timeout=spec.start_timeout,
            name=f"{self.name}/{spec.id}",
        )
        child.ref = ref
        self._by_urn[ref.actor_urn] = child
        self.on_child_started(spec.id, ref)

    def _terminate(self, child: _Child) -> None:
        ref, child.ref = child.ref, None
        if ref is None:
            return
        # Forget the urn first: the exit notice this stop causes is not a crash.
        self._by_urn.pop(ref.actor_urn, None)
        try:
            ref.stop(block=True, timeout=child.spec.shutdown)
        except pykka.Timeout:
            logger.warning(
                "%s/%s did not stop within %.1fs; abandoning its thread",
                self.name,
                child.spec.id,
                child.spec.shutdown,
            )
        self.on_child_stopped(child.spec.id, ref)

    def _terminate_all(self) -> None:
        for child in reversed(self._children):
            self._terminate(child)

    def _child_exited(self, exit_: ChildExited) -> None:
        child = self._by_urn.pop(exit_.urn, None)
        if child is None:
            return  # a child we stopped ourselves, or an older incarnation
        assert child.ref is not None
        ref, child.ref = child.ref, None
        self.on_child_stopped(child.spec.id, ref)
        if not _wants_restart(child.spec.restart, exit_.reason):
            self._children.remove(child)
            return
        logger.warning(
            "%s: child %s exited (%s: %r); restarting (%s)",
            self.name,
            child.spec.id,
            exit_.reason,
            exit_.error,
            self._strategy,
        )
        self._restart_group(child)

    def _restart_group(self, failed: _Child) -> None:
        group = self._group_of(failed)
        for child in reversed(group):
            if child is not failed:
                self._terminate(child)
        # Temporary siblings stopped by a group restart are not restarted (as in OTP).
        for child in group:
            if child is not failed and child.spec.restart is Restart.TEMPORARY:
                self._children.remove(child)
        self._count_restart()
        for child in group:
            if child in self._children:
                self._start_until_up(child)

    def _group_of(self, failed: _Child) -> list[_Child]:
        if self._strategy is Strategy.ONE_FOR_ONE:
            return [failed]
        if self._strategy is Strategy.ONE_FOR_ALL:
            return list(self._children)
        return self._children[self._children.index(failed) :]

    def _start_until_up(self, child: _Child) -> None:
        # A failed restart is one more restart; intensity ends the loop.
        while True:
            try:
                self._start(child)
                return
            except ChildStartError as exc:
                logger.error("%s: restart of %s failed: %s", self.name, child.spec.id, exc)
                self._count_restart()

    def _count_restart(self) -> None:
        now = self._clock()
        self._restart_count += 1
        self._recent_restarts.append(now)
        while self._recent_restarts and now - self._recent_restarts[0] > self._max_seconds:
            self._recent_restarts.popleft()
        if len(self._recent_restarts) > self._max_restarts:
            self._give_up()

    def _give_up(self) -> None:
        message = (
            f"{self.name}: more than {self._max_restarts} restarts within "
            f"{self._max_seconds}s; stopping all children and escalating"
        )
        logger.error(message)
        self._terminate_all()
        raise RestartIntensityError(message)


def _wants_restart(restart: Restart, reason: ExitReason) -> bool:
    if restart is Restart.PERMANENT:
        return True
    return restart is Restart.TRANSIENT and reason is ExitReason.CRASH


def _check_unique_ids(specs: Sequence[ChildSpec]) -> None:
    ids = [spec.id for spec in specs]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"duplicate child ids: {', '.join(duplicates)}")
