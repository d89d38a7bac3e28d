"""Throughput of one kvactors node against a bare pyzmq+msgpack dict server.

Both servers run as their own processes and are driven in turn by the same pipelined
load from this process: DEALER sockets keeping the same number of requests in flight,
over the same key space, with 100-byte values. Each (server, op) is measured `--runs`
times; the medians of the rates and of the paired ratios kvactors/bare are printed.

With `--baseline-ref REF`, each run also measures a node of REF's tree (see _builds.py)
beside this tree's, the two in alternating order after the bare server, and prints each
build's rate per run and the median of the runs' ratios new/old.

    python benchmarks/throughput.py [--seconds 3] [--runs 3] [--inflight 64]
                                    [--baseline-ref REF [--new-ref REF]]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import msgpack
import zmq
from _builds import Build, add_build_options, builds, in_turn, rate_row, ratio_row

from kvactors.launcher import free_port_block

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    """A free port low enough that a node's default peer port (+ 10,000) is one too."""
    return free_port_block(1)


def wait_ready(endpoint: str, timeout: float = 30.0) -> None:
    """Ping until the server answers (both servers answer an unknown op / ping)."""
    context = zmq.Context.instance()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        sock.send(msgpack.packb({"op": "ping", "id": 0}))
        answered = sock.poll(500)
        sock.close()
        if answered:
            return
    raise RuntimeError(f"{endpoint} did not answer within {timeout}s")


@contextmanager
def server(kind: str | Build) -> Iterator[str]:
    """The bare server (kind "bare") or a kvactors node of the given build."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    if kind == "bare":
        process = subprocess.Popen(
            [sys.executable, str(HERE / "bare_server.py"), endpoint], stdout=subprocess.DEVNULL
        )
    else:
        assert isinstance(kind, Build)
        node = ["--log-level", "WARNING", "node", "--name", "bench", "--bind", endpoint]
        process = kind.popen(node, stdout=subprocess.DEVNULL)
    try:
        wait_ready(endpoint)
        yield endpoint
    finally:
        process.terminate()
        process.wait(timeout=30)


def drive(endpoint: str, op: str, seconds: float, inflight: int, keyspace: int) -> float:
    """Replies per second while keeping `inflight` requests outstanding."""
    value = b"v" * 100
    frames = []
    for i in range(keyspace):
        request = {"op": op, "key": f"key-{i}", "id": i}
        if op == "put":
            request["value"] = value
        frames.append(msgpack.packb(request))
    context = zmq.Context.instance()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    sent = 0
    for _ in range(inflight):
        sock.send(frames[sent % keyspace])
        sent += 1
    received = 0
    started = time.perf_counter()
    deadline = started + seconds
    recv, send = sock.recv, sock.send
    while True:
        recv()
        received += 1
        if received & 63 == 0 and time.perf_counter() >= deadline:
            break
        send(frames[sent % keyspace])
        sent += 1
    elapsed = time.perf_counter() - started
    for _ in range(sent - received):  # drain, so the next measurement starts clean
        if not sock.poll(5000):
            break
        recv()
    sock.close()
    return received / elapsed


def measure(kind: str | Build, args: argparse.Namespace) -> dict[str, float]:
    """Puts, then gets of the keys they wrote, on a fresh server: ops/s for each."""
    with server(kind) as endpoint:
        return {
            op: drive(endpoint, op, args.seconds, args.inflight, args.keyspace)
            for op in ("put", "get")
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--runs", type=int, default=3, help="measurements per server and op")
    parser.add_argument("--inflight", type=int, default=64, help="requests in flight")
    parser.add_argument("--keyspace", type=int, default=10_000, help="distinct keys")
    add_build_options(parser)
    args = parser.parse_args()

    with builds(args) as (old, new):
        rates: dict[tuple[str, str], list[float]] = {}
        for run in range(args.runs):
            # The bare server first, as before; the two builds then in alternating order.
            servers = (
                [("kvactors", new)]
                if old is None
                else in_turn(run, ("old", old), ("kvactors", new))
            )
            for name, kind in [("bare", "bare"), *servers]:
                for op, rate in measure(kind, args).items():
                    rates.setdefault((name, op), []).append(rate)
            print(f"run {run + 1}/{args.runs} done", file=sys.stderr)
        report(args, rates, new, old)


def report(
    args: argparse.Namespace,
    rates: dict[tuple[str, str], list[float]],
    new: Build,
    old: Build | None,
) -> None:
    print(
        f"one node, pipelined load: {args.inflight} in flight, {args.keyspace} keys, "
        f"100-byte values, {args.seconds}s x {args.runs} runs, {os.cpu_count()} cores"
    )
    print(f"{'op':6}{'bare ops/s':>14}{'kvactors ops/s':>16}{'ratio':>8}   ratio of each run")
    for op in ("put", "get"):
        bare, kv = rates[("bare", op)], rates[("kvactors", op)]
        # Each run measures both servers back to back, so its ratio is paired against the
        # machine's load at that moment; the median of the paired ratios is the figure.
        ratios = [k / b for k, b in zip(kv, bare, strict=True)]
        print(
            f"{op:6}{statistics.median(bare):>14,.0f}{statistics.median(kv):>16,.0f}"
            f"{statistics.median(ratios):>8.2f}   {' '.join(f'{r:.2f}' for r in ratios)}"
        )
    if old is None:
        return
    print()
    print(f"new: {new.label}; old: {old.label}; the old build went first in runs 1, 3, ...")
    print(f"{'':36}{'median':>12}   each run")
    for op in ("put", "get"):
        print(rate_row(f"{op} ops/s, old", rates[("old", op)]))
        print(rate_row(f"{op} ops/s, new", rates[("kvactors", op)]))
        print(ratio_row(f"{op} new/old", rates[("kvactors", op)], rates[("old", op)]))
        print(ratio_row(f"{op} old/bare", rates[("old", op)], rates[("bare", op)]))


if __name__ == "__main__":
    main()
