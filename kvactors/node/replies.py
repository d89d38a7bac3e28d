"""Replies: client requests' answers, shaped from their keys' outcomes and sent.

`reply_for` turns the outcomes of a request's keys into its `Reply`; `Replies` sends
frames to the node's clients through the transport, counting the errors it sends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kvactors.core.versions import KeyState
from kvactors.errors import KVActorsError
from kvactors.net.protocol import ItemResult, Op, Reply, Request, WireFormat
from kvactors.net.replies import (
    delete_reply,
    encode_error,
    encode_reply,
    get_many_reply,
    item_failed,
    item_written,
    put_many_reply,
    put_reply,
)
from kvactors.replication.coordinator import ReadResult

__all__ = ["Replies", "reply_for"]


class Replies:
    """Sends frames to clients (through `send`, the transport's), counting errors."""

    __slots__ = ("errors", "send")

    def __init__(self, send: Callable[[list[bytes]], None]) -> None:
        self.send = send
        self.errors = 0

    def reply(self, envelope: list[bytes], request: Request, reply: Reply) -> None:
        self.send([*envelope, encode_reply(reply, request.fmt)])

    def error(
        self, envelope: list[bytes], error: KVActorsError, request_id: Any, fmt: WireFormat
    ) -> None:
        self.errors += 1
        self.send([*envelope, encode_error(error, request_id, fmt)])


def reply_for(request: Request, results: list[Any]) -> Reply:
    """The reply once every key has its outcome; a single key's error is the reply's."""
    op, request_id = request.op, request.request_id
    if op is Op.GET_MANY:
        siblings = request.siblings
        return get_many_reply(
            request_id,
            [
                item_failed(r)
                if isinstance(r, KVActorsError)
                else ItemResult(None, *_read(r, siblings))
                for r in results
            ],
        )
    if op is Op.PUT_MANY:
        return put_many_reply(
            request_id,
            [item_failed(r) if isinstance(r, KVActorsError) else item_written() for r in results],
        )
    outcome = results[0]
    if isinstance(outcome, KVActorsError):
        raise outcome
    if op is Op.GET:
        if type(outcome) is tuple:  # a key only this node holds: (value, context)
            value, context = outcome
            return Reply(request_id, value is not None, value, None, context)
        return Reply(request_id, *_read(outcome, request.siblings))
    if op is Op.PUT:
        return put_reply(request_id, conflict=outcome.siblings > 1)
    return delete_reply(request_id, outcome.existed)


_ReadFields = tuple[bool, bytes | None, tuple[bytes, ...] | None, bytes]
"""(found, value, siblings, context): the fields a get's reply and a get_many's item share."""


def _read(outcome: Any, siblings: bool) -> _ReadFields:
    """One key's read: a `ReadResult`, or the (value, context) pair of a key only this
    node holds."""
    if type(outcome) is tuple:
        value, context = outcome
        return value is not None, value, None, context
    assert isinstance(outcome, ReadResult)
    state: KeyState = outcome.state
    # Even a key never written has a context (an empty clock): a first write that carries
    # it supersedes nothing, so two concurrent first writes are both kept.
    context = state.encoded_context()
    if siblings:
        values = tuple(state.live_values())
        return bool(values), None, values, context
    winner = state.winner
    if winner is None or winner.value is None:
        return False, None, None, context
    return True, winner.value, None, context
