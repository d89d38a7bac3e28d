"""One PySyncObj node holding a replicated dict (`ReplDict`), the baseline of replicated.py.

PySyncObj has no network client: a program uses the replicated object inside one of the
cluster's own processes. So this node also carries the load when asked: it keeps a given
number of asynchronous `set` calls in flight, each with a callback, and answers with the
latency of every write that completed in the measured window.

    python benchmarks/_pysyncobj_node.py SELF_ADDRESS PARTNER_ADDRESS...

It reads commands from stdin and answers each with one JSON line on stdout:

    {"cmd": "state"}   -> {"self": "...", "leader": "..." or null, "ready": bool, "version": "..."}
    {"cmd": "drive", "seconds": 3.0, "warmup": 0.5, "inflight": 32, "value_bytes": 100}
                       -> {"completed": n, "failed": n, "elapsed": s, "latencies_us": [...]}
    {"cmd": "quit"}
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time
from typing import Any

from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf
from pysyncobj.batteries import ReplDict
from pysyncobj.version import VERSION


class WriteLoad:
    """Keeps `inflight` async writes outstanding until the deadline; callbacks refill."""

    def __init__(self, store: ReplDict, inflight: int, value_bytes: int) -> None:
        self._store = store
        self._inflight = inflight
        self._value = b"v" * value_bytes
        self._prefix = random.Random().randbytes(8).hex()
        self._next_key = 0
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
        with self._lock:
            key = f"{self._prefix}-{self._next_key}"
            self._next_key += 1
        started = time.perf_counter()
        self._store.set(
            key,
            self._value,
            callback=lambda _result, error: self._answered(started, error),
        )

    def _answered(self, started: float, error: int) -> None:
        # Called on PySyncObj's tick thread, when the write is committed on a majority.
        now = time.perf_counter()
        if self._measure_from <= now <= self._deadline:
            if error == FAIL_REASON.SUCCESS:
                self.completed += 1
                self.latencies_us.append(round((now - started) * 1e6))
            else:
                self.failed += 1
        if now <= self._deadline:
            self._issue()
            return
        with self._lock:
            self._outstanding -= 1
            if self._outstanding == 0:
                self._drained.set()


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
            load = WriteLoad(store, int(command["inflight"]), int(command["value_bytes"]))
            elapsed = load.run(float(command["warmup"]), float(command["seconds"]))
            reply = {
                "completed": load.completed,
                "failed": load.failed,
                "elapsed": elapsed,
                "latencies_us": load.latencies_us,
            }
        else:
            break
        print(json.dumps(reply), flush=True)
    node.destroy()


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2:])
