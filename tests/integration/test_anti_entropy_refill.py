"""Active anti-entropy across real node processes: a node restarted empty is refilled.

Three `kvactors node` processes (memory backend, N=3, so every node holds every key). One
is killed with SIGKILL and restarted empty under the same name; nothing reads the keys
afterwards, so read repair cannot help, and hinted handoff is turned off (it would have
nothing to send anyway: no write missed the node): only anti-entropy can bring them back.
The refill is checked on the restarted node's own store: its key count, and a sample of
keys read from it alone.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

import pytest

from kvactors import Client
from kvactors.launcher import LocalCluster, free_port_block
from kvactors.testing import stored_values

logger = logging.getLogger(__name__)

BATCH = 2_000


def stored_keys(client: Client) -> int:
    return int(client.status()["storage"]["keys"])


def refill(tmp_path: Path, keys: int, bound: float) -> float:
    """Seconds until a node restarted empty holds all `keys` again."""
    names = [f"key-{number}" for number in range(keys)]
    with LocalCluster(3, base_port=free_port_block(3), log_dir=tmp_path) as cluster:
        with Client(cluster.endpoints[0], timeout=30.0) as client:
            for start in range(0, keys, BATCH):
                client.put_many({name: name for name in names[start : start + BATCH]})
        victim = cluster.nodes[2]
        with Client(victim.endpoint, timeout=10.0, retries=0) as client:
            deadline = time.monotonic() + bound
            while stored_keys(client) < keys:  # W=2: the third copy may trail a little
                assert time.monotonic() < deadline, "the replicas never converged"
                time.sleep(0.2)
        victim.kill()
        victim.launch().wait_ready(timeout=60)
        restarted = time.monotonic()
        with Client(victim.endpoint, timeout=10.0, retries=0) as client:
            assert stored_keys(client) < keys, "a restarted memory node should start empty"
            deadline = restarted + bound
            counts = []
            while (count := stored_keys(client)) < keys:
                counts.append(count)
                assert time.monotonic() < deadline, (
                    f"only {count} of {keys} keys after {bound}s; counts seen: {counts[-10:]}"
                )
                time.sleep(0.2)
            elapsed = time.monotonic() - restarted
            repairs = client.status()["anti_entropy"]
        for name in random.Random(5).sample(names, 200):
            assert stored_values(victim.endpoint, name.encode()) == [name], name
    logger.info(
        "%d keys refilled by anti-entropy in %.1f s (%.1f s per 100,000 keys); "
        "the restarted node's own exchanges: %s",
        keys,
        elapsed,
        elapsed * 100_000 / keys,
        repairs,
    )
    return elapsed


@pytest.fixture(autouse=True)
def _no_hints(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVACTORS_HINTED_HANDOFF", "false")  # the nodes read it at start


@pytest.mark.timeout(240)
def test_a_node_restarted_empty_is_refilled_by_anti_entropy(tmp_path: Path) -> None:
    refill(tmp_path, keys=10_000, bound=90.0)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_anti_entropy_refills_100000_keys(tmp_path: Path) -> None:
    refill(tmp_path, keys=100_000, bound=600.0)
