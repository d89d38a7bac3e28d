"""`kvactors node` with fault triggers, for the fault suite's crash and clock scenarios.

Runs exactly what `python -m kvactors node ...` runs (`kvactors.cli.main`), and:

- on each SIGUSR1 makes `KVA_FAULTS_CRASHES` StoreServers of the node crash
  (kvactors.testing's `crash_store_server`, which sends the StoreServer a `CrashNow`):
  first those of the partitions of the keys in `KVA_FAULTS_CRASH_KEYS` (comma-separated),
  then partitions drawn by a `random.Random(KVA_FAULTS_SEED)`;
- on each SIGUSR2 reads a number of seconds from the file `KVA_FAULTS_SKEW_FILE` and
  from then on shifts the node's wall clock (`time.time`, which the hybrid logical
  clocks, dots and hint ages read) by it: clock skew, injected into the node's clock
  source. Monotonic clocks (timeouts, failure detection) are left alone, as a real
  clock step leaves them.

Each fault is logged on stderr.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

# Before kvactors is imported: its defaults (`wall_clock=time.time`) bind this function.
_real_time = time.time
_skew = [0.0]


def _skewed_time() -> float:
    return _real_time() + _skew[0]


time.time = _skewed_time

from kvactors import cli  # noqa: E402
from kvactors.core.hashing import partition_of  # noqa: E402
from kvactors.system import ActorSystem  # noqa: E402
from kvactors.testing import crash_store_server  # noqa: E402

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

    def skew(_number: int, _frame: Any) -> None:
        skew_file = os.environ.get("KVA_FAULTS_SKEW_FILE")
        if skew_file:
            _skew[0] = float(Path(skew_file).read_text())
            log.warning("clock skew injected: the wall clock is off by %+.1f s", _skew[0])

    ActorSystem.start = _start_and_remember  # type: ignore[method-assign, assignment]
    signal.signal(signal.SIGUSR1, crash)
    signal.signal(signal.SIGUSR2, skew)
    return cli.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
