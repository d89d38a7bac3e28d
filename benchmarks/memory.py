"""Memory per key: kvactors, embedded and on a node, against a Python dict of the same data.

`--keys` keys (1,000,000 by default), each with its own 100-byte value (`--value-bytes`),
are stored three ways in one run, each in a process of its own, so that none reuses
memory another freed:

- dict: a plain Python dict {key: value} of the same str keys and bytes values, built in
  a fresh Python process: the baseline;
- embedded: an `ActorSystem` with its default settings (2048 partitions, the memory
  backend), in a fresh Python process, loaded through `system.client.put_many`, 1,000
  keys a call;
- node: a `kvactors node` process with its default settings, loaded over its socket by
  `kvactors.Client.put_many`, 2,000 keys a call.

Bytes per key are the process's resident set (VmRSS, from /proc: Linux) after the load
less before it, divided by the keys: "before" is once the process (the dict's process,
the started ActorSystem, the node answering pings) holds nothing; "after" is once every
key is acknowledged, after a garbage collection where the data lives in the measuring
process (dict, embedded). Then every key is read back from the embedded system (they
must all be there), and the node is asked how many keys it holds and how many bytes its
records take (`status`). The figure is the ratio to the dict's bytes per key; target:
embedded at most 2x the dict.

The run also measures the machine's pace (see _reference.py): the bare server's put
rate and pings to the node (64 in flight) before it is loaded. Memory does not depend on
it; the load rates printed do.

    python benchmarks/memory.py [--keys 1000000] [--value-bytes 100] [--seconds 2]
    python benchmarks/memory.py --keys 20000      # a quick look, a few seconds
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from _loadgen import Measurement
from _reference import BARE_INFLIGHT, bare_line, bare_put_rate, closed_pings, ping_line

HERE = Path(__file__).resolve().parent
RATIO_TARGET = 2.0
EMBEDDED_BATCH = 1_000
NODE_BATCH = 2_000


def key_of(index: int) -> str:
    return f"key-{index:08d}"


def value_of(index: int, size: int) -> bytes:
    """`size` bytes, distinct for each index (a dict of one shared value would be cheap)."""
    return b"%0*d" % (size, index)


def chunks(keys: int, size: int, value_bytes: int) -> Iterator[dict[str, bytes]]:
    """The keys and their values, `size` at a time, made as they are needed."""
    for start in range(0, keys, size):
        stop = min(keys, start + size)
        yield {key_of(i): value_of(i, value_bytes) for i in range(start, stop)}


def rss_bytes(pid: int | str = "self") -> int:
    """The resident set of process `pid`, in bytes (VmRSS of /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


@dataclasses.dataclass(frozen=True, slots=True)
class Footprint:
    """What storing `keys` keys cost one process."""

    keys: int
    before: int  # RSS, bytes
    after: int
    load_seconds: float
    stored_keys: int | None = None  # as the store's status counts them
    record_bytes: int | None = None  # the store's own count of its records' bytes

    @property
    def per_key(self) -> float:
        return (self.after - self.before) / self.keys


# --- measured in a fresh process (--child) ---------------------------------------------


def measure_dict(keys: int, value_bytes: int) -> Footprint:
    gc.collect()
    before = rss_bytes()
    started = time.perf_counter()
    data: dict[str, bytes] = {}
    for chunk in chunks(keys, EMBEDDED_BATCH, value_bytes):
        data.update(chunk)
    seconds = time.perf_counter() - started
    gc.collect()
    return Footprint(keys, before, rss_bytes(), seconds, len(data))


def measure_embedded(keys: int, value_bytes: int) -> Footprint:
    from kvactors import ActorSystem  # noqa: PLC0415 - only the child process needs it

    with ActorSystem() as system:
        gc.collect()
        before = rss_bytes()
        started = time.perf_counter()
        for chunk in chunks(keys, EMBEDDED_BATCH, value_bytes):
            system.client.put_many(chunk)
        seconds = time.perf_counter() - started
        gc.collect()
        after = rss_bytes()
        # Read back after the measurement, so that the reads' garbage is not counted.
        held = sum(
            len(system.client.get_many(chunk))
            for chunk in chunks(keys, EMBEDDED_BATCH, value_bytes)
        )
        return Footprint(keys, before, after, seconds, held)


CHILDREN: dict[str, Callable[[int, int], Footprint]] = {
    "dict": measure_dict,
    "embedded": measure_embedded,
}


def in_fresh_process(kind: str, keys: int, value_bytes: int) -> Footprint:
    """CHILDREN[kind] run by a new Python process of this file; its answer."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", kind]
    command += ["--keys", str(keys), "--value-bytes", str(value_bytes)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"measuring {kind} failed:\n{result.stderr}")
    fields: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return Footprint(**fields)


# --- a node process --------------------------------------------------------------------


def measure_node(args: argparse.Namespace) -> tuple[Footprint, Measurement]:
    """A node process's footprint, and pings to it before it is loaded."""
    from _builds import current_build  # noqa: PLC0415
    from throughput import free_port, wait_ready  # noqa: PLC0415

    from kvactors import Client  # noqa: PLC0415

    endpoint = f"tcp://127.0.0.1:{free_port()}"
    node = ["--log-level", "WARNING", "node", "--name", "memory", "--bind", endpoint]
    process = current_build().popen(node, stdout=subprocess.DEVNULL)
    try:
        wait_ready(endpoint)
        pings = closed_pings([endpoint], BARE_INFLIGHT, 0.0, args.seconds)
        before = rss_bytes(process.pid)
        started = time.perf_counter()
        with Client(endpoint, timeout=60.0) as client:
            for chunk in chunks(args.keys, NODE_BATCH, args.value_bytes):
                client.put_many(chunk)
            seconds = time.perf_counter() - started
            storage = client.status()["storage"]
        after = rss_bytes(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=60)
    footprint = Footprint(args.keys, before, after, seconds, storage["keys"], storage["bytes"])
    return footprint, pings


# --- report ----------------------------------------------------------------------------


def report_lines(footprints: dict[str, Footprint], value_bytes: int) -> list[str]:
    """A row per store: RSS before and after (MB), bytes per key, the ratio to the
    dict, what the store counts itself, and the load rate; then the verdict."""
    base = footprints["dict"].per_key
    lines = [
        f"{'store':10}{'RSS before MB':>14}{'after MB':>10}{'bytes/key':>11}{'x dict':>8}"
        f"{'keys held':>11}{'record bytes/key':>18}{'keys/s':>10}"
    ]
    for name, footprint in footprints.items():
        held = "" if footprint.stored_keys is None else f"{footprint.stored_keys:,}"
        records = (
            ""
            if footprint.record_bytes is None
            else f"{footprint.record_bytes / footprint.keys:.0f}"
        )
        lines.append(
            f"{name:10}{footprint.before / 1e6:>14.1f}{footprint.after / 1e6:>10.1f}"
            f"{footprint.per_key:>11.0f}{footprint.per_key / base:>8.2f}{held:>11}"
            f"{records:>18}{footprint.keys / footprint.load_seconds:>10,.0f}"
        )
    if "embedded" in footprints:
        ratio = footprints["embedded"].per_key / base
        met = "met" if ratio <= RATIO_TARGET else "NOT met"
        lines.append(
            f"embedded / dict: {ratio:.2f}; target <= {RATIO_TARGET:g}: {met} "
            f"({value_bytes}-byte values)"
        )
    return lines


def missing_keys(footprints: dict[str, Footprint]) -> list[str]:
    return [
        f"{name} holds {f.stored_keys:,} of {f.keys:,} keys"
        for name, f in footprints.items()
        if f.stored_keys is not None and f.stored_keys != f.keys
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000, help="keys stored")
    parser.add_argument("--value-bytes", type=int, default=100, help="bytes of each value")
    parser.add_argument(
        "--seconds", type=float, default=2.0, help="for the bare server and the pings"
    )
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.keys < 1:
        parser.error("--keys must be at least 1")
    if args.value_bytes < 1:
        parser.error("--value-bytes must be positive")
    return args


def main() -> None:
    args = parse_args()
    if args.child:
        footprint = CHILDREN[args.child](args.keys, args.value_bytes)
        print(json.dumps(dataclasses.asdict(footprint)))
        return
    bare = bare_put_rate(args.seconds)
    footprints = {
        "dict": in_fresh_process("dict", args.keys, args.value_bytes),
        "embedded": in_fresh_process("embedded", args.keys, args.value_bytes),
    }
    footprints["node"], pings = measure_node(args)
    print(
        f"{args.keys:,} keys ({key_of(0)!r} ...), a distinct {args.value_bytes}-byte value "
        f"each; default settings (2048 partitions, memory backend); RSS from /proc; "
        f"{os.cpu_count()} cores"
    )
    print(bare_line([bare]))
    print(ping_line([pings], f"the node before loading, {BARE_INFLIGHT} in flight"))
    print()
    for line in report_lines(footprints, args.value_bytes):
        print(line)
    problems = missing_keys(footprints)
    if problems:
        raise SystemExit("; ".join(problems))


if __name__ == "__main__":
    main()
