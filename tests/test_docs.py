"""The Python examples in the README and docs run as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ["README.md", *sorted(p.relative_to(ROOT).as_posix() for p in ROOT.glob("docs/*.md"))]
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def python_blocks() -> list[tuple[str, int, str]]:
    blocks = []
    for name in DOCUMENTS:
        for number, match in enumerate(BLOCK.finditer((ROOT / name).read_text()), 1):
            blocks.append((name, number, match.group(1)))
    return blocks


def test_the_readme_has_a_python_example() -> None:
    assert any(name == "README.md" for name, _, _ in python_blocks())


@pytest.mark.parametrize(
    ("name", "number", "code"),
    python_blocks(),
    ids=lambda v: str(v)[:30] if isinstance(v, str) else str(v),
)
def test_python_block_runs(name: str, number: int, code: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 0, f"{name} block {number} failed:\n{result.stderr}"
    for expected in re.findall(r"#\s+(\[.*?\]|\{.*?\}|True|\d+)\s*$", code, re.MULTILINE):
        assert expected in result.stdout, f"{name} block {number}: {expected!r} not printed"
