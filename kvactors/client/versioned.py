"""Versioned reads and the read-modify-write loop both clients share.

A `get_versioned` returns a `Versioned`: the winning value, every live sibling, and the
opaque causal context. Writing with that context supersedes exactly what was read, so a
read-modify-write loses nothing to a concurrent writer: the two writes become siblings,
and the next read-modify-write merges them.

`read_modify_write` is that loop (`Client.update`, `LocalClient.update`): read, merge the
siblings with the caller's `merge`, apply `fn`, write with the context; if the write left
siblings (a concurrent write came in between), read again and write the merge, until the
key has one value or the attempts run out. `VersionedWrites` gives both clients `put` and
`update` on top of their own `get_versioned` and `put_with_outcome`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

from kvactors.errors import ConfigError

__all__ = ["Versioned", "VersionedWrites", "read_modify_write"]


class Versioned(NamedTuple):
    """A key as read with its version information."""

    found: bool
    """A live value exists (False: never written, or deleted)."""
    value: Any
    """The winning value: of the siblings, the one written last (by hybrid logical
    clock); None if not found."""
    siblings: list[Any]
    """Every live value, newest first: more than one when writes were concurrent."""
    context: bytes | None
    """Pass it to the next put or delete of this key to supersede what was read."""


class _VersionedStore(Protocol):
    def get_versioned(self, key: Any, *, r: int | None, timeout: float | None) -> Versioned: ...

    def put_with_outcome(
        self, key: Any, value: Any, *, context: bytes | None, w: int | None, timeout: float | None
    ) -> bool:
        """Write; True if the key has concurrent siblings afterwards."""


def last_writer(siblings: Sequence[Any]) -> Any:
    """The default merge: the newest sibling wins (siblings come newest first)."""
    return siblings[0]


def read_modify_write(
    store: _VersionedStore,
    key: Any,
    fn: Callable[[Any], Any],
    *,
    merge: Callable[[list[Any]], Any] | None,
    default: Any,
    r: int | None,
    w: int | None,
    attempts: int,
    timeout: float | None,
) -> Any:
    """The loop behind `update`; returns the value last written."""
    if attempts < 1:
        raise ConfigError("attempts must be at least 1")
    merge_siblings = merge or last_writer
    applied = False
    value: Any = None
    for _ in range(attempts):
        current = store.get_versioned(key, r=r, timeout=timeout)
        if not current.siblings:
            base = default
        elif len(current.siblings) == 1:
            base = current.siblings[0]
        else:
            base = merge_siblings(current.siblings)
        # fn runs once; later rounds only fold a concurrent writer's sibling into ours,
        # which already holds fn's change (the read after our write includes it).
        value = base if applied else fn(base)
        applied = True
        conflict = store.put_with_outcome(key, value, context=current.context, w=w, timeout=timeout)
        if not conflict:
            return value
    return value


class VersionedWrites:
    """`put` and `update` for a client that has `get_versioned` and `put_with_outcome`."""

    def get_versioned(self, key: Any, *, r: int | None, timeout: float | None) -> Versioned:
        raise NotImplementedError

    def put_with_outcome(
        self,
        key: Any,
        value: Any,
        *,
        context: bytes | None = None,
        w: int | None = None,
        timeout: float | None = None,
    ) -> bool:
        """`put`, returning True if the key has concurrent siblings afterwards."""
        raise NotImplementedError

    def put(
        self,
        key: Any,
        value: Any,
        *,
        context: bytes | None = None,
        w: int | None = None,
        timeout: float | None = None,
    ) -> None:
        """Store `value` under `key`; returns once W replicas hold it.

        With the `context` of an earlier read, the write supersedes exactly what that read
        saw; a concurrent write it did not see is kept beside it as a sibling. Without a
        context it supersedes whatever the coordinating replica holds.
        """
        self.put_with_outcome(key, value, context=context, w=w, timeout=timeout)

    def update(
        self,
        key: Any,
        fn: Callable[[Any], Any],
        *,
        merge: Callable[[list[Any]], Any] | None = None,
        default: Any = None,
        r: int | None = None,
        w: int | None = None,
        attempts: int = 10,
        timeout: float | None = None,
    ) -> Any:
        """Read-modify-write `key` without losing concurrent writers' changes.

        Reads the key with its context; `merge` folds concurrent siblings into one value
        (default: the newest wins); `fn` maps the current value (`default` when missing)
        to the new one, which is written with the context. If that write met a concurrent
        one, the siblings are read, merged and written again (up to `attempts` rounds).
        Returns the value written last.
        """
        return read_modify_write(
            self,
            key,
            fn,
            merge=merge,
            default=default,
            r=r,
            w=w,
            attempts=attempts,
            timeout=timeout,
        )
