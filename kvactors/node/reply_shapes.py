"""Reply shapes: the reply to a client request once each of its keys has its outcome
(`reply_for`), a get_many's cut to one frame (`REPLY_FULL`), and the fields of one key's
read (`read_fields`). The frontend answers with them; runs on the transport thread."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kvactors.core.versions import KeyState
from kvactors.errors import KVActorsError, TooLargeError
from kvactors.net.protocol import ItemResult, Op, Reply, Request, WireFormat
from kvactors.net.replies import (
    delete_reply,
    get_many_reply,
    item_failed,
    item_written,
    put_many_reply,
    put_reply,
)
from kvactors.replication.coordinator import ReadResult

__all__ = ["REPLY_FULL", "read_fields", "reply_for"]

REPLY_FULL = (
    "the reply is full: this key's value did not fit the frame with those before it; "
    "ask for it again in another request"
)
_ITEM_OVERHEAD = 64
"""Bytes an item of a get_many reply takes besides its value, siblings and context
(generous: map keys, type tags, lengths)."""


def reply_for(
    request: Request, results: Sequence[Any], max_frame_bytes: int | None = None
) -> Reply:
    """The reply once every key has its outcome; a single key's error is the reply's.
    A get_many's items past what fits `max_frame_bytes` are answered `too_large`."""
    op, request_id = request.op, request.request_id
    if op is Op.GET_MANY:
        siblings = request.siblings
        items = [
            item_failed(r)
            if isinstance(r, KVActorsError)
            else ItemResult(None, *read_fields(r, siblings))
            for r in results
        ]
        if max_frame_bytes is not None:
            items = _fit_frame(items, max_frame_bytes, request.fmt)
        return get_many_reply(request_id, items)
    if op is Op.PUT_MANY:
        return put_many_reply(
            request_id,
            [item_failed(r) if isinstance(r, KVActorsError) else item_written() for r in results],
        )
    return _single_reply(request, results)


def _fit_frame(items: list[ItemResult], max_frame_bytes: int, fmt: WireFormat) -> list[ItemResult]:
    """The items that fit one reply frame, in order; each after them is answered
    `too_large` (REPLY_FULL), for the client to ask again. The first always fits: a frame
    holds the largest value. JSON's budget is a sixth of the frame (a byte of a string
    may take six as an escape)."""
    budget = max_frame_bytes // 6 if fmt is WireFormat.JSON else max_frame_bytes - 4096
    used = 0
    for index, item in enumerate(items):
        used += _ITEM_OVERHEAD + len(item.value_bytes or b"") + len(item.context or b"")
        if item.siblings:
            used += sum(map(len, item.siblings))
        if used > budget and index > 0:
            full = item_failed(TooLargeError(REPLY_FULL))
            return [*items[:index], *([full] * (len(items) - index))]
    return items


def _single_reply(request: Request, results: Sequence[Any]) -> Reply:
    """The reply to a request of one key: its outcome, or its error raised."""
    op, request_id = request.op, request.request_id
    outcome = results[0]
    if isinstance(outcome, KVActorsError):
        raise outcome
    if op is Op.GET:
        if type(outcome) is tuple:  # a key only this node holds: (value, context)
            value, context = outcome
            return Reply(request_id, value is not None, value, None, context)
        return Reply(request_id, *read_fields(outcome, request.siblings))
    if op is Op.PUT:
        return put_reply(request_id, conflict=outcome.siblings > 1)
    return delete_reply(request_id, outcome.existed)


_ReadFields = tuple[bool, bytes | None, tuple[bytes, ...] | None, bytes]
"""(found, value, siblings, context): the fields a get's reply and a get_many's item share."""


def read_fields(outcome: Any, siblings: bool) -> _ReadFields:
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
