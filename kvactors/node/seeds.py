"""Seeds: the client endpoints a joining node was given, turned into peer endpoints.

`--join` takes any member's client endpoint, but node-to-node traffic goes to the peer
plane, which the client endpoint refuses. So the first call to a seed asks it, over the
client plane, for its `status`; the answer names its `peer_endpoint`, and from then on
calls meant for the seed go there. Until a seed has answered, calls to it fail at once
as unreachable (gossip tries again on its next tick). Runs on the transport thread.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable

import msgpack

from kvactors.core.membership import MAX_ENDPOINT_LENGTH

__all__ = ["Seeds"]

logger = logging.getLogger(__name__)

_ASK_INTERVAL = 0.5
"""Seconds between two status requests to a seed that has not answered yet."""


class Seeds:
    """Where calls meant for each seed go (`route`), learned from the seeds' answers."""

    def __init__(
        self,
        client_endpoints: Iterable[str],
        send: Callable[[str, list[bytes]], bool],
        clock: Callable[[], float],
    ) -> None:
        self._unresolved = set(client_endpoints)
        self._peer_of: dict[str, str] = {}
        self._send = send
        self._clock = clock
        self._asked: dict[str, float] = {}
        self._ids = itertools.count(1)

    def route(self, endpoint: str) -> str | None:
        """The endpoint to call for `endpoint`: itself unless it is a seed's client
        endpoint; None while that seed has not told its peer endpoint yet."""
        if endpoint not in self._unresolved:
            return self._peer_of.get(endpoint, endpoint)
        now = self._clock()
        if now - self._asked.get(endpoint, -_ASK_INTERVAL) >= _ASK_INTERVAL:
            self._asked[endpoint] = now
            request = msgpack.packb({"op": "status", "id": next(self._ids)})
            self._send(endpoint, [request])
        return None

    def on_reply(self, endpoint: str, frames: list[bytes]) -> bool:
        """Take a seed's answer; False if `frames` did not come from a seed asked."""
        if endpoint not in self._asked:
            return False
        peer = _peer_endpoint(frames)
        if peer is None:
            logger.warning("seed %s answered without a peer endpoint", endpoint)
        elif endpoint in self._unresolved:
            self._unresolved.discard(endpoint)
            self._peer_of[endpoint] = peer
            logger.info("seed %s serves its peers on %s", endpoint, peer)
        return True


def _peer_endpoint(frames: list[bytes]) -> str | None:
    if len(frames) != 1:
        return None
    try:
        reply = msgpack.unpackb(frames[0], raw=False)
    except ValueError:  # msgpack's errors are ValueErrors
        return None
    status = reply.get("status") if isinstance(reply, dict) else None
    peer = status.get("peer_endpoint") if isinstance(status, dict) else None
    if not isinstance(peer, str) or not peer or len(peer.encode()) > MAX_ENDPOINT_LENGTH:
        return None
    return peer
