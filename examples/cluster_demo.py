"""A guided tour of a three-node kvactors cluster: share keys, lose a node, lose nothing.

Run it with `python examples/cluster_demo.py` (or `make demo`). It starts three node
processes on this machine, writes and reads keys through them with nothing but a ZeroMQ
socket and msgpack (as a program in any language would), crashes one node and watches
the other two notice, shows that every key is still there and that writes go on, then
stops everything. It explains each step as it goes.
"""

from __future__ import annotations

import shutil
import signal
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import msgpack
import zmq

from kvactors.cli import format_status
from kvactors.errors import KVActorsError
from kvactors.launcher import LocalCluster, free_port_block

HOST = "127.0.0.1"
NODES = 3
KEYS = 3_000
# Well below Linux's ephemeral range (32768 up), where outgoing connections take ports.
# Longer than a node's own request timeout (5 s), so its `timeout` reply arrives first.
REPLY_TIMEOUT_MS = 6_000
POLL_INTERVAL = 0.1
CONVERGE_TIMEOUT = 30.0
# A dead node is declared after 7.5 s of silence; this leaves room for a busy machine.
DETECTION_TIMEOUT = 30.0


class DemoError(Exception):
    """Something did not go as the tour expects (a node did not answer, say)."""


class Node:
    """A REQ socket to one node: send one msgpack map, receive one msgpack map."""

    def __init__(self, name: str, endpoint: str) -> None:
        self.name = name
        self.endpoint = endpoint
        self._socket = self._open()
        self._next_id = 1

    def _open(self) -> zmq.Socket[bytes]:
        sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)  # closing never waits for an unsent request
        sock.connect(self.endpoint)
        return sock

    def call(self, request: dict[str, Any]) -> dict[str, Any]:
        self._socket.send(msgpack.packb({**request, "id": self._next_id}))
        self._next_id += 1
        if not self._socket.poll(REPLY_TIMEOUT_MS):
            # A REQ socket cannot send again before it receives: start over with a new one.
            self._socket.close()
            self._socket = self._open()
            raise DemoError(f"{self.name} did not answer a {request['op']} request")
        reply: dict[str, Any] = msgpack.unpackb(self._socket.recv())
        return reply

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = self.call({"op": "status"})["status"]
        return status

    def close(self) -> None:
        self._socket.close()


def say(text: str = "") -> None:
    print(text, flush=True)


def explain(text: str, indent: str = "  ") -> None:
    say(textwrap.fill(text, width=88, initial_indent=indent, subsequent_indent=indent))


def step(title: str) -> None:
    say(f"\n== {title}")


def indented(text: str) -> str:
    return "\n".join(f"    {line}" if line else "" for line in text.splitlines())


def member_status(status: dict[str, Any], name: str) -> str:
    return str(next(m["status"] for m in status["members"] if m["name"] == name))


def alive_count(status: dict[str, Any]) -> int:
    return sum(1 for member in status["members"] if member["status"] == "alive")


# ------------------------------------------------------------------------------ the steps


def introduce() -> None:
    say("kvactors cluster demo")
    say("=====================")
    explain(
        "A cluster is a group of kvactors nodes (here, processes on this machine) that share "
        "the keys. Each key is kept on three nodes (its replicas). You may send any request "
        "to any node: it asks the key's replicas and answers once two of them agree, so one "
        "node can fail without losing a key or stopping the service. Nodes find each other, "
        "and notice failures, by themselves.",
        indent="",
    )


def start_cluster(cluster: LocalCluster) -> list[Node]:
    step(f"Step 1: start {NODES} nodes")
    cluster.start()
    first = cluster.nodes[0].name
    for node in cluster.nodes:
        say(f"  {node.name} listens on {node.endpoint} (process id {node.pid})")
    explain(
        f"{first} started a new cluster; the others joined it by contacting {first}. Nodes "
        "learn about each other by 'gossip': four times a second, each node swaps its list "
        "of members with one other node, so news reaches every node within a few swaps. No "
        "node is in charge: any member can let a newcomer in."
    )
    nodes = [Node(node.name, node.endpoint) for node in cluster.nodes]
    started = time.monotonic()
    while not all(alive_count(node.status()) == NODES for node in nodes):
        if time.monotonic() - started > CONVERGE_TIMEOUT:
            raise DemoError(f"the nodes did not all see each other in {CONVERGE_TIMEOUT:.0f}s")
        time.sleep(POLL_INTERVAL)
    took = time.monotonic() - started
    explain(f"Every node lists all {NODES} as alive, {took:.1f}s after the last one started.")
    return nodes


def share_keys(nodes: list[Node]) -> bool:
    step(f"Step 2: write {KEYS:,} keys and read each back through a different node")
    explain(
        "We use no kvactors code for this, only a ZeroMQ REQ socket (send one message, get "
        "one answer) and msgpack (a compact binary form of JSON), as a program in any "
        "language would. A request is one map, such as:"
    )
    say("      {'op': 'put', 'key': 'demo:7', 'value': {'n': 7}}")
    explain(
        f"Key i is written through node-(i % {NODES} + 1) and read back through the next "
        "node. A write is acknowledged once two replicas hold it; a read answers once two "
        "replicas have answered, with the newest version they know."
    )
    started = time.monotonic()
    for i in range(KEYS):
        reply = nodes[i % NODES].call({"op": "put", "key": f"demo:{i}", "value": {"n": i}})
        if not reply["ok"]:
            raise DemoError(f"put demo:{i} failed: {reply['error']}")
    wrote = time.monotonic() - started
    mismatches = 0
    for i in range(KEYS):
        reply = nodes[(i + 1) % NODES].call({"op": "get", "key": f"demo:{i}"})
        if not (reply["ok"] and reply.get("found") and reply["value"] == {"n": i}):
            mismatches += 1  # missing, or another value than the one written
    read = time.monotonic() - started - wrote
    timing = f"Wrote {KEYS:,} keys in {wrote:.1f}s and read them back in {read:.1f}s"
    say(f"  {timing}: {mismatches} mismatches.")
    explain(
        "(A mismatch is a key that came back missing or with another value.) The client "
        "never had to know which nodes hold which key: the cluster behaves like one store."
    )
    return mismatches == 0


def explain_table(nodes: list[Node]) -> dict[str, Any]:
    step(f"Step 3: the cluster as {nodes[0].name} sees it (what `kvactors status` prints)")
    status = nodes[0].status()
    say(indented(format_status(status)))
    explain(
        f"Keys are grouped into {status['partitions']} partitions (fixed slices of all "
        "possible keys); PARTITIONS counts those each node heads the replica list of. Which "
        "nodes hold which partition is worked out from the member names alone (the 'ring'), "
        "so every node that knows the same members gives the same answer, without asking "
        "anyone. Ring balance is the busiest node's share over the average: 1.0 would be "
        "perfect. INCARNATION is a counter a node raises to contradict a rumour that it is "
        "down. With three nodes and three replicas, every node holds every key."
    )
    return status


def crash_and_watch(cluster: LocalCluster, nodes: list[Node]) -> bool:
    victim, survivors = cluster.nodes[-1], nodes[:-1]
    step(f"Step 4: crash {victim.name} and watch the others notice")
    explain(
        f"We send {victim.name} SIGKILL (what `kill -9` sends): the process ends at once, "
        "with no chance to say goodbye, as in a power cut. Each node's gossip carries its "
        "'heartbeat', a counter it raises four times a second. The others cannot see a crash; "
        "they only see the heartbeat stop. After 3 s without it they 'suspect' the node (it "
        "may only be slow); after 7.5 s they declare it dead. Both times count from the last "
        "heartbeat they heard, a moment before the crash."
    )
    nodes[-1].close()
    victim.kill()
    crashed = time.monotonic()
    seen = {node.name: "alive" for node in survivors}
    while any(status != "dead" for status in seen.values()):
        elapsed = time.monotonic() - crashed
        if elapsed > DETECTION_TIMEOUT:
            explain(f"After {DETECTION_TIMEOUT:.0f}s {victim.name} is still not dead everywhere.")
            return False
        for node in survivors:
            status = member_status(node.status(), victim.name)
            if status != seen[node.name]:
                seen[node.name] = status
                verb = "marked" if status == "dead" else "now sees"
                say(f"  {elapsed:4.1f}s after the crash: {node.name} {verb} {victim.name} {status}")
        time.sleep(POLL_INTERVAL)
    status = survivors[0].status()
    say(f"\n  The cluster as {survivors[0].name} sees it now:")
    say(indented(format_status(status)))
    explain(
        f"{victim.name} heads no partitions any more: the survivors share all "
        f"{status['partitions']}. Nobody had to tell the cluster that a node was gone."
    )
    return True


def count_what_is_left(nodes: list[Node], victim: str) -> bool:
    step("Step 5: what that means for the data")
    explain(
        f"Every key had a copy on {victim}, and on both survivors too. Reading all "
        f"{KEYS:,} keys again through the survivors, then writing {KEYS // 3:,} new ones "
        "(each acknowledged by the two replicas still up):"
    )
    found = 0
    for i in range(KEYS):
        reply = nodes[i % len(nodes)].call({"op": "get", "key": f"demo:{i}"})
        found += bool(reply["ok"] and reply.get("found") and reply["value"] == {"n": i})
    written = 0
    for i in range(KEYS, KEYS + KEYS // 3):
        reply = nodes[i % len(nodes)].call({"op": "put", "key": f"demo:{i}", "value": {"n": i}})
        written += bool(reply["ok"])
    explain(
        f"{found:,} of {KEYS:,} keys read back intact, {KEYS - found:,} lost; "
        f"{written:,} of {KEYS // 3:,} new writes acknowledged. A third node failing now would "
        "stop writes (two replicas must agree) with an 'unavailable' error, rather than keep "
        "a single copy without saying so."
    )
    return found == KEYS and written == KEYS // 3


def stop_cluster(cluster: LocalCluster, nodes: list[Node]) -> bool:
    """Stop every node; True if each one still running stopped cleanly."""
    step("Step 6: stop the cluster")
    for node in nodes:
        node.close()
    running = [node for node in cluster.nodes if node.running]
    cluster.stop()
    explain(
        "Each node still running gets SIGTERM, the polite request to stop: it finishes what "
        "it was doing and exits."
    )
    for node in running:
        assert node.process is not None
        say(f"  {node.name} stopped (exit code {node.process.returncode}; 0 means cleanly).")
    return all(node.process is not None and node.process.returncode == 0 for node in running)


def main() -> int:
    introduce()
    try:
        base_port = free_port_block(NODES)
    except DemoError as problem:
        say(f"\n{problem}")
        return 1
    logs = Path(tempfile.mkdtemp(prefix="kvactors-demo-"))
    cluster = LocalCluster(NODES, base_port=base_port, host=HOST, log_dir=logs)
    nodes: list[Node] = []
    outcome, clean = "failed", False
    try:
        nodes = start_cluster(cluster)
        ok = share_keys(nodes)
        explain_table(nodes)
        victim = cluster.nodes[-1].name
        if crash_and_watch(cluster, nodes):
            intact = count_what_is_left(nodes[:-1], victim)
            outcome = "done" if ok and intact else "failed"
    except (DemoError, KVActorsError) as problem:
        say(f"\n  The tour stopped early: {problem}.")
    except KeyboardInterrupt:
        outcome = "interrupted"
    finally:
        # A second Ctrl-C must not cut the cleanup short and leave node processes behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if outcome == "interrupted":
            # The terminal's Ctrl-C reaches the nodes too, and they stop on it by themselves.
            for node in nodes:
                node.close()
            cluster.stop()
            say("\nInterrupted; every node has stopped.")
        else:
            clean = stop_cluster(cluster, nodes)
    if outcome == "interrupted":
        shutil.rmtree(logs, ignore_errors=True)
        return 130
    if outcome == "failed" or not clean:
        say(f"\nSomething went wrong; the nodes' logs are in {logs}")
        return 1
    shutil.rmtree(logs, ignore_errors=True)
    say("\nEvery node has stopped cleanly. That was the whole tour.")
    return 0


def stop_on_sigterm(_number: int, _frame: object) -> None:
    raise KeyboardInterrupt  # leave the same way as on Ctrl-C: through the cleanup


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    sys.exit(main())
