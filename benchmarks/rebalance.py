"""Client throughput while a node joins a loaded cluster, against the throughput before.

A 3-node `LocalCluster` (N=3, R=W=2, memory backend) is loaded with `--keys` keys. A
pipelined load from this process (one DEALER per node, `--inflight` requests in flight,
half puts of new keys and half gets of loaded ones) runs throughout; its replies per
second are measured for `--seconds` before the join (the baseline), then from the moment
a fourth node answers until it owns its share (the transfer: it pulls every partition it
will replicate, catches up, and announces itself alive), then for `--seconds` after.
The figure is the ratio of the rate during the transfer to the rate before, median over
`--runs` runs. Target (issue 6): at least 0.70.

Each run also measures the bare server's put rate before the cluster starts and, once
the keys are loaded, pings over the three nodes with the same number in flight (the
ping floor): the machine's pace in this run (see _reference.py).

    python benchmarks/rebalance.py [--keys 100000] [--runs 3] [--seconds 5]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from dataclasses import dataclass

import msgpack
import zmq
from _loadgen import Measurement
from _reference import bare_line, bare_put_rate, closed_pings, ping_line

from kvactors import Client
from kvactors.core.hashing import partition_of
from kvactors.core.ring import Ring
from kvactors.errors import KVActorsError
from kvactors.launcher import LocalCluster, NodeProcess, free_port_block

PARTITIONS = 2048


class Load:
    """Keeps `inflight` requests outstanding over one DEALER per endpoint; counts replies."""

    def __init__(self, endpoints: list[str], keys: int, inflight: int) -> None:
        self._sockets = []
        self._poller = zmq.Poller()
        for endpoint in endpoints:
            sock = zmq.Context.instance().socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(endpoint)
            self._sockets.append(sock)
            self._poller.register(sock, zmq.POLLIN)
        self._keys = keys
        self._sent = 0
        self.replies = 0
        self.errors = 0
        for _ in range(inflight):
            self._send()

    def _send(self) -> None:
        number = self._sent
        self._sent += 1
        if number % 2:
            request = {"op": "get", "key": f"key-{number % self._keys}", "id": number}
        else:
            request = {"op": "put", "key": f"new-{number}", "value": b"v" * 100, "id": number}
        self._sockets[number % len(self._sockets)].send(msgpack.packb(request))

    def run_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for sock, _ in self._poller.poll(20):
                while sock.get(zmq.EVENTS) & zmq.POLLIN:
                    reply = msgpack.unpackb(sock.recv())
                    self.replies += 1
                    self.errors += not reply.get("ok")
                    self._send()

    def rate_over(self, seconds: float) -> float:
        before, started = self.replies, time.monotonic()
        self.run_for(seconds)
        return (self.replies - before) / (time.monotonic() - started)


@dataclass
class Run:
    before: float
    during: float
    after: float
    transfer_seconds: float
    errors: int
    bare: float
    ping: Measurement

    @property
    def ratio(self) -> float:
        return self.during / self.before


def _answers(endpoint: str) -> bool:
    with contextlib.suppress(KVActorsError), Client(endpoint, timeout=1.0, retries=0) as client:
        client.status()
        return True
    return False


def _owns_its_share(endpoint: str) -> bool:
    """The join handoff is over: the newcomer announced itself alive, and owns."""
    with Client(endpoint, timeout=10.0, retries=0) as client:
        status = client.status()
    me = next(m for m in status["members"] if m["name"] == status["node"])
    return bool(me["status"] == "alive" and me["partitions"] > 0)


def stored_keys(endpoint: str) -> int:
    with Client(endpoint, timeout=10.0, retries=0) as client:
        return int(client.status()["storage"]["keys"])


def measure(keys: int, seconds: float, inflight: int) -> Run:
    bare = bare_put_rate(seconds)
    port = free_port_block(4)
    with LocalCluster(3, base_port=port) as cluster:
        with Client(cluster.endpoints[0], timeout=60.0) as client:
            for start in range(0, keys, 2_000):
                client.put_many({f"key-{n}": n for n in range(start, min(keys, start + 2_000))})
        ring = Ring.build([node.name for node in cluster.nodes] + ["node-4"], partitions=PARTITIONS)
        share = sum(
            "node-4" in ring.preference_list(partition_of(f"key-{n}".encode(), PARTITIONS), 3)
            for n in range(keys)
        )
        ping = closed_pings(cluster.endpoints, inflight, 0.0, seconds)
        load = Load(cluster.endpoints, keys, inflight)
        load.run_for(1.0)  # warm up
        before = load.rate_over(seconds)
        newcomer = NodeProcess(
            "node-4", f"tcp://127.0.0.1:{port + 3}", ["--join", cluster.endpoints[0]]
        )
        newcomer.launch()
        try:
            # The process's own start (imports, 2,048 StoreServers) is not the transfer:
            # it begins once the newcomer answers, and ends when it owns its share.
            while not _answers(newcomer.endpoint):
                load.run_for(0.1)
            started, replies_at_start = time.monotonic(), load.replies
            while not _owns_its_share(newcomer.endpoint):
                load.run_for(0.25)
            transfer = time.monotonic() - started
            during = (load.replies - replies_at_start) / transfer
            if stored_keys(newcomer.endpoint) < share:
                raise SystemExit("the newcomer owns its share but does not hold it")
            after = load.rate_over(seconds)
        finally:
            newcomer.stop()
        return Run(before, during, after, transfer, load.errors, bare, ping)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=100_000, help="keys loaded before the join")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="before and after")
    parser.add_argument("--inflight", type=int, default=32, help="requests in flight")
    args = parser.parse_args()
    runs = []
    for run in range(args.runs):
        runs.append(measure(args.keys, args.seconds, args.inflight))
        print(f"run {run + 1}/{args.runs} done", file=sys.stderr)
    print(
        f"3 nodes + 1 joining, N=3, {args.keys} keys loaded, {args.inflight} in flight "
        f"(half puts of new keys, half gets), {os.cpu_count()} cores, {args.runs} runs"
    )
    print(f"{'':28}{'median':>10}   each run")
    rows = [
        ("ops/s before the join", [r.before for r in runs]),
        ("ops/s during the transfer", [r.during for r in runs]),
        ("ops/s after", [r.after for r in runs]),
        ("transfer seconds", [r.transfer_seconds for r in runs]),
    ]
    for label, values in rows:
        each = " ".join(f"{v:,.1f}" for v in values)
        print(f"{label:28}{statistics.median(values):>10,.1f}   {each}")
    ratios = [r.ratio for r in runs]
    met = "met" if statistics.median(ratios) >= 0.70 else "NOT met"
    print(
        f"during / before: {statistics.median(ratios):.2f} "
        f"(runs: {' '.join(f'{r:.2f}' for r in ratios)}); target >= 0.70: {met}"
    )
    print(f"failed requests: {sum(r.errors for r in runs)}")
    print(bare_line([r.bare for r in runs]))
    print(ping_line([r.ping for r in runs], f"3 nodes, {args.inflight} in flight, closed loop"))


if __name__ == "__main__":
    main()
