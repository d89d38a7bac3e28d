"""A stopped node leaves no thread behind: every thread kvactors starts (actors,
dispatcher, transport, gossip ticker, group commit, storage sync, the stopper of a node
that leaves) ends, and is joined, when its owner stops."""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kvactors import ActorSystem, KVActorsError, NodeConfig
from kvactors.client.client import Client
from kvactors.launcher import LocalCluster, free_port_block
from kvactors.testing import wait_until

# Pykka names an actor's thread after the actor's class: "StoreSupervisor-12".
_ACTOR_THREAD = re.compile(r"[A-Z][A-Za-z]*-\d+")


def _new_threads(before: set[threading.Thread], *, actors: bool = True) -> list[str]:
    return sorted(
        thread.name
        for thread in threading.enumerate()
        if thread not in before
        and thread.is_alive()
        and (actors or not _ACTOR_THREAD.fullmatch(thread.name))
    )


@pytest.fixture
def no_new_threads() -> Iterator[Callable[[], None]]:
    """`check()` asserts that every thread started since the test began has ended."""
    before = set(threading.enumerate())

    def check() -> None:
        # The threads kvactors starts are joined by the time stop() returns; an actor's
        # thread may still be returning just after its stop was reported (pykka does
        # not join them), hence the deadline for those alone.
        assert not _new_threads(before, actors=False), "threads not joined on stop"
        wait_until(
            lambda: not _new_threads(before),
            timeout=5.0,
            message=lambda: f"threads left running: {_new_threads(before)}",
        )

    yield check


def test_memory_node(no_new_threads: Callable[[], None]) -> None:
    with ActorSystem() as system:
        system.client.put_many({f"k{i}": i for i in range(200)})
        assert system.client.get("k7") == 7
        assert any(t.name.endswith("-dispatcher-0") for t in threading.enumerate())
    no_new_threads()


def test_stop_without_context_manager(no_new_threads: Callable[[], None]) -> None:
    system = ActorSystem().start()
    system.client.put("k", 1)
    system.stop()
    no_new_threads()


def test_lmdb_node_with_group_commit(tmp_path: Path, no_new_threads: Callable[[], None]) -> None:
    with ActorSystem(
        storage="lmdb", data_dir=tmp_path, fsync="always", bind="tcp://127.0.0.1:0"
    ) as system:
        endpoint = system.endpoint
        assert endpoint is not None
        with Client(endpoint) as client:
            client.put_many({f"k{i}": i for i in range(50)})
            assert client.get("k3") == 3
        assert system.status()["storage"]["syncs"] > 0  # the group-commit thread ran
        assert "kvactors-group-commit" in {t.name for t in threading.enumerate()}
    no_new_threads()


def test_lmdb_node_syncing_on_an_interval(
    tmp_path: Path, no_new_threads: Callable[[], None]
) -> None:
    with ActorSystem(storage="lmdb", data_dir=tmp_path, fsync="interval") as system:
        system.client.put("k", 1)
        assert "kvactors-lmdb-sync" in {t.name for t in threading.enumerate()}
    no_new_threads()


def test_node_serving_the_network(no_new_threads: Callable[[], None]) -> None:
    with ActorSystem(bind="tcp://127.0.0.1:0") as system:
        endpoint = system.endpoint
        assert endpoint is not None
        with Client(endpoint) as client:
            client.put("k", "v")
            assert client.get("k") == "v"
        system.client.put("local", 1)
    no_new_threads()


def test_node_started_again(no_new_threads: Callable[[], None]) -> None:
    system = ActorSystem()
    for round_ in range(2):
        with system:
            system.client.put("k", round_)
            assert system.client.get("k") == round_
    no_new_threads()


def test_node_that_leaves_stops_itself(no_new_threads: Callable[[], None]) -> None:
    system = ActorSystem(bind="tcp://127.0.0.1:0").start()
    system.leave()
    assert system.wait(10.0), "the node did not stop after leaving"
    system.stop()  # what an embedding program does next; joins the thread that stopped it
    no_new_threads()


@pytest.mark.parametrize("fsync", ["interval", "always"])
def test_failed_start_leaves_nothing(
    tmp_path: Path, fsync: str, no_new_threads: Callable[[], None]
) -> None:
    """A port taken: the start fails after storage, dispatcher, actors (and with
    `always`, the group-commit thread) have started; none of them stays."""
    config = NodeConfig(name="threads", storage="lmdb", data_dir=str(tmp_path), fsync=fsync)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        system = ActorSystem(config, bind=f"tcp://127.0.0.1:{port}", peer_bind="tcp://127.0.0.1:0")
        with pytest.raises(KVActorsError, match="cannot bind"):
            system.start()
    assert not system.running
    no_new_threads()
    # The data directory was released: the node starts on it.
    with ActorSystem(config) as again:
        again.client.put("k", 1)
    no_new_threads()


def test_three_node_local_cluster(tmp_path: Path, no_new_threads: Callable[[], None]) -> None:
    with LocalCluster(3, base_port=free_port_block(3), log_dir=tmp_path) as cluster:
        with Client(cluster.endpoints[0]) as client:
            client.put("k", "v")
        with Client(cluster.endpoints[2]) as client:
            assert client.get("k") == "v"
    assert not any(node.running for node in cluster.nodes)
    no_new_threads()
