"""Three replicas on this machine: kvactors (N=3, R=W=2) against PySyncObj and Redis.

Each run first measures the bare server's put rate (the machine's pace in this run, see
_reference.py), then starts, in turn, three fresh clusters of three processes on
loopback. 100-byte values throughout.

- kvactors: a `LocalCluster` of three nodes with their default N, R and W; the load comes
  from this process, one DEALER per node, the requests in flight split across them.
  Puts of new keys with `--inflight` (32, the baselines' count) and `--kvactors-inflight`
  (256, a pipelined load: its peak) in flight; gets of keys those puts wrote (256);
  pings (256: the peak's floor); puts sent on a fixed schedule (open loop) at half the
  peak put rate of the same run, latency from each one's scheduled send (the p99
  target's figure), and pings on that schedule (its floor); then YCSB workloads A and B.
- PySyncObj: three processes each holding a `ReplDict` (benchmarks/_pysyncobj_node.py),
  `appendEntriesUseBatch=False`. It has no network client, so the leader's own process
  issues asynchronous `set` calls with callbacks (`--inflight` of them), and in YCSB
  reads its own copy (`get`, local: no network hop, no log, no quorum).
- Redis, where `redis-server` is on PATH: a master and two replicas without persistence;
  a write is `SET` then `WAIT 1` pipelined (answered once a replica has it: two copies,
  as W=2), on each of `--inflight` connections; gets are `GET` on the master (one copy
  answers; kvactors' R=2 asks two), 256 connections, as kvactors' gets; then YCSB.

YCSB (_ycsb.py): `--ycsb-records` keys are loaded, then workload A (50% reads, 50%
updates) and B (95/5) run for `--seconds` each with `--ycsb-inflight` operations
outstanding, every system at the same count, over YCSB's scrambled Zipfian key choice
(the same operation sequence for all three systems of a run). An update is a write of
the whole 100-byte value; kvactors writes it without a context (a blind put).

Latency is from a request's send to its reply (open loop: from its scheduled send).
Rates and percentiles are medians over `--runs` runs; the ratios are taken within each
run (the machine is shared and noisy) and their median is the figure. Targets: kvactors
puts at least 2.0x PySyncObj's writes and 0.35x Redis's; kvactors p99 at most 10 ms at
half its peak rate (and at most 5 ms at 2,000 puts a second: `--latency-at`).

    python benchmarks/replicated.py [--runs 3] [--seconds 3] [--inflight 32]
                                    [--kvactors-inflight 256] [--no-redis] [--no-ycsb]
                                    [--ycsb-records 10000] [--ycsb-inflight 256]
    python benchmarks/replicated.py --quick     # one short run, about a minute
    python benchmarks/replicated.py --latency-at 1000,2000,3000,... --runs 3  # kvactors
    python benchmarks/replicated.py --baseline-ref REF [--new-ref REF] --runs 5   # two builds

`--latency-at RATES` (_latency.py): open-loop puts at each rate over the three nodes,
p50 and p99 against the rate up to the peak, with pings on the same schedule beside
them; "..." at the end of the list goes on in the same step up to the measured peak.

With `--baseline-ref REF`, each run starts a 3-node cluster of REF's tree and one of the new
build (this checkout, or `--new-ref`'s commit), in alternating order, each through its own
tree's `kvactors cluster` (see _builds.py), and measures peak puts, gets and pings on
each; it prints each build's rate per run and the median of the runs' ratios new/old.
PySyncObj and Redis are left out.

With `--secure`, each run starts an insecure 3-node cluster and a secure one (CURVE on
both planes, keys made by the launcher; the load holds the admin client's key, see
_secure.py), in alternating order, measures peak puts, gets and pings on each and prints
the median of the runs' ratios secure/insecure. PySyncObj and Redis are left out.

    python benchmarks/replicated.py --secure --runs 3
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import os
import random
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import _latency
from _builds import (
    Build,
    add_build_options,
    builds,
    cluster_of,
    in_turn,
    paired,
    rate_row,
    ratio_row,
)
from _loadgen import VALUE_BYTES, DealerLoad, Measurement, error_counts, median
from _pysyncobj import PYSYNCOBJ_REWRITE_WARNING, PySyncObjRun, measure_pysyncobj
from _redis import (
    RedisGroup,
    RedisRequest,
    new_key_writes,
    read_request,
    reads_of,
    write_request,
)
from _reference import bare_line, bare_put_rate, ping_line
from _ycsb import WORKLOADS, OperationCycle, Plan, Workload, record_key

from kvactors.launcher import free_port_block

if TYPE_CHECKING:
    from kvactors.launcher import LocalCluster

P99_TARGET_MS = 10.0  # at half the peak; --latency-at shows 2,000 a second (5 ms)
PYSYNCOBJ_RATIO_TARGET = 2.0
# Operations drawn per YCSB workload and run; a measurement cycles through them.
YCSB_OPERATIONS = 100_000


def mixed_operations(plan: Plan, workload: Workload) -> Callable[[], tuple[bool, str]]:
    """The workload's operations as (is_read, key), keys named before the measurement."""
    cycle = OperationCycle(
        [(is_read, record_key(index)) for is_read, index in plan.operations(workload)]
    )
    return cycle


# --- kvactors -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KvactorsRun:
    put: Measurement
    put_same: Measurement  # at the baselines' in-flight count
    get: Measurement
    ping: Measurement  # at the peak's in-flight count: the floor of the closed loops
    half_load: Measurement
    half_rate: float
    floor: Measurement  # pings at the half-load schedule: the transport and the machine alone
    ycsb: dict[str, Measurement]  # by workload name; empty when not run
    probe: str
    errors: collections.Counter[str]  # failed replies by error code


def three_nodes() -> LocalCluster:
    """A LocalCluster of 3 nodes of the kvactors this process imports. Imported here:
    with --baseline-ref the nodes measured are fixed commits' builds, not this import."""
    from kvactors.launcher import LocalCluster  # noqa: PLC0415

    return LocalCluster(3, base_port=free_port_block(3))


def measure_kvactors(args: argparse.Namespace, plan: Plan | None) -> KvactorsRun:
    inflight, warmup, seconds = args.kvactors_inflight, args.warmup, args.seconds
    with three_nodes() as cluster:
        load = DealerLoad(cluster.endpoints)
        try:
            put_same = load.closed_loop("put", args.inflight, warmup, seconds)
            put = load.closed_loop("put", inflight, warmup, seconds)
            get = load.closed_loop("get", inflight, warmup, seconds)
            ping = load.closed_loop("ping", inflight, warmup, seconds)
            half_rate = put.rate / 2
            half_load = load.open_loop("put", half_rate, seconds)
            # Pings are answered by the node's transport without touching data: their tail
            # at the same schedule is what the machine (scheduling, other work) and the
            # transport add to any request.
            floor = load.open_loop("ping", half_rate, seconds)
            ycsb: dict[str, Measurement] = {}
            if plan is not None:
                loaded = load.put_all(plan.keys(), plan.inflight)
                if loaded.failed:
                    raise RuntimeError(f"{loaded.failed} puts of the YCSB records failed")
                for workload in WORKLOADS:
                    load.mixed = mixed_operations(plan, workload)
                    ycsb[workload.name] = load.closed_loop("mixed", plan.inflight, warmup, seconds)
            probe = load.copies_probe()
        finally:
            load.close()
    return KvactorsRun(
        put, put_same, get, ping, half_load, half_rate, floor, ycsb, probe, load.errors
    )


@dataclass(frozen=True, slots=True)
class PeakRun:
    put: Measurement
    get: Measurement
    ping: Measurement
    probe: str


def peak_of(load: DealerLoad, inflight: int, warmup: float, seconds: float) -> PeakRun:
    """Peak puts, then gets of the keys they wrote, then pings, all closed loops."""
    put = load.closed_loop("put", inflight, warmup, seconds)
    get = load.closed_loop("get", inflight, warmup, seconds)
    ping = load.closed_loop("ping", inflight, warmup, seconds)
    return PeakRun(put, get, ping, load.copies_probe())


def measure_peak(build: Build, inflight: int, warmup: float, seconds: float) -> PeakRun:
    """peak_of a fresh 3-node cluster of `build`."""
    with cluster_of(build, 3, free_port_block(3)) as endpoints:
        load = DealerLoad(endpoints)
        try:
            return peak_of(load, inflight, warmup, seconds)
        finally:
            load.close()


def peak_rows(runs: dict[str, list[PeakRun]], first: str, second: str, ratio: str) -> None:
    """Each op's rates for two kinds of cluster, and the ratio second/first."""
    print(f"{'':36}{'median':>12}   each run")
    for op in ("put", "get", "ping"):
        first_rates = [getattr(run, op).rate for run in runs[first]]
        second_rates = [getattr(run, op).rate for run in runs[second]]
        print(rate_row(f"{op} ops/s, {first}", first_rates))
        print(rate_row(f"{op} ops/s, {second}", second_rates))
        print(ratio_row(f"{op} {ratio}", second_rates, first_rates))


def compare_builds(args: argparse.Namespace) -> None:
    """Each run: the bare server, then a cluster of the old build and one of the new, in
    alternating order."""
    bare: list[float] = []
    with builds(args) as (old, new):
        assert old is not None
        runs: dict[str, list[PeakRun]] = {"old": [], "new": []}
        for run in range(args.runs):
            bare.append(bare_put_rate(args.seconds))
            for name, build in in_turn(run, ("old", old), ("new", new)):
                runs[name].append(
                    measure_peak(build, args.kvactors_inflight, args.warmup, args.seconds)
                )
            print(f"run {run + 1}/{args.runs} done", file=sys.stderr)
    print(
        f"kvactors, 3 nodes on loopback (default N, R, W), {os.cpu_count()} cores; "
        f"{args.kvactors_inflight} in flight, {VALUE_BYTES}-byte values, a new random key "
        f"per put; {args.seconds}s per measurement after {args.warmup}s warm-up, "
        f"{args.runs} run(s); PySyncObj and Redis not run"
    )
    print(f"new: {new.label}; old: {old.label}; the old build went first in runs 1, 3, ...")
    print(bare_line(bare))
    for name in ("old", "new"):
        print(f"replication check, {name}: {runs[name][-1].probe}")
    peak_rows(runs, "old", "new", "new/old")
    for name in ("old", "new"):
        shape = f"{name}, {args.kvactors_inflight} in flight, closed loop"
        print(ping_line([run.ping for run in runs[name]], shape))
    failed = {name: sum(r.put.failed + r.get.failed for r in runs[name]) for name in runs}
    missing = {name: sum(r.get.missing for r in runs[name]) for name in runs}
    print(
        f"failed requests: old {failed['old']}, new {failed['new']}; gets that found "
        f"no value: old {missing['old']}, new {missing['new']}"
    )


def measure_secure_peak(
    keys_dir: Path | None, inflight: int, warmup: float, seconds: float
) -> PeakRun:
    """peak_of a fresh 3-node LocalCluster of this checkout; secure (keys made, or
    reused, in `keys_dir`) unless `keys_dir` is None."""
    from _secure import cluster_credentials  # noqa: PLC0415 - imports kvactors

    from kvactors.launcher import LocalCluster  # noqa: PLC0415

    with LocalCluster(3, base_port=free_port_block(3), keys_dir=keys_dir) as cluster:
        load = DealerLoad(cluster.endpoints, secure=cluster_credentials(cluster))
        try:
            return peak_of(load, inflight, warmup, seconds)
        finally:
            load.close()


def compare_secure(args: argparse.Namespace) -> None:
    """Each run: the bare server, then an insecure and a secure cluster, in alternating
    order."""
    from _secure import verdict  # noqa: PLC0415

    bare: list[float] = []
    runs: dict[str, list[PeakRun]] = {"insecure": [], "secure": []}
    with tempfile.TemporaryDirectory(prefix="kvactors-bench-keys-") as directory:
        for run in range(args.runs):
            bare.append(bare_put_rate(args.seconds))
            plan = in_turn(run, ("insecure", None), ("secure", Path(directory)))
            for name, keys_dir in plan:
                runs[name].append(
                    measure_secure_peak(keys_dir, args.kvactors_inflight, args.warmup, args.seconds)
                )
            print(f"run {run + 1}/{args.runs} done", file=sys.stderr)
    print(
        f"kvactors, 3 nodes on loopback (default N, R, W), {os.cpu_count()} cores; "
        f"{args.kvactors_inflight} in flight, {VALUE_BYTES}-byte values, a new random key "
        f"per put; {args.seconds}s per measurement after {args.warmup}s warm-up, "
        f"{args.runs} run(s); PySyncObj and Redis not run"
    )
    print("secure: CURVE on the client and peer planes, each message checked against the")
    print("trust set; the insecure cluster went first in runs 1, 3, ...")
    print(bare_line(bare))
    for name in runs:
        print(f"replication check, {name}: {runs[name][-1].probe}")
    peak_rows(runs, "insecure", "secure", "secure/insecure")
    for op in ("put", "get"):
        insecure = [getattr(run, op).rate for run in runs["insecure"]]
        secure = [getattr(run, op).rate for run in runs["secure"]]
        print(f"{op}: {verdict(paired(secure, insecure)[0])}")
    for name, measured in runs.items():
        p99 = statistics.median(run.put.p99_ms for run in measured)
        failed = sum(r.put.failed + r.get.failed for r in measured)
        print(f"{name}: put p99 at peak {p99:.1f} ms (median of runs), failed requests {failed}")
        shape = f"{name}, {args.kvactors_inflight} in flight, closed loop"
        print(ping_line([run.ping for run in measured], shape))


# --- Redis --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RedisRun:
    write: Measurement
    get: Measurement
    ycsb: dict[str, Measurement]  # by workload name; empty when not run
    version: str


def redis_mixed(plan: Plan, workload: Workload) -> Callable[[], RedisRequest]:
    """The workload's operations as Redis requests: GET, or SET + WAIT 1."""
    value = b"v" * VALUE_BYTES
    cycle = OperationCycle(
        [
            read_request(record_key(index)) if is_read else write_request(record_key(index), value)
            for is_read, index in plan.operations(workload)
        ]
    )
    return cycle


def measure_redis(executable: str, args: argparse.Namespace, plan: Plan | None) -> RedisRun:
    warmup, seconds = args.warmup, args.seconds
    with tempfile.TemporaryDirectory(prefix="replicated-bench-") as log_dir:
        group = RedisGroup(executable, Path(log_dir))
        try:
            group.wait_replicated()
            write = group.drive(args.inflight, warmup, seconds, new_key_writes())
            if not group.written:
                raise RuntimeError("no Redis write succeeded, so there is nothing to read")
            reads = reads_of(group.written, random.Random())
            get = group.drive(args.kvactors_inflight, warmup, seconds, reads)
            ycsb: dict[str, Measurement] = {}
            if plan is not None:
                group.load(plan.keys(), b"v" * VALUE_BYTES)
                for workload in WORKLOADS:
                    requests = redis_mixed(plan, workload)
                    ycsb[workload.name] = group.drive(plan.inflight, warmup, seconds, requests)
            return RedisRun(write, get, ycsb, group.version())
        finally:
            group.stop()


# --- report -------------------------------------------------------------------------------


def numbers(values: list[float], digits: int = 2) -> str:
    return " ".join(f"{value:.{digits}f}" for value in values)


ROW_LABEL = 50


def row(label: str, runs: list[Measurement]) -> str:
    """A table row: the median rate, p50 and p99, failures, and each run's rate."""
    rates = [run.rate for run in runs]
    p50 = median([run.p50_ms for run in runs])
    p99 = median([run.p99_ms for run in runs])
    failed = sum(run.failed for run in runs)
    per_run = " ".join(f"{rate:,.0f}" for rate in rates)
    return (
        f"{label:{ROW_LABEL}}{median(rates):>10,.0f}{p50:>9.2f}{p99:>9.2f}{failed:>8}   {per_run}"
    )


def header() -> str:
    columns = f"{'system and load':{ROW_LABEL}}{'ops/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'failed':>8}"
    return f"{columns}   ops/s of each run"


def ratio_line(label: str, numerators: list[Measurement], denominators: list[Measurement]) -> str:
    """The median of the runs' rate ratios, and each run's; "not run" without both."""
    if not numerators or not denominators:
        return f"{label}: not run"
    each = [n.rate / d.rate for n, d in zip(numerators, denominators, strict=True)]
    return f"{label}: {median(each):.2f} (runs: {numbers(each)})"


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


@dataclass(frozen=True, slots=True)
class Results:
    bare: list[float]
    kvactors: list[KvactorsRun]
    pysyncobj: list[PySyncObjRun]
    redis: list[RedisRun]
    redis_note: str


def describe(args: argparse.Namespace, results: Results, plan: Plan | None) -> None:
    print(
        f"3 processes per system on loopback, {os.cpu_count()} cores; {args.inflight} writes "
        f"in flight for the baselines, {args.kvactors_inflight} for kvactors' peak and "
        f"the gets, {VALUE_BYTES}-byte values, a new random key per write; "
        f"{args.seconds}s per measurement after {args.warmup}s warm-up, {args.runs} run(s)"
    )
    print(
        "kvactors: LocalCluster of 3 nodes with the default N, R, W; load from this process, "
        f"one DEALER per node; replication check: {results.kvactors[-1].probe}"
    )
    print(
        f"PySyncObj {results.pysyncobj[-1].version}: ReplDict, appendEntriesUseBatch=False; "
        "async set() with callbacks issued inside the leader's process"
    )
    print(f"Redis: {results.redis_note}")
    if plan is None:
        print("YCSB: not run (--no-ycsb)")
    else:
        print(
            f"YCSB: {plan.records:,} records loaded, then each workload with "
            f"{plan.inflight} operations in flight for every system, scrambled Zipfian keys; "
            "kvactors reads with R=2 over the network, Redis GETs on the master, PySyncObj "
            "reads the leader's local copy (no network hop); updates as the writes above"
        )
    print(bare_line(results.bare))


def table(args: argparse.Namespace, results: Results, plan: Plan | None) -> None:
    kvactors, pysyncobj, redis = results.kvactors, results.pysyncobj, results.redis
    print(header())
    print(row(f"kvactors put, {args.inflight} in flight", [r.put_same for r in kvactors]))
    peak = f"{args.kvactors_inflight} in flight"
    print(row(f"kvactors put, {peak} (peak)", [r.put for r in kvactors]))
    print(row(f"kvactors get, {peak}", [r.get for r in kvactors]))
    print(row(f"kvactors ping, {peak} (the peak's floor)", [r.ping for r in kvactors]))
    half_rates = " ".join(f"{run.half_rate:,.0f}" for run in kvactors)
    print(row("kvactors put, open loop at half the peak", [r.half_load for r in kvactors]))
    print(f"{'':{ROW_LABEL}}(scheduled rates: {half_rates} per s)")
    print(row("kvactors ping, the same schedule (floor)", [r.floor for r in kvactors]))
    print(row(f"PySyncObj set, {args.inflight} in flight", [r.write for r in pysyncobj]))
    if redis:
        print(row(f"Redis SET + WAIT 1, {args.inflight} in flight", [r.write for r in redis]))
        print(row(f"Redis GET on the master, {peak}", [r.get for r in redis]))
    if plan is not None:
        for workload in WORKLOADS:
            name, label = workload.name, f"{workload.label}, {plan.inflight} in flight"
            print(row(f"kvactors {label}", [r.ycsb[name] for r in kvactors]))
            print(row(f"PySyncObj {label}", [r.ycsb[name] for r in pysyncobj]))
            if redis:
                print(row(f"Redis {label}", [r.ycsb[name] for r in redis]))
    missing = sum(run.get.missing for run in kvactors)
    missing += sum(m.missing for run in kvactors for m in run.ycsb.values())
    if missing:
        print(f"kvactors gets that found no value: {missing}")
    errors = sum((run.errors for run in kvactors), collections.Counter[str]())
    if errors:
        print(f"kvactors failed requests by error code, all runs: {error_counts(errors)}")


def ratios(args: argparse.Namespace, results: Results, plan: Plan | None) -> None:
    kvactors, pysyncobj, redis = results.kvactors, results.pysyncobj, results.redis
    puts = [k.put.rate / p.write.rate for k, p in zip(kvactors, pysyncobj, strict=True)]
    print(
        f"kvactors peak puts / PySyncObj writes: {median(puts):.2f} "
        f"(runs: {numbers(puts)}); target >= {PYSYNCOBJ_RATIO_TARGET}: "
        f"{verdict(median(puts) >= PYSYNCOBJ_RATIO_TARGET)}"
    )
    print(
        "  "
        + ratio_line(
            f"with {args.inflight} in flight for both",
            [k.put_same for k in kvactors],
            [p.write for p in pysyncobj],
        )
    )
    redis_writes = [r.write for r in redis]
    print(ratio_line("kvactors puts / Redis writes", [k.put for k in kvactors], redis_writes))
    redis_gets = [r.get for r in redis]
    print(ratio_line("kvactors gets / Redis GETs", [k.get for k in kvactors], redis_gets))
    if plan is not None:
        for workload in WORKLOADS:
            name = workload.name
            ours = [k.ycsb[name] for k in kvactors]
            theirs = [p.ycsb[name] for p in pysyncobj]
            print(ratio_line(f"kvactors / PySyncObj, YCSB {name}", ours, theirs))
            print(ratio_line(f"kvactors / Redis, YCSB {name}", ours, [r.ycsb[name] for r in redis]))
    p99s = [run.half_load.p99_ms for run in kvactors]
    print(
        f"kvactors p99 at half the peak put rate: {median(p99s):.2f} ms "
        f"(runs: {numbers(p99s)}); target <= {P99_TARGET_MS:g} ms: "
        f"{verdict(median(p99s) <= P99_TARGET_MS)}"
    )
    # A ping's tail is the machine's (scheduling, other work) and the transport's: when it
    # alone is near the target, the put figure says little about kvactors.
    print("  " + ping_line([run.floor for run in kvactors], "open loop at half the peak"))
    print("  " + ping_line([run.ping for run in kvactors], f"{args.kvactors_inflight} in flight"))
    warnings = [run.rewrite_warnings for run in pysyncobj]
    if any(warnings):
        print(
            f"PySyncObj nodes logged '{PYSYNCOBJ_REWRITE_WARNING}' "
            f"{' '.join(map(str, warnings))} time(s) in the runs (followers rewriting entries)"
        )


def report(args: argparse.Namespace, results: Results, plan: Plan | None) -> None:
    describe(args, results, plan)
    print()
    table(args, results, plan)
    print()
    ratios(args, results, plan)


# --- main ---------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs; medians are reported")
    parser.add_argument("--seconds", type=float, help="per measurement (3; 1.5 with --quick)")
    parser.add_argument(
        "--warmup", type=float, help="before each closed loop (0.5; 0.25 with --quick)"
    )
    parser.add_argument(
        "--inflight", type=int, default=32, help="writes in flight for the baselines (issue: 32)"
    )
    parser.add_argument(
        "--kvactors-inflight",
        type=int,
        default=256,
        help="requests in flight for kvactors' peak and gets, and Redis GETs",
    )
    parser.add_argument("--no-redis", action="store_true", help="leave the Redis rows out")
    parser.add_argument("--no-ycsb", action="store_true", help="leave YCSB A and B out")
    parser.add_argument(
        "--ycsb-records", type=int, default=10_000, help="keys loaded for YCSB A and B"
    )
    parser.add_argument(
        "--ycsb-inflight",
        type=int,
        default=256,
        help="YCSB operations in flight, the same for every system",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a short smoke run: 1 run, 1.5 s per measurement, 2,000 YCSB records",
    )
    parser.add_argument(
        "--latency-at",
        metavar="RATE,...",
        help="only kvactors: open-loop puts at each rate a second, with pings on the same "
        "schedule; a list ending in ',...' goes on in its last step up to the peak",
    )
    add_build_options(parser, only="only kvactors' peak puts, gets and pings: ")
    parser.add_argument(
        "--secure",
        action="store_true",
        help="only kvactors' peak puts, gets and pings: a secure cluster beside an "
        "insecure one in each run, and the ratios secure/insecure",
    )
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = parser().parse_args(argv)
    # --quick shortens what was not set explicitly.
    if args.seconds is None:
        args.seconds = 1.5 if args.quick else 3.0
    if args.warmup is None:
        args.warmup = 0.25 if args.quick else 0.5
    if args.quick:
        args.runs = 1
        args.ycsb_records = min(args.ycsb_records, 2_000)
    if args.latency_at:
        try:
            _latency.parse_rates(args.latency_at)
        except ValueError as error:
            parser().error(str(error))
    return args


def ycsb_plan(args: argparse.Namespace, run: int) -> Plan | None:
    if args.no_ycsb:
        return None
    return Plan(args.ycsb_records, args.ycsb_inflight, YCSB_OPERATIONS, seed=1000 + run)


def main() -> None:
    args = parse_args()
    if args.latency_at:
        _latency.report(args, _latency.measure(args, three_nodes))
        return
    if args.secure:
        if args.baseline_ref:
            raise SystemExit("--secure and --baseline-ref are separate comparisons")
        compare_secure(args)
        return
    if args.baseline_ref:
        compare_builds(args)
        return

    if importlib.util.find_spec("pysyncobj") is None:
        sys.exit("PySyncObj is not installed: pip install pysyncobj (or the bench extra)")
    redis_server = None if args.no_redis else shutil.which("redis-server")
    if args.no_redis:
        redis_note = "not run (--no-redis)"
    elif redis_server is None:
        redis_note = "not run: redis-server not found (not on PATH)"
    else:
        redis_note = "a master and 2 replicas, no persistence; SET then WAIT 1 per write"

    results = Results([], [], [], [], redis_note)
    for run in range(args.runs):
        plan = ycsb_plan(args, run)
        results.bare.append(bare_put_rate(args.seconds))
        results.kvactors.append(measure_kvactors(args, plan))
        results.pysyncobj.append(measure_pysyncobj(args.inflight, args.warmup, args.seconds, plan))
        if redis_server is not None:
            results.redis.append(measure_redis(redis_server, args, plan))
        print(f"run {run + 1}/{args.runs} done", file=sys.stderr)
    if results.redis:
        note = f"{redis_note} (redis-server {results.redis[-1].version})"
        results = Results(results.bare, results.kvactors, results.pysyncobj, results.redis, note)
    report(args, results, ycsb_plan(args, 0))


if __name__ == "__main__":
    main()
