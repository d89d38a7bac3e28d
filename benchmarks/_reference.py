"""The machine's own pace in a benchmark's run: the bare server's rate and the ping floor.

The machines these benchmarks run on are shared: another process busy on a core halves a
rate or multiplies a tail, and a figure then flatters or blames the code. So every
benchmark measures, in its own run and beside its own figures:

- the bare server's rate (benchmarks/bare_server.py: one loop, a ROUTER, msgpack and a
  dict; the stack's own limit), puts driven exactly as throughput.py drives them;
- the ping floor: pings to the kvactors node(s) under the benchmark's own load shape (the
  same number in flight, or the same open-loop schedule). A node answers a ping on its
  transport thread without touching data, so its rate and latency are what the machine,
  ZeroMQ and the node's request loop cost before any work.

A bare rate well below its usual figure, or a ping p99 of several milliseconds, says the
machine was loaded while the benchmark ran.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from _loadgen import DealerLoad, Measurement, median
from throughput import drive, server

if TYPE_CHECKING:
    from _secure import Credentials

# The load throughput.py drives the bare server with.
BARE_INFLIGHT = 64
BARE_KEYSPACE = 10_000


def bare_put_rate(seconds: float, inflight: int = BARE_INFLIGHT) -> float:
    """Puts a second of a fresh bare server, `inflight` outstanding from one DEALER."""
    with server("bare") as endpoint:
        return drive(endpoint, "put", seconds, inflight, BARE_KEYSPACE)


def closed_pings(
    endpoints: list[str],
    inflight: int,
    warmup: float,
    seconds: float,
    secure: Credentials | None = None,
) -> Measurement:
    """Pings with `inflight` outstanding, spread over one DEALER per endpoint."""
    load = DealerLoad(endpoints, secure=secure)
    try:
        return load.closed_loop("ping", inflight, warmup, seconds)
    finally:
        load.close()


def each(values: Sequence[float], digits: int = 0) -> str:
    return " ".join(f"{value:,.{digits}f}" for value in values)


def bare_line(rates: Sequence[float], inflight: int = BARE_INFLIGHT) -> str:
    return (
        f"bare pyzmq+msgpack server, this run: {median(rates):,.0f} puts/s with {inflight} "
        f"in flight (each run: {each(rates)})"
    )


def ping_line(pings: Sequence[Measurement], shape: str) -> str:
    p99s = [ping.p99_ms for ping in pings]
    return (
        f"ping floor ({shape}): {median([p.rate for p in pings]):,.0f} pings/s, "
        f"p50 {median([p.p50_ms for p in pings]):.2f} ms, p99 {median(p99s):.2f} ms "
        f"(medians; p99 of each run: {each(p99s, 2)})"
    )
