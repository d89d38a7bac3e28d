"""Replies held for client connections that do not read them fast enough, bounded in bytes.

ZeroMQ's high-water marks count messages, not bytes, and a ROUTER cannot close one of
its connections. So the node bounds what a connection can make it hold itself:

- the client ROUTER has a modest SNDHWM (`SocketOptions.client_send_hwm`) and
  ROUTER_MANDATORY, so a reply to a connection whose queue is full raises EAGAIN at once
  instead of piling up in ZeroMQ;
- the transport then holds that reply here, behind the connection's other held replies
  (a connection's replies keep their order), and offers them again on each later turn of
  its loop; a turn with nothing held costs one test of an empty dict;
- what one connection has held is bounded in bytes (`max_reply_backlog_bytes`): a reply
  that would pass the bound is dropped and counted, and the connection becomes *slow*:
  its key requests are refused ``overloaded`` (`InFlight.admit` reads `slow`) until
  everything held for it has gone out;
- on a secure node the bound is the client key's, not the connection's: a reply is held
  under its *account* (the key), whose connections share one budget and are slow
  together, so that a key cannot multiply what the node holds for it by opening
  connections;
- the held replies of a connection that has gone are freed at once.

A well-behaved client that pipelines more replies than SNDHWM meets the queue's bound
for a moment (ZeroMQ's I/O thread lags a burst): its replies wait here for a turn or two
and nothing is lost. What one connection can make the node hold is then at most SNDHWM
replies in ZeroMQ, `max_reply_backlog_bytes` here, and the kernel's socket buffer.

Pure bookkeeping: the transport gives `retry` a function that tries one send.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

__all__ = ["FULL", "GONE", "HELD_REPLY_OVERHEAD", "SENT", "ReplyBacklog", "held_size"]

SENT: Final = 0
"""A send went out."""
FULL: Final = 1
"""The connection's queue is full (EAGAIN): try again later."""
GONE: Final = 2
"""The connection has gone (EHOSTUNREACH)."""

HELD_REPLY_OVERHEAD: Final = 128
"""Bytes counted per held reply beyond its frames: the Python objects that hold it, so
that a flood of tiny replies is bounded too."""

TrySend = Callable[[list[bytes]], int]
"""Tries to send one reply (its frames, the routing id first): SENT, FULL or GONE."""


def held_size(frames: list[bytes]) -> int:
    """What holding a reply costs, as counted against a connection's budget."""
    return sum(map(len, frames)) + HELD_REPLY_OVERHEAD


@dataclass(slots=True)
class _Held:
    """One connection's held replies, oldest first, with their sizes, and the account
    whose budget they count against."""

    account: bytes
    replies: deque[tuple[list[bytes], int]] = field(default_factory=deque)
    size: int = 0


class ReplyBacklog:
    """The replies held per client connection (by routing id); see the module docstring.
    Thread: the transport's."""

    def __init__(self, budget: int) -> None:
        if budget <= 0:
            raise ValueError("a reply backlog's budget must be positive")
        self.budget = budget
        self.held: dict[bytes, _Held] = {}
        """The connections with held replies. The transport tests this dict before each
        send: a reply to one of them goes behind the others."""
        self.accounts: dict[bytes, int] = {}
        """Bytes held per account (a connection's routing id, or a secure client's key),
        for those with any."""
        self.slow: set[bytes] = set()
        """Accounts that passed their budget, until what is held for them has gone out."""
        self.held_bytes = 0
        self.held_replies = 0
        self.held_total = 0
        """Replies ever held (a pipelining client's bursts too)."""
        self.dropped = 0
        """Replies dropped because their connection's backlog was full."""
        self.freed = 0
        """Held replies freed because their connection had gone."""

    def hold(self, frames: list[bytes], account: bytes | None = None) -> bool:
        """Hold a reply its connection's queue had no room for, counted against `account`
        (None: the connection's own; a connection already holding replies keeps the
        account it has); False if it would pass that account's budget: then it is
        dropped, and the account is slow."""
        connection = frames[0]
        size = held_size(frames)
        held = self.held.get(connection)
        if held is not None:
            account = held.account
        elif account is None:
            account = connection
        accounts = self.accounts
        account_size = accounts.get(account, 0)
        if account_size + size > self.budget:
            self.dropped += 1
            if account_size:  # with nothing held there is nothing to wait for
                self.slow.add(account)
            return False
        if held is None:
            held = self.held[connection] = _Held(account)
        held.replies.append((frames, size))
        held.size += size
        accounts[account] = account_size + size
        self.held_bytes += size
        self.held_replies += 1
        self.held_total += 1
        return True

    def retry(self, try_send: TrySend) -> int:
        """Offer each connection its held replies again, oldest first, until its queue
        is full; returns how many went out. An account whose replies have all gone out
        is no longer slow; a connection that has gone has its replies freed."""
        sent = 0
        for connection, held in list(self.held.items()):
            replies = held.replies
            went, outcome = 0, SENT
            while replies:
                frames, size = replies[0]
                outcome = try_send(frames)
                if outcome == FULL:
                    break
                if outcome == GONE:
                    self.freed += len(replies)
                    break
                replies.popleft()
                went += size
                sent += 1
                self.held_replies -= 1
            self._release(held, went)
            if not replies or outcome == GONE:
                self._forget(connection, held)
        return sent

    def clear(self) -> None:
        """Drop everything held (the transport is closing)."""
        for connection, held in list(self.held.items()):
            self._forget(connection, held)

    def _release(self, held: _Held, size: int) -> None:
        """`size` bytes of `held` have gone out."""
        if not size:
            return
        held.size -= size
        self.held_bytes -= size
        account = held.account
        left = self.accounts[account] - size
        if left:
            self.accounts[account] = left
        else:
            del self.accounts[account]
            self.slow.discard(account)

    def _forget(self, connection: bytes, held: _Held) -> None:
        """Free whatever `connection` still holds and forget it."""
        del self.held[connection]
        self.held_replies -= len(held.replies)
        held.replies.clear()
        self._release(held, held.size)
