"""YCSB's core workloads A and B: the operation mix and the Zipfian key choice.

Pure Python (no kvactors, no sockets): replicated.py drives kvactors and Redis from this
process with it, and _pysyncobj_node.py drives PySyncObj's leader with the same sequence
(the same seed gives the same operations).

- Workload A, "update heavy": 50% reads, 50% updates.
- Workload B, "read mostly": 95% reads, 5% updates.

Keys are chosen as YCSB's default `requestdistribution=zipfian` does (its
ScrambledZipfianGenerator): a Zipfian rank with the constant 0.99 (rank 0 the most
popular), spread over the key space by an FNV-1a hash so that the popular keys are not
neighbours. An update writes the whole value of an existing key (YCSB's default writes
one field of ten; here the value is one field of `VALUE_BYTES`, as in the other loads).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

ZIPFIAN_CONSTANT = 0.99
_FNV_OFFSET_BASIS_64 = 0xCBF29CE484222325
_FNV_PRIME_64 = 0x100000001B3
_MASK_64 = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class Workload:
    name: str
    read_proportion: float

    @property
    def label(self) -> str:
        reads = round(self.read_proportion * 100)
        return f"YCSB {self.name} ({reads}/{100 - reads} read/update)"


WORKLOAD_A = Workload("A", 0.50)
WORKLOAD_B = Workload("B", 0.95)
WORKLOADS = (WORKLOAD_A, WORKLOAD_B)


def zeta(items: int, theta: float) -> float:
    """The generalised harmonic number: the sum of 1 / i**theta for i in 1..items."""
    return math.fsum(math.pow(i, -theta) for i in range(1, items + 1))


class Zipfian:
    """Ranks 0..items-1, rank r drawn with probability proportional to 1 / (r+1)**theta.

    The rejection-free method of Gray et al., "Quickly generating billion-record synthetic
    databases" (SIGMOD 1994), as YCSB's ZipfianGenerator implements it."""

    def __init__(self, items: int, rng: random.Random, theta: float = ZIPFIAN_CONSTANT) -> None:
        if items < 2:
            raise ValueError("a Zipfian choice needs at least 2 items")
        self.items = items
        self.theta = theta
        self._rng = rng
        self._zetan = zeta(items, theta)
        self._alpha = 1.0 / (1.0 - theta)
        self._eta = (1.0 - (2.0 / items) ** (1.0 - theta)) / (1.0 - zeta(2, theta) / self._zetan)
        self._second = 1.0 + 0.5**theta

    def probability(self, rank: int) -> float:
        """The exact probability of `rank` (what a sample's frequencies approach)."""
        return math.pow(rank + 1, -self.theta) / self._zetan

    def next(self) -> int:
        u = self._rng.random()
        uz = u * self._zetan
        if uz < 1.0:
            return 0
        if uz < self._second:
            return 1
        rank = int(self.items * (self._eta * u - self._eta + 1.0) ** self._alpha)
        return min(rank, self.items - 1)


def fnv1a_64(value: int) -> int:
    """YCSB's FNVhash64 of a 64-bit integer: its eight bytes, lowest first."""
    hashed = _FNV_OFFSET_BASIS_64
    for _ in range(8):
        hashed ^= value & 0xFF
        hashed = (hashed * _FNV_PRIME_64) & _MASK_64
        value >>= 8
    return hashed


class ScrambledZipfian:
    """Zipfian popularity, but the popular items scattered over 0..items-1."""

    def __init__(self, items: int, rng: random.Random) -> None:
        self.items = items
        self._zipfian = Zipfian(items, rng)

    def next(self) -> int:
        return fnv1a_64(self._zipfian.next()) % self.items


def record_key(index: int) -> str:
    return f"user{index}"


# One operation: (is_read, key index).
Operation = tuple[bool, int]


def operations(workload: Workload, records: int, count: int, seed: int) -> list[Operation]:
    """`count` operations of `workload` over `records` keys, the same for the same seed.
    Made before a measurement so that drawing them costs the load generator nothing."""
    rng = random.Random(seed)
    keys = ScrambledZipfian(records, rng)
    return [(rng.random() < workload.read_proportion, keys.next()) for _ in range(count)]


class OperationCycle(Generic[T]):
    """The operations in order, from the start again when they run out."""

    def __init__(self, ops: Sequence[T]) -> None:
        if not ops:
            raise ValueError("no operations")
        self._ops = ops
        self._position = 0

    def __call__(self) -> T:
        op = self._ops[self._position]
        self._position = (self._position + 1) % len(self._ops)
        return op


@dataclass(frozen=True, slots=True)
class Plan:
    """How a run drives the YCSB workloads: `records` keys loaded first, then each
    workload with `inflight` operations outstanding, cycling through `count` operations
    drawn from `seed` (the same for every system of a run)."""

    records: int
    inflight: int
    count: int
    seed: int

    def operations(self, workload: Workload) -> list[Operation]:
        return operations(workload, self.records, self.count, self.seed)

    def keys(self) -> list[str]:
        return [record_key(index) for index in range(self.records)]
