"""Stable key hashing: a key's 64-bit point and its partition.

Pure and stable across processes, machines and Python versions (blake2b, never
Python's `hash()`), because every node must put a key in the same partition.
Partition p covers the arc of the 64-bit ring starting at p * 2**64 / Q, so a
partition is the top log2(Q) bits of the key's point.
"""

from __future__ import annotations

import hashlib

__all__ = ["key_hash", "partition_of"]


def key_hash(key: bytes) -> int:
    """The key's point on the 64-bit ring."""
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big")


def partition_of(key: bytes, partitions: int) -> int:
    """The partition of `key` among `partitions` (a power of two)."""
    return key_hash(key) >> (64 - (partitions.bit_length() - 1))
