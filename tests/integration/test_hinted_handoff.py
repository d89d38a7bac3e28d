"""Hinted handoff across real node processes: writes a dead node missed reach it later.

Three `kvactors node` processes (memory backend, N=3, W=2), with anti-entropy turned off
so that only hints can bring the missed writes over. One node is killed with SIGKILL;
once the others have declared it dead, 10,000 writes go to the two survivors, each
leaving a hint on its coordinator. The node is restarted (empty, same name); nothing
reads the keys, so read repair cannot help. The test checks the restarted node's own
store, and that every hint counter returns to zero.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

import pytest

from kvactors import Client
from kvactors.launcher import LocalCluster, free_port_block
from kvactors.testing import stored_values, wait_until

logger = logging.getLogger(__name__)

KEYS = 10_000
BATCH = 1_000
# Hints start flowing within a tick of the node being seen alive, at about a thousand keys
# per round trip; a loaded 2-core machine needs far less than this.
BOUND = 60.0


def status(endpoint: str) -> dict[str, object]:
    with Client(endpoint, timeout=10.0, retries=0) as client:
        return client.status()


def pending_hints(endpoint: str) -> int:
    hints = status(endpoint)["hints"]
    assert isinstance(hints, dict)
    return sum(hints["pending"].values())


def stored_keys(endpoint: str) -> int:
    storage = status(endpoint)["storage"]
    assert isinstance(storage, dict)
    return int(storage["keys"])


def sees_dead(endpoint: str, name: str) -> bool:
    members = status(endpoint)["members"]
    assert isinstance(members, list)
    return any(m["name"] == name and m["status"] == "dead" for m in members)


@pytest.mark.timeout(300)
def test_hints_bring_missed_writes_to_a_restarted_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KVACTORS_ANTI_ENTROPY_INTERVAL", "0")  # hints alone must do it
    names = [f"key-{number}" for number in range(KEYS)]
    with LocalCluster(3, base_port=free_port_block(3), log_dir=tmp_path) as cluster:
        survivors, victim = cluster.nodes[:2], cluster.nodes[2]
        victim.kill()
        for node in survivors:
            wait_until(lambda node=node: sees_dead(node.endpoint, victim.name), 60, 0.2)

        for index, start in enumerate(range(0, KEYS, BATCH)):
            coordinator = survivors[index % 2]
            with Client(coordinator.endpoint, timeout=30.0, retries=0) as client:
                client.put_many({name: name for name in names[start : start + BATCH]})
        hinted = sum(pending_hints(node.endpoint) for node in survivors)
        assert hinted == KEYS, f"{hinted} hints kept for {KEYS} writes"

        victim.launch().wait_ready(timeout=60)
        restarted = time.monotonic()
        wait_until(lambda: stored_keys(victim.endpoint) == KEYS, BOUND, 0.2)
        refilled = time.monotonic() - restarted
        wait_until(lambda: all(pending_hints(node.endpoint) == 0 for node in survivors), BOUND, 0.2)
        delivered = [status(node.endpoint)["hints"] for node in survivors]
        for name in random.Random(3).sample(names, 200):
            assert stored_values(victim.endpoint, name) == [name], name
    logger.info(
        "%d hints delivered in %.1f s after the restart; the survivors' hint counters: %s",
        KEYS,
        refilled,
        delivered,
    )
