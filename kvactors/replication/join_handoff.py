"""Join handoff: a joining node pulls its partitions before it owns them; old owners
drop the copies they no longer need after the switch.

A new member joins as JOINING and owns nothing: the ring of its snapshot is the ring of
the owners, and `RingSnapshot.next_ring` the ring with it (riak_core keeps a "next
owner" per partition the same way). Writes reach it already (the coordinators send them
to the next owners too, without counting them towards W). Meanwhile it pulls every
partition it will replicate from a current replica (`pull_sources` picks the source,
spreading the work, preferring replicas that stay), up to `PARTITIONS_PER_PULL`
partitions and `batch_keys` keys per call, the next call for a partition only once the
previous one's keys are merged here (flow control), at most `concurrency` calls open at
a time. A pull that fails is retried after `retry` seconds from where it stopped (the
cursor is the last key merged), from another source if the first is gone.

A write coordinated by a node that has not heard of the join yet reaches the old
replicas only, and may land behind the pull's cursor. So once every partition is pulled,
and at least `settle` seconds after the pull began (the joiner told every member of
itself when it made contact; the wait covers a lost message),
the node runs anti-entropy exchanges over the pulled partitions with their sources:
only keys whose hashes differ move. Rounds repeat until one repairs nothing (at most
`_CATCH_UP_ROUNDS`). Then the node announces itself ALIVE and the ring switches to it.

After the switch, the members a partition's preference list lost drop their copies
(`stale_copies.StaleCopies`).

Everything runs on the transport thread, from its tick; every step is a callback. The
source side of a pull (`pull.serve_pull`, RPC op ``pull``) runs on the source's.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kvactors.core.handoff import pull_sources
from kvactors.core.membership import MemberStatus
from kvactors.core.ops import MergeMany
from kvactors.core.placement import RingHolder, RingSnapshot
from kvactors.core.versions import state_from_wire
from kvactors.errors import BadRequestError, KVActorsError
from kvactors.replication.channel import ReplicaChannel
from kvactors.replication.pull import PARTITIONS_PER_PULL, PULL

__all__ = ["CatchUp", "JoinHandoff", "Repairs"]

logger = logging.getLogger(__name__)

# Catch-up rounds after the pull: under a steady load, writes in flight make some keys
# differ in every round, so the rounds stop at this many even if the last repaired some.
_CATCH_UP_ROUNDS = 3
# Partitions one catch-up exchange compares (the anti-entropy exchange's own bound).
_CATCH_UP_PARTITIONS = 512

CatchUp = Callable[[str, str, list[int], Callable[[KVActorsError | None], None]], None]
"""Runs one anti-entropy exchange: (peer, endpoint, partitions, then)."""

Repairs = Callable[[], int]
"""Keys anti-entropy has repaired so far (a counter)."""


# -- the joining side -----------------------------------------------------------------------


@dataclass(slots=True)
class _Progress:
    """One partition's pull."""

    partition: int
    source: str
    cursor: bytes = b""
    keys: int = 0
    bytes: int = 0
    started: float = 0.0
    left: int | None = None  # keys the source had left after the last answer
    call: list[int] | None = None  # [partitions of its pull call still in flight]
    merging: int = 0  # merges of the last answer not acknowledged yet
    failed: bool = False


@dataclass(slots=True)
class JoinStats:
    partitions: int = 0
    done: int = 0
    keys_received: int = 0
    bytes_received: int = 0
    failed_calls: int = 0


class JoinHandoff:
    """Pulls the partitions a joining node will own; `finished` once all are here."""

    def __init__(
        self,
        me: str,
        ring: RingHolder,
        channel: ReplicaChannel,
        *,
        replicas: int,
        concurrency: int,
        batch_keys: int = 1000,
        retry: float = 1.0,
        catch_up: tuple[CatchUp, Repairs] | None = None,
        settle: float = 2.0,
        rate: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._me = me
        # A token bucket of keys: the pull takes at most `rate` keys a second (0: no
        # bound), so that it leaves the clients most of the machine.
        self._rate = rate
        self._tokens = float(batch_keys)
        self._refilled = clock()
        self._catch_up = catch_up
        self._settle = settle
        self._began: float | None = None
        self._pulled_from: defaultdict[str, list[int]] = defaultdict(list)
        self._round = 0
        self._round_running = 0  # exchanges of the current round not finished
        self._round_failed = False
        self._round_repairs = 0
        self._round_at = 0.0  # not before: a failed round waits `retry`
        self._caught_up = catch_up is None
        self._ring = ring
        self._channel = channel
        self._replicas = replicas
        self._concurrency = concurrency
        self._batch_keys = batch_keys
        self._retry = retry
        self._clock = clock
        self._planned: int | None = None  # the snapshot version of the plan
        self._wanted: dict[int, _Progress] = {}  # partitions still to pull
        self._done: set[int] = set()
        self._in_flight: set[int] = set()
        self._open_calls = 0  # pull calls whose partitions are not all settled yet
        self._retry_at: dict[str, float] = {}
        self.stats = JoinStats()

    @property
    def pulled(self) -> bool:
        """Every partition of the current plan is here (and a plan was made)."""
        return self._planned is not None and not self._wanted and not self._in_flight

    @property
    def finished(self) -> bool:
        """Pulled, and caught up on what the pull may have missed; or nothing to pull."""
        snapshot = self._ring.current
        if snapshot.ring.members == (self._me,) and not snapshot.detached:
            # In contact, but nobody owns anything yet (every member is joining): there
            # is nothing to pull, and somebody must own the keys.
            return True
        return self.pulled and self._caught_up

    def on_tick(self) -> None:
        self._pump()

    def _pump(self) -> None:
        """Plan again if the ring changed, and start what the concurrency allows: from
        the tick, and as soon as a pull settles (a partition's next batch, or the next
        partition, need not wait for a tick)."""
        snapshot = self._ring.current
        if not _joining(snapshot, self._me):
            return
        if snapshot.version != self._planned:
            self._replan(snapshot)
        self._start_calls(snapshot)
        if self.pulled and not self._caught_up:
            self._run_catch_up(snapshot)

    def _run_catch_up(self, snapshot: RingSnapshot) -> None:
        assert self._catch_up is not None and self._began is not None
        exchange, repairs = self._catch_up
        now = self._clock()
        if self._round_running or now < max(self._began + self._settle, self._round_at):
            return
        if self._round and not self._round_failed:
            repaired = repairs() - self._round_repairs
            logger.info("joining: catch-up round %d repaired %d keys", self._round, repaired)
            if repaired == 0 or self._round >= _CATCH_UP_ROUNDS:
                self._caught_up = True
                return
        self._round += 1
        self._round_failed = False
        self._round_repairs = repairs()
        for source, partitions in sorted(self._pulled_from.items()):
            endpoint = snapshot.endpoint_of(source)
            if endpoint is None:
                continue  # gone; what it alone had, anti-entropy or hints bring later
            for start in range(0, len(partitions), _CATCH_UP_PARTITIONS):
                self._round_running += 1
                chunk = partitions[start : start + _CATCH_UP_PARTITIONS]
                exchange(source, endpoint, chunk, self._exchange_ended)

    def _exchange_ended(self, error: KVActorsError | None) -> None:
        self._round_running -= 1
        if error is not None:
            self._round_failed = True
            self._round -= 1  # the round is run again
            self._round_at = self._clock() + self._retry
            logger.warning("joining: a catch-up exchange failed, again soon: %s", error)
        if not self._round_running:
            self._pump()

    def _replan(self, snapshot: RingSnapshot) -> None:
        assert snapshot.next_ring is not None
        alive = frozenset(
            m.name
            for m in snapshot.members
            if m.status is MemberStatus.ALIVE and m.name in snapshot.ring.members
        )
        sources = pull_sources(
            snapshot.ring, snapshot.next_ring, self._replicas, joiner=self._me, alive=alive
        )
        first = self._planned is None
        self._planned = snapshot.version
        if first:
            self._began = self._clock()
        for partition, source in sources.items():
            if partition in self._done:
                continue
            progress = self._wanted.get(partition)
            if progress is None:
                self._wanted[partition] = _Progress(partition, source)
            elif partition not in self._in_flight:
                progress.source = source  # resumes from its cursor
        for partition in [p for p in self._wanted if p not in sources]:
            del self._wanted[partition]  # no longer ours to pull
        self.stats.partitions = len(self._done) + len(self._wanted)
        if first:
            logger.info(
                "joining: pulling %d partitions from %s",
                len(sources),
                ", ".join(sorted(set(sources.values()))) or "nobody",
            )

    def _start_calls(self, snapshot: RingSnapshot) -> None:
        """Up to `concurrency` pull calls open at once, each for up to 64 partitions of
        one source, taking the sources in turn, while the rate allows."""
        if self._open_calls >= self._concurrency:
            return
        now = self._clock()
        if self._rate > 0:
            elapsed, self._refilled = now - self._refilled, now
            self._tokens = min(self._tokens + elapsed * self._rate, float(self._batch_keys))
            if self._tokens <= 0:
                return  # called for every settled partition: no scan while the rate waits
        by_source: defaultdict[str, list[_Progress]] = defaultdict(list)
        for progress in self._wanted.values():
            if progress.partition in self._in_flight:
                continue
            if self._retry_at.get(progress.source, 0.0) > now:
                continue
            by_source[progress.source].append(progress)
        chunks = [
            [
                (source, chosen[start : start + PARTITIONS_PER_PULL])
                for start in range(0, len(chosen), PARTITIONS_PER_PULL)
            ]
            for source, chosen in by_source.items()
            if snapshot.endpoint_of(source) is not None  # gone: the next plan picks another
        ]
        for source, chunk in _in_turn(chunks):
            if self._open_calls >= self._concurrency or (self._rate > 0 and self._tokens <= 0):
                return
            if self._rate > 0:
                self._tokens -= self._batch_keys  # reserved; what is not used comes back
            endpoint = snapshot.endpoint_of(source)
            assert endpoint is not None
            self._call(source, endpoint, chunk, now)

    def _call(self, source: str, endpoint: str, chosen: list[_Progress], now: float) -> None:
        self._open_calls += 1
        call = [len(chosen)]
        for progress in chosen:
            self._in_flight.add(progress.partition)
            progress.call = call
            if not progress.started:
                progress.started = now
        args = {
            "partitions": [[p.partition, p.cursor] for p in chosen],
            "max_keys": self._batch_keys,
        }

        def settle(result: Any, error: KVActorsError | None) -> None:
            if error is None:
                try:
                    self._take(source, chosen, result)
                    return
                except (ValueError, TypeError, KeyError) as exc:
                    error = BadRequestError(f"{source} answered a pull badly: {exc}")
            self._failed(source, chosen, error)

        self._channel.call_peer(endpoint, PULL, args, settle)

    def _take(self, source: str, chosen: list[_Progress], result: Any) -> None:
        parts = {int(p): (items, int(left)) for p, items, left in result["parts"]}
        decoded = []
        for progress in chosen:
            items, left = parts.get(progress.partition, ([], -1))
            states = [(bytes(key), state_from_wire(wire)) for key, wire in items]
            decoded.append((progress, states, left == 0))
            if left >= 0:
                progress.left = left
        if self._rate > 0:
            self._tokens += self._batch_keys - sum(len(states) for _, states, _ in decoded)
        for progress, states, done in decoded:
            if not states:
                self._settled(progress, b"", done)
                continue
            # One local merge for the partition's whole answer: its keys settle together.
            progress.merging = 1
            size = sum(len(key) for key, _ in states) + sum(
                len(v.value) for _, state in states for v in state.versions if v.value
            )
            tag = (progress, states[-1][0], done, len(states), size)
            merge = MergeMany(states)
            self._channel.send(self._me, progress.partition, merge, self, tag)
        self._pump()

    def _failed(self, source: str, chosen: list[_Progress], error: KVActorsError) -> None:
        self.stats.failed_calls += 1
        if self._rate > 0:
            self._tokens += self._batch_keys  # nothing came: the reservation comes back
        self._retry_at[source] = self._clock() + self._retry
        for progress in chosen:
            self._release(progress)
        logger.warning(
            "joining: pulling %d partitions from %s waits %.1f s: %s",
            len(chosen),
            source,
            self._retry,
            error,
        )

    # -- the local merges' answers (ReplicaTarget) ------------------------------------

    def replica_done(self, tag: Any, result: Any) -> None:
        progress, last, done, keys, size = tag
        progress.keys += keys
        progress.bytes += size
        self.stats.keys_received += keys
        self.stats.bytes_received += size
        progress.merging -= 1
        if progress.merging == 0 and not progress.failed:
            self._settled(progress, last, done)
            self._pump()
        elif progress.merging == 0:
            progress.failed = False
            self._release(progress)  # again from the old cursor

    def replica_failed(self, tag: Any, error: KVActorsError) -> None:
        progress = tag[0]
        progress.failed = True
        progress.merging -= 1
        if progress.merging == 0:
            progress.failed = False
            self._release(progress)
            logger.warning("joining: partition %d waits: %s", progress.partition, error)

    def _release(self, progress: _Progress) -> None:
        """The partition's pull is settled (done, or failed): its call may close."""
        self._in_flight.discard(progress.partition)
        call, progress.call = progress.call, None
        if call is not None:
            call[0] -= 1
            if call[0] == 0:
                self._open_calls -= 1

    def _settled(self, progress: _Progress, last: bytes, done: bool) -> None:
        self._release(progress)
        if last:
            progress.cursor = last
        if not done:
            return
        if self._wanted.pop(progress.partition, None) is not None:
            self._done.add(progress.partition)
            self._pulled_from[progress.source].append(progress.partition)
            self.stats.done += 1
            if not self._wanted and not self._in_flight:
                logger.info(
                    "joining: every partition pulled (%d partitions, %d keys)",
                    len(self._done),
                    self.stats.keys_received,
                )

    def status(self) -> dict[str, Any]:
        now = self._clock()
        running = [self._wanted[p] for p in sorted(self._in_flight) if p in self._wanted]
        return {
            "partitions": self.stats.partitions,
            "done": self.stats.done,
            "waiting": len(self._wanted) - len(running),
            "keys_received": self.stats.keys_received,
            "bytes_received": self.stats.bytes_received,
            "failed_calls": self.stats.failed_calls,
            "catch_up_rounds": self._round,
            "caught_up": self._caught_up,
            "running": [_report(p, self._me, now) for p in running],
        }


def _in_turn(chunks: list[list[tuple[str, list[_Progress]]]]) -> list[tuple[str, list[_Progress]]]:
    """The sources' chunks interleaved: one of each source in turn."""
    turns = itertools.zip_longest(*chunks)
    return [chunk for turn in turns for chunk in turn if chunk is not None]


def _report(progress: _Progress, me: str, now: float) -> dict[str, Any]:
    elapsed = max(now - progress.started, 1e-3)
    rate = progress.keys / elapsed
    return {
        "partition": progress.partition,
        "from": progress.source,
        "to": me,
        "keys_sent": progress.keys,
        "bytes_sent": progress.bytes,
        "keys_per_second": round(rate, 1),
        "eta_seconds": None
        if progress.left is None or not rate
        else round(progress.left / rate, 1),
    }


def _joining(snapshot: RingSnapshot, me: str) -> bool:
    """This node joins a cluster that has other owners (not while it serves alone)."""
    if snapshot.next_ring is None or me in snapshot.ring.members:
        return False
    return me in snapshot.joining
