"""Every script in examples/ runs to completion and says what it did."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

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
    "req_client.py": [
        "every request is one msgpack frame",
        "<- received {'ok': True, 'id': 1}",
        "put user:1: stored",
        "get user:1: found {'name': 'Ada', 'langs': ['en', 'fr']}",
        "delete user:1: deleted (it was there)",
        "get user:1: not found",
        "refused it with a clear error (bad_request: key must be str or bytes, not int)",
        "All five requests were answered as expected.",
    ],
    "json_client.py": [
        "every request is one JSON frame",
        '<- received {"ok":true,"id":1}',
        "put user:1: stored",
        "get user:1: found {'name': 'Ada', 'langs': ['en', 'fr']}",
        '"value":{"$bytes":"AAEC/v8="}',
        "get blob:1: found the same bytes b'\\x00\\x01\\x02\\xfe\\xff'",
        "delete user:1: deleted (it was there)",
        "get user:1: not found",
        "refused it with a clear error (bad_request: key must be str or bytes, not int)",
        "All seven requests were answered as expected.",
    ],
    "local_cluster.py": [
        "3 nodes running; node-1 founded the cluster.",
        "every node sees 3 alive members",
        "put city:lagos through node-2, get through node-3: the same",
        "read back 6 of 6 keys through a different node",
        "node-3  tcp://127.0.0.1:",
        "stopped all 3 nodes cleanly",
    ],
    "cluster_demo.py": [
        "Every node lists all 3 as alive",
        "Wrote 3,000 keys in",
        ": 0 mismatches.",
        "node-1 marked node-3 dead",
        "node-2 marked node-3 dead",
        "node-3  tcp://127.0.0.1:",
        "3,000 of 3,000 keys read back intact, 0 lost; 1,000 of 1,000 new writes acknowledged",
        "node-1 stopped (exit code 0",
        "node-2 stopped (exit code 0",
        "Every node has stopped cleanly.",
    ],
    "secure_cluster.py": [
        "3 secure nodes running: every node sees 3 alive members.",
        "reader (role read) got greeting through node-2: 'hello, securely'",
        "reader's put was refused: ForbiddenError (forbidden)",
        "greeting is still 'hello, securely'",
        "node-1 refused its handshake",
        "every node lists only ['node-1', 'node-2', 'node-3']",
        "lists only ['rogue'] and holds 0 keys",
        "stopped all 3 nodes cleanly",
        "The cluster served its own keys by role and kept the rogue out.",
    ],
}

# Wire-protocol clients: each runs against its own real node process, whose endpoint is
# its first argument. They stand for clients in other languages, so they may import
# nothing of kvactors; these are the only modules they may import.
WIRE_CLIENTS = {
    "req_client.py": {"__future__", "sys", "typing", "msgpack", "zmq"},
    "json_client.py": {"__future__", "base64", "json", "sys", "typing", "zmq"},
}


class Node(Protocol):
    """What these tests use of the conftest's `NodeProcess`."""

    endpoint: str


StartNode = Callable[..., Node]


def test_every_example_has_expectations() -> None:
    scripts = {path.name for path in EXAMPLES.glob("*.py")}
    assert scripts, "no examples found"
    assert scripts == set(EXPECTED_OUTPUT)


@pytest.mark.parametrize("name", sorted(EXPECTED_OUTPUT))
def test_example_runs(name: str, start_node: StartNode) -> None:
    args = [start_node(f"example-{Path(name).stem}").endpoint] if name in WIRE_CLIENTS else []
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    for line in EXPECTED_OUTPUT[name]:
        assert line in result.stdout, f"{name} did not print {line!r}:\n{result.stdout}"


@pytest.mark.parametrize("name", sorted(WIRE_CLIENTS))
def test_wire_clients_import_only_what_they_may(name: str) -> None:
    tree = ast.parse((EXAMPLES / name).read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            imported.add(node.module.split(".")[0])
    assert imported, f"{name}: no imports found"
    assert imported <= WIRE_CLIENTS[name], f"{name} imports {sorted(imported - WIRE_CLIENTS[name])}"
