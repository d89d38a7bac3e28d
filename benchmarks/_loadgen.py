"""The load a benchmark puts on kvactors nodes, and what it measures: `DealerLoad`.

One DEALER per node endpoint, driven from the benchmark's own process. Requests carry an
id; replies may come back in any order. Closed loop: each reply is followed by the next
request, so a fixed number stay in flight (a throughput figure). Open loop: requests
leave on a fixed schedule whatever the replies do, and a request's latency runs from the
time it was *scheduled* to go, not from when the load generator got round to sending it,
so that a queue anywhere (the node, the machine, this process) shows in the figure.
"""

from __future__ import annotations

import collections
import math
import random
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgpack
import zmq

if TYPE_CHECKING:
    from _secure import Credentials

VALUE_BYTES = 100


@dataclass(frozen=True, slots=True)
class Measurement:
    """Replies counted in a window of `seconds`, with the latency of each, in seconds."""

    completed: int
    failed: int
    seconds: float
    latencies: list[float]
    missing: int = 0  # gets answered "found": false

    @property
    def rate(self) -> float:
        return self.completed / self.seconds

    @property
    def p50_ms(self) -> float:
        return percentile(self.latencies, 0.50) * 1000

    @property
    def p99_ms(self) -> float:
        return percentile(self.latencies, 0.99) * 1000


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile: the smallest value with at least `fraction` of the
    values at or below it; NaN when there are no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    """The median, NaN for no values (a row of a system that was not run)."""
    return statistics.median(values) if values else math.nan


def error_counts(errors: collections.Counter[str]) -> str:
    """'overloaded 12, timeout 3', the most frequent first; 'none' for no errors."""
    if not errors:
        return "none"
    return ", ".join(f"{code} {count:,}" for code, count in errors.most_common())


def split(total: int, parts: int) -> list[int]:
    """`total` spread as evenly as it goes over `parts` (11, 11, 10 for 32 over 3)."""
    return [total // parts + (1 if index < total % parts else 0) for index in range(parts)]


class KeyMaker:
    """Distinct keys that look random: a random part, then a counter that keeps them apart."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._count = 0

    def __call__(self) -> str:
        self._count += 1
        return f"{self._rng.getrandbits(48):012x}-{self._count}"


# The next operation of a mixed load: (is_read, key).
NextOperation = Callable[[], tuple[bool, str]]


class DealerLoad:
    """Load on kvactors nodes from this process: one DEALER per node endpoint.

    Ops: "put" (a new key each), "get" (a key an earlier put of this load wrote), "ping"
    (answered by the node's transport, touching no data), "mixed" (a get or a put of an
    existing key, as `mixed` chooses: a YCSB workload)."""

    def __init__(
        self,
        endpoints: list[str],
        rng: random.Random | None = None,
        secure: Credentials | None = None,
    ) -> None:
        self.rng = rng or random.Random()
        self.written: list[str] = []
        self.mixed: NextOperation | None = None
        # Failed replies by error code, over the load's life: why requests failed.
        self.errors: collections.Counter[str] = collections.Counter()
        self._sockets: list[zmq.Socket[bytes]] = []
        self._poller = zmq.Poller()
        for endpoint in endpoints:
            sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            if secure is not None:  # a CURVE client pinned to that node's key
                secure.apply(sock, endpoint)
            sock.connect(endpoint)
            self._poller.register(sock, zmq.POLLIN)
            self._sockets.append(sock)
        self._keys = KeyMaker(self.rng)
        self._value = b"v" * VALUE_BYTES
        self._next_id = 0
        # id -> (the time the latency runs from, the key, "put" / "get" / "ping")
        self._pending: dict[int, tuple[float, str, str]] = {}

    def close(self) -> None:
        for sock in self._sockets:
            sock.close()

    def _request(self, op: str) -> tuple[dict[str, Any], str, str]:
        """The request for `op`, its key and what kind of request it is."""
        if op == "mixed":
            assert self.mixed is not None, "set .mixed before a mixed load"
            is_read, key = self.mixed()
            if is_read:
                return {"op": "get", "key": key}, key, "get"
            return {"op": "put", "key": key, "value": self._value}, key, "update"
        if op == "put":
            key = self._keys()
            return {"op": "put", "key": key, "value": self._value}, key, "put"
        if op == "get":
            key = self.rng.choice(self.written)
            return {"op": "get", "key": key}, key, "get"
        return {"op": op}, "", op

    def _send(self, sock: zmq.Socket[bytes], op: str, stamp: float, key: str = "") -> None:
        self._next_id += 1
        request: dict[str, Any]
        if op == "load":
            request, kind = {"op": "put", "key": key, "value": self._value}, "load"
        else:
            request, key, kind = self._request(op)
        request["id"] = self._next_id
        self._pending[self._next_id] = (stamp, key, kind)
        sock.send(msgpack.packb(request))

    def _replies(self, timeout_ms: int) -> Iterator[tuple[zmq.Socket[bytes], dict[str, Any]]]:
        """Every reply ready within `timeout_ms`, with the socket it came on."""
        for sock, _ in self._poller.poll(timeout_ms):
            while True:
                try:
                    frame = sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                yield sock, msgpack.unpackb(frame)

    def _answered(self, reply: dict[str, Any]) -> tuple[float, bool, bool]:
        """(when the request's latency began, whether it succeeded, whether it was a get
        that found nothing), the request forgotten; an acknowledged put's key is kept."""
        stamp, key, kind = self._pending.pop(reply["id"])
        ok = bool(reply.get("ok"))
        if ok and kind == "put":
            self.written.append(key)
        if not ok:
            self.errors[str((reply.get("error") or {}).get("code", "no error code"))] += 1
        return stamp, ok, ok and kind == "get" and not reply.get("found")

    def closed_loop(self, op: str, inflight: int, warmup: float, seconds: float) -> Measurement:
        """Each reply is followed by the next request on the same socket, so `inflight`
        stay outstanding; replies during `seconds` after `warmup` are counted."""
        if op == "get" and not self.written:
            raise RuntimeError("no put succeeded, so there is nothing to read")
        started = time.perf_counter()
        measure_from = started + warmup
        deadline = measure_from + seconds
        for sock, share in zip(self._sockets, split(inflight, len(self._sockets)), strict=True):
            for _ in range(share):
                self._send(sock, op, time.perf_counter())
        latencies: list[float] = []
        failed = missing = 0
        while self._pending:
            answered = False
            for sock, reply in self._replies(1000):
                answered = True
                now = time.perf_counter()
                sent, ok, not_found = self._answered(reply)
                if measure_from <= now <= deadline:
                    if not ok:
                        failed += 1
                    else:
                        latencies.append(now - sent)
                        missing += not_found
                if now < deadline:
                    self._send(sock, op, now)
            if not answered and time.perf_counter() > deadline + 30:
                raise RuntimeError(f"{len(self._pending)} requests unanswered for 30 s")
        return Measurement(len(latencies), failed, seconds, latencies, missing)

    def put_all(self, keys: Sequence[str], inflight: int) -> Measurement:
        """A put of each of `keys` (100-byte values), `inflight` at a time: the records a
        mixed load then reads and updates."""
        started = time.perf_counter()
        remaining = iter(keys)
        latencies: list[float] = []
        failed = 0

        def send_next(sock: zmq.Socket[bytes]) -> None:
            key = next(remaining, None)
            if key is not None:
                self._send(sock, "load", time.perf_counter(), key)

        for index in range(inflight):
            send_next(self._sockets[index % len(self._sockets)])
        while self._pending:
            answered = False
            for sock, reply in self._replies(1000):
                answered = True
                sent, ok, _ = self._answered(reply)
                if ok:
                    latencies.append(time.perf_counter() - sent)
                else:
                    failed += 1
                send_next(sock)
            if not answered and time.perf_counter() > started + 600:
                raise RuntimeError(f"{len(self._pending)} loading puts unanswered")
        return Measurement(len(latencies), failed, time.perf_counter() - started, latencies)

    def open_loop(self, op: str, rate: float, seconds: float) -> Measurement:
        """Requests sent on a schedule of `rate` per second whatever the replies do, round
        robin over the sockets. Due requests go out at least every millisecond; each
        one's latency is counted from its scheduled time, so that a late send (the load
        generator or the machine falling behind) counts against the reply."""
        interval = 1.0 / rate
        started = time.perf_counter()
        end = started + seconds
        next_at = started
        sent_count = 0
        latencies: list[float] = []
        failed = 0
        while True:
            now = time.perf_counter()
            while next_at <= now and next_at < end:
                self._send(self._sockets[sent_count % len(self._sockets)], op, next_at)
                sent_count += 1
                next_at = started + sent_count * interval
            if next_at >= end and not self._pending:
                break
            wait_ms = max(1, math.ceil((next_at - now) * 1000)) if next_at < end else 1000
            answered = False
            for _, reply in self._replies(wait_ms):
                answered = True
                received = time.perf_counter()
                scheduled, ok, _ = self._answered(reply)
                if ok:
                    latencies.append(received - scheduled)
                else:
                    failed += 1
            if not answered and next_at >= end and time.perf_counter() > end + 30:
                raise RuntimeError(f"{len(self._pending)} requests unanswered for 30 s")
        return Measurement(len(latencies), failed, time.perf_counter() - started, latencies)

    def copies_probe(self) -> str:
        """What the cluster says about replication: a put with w=3 succeeds only where a
        key has three replicas, and the refusal names how many it has."""
        sock = self._sockets[0]
        self._next_id += 1
        request = {"op": "put", "key": self._keys(), "value": self._value, "w": 3}
        sock.send(msgpack.packb({**request, "id": self._next_id}))
        if not sock.poll(10_000):
            return "a put with w=3 got no reply"
        reply = msgpack.unpackb(sock.recv())
        if reply.get("ok"):
            return "a put with w=3 was acknowledged (three copies)"
        return f"a put with w=3 was refused: {reply['error']['message']}"
