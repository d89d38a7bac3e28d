"""One PySyncObj node holding a replicated dict (`ReplDict`), the baseline of replicated.py.

PySyncObj has no network client: a program uses the replicated object inside one of the
cluster's own processes. So this node also carries the load when asked: it keeps a given
number of asynchronous `set` calls in flight, each with a callback, and answers with the
latency of every operation that completed in the measured window. In a mixed (YCSB) load
a read is `ReplDict.get` on this process's own copy: local, through no log and no
network, as a PySyncObj program reads; it completes at once, and the slot goes on to its
next operation.

    python benchmarks/_pysyncobj_node.py SELF_ADDRESS PARTNER_ADDRESS...

It reads commands from stdin and answers each with one JSON line on stdout:

    {"cmd": "state"}   -> {"self": "...", "leader": "..." or null, "ready": bool, "version": "..."}
    {"cmd": "drive", "seconds": 3.0, "warmup": 0.5, "inflight": 32, "value_bytes": 100}
                       -> {"completed": n, "failed": n, "elapsed": s, "latencies_us": [...]}
    {"cmd": "load", "records": 10000, "inflight": 32, "value_bytes": 100}
                       -> the same fields (a set of every record key, then done)
    {"cmd": "ycsb", "read_proportion": 0.5, "records": 10000, "seed": 1, "count": 100000,
     "seconds": 3.0, "warmup": 0.5, "inflight": 32, "value_bytes": 100}
                       -> the same fields, reads and updates together
    {"cmd": "quit"}
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from _ycsb import OperationCycle, Workload, operations, record_key
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf
from pysyncobj.batteries import ReplDict
from pysyncobj.version import VERSION

# The next operation, (is_read, key), or None when there are no more (a finite load).
NextOperation = Callable[[], tuple[bool, str] | None]


class Load:
    """Keeps `inflight` slots busy until the deadline (or the operations run out): a
    slot issues an async write and its callback issues the slot's next operation; a
    read is done on the spot and the slot moves on."""

    def __init__(
        self, store: ReplDict, inflight: int, value_bytes: int, next_op: NextOperation
    ) -> None:
        self._store = store
        self._inflight = inflight
        self._value = b"v" * value_bytes
        self._next_op = next_op
        self._lock = threading.Lock()
        self._outstanding = 0
        self._measure_from = 0.0
        self._deadline = 0.0
        self._drained = threading.Event()
        self.completed = 0
        self.failed = 0
        self.latencies_us: list[int] = []

    def run(self, warmup: float, seconds: float) -> float:
        """Warm up, measure for `seconds`, wait until every write is answered; the window."""
        now = time.perf_counter()
        self._measure_from = now + warmup
        self._deadline = self._measure_from + seconds
        with self._lock:
            self._outstanding = self._inflight
        for _ in range(self._inflight):
            self._issue()
        if not self._drained.wait(warmup + seconds + 60):
            raise RuntimeError(f"{self._outstanding} writes unanswered for 60 s")
        return seconds

    def _issue(self) -> None:
        while True:
            with self._lock:
                op = self._next_op()
            started = time.perf_counter()
            if op is None or started > self._deadline:
                self._slot_done()
                return
            is_read, key = op
            if not is_read:
                self._store.set(
                    key,
                    self._value,
                    callback=lambda _result, error, at=started: self._answered(at, error),
                )
                return
            self._store.get(key)
            self._record(started, time.perf_counter(), FAIL_REASON.SUCCESS)

    def _record(self, started: float, now: float, error: int) -> None:
        if self._measure_from <= now <= self._deadline:
            with self._lock:
                if error == FAIL_REASON.SUCCESS:
                    self.completed += 1
                    self.latencies_us.append(round((now - started) * 1e6))
                else:
                    self.failed += 1

    def _answered(self, started: float, error: int) -> None:
        # Called on PySyncObj's tick thread, when the write is committed on a majority.
        self._record(started, time.perf_counter(), error)
        self._issue()

    def _slot_done(self) -> None:
        with self._lock:
            self._outstanding -= 1
            if self._outstanding == 0:
                self._drained.set()


def new_keys() -> NextOperation:
    """A write of a new key each time."""
    prefix = random.Random().randbytes(8).hex()
    counter = iter(range(1 << 62))
    return lambda: (False, f"{prefix}-{next(counter)}")


def each_record(records: int) -> NextOperation:
    """A write of each record key once, then no more."""
    indexes = iter(range(records))

    def next_op() -> tuple[bool, str] | None:
        index = next(indexes, None)
        return None if index is None else (False, record_key(index))

    return next_op


def mixed(command: dict[str, Any]) -> NextOperation:
    """The YCSB operations replicated.py draws, from the same seed."""
    workload = Workload("", float(command["read_proportion"]))
    ops = operations(workload, int(command["records"]), int(command["count"]), command["seed"])
    cycle = OperationCycle(ops)

    def next_op() -> tuple[bool, str]:
        is_read, index = cycle()
        return is_read, record_key(index)

    return next_op


def drive(store: ReplDict, command: dict[str, Any], next_op: NextOperation) -> dict[str, Any]:
    load = Load(store, int(command["inflight"]), int(command["value_bytes"]), next_op)
    started = time.perf_counter()
    if command["cmd"] == "load":
        load.run(0.0, 3600.0)  # until every record is written
        elapsed = time.perf_counter() - started
    else:
        elapsed = load.run(float(command["warmup"]), float(command["seconds"]))
    return {
        "completed": load.completed,
        "failed": load.failed,
        "elapsed": elapsed,
        "latencies_us": load.latencies_us,
    }


def serve(self_address: str, partners: list[str]) -> None:
    store = ReplDict()
    # Each write is sent to the followers as soon as it is queued, rather than collected
    # into the next periodic batch: the setting for latency, as the issue asks.
    conf = SyncObjConf(appendEntriesUseBatch=False)
    node = SyncObj(self_address, partners, consumers=[store], conf=conf)
    for line in sys.stdin:
        command: dict[str, Any] = json.loads(line)
        reply: dict[str, Any]
        if command["cmd"] == "state":
            leader = node._getLeader()
            reply = {
                "self": str(node.selfNode),
                "leader": None if leader is None else str(leader),
                "ready": node.isReady(),
                "version": VERSION,
            }
        elif command["cmd"] == "drive":
            reply = drive(store, command, new_keys())
        elif command["cmd"] == "load":
            reply = drive(store, command, each_record(int(command["records"])))
        elif command["cmd"] == "ycsb":
            reply = drive(store, command, mixed(command))
        else:
            break
        print(json.dumps(reply), flush=True)
    node.destroy()


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2:])
