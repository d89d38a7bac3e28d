"""PySyncObj as replicated.py's baseline: three `_pysyncobj_node.py` processes.

PySyncObj has no network client, so the load runs inside the leader's own process (see
_pysyncobj_node.py): writes are asynchronous `set` calls with callbacks, and in a mixed
(YCSB) load a read is a `get` of the leader's local copy, with no network hop.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _loadgen import VALUE_BYTES, Measurement
from _ycsb import WORKLOADS, Plan

from kvactors.launcher import free_port_block

HERE = Path(__file__).resolve().parent
# PySyncObj logs this when a follower rewrites log entries it had already applied.
PYSYNCOBJ_REWRITE_WARNING = "truncating already-applied log entries"


@dataclass(frozen=True, slots=True)
class PySyncObjRun:
    write: Measurement
    ycsb: dict[str, Measurement]  # by workload name; empty when not run
    version: str
    rewrite_warnings: int  # PYSYNCOBJ_REWRITE_WARNING lines the three nodes logged


class PySyncObjCluster:
    """Three `_pysyncobj_node.py` processes, commanded by JSON lines on their stdin."""

    def __init__(self, log_dir: Path) -> None:
        base = free_port_block(3)
        addresses = [f"127.0.0.1:{base + index}" for index in range(3)]
        self.logs = [log_dir / f"pysyncobj-{index}.log" for index in range(3)]
        self._processes: list[subprocess.Popen[str]] = []
        for address, log in zip(addresses, self.logs, strict=True):
            partners = [other for other in addresses if other != address]
            with log.open("w") as stderr:
                command = [sys.executable, str(HERE / "_pysyncobj_node.py"), address, *partners]
                self._processes.append(
                    subprocess.Popen(
                        command,
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=stderr,
                        text=True,
                    )
                )

    def ask(self, index: int, command: dict[str, Any]) -> dict[str, Any]:
        process = self._processes[index]
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(json.dumps(command) + "\n")
        process.stdin.flush()
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"PySyncObj node {index} exited with {process.wait()}")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def wait_leader(self, timeout: float = 30.0) -> tuple[int, str]:
        """The index of the node every node agrees leads, once all are ready; and the
        PySyncObj version."""
        deadline = time.monotonic() + timeout
        while True:
            states = [self.ask(index, {"cmd": "state"}) for index in range(3)]
            leaders = {state["leader"] for state in states}
            if len(leaders) == 1 and None not in leaders and all(s["ready"] for s in states):
                names = [state["self"] for state in states]
                return names.index(leaders.pop()), str(states[0]["version"])
            if time.monotonic() > deadline:
                raise RuntimeError(f"PySyncObj elected no leader in {timeout}s: {states}")
            time.sleep(0.05)

    def stop(self) -> None:
        for process in self._processes:
            if process.stdin is not None:
                with contextlib.suppress(BrokenPipeError):  # it may have exited already
                    process.stdin.write('{"cmd": "quit"}\n')
                    process.stdin.close()
        for process in self._processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()


def measurement(reply: dict[str, Any]) -> Measurement:
    latencies = [micros / 1e6 for micros in reply["latencies_us"]]
    return Measurement(reply["completed"], reply["failed"], reply["elapsed"], latencies)


def measure_pysyncobj(
    inflight: int, warmup: float, seconds: float, plan: Plan | None = None
) -> PySyncObjRun:
    """Writes of new keys with `inflight` outstanding; then, with a `plan`, the records
    loaded and each YCSB workload driven on the same cluster."""
    window = {"seconds": seconds, "warmup": warmup, "value_bytes": VALUE_BYTES}
    ycsb: dict[str, Measurement] = {}
    with tempfile.TemporaryDirectory(prefix="replicated-bench-") as log_dir:
        cluster = PySyncObjCluster(Path(log_dir))
        try:
            leader, version = cluster.wait_leader()
            write = measurement(
                cluster.ask(leader, {"cmd": "drive", "inflight": inflight, **window})
            )
            if plan is not None:
                cluster.ask(
                    leader,
                    {"cmd": "load", "records": plan.records, "inflight": plan.inflight, **window},
                )
                for workload in WORKLOADS:
                    command = {
                        "cmd": "ycsb",
                        "read_proportion": workload.read_proportion,
                        "records": plan.records,
                        "count": plan.count,
                        "seed": plan.seed,
                        "inflight": plan.inflight,
                        **window,
                    }
                    ycsb[workload.name] = measurement(cluster.ask(leader, command))
        finally:
            cluster.stop()
        warnings = sum(log.read_text().count(PYSYNCOBJ_REWRITE_WARNING) for log in cluster.logs)
    return PySyncObjRun(write, ycsb, version, warnings)
