"""Durable puts: LMDB with group commit against LMDB without it, and against memory.

One `kvactors node` process at a time, driven by the same pipelined load from this
process (a DEALER keeping `--inflight` puts outstanding, 100-byte values, every put a new
key). Three configurations are measured in each run, back to back:

- lmdb, fsync ``always``, group commit: every write of a pass of the node's request loop
  is committed, then one fsync makes them all durable before any is acknowledged;
- lmdb, fsync ``always``, no group commit (``--no-group-commit``): one transaction and
  one fsync per write batch, the baseline;
- memory: nothing is forced to disk, the ceiling.

The figure is the median over runs of each run's paired ratio. Target: group commit at
least 5x the one-transaction-per-write rate under 64 writes in flight.

Each run also measures the bare server's put rate and, on the memory node, pings with
the same number in flight (the ping floor): the machine's pace in this run, printed
below the table (see _reference.py).

    python benchmarks/durability.py [--seconds 3] [--runs 3] [--inflight 64]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import msgpack
import zmq
from _loadgen import Measurement
from _reference import bare_line, bare_put_rate, closed_pings, ping_line
from throughput import free_port, wait_ready

CONFIGURATIONS = {
    "lmdb group commit": ["--storage", "lmdb", "--fsync", "always"],
    "lmdb one fsync per write": ["--storage", "lmdb", "--fsync", "always", "--no-group-commit"],
    "memory": ["--storage", "memory"],
}


@contextmanager
def node(args: list[str], data_dir: str) -> Iterator[str]:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    command = [
        sys.executable, "-m", "kvactors", "--log-level", "WARNING", "node",
        "--name", "bench", "--bind", endpoint, "--data-dir", data_dir, *args,
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    try:
        wait_ready(endpoint, timeout=60)
        yield endpoint
    finally:
        process.terminate()
        process.wait(timeout=60)


def drive_puts(endpoint: str, seconds: float, inflight: int, first_key: int) -> float:
    """Acknowledged puts per second with `inflight` outstanding, each to a new key."""
    value = b"v" * 100
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    sent = first_key

    def send_next() -> None:
        nonlocal sent
        sock.send(msgpack.packb({"op": "put", "key": f"key-{sent}", "value": value, "id": sent}))
        sent += 1

    for _ in range(inflight):
        send_next()
    received = 0
    started = time.perf_counter()
    deadline = started + seconds
    while True:
        reply = msgpack.unpackb(sock.recv())
        if not reply.get("ok"):
            raise RuntimeError(f"a put failed: {reply}")
        received += 1
        if received & 15 == 0 and time.perf_counter() >= deadline:
            break
        send_next()
    elapsed = time.perf_counter() - started
    for _ in range(sent - first_key - received):
        if not sock.poll(10_000):
            break
        sock.recv()
    sock.close()
    return received / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--runs", type=int, default=3, help="measurements per configuration")
    parser.add_argument("--inflight", type=int, default=64, help="puts in flight")
    args = parser.parse_args()

    rates: dict[str, list[float]] = {name: [] for name in CONFIGURATIONS}
    bare: list[float] = []
    pings: list[Measurement] = []
    for run in range(args.runs):
        bare.append(bare_put_rate(args.seconds))
        for name, node_args in CONFIGURATIONS.items():
            with (
                tempfile.TemporaryDirectory(prefix="kvactors-bench-") as data_dir,
                node(node_args, data_dir) as endpoint,
            ):
                drive_puts(endpoint, 0.5, args.inflight, first_key=10_000_000)  # warm up
                rates[name].append(drive_puts(endpoint, args.seconds, args.inflight, 0))
                if name == "memory":
                    pings.append(closed_pings([endpoint], args.inflight, 0.0, args.seconds))
        print(f"run {run + 1}/{args.runs} done", file=sys.stderr)

    print(
        f"one node, {args.inflight} puts in flight, 100-byte values, new keys, "
        f"{args.seconds}s x {args.runs} runs, {os.cpu_count()} cores"
    )
    baseline = rates["lmdb one fsync per write"]
    print(f"{'configuration':28}{'puts/s':>10}{'x no group commit':>20}   ratio of each run")
    for name, measured in rates.items():
        ratios = [rate / base for rate, base in zip(measured, baseline, strict=True)]
        print(
            f"{name:28}{statistics.median(measured):>10,.0f}{statistics.median(ratios):>20.2f}"
            f"   {' '.join(f'{ratio:.2f}' for ratio in ratios)}"
        )
    print(bare_line(bare))
    print(ping_line(pings, f"the memory node, {args.inflight} in flight, closed loop"))


if __name__ == "__main__":
    main()
