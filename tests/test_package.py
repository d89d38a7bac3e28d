"""The package as users meet it: public API, typing marker, command, purity rules."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import kvactors

PACKAGE = Path(kvactors.__file__).parent

# The pure core (kvactors/core) does no I/O and imports no actor or network library.
PURE_MODULES = sorted(path.name for path in (PACKAGE / "core").glob("*.py"))
# No clock, no global random, no I/O: `now` and an `rng` come in as arguments. (A module
# may name `random.Random` in a type hint, under `if TYPE_CHECKING:`.)
FORBIDDEN_IN_PURE = {
    "pykka", "zmq", "msgpack", "time", "random", "os", "socket", "threading", "asyncio",
}  # fmt: skip


def test_all_names_exist_and_are_sorted() -> None:
    for name in kvactors.__all__:
        assert hasattr(kvactors, name), name
    assert list(kvactors.__all__) == sorted(kvactors.__all__)


def test_everything_public_in_the_package_namespace_is_in_all() -> None:
    public = {n for n in vars(kvactors) if not n.startswith("_")}
    modules = {n for n in public if type(getattr(kvactors, n)).__name__ == "module"}
    assert public - modules - {"annotations"} == set(kvactors.__all__) - {"__version__"}


def test_package_is_marked_typed() -> None:
    assert (PACKAGE / "py.typed").is_file()


def _imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    typing_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING")
        for statement in node.body
        for inner in ast.walk(statement)
    }
    roots: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_pure_modules_import_no_io_or_actor_library() -> None:
    present = [m for m in PURE_MODULES if (PACKAGE / "core" / m).exists()]
    assert "ring.py" in present and "versions.py" in present, present
    for module in present:
        bad = _imported_roots(PACKAGE / "core" / module) & FORBIDDEN_IN_PURE
        assert not bad, f"{module} imports {bad}"


def test_pure_module_check_would_catch_an_import(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import json\nfrom zmq import Context\nimport time as t\n"
        "if TYPE_CHECKING:\n    import random\n"
    )
    assert _imported_roots(sample) & FORBIDDEN_IN_PURE == {"zmq", "time"}


def test_command_runs_as_module_and_prints_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kvactors", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    assert "kvactors" in result.stdout and "selftest" in result.stdout


def test_selftest_command_stores_and_reads_back() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kvactors", "selftest", "--keys", "300"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "read back 300 keys" in result.stdout and "0 wrong" in result.stdout
