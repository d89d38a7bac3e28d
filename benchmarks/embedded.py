"""Embedded throughput: `system.client` put/get calls per second against a baseline.

The baseline is a plain dict behind a single Pykka actor, driven the same way (one
blocking `ask` per call) in the same run. The ratio kvactors/baseline is what matters
on a shared, noisy machine; each figure is the median of several runs.

Each run also measures the machine's pace (see _reference.py): the bare pyzmq+msgpack
server's put rate over a socket, for 2 s, and the in-process ping floor, blocking asks
of the baseline actor that touch no data, one caller, each one timed.

    python benchmarks/embedded.py [--ops 20000] [--runs 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import pykka
from _loadgen import percentile
from _reference import bare_line, bare_put_rate

from kvactors import ActorSystem

BARE_SECONDS = 2.0


class DictActor(pykka.ThreadingActor):
    """The baseline: the seed's map in one actor, with no partitions and no checks."""

    def __init__(self) -> None:
        super().__init__()
        self.data: dict[Any, Any] = {}

    def on_receive(self, message: tuple[str, Any, Any]) -> Any:
        op, key, value = message
        if op == "ping":
            return None
        if op == "put":
            self.data[key] = value
            return None
        return self.data.get(key)


def rate(call: Callable[[int], object], ops: int, threads: int) -> float:
    """Calls per second of `call(i)` for i in range(ops), split over `threads` threads."""
    share = ops // threads

    def work(offset: int) -> None:
        for i in range(offset, offset + share):
            call(i)

    workers = [threading.Thread(target=work, args=(t * share,)) for t in range(threads)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return share * threads / (time.perf_counter() - started)


def ping_latencies(actor: pykka.ActorRef[DictActor], count: int) -> list[float]:
    """Seconds each of `count` blocking asks takes, of a message that touches no data."""
    latencies = []
    clock = time.perf_counter
    for _ in range(count):
        started = clock()
        actor.ask(("ping", None, None))
        latencies.append(clock() - started)
    return latencies


def measure(ops: int, threads: int) -> dict[str, float]:
    value = b"x" * 100
    keys = [f"key-{i}" for i in range(ops)]
    bare = bare_put_rate(BARE_SECONDS)
    baseline = DictActor.start()
    try:
        base_put = rate(lambda i: baseline.ask(("put", keys[i], value)), ops, threads)
        base_get = rate(lambda i: baseline.ask(("get", keys[i], None)), ops, threads)
        pings = ping_latencies(baseline, ops)
    finally:
        baseline.stop()
    with ActorSystem() as system:
        client = system.client
        kv_put = rate(lambda i: client.put(keys[i], value), ops, threads)
        kv_get = rate(lambda i: client.get(keys[i]), ops, threads)
    return {
        "base_put": base_put,
        "base_get": base_get,
        "kv_put": kv_put,
        "kv_get": kv_get,
        "bare": bare,
        "ping_rate": len(pings) / sum(pings),
        "ping_p50_us": percentile(pings, 0.50) * 1e6,
        "ping_p99_us": percentile(pings, 0.99) * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=20_000, help="calls per measurement")
    parser.add_argument("--runs", type=int, default=5, help="runs; medians are reported")
    parser.add_argument("--threads", type=int, default=1, help="caller threads")
    args = parser.parse_args()

    runs = [measure(args.ops, args.threads) for _ in range(args.runs)]
    median = {name: statistics.median(run[name] for run in runs) for name in runs[0]}
    put_ratios = [run["kv_put"] / run["base_put"] for run in runs]
    get_ratios = [run["kv_get"] / run["base_get"] for run in runs]
    print(
        f"embedded, {args.ops} calls x {args.runs} runs, {args.threads} caller thread(s), "
        "100-byte values"
    )
    print(f"{'':6}{'baseline ops/s':>16}{'kvactors ops/s':>16}{'ratio (median)':>16}")
    print(
        f"{'put':6}{median['base_put']:>16,.0f}{median['kv_put']:>16,.0f}"
        f"{statistics.median(put_ratios):>16.2f}"
    )
    print(
        f"{'get':6}{median['base_get']:>16,.0f}{median['kv_get']:>16,.0f}"
        f"{statistics.median(get_ratios):>16.2f}"
    )
    print(bare_line([run["bare"] for run in runs]))
    p99s = " ".join(f"{run['ping_p99_us']:.0f}" for run in runs)
    print(
        f"ping floor (blocking asks of an actor that touches no data, one caller): "
        f"{median['ping_rate']:,.0f}/s, p50 {median['ping_p50_us']:.0f} us, "
        f"p99 {median['ping_p99_us']:.0f} us (medians; p99 of each run: {p99s})"
    )


if __name__ == "__main__":
    main()
