"""Shared fixtures: every test leaves no actor running behind it."""

from __future__ import annotations

from collections.abc import Iterator

import pykka
import pytest


@pytest.fixture(autouse=True)
def _no_leaked_actors() -> Iterator[None]:
    yield
    leaked = pykka.ActorRegistry.get_all()
    pykka.ActorRegistry.stop_all(block=True, timeout=10)
    assert not leaked, f"test left actors running: {leaked}"
