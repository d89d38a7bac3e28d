"""`replicated.py --latency-at`: latency against load, up to the peak, beside the ping floor.

Each run starts a fresh 3-node cluster (default N=3, R=W=2), measures its peak (puts as
fast as they are answered, `--kvactors-inflight` in flight), then, at each rate asked for,
sends puts on a fixed schedule over the three nodes (open loop, round robin, a new key
each) and then pings on the same schedule. A request's latency runs from its scheduled
send time, so any queue shows, including one in the load generator. The pings are the
floor: a node answers a ping on its transport thread without touching data, so their
tail at the same schedule is what the machine and the transport add to any request.

Rates are a list (`1000,2000,3000`), or a list ending in `...` (`1000,2000,...`), which
goes on in the list's last step until the peak that the first run measured. Every run
uses the same rates; the table gives medians over runs and each run's put p99.
"""

from __future__ import annotations

import collections
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from _loadgen import DealerLoad, Measurement, error_counts, median
from _reference import bare_line, bare_put_rate

if TYPE_CHECKING:
    import argparse

    from kvactors.launcher import LocalCluster

MORE = "..."


def parse_rates(text: str) -> tuple[list[float], float | None]:
    """The rates listed, and the step to go on with when the list ends in "...".
    "1000,2000,..." -> ([1000, 2000], 1000); "500,..." -> ([500], 500)."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    more = bool(parts) and parts[-1] == MORE
    if more:
        parts = parts[:-1]
    if not parts:
        raise ValueError(f"no rate in {text!r}")
    try:
        rates = [float(part) for part in parts]
    except ValueError:
        raise ValueError(f"rates are numbers a second, comma-separated: {text!r}") from None
    if any(rate <= 0 for rate in rates):
        raise ValueError(f"rates must be positive: {text!r}")
    if not more:
        return rates, None
    step = rates[-1] - rates[-2] if len(rates) > 1 else rates[0]
    if step <= 0:
        raise ValueError(f"a list ending in '...' must rise: {text!r}")
    return rates, step


def schedule(rates: Sequence[float], step: float | None, peak: float) -> list[float]:
    """The rates to measure: those listed, then, with a step, on up to `peak`."""
    planned = list(rates)
    if step is None:
        return planned
    while planned[-1] + step <= peak:
        planned.append(planned[-1] + step)
    return planned


@dataclass
class Point:
    """One rate's measurements over the runs."""

    rate: float
    puts: list[Measurement] = field(default_factory=list)
    pings: list[Measurement] = field(default_factory=list)


@dataclass
class Curve:
    points: list[Point]
    peaks: list[Measurement] = field(default_factory=list)
    bare: list[float] = field(default_factory=list)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)


def table(curve: Curve) -> list[str]:
    """The curve as text: a row per rate, medians over runs; a rate above the median
    peak is marked *."""
    peak = median([m.rate for m in curve.peaks])
    header = (
        f"{'puts/s asked':>12}{'answered/s':>12}{'put p50':>9}{'put p99':>9}"
        f"{'ping p50':>10}{'ping p99':>10}{'failed':>8}   put p99 of each run (ms)"
    )
    lines = [header]
    for point in curve.points:
        mark = "*" if point.rate > peak else " "
        p99s = " ".join(f"{m.p99_ms:.1f}" for m in point.puts)
        failed = sum(m.failed for m in point.puts)
        lines.append(
            f"{point.rate:>11,.0f}{mark}{median([m.rate for m in point.puts]):>12,.0f}"
            f"{median([m.p50_ms for m in point.puts]):>9.2f}"
            f"{median([m.p99_ms for m in point.puts]):>9.2f}"
            f"{median([m.p50_ms for m in point.pings]):>10.2f}"
            f"{median([m.p99_ms for m in point.pings]):>10.2f}{failed:>8}   {p99s}"
        )
    return lines


def measure(args: argparse.Namespace, cluster_factory: Callable[[], LocalCluster]) -> Curve:
    listed, step = parse_rates(args.latency_at)
    curve = Curve([])
    for run in range(args.runs):
        curve.bare.append(bare_put_rate(args.seconds))
        with cluster_factory() as cluster:
            load = DealerLoad(cluster.endpoints)
            try:
                peak = load.closed_loop("put", args.kvactors_inflight, args.warmup, args.seconds)
                curve.peaks.append(peak)
                if not curve.points:  # the first run's peak sets the rates of every run
                    curve.points = [Point(rate) for rate in schedule(listed, step, peak.rate)]
                for point in curve.points:
                    point.puts.append(load.open_loop("put", point.rate, args.seconds))
                    point.pings.append(load.open_loop("ping", point.rate, args.seconds))
            finally:
                load.close()
            curve.errors.update(load.errors)
        print(f"run {run + 1}/{args.runs} done", file=sys.stderr)
    return curve


def report(args: argparse.Namespace, curve: Curve) -> None:
    peaks = [m.rate for m in curve.peaks]
    print(
        f"kvactors, 3 nodes on loopback (default N=3, R=W=2), {os.cpu_count()} cores: "
        f"open-loop puts (100-byte values, a new key each) and then pings at each rate, "
        f"round robin over one DEALER per node; latency from each request's scheduled "
        f"send; {args.seconds:g} s per rate, {args.runs} run(s), medians over runs"
    )
    print(
        f"peak puts, {args.kvactors_inflight} in flight (closed loop): "
        f"{median(peaks):,.0f}/s (each run: {' '.join(f'{p:,.0f}' for p in peaks)})"
    )
    print(bare_line(curve.bare))
    print()
    for line in table(curve):
        print(line)
    if any(point.rate > median(peaks) for point in curve.points):
        print("* above the median peak: the cluster cannot keep up, and queues grow")
    if curve.errors:
        print(f"failed requests by error code, all runs: {error_counts(curve.errors)}")
