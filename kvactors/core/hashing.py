"""Stable key hashing: a key's 64-bit point and its partition.

Pure and stable across processes, machines and Python versions (XXH3-64, a specified
hash with a portable output, never Python's `hash()`), because every node must put a
key in the same partition. XXH3 rather than a cryptographic hash: keys are hashed on
every request, and it costs a tenth of blake2b; keys need spread, not secrecy.
Partition p covers the arc of the 64-bit ring starting at p * 2**64 / Q, so a
partition is the top log2(Q) bits of the key's point.
"""

from __future__ import annotations

from xxhash import xxh3_64_intdigest

__all__ = ["key_hash", "partition_of"]


def key_hash(key: bytes) -> int:
    """The key's point on the 64-bit ring: XXH3-64 of its bytes, seed 0."""
    return xxh3_64_intdigest(key)


def partition_of(key: bytes, partitions: int) -> int:
    """The partition of `key` among `partitions` (a power of two)."""
    return xxh3_64_intdigest(key) >> (64 - (partitions.bit_length() - 1))
