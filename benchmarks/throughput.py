"""Throughput of one kvactors node against a bare pyzmq+msgpack dict server.

Both servers run as their own processes and are driven in turn by the same pipelined
load from this process: DEALER sockets keeping the same number of requests in flight,
over the same key space, with 100-byte values. Each (server, op) is measured `--runs`
times; the medians of the rates and of the paired ratios kvactors/bare are printed.

With `--baseline-ref REF`, each run also measures a node of REF's tree (see _builds.py)
beside this tree's, the two in alternating order after the bare server, and prints each
build's rate per run and the median of the runs' ratios new/old.

With `--secure`, each run also measures a secure node (CURVE, its own key and a trust
dir; the load holds an admin client key, see _secure.py) beside an insecure one, the two
in alternating order after the bare server, and prints the median of the runs' ratios
secure/insecure.

Each server is also sent pings the same way (the same number in flight, closed loop):
a node answers a ping on its transport thread without touching data, so the ping rate
and latency of the node are its floor in this run (the machine, ZeroMQ and the request
loop alone), printed beside the puts and gets; pings to the bare server show what the
load generator and the machine manage at that moment.

    python benchmarks/throughput.py [--seconds 3] [--runs 3] [--inflight 64]
                                    [--baseline-ref REF [--new-ref REF] | --secure]
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
from pathlib import Path

import msgpack
import zmq
from _builds import (
    Build,
    add_build_options,
    builds,
    current_build,
    in_turn,
    paired,
    rate_row,
    ratio_row,
)
from _loadgen import DealerLoad, Measurement
from _secure import Credentials, connect, credentials, verdict

from kvactors.launcher import ClusterKeys, free_port_block

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


NODE_NAME = "bench"


@contextmanager
def server(kind: str | Build, keys: ClusterKeys | None = None) -> Iterator[str]:
    """The bare server (kind "bare") or a kvactors node of the given build; secure with
    `keys` (a key pair named NODE_NAME in them)."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    if kind == "bare":
        process = subprocess.Popen(
            [sys.executable, str(HERE / "bare_server.py"), endpoint], stdout=subprocess.DEVNULL
        )
    else:
        assert isinstance(kind, Build)
        node = ["--log-level", "WARNING", "node", "--name", NODE_NAME, "--bind", endpoint]
        node += keys.node_args(NODE_NAME) if keys is not None else []
        process = kind.popen(node, stdout=subprocess.DEVNULL)
    try:
        if keys is None:
            wait_ready(endpoint)
        else:
            wait_secure_ready(keys, endpoint)
        yield endpoint
    finally:
        process.terminate()
        process.wait(timeout=30)


def wait_secure_ready(keys: ClusterKeys, endpoint: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not keys.answers(endpoint):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{endpoint} did not answer within {timeout}s")


def drive(
    endpoint: str,
    op: str,
    seconds: float,
    inflight: int,
    keyspace: int,
    *,
    secure: Credentials | None = None,
) -> float:
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
    # A node that dies mid-run raises zmq.Again here instead of hanging the benchmark.
    sock.setsockopt(zmq.RCVTIMEO, 30_000)
    connect(sock, endpoint, secure)
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


Rates = dict[tuple[str, str], list[float]]
Pings = dict[str, list[Measurement]]


def measure(
    kind: str | Build, args: argparse.Namespace, keys: ClusterKeys | None = None
) -> tuple[dict[str, float], Measurement]:
    """Puts, then gets of the keys they wrote, then pings, on a fresh server: ops/s for
    each, and the pings' measurement (with their latencies)."""
    with server(kind, keys) as endpoint:
        secure = None if keys is None else credentials(keys, {endpoint: NODE_NAME})
        rates = {
            op: drive(endpoint, op, args.seconds, args.inflight, args.keyspace, secure=secure)
            for op in ("put", "get")
        }
        if keys is not None:
            # drive() counts replies unread: make sure they were answers, not refusals.
            check_served(endpoint, secure)
        load = DealerLoad([endpoint], secure=secure)
        try:
            pings = load.closed_loop("ping", args.inflight, 0.0, args.seconds)
        finally:
            load.close()
        rates["ping"] = pings.rate
        return rates, pings


def record(
    rates: Rates, pings: Pings, name: str, measured: tuple[dict[str, float], Measurement]
) -> None:
    for op, rate in measured[0].items():
        rates.setdefault((name, op), []).append(rate)
    pings.setdefault(name, []).append(measured[1])


def check_served(endpoint: str, secure: Credentials | None) -> None:
    """A get of a key the puts wrote is answered with its value (not refused)."""
    sock = connect(zmq.Context.instance().socket(zmq.DEALER), endpoint, secure)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.send(msgpack.packb({"op": "get", "key": "key-0", "id": 1}))
        if not sock.poll(10_000):
            raise RuntimeError(f"{endpoint} did not answer a get")
        reply = msgpack.unpackb(sock.recv())
    finally:
        sock.close()
    if not (reply.get("ok") and reply.get("found")):
        raise RuntimeError(f"{endpoint} did not serve the measured load: {reply}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--runs", type=int, default=3, help="measurements per server and op")
    parser.add_argument("--inflight", type=int, default=64, help="requests in flight")
    parser.add_argument("--keyspace", type=int, default=10_000, help="distinct keys")
    add_build_options(parser)
    parser.add_argument(
        "--secure",
        action="store_true",
        help="also measure a secure node beside an insecure one in each run, and print "
        "the ratios secure/insecure",
    )
    args = parser.parse_args()
    if args.secure:
        if args.baseline_ref:
            raise SystemExit("--secure and --baseline-ref are separate comparisons")
        compare_secure(args)
        return

    with builds(args) as (old, new):
        rates: Rates = {}
        pings: Pings = {}
        for run in range(args.runs):
            # The bare server first, as before; the two builds then in alternating order.
            servers = (
                [("kvactors", new)]
                if old is None
                else in_turn(run, ("old", old), ("kvactors", new))
            )
            for name, kind in [("bare", "bare"), *servers]:
                record(rates, pings, name, measure(kind, args))
            print(f"run {run + 1}/{args.runs} done", file=sys.stderr)
        report(args, rates, pings, new, old)


def compare_secure(args: argparse.Namespace) -> None:
    """Each run: the bare server, then an insecure and a secure node of this checkout in
    alternating order (the insecure first in runs 1, 3, ...)."""
    new = current_build()
    rates: Rates = {}
    pings: Pings = {}
    with tempfile.TemporaryDirectory(prefix="kvactors-bench-keys-") as directory:
        keys = ClusterKeys.create(directory, [NODE_NAME])
        for run in range(args.runs):
            plan = [("bare", None), *in_turn(run, ("insecure", None), ("secure", keys))]
            for name, node_keys in plan:
                kind: str | Build = "bare" if name == "bare" else new
                record(rates, pings, name, measure(kind, args, node_keys))
            print(f"run {run + 1}/{args.runs} done", file=sys.stderr)
    print(
        f"one node, pipelined load: {args.inflight} in flight, {args.keyspace} keys, "
        f"100-byte values, {args.seconds}s x {args.runs} runs, {os.cpu_count()} cores"
    )
    print("secure: CURVE with a key pair per side, each message checked against the trust set")
    print("the insecure node went first in runs 1, 3, ...")
    print(f"{'':36}{'median':>12}   each run")
    for op in ("put", "get", "ping"):
        print(rate_row(f"{op} ops/s, bare", rates[("bare", op)]))
        print(rate_row(f"{op} ops/s, insecure", rates[("insecure", op)]))
        print(rate_row(f"{op} ops/s, secure", rates[("secure", op)]))
        print(ratio_row(f"{op} secure/insecure", rates[("secure", op)], rates[("insecure", op)]))
    for name in ("insecure", "secure"):
        print(ping_floor(args, name, pings[name]))
    for op in ("put", "get"):
        middle, _ = paired(rates[("secure", op)], rates[("insecure", op)])
        print(f"{op}: {verdict(middle)}")


def ping_floor(args: argparse.Namespace, name: str, pings: list[Measurement]) -> str:
    """The latency of the pings on one server: medians over runs, and each run's p99."""
    p50 = statistics.median(m.p50_ms for m in pings)
    p99s = [m.p99_ms for m in pings]
    return (
        f"ping floor, {name} ({args.inflight} in flight, closed loop): p50 {p50:.2f} ms, "
        f"p99 {statistics.median(p99s):.2f} ms (p99 of each run: "
        f"{' '.join(f'{p:.2f}' for p in p99s)})"
    )


def report(
    args: argparse.Namespace,
    rates: Rates,
    pings: Pings,
    new: Build,
    old: Build | None,
) -> None:
    print(
        f"one node, pipelined load: {args.inflight} in flight, {args.keyspace} keys, "
        f"100-byte values, {args.seconds}s x {args.runs} runs, {os.cpu_count()} cores"
    )
    print(f"{'op':6}{'bare ops/s':>14}{'kvactors ops/s':>16}{'ratio':>8}   ratio of each run")
    for op in ("put", "get", "ping"):
        bare, kv = rates[("bare", op)], rates[("kvactors", op)]
        # Each run measures both servers back to back, so its ratio is paired against the
        # machine's load at that moment; the median of the paired ratios is the figure.
        ratios = [k / b for k, b in zip(kv, bare, strict=True)]
        print(
            f"{op:6}{statistics.median(bare):>14,.0f}{statistics.median(kv):>16,.0f}"
            f"{statistics.median(ratios):>8.2f}   {' '.join(f'{r:.2f}' for r in ratios)}"
        )
    print(
        "the bare server's put rate is the machine's pace in this run; pings are answered "
        "without touching data"
    )
    print(ping_floor(args, "kvactors node", pings["kvactors"]))
    if old is None:
        return
    print()
    print(f"new: {new.label}; old: {old.label}; the old build went first in runs 1, 3, ...")
    print(f"{'':36}{'median':>12}   each run")
    for op in ("put", "get", "ping"):
        print(rate_row(f"{op} ops/s, old", rates[("old", op)]))
        print(rate_row(f"{op} ops/s, new", rates[("kvactors", op)]))
        print(ratio_row(f"{op} new/old", rates[("kvactors", op)], rates[("old", op)]))
        print(ratio_row(f"{op} old/bare", rates[("old", op)], rates[("bare", op)]))
    print(ping_floor(args, "old node", pings["old"]))


if __name__ == "__main__":
    main()
