"""Start a local cluster of node processes from Python, use it, and stop it.

This is `kvactors cluster` as a library call: `kvactors.launcher.LocalCluster` starts N
`kvactors node` processes on 127.0.0.1 (the first founds the cluster, the others join it
through the first), waits until each answers, and stops them all at the end, also on
Ctrl-C. In between, this script writes a few keys through one node and reads each back
through another, then prints the cluster's status table.

    python examples/local_cluster.py                  # 3 nodes on a free block of ports
    python examples/local_cluster.py --nodes 5 --base-port 5555
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from typing import Any

from kvactors import Client
from kvactors.cli import format_status
from kvactors.errors import KVActorsError
from kvactors.launcher import LocalCluster, free_port_block

HOST = "127.0.0.1"
# Well below Linux's ephemeral range (32768 up), where outgoing connections take ports.
# Gossip makes every node know every other within a second or two; this is generous.
CONVERGE_TIMEOUT = 30.0
POLL_INTERVAL = 0.1

CITIES = {
    "city:paris": {"country": "FR", "population": 2_102_650},
    "city:lagos": {"country": "NG", "population": 15_388_000},
    "city:lima": {"country": "PE", "population": 10_092_000},
    "city:osaka": {"country": "JP", "population": 2_752_412},
    "city:quito": {"country": "EC", "population": 2_800_388},
    "city:tunis": {"country": "TN", "population": 638_845},
}


class NotConvergedError(Exception):
    """The nodes did not all come to see each other in time."""


def wait_until_converged(cluster: LocalCluster) -> float:
    """Seconds until every node lists every node as alive.

    LocalCluster returns once each node answers; gossip needs a moment more to tell every
    node of every other, and until then two nodes may disagree on who owns a key.
    """
    started = time.monotonic()
    wanted = len(cluster.nodes)
    while not all(alive_members(endpoint) == wanted for endpoint in cluster.endpoints):
        if time.monotonic() - started > CONVERGE_TIMEOUT:
            raise NotConvergedError(f"the nodes did not all see each other in {CONVERGE_TIMEOUT}s")
        time.sleep(POLL_INTERVAL)
    return time.monotonic() - started


def alive_members(endpoint: str) -> int:
    with Client(endpoint, timeout=2.0, retries=0) as client:
        status: dict[str, Any] = client.status()
    return sum(1 for member in status["members"] if member["status"] == "alive")


def write_and_read_back(cluster: LocalCluster) -> int:
    """Each key written through one node and read through the next; returns the mismatches."""
    nodes = cluster.nodes
    mismatches = 0
    for index, (key, value) in enumerate(CITIES.items()):
        writer, reader = nodes[index % len(nodes)], nodes[(index + 1) % len(nodes)]
        with Client(writer.endpoint) as client:
            client.put(key, value)
        with Client(reader.endpoint) as client:
            found = client.get(key)
        if found == value:
            verdict = "the same"
        else:
            verdict = f"DIFFERENT: {found!r}"
            mismatches += 1
        print(f"  put {key} through {writer.name}, get through {reader.name}: {verdict}")
    return mismatches


def run(cluster: LocalCluster) -> int:
    for node in cluster.nodes:
        print(f"  {node.name}  {node.endpoint}  (pid {node.pid})")
    print(f"{len(cluster.nodes)} nodes running; {cluster.nodes[0].name} founded the cluster.")
    took = wait_until_converged(cluster)
    print(f"every node sees {len(cluster.nodes)} alive members ({took:.1f}s after the start)")

    print("\nWriting through one node and reading through another:")
    mismatches = write_and_read_back(cluster)
    print(f"read back {len(CITIES) - mismatches} of {len(CITIES)} keys through a different node")

    first = cluster.nodes[0]
    with Client(first.endpoint) as client:
        status = client.status()
    print(f"\nThe cluster as {first.name} sees it (`kvactors status -e {first.endpoint}`):\n")
    print(format_status(status))
    print(f"\n{first.name} passed {status['forwarded']} key operations on to their owners.")
    return 1 if mismatches else 0


def stop_on_sigterm(_number: int, _frame: object) -> None:
    raise KeyboardInterrupt  # leave the same way as on Ctrl-C: through the cleanup


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="Start a local cluster, use it, stop it.")
    parser.add_argument("--nodes", type=int, default=3, help="how many nodes (default 3)")
    parser.add_argument(
        "--base-port", type=int, help="the first node's port (default: a free block)"
    )
    args = parser.parse_args(argv)
    base_port = args.base_port if args.base_port is not None else free_port_block(args.nodes)
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    cluster = LocalCluster(args.nodes, base_port=base_port, host=HOST)
    print(f"Starting {args.nodes} node processes on {HOST}, ports {base_port} upwards...")
    code = 1
    try:
        cluster.start()
        code = run(cluster)
    except (KVActorsError, NotConvergedError) as problem:
        print(f"error: {problem}", file=sys.stderr)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the nodes")
        code = 130
    finally:
        # A second Ctrl-C must not cut the cleanup short and leave node processes behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        cluster.stop()
    exit_codes = [node.process.returncode for node in cluster.nodes if node.process]
    if code == 130:
        # The terminal's Ctrl-C reaches the nodes too, so their exit codes tell nothing here.
        print(f"stopped the {len(exit_codes)} nodes that had started")
        return code
    if all(exit_code == 0 for exit_code in exit_codes):
        print(f"stopped all {len(exit_codes)} nodes cleanly")
        return code
    print(f"stopped all {len(exit_codes)} nodes; exit codes {exit_codes}")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
