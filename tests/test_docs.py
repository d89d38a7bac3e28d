"""The README and docs: their Python examples run as written, and what they say about
the code (file paths, module names, the path of a put) matches the code."""

from __future__ import annotations

import ast
import importlib
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


# -- what the docs say about the code ----------------------------------------------------

PY_PATH = re.compile(r"(?<![\w./-])((?:\.\./)?[\w./-]*[\w-]\.py)\b")
DOTTED = re.compile(r"(?<![\w./-])kvactors(?:\.[A-Za-z_]\w*)+")
LAYER_FOLDERS = sorted(p.name for p in (ROOT / "kvactors").iterdir() if p.is_dir())
SOURCE_FOLDERS = ("kvactors", "benchmarks", "examples", "tests")


def _documents() -> list[tuple[str, str]]:
    return [(name, (ROOT / name).read_text()) for name in DOCUMENTS]


def _resolves(name: str, path: str) -> bool:
    """Whether a `.py` path named in document `name` is a file: from the repository's
    root, from the document's folder, or inside kvactors/ (paths such as net/rpc.py);
    a bare file name (rpc.py) must be the name of some file of the repository."""
    if "/" not in path:
        return any(any((ROOT / top).glob(f"**/{path}")) for top in SOURCE_FOLDERS)
    bases = [ROOT, (ROOT / name).parent]
    if path.split("/", 1)[0] in LAYER_FOLDERS:
        bases.append(ROOT / "kvactors")
    return any((base / path).is_file() for base in bases)


def test_every_python_file_the_docs_name_exists() -> None:
    missing = [
        f"{name}: {path}"
        for name, text in _documents()
        for path in sorted(set(PY_PATH.findall(text)))
        if not _resolves(name, path)
    ]
    assert missing == []


def _module_and_rest(dotted: str) -> tuple[str, list[str]]:
    """The longest prefix of `dotted` that is a module of kvactors, and the names after it."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        relative = Path(*parts[:end])
        if (ROOT / relative).with_suffix(".py").is_file() or (ROOT / relative).is_dir():
            return ".".join(parts[:end]), parts[end:]
    return "", parts


def test_every_kvactors_name_the_docs_give_exists() -> None:
    """`kvactors.net.rpc`, `kvactors.testing.FakeClock`: a module, then attributes."""
    missing = []
    for name, text in _documents():
        for dotted in sorted(set(DOTTED.findall(text))):
            module_name, rest = _module_and_rest(dotted)
            if not module_name:
                missing.append(f"{name}: {dotted}")
                continue
            found: object = importlib.import_module(module_name)
            for attribute in rest:
                if not hasattr(found, attribute):
                    missing.append(f"{name}: {dotted}")
                    break
                found = getattr(found, attribute)
    assert missing == []


def test_the_architecture_names_the_files_a_put_passes_through() -> None:
    """The numbered steps of "The path of one put" are the files the put-path test sees."""
    source = (ROOT / "tests/integration/test_put_path.py").read_text()
    steps = next(
        ast.literal_eval(node.value)
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "STEPS" for t in node.targets)
    )
    text = (ROOT / "docs/architecture.md").read_text()
    section = text.split("## The path of one put", 1)[1].split("\n#", 1)[0]
    named = re.findall(r"^\d+\. `kvactors/([\w/]+\.py)`", section, re.MULTILINE)
    assert named == steps


def test_no_doc_cites_a_design_document() -> None:
    assert [name for name, text in _documents() if "DESIGN" in text] == []


MACHINE_SPECIFIC = re.compile(r"\d\s?(?:µs|μs|us)\b|microsecond|\d-core|\bGHz\b", re.IGNORECASE)


def test_only_the_benchmarks_give_microsecond_timings_or_machine_details() -> None:
    found = [
        f"{name}: {match.group(0)!r}"
        for name, text in _documents()
        if name != "docs/benchmarks.md"
        for match in MACHINE_SPECIFIC.finditer(text)
    ]
    assert found == []
