"""A background client load for the membership-change tests (join and leave)."""

from __future__ import annotations

import random
import threading
from typing import Any

from kvactors import Client


class Load:
    """Writes new keys and reads preloaded ones through `endpoints` until stopped."""

    def __init__(self, endpoints: list[str], preloaded: list[str]) -> None:
        self.acknowledged: dict[str, str] = {}
        self.failed_writes = 0
        self.errors: list[str] = []
        self.wrong_reads: list[tuple[str, Any]] = []
        self.reads = 0
        self._endpoints = endpoints
        self._preloaded = preloaded
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        rng = random.Random(8)
        clients = [Client(endpoint, timeout=10.0, retries=0) for endpoint in self._endpoints]
        number = 0
        try:
            while not self._stop.is_set():
                client = clients[number % len(clients)]
                key = f"during-{number}"
                number += 1
                try:
                    client.put(key, key)
                except Exception as error:  # counted: a failed write promises nothing
                    self.failed_writes += 1
                    self.errors.append(f"{key} via {client.endpoint}: {error!r}")
                else:
                    self.acknowledged[key] = key
                old = rng.choice(self._preloaded)
                if (found := client.get(old)) != old:
                    self.wrong_reads.append((old, found))
                self.reads += 1
        finally:
            for client in clients:
                client.close()


def stored_keys(endpoint: str) -> int:
    with Client(endpoint, timeout=10.0, retries=0) as client:
        return int(client.status()["storage"]["keys"])
