"""Clusters of real `kvactors node` processes on loopback: membership, failure, routing.

Every node here is a separate process started by `kvactors.launcher` (or by the
`kvactors cluster` command), talked to through `kvactors.Client` and the `kvactors`
commands. Nothing is mocked. Time bounds the issue sets (agreement within 5 s, death
declared within dead_timeout + two gossip intervals) are measured and asserted; every
other wait polls a condition until a generous deadline, so a loaded machine is slower
but not wrong.

One five-node cluster serves the module (it takes seconds to start); the test that kills
a node of it restarts that node and waits until the cluster is whole again.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

import pytest

from kvactors import Client
from kvactors.config import NodeConfig
from kvactors.errors import UnavailableError
from kvactors.launcher import LocalCluster, NodeProcess, free_port_block, node_answers

T = TypeVar("T")
Status = dict[str, Any]

_DEFAULTS = NodeConfig(name="defaults")
# The bounds, from the node defaults the processes run with.
AGREEMENT_BOUND = 5.0
DEAD_BOUND = _DEFAULTS.dead_timeout + 2 * _DEFAULTS.gossip_interval
# How long a wait may take before a test gives up: far above what any step takes, so a
# busy shared machine does not fail a test. The bounds above are asserted separately.
PATIENCE = 30.0
REPLY_TIMEOUT = 10.0
# Between two polls of the nodes' status: small next to the bounds measured with it.
POLL_INTERVAL = 0.02
SEED_WARNING = "no seed of {seeds} has answered yet; taking no data requests until one does"
# Below Linux's ephemeral range (32768+), where the nodes' own outgoing sockets live.


# -- helpers ----------------------------------------------------------------------------


def wait_until(condition: Callable[[], T], timeout: float, what: str) -> T:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout}s: {what} (last: {result!r})")
        time.sleep(POLL_INTERVAL)


def members(status: Status) -> dict[str, tuple[str, int]]:
    """A status report's members: name -> (status, incarnation)."""
    return {m["name"]: (m["status"], m["incarnation"]) for m in status["members"]}


def all_alive(names: set[str]) -> Callable[[Status], bool]:
    """True of a status that lists exactly `names`, every one alive."""

    def check(status: Status) -> bool:
        view = members(status)
        return set(view) == names and all(state == "alive" for state, _ in view.values())

    return check


def first_met(
    clients: Mapping[str, Client], condition: Callable[[Status], bool], timeout: float, what: str
) -> dict[str, float]:
    """For each node, the monotonic time at which a reply first showed its status meeting
    `condition`. The time is taken when the reply arrives: never earlier than the change."""
    met: dict[str, float] = {}
    last: dict[str, Status] = {}
    deadline = time.monotonic() + timeout
    while len(met) < len(clients):
        for name, client in clients.items():
            if name in met:
                continue
            last[name] = client.status()
            if condition(last[name]):
                met[name] = time.monotonic()
        if len(met) < len(clients):
            if time.monotonic() > deadline:
                late = {name: members(last[name]) for name in clients if name not in met}
                pytest.fail(f"not within {timeout}s: {what}; views of the others: {late}")
            time.sleep(POLL_INTERVAL)
    return met


def write_then_read_everywhere(clients: Mapping[str, Client], prefix: str, count: int) -> None:
    """Write `count` keys, each through the next node in turn; read each through every node."""
    writers = list(clients)
    expected = {}
    for index in range(count):
        writer = writers[index % len(writers)]
        key, value = f"{prefix}:{index}", {"index": index, "writer": writer}
        clients[writer].put(key, value)
        expected[key] = value
    wrong = {
        (reader, key): found
        for reader, client in clients.items()
        for key, value in expected.items()
        if (found := client.get(key)) != value
    }
    assert not wrong, (
        f"{len(wrong)} of {count * len(clients)} reads wrong, e.g. {list(wrong.items())[:5]}"
    )


@contextlib.contextmanager
def clients_of(nodes: list[NodeProcess]) -> Iterator[dict[str, Client]]:
    """One Client per node, by node name, each bound to that node alone."""
    with contextlib.ExitStack() as stack:
        yield {
            node.name: stack.enter_context(Client(node.endpoint, timeout=REPLY_TIMEOUT, retries=0))
            for node in nodes
        }


# -- the five-node cluster ------------------------------------------------------------------


@dataclass
class Cluster:
    local: LocalCluster
    log_dir: Path
    first_started: float
    """When the launcher began starting the first node (monotonic)."""
    start_returned: float
    """When LocalCluster.start() returned: every node answered (monotonic)."""
    agreed: float
    """When the last node's status first listed all five alive (monotonic)."""

    @property
    def names(self) -> set[str]:
        return {node.name for node in self.local.nodes}


@pytest.fixture(scope="module")
def five_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    log_dir = tmp_path_factory.mktemp("five-nodes")
    local = LocalCluster(5, base_port=free_port_block(5), log_dir=log_dir)
    first_started = time.monotonic()
    with local:
        start_returned = time.monotonic()
        names = {node.name for node in local.nodes}
        with clients_of(local.nodes) as clients:
            met = first_met(clients, all_alive(names), PATIENCE, "all five list all five alive")
        yield Cluster(local, log_dir, first_started, start_returned, max(met.values()))


def test_five_nodes_agree_on_membership_within_5s(five_nodes: Cluster) -> None:
    # Measured from the launch of the first process (the launcher starts all five at
    # once): "within 5 s of starting" includes each process's own start-up.
    since_first = five_nodes.agreed - five_nodes.first_started
    starting = five_nodes.start_returned - five_nodes.first_started
    print(
        f"\nagreement: {since_first:.2f}s after the first process was launched "
        f"({starting:.2f}s until all five answered)"
    )
    assert since_first < AGREEMENT_BOUND
    with clients_of(five_nodes.local.nodes) as clients:
        for name, client in clients.items():
            status = client.status()
            assert status["node"] == name
            assert all_alive(five_nodes.names)(status), (name, members(status))
            assert status["ring"]["owners"] == 5
            assert all(m["partitions"] > 0 for m in status["members"]), status["members"]


def test_a_write_through_any_node_reads_back_through_every_node(five_nodes: Cluster) -> None:
    with clients_of(five_nodes.local.nodes) as clients:
        forwarded_before = sum(client.status()["forwarded"] for client in clients.values())
        write_then_read_everywhere(clients, "any-node", 200)
        forwarded_after = sum(client.status()["forwarded"] for client in clients.values())
    # With N=3 of 5, two fifths of the writes reach a node that holds no replica of their
    # key: it has a replica coordinate them (about 80 of 200; a wide margin for chance).
    assert 40 <= forwarded_after - forwarded_before <= 120


def test_a_killed_node_is_declared_dead_in_time_and_rejoins_with_a_higher_incarnation(
    five_nodes: Cluster,
) -> None:
    victim = five_nodes.local.node("node-3")
    others = [node for node in five_nodes.local.nodes if node is not victim]
    with clients_of(others) as clients:
        before = {name: members(client.status())[victim.name] for name, client in clients.items()}
        assert all(state == "alive" for state, _ in before.values()), before
        incarnation_before = max(incarnation for _, incarnation in before.values())

        killed_at = time.monotonic()
        victim.kill()
        dead_at = first_met(
            clients,
            lambda status: members(status)[victim.name][0] == "dead",
            PATIENCE,
            f"every other node marks {victim.name} dead",
        )
        took = {name: round(at - killed_at, 3) for name, at in dead_at.items()}
        print(f"\ndead after kill -9, per node (bound {DEAD_BOUND}s): {took}")
        assert all(seconds <= DEAD_BOUND for seconds in took.values()), took

        victim.start()
        restarted_at = time.monotonic()
        rejoined_at = first_met(
            clients,
            lambda status: (
                members(status)[victim.name][0] == "alive"
                and members(status)[victim.name][1] > incarnation_before
            ),
            PATIENCE,
            f"every other node sees {victim.name} alive at an incarnation above "
            f"{incarnation_before}",
        )
        took = {name: round(at - restarted_at, 3) for name, at in rejoined_at.items()}
        print(f"rejoined (alive, incarnation > {incarnation_before}) after restart: {took}")

    # Whole again, in every view including the restarted node's own: the module's other
    # tests may run after this one, and routing works through the restarted node too.
    with clients_of(five_nodes.local.nodes) as clients:
        first_met(clients, all_alive(five_nodes.names), PATIENCE, "all five alive again")
        incarnations = {
            name: members(client.status())[victim.name][1] for name, client in clients.items()
        }
        assert len(set(incarnations.values())) == 1, incarnations
        assert incarnations[victim.name] > incarnation_before
        write_then_read_everywhere(clients, "after-rejoin", 50)


# -- startup with no reachable seed -------------------------------------------------------


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    """A factory: `spawn(name, endpoint, *args)` starts a node process logging to
    tmp_path/NAME.log and returns it; every one is stopped at the end."""
    started: list[tuple[NodeProcess, IO[bytes]]] = []

    def start(name: str, endpoint: str, *args: str) -> NodeProcess:
        log = (tmp_path / f"{name}.log").open("ab")
        node = NodeProcess(name, endpoint, list(args), log=log)
        started.append((node, log))
        return node.start()

    yield start
    for node, log in reversed(started):
        node.stop()
        log.close()


def test_a_node_whose_seeds_are_unreachable_refuses_data_then_joins_when_one_appears(
    spawn: Callable[..., NodeProcess], tmp_path: Path
) -> None:
    # A write it took alone could vanish once it learns where the key's replicas are
    # (a fault-suite finding: a restarted node acknowledged writes before it rejoined).
    base = free_port_block(2)
    seed_endpoint, loner_endpoint = (f"tcp://127.0.0.1:{base + offset}" for offset in range(2))
    began = time.monotonic()
    loner = spawn("loner", loner_endpoint, "--join", seed_endpoint)
    with Client(loner.endpoint, timeout=REPLY_TIMEOUT, retries=0) as client:
        assert set(members(client.status())) == {"loner"}
        with pytest.raises(UnavailableError, match="no member of its cluster has answered"):
            client.put("alone", "not taken")
        with pytest.raises(UnavailableError):
            client.get("alone")

        log_path = tmp_path / "loner.log"
        warning = SEED_WARNING.format(seeds=seed_endpoint)
        wait_until(lambda: warning in log_path.read_text(errors="replace"), PATIENCE, warning)
        print(f"\nthe 'no seed' warning was logged {time.monotonic() - began:.2f}s after start")
        assert not node_answers(seed_endpoint), "something answers on the seed's endpoint"

        seed = spawn("seed", seed_endpoint)
        seed_started = time.monotonic()
        with Client(seed.endpoint, timeout=REPLY_TIMEOUT, retries=0) as seed_client:
            met = first_met(
                {"loner": client, "seed": seed_client},
                all_alive({"loner", "seed"}),
                PATIENCE,
                "the loner and the seed list each other alive",
            )
        client.put("together", "taken")  # once in contact, it serves
        assert seed_client_value(seed.endpoint, "together") == "taken"
    print(f"joined {max(met.values()) - seed_started:.2f}s after the seed started")
    assert "joined the cluster through seed" in log_path.read_text(errors="replace")


def seed_client_value(endpoint: str, key: str) -> object:
    with Client(endpoint, timeout=REPLY_TIMEOUT, retries=0) as client:
        return client.get(key)


# -- leaving ------------------------------------------------------------------------------


def test_leave_stops_the_node_with_code_0_and_the_others_list_it_as_left(
    tmp_path: Path,
) -> None:
    with LocalCluster(3, base_port=free_port_block(3), log_dir=tmp_path) as local:
        names = {node.name for node in local.nodes}
        leaver = local.node("node-2")
        stayers = [node for node in local.nodes if node is not leaver]
        with clients_of(local.nodes) as clients:
            first_met(clients, all_alive(names), PATIENCE, "all three list all three alive")

        command = [sys.executable, "-m", "kvactors", "leave", "-e", leaver.endpoint]
        done = subprocess.run(command, capture_output=True, text=True, timeout=PATIENCE)
        assert done.returncode == 0, done.stderr
        assert f"{leaver.endpoint} is leaving the cluster" in done.stdout

        assert leaver.process is not None
        assert leaver.process.wait(timeout=PATIENCE) == 0
        with clients_of(stayers) as clients:
            first_met(
                clients,
                lambda status: members(status)[leaver.name][0] == "left",
                PATIENCE,
                f"the others list {leaver.name} as left",
            )
            for client in clients.values():
                status = client.status()
                assert {n: s for n, (s, _) in members(status).items()} == {
                    "node-1": "alive", "node-2": "left", "node-3": "alive",
                }  # fmt: skip
                assert status["ring"]["owners"] == 2  # a member that left owns nothing


# -- `kvactors cluster` ------------------------------------------------------------------------


_NODE_LINE = re.compile(r"^(node-\d+)\s+(tcp://\S+)\s+\(pid (\d+)\)$")


def _lines_of(stream: IO[str]) -> queue.Queue[str | None]:
    """Lines read from `stream` by a thread; None once it ends."""
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        for line in stream:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    return lines


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_the_cluster_command_runs_nodes_until_sigint(tmp_path: Path) -> None:
    base = free_port_block(3)
    command = [
        sys.executable,
        "-m",
        "kvactors",
        "cluster",
        "--nodes",
        "3",
        "--base-port",
        str(base),
    ]
    stderr = (tmp_path / "cluster.stderr").open("w")
    launcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True)
    pids: dict[str, int] = {}
    try:
        assert launcher.stdout is not None
        lines = _lines_of(launcher.stdout)
        endpoints: dict[str, str] = {}
        deadline = time.monotonic() + PATIENCE
        while True:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            assert line is not None, (
                f"the command ended early: {(tmp_path / 'cluster.stderr').read_text()}"
            )
            if match := _NODE_LINE.match(line):
                endpoints[match[1]] = match[2]
                pids[match[1]] = int(match[3])
            elif line == "3 nodes running; Ctrl-C stops them all":
                break
        assert endpoints == {f"node-{i + 1}": f"tcp://127.0.0.1:{base + i}" for i in range(3)}

        with contextlib.ExitStack() as stack:
            clients = {
                name: stack.enter_context(Client(endpoint, timeout=REPLY_TIMEOUT, retries=0))
                for name, endpoint in endpoints.items()
            }
            first_met(clients, all_alive(set(endpoints)), PATIENCE, "the three agree")
            write_then_read_everywhere(clients, "cluster-command", 30)

        launcher.send_signal(signal.SIGINT)
        assert launcher.wait(timeout=PATIENCE) == 0
        assert all(_gone(pid) for pid in pids.values()), pids
        assert not any(node_answers(endpoint) for endpoint in endpoints.values())
    finally:
        if launcher.poll() is None:
            launcher.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                launcher.wait(timeout=PATIENCE)
        for pid in pids.values():  # the nodes it started, should it have failed to stop them
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        stderr.close()
