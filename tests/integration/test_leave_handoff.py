"""Graceful leave under load, across real node processes: nothing acknowledged is lost,
and afterwards every key has its N replicas, checked on each node's own store.

Four `kvactors node` processes (memory backend, N=3). 20,000 keys are written, then a
client keeps writing new keys and reading old ones through the three nodes that stay
while the fourth leaves (`Client.leave`). The leaver hands its partitions to the members
that take them over before it announces that it has left, and exits with status 0.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import Any

import pytest
from _load import Load, stored_keys  # tests/integration is on the path, as for conftest

from kvactors import Client
from kvactors.launcher import LocalCluster, free_port_block
from kvactors.testing import stored_values, wait_until

logger = logging.getLogger(__name__)

PRELOADED = 20_000
BATCH = 2_000


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "preloaded", [10_000, pytest.param(PRELOADED, marks=pytest.mark.slow)], ids=str
)
def test_a_node_leaves_under_load_and_every_key_keeps_n_replicas(
    tmp_path: Path, preloaded: int
) -> None:
    names = [f"key-{number}" for number in range(preloaded)]
    with LocalCluster(4, base_port=free_port_block(4), log_dir=tmp_path) as cluster:
        staying, leaver = cluster.nodes[:3], cluster.nodes[3]
        with Client(staying[0].endpoint, timeout=30.0) as client:
            for start in range(0, preloaded, BATCH):
                client.put_many({name: name for name in names[start : start + BATCH]})
        handoff: dict[str, Any] = {}
        with Load([node.endpoint for node in staying], names) as load:
            wait_until(lambda: load.reads >= 50, 30, 0.05)
            started = time.monotonic()
            with Client(leaver.endpoint, timeout=10.0, retries=0) as client:
                client.leave()
                while leaver.running:  # its last report of the handoff, until it exits
                    try:
                        handoff = client.status(timeout=1.0)["handoff"] or handoff
                    except Exception:  # counted: a failed write promises nothing
                        break
                    time.sleep(0.2)
            assert leaver.process is not None
            assert leaver.process.wait(timeout=120) == 0
            left_after = time.monotonic() - started
            wait_until(lambda: load.reads >= 50 + 50, 30, 0.05)  # the load goes on after
        assert load.wrong_reads == [], f"reads during the leave: {load.wrong_reads[:5]}"
        assert load.failed_writes == 0, load.errors[:5]
        expected = {**{name: name for name in names}, **load.acknowledged}
        for node in staying:  # N=3 on three nodes: every node holds every key
            wait_until(lambda node=node: stored_keys(node.endpoint) == len(expected), 120, 0.5)
        for node in staying:
            for key in random.Random(2).sample(sorted(expected), 300):
                assert stored_values(node.endpoint, key) == [expected[key]], (node.name, key)
    logger.info(
        "left after %.1f s under load (%d writes acknowledged meanwhile, %d reads); the "
        "leaver's last handoff report: %s",
        left_after,
        len(load.acknowledged),
        load.reads,
        {k: v for k, v in handoff.items() if k != "running"},
    )
