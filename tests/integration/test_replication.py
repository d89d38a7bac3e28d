"""Replication across real node processes: N=3 copies, R=W=2, versions, read repair.

Every node is a separate `kvactors node` process (kvactors.launcher) on loopback, killed
with SIGKILL where a test needs a crash; every client is `kvactors.Client`, and the
concurrent read-modify-write runs in separate client processes (`_rmw_worker.py`).
Nothing is mocked. Bounds the issue sets (a request never hangs past its timeout;
`unavailable` within the dead timeout) are measured and asserted; every other wait polls
a condition until a generous deadline, so a busy machine is slower but not wrong.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest

from kvactors import Client
from kvactors.config import NodeConfig
from kvactors.errors import KVActorsError, RequestTimeoutError, UnavailableError
from kvactors.launcher import LocalCluster, NodeProcess, free_port_block
from kvactors.testing import replica_state, stored_values, wait_until

_DEFAULTS = NodeConfig(name="defaults")
# When a killed node is dead in every survivor's view, at the latest (as test_cluster).
DEAD_BOUND = _DEFAULTS.dead_timeout + 2 * _DEFAULTS.gossip_interval
# The client's default timeout: a request must return within it (plus HANG_MARGIN).
REPLY_TIMEOUT = 5.0
HANG_MARGIN = 1.0
# Once the deaths are known, `unavailable` comes at once; "fast" is far below a second.
FAST = 0.5
# Slack on the dead bound for a loaded machine (gossip runs late when the CPU is busy).
DETECTION_MARGIN = 2.0
# How long a wait for a condition may take before the test gives up.
PATIENCE = 30.0
POLL = 0.05
WORKER = Path(__file__).with_name("_rmw_worker.py")


# -- helpers ----------------------------------------------------------------------------


@contextlib.contextmanager
def three_node_cluster(log_dir: Path) -> Iterator[LocalCluster]:
    """Three node processes (N=3, R=W=2 by default), every one seeing all three alive."""
    with LocalCluster(3, base_port=free_port_block(3), log_dir=log_dir) as local:
        yield local


@contextlib.contextmanager
def clients_of(nodes: Sequence[NodeProcess]) -> Iterator[dict[str, Client]]:
    """One Client per node, by name, bound to that node alone (no failover)."""
    with contextlib.ExitStack() as stack:
        yield {
            node.name: stack.enter_context(Client(node.endpoint, timeout=REPLY_TIMEOUT, retries=0))
            for node in nodes
        }


def view_of(client: Client) -> dict[str, tuple[str, int]]:
    """The node's member table: name -> (status, incarnation)."""
    return {m["name"]: (m["status"], m["incarnation"]) for m in client.status()["members"]}


def wait_for_views(
    clients: dict[str, Client], condition: Callable[[dict[str, tuple[str, int]]], bool], what: str
) -> None:
    """Wait until every client's node has a member table meeting `condition`."""
    for name, client in clients.items():
        wait_until(
            lambda client=client: condition(view_of(client)),  # type: ignore[misc]
            timeout=PATIENCE,
            interval=POLL,
            message=f"{name} never saw: {what} (last view: {view_of(client)})",
        )


def read_repairs(clients: dict[str, Client]) -> int:
    return sum(int(client.status()["read_repairs"]) for client in clients.values())


def union(siblings: list[Any]) -> list[int]:
    """The sibling merge of a set stored as a sorted list."""
    return sorted(set().union(*siblings))


# -- 1. one node killed -----------------------------------------------------------------

BEFORE_KILL = 150
AFTER_DEATH = 1.0  # seconds of writes once both survivors list the victim dead


@dataclass
class Failure:
    since_kill: float
    writer: str
    reader: str
    problem: str


def write_then_read(
    writer: Client, reader: Client, key: str, value: Any
) -> tuple[bool, str | None]:
    """Put through `writer`, get through `reader`: (acknowledged, what went wrong)."""
    try:
        writer.put(key, value)
    except KVActorsError as error:
        return False, f"put: {error!r}"
    try:
        read = reader.get(key)
    except KVActorsError as error:
        return True, f"get: {error!r}"
    return True, None if read == value else f"get read {read!r}"


@pytest.mark.timeout(90)
# Each node in turn in the long run; the middle one in CI (the test takes 15 s a node).
@pytest.mark.parametrize(
    "victim",
    [
        pytest.param("node-1", marks=pytest.mark.slow),
        "node-2",
        pytest.param("node-3", marks=pytest.mark.slow),
    ],
)
def test_with_one_node_killed_every_acknowledged_write_reads_back_through_each_survivor(
    tmp_path: Path, victim: str
) -> None:
    with three_node_cluster(tmp_path) as local, clients_of(local.nodes) as clients:
        names = list(clients)
        acknowledged: dict[str, Any] = {}
        for index in range(BEFORE_KILL):
            key, value = f"before:{index}", {"index": index, "via": names[index % 3]}
            clients[names[index % 3]].put(key, value)
            acknowledged[key] = value

        local.node(victim).kill()
        killed_at = time.monotonic()
        survivors = {name: client for name, client in clients.items() if name != victim}
        pair = list(survivors)
        failures: list[Failure] = []
        dead_at: dict[str, float] = {}
        slowest = 0.0
        next_look = killed_at
        stop_at: float | None = None
        index = 0
        # Writes alternate between the survivors; each is read back at once through the
        # other one. They run through every phase: victim unnoticed, suspect, dead.
        while stop_at is None or time.monotonic() < stop_at:
            assert time.monotonic() - killed_at < DEAD_BOUND + PATIENCE, (
                f"the survivors never both listed {victim} dead: {dead_at}"
            )
            writer, reader = pair[index % 2], pair[(index + 1) % 2]
            key, value = f"after:{index}", {"index": index, "via": writer}
            index += 1
            started = time.monotonic()
            written, problem = write_then_read(survivors[writer], survivors[reader], key, value)
            slowest = max(slowest, time.monotonic() - started)
            if written:
                acknowledged[key] = value
            if problem is not None:
                failures.append(Failure(started - killed_at, writer, reader, problem))

            now = time.monotonic()
            if now >= next_look:
                next_look = now + 0.2
                for name, client in survivors.items():
                    if name not in dead_at and view_of(client)[victim][0] == "dead":
                        dead_at[name] = time.monotonic() - killed_at
                if len(dead_at) == len(survivors) and stop_at is None:
                    stop_at = time.monotonic() + AFTER_DEATH

        after_kill = index
        print(
            f"\n{victim} killed: {after_kill} writes after the kill "
            f"({len(acknowledged) - BEFORE_KILL} acknowledged) over "
            f"{time.monotonic() - killed_at:.1f}s; dead in the survivors' views after "
            f"{ {name: round(at, 2) for name, at in dead_at.items()} }s; slowest put+get "
            f"{slowest * 1000:.0f} ms; failures {len(failures)}"
        )
        assert not failures, f"{len(failures)} failed operations, first ones: {failures[:5]}"

        for name, client in survivors.items():
            found = client.get_many(acknowledged)
            wrong = {
                key: found.get(key)
                for key, value in acknowledged.items()
                if found.get(key) != value
            }
            assert not wrong, (
                f"{len(wrong)} of {len(acknowledged)} acknowledged writes read wrong through "
                f"{name}, e.g. {list(wrong.items())[:5]}"
            )


# -- 2. two nodes killed ----------------------------------------------------------------


@dataclass
class Attempt:
    since_kill: float
    took: float
    timeout: float
    operation: str
    outcome: str
    """"ok", or the name of the error class raised."""

    @property
    def fast_unavailable(self) -> bool:
        return self.outcome == UnavailableError.__name__ and self.took < FAST


def attempt(client: Client, operation: str, key: str, killed_at: float, timeout: float) -> Attempt:
    started = time.monotonic()
    try:
        if operation == "put":
            client.put(key, "value", timeout=timeout)
        else:
            client.get(key, timeout=timeout)
        outcome = "ok"
    except KVActorsError as error:
        outcome = type(error).__name__
    return Attempt(started - killed_at, time.monotonic() - started, timeout, operation, outcome)


def summary(attempts: list[Attempt]) -> list[tuple[float, float, str, str]]:
    """(since the kill, took, operation, outcome) of each attempt, rounded, for messages."""
    return [(round(a.since_kill, 2), round(a.took, 3), a.operation, a.outcome) for a in attempts]


# Requests until the deaths are known: the first with the client's default timeout; then
# shorter ones, so that the moment `unavailable` starts coming fast is seen to a second.
PROBE_TIMEOUT = 1.0


@pytest.mark.timeout(90)
def test_with_two_nodes_killed_writes_fail_unavailable_and_never_hang(tmp_path: Path) -> None:
    settled = DEAD_BOUND + DETECTION_MARGIN
    with three_node_cluster(tmp_path) as local:
        survivor = local.node("node-1")
        with Client(survivor.endpoint, timeout=REPLY_TIMEOUT, retries=0) as client:
            client.put("two-dead:before", "value")
            for name in ("node-2", "node-3"):
                local.node(name).kill()
            killed_at = time.monotonic()

            # Until the deaths are known, a write waits for replicas that never answer;
            # then it is refused at once. (Past `settled`, the assertions below fail.)
            early: list[Attempt] = []
            while not (early and early[-1].fast_unavailable):
                if time.monotonic() > killed_at + settled:
                    break
                timeout = PROBE_TIMEOUT if early else REPLY_TIMEOUT
                key = f"two-dead:early:{len(early)}"
                early.append(attempt(client, "put", key, killed_at, timeout))
            view = view_of(client)
            # From then on, every write (and read: R=2) is refused at once.
            late = [
                attempt(client, operation, f"two-dead:late:{index}", killed_at, REPLY_TIMEOUT)
                for index in range(10)
                for operation in ("put", "get")
            ]

    first_fast = next((a for a in early if a.fast_unavailable), None)
    print(
        f"\ntwo killed: {len(early)} writes until one was refused fast, "
        f"{round(first_fast.since_kill, 2) if first_fast else None}s after the kill: "
        f"{summary(early)}; late slowest {max(a.took for a in late) * 1000:.1f} ms; "
        f"survivor's view {view}"
    )
    everything = early + late
    hung = [a for a in everything if a.took > a.timeout + HANG_MARGIN]
    assert not hung, f"requests that took longer than their timeout: {summary(hung)}"
    allowed = {UnavailableError.__name__, RequestTimeoutError.__name__}
    odd = [a for a in everything if a.outcome not in allowed]
    assert not odd, f"requests that neither failed unavailable nor timed out: {summary(odd)}"
    assert first_fast is not None, (
        f"no request was refused fast within {settled}s: {summary(early)} (view {view})"
    )
    slow_or_wrong = [a for a in late if not a.fast_unavailable]
    assert not slow_or_wrong, (
        f"once one request was refused fast, not every later one was: "
        f"{summary(slow_or_wrong)} (survivor's view {view})"
    )


# -- 3. read repair -----------------------------------------------------------------------

REPAIR_KEYS = 300


@pytest.mark.timeout(120)
def test_reads_repair_a_restarted_node_that_missed_every_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Read repair alone: hints and anti-entropy would refill the node without any read.
    monkeypatch.setenv("KVACTORS_HINTED_HANDOFF", "false")
    monkeypatch.setenv("KVACTORS_ANTI_ENTROPY_INTERVAL", "0")
    with three_node_cluster(tmp_path) as local:
        victim = local.node("node-3")
        others = [node for node in local.nodes if node is not victim]
        with clients_of(others) as clients:
            incarnation_before = view_of(clients["node-1"])[victim.name][1]
            repairs_before = read_repairs(clients)
            victim.kill()
            # Written while the victim is dead in the others' views, the keys go to the
            # two survivors only. (Written earlier, they would also be sent to the victim:
            # a node sends a replica write again until its RPC timeout, so a victim back
            # within it would receive them without any read.)
            wait_for_views(
                clients,
                lambda view: view[victim.name][0] == "dead",
                f"{victim.name} is dead",
            )

            expected = {f"repair:{index}": {"index": index} for index in range(REPAIR_KEYS)}
            writers = list(clients.values())
            for index, (key, value) in enumerate(expected.items()):
                writers[index % 2].put(key, value)

            # The same name and endpoint, an empty memory store, a new incarnation.
            victim.start()
            with clients_of(local.nodes) as everyone:
                wait_for_views(
                    everyone,
                    lambda view: (
                        all(status == "alive" for status, _ in view.values())
                        and len(view) == 3
                        and view[victim.name][1] > incarnation_before
                    ),
                    f"all three alive, {victim.name} above incarnation {incarnation_before}",
                )
            holding = [key for key in expected if not replica_state(victim.endpoint, key).is_empty]
            assert not holding, f"{victim.name} holds {len(holding)} keys before any read"

            started = time.monotonic()
            wrong = {}
            for index, (key, value) in enumerate(expected.items()):
                if (read := writers[index % 2].get(key)) != value:
                    wrong[key] = read
            assert not wrong, f"reads wrong: {list(wrong.items())[:5]}"
            # A read answers after R replies; the repair follows once all three answered.
            missing = list(expected)

            def repaired() -> bool:
                missing[:] = [
                    k for k in missing if stored_values(victim.endpoint, k) != [expected[k]]
                ]
                return not missing

            wait_until(
                repaired,
                PATIENCE,
                POLL,
                f"{victim.name} never held what it missed (still missing: {missing[:5]})",
            )
            took = time.monotonic() - started
            with clients_of(local.nodes) as everyone:
                repairs = read_repairs(everyone) - repairs_before
    print(
        f"\nread repair: {REPAIR_KEYS} keys read and {victim.name} whole again in {took:.2f}s; "
        f"read_repairs counted: {repairs}"
    )
    assert repairs >= REPAIR_KEYS


# -- 4. concurrent read-modify-write ------------------------------------------------------

WORKERS = 4
ELEMENTS_PER_WORKER = 500


@pytest.fixture(scope="module")
def healthy_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Three nodes that stay up, for the tests that kill nothing."""
    with three_node_cluster(tmp_path_factory.mktemp("healthy")) as local:
        yield local


def run_workers(
    endpoints: list[str], key: str, mode: str, count: int, log_dir: Path
) -> list[dict[str, Any]]:
    """Run WORKERS `_rmw_worker.py` processes at once on `key`; their JSON reports."""
    command = [sys.executable, str(WORKER), *endpoints, "--key", key, "--mode", mode]
    processes: list[subprocess.Popen[str]] = []
    try:
        for worker in range(WORKERS):
            stderr = (log_dir / f"{mode}-worker-{worker}.stderr").open("w")
            with stderr:
                processes.append(
                    subprocess.Popen(
                        [*command, "--worker", str(worker), "--count", str(count)],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=stderr,
                        text=True,
                    )
                )
        for worker, process in enumerate(processes):
            assert process.stdout is not None
            line = process.stdout.readline().strip()
            assert line == "ready", f"worker {worker} said {line!r}; see {log_dir}"
        # Every worker is connected: let them all go at once, so their writes overlap.
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        reports = []
        deadline = time.monotonic() + 90
        for worker, process in enumerate(processes):
            out, _ = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
            assert process.returncode == 0, f"worker {worker} exited {process.returncode}"
            reports.append(json.loads(out.strip().splitlines()[-1]))
        return reports
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def elements_on(endpoint: str, key: str) -> set[int]:
    """The union of the siblings the node at `endpoint` holds in its own store."""
    elements: set[int] = set()
    for sibling in stored_values(endpoint, key):
        elements.update(cast("list[int]", sibling))
    return elements


def everything_stored(local: LocalCluster, key: str) -> set[int]:
    """The union of every sibling every node holds in its own store."""
    return set[int]().union(*(elements_on(endpoint, key) for endpoint in local.endpoints))


def print_reports(what: str, reports: list[dict[str, Any]], took: float, held: int) -> None:
    print(f"\n{what}: {held} of {WORKERS * ELEMENTS_PER_WORKER} elements in {took:.1f}s")
    for report in reports:
        print(
            f"  worker {report['worker']} via {report['endpoint']}: {report['elapsed']}s, "
            f"{report['merges']} sibling merges, {report['error_count']} errors "
            f"{report['errors'][:2]}"
        )


@pytest.mark.timeout(180)
def test_concurrent_updates_from_four_processes_lose_no_element(
    healthy_cluster: LocalCluster, tmp_path: Path
) -> None:
    key = "rmw:update"
    # The key does not exist yet: the workers' first updates race to create it.
    started = time.monotonic()
    reports = run_workers(healthy_cluster.endpoints, key, "update", ELEMENTS_PER_WORKER, tmp_path)
    took = time.monotonic() - started
    expected = set(range(WORKERS * ELEMENTS_PER_WORKER))

    with clients_of(healthy_cluster.nodes) as clients:
        reads = {name: client.get_versioned(key) for name, client in clients.items()}
    held = {name: set(union(read.siblings)) for name, read in reads.items()}
    print_reports("update with merge=union", reports, took, min(len(h) for h in held.values()))
    assert all(not report["failed"] for report in reports), [r["failed"] for r in reports]
    for name, elements in held.items():
        assert elements == expected, (
            f"a read through {name} ({len(reads[name].siblings)} siblings) misses "
            f"{sorted(expected - elements)[:20]} ({len(expected - elements)} elements)"
        )
    # And every replica ends up with all of them in its own store.
    for endpoint in healthy_cluster.endpoints:
        wait_until(
            lambda e=endpoint: elements_on(e, key) == expected,  # type: ignore[misc]
            PATIENCE,
            POLL,
            f"{endpoint}'s own store never held all {len(expected)} elements",
        )


@pytest.mark.timeout(180)
def test_control_context_free_read_modify_write_loses_elements(
    healthy_cluster: LocalCluster, tmp_path: Path
) -> None:
    key = "rmw:blind"
    started = time.monotonic()
    reports = run_workers(healthy_cluster.endpoints, key, "blind", ELEMENTS_PER_WORKER, tmp_path)
    took = time.monotonic() - started
    expected = WORKERS * ELEMENTS_PER_WORKER
    # Generous to the control: whatever any node holds in any sibling counts as kept.
    held = everything_stored(healthy_cluster, key)
    print_reports("control, get + put without context", reports, took, len(held))
    print(f"  lost: {expected - len(held)}")
    assert all(not report["failed"] for report in reports), [r["failed"] for r in reports]
    assert held <= set(range(expected))
    assert len(held) < expected, "context-free read-modify-write lost nothing"


# -- 5. the first update of a key ----------------------------------------------------------


@pytest.mark.parametrize("key_exists", [True, False], ids=["existing-key", "new-key"])
def test_an_update_keeps_a_write_made_between_its_read_and_its_write(
    healthy_cluster: LocalCluster, key_exists: bool
) -> None:
    """Deterministic: `fn` itself makes the concurrent write, through the same node.

    For a key that exists, the read's context covers [0] only, so our write keeps their
    [0, 1] beside it as a sibling and the merge holds all three. For a new key the read
    of the missing key must also yield a context (an empty one) that supersedes nothing;
    a write without any context supersedes whatever the coordinator holds, their [1]
    included. (The concurrent test meets the same race at random: each worker's first
    update reads no key.)
    """
    key = f"interleaved:{'existing' if key_exists else 'new'}"
    endpoint = healthy_cluster.endpoints[0]
    with (
        Client(endpoint, timeout=REPLY_TIMEOUT) as ours,
        Client(endpoint, timeout=REPLY_TIMEOUT) as theirs,
    ):
        if key_exists:
            ours.put(key, [0])
        interleaved: list[bool] = []

        def add_two(current: list[int]) -> list[int]:
            if not interleaved:  # between our read and our write, another client adds 1
                interleaved.append(True)
                theirs.update(key, lambda value: sorted({*value, 1}), merge=union, default=[])
            return sorted({*current, 2})

        ours.update(key, add_two, merge=union, default=[])
        held = set(union(ours.get_versioned(key).siblings))
    assert interleaved
    assert held == ({0, 1, 2} if key_exists else {1, 2}), (
        f"after both updates the set is {sorted(held)}: the write made between our read "
        f"and our write was superseded"
    )


@pytest.mark.timeout(90)
def test_pipelined_large_values_replicate_in_calls_a_peer_accepts(tmp_path: Path) -> None:
    # 30 puts of 300 KB in flight at once: one pass holds about 9 MB of merges for each
    # peer, more than the 2.3 MiB frame a node accepts. Sent as one call, the peer drops
    # the connection and every put times out; cut by size, all succeed.
    import msgpack  # noqa: PLC0415
    import zmq  # noqa: PLC0415

    value = b"x" * 300_000
    with three_node_cluster(tmp_path) as cluster:
        context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        with context.socket(zmq.DEALER) as sock:
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(cluster.endpoints[0])
            for n in range(30):
                request = {"op": "put", "key": f"big-{n}", "value": value, "id": n}
                sock.send(msgpack.packb(request))
            replies = []
            while len(replies) < 30 and sock.poll(int(REPLY_TIMEOUT * 1000)):
                replies.append(msgpack.unpackb(sock.recv()))
        assert [r.get("error") for r in replies if not r.get("ok")] == []
        assert len(replies) == 30
        # Every replica holds every value (W=2 answered; the third gets it too).
        for node in cluster.endpoints:
            wait_until(
                lambda node=node: all(
                    len(replica_state(node, f"big-{n}").live) == 1 for n in range(0, 30, 7)
                ),
                10,
                0.1,
            )
