"""Admission and deadlines: the requests a node is serving now.

Every request that waits for replicas is a `Pending`: one result slot per key, a
deadline, and how to answer. `InFlight` admits it (refusing past `max_inflight`),
watches its deadline, fills its slots as answers come and answers it once the last one
is in. Everything here runs on the transport thread.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable
from typing import Any

from kvactors.errors import (
    KVActorsError,
    OverloadedError,
    RequestTimeoutError,
    UnavailableError,
)

__all__ = ["InFlight", "Pending"]


class Pending:
    """One request waiting for its keys: one result slot per key."""

    __slots__ = ("deadline", "done", "missing", "results")

    def __init__(self, slots: int, deadline: float) -> None:
        self.results: list[Any] = [None] * slots
        self.missing = slots
        self.deadline = deadline
        self.done = False

    def answer(self) -> None:
        """Send the reply built from `results`."""
        raise NotImplementedError

    def refuse(self, error: KVActorsError) -> None:
        """Send an error reply instead."""
        raise NotImplementedError


class InFlight:
    """The requests in flight: admission, deadlines, and their slots as answers come."""

    def __init__(self, max_inflight: int, timeout: float, clock: Callable[[], float]) -> None:
        self._max = max_inflight
        self._timeout = timeout
        self._clock = clock
        self.count = 0
        self.overloaded = 0
        self.timeouts = 0
        self.closing = False
        # Deadlines in arrival order: with the default timeout they are also in deadline
        # order, so only the head needs watching. Requests with a timeout of their own
        # go to a heap.
        self._deadlines: deque[Pending] = deque()
        self._custom: list[tuple[float, int, Pending]] = []
        self._sequence = itertools.count()

    def admit(self) -> None:
        """Refuse new work while closing or past the in-flight bound."""
        if self.closing:
            raise UnavailableError("the node is shutting down")
        if self.count >= self._max:
            self.overloaded += 1
            raise OverloadedError(f"{self.count} requests in flight; retry later")

    def deadline(self, timeout: float | None) -> float:
        """The deadline of a request with `timeout` seconds (None: the node's default)."""
        return self._clock() + (self._timeout if timeout is None else timeout)

    def track(self, pending: Pending, own_timeout: bool) -> None:
        self.count += 1
        if not own_timeout:
            self._deadlines.append(pending)
        else:
            heapq.heappush(self._custom, (pending.deadline, next(self._sequence), pending))

    def fill(self, pending: Pending, slot: int, result: Any) -> None:
        if pending.done:
            return
        pending.results[slot] = result
        pending.missing -= 1
        if pending.missing == 0:
            pending.done = True
            self.count -= 1
            pending.answer()

    def fail(self, pending: Pending, error: KVActorsError) -> None:
        if pending.done:
            return
        pending.done = True
        self.count -= 1
        pending.refuse(error)

    def expire(self, now: float) -> None:
        """Answer `timeout` for every request past its deadline."""
        deadlines, custom = self._deadlines, self._custom
        while deadlines and (deadlines[0].done or deadlines[0].deadline <= now):
            self._time_out(deadlines.popleft())
        while custom and (custom[0][2].done or custom[0][0] <= now):
            self._time_out(heapq.heappop(custom)[2])

    def close(self, error: KVActorsError) -> None:
        """Refuse what comes next, and fail everything in flight with `error`."""
        self.closing = True
        for pending in [*self._deadlines, *(entry[2] for entry in self._custom)]:
            self.fail(pending, error)
        self._deadlines.clear()
        self._custom.clear()

    def _time_out(self, pending: Pending) -> None:
        if not pending.done:
            self.timeouts += 1
            self.fail(pending, RequestTimeoutError("the request did not complete in time"))
