"""Every script in examples/ runs to completion and says what it did."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

# What each example must print; an example missing here fails the test below.
EXPECTED_OUTPUT = {
    "embedded.py": [
        "put user:1 -> get user:1 = {'name': 'Ada', 'langs': ['en', 'fr']}",
        "wrote and read back 10000 keys",
        "the StoreSupervisor restarted them 5 times",
        "10000 of 10000 keys are still there, each with its value: True",
        "bad input gets a clear error (bad_request)",
        "stopped cleanly",
    ],
}


def test_every_example_has_expectations() -> None:
    scripts = {path.name for path in EXAMPLES.glob("*.py")}
    assert scripts, "no examples found"
    assert scripts == set(EXPECTED_OUTPUT)


@pytest.mark.parametrize("name", sorted(EXPECTED_OUTPUT))
def test_example_runs(name: str) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    for line in EXPECTED_OUTPUT[name]:
        assert line in result.stdout, f"{name} did not print {line!r}:\n{result.stdout}"
