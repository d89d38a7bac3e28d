"""kvactors' own imports run downward through its layers, and no two folders import
each other.

The layers, bottom to top (docs/architecture.md draws them): the ground floor
(errors, config, codec), core, runtime, storage, net, replication, node, cluster,
client, and the top (system, launcher, cli, testing, the package itself). A module may
import its own layer and any layer below it. Every import counts: at module level,
inside functions and under `TYPE_CHECKING`. (tests/test_package.py holds the pure
core to doing no I/O.)
"""

from __future__ import annotations

import ast
from pathlib import Path

import kvactors

PACKAGE = Path(kvactors.__file__).parent

LAYERS = [
    ("errors", "config", "codec"),
    ("core",),
    ("runtime",),
    ("storage",),
    ("net",),
    ("replication",),
    ("node",),
    ("cluster",),
    ("client",),
    ("system", "launcher", "cli", "testing", "__init__", "__main__"),
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _unit(module: str) -> str:
    """The layer unit of a kvactors module: its folder, or its file at the top."""
    parts = module.split(".")
    assert parts[0] == "kvactors", module
    return "__init__" if len(parts) == 1 else parts[1]


def _module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, package: str = "kvactors") -> list[tuple[int, str]]:
    """(line, module) of every import in the file, wherever it stands; `package` is
    the file's own package, for relative imports."""
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            # `from kvactors import system` imports the module kvactors.system.
            if module in ("kvactors", *(f"kvactors.{n}" for n in RANK)):
                found.extend((node.lineno, f"{module}.{alias.name}") for alias in node.names)
    return found


def _package(path: Path) -> str:
    module = _module_name(path)
    return module if path.name == "__init__.py" else module.rsplit(".", 1)[0]


def _violations() -> list[str]:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        here = _unit(_module_name(path))
        assert here in RANK, f"{path} is in no layer: add it to LAYERS"
        for line, module in _imports(path, _package(path)):
            if not (module == "kvactors" or module.startswith("kvactors.")):
                continue
            there = _unit(module)
            if there not in RANK:
                continue  # `from kvactors import __version__` and the like
            if RANK[there] > RANK[here]:
                where = path.relative_to(PACKAGE.parent)
                problems.append(
                    f"{where}:{line} ({here}) imports {module} ({there}), a layer above"
                )
    return problems


def test_imports_run_only_downward() -> None:
    assert _violations() == []


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    """The checker itself: an import from inside a function is found and placed."""
    source = tmp_path / "sample.py"
    source.write_text("def f():\n    from kvactors.node import services\n")
    assert (2, "kvactors.node.services") in _imports(source)
    assert RANK[_unit("kvactors.node.services")] > RANK[_unit("kvactors.storage.records")]


MAX_MODULE_LINES = 800
MAX_CLASS_LINES = 400


def test_modules_and_classes_stay_short_enough_to_read() -> None:
    """No module over 800 lines, no class over 400: a class that grows past it is doing
    several jobs, to be split into collaborators."""
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text()
        where = path.relative_to(PACKAGE.parent)
        lines = source.count("\n")
        if lines > MAX_MODULE_LINES:
            too_long.append(f"{where}: {lines} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ClassDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_CLASS_LINES:
                    too_long.append(f"{where}: class {node.name}, {length} lines")
    assert too_long == []
