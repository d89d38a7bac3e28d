"""Active anti-entropy: replicas compare hash trees and exchange only the keys that differ.

Every partition's StoreServer keeps a `HashTree` over its keys, each key's leaf entry the
digest of its stored record (a record is a canonical encoding of the key's versions, so
two replicas holding the same versions hold the same bytes). A write updates the tree as
it commits, and a restarted StoreServer rebuilds it from its table.

Every `interval` seconds a node runs one exchange with one peer, taking its peers in
turn. An exchange, all on the transport thread and without blocking:

1. **roots**: ask the peer for its roots of every partition both of them replicate, and
   compare with ours: equal roots mean equal partitions;
2. **buckets**: for the partitions that differ, fetch the peer's leaf bucket hashes;
3. **keys**: for the buckets that differ, fetch the peer's keys and digests;
4. **repair** at most `max_keys` of the keys that differ: the peer's state of each is
   read and merged here, and ours is merged there (versions merge as a join, so the
   order of merges does not matter and both sides end equal).

Keys past `max_keys` wait for the next exchange: that bounds the work and the traffic of
one exchange, and `interval` bounds how often one runs. A node restarted empty is thus
refilled from its peers at up to `max_keys` keys per `interval`, whatever is read.

`answer` serves the peer's side of steps 1 to 3 (RPC op ``aae``); step 4 uses the
replicas' ordinary `read` and `merge` operations.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from kvactors.core.hashtree import HashTree, PartitionTrees
from kvactors.core.ops import MergeKey, ReadKey
from kvactors.core.placement import RingHolder
from kvactors.core.versions import KeyState
from kvactors.errors import BadRequestError, KVActorsError
from kvactors.replication.channel import IGNORE_ANSWERS, ReplicaChannel

__all__ = ["AAE", "AntiEntropy", "AntiEntropyStats", "answer"]

logger = logging.getLogger(__name__)

AAE: Final = "aae"
"""The RPC op of the tree steps of an exchange."""

# Partitions whose buckets one `buckets` call fetches: 64 x 64 hashes, about 40 KB.
_PARTITIONS_PER_CALL = 64
# Partitions one exchange compares past their roots. Under a steady write load every
# partition's root differs for a moment (writes in flight), so an unbounded exchange would
# fetch every partition's buckets every interval; the cursor walks on from exchange to
# exchange, so every partition still gets its turn.
_PARTITIONS_PER_EXCHANGE = 512


# -- the serving side ---------------------------------------------------------------------


def answer(trees: PartitionTrees, args: dict[str, Any]) -> dict[str, Any]:
    """The peer's side of an exchange's tree steps; BadRequestError on a malformed call."""
    step = args.get("step")
    if step == "roots":
        partitions = _partition_list(trees, args.get("partitions"))
        return {"roots": [_root(trees.get(p)) for p in partitions]}
    if step == "buckets":
        partitions = _partition_list(trees, args.get("partitions"))
        return {"buckets": [_leaves(trees.get(p)) for p in partitions]}
    if step == "keys":
        wanted = args.get("wanted")
        if not isinstance(wanted, list):
            raise BadRequestError("an aae keys call needs wanted: [[partition, [bucket...]]...]")
        return {"keys": [_bucket_keys(trees, item) for item in wanted]}
    raise BadRequestError(f"unknown aae step {step!r}")


def _partition_list(trees: PartitionTrees, raw: object) -> list[int]:
    count = len(trees)
    if not isinstance(raw, list) or not all(type(p) is int and 0 <= p < count for p in raw):
        raise BadRequestError(f"an aae call needs a list of partitions below {count}")
    return raw


def _root(tree: HashTree | None) -> int | None:
    return None if tree is None else tree.root()


def _leaves(tree: HashTree | None) -> list[int] | None:
    return None if tree is None else list(tree.level(tree.depth))


def _bucket_keys(trees: PartitionTrees, item: object) -> list[list[bytes]] | None:
    match item:
        case [int(partition), list(buckets)] if type(partition) is int and 0 <= partition < len(
            trees
        ):
            tree = trees.get(partition)
            if tree is None:
                return None
            if not all(type(b) is int and 0 <= b < tree.leaf_count for b in buckets):
                raise BadRequestError(f"buckets of partition {partition} out of range")
            return [[key, digest] for b in buckets for key, digest in tree.bucket_keys(b).items()]
    raise BadRequestError("an aae keys call needs wanted: [[partition, [bucket...]]...]")


# -- the initiating side ------------------------------------------------------------------


@dataclass(slots=True)
class AntiEntropyStats:
    exchanges: int = 0
    failed_exchanges: int = 0
    partitions_differing: int = 0
    keys_repaired: int = 0
    """Keys whose states were exchanged because the replicas' digests differed."""
    keys_deferred: int = 0
    """Differing keys left for a later exchange (past `max_keys`)."""


class AntiEntropy:
    """Runs one exchange at a time with the node's peers in turn, from the transport's
    tick. `interval` <= 0 turns it off."""

    def __init__(
        self,
        me: str,
        trees: PartitionTrees,
        ring: RingHolder,
        channel: ReplicaChannel,
        *,
        interval: float,
        max_keys: int,
    ) -> None:
        self._me = me
        self._trees = trees
        self._ring = ring
        self._channel = channel
        self._interval = interval
        self._max_keys = max_keys
        self._running: _Exchange | None = None
        self._next_at = 0.0
        self._turn = 0
        self._cursor = 0  # the partition the next exchange's comparison starts from
        self.stats = AntiEntropyStats()

    def on_tick(self, now: float) -> None:
        if self._interval <= 0 or self._running is not None or now < self._next_at:
            return
        self._next_at = now + self._interval
        peer = self._next_peer()
        if peer is None:
            return
        name, endpoint, shared = peer
        self._running = _Exchange(self, name, endpoint, shared)
        self._running.start()

    def exchange_now(
        self,
        peer: str,
        endpoint: str,
        partitions: list[int],
        then: Callable[[KVActorsError | None], None],
    ) -> None:
        """One exchange over `partitions` with `peer`, outside the periodic schedule (a
        joining node catching up on what its pull missed); `then` hears how it ended.
        It compares at most `_PARTITIONS_PER_EXCHANGE` partitions and repairs at most
        `max_keys` keys: call again for the rest."""
        _Exchange(self, peer, endpoint, partitions, then).start()

    def _next_peer(self) -> tuple[str, str, list[int]] | None:
        """The next peer in turn that shares a partition with this node, and those
        partitions."""
        snapshot = self._ring.current
        peers = sorted(name for name in snapshot.endpoints if name != self._me)
        for _ in range(len(peers)):
            name = peers[self._turn % len(peers)]
            self._turn += 1
            shared = [
                p
                for p, replicas in enumerate(snapshot.replica_sets)
                if self._me in replicas and name in replicas
            ]
            endpoint = snapshot.endpoint_of(name)
            if shared and endpoint is not None:
                return name, endpoint, shared
        return None

    def _finished(self, exchange: _Exchange, error: KVActorsError | None) -> None:
        if exchange.then is not None:
            exchange.then(error)
            return
        if exchange is not self._running:
            return
        self._running = None
        if error is None:
            self.stats.exchanges += 1
        else:
            self.stats.failed_exchanges += 1
            logger.debug("anti-entropy exchange with %s failed: %s", exchange.peer, error)


class _Exchange:
    """One exchange with one peer: the steps of the module docstring, each a callback."""

    def __init__(
        self,
        owner: AntiEntropy,
        peer: str,
        endpoint: str,
        shared: list[int],
        then: Callable[[KVActorsError | None], None] | None = None,
    ):
        self._owner = owner
        self.then = then
        self._trees = owner._trees
        self._channel = owner._channel
        self.peer = peer
        self._endpoint = endpoint
        self._shared = shared
        self._waiting = 0  # repair operations not answered yet
        self._failed: KVActorsError | None = None
        self._differing: list[int] = []  # partitions left to compare, past this slice
        self._partitions: list[int] = []  # this slice's partitions
        self._wanted: list[list[Any]] = []  # this slice's [partition, [bucket...]]
        self._budget = 0  # keys this exchange may still repair

    def start(self) -> None:
        self._call({"step": "roots", "partitions": self._shared}, self._on_roots)

    def _call(self, args: dict[str, Any], then: Callable[[dict[str, Any]], None]) -> None:
        def settle(result: Any, error: KVActorsError | None) -> None:
            if error is None and not isinstance(result, dict):
                error = BadRequestError(f"{self.peer} answered {result!r:.80}")
            if error is not None:
                self._owner._finished(self, error)
                return
            try:
                then(result)
            except (ValueError, TypeError, KeyError) as exc:
                self._owner._finished(self, BadRequestError(f"{self.peer}: {exc!r}"))

        self._channel.call_peer(self._endpoint, AAE, args, settle)

    def _on_roots(self, result: dict[str, Any]) -> None:
        roots = result["roots"]
        differing = [
            p
            for p, root in zip(self._shared, roots, strict=True)
            if root is not None and root != _root(self._trees.get(p))
        ]
        self._owner.stats.partitions_differing += len(differing)
        cursor = self._owner._cursor
        differing.sort(key=lambda p: (p < cursor, p))  # from the cursor on, then wrap
        self._differing = differing[:_PARTITIONS_PER_EXCHANGE]
        self._budget = self._owner._max_keys
        self._next_slice()

    def _next_slice(self) -> None:
        """The next few differing partitions, while the key budget lasts."""
        if not self._differing or self._budget <= 0:
            self._owner._finished(self, None)
            return
        self._partitions = self._differing[:_PARTITIONS_PER_CALL]
        del self._differing[:_PARTITIONS_PER_CALL]
        self._owner._cursor = self._partitions[-1] + 1
        self._call({"step": "buckets", "partitions": self._partitions}, self._on_buckets)

    def _on_buckets(self, result: dict[str, Any]) -> None:
        wanted = []
        for partition, theirs in zip(self._partitions, result["buckets"], strict=True):
            mine = _leaves(self._trees.get(partition))
            if theirs is None or mine is None:
                continue  # one side stopped serving the partition meanwhile
            buckets = [b for b, (a, z) in enumerate(zip(mine, theirs, strict=True)) if a != z]
            if buckets:
                wanted.append([partition, buckets])
        if not wanted:
            self._next_slice()
            return
        self._wanted = wanted
        self._call({"step": "keys", "wanted": wanted}, self._on_keys)

    def _on_keys(self, result: dict[str, Any]) -> None:
        differing: list[tuple[int, bytes]] = []
        for (partition, buckets), theirs in zip(self._wanted, result["keys"], strict=True):
            tree = self._trees.get(partition)
            if theirs is None or tree is None:
                continue
            mine = {k: d for b in buckets for k, d in tree.bucket_keys(b).items()}
            their_digests = {bytes(key): bytes(digest) for key, digest in theirs}
            for key in mine.keys() | their_digests.keys():
                if mine.get(key) != their_digests.get(key):
                    differing.append((partition, key))
        repairing = differing[: self._budget]
        self._budget -= len(repairing)
        if len(differing) > len(repairing):  # the rest wait for the next exchange
            self._owner.stats.keys_deferred += len(differing) - len(repairing)
            self._differing.clear()
        self._repair(repairing)

    def _repair(self, keys: Sequence[tuple[int, bytes]]) -> None:
        """Both ways for every key: their state merged here, ours merged there."""
        if not keys:
            self._next_slice()
            return
        self._owner.stats.keys_repaired += len(keys)
        self._waiting = 2 * len(keys)
        channel, me = self._channel, self._channel.me
        for partition, key in keys:
            read = ReadKey(key)
            channel.send(self.peer, partition, read, self, ("theirs", partition, key))
            channel.send(me, partition, read, self, ("mine", partition, key))

    # -- ReplicaTarget: the repair's answers --------------------------------------------

    def replica_done(self, tag: Any, result: Any) -> None:
        kind, partition, key = tag
        if isinstance(result, KeyState) and not result.is_empty:
            # Each side's state to the other side; a merge lost is the next exchange's.
            other = self._channel.me if kind == "theirs" else self.peer
            self._channel.send(other, partition, MergeKey(key, result), IGNORE_ANSWERS, None)
        self._settled()

    def replica_failed(self, tag: Any, error: KVActorsError) -> None:
        self._failed = error
        self._settled()

    def _settled(self) -> None:
        self._waiting -= 1
        if self._waiting > 0:
            return
        if self._failed is not None:
            self._owner._finished(self, self._failed)
        else:
            self._next_slice()
