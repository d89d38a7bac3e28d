"""ActorSystem and system.client: the embedded node end to end, with real actors."""

from __future__ import annotations

import random
import threading
from pathlib import Path
from typing import Any

import pykka
import pytest

from kvactors import (
    ActorSystem,
    BadRequestError,
    NodeConfig,
    RestartIntensityError,
    TooLargeError,
    UnavailableError,
)
from kvactors.core.hashing import partition_of
from kvactors.testing import crash_store_server, wait_until

MISSING = object()


@pytest.fixture
def system() -> ActorSystem:
    with ActorSystem() as running:
        yield running


def test_put_get_delete_round_trip(system: ActorSystem) -> None:
    client = system.client
    client.put("user:1", {"name": "Ada", "langs": ["en", "fr"], "age": 36})
    assert client.get("user:1") == {"name": "Ada", "langs": ["en", "fr"], "age": 36}
    assert client.delete("user:1") is True
    assert client.get("user:1", MISSING) is MISSING
    assert client.delete("user:1") is False


def test_missing_key_is_a_result_not_an_error(system: ActorSystem) -> None:
    assert system.client.get("nobody") is None
    assert system.client.get("nobody", "fallback") == "fallback"
    system.client.put("nothing", None)
    assert system.client.get("nothing", MISSING) is None  # a stored None is found


def test_str_and_bytes_keys_name_the_same_key(system: ActorSystem) -> None:
    system.client.put("k", 1)
    assert system.client.get(b"k") == 1


def test_stored_value_is_a_copy(system: ActorSystem) -> None:
    value = {"items": [1, 2]}
    system.client.put("k", value)
    value["items"].append(3)
    assert system.client.get("k") == {"items": [1, 2]}


def test_batches_span_partitions(system: ActorSystem) -> None:
    items = {f"key-{i}": i for i in range(500)}
    system.client.put_many(items)
    wanted = [*items, "absent-1", b"absent-2"]
    assert system.client.get_many(wanted) == items
    system.client.put_many([("a", 1), (b"b", 2)])
    assert system.client.get_many(["a", "b"]) == {"a": 1, "b": 2}


@pytest.mark.parametrize(
    ("key", "value", "error"),
    [
        (42, "v", BadRequestError),
        (None, "v", BadRequestError),
        ("\ud800", "v", BadRequestError),
        ("k", {1, 2}, BadRequestError),
        ("k", object(), BadRequestError),
        ("k", 2**70, BadRequestError),
        ("x" * (64 * 1024 + 1), "v", TooLargeError),
        ("k", b"x" * (1024 * 1024), TooLargeError),
    ],
)
def test_bad_input_raises_a_clear_error_and_the_node_keeps_serving(
    system: ActorSystem, key: object, value: object, error: type[Exception]
) -> None:
    with pytest.raises(error):
        system.client.put(key, value)  # type: ignore[arg-type]
    system.client.put("after", "still serving")
    assert system.client.get("after") == "still serving"


def test_size_limits_come_from_the_config() -> None:
    with ActorSystem(NodeConfig(max_key_bytes=4, max_value_bytes=8)) as system:
        system.client.put("abcd", "1234")
        with pytest.raises(TooLargeError, match="key is 5 bytes"):
            system.client.put("abcde", 1)
        with pytest.raises(TooLargeError, match="value is"):
            system.client.put("k", "123456789")


def test_client_is_usable_from_many_threads(system: ActorSystem) -> None:
    errors: list[BaseException] = []

    def worker(worker_id: int) -> None:
        try:
            for i in range(300):
                system.client.put(f"{worker_id}:{i}", i)
                assert system.client.get(f"{worker_id}:{i}") == i
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    keys = [f"{w}:{i}" for w in range(8) for i in range(300)]
    assert len(system.client.get_many(keys)) == len(keys)


def test_stop_is_idempotent_and_a_stopped_node_refuses_requests() -> None:
    system = ActorSystem(request_timeout=0.3).start()
    system.stop()
    system.stop()
    assert not system.running
    with pytest.raises(UnavailableError):
        system.client.get("k")


def test_a_store_server_crash_loses_no_acknowledged_write(system: ActorSystem) -> None:
    system.client.put("survivor", "value")
    partition = partition_of(b"survivor", system.config.partitions)
    before = system.store_server(partition)
    assert crash_store_server(system, partition) == partition
    wait_until(lambda: system.store_server(partition) not in (None, before))
    assert system.client.get("survivor") == "value"
    assert system.store_supervisor().restart_count().get() == 1


@pytest.mark.parametrize(
    ("storage", "keys", "min_crashes"),
    [
        ("memory", 20_000, 500),
        # Every put is fsynced before it is acknowledged (a few ms each): fewer of them.
        ("lmdb", 3_000, 75),
    ],
)
def test_crash_storm_loses_no_acknowledged_write(
    storage: str, keys: int, min_crashes: int, tmp_path: Path
) -> None:
    """Writes while StoreServers crash at random, one crash per 40 writes."""
    config = NodeConfig(
        max_restarts=1_000_000, max_seconds=1.0, storage=storage, data_dir=str(tmp_path)
    )
    rng = random.Random(2026)
    crashed_urns: set[str] = set()
    progress = threading.Condition()
    written = 0
    writer_done = threading.Event()
    acknowledged: dict[str, int] = {}
    failed: list[str] = []

    with ActorSystem(config) as system:

        def crasher() -> None:
            while not writer_done.is_set():
                partition = rng.randrange(config.partitions)
                ref = system.store_server(partition)
                # One crash per actor instance, so each one is exactly one restart.
                if ref is None or ref.actor_urn in crashed_urns:
                    continue
                if crash_store_server(system, partition) is not None:
                    with progress:
                        crashed_urns.add(ref.actor_urn)
                        progress.notify_all()
                wait_until(lambda p=partition, r=ref: system.store_server(p) is not r)

        def writer() -> None:
            nonlocal written
            for i in range(keys):
                # Keep the crashes spread over the whole run, whatever the machine's pace.
                with progress:
                    progress.wait_for(
                        lambda i=i: len(crashed_urns) >= (i + 1) * min_crashes // keys, timeout=10
                    )
                key = f"key-{i}"
                try:
                    system.client.put(key, i)
                except Exception:
                    failed.append(key)
                else:
                    acknowledged[key] = i
                written += 1
            writer_done.set()

        threads = [threading.Thread(target=crasher), threading.Thread(target=writer)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=240)
        assert writer_done.is_set()

        assert len(crashed_urns) >= min_crashes
        assert len(acknowledged) >= keys * 0.99, f"too many failed writes: {failed[:10]}"
        supervisor = system.store_supervisor()
        wait_until(lambda: supervisor.restart_count().get() == len(crashed_urns), timeout=30)
        assert supervisor.restart_count().get() == len(crashed_urns)
        stored = system.client.get_many(acknowledged)
        lost = [key for key, value in acknowledged.items() if stored.get(key) != value]
        assert lost == []


def test_root_gives_up_after_repeated_storage_failures() -> None:
    # max_restarts=1: a StoreSupervisor escalates on its second restart; the root
    # restarts it once (the tables survive: the backend owns them), then gives up.
    with ActorSystem(max_restarts=1, max_seconds=60.0, request_timeout=0.5) as system:
        system.client.put("kept", 1)
        for round_ in range(2):
            store_supervisor = system.store_supervisor().actor_ref
            first = system.store_server(0)
            assert crash_store_server(system, 0) == 0  # restarted by the StoreSupervisor
            wait_until(lambda f=first: system.store_server(0) not in (None, f))
            assert crash_store_server(system, 0) == 0  # one too many: it escalates
            wait_until(lambda s=store_supervisor: not s.is_alive())
            if round_ == 0:
                wait_until(lambda: system.store_server(0) is not None)
                assert system.running
                assert system.client.get("kept") == 1
        assert system.wait(timeout=10)
        assert isinstance(system.failure, RestartIntensityError)
        assert not system.running
        with pytest.raises(UnavailableError):
            system.client.get("kept")


def test_a_restarted_gossip_protocol_keeps_the_member_table() -> None:
    # Fault-suite finding: a StoreSupervisor past its restart intensity makes the root
    # restart the actors after it, GossipProtocol among them; it used to start over
    # alone, so the node owned every key by itself (N=W=1) until gossip found the others
    # again, and acknowledged writes that its peers could not find afterwards.
    from kvactors.launcher import free_port_block  # noqa: PLC0415

    port = free_port_block(2)
    first, second = (f"tcp://127.0.0.1:{port + k}" for k in range(2))
    with (
        ActorSystem(name="a", bind=first, partitions=64) as a,
        ActorSystem(
            name="b", bind=second, seeds=(first,), partitions=64, max_restarts=1, max_seconds=60
        ) as b,
    ):
        wait_until(lambda: len(a.ring_snapshot().ring.members) == 2, 30)
        wait_until(lambda: len(b.ring_snapshot().ring.members) == 2, 30)
        gossip = b._services.gossip
        owners_seen: list[int] = []
        watching = threading.Event()

        def watch() -> None:
            while not watching.is_set():
                owners_seen.append(len(b.ring_snapshot().ring.members))
                watching.wait(0.002)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            store_supervisor = b.store_supervisor().actor_ref
            first_server = b.store_server(0)
            assert crash_store_server(b, 0) == 0
            wait_until(lambda: b.store_server(0) not in (None, first_server))
            assert crash_store_server(b, 0) == 0  # one too many: the subtree restarts
            wait_until(lambda: not store_supervisor.is_alive())
            wait_until(lambda: not gossip.is_alive())  # restarted with the rest
            wait_until(lambda: _restarted(b._services.gossip, gossip), 10)
            wait_until(lambda: b.store_server(0) is not None, 10)
            time_to_notice = 1.0  # a few gossip rounds: long enough to see a lone ring
            watching.wait(time_to_notice)
        finally:
            watching.set()
            watcher.join()
        assert b.running
        assert min(owners_seen) == 2, f"b owned alone for a while: {owners_seen.count(1)} polls"


def _restarted(ref: pykka.ActorRef[Any] | None, old: object) -> bool:
    return ref is not None and ref is not old and ref.is_alive()
