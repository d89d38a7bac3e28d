"""Embed a kvactors node in a Python program and use it; then watch it heal a crash.

Run it with `python examples/embedded.py` (or `make demo`).
"""

from __future__ import annotations

import logging
import time

from kvactors import ActorSystem, BadRequestError, NodeConfig
from kvactors.testing import crash_store_server, wait_until


def main() -> None:
    # The crashes below are on purpose; keep their log lines (with tracebacks) out of the story.
    logging.basicConfig(level=logging.CRITICAL)
    config = NodeConfig(name="demo-node")
    with ActorSystem(config) as system:
        client = system.client
        print(f"Started node {system.name!r} with {config.partitions} partitions,")
        print("each served by its own StoreServer actor under a StoreSupervisor.")

        client.put("user:1", {"name": "Ada", "langs": ["en", "fr"]})
        print(f"put user:1 -> get user:1 = {client.get('user:1')}")
        print(f"get of a key never written = {client.get('user:404')!r} (a miss is not an error)")

        started = time.perf_counter()
        client.put_many({f"item:{i}": {"n": i} for i in range(10_000)})
        found = client.get_many(f"item:{i}" for i in range(10_000))
        elapsed = time.perf_counter() - started
        print(f"wrote and read back {len(found)} keys in batches in {elapsed:.2f}s")

        print("\nNow 5 StoreServers crash on purpose, one after another...")
        for partition in range(5):
            crashed = system.store_server(partition)
            crash_store_server(system, partition)
            wait_until(lambda p=partition, c=crashed: system.store_server(p) not in (None, c))
        restarts = system.store_supervisor().restart_count().get()
        intact = client.get_many(f"item:{i}" for i in range(10_000))
        print(f"the StoreSupervisor restarted them {restarts} times;")
        print(
            f"{len(intact)} of 10000 keys are still there, each with its value: "
            f"{all(intact[f'item:{i}'] == {'n': i} for i in range(10_000))}"
        )

        try:
            client.put(3.14, "a float is no key")  # type: ignore[arg-type]
        except BadRequestError as error:
            print(f"\nbad input gets a clear error ({error.code}): {error}")
        client.put("still", "serving")
        print(f"...and the node keeps serving: get still = {client.get('still')!r}")
    print(f"\nNode {config.name!r} stopped cleanly.")


if __name__ == "__main__":
    main()
