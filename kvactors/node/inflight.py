"""Admission and deadlines: the requests a node is serving now.

Every request that waits for replicas is a `Pending`: one result slot per key, a
deadline, and how to answer. `InFlight` admits it (refusing past `max_inflight`),
watches its deadline, fills its slots as answers come and answers it once the last one
is in. A client's request of one key, which answers itself, is admitted, given its
deadline and tracked in one call (`enter`), and `settle`d as it answers. Everything
here runs on the transport thread.

A client connection's requests are bounded on their own too, so that one connection
cannot take the node's whole budget: past `max_inflight_per_connection` in flight, or
while the node holds more unread replies for it than `max_reply_backlog_bytes` (its
routing id, or on a secure node its client key, is in the transport's
`ReplyBacklog.slow`), its key requests are refused ``overloaded``. The count per
connection is kept for each request that has one; the check costs nothing while the
node has fewer requests in flight than one connection may.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable, Set
from typing import Any, Final

from kvactors.errors import (
    KVActorsError,
    OverloadedError,
    RequestTimeoutError,
    UnavailableError,
)

__all__ = ["SLOW_CONNECTION", "InFlight", "Pending"]

SLOW_CONNECTION: Final = (
    "the node holds too many unread replies for this connection "
    "(max_reply_backlog_bytes); read them, then retry"
)


class Pending:
    """One request waiting for its keys: one result slot per key."""

    __slots__ = ("connection", "deadline", "done", "missing", "results")

    def __init__(self, slots: int, deadline: float, connection: bytes | None = None) -> None:
        self.results: list[Any] = [None] * slots
        self.missing = slots
        self.deadline = deadline
        self.done = False
        self.connection = connection
        """The client connection (routing id) it came on, counted against its bound;
        None for the embedded client's requests and peers' calls."""

    def answer(self) -> None:
        """Send the reply built from `results`."""
        raise NotImplementedError

    def refuse(self, error: KVActorsError) -> None:
        """Send an error reply instead."""
        raise NotImplementedError


class InFlight:
    """The requests in flight: admission, deadlines, and their slots as answers come."""

    def __init__(
        self,
        max_inflight: int,
        timeout: float,
        clock: Callable[[], float],
        *,
        max_per_connection: int | None = None,
        slow_connections: Set[bytes] = frozenset(),
    ) -> None:
        self._max = max_inflight
        self._max_per_connection = (
            max_inflight if max_per_connection is None else max_per_connection
        )
        self._slow = slow_connections
        self._timeout = timeout
        self._clock = clock
        self.count = 0
        self.per_connection: dict[bytes, int] = {}
        """Requests in flight per client connection, for those with any."""
        self.overloaded = 0
        self.connection_refusals = 0
        """Requests refused because their connection had as many in flight as it may."""
        self.slow_refusals = 0
        """Requests refused because the node held too many unread replies for their
        connection."""
        self.timeouts = 0
        self.closing = False
        # Deadlines in arrival order: with the default timeout they are also in deadline
        # order, so only the head needs watching. Requests with a timeout of their own
        # go to a heap.
        self._deadlines: deque[Pending] = deque()
        self._custom: list[tuple[float, int, Pending]] = []
        self._sequence = itertools.count()

    def admit(self, connection: bytes | None = None, account: bytes | None = None) -> None:
        """Refuse new work while closing or past the in-flight bound; a client
        `connection`'s also while it is slow to read, or past its own bound. A secure
        node names the client's key as `account`: the bound then counts every request
        of that key, whichever connection it came on (a key cannot multiply its share
        by opening connections)."""
        if self.closing:
            raise UnavailableError("the node is shutting down")
        count = self.count
        if count >= self._max:
            self.overloaded += 1
            raise OverloadedError(f"{count} requests in flight; retry later")
        if connection is None:
            return
        slow = self._slow
        if slow and (connection in slow or (account is not None and account in slow)):
            self.overloaded += 1
            self.slow_refusals += 1
            raise OverloadedError(SLOW_CONNECTION)
        limit = self._max_per_connection
        counted = connection if account is None else account
        # No connection can be at its bound while the node has fewer in flight.
        if count >= limit and self.per_connection.get(counted, 0) >= limit:
            self.overloaded += 1
            self.connection_refusals += 1
            holder = "this connection" if account is None else "this key"
            raise OverloadedError(
                f"{holder} has {limit} requests in flight, the most one may have "
                "(max_inflight_per_connection); read their replies, then send more"
            )

    def deadline(self, timeout: float | None) -> float:
        """The deadline of a request with `timeout` seconds (None: the node's default)."""
        return self._clock() + (self._timeout if timeout is None else timeout)

    def enter(
        self,
        pending: Pending,
        routing_id: bytes,
        account: bytes | None,
        timeout: float | None = None,
    ) -> None:
        """Admit a client's `pending` request (as `admit`, for its connection's
        `routing_id` and its key's `account`), give it its deadline (`timeout` seconds,
        None: the node's default) and track it: one call for the common request, whose
        checks all pass while the node has fewer in flight than one connection may."""
        count = self.count
        # Below both bounds, with no connection slow, every check of `admit` passes.
        if count >= self._max or count >= self._max_per_connection or self._slow or self.closing:
            self.admit(routing_id, account)
        if timeout is None:
            pending.deadline = self._clock() + self._timeout
            self._deadlines.append(pending)
        else:
            pending.deadline = deadline = self._clock() + timeout
            heapq.heappush(self._custom, (deadline, next(self._sequence), pending))
        self.count = count + 1
        connection = pending.connection
        if connection is not None:
            per_connection = self.per_connection
            per_connection[connection] = per_connection.get(connection, 0) + 1

    def settle(self, pending: Pending) -> None:
        """`pending`, not done yet, is being answered by its owner: it is no longer in
        flight (the `fill` of a request that fills no slots)."""
        pending.done = True
        self.count -= 1
        connection = pending.connection
        if connection is not None:  # _release, inlined
            per_connection = self.per_connection
            left = per_connection[connection] - 1
            if left:
                per_connection[connection] = left
            else:
                del per_connection[connection]

    def track(self, pending: Pending, own_timeout: bool) -> None:
        self.count += 1
        connection = pending.connection
        if connection is not None:
            per_connection = self.per_connection
            per_connection[connection] = per_connection.get(connection, 0) + 1
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
            if pending.connection is not None:
                self._release(pending.connection)
            pending.answer()

    def fail(self, pending: Pending, error: KVActorsError) -> None:
        if pending.done:
            return
        pending.done = True
        self.count -= 1
        if pending.connection is not None:
            self._release(pending.connection)
        pending.refuse(error)

    def _release(self, connection: bytes) -> None:
        per_connection = self.per_connection
        left = per_connection[connection] - 1
        if left:
            per_connection[connection] = left
        else:
            del per_connection[connection]

    def expire(self, now: float) -> None:
        """Answer `timeout` for every request past its deadline."""
        deadlines, custom = self._deadlines, self._custom
        # Most of the head's requests were answered since the last tick: they are only
        # dropped, without a call each.
        while deadlines:
            head = deadlines[0]
            if head.done:
                deadlines.popleft()
            elif head.deadline <= now:
                deadlines.popleft()
                self._time_out(head)
            else:
                break
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
