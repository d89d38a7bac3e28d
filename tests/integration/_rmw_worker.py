"""One client process of the concurrent read-modify-write test (test_replication.py).

It adds `--count` distinct integers (worker * count + 0 .. count - 1) to a set stored as
a sorted list under `--key`, one read-modify-write per element, in one of two modes:

- ``update``: `Client.update` with set union as the sibling merge (causal contexts);
- ``blind``: `Client.get`, then `Client.put` without a context (the control, which loses
  concurrent writers' elements).

Its client starts at endpoint number `worker` (round robin), the others as failover. It
prints ``ready`` once connected, waits for a line on stdin (so every worker starts at
once), then prints one JSON line of figures and exits 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from kvactors import Client
from kvactors.errors import KVActorsError

# An element is added again after an error (adding is idempotent); this many times at most.
ATTEMPTS_PER_ELEMENT = 5


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("endpoints", nargs="+")
    parser.add_argument("--worker", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--key", default="rmw:set")
    parser.add_argument("--mode", choices=("update", "blind"), default="update")
    parser.add_argument("--timeout", type=float, default=5.0)
    return parser.parse_args(argv)


class SetAdder:
    """Adds elements to the set under one key; counts what the merges saw."""

    def __init__(self, client: Client, key: str, mode: str) -> None:
        self.client = client
        self.key = key
        self.mode = mode
        self.merges = 0
        self.siblings_merged = 0

    def union(self, siblings: list[Any]) -> list[int]:
        # Called only when concurrent writes left siblings.
        self.merges += 1
        self.siblings_merged += len(siblings)
        return sorted(set().union(*siblings))

    def add(self, element: int) -> None:
        def with_element(current: list[int]) -> list[int]:
            return sorted({*current, element})

        if self.mode == "update":
            self.client.update(self.key, with_element, merge=self.union, default=[])
        else:
            self.client.put(self.key, with_element(self.client.get(self.key, default=[])))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    first = args.worker % len(args.endpoints)
    endpoints = [*args.endpoints[first:], *args.endpoints[:first]]
    errors: list[str] = []
    failed: list[int] = []
    with Client(endpoints, timeout=args.timeout) as client:
        client.ping()
        adder = SetAdder(client, args.key, args.mode)
        print("ready", flush=True)
        sys.stdin.readline()
        started = time.perf_counter()
        for element in range(args.worker * args.count, (args.worker + 1) * args.count):
            for _ in range(ATTEMPTS_PER_ELEMENT):
                try:
                    adder.add(element)
                    break
                except KVActorsError as error:
                    errors.append(f"{type(error).__name__}: {error}")
            else:
                failed.append(element)
        elapsed = time.perf_counter() - started
    report = {
        "worker": args.worker,
        "endpoint": endpoints[0],
        "mode": args.mode,
        "elapsed": round(elapsed, 3),
        "merges": adder.merges,
        "siblings_merged": adder.siblings_merged,
        "errors": errors[:20],
        "error_count": len(errors),
        "failed": failed,
    }
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
