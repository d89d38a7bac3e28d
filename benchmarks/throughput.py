"""Throughput of one kvactors node against a bare pyzmq+msgpack dict server.

Both servers run as their own processes and are driven in turn by the same pipelined
load from this process: DEALER sockets keeping the same number of requests in flight,
over the same key space, with 100-byte values. Each (server, op) is measured `--runs`
times; the medians of the rates and of the paired ratios kvactors/bare are printed.

    python benchmarks/throughput.py [--seconds 3] [--runs 3] [--inflight 64]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import msgpack
import zmq

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
def server(kind: str) -> Iterator[str]:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    if kind == "bare":
        command = [sys.executable, str(HERE / "bare_server.py"), endpoint]
    else:
        command = [
            sys.executable,
            "-m",
            "kvactors",
            "--log-level",
            "WARNING",
            "node",
            "--name",
            "bench",
            "--bind",
            endpoint,
        ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--runs", type=int, default=3, help="measurements per server and op")
    parser.add_argument("--inflight", type=int, default=64, help="requests in flight")
    parser.add_argument("--keyspace", type=int, default=10_000, help="distinct keys")
    args = parser.parse_args()

    rates: dict[tuple[str, str], list[float]] = {}
    for run in range(args.runs):
        for kind in ("bare", "kvactors"):
            with server(kind) as endpoint:
                for op in ("put", "get"):
                    rate = drive(endpoint, op, args.seconds, args.inflight, args.keyspace)
                    rates.setdefault((kind, op), []).append(rate)
        print(f"run {run + 1}/{args.runs} done", file=sys.stderr)

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


if __name__ == "__main__":
    main()
