"""The client workloads of the fault suite, each a process of its own in the root namespace.

Run as a script, one process runs one workload until a line ``stop`` (or the end) on its
stdin, and appends every operation to its history file as JSON lines: an ``invoke``
record before the request, then ``ok``, ``fail`` (the node refused it: unavailable,
overloaded) or ``info`` (the outcome is unknown: no reply in time, or an internal error).
The record format is the checker's (see checker.py).

- ``set``: each operation puts a new key (``set:<process>:<n>``, the key as its value).
- ``register``: each operation adds a new element to the set stored, as a sorted list,
  under one of a few hot keys, with `Client.update` (read with the causal context, merge
  siblings by union, write with the context).

Each operation goes to a node drawn by a `random.Random(seed)`, through a Client bound to
that node alone (no failover), so the history says which node served what. Operations
are paced to `--rate` a second so that five nodes and the clients share two cores.

In the test process: `Workers` starts and stops the processes, `final_reads` reads back
what survived, `read_history` collects the records. Against a secure cluster both take
`client_keys`, a client's (secret key, trust dir), and the processes get them as
`--secret-key` and `--trust-dir`.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from checker import FINAL_PROCESS

from kvactors import Client
from kvactors.errors import KVActorsError, OverloadedError, UnavailableError

SCRIPT = Path(__file__)
REFUSED = (UnavailableError, OverloadedError)
"""Errors recorded as ``fail``; every other error, and a timeout, as ``info``."""


def hot_key(index: int) -> str:
    return f"reg:{index}"


def union(siblings: list[Any]) -> list[int]:
    return sorted(set().union(*siblings))


class Recorder:
    """Appends history records to a file, one JSON object a line, flushed at once."""

    def __init__(self, stream: IO[str], process: str) -> None:
        self._stream = stream
        self.process = process

    def record(self, kind: str, f: str, key: str, value: Any, **extra: Any) -> None:
        entry = {
            "process": self.process,
            "type": kind,
            "f": f,
            "key": key,
            "value": value,
            "time": time.monotonic(),
            **extra,
        }
        self._stream.write(json.dumps(entry) + "\n")
        self._stream.flush()


def perform(recorder: Recorder, node: str, f: str, key: str, value: Any, *, action: Any) -> None:
    """Invoke, run `action()`, record its outcome."""
    recorder.record("invoke", f, key, value, node=node)
    try:
        action()
    except REFUSED as error:
        recorder.record("fail", f, key, value, error=repr(error))
    except KVActorsError as error:  # a timeout or internal error: it may have happened
        recorder.record("info", f, key, value, error=repr(error))
    else:
        recorder.record("ok", f, key, value)


def run_workload(args: argparse.Namespace, stop: threading.Event) -> int:
    nodes = dict(pair.split("=", 1) for pair in args.nodes)
    rng = random.Random(args.seed)
    keys = {"secret_key": args.secret_key, "trust_dir": args.trust_dir}
    clients = {
        name: Client(endpoint, timeout=args.timeout, retries=0, **keys)
        for name, endpoint in nodes.items()
    }
    names = sorted(clients)
    done = 0
    with Path(args.history).open("a") as stream:
        recorder = Recorder(stream, args.process)
        print("ready", flush=True)
        next_at = time.monotonic()
        while not stop.is_set():
            node = rng.choice(names)
            client = clients[node]
            if args.workload == "set":
                key = f"set:{args.process}:{done}"
                perform(recorder, node, "put", key, key, action=lambda c=client, k=key: c.put(k, k))
            else:
                key = hot_key(rng.randrange(args.hot_keys))
                element = args.element_base + done

                def add(c: Client = client, k: str = key, e: int = element) -> None:
                    c.update(k, lambda now: sorted({*now, e}), merge=union, default=[])

                perform(recorder, node, "add", key, element, action=add)
            done += 1
            # Pacing: a timed wait for the next slot, cut short by a stop.
            next_at = max(next_at + 1.0 / args.rate, time.monotonic())
            stop.wait(max(0.0, next_at - time.monotonic()))
    for client in clients.values():
        client.close()
    return 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("nodes", nargs="+", help="NAME=ENDPOINT of each node")
    parser.add_argument("--workload", choices=("set", "register"), required=True)
    parser.add_argument("--process", required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--history", required=True)
    parser.add_argument("--rate", type=float, default=50.0, help="operations a second")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds per request")
    parser.add_argument("--hot-keys", type=int, default=4)
    parser.add_argument("--element-base", type=int, default=0)
    parser.add_argument("--secret-key", help="the client's secret key (a secure cluster)")
    parser.add_argument("--trust-dir", help="the node keys it trusts (a secure cluster)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    stop = threading.Event()

    def wait_for_stop() -> None:
        for line in sys.stdin:
            if line.strip() == "stop":
                break
        stop.set()

    threading.Thread(target=wait_for_stop, daemon=True).start()
    return run_workload(args, stop)


# -- used by the tests -----------------------------------------------------------------------


class Workers:
    """Workload processes: `start` waits until each is connected, `stop` until each ends."""

    def __init__(
        self,
        directory: Path,
        endpoints: dict[str, str],
        *,
        seed: int,
        set_processes: int = 2,
        register_processes: int = 2,
        rate: float = 40.0,
        hot_keys: int = 4,
        client_keys: tuple[Path, Path] | None = None,
    ) -> None:
        self.directory = directory
        self.hot_keys = hot_keys
        self._processes: list[subprocess.Popen[str]] = []
        self._commands = []
        pairs = [f"{name}={endpoint}" for name, endpoint in endpoints.items()]
        plan = [("set", i) for i in range(set_processes)]
        plan += [("register", set_processes + i) for i in range(register_processes)]
        secure = []
        if client_keys is not None:
            secure = ["--secret-key", str(client_keys[0]), "--trust-dir", str(client_keys[1])]
        for workload, number in plan:
            self._commands.append([
                sys.executable, str(SCRIPT), *pairs, "--workload", workload,
                "--process", f"{workload}-{number}", "--seed", str(seed * 1000 + number),
                "--history", str(directory / f"history-{workload}-{number}.jsonl"),
                "--rate", str(rate), "--hot-keys", str(hot_keys),
                "--element-base", str(number * 10_000_000), *secure,
            ])  # fmt: skip

    def start(self, timeout: float = 60.0) -> Workers:
        for number, command in enumerate(self._commands):
            stderr = (self.directory / f"worker-{number}.stderr").open("w")
            with stderr:
                self._processes.append(
                    subprocess.Popen(
                        command,
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=stderr,
                        text=True,
                    )
                )
        for number, process in enumerate(self._processes):
            assert process.stdout is not None
            line = process.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"worker {number} said {line!r}; see {self.directory}")
        return self

    def stop(self, timeout: float = 30.0) -> None:
        for process in self._processes:
            if process.poll() is None and process.stdin is not None:
                try:
                    process.stdin.write("stop\n")
                    process.stdin.close()
                except BrokenPipeError:
                    pass
        deadline = time.monotonic() + timeout
        for process in self._processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def read_history(directory: Path) -> list[dict[str, Any]]:
    """Every record of every history file in `directory`, by time."""
    records = []
    for path in sorted(directory.glob("history-*.jsonl")):
        with path.open() as stream:
            records += [json.loads(line) for line in stream if line.strip()]
    records.sort(key=lambda record: record["time"])
    return records


def _written_keys(history: Sequence[dict[str, Any]]) -> tuple[list[str], list[str]]:
    puts = sorted({r["key"] for r in history if r["type"] == "invoke" and r["f"] == "put"})
    hot = sorted({r["key"] for r in history if r["type"] == "invoke" and r["f"] == "add"})
    return puts, hot


def _chunked(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def final_reads(
    directory: Path,
    endpoints: Sequence[str],
    history: Sequence[dict[str, Any]],
    client_keys: tuple[Path, Path] | None = None,
) -> None:
    """Read back every key the workloads touched, through `endpoints` (with failover),
    and append the reads to ``history-final.jsonl`` as process ``final``."""
    puts, hot = _written_keys(history)
    secret_key, trust_dir = client_keys if client_keys is not None else (None, None)
    with (
        (directory / "history-final.jsonl").open("a") as stream,
        Client(
            list(endpoints),
            timeout=10.0,
            retries=len(endpoints),
            secret_key=secret_key,
            trust_dir=trust_dir,
        ) as client,
    ):
        recorder = Recorder(stream, FINAL_PROCESS)
        # One get_many per chunk, recorded as one read per key (the checker pairs each
        # invocation of a process with the completion that follows it).
        for chunk in _chunked(puts, 500):
            try:
                found = client.get_many(chunk)
            except KVActorsError as error:
                for key in chunk:
                    recorder.record("invoke", "put", key, None)
                    recorder.record("fail", "put", key, None, error=repr(error))
                continue
            for key in chunk:
                recorder.record("invoke", "put", key, None)
                recorder.record("ok", "put", key, found.get(key))
        for key in hot:
            recorder.record("invoke", "add", key, None)
            try:
                seen = client.get_versioned(key)
            except KVActorsError as error:
                recorder.record("fail", "add", key, None, error=repr(error))
            else:
                recorder.record("ok", "add", key, union(seen.siblings) if seen.found else [])


def written_keys(history: Sequence[dict[str, Any]]) -> list[str]:
    """Every key an operation of `history` tried to write."""
    puts, hot = _written_keys(history)
    return puts + hot


if __name__ == "__main__":
    sys.exit(main())
