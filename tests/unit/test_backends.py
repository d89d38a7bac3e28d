"""Storage backends: the memory backend keeps each partition's table for its whole life."""

from __future__ import annotations

import pytest

from kvactors.errors import ConfigError
from kvactors.storage.backends import MemoryBackend, open_backend


def test_open_table_returns_the_same_table_each_time() -> None:
    backend = MemoryBackend()
    table = backend.open_table(3)
    table.apply([(b"k", b"v")])
    assert backend.open_table(3) is table
    assert backend.open_table(3).get(b"k") == b"v"
    assert backend.open_table(4).get(b"k") is None


def test_apply_is_ordered_and_none_deletes() -> None:
    table = MemoryBackend().open_table(0)
    table.apply([(b"a", b"1"), (b"b", b"2"), (b"a", None), (b"c", b"3"), (b"c", b"4")])
    assert sorted(table.items()) == [(b"b", b"2"), (b"c", b"4")]
    assert len(table) == 2


def test_drop_table_forgets_its_data() -> None:
    backend = MemoryBackend()
    backend.open_table(1).apply([(b"k", b"v")])
    backend.drop_table(1)
    assert backend.open_table(1).get(b"k") is None


def test_open_backend_names() -> None:
    assert isinstance(open_backend("memory"), MemoryBackend)
    with pytest.raises(ConfigError):
        open_backend("floppy")
