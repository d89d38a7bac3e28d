"""Three replicas on this machine: kvactors (N=3, R=W=2) against PySyncObj and Redis.

Each run starts, in turn, three fresh clusters of three processes on loopback and drives
the baselines with `--inflight` writes in flight (32, as the issue sets for PySyncObj),
kvactors with 32 too and, for its peak, `--kvactors-inflight` (256: a pipelined load;
PySyncObj's write rate stays flat from 8 to 128 in flight), 100-byte values and a
distinct random key per write:

- kvactors: a `LocalCluster` of three nodes with their default N, R and W. The load
  comes from this process, one DEALER per node, the requests in flight split across
  them. Four phases: puts as fast as they are answered (the peak), gets of keys those
  puts wrote, puts sent on a fixed schedule (open loop) at half the peak put rate of the
  same run, whose latency is the p99 target's, and pings on that schedule: the floor,
  what the machine and the transport alone add to a request's latency.
- PySyncObj: three processes each holding a `ReplDict` (benchmarks/_pysyncobj_node.py),
  with `appendEntriesUseBatch=False`. PySyncObj has no network client, so the leader's
  own process issues asynchronous `set` calls with callbacks, kept at `--inflight`.
- Redis, where `redis-server` is on PATH: a master and two replicas without persistence;
  each write is `SET` then `WAIT 1` pipelined on one of `--inflight` connections, so it
  is answered once a replica has it too (two copies, as W=2).

Latency is from a request's send to its reply. Rates and percentiles are medians over
`--runs` runs; the ratios are taken within each run (the machine is shared and noisy)
and their median is the figure. Targets: kvactors puts at least 2.0x PySyncObj's writes;
kvactors p99 at most 5 ms at half of its peak put rate.

    python benchmarks/replicated.py [--runs 3] [--seconds 3] [--inflight 32]
                                    [--kvactors-inflight 256] [--no-redis]
    python benchmarks/replicated.py --quick     # one short run, about 20 s
    python benchmarks/replicated.py --latency-at 1000,2000 --seconds 5   # kvactors only
    python benchmarks/replicated.py --baseline-ref REF [--new-ref REF] --runs 5   # two builds

With `--baseline-ref REF`, each run starts a 3-node cluster of REF's tree and one of the new
build (this checkout, or `--new-ref`'s commit), in alternating order, each through its own
tree's `kvactors cluster` (see _builds.py), and measures peak puts and gets on each; it
prints each build's rate per run and the median of the runs' ratios new/old. PySyncObj
and Redis are left out.

With `--secure`, each run starts an insecure 3-node cluster and a secure one (CURVE on
both planes, keys made by the launcher; the load holds the admin client's key, see
_secure.py), in alternating order, measures peak puts and gets on each and prints the
median of the runs' ratios secure/insecure. PySyncObj and Redis are left out.

    python benchmarks/replicated.py --secure --runs 3
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import random
import re
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import msgpack
import zmq
from _builds import (
    Build,
    add_build_options,
    builds,
    cluster_of,
    in_turn,
    paired,
    rate_row,
    ratio_row,
)

from kvactors.launcher import free_port_block

if TYPE_CHECKING:
    from _secure import Credentials

    from kvactors.launcher import LocalCluster

HERE = Path(__file__).resolve().parent
VALUE_BYTES = 100
P99_TARGET_MS = 5.0
PYSYNCOBJ_RATIO_TARGET = 2.0
# PySyncObj logs this when a follower rewrites log entries it had already applied.
PYSYNCOBJ_REWRITE_WARNING = "truncating already-applied log entries"


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


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile; NaN when there are no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


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


# --- kvactors -----------------------------------------------------------------------------


class DealerLoad:
    """Load on a kvactors cluster from this process: one DEALER per node endpoint.

    Replies may come back in any order, so each request carries an id and the pending
    table maps it to its send time (and, for a put, its key: acknowledged keys are what
    the gets read)."""

    def __init__(
        self,
        endpoints: list[str],
        rng: random.Random | None = None,
        secure: Credentials | None = None,
    ) -> None:
        self.rng = rng or random.Random()
        self.written: list[str] = []
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
        self._pending: dict[int, tuple[float, str]] = {}

    def close(self) -> None:
        for sock in self._sockets:
            sock.close()

    def _send(self, sock: zmq.Socket[bytes], op: str, now: float) -> None:
        self._next_id += 1
        key = ""
        if op == "put":
            key = self._keys()
            request = {"op": "put", "key": key, "value": self._value, "id": self._next_id}
        elif op == "get":
            key = self.rng.choice(self.written)
            request = {"op": "get", "key": key, "id": self._next_id}
        else:
            request = {"op": op, "id": self._next_id}
        self._pending[self._next_id] = (now, key)
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

    def closed_loop(self, op: str, inflight: int, warmup: float, seconds: float) -> Measurement:
        """Each reply is followed by the next request on the same socket, so `inflight`
        stay outstanding; replies during `seconds` after `warmup` are counted."""
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
                sent, key = self._pending.pop(reply["id"])
                ok = bool(reply.get("ok"))
                if ok and op == "put":
                    self.written.append(key)
                if measure_from <= now <= deadline:
                    if not ok:
                        failed += 1
                    else:
                        latencies.append(now - sent)
                        if op == "get" and not reply.get("found"):
                            missing += 1
                if now < deadline:
                    self._send(sock, op, now)
            if not answered and time.perf_counter() > deadline + 30:
                raise RuntimeError(f"{len(self._pending)} requests unanswered for 30 s")
        return Measurement(len(latencies), failed, seconds, latencies, missing)

    def open_loop(self, op: str, rate: float, seconds: float) -> Measurement:
        """Requests sent on a schedule of `rate` per second whatever the replies do, round
        robin over the sockets. Due requests go out at least every millisecond."""
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
                self._send(self._sockets[sent_count % len(self._sockets)], op, now)
                sent_count += 1
                next_at = started + sent_count * interval
            if next_at >= end and not self._pending:
                break
            wait_ms = max(1, math.ceil((next_at - now) * 1000)) if next_at < end else 1000
            answered = False
            for _, reply in self._replies(wait_ms):
                answered = True
                received = time.perf_counter()
                sent, key = self._pending.pop(reply["id"])
                if reply.get("ok"):
                    if op == "put":
                        self.written.append(key)
                    latencies.append(received - sent)
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


@dataclass(frozen=True, slots=True)
class KvactorsRun:
    put: Measurement
    put_same: Measurement  # at the baselines' in-flight count
    get: Measurement
    half_load: Measurement
    half_rate: float
    floor: Measurement  # pings at the same schedule: the transport and the machine alone
    probe: str


def three_nodes() -> LocalCluster:
    """A LocalCluster of 3 nodes of the kvactors this process imports. Imported here:
    with --baseline-ref this process imports no kvactors at all, as the checkout may be
    mid-edit while the builds measured are fixed commits."""
    from kvactors.launcher import LocalCluster  # noqa: PLC0415

    return LocalCluster(3, base_port=free_port_block(3))


def measure_kvactors(
    inflight: int, baseline_inflight: int, warmup: float, seconds: float
) -> KvactorsRun:
    with three_nodes() as cluster:
        load = DealerLoad(cluster.endpoints)
        try:
            put_same = load.closed_loop("put", baseline_inflight, warmup, seconds)
            put = load.closed_loop("put", inflight, warmup, seconds)
            if not load.written:
                raise RuntimeError("no put succeeded, so there is nothing to read")
            get = load.closed_loop("get", inflight, warmup, seconds)
            half_rate = put.rate / 2
            half_load = load.open_loop("put", half_rate, seconds)
            # Pings are answered by the node's transport without touching data: their tail
            # at the same schedule is what the machine (scheduling, other work) and the
            # transport add to any request.
            floor = load.open_loop("ping", half_rate, seconds)
            probe = load.copies_probe()
        finally:
            load.close()
    return KvactorsRun(put, put_same, get, half_load, half_rate, floor, probe)


def latency_curve(rates: list[float], seconds: float) -> None:
    """Open-loop puts at each rate on one fresh 3-node cluster: latency against load."""
    print(f"kvactors, 3 nodes (N=3, R=W=2), open-loop puts, {seconds:g} s per rate")
    with three_nodes() as cluster:
        load = DealerLoad(cluster.endpoints)
        try:
            load.closed_loop("put", 32, 0.5, 1.0)  # warm up
            for rate in rates:
                m = load.open_loop("put", rate, seconds)
                print(
                    f"{rate:>8,.0f} puts/s: answered {m.rate:>7,.0f}/s, failed {m.failed}, "
                    f"p50 {m.p50_ms:.1f} ms, p99 {m.p99_ms:.1f} ms"
                )
        finally:
            load.close()


@dataclass(frozen=True, slots=True)
class PeakRun:
    put: Measurement
    get: Measurement
    probe: str


def measure_peak(build: Build, inflight: int, warmup: float, seconds: float) -> PeakRun:
    """Peak puts, then gets of the keys they wrote, on a fresh 3-node cluster of `build`."""
    with cluster_of(build, 3, free_port_block(3)) as endpoints:
        load = DealerLoad(endpoints)
        try:
            put = load.closed_loop("put", inflight, warmup, seconds)
            if not load.written:
                raise RuntimeError(f"{build.label}: no put succeeded")
            get = load.closed_loop("get", inflight, warmup, seconds)
            return PeakRun(put, get, load.copies_probe())
        finally:
            load.close()


def compare_builds(args: argparse.Namespace) -> None:
    """Each run: a cluster of the old build and one of the new, in alternating order."""
    with builds(args) as (old, new):
        assert old is not None
        runs: dict[str, list[PeakRun]] = {"old": [], "new": []}
        for run in range(args.runs):
            for name, build in in_turn(run, ("old", old), ("new", new)):
                runs[name].append(
                    measure_peak(build, args.kvactors_inflight, args.warmup, args.seconds)
                )
            print(f"run {run + 1}/{args.runs} done", file=sys.stderr)
    print(
        f"kvactors, 3 nodes on loopback (default N, R, W), {os.cpu_count()} cores; "
        f"{args.kvactors_inflight} in flight, {VALUE_BYTES}-byte values, a new random key "
        f"per put; {args.seconds}s per measurement after {args.warmup}s warm-up, "
        f"{args.runs} run(s); PySyncObj and Redis not run"
    )
    print(f"new: {new.label}; old: {old.label}; the old build went first in runs 1, 3, ...")
    for name in ("old", "new"):
        print(f"replication check, {name}: {runs[name][-1].probe}")
    print(f"{'':36}{'median':>12}   each run")
    for op in ("put", "get"):
        old_rates = [getattr(run, op).rate for run in runs["old"]]
        new_rates = [getattr(run, op).rate for run in runs["new"]]
        print(rate_row(f"{op} ops/s, old", old_rates))
        print(rate_row(f"{op} ops/s, new", new_rates))
        print(ratio_row(f"{op} new/old", new_rates, old_rates))
    failed = {name: sum(r.put.failed + r.get.failed for r in runs[name]) for name in runs}
    missing = {name: sum(r.get.missing for r in runs[name]) for name in runs}
    print(
        f"failed requests: old {failed['old']}, new {failed['new']}; gets that found "
        f"no value: old {missing['old']}, new {missing['new']}"
    )


def measure_secure_peak(
    keys_dir: Path | None, inflight: int, warmup: float, seconds: float
) -> PeakRun:
    """Peak puts, then gets, on a fresh 3-node LocalCluster of this checkout; secure
    (keys made, or reused, in `keys_dir`) unless `keys_dir` is None."""
    from _secure import cluster_credentials  # noqa: PLC0415 - imports kvactors

    from kvactors.launcher import LocalCluster  # noqa: PLC0415

    with LocalCluster(3, base_port=free_port_block(3), keys_dir=keys_dir) as cluster:
        load = DealerLoad(cluster.endpoints, secure=cluster_credentials(cluster))
        try:
            put = load.closed_loop("put", inflight, warmup, seconds)
            if not load.written:
                raise RuntimeError("no put succeeded")
            get = load.closed_loop("get", inflight, warmup, seconds)
            return PeakRun(put, get, load.copies_probe())
        finally:
            load.close()


def compare_secure(args: argparse.Namespace) -> None:
    """Each run: an insecure and a secure cluster, in alternating order."""
    from _secure import verdict  # noqa: PLC0415

    runs: dict[str, list[PeakRun]] = {"insecure": [], "secure": []}
    with tempfile.TemporaryDirectory(prefix="kvactors-bench-keys-") as directory:
        for run in range(args.runs):
            plan = in_turn(run, ("insecure", None), ("secure", Path(directory)))
            for name, keys_dir in plan:
                runs[name].append(
                    measure_secure_peak(keys_dir, args.kvactors_inflight, args.warmup, args.seconds)
                )
            print(f"run {run + 1}/{args.runs} done", file=sys.stderr)
    print(
        f"kvactors, 3 nodes on loopback (default N, R, W), {os.cpu_count()} cores; "
        f"{args.kvactors_inflight} in flight, {VALUE_BYTES}-byte values, a new random key "
        f"per put; {args.seconds}s per measurement after {args.warmup}s warm-up, "
        f"{args.runs} run(s); PySyncObj and Redis not run"
    )
    print("secure: CURVE on the client and peer planes, each message checked against the")
    print("trust set; the insecure cluster went first in runs 1, 3, ...")
    for name in runs:
        print(f"replication check, {name}: {runs[name][-1].probe}")
    print(f"{'':36}{'median':>12}   each run")
    for op in ("put", "get"):
        insecure = [getattr(run, op).rate for run in runs["insecure"]]
        secure = [getattr(run, op).rate for run in runs["secure"]]
        print(rate_row(f"{op} ops/s, insecure", insecure))
        print(rate_row(f"{op} ops/s, secure", secure))
        print(ratio_row(f"{op} secure/insecure", secure, insecure))
        print(f"  {verdict(paired(secure, insecure)[0])}")
    for name, measured in runs.items():
        p99 = statistics.median(run.put.p99_ms for run in measured)
        failed = sum(r.put.failed + r.get.failed for r in measured)
        print(f"{name}: put p99 at peak {p99:.1f} ms (median of runs), failed requests {failed}")


# --- PySyncObj ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PySyncObjRun:
    write: Measurement
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


def measure_pysyncobj(inflight: int, warmup: float, seconds: float) -> PySyncObjRun:
    with tempfile.TemporaryDirectory(prefix="replicated-bench-") as log_dir:
        cluster = PySyncObjCluster(Path(log_dir))
        try:
            leader, version = cluster.wait_leader()
            command = {
                "cmd": "drive",
                "seconds": seconds,
                "warmup": warmup,
                "inflight": inflight,
                "value_bytes": VALUE_BYTES,
            }
            reply = cluster.ask(leader, command)
        finally:
            cluster.stop()
        warnings = sum(log.read_text().count(PYSYNCOBJ_REWRITE_WARNING) for log in cluster.logs)
    latencies = [micros / 1e6 for micros in reply["latencies_us"]]
    write = Measurement(reply["completed"], reply["failed"], reply["elapsed"], latencies)
    return PySyncObjRun(write, version, warnings)


# --- Redis --------------------------------------------------------------------------------


def resp(*parts: bytes | str) -> bytes:
    """One command in the Redis protocol (RESP), as an array of bulk strings."""
    encoded = [part.encode() if isinstance(part, str) else part for part in parts]
    chunks = [b"*%d\r\n" % len(encoded)]
    for part in encoded:
        chunks.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(chunks)


def redis_info(port: int, section: str) -> str:
    """The text of `INFO section` (a bulk string reply), or "" if the server is not up."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(resp("INFO", section))
            reader = sock.makefile("rb")
            header = reader.readline()
            if not header.startswith(b"$"):
                return ""
            return reader.read(int(header[1:]) + 2).decode()
    except OSError:
        return ""


@dataclass
class RedisConnection:
    """One connection with at most one SET + WAIT pair outstanding."""

    sock: socket.socket
    buffer: bytes = b""
    sent_at: float = 0.0


class RedisGroup:
    """A Redis master and two replicas, on loopback, without persistence."""

    def __init__(self, executable: str, log_dir: Path) -> None:
        self.port = free_port_block(3)
        self._processes: list[subprocess.Popen[bytes]] = []
        self._logs: list[IO[bytes]] = []
        for index in range(3):
            command = [
                executable, "--port", str(self.port + index), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--daemonize", "no",
                # A replica's first sync may still write an RDB file: keep it out of the
                # working directory.
                "--dir", str(log_dir),
            ]  # fmt: skip
            if index:
                command += ["--replicaof", "127.0.0.1", str(self.port)]
            log = (log_dir / f"redis-{index}.log").open("wb")
            self._logs.append(log)
            self._processes.append(subprocess.Popen(command, stdout=log, stderr=log))

    def wait_replicated(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while len(re.findall(r"slave\d+:.*state=online", redis_info(self.port, "replication"))) < 2:
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis replicas did not come online")
            time.sleep(0.05)

    def version(self) -> str:
        match = re.search(r"redis_version:(\S+)", redis_info(self.port, "server"))
        return match.group(1) if match else "?"

    def stop(self) -> None:
        for process in self._processes:
            process.terminate()
        for process in self._processes:
            process.wait(timeout=10)
        for log in self._logs:
            log.close()

    def drive(self, inflight: int, warmup: float, seconds: float) -> Measurement:
        """`inflight` connections, each with one SET + WAIT 1 pair pipelined at a time."""
        keys = KeyMaker(random.Random())
        value = b"v" * VALUE_BYTES
        selector = selectors.DefaultSelector()
        connections: list[RedisConnection] = []
        for _ in range(inflight):
            sock = socket.create_connection(("127.0.0.1", self.port))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connections.append(RedisConnection(sock))

        def send(connection: RedisConnection) -> None:
            connection.sent_at = time.perf_counter()
            connection.sock.sendall(resp("SET", keys(), value) + resp("WAIT", "1", "5000"))

        started = time.perf_counter()
        measure_from = started + warmup
        deadline = measure_from + seconds
        for connection in connections:
            send(connection)
            connection.sock.setblocking(False)
            selector.register(connection.sock, selectors.EVENT_READ, connection)
        latencies: list[float] = []
        failed = 0
        outstanding = inflight
        while outstanding:
            events = selector.select(timeout=30)
            if not events:
                raise RuntimeError(f"{outstanding} Redis writes unanswered for 30 s")
            for selected, _ in events:
                connection = selected.data
                received = connection.sock.recv(65536)
                if not received:
                    raise RuntimeError("Redis closed a connection")
                connection.buffer += received
                # Both replies are one line each: "+OK" for SET, ":n" for WAIT (n replicas).
                if connection.buffer.count(b"\r\n") < 2:
                    continue
                set_reply, wait_reply, connection.buffer = connection.buffer.split(b"\r\n", 2)
                now = time.perf_counter()
                if measure_from <= now <= deadline:
                    if set_reply == b"+OK" and wait_reply[:1] == b":" and int(wait_reply[1:]) >= 1:
                        latencies.append(now - connection.sent_at)
                    else:
                        failed += 1
                if now < deadline:
                    send(connection)  # a few hundred bytes into an empty send buffer
                else:
                    outstanding -= 1
        for connection in connections:
            selector.unregister(connection.sock)
            connection.sock.close()
        selector.close()
        return Measurement(len(latencies), failed, seconds, latencies)


@dataclass(frozen=True, slots=True)
class RedisRun:
    write: Measurement
    version: str


def measure_redis(executable: str, inflight: int, warmup: float, seconds: float) -> RedisRun:
    with tempfile.TemporaryDirectory(prefix="replicated-bench-") as log_dir:
        group = RedisGroup(executable, Path(log_dir))
        try:
            group.wait_replicated()
            return RedisRun(group.drive(inflight, warmup, seconds), group.version())
        finally:
            group.stop()


# --- report -------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def numbers(values: list[float], digits: int = 2) -> str:
    return " ".join(f"{value:.{digits}f}" for value in values)


def row(label: str, runs: list[Measurement]) -> str:
    rates = [run.rate for run in runs]
    p50 = median([run.p50_ms for run in runs])
    p99 = median([run.p99_ms for run in runs])
    failed = sum(run.failed for run in runs)
    per_run = " ".join(f"{rate:,.0f}" for rate in rates)
    return f"{label:44}{median(rates):>10,.0f}{p50:>9.2f}{p99:>9.2f}{failed:>8}   {per_run}"


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def report(
    args: argparse.Namespace,
    kvactors: list[KvactorsRun],
    pysyncobj: list[PySyncObjRun],
    redis: list[RedisRun],
    redis_note: str,
) -> None:
    print(
        f"3 processes per system on loopback, {os.cpu_count()} cores; {args.inflight} writes "
        f"in flight for the baselines, {args.kvactors_inflight} for kvactors' peak, "
        f"{VALUE_BYTES}-byte values, a new random key per write; "
        f"{args.seconds}s per measurement after {args.warmup}s warm-up, {args.runs} run(s)"
    )
    print(
        "kvactors: LocalCluster of 3 nodes with the default N, R, W; load from this process, "
        f"one DEALER per node; replication check: {kvactors[-1].probe}"
    )
    print(
        f"PySyncObj {pysyncobj[-1].version}: ReplDict, appendEntriesUseBatch=False; "
        "async set() with callbacks issued inside the leader's process"
    )
    print(f"Redis: {redis_note}")
    print()
    header = f"{'system and load':44}{'ops/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'failed':>8}"
    print(f"{header}   ops/s of each run")
    print(row(f"kvactors put, {args.inflight} in flight", [r.put_same for r in kvactors]))
    peak = f"{args.kvactors_inflight} in flight"
    print(row(f"kvactors put, {peak} (peak)", [r.put for r in kvactors]))
    print(row(f"kvactors get, {peak}", [r.get for r in kvactors]))
    half_rates = " ".join(f"{run.half_rate:,.0f}" for run in kvactors)
    print(row("kvactors put, open loop at half the peak", [r.half_load for r in kvactors]))
    print(f"{'':44}(scheduled rates: {half_rates} per s)")
    print(row("kvactors ping, the same schedule (floor)", [r.floor for r in kvactors]))
    print(row(f"PySyncObj set, {args.inflight} in flight", [r.write for r in pysyncobj]))
    if redis:
        print(row(f"Redis SET + WAIT 1, {args.inflight} in flight", [r.write for r in redis]))
    missing = sum(run.get.missing for run in kvactors)
    if missing:
        print(f"kvactors gets that found no value: {missing}")
    print()

    ratios = [k.put.rate / p.write.rate for k, p in zip(kvactors, pysyncobj, strict=True)]
    print(
        f"kvactors peak puts / PySyncObj writes: {median(ratios):.2f} "
        f"(runs: {numbers(ratios)}); target >= {PYSYNCOBJ_RATIO_TARGET}: "
        f"{verdict(median(ratios) >= PYSYNCOBJ_RATIO_TARGET)}"
    )
    same = [k.put_same.rate / p.write.rate for k, p in zip(kvactors, pysyncobj, strict=True)]
    print(f"  with {args.inflight} in flight for both: {median(same):.2f} (runs: {numbers(same)})")
    if redis:
        to_redis = [k.put.rate / r.write.rate for k, r in zip(kvactors, redis, strict=True)]
        print(f"kvactors puts / Redis writes: {median(to_redis):.2f} (runs: {numbers(to_redis)})")
    p99s = [run.half_load.p99_ms for run in kvactors]
    floors = [run.floor.p99_ms for run in kvactors]
    print(
        f"kvactors p99 at half the peak put rate: {median(p99s):.2f} ms "
        f"(runs: {numbers(p99s)}); target <= {P99_TARGET_MS:g} ms: "
        f"{verdict(median(p99s) <= P99_TARGET_MS)}"
    )
    # A ping's tail is the machine's (scheduling, other work) and the transport's: when it
    # alone is near the target, the put figure says little about kvactors.
    print(
        f"  the ping floor's p99 at the same schedule: {median(floors):.2f} ms "
        f"(runs: {numbers(floors)})"
    )
    warnings = [run.rewrite_warnings for run in pysyncobj]
    if any(warnings):
        print(
            f"PySyncObj nodes logged '{PYSYNCOBJ_REWRITE_WARNING}' "
            f"{' '.join(map(str, warnings))} time(s) in the runs (followers rewriting entries)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs; medians are reported")
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--warmup", type=float, default=0.5, help="before each closed loop")
    parser.add_argument(
        "--inflight", type=int, default=32, help="writes in flight for the baselines (issue: 32)"
    )
    parser.add_argument(
        "--kvactors-inflight",
        type=int,
        default=256,
        help="requests in flight for kvactors' peak (a pipelined load)",
    )
    parser.add_argument("--no-redis", action="store_true", help="leave the Redis row out")
    parser.add_argument("--quick", action="store_true", help="a short smoke run (~20 s)")
    parser.add_argument(
        "--latency-at",
        metavar="RATE,...",
        help="only kvactors: open-loop puts at each rate a second (where the tail begins)",
    )
    add_build_options(parser, only="only kvactors' peak puts and gets: ")
    parser.add_argument(
        "--secure",
        action="store_true",
        help="only kvactors' peak puts and gets: a secure cluster beside an insecure one "
        "in each run, and the ratios secure/insecure",
    )
    args = parser.parse_args()
    if args.quick:
        args.runs, args.seconds, args.warmup = 1, 1.5, 0.25
    if args.latency_at:
        latency_curve([float(rate) for rate in args.latency_at.split(",")], args.seconds)
        return
    if args.secure:
        if args.baseline_ref:
            raise SystemExit("--secure and --baseline-ref are separate comparisons")
        compare_secure(args)
        return
    if args.baseline_ref:
        compare_builds(args)
        return

    if importlib.util.find_spec("pysyncobj") is None:
        sys.exit("PySyncObj is not installed: pip install pysyncobj (or the bench extra)")
    redis_server = None if args.no_redis else shutil.which("redis-server")
    if args.no_redis:
        redis_note = "row skipped (--no-redis)"
    elif redis_server is None:
        redis_note = "row skipped because redis-server is not installed (not on PATH)"
    else:
        redis_note = "a master and 2 replicas, no persistence; SET then WAIT 1 per write"

    kvactors: list[KvactorsRun] = []
    pysyncobj: list[PySyncObjRun] = []
    redis: list[RedisRun] = []
    for run in range(args.runs):
        kvactors.append(
            measure_kvactors(args.kvactors_inflight, args.inflight, args.warmup, args.seconds)
        )
        pysyncobj.append(measure_pysyncobj(args.inflight, args.warmup, args.seconds))
        if redis_server is not None:
            redis.append(measure_redis(redis_server, args.inflight, args.warmup, args.seconds))
        print(f"run {run + 1}/{args.runs} done", file=sys.stderr)
    if redis:
        redis_note = f"{redis_note} (redis-server {redis[-1].version})"
    report(args, kvactors, pysyncobj, redis, redis_note)


if __name__ == "__main__":
    main()
