"""Shared fixtures: every test leaves no actor running behind it."""

from __future__ import annotations

from collections.abc import Iterator

import pykka
import pytest
from hypothesis import HealthCheck, settings

# The machines that run the suite are shared and often busy: a per-example deadline would
# fail on a slow moment, not on a bug. Every test still runs under pytest-timeout.
settings.register_profile("kvactors", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("kvactors")


@pytest.fixture(autouse=True)
def _no_leaked_actors() -> Iterator[None]:
    yield
    leaked = pykka.ActorRegistry.get_all()
    pykka.ActorRegistry.stop_all(block=True, timeout=10)
    assert not leaked, f"test left actors running: {leaked}"
