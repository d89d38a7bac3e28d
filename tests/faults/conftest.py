"""The fault suite's marker (until pyproject.toml lists it, under --strict-markers)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "faults: the full fault-injection scenarios (at least 60 s of faults each)"
    )
