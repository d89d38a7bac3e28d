"""benchmarks/_builds.py: what `--baseline-ref` relies on to run an older build beside
the current one (throughput.py, replicated.py)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import msgpack
import pytest
import zmq

from kvactors.launcher import free_port_block

ROOT = Path(__file__).resolve().parents[1]


def load_builds() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_builds", ROOT / "benchmarks" / "_builds.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


builds = load_builds()


def fake_tree(root: Path, main: str) -> Path:
    """A source tree whose `kvactors` package is only a `__main__` running `main`."""
    package = root / "kvactors"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(textwrap.dedent(main))
    return root


def is_git_checkout() -> bool:
    try:
        builds.git("rev-parse", "HEAD")
    except (OSError, subprocess.CalledProcessError):
        return False
    return True


def test_runs_alternate_which_build_goes_first() -> None:
    assert [builds.in_turn(run, "old", "new") for run in range(4)] == [
        ("old", "new"),
        ("new", "old"),
        ("old", "new"),
        ("new", "old"),
    ]


def test_the_figure_is_the_median_of_each_runs_ratio() -> None:
    # Ratios 2.0, 0.5, 3.0: their median is 2.0, while the ratio of the medians is 1.5.
    middle, each = builds.paired([10.0, 2.0, 6.0], [5.0, 4.0, 2.0])
    assert each == [2.0, 0.5, 3.0]
    assert middle == 2.0


def test_a_builds_processes_import_its_own_tree(tmp_path: Path) -> None:
    tree = fake_tree(tmp_path / "old", "")
    loaded = builds.Build("old", tree).check_imports()
    assert loaded == (tree / "kvactors" / "__init__.py").resolve()


def test_a_tree_without_the_package_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its processes would import another kvactors (here one on PYTHONPATH, standing for
    # the installed one): measuring that as the old build would compare the current code
    # with itself.
    monkeypatch.setenv("PYTHONPATH", str(fake_tree(tmp_path / "installed", "")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(RuntimeError, match="would import"):
        builds.Build("empty", tmp_path / "empty").check_imports()


@pytest.mark.skipif(not is_git_checkout(), reason="needs the git history")
def test_a_commit_build_holds_that_commits_tree_and_is_removed_after() -> None:
    committed = builds.git("show", "HEAD:benchmarks/throughput.py")
    with builds.commit_build("HEAD") as build:
        root = build.root
        assert root != ROOT
        assert (root / "benchmarks" / "throughput.py").read_text().strip() == committed
    assert not root.exists()


# The handler is in place before the "running" line: the benchmark may send SIGTERM as
# soon as it reads that line.
FAKE_CLUSTER = """
    import signal, sys, time
    stopped = []
    signal.signal(signal.SIGTERM, lambda *_: stopped.append(True))
    port = sys.argv[sys.argv.index("--base-port") + 1]
    print(f"node-1  tcp://127.0.0.1:{port}  (pid 1)", flush=True)
    print("1 nodes running; Ctrl-C stops them all", flush=True)
    deadline = time.monotonic() + 30
    while not stopped and time.monotonic() < deadline:
        time.sleep(0.01)
    open("stopped", "w").write("yes" if stopped else "timed out")
"""


def test_a_cluster_runs_from_its_builds_tree_and_is_stopped(tmp_path: Path) -> None:
    tree = fake_tree(tmp_path, FAKE_CLUSTER)
    with builds.cluster_of(builds.Build("fake", tree), 1, 12345) as endpoints:
        assert endpoints == ["tcp://127.0.0.1:12345"]
    assert (tree / "stopped").read_text() == "yes"


def test_a_cluster_that_fails_to_start_says_why(tmp_path: Path) -> None:
    tree = fake_tree(tmp_path, "import sys; sys.exit('no free port, say')")
    with (
        pytest.raises(RuntimeError, match="no free port, say"),
        builds.cluster_of(builds.Build("fake", tree), 1, 12345),
    ):
        pass


def answers_ping(endpoint: str, timeout_ms: int) -> bool:
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send(msgpack.packb({"op": "ping", "id": 1}))
        return bool(sock.poll(timeout_ms))
    finally:
        sock.close()


def test_the_real_cluster_command_is_what_cluster_of_reads() -> None:
    # `kvactors cluster` of this checkout: its output is what the benchmark parses.
    with builds.cluster_of(builds.current_build(), 1, free_port_block(1)) as endpoints:
        assert len(endpoints) == 1
        assert answers_ping(endpoints[0], 5000)
    assert not answers_ping(endpoints[0], 300)


def test_new_ref_needs_a_baseline() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--new-ref", "HEAD"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "--new-ref goes with --baseline-ref" in result.stderr
