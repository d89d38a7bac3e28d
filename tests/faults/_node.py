"""`kvactors node` with a StoreServer crash trigger, for the fault suite's crash scenario.

Runs exactly what `python -m kvactors node ...` runs (`kvactors.cli.main`), and on each
SIGUSR1 makes `KVA_FAULTS_CRASHES` StoreServers of the node crash (kvactors.testing's
`crash_store_server`, which sends the StoreServer a `CrashNow`): first those of the
partitions of the keys in `KVA_FAULTS_CRASH_KEYS` (comma-separated), then partitions drawn
by a `random.Random(KVA_FAULTS_SEED)`. Each crash is logged on stderr.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import sys
from typing import Any

from kvactors import cli
from kvactors.distribution.hashing import partition_of
from kvactors.system import ActorSystem
from kvactors.testing import crash_store_server

log = logging.getLogger("kvactors.faults")
systems: list[ActorSystem] = []
_original_start = ActorSystem.start


def _start_and_remember(self: ActorSystem) -> ActorSystem:
    systems.append(self)
    return _original_start(self)


def main() -> int:
    rng = random.Random(int(os.environ.get("KVA_FAULTS_SEED", "0")))
    count = int(os.environ.get("KVA_FAULTS_CRASHES", "8"))
    keys = [key for key in os.environ.get("KVA_FAULTS_CRASH_KEYS", "").split(",") if key]

    def crash(_number: int, _frame: Any) -> None:
        if not systems:
            return
        system = systems[0]
        partitions = [partition_of(key.encode(), system.config.partitions) for key in keys]
        while len(partitions) < count:
            partitions.append(rng.randrange(system.config.partitions))
        crashed = [crash_store_server(system, partition) for partition in partitions[:count]]
        log.warning("crash injected into the StoreServers of partitions %s", crashed)

    ActorSystem.start = _start_and_remember  # type: ignore[method-assign, assignment]
    signal.signal(signal.SIGUSR1, crash)
    return cli.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
