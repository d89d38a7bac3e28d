"""Builds of kvactors measured side by side: this checkout and an older commit.

`--baseline-ref REF` (throughput.py, replicated.py) extracts REF's tree with
`git archive` into a temporary directory, removed afterwards. Every kvactors process of
a build runs with the build's tree as its working directory and first on PYTHONPATH, so
`python -m kvactors` imports that tree's package, not the installed (editable) one;
`Build.check_imports` proves it before anything is measured. The new build is this
checkout as it is on disk, or with `--new-ref REF` another commit extracted the same way
(a fixed tree while the checkout is being edited); it runs the same way as the old one,
so both go through the same start-up path.

Runs alternate which build goes first (`in_turn`), and the figure is the median of each
run's ratio new/old (`paired`): a slow moment of the shared machine then hits both.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
# `kvactors cluster` prints one line per node, then this, once every node sees the others.
_CLUSTER_READY = "nodes running"

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Build:
    """A kvactors source tree whose processes this benchmark starts."""

    label: str
    root: Path

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(self.root), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
        return env

    def popen(self, kvactors_args: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """`python -m kvactors ARGS` from this build. Processes it starts in turn (a
        LocalCluster's nodes) inherit the working directory and PYTHONPATH."""
        command = [sys.executable, "-m", "kvactors", *kvactors_args]
        return subprocess.Popen(command, cwd=self.root, env=self.env(), **kwargs)

    def check_imports(self) -> Path:
        """The file `import kvactors` loads in this build's processes; raises unless it
        lies in this build's tree. (Python puts the working directory before PYTHONPATH,
        and both before the editable install's finder.)"""
        result = subprocess.run(
            [sys.executable, "-c", "import kvactors; print(kvactors.__file__)"],
            cwd=self.root,
            env=self.env(),
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{self.label}: `import kvactors` fails:\n{result.stderr}")
        loaded = Path(result.stdout.strip()).resolve()
        if self.root.resolve() not in loaded.parents:
            raise RuntimeError(f"{self.label}: its processes would import {loaded}")
        return loaded


def git(*args: str) -> str:
    result = subprocess.run(
        ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


def current_build() -> Build:
    """This checkout, as it is on disk (uncommitted changes included, and said so)."""
    try:
        described = git("describe", "--always", "--dirty=+uncommitted")
    except (OSError, subprocess.CalledProcessError):
        described = "not a git checkout"
    return Build(f"this tree ({described})", ROOT)


@contextmanager
def commit_build(ref: str) -> Iterator[Build]:
    """REF's committed tree, extracted into a temporary directory for the duration."""
    commit = git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    short = git("rev-parse", "--short", commit)
    with tempfile.TemporaryDirectory(prefix=f"kvactors-{short}-") as directory:
        archive = subprocess.Popen(
            ["git", "-C", str(ROOT), "archive", "--format=tar", commit], stdout=subprocess.PIPE
        )
        assert archive.stdout is not None
        extracted = subprocess.run(["tar", "-x", "-C", directory], stdin=archive.stdout)
        archive.stdout.close()
        if archive.wait() != 0 or extracted.returncode != 0:
            raise RuntimeError(f"could not extract {ref} ({commit})")
        yield Build(f"{ref} ({short})" if short != ref else short, Path(directory))


def add_build_options(parser: argparse.ArgumentParser, only: str = "") -> None:
    parser.add_argument(
        "--baseline-ref",
        metavar="REF",
        help=f"{only}also measure a build of this git commit (the old one) beside the new "
        "one, in the same runs, and print the ratios new/old",
    )
    parser.add_argument(
        "--new-ref",
        metavar="REF",
        help="with --baseline-ref: the new build is this commit's tree, not this checkout "
        "as it is on disk",
    )


@contextmanager
def builds(args: argparse.Namespace) -> Iterator[tuple[Build | None, Build]]:
    """(old, new) as the options ask: old is None without --baseline-ref. Each build's
    processes are checked to import its own tree before this yields."""
    if args.new_ref and not args.baseline_ref:
        raise SystemExit("--new-ref goes with --baseline-ref")
    with ExitStack() as stack:
        old = stack.enter_context(commit_build(args.baseline_ref)) if args.baseline_ref else None
        new = stack.enter_context(commit_build(args.new_ref)) if args.new_ref else current_build()
        for build in (new,) if old is None else (old, new):
            loaded = build.check_imports()
            print(f"{build.label}: kvactors from {loaded.parent}", file=sys.stderr)
        yield old, new


def in_turn(run: int, old: T, new: T) -> tuple[T, T]:
    """Which build goes first in run `run` (from 0): old first in even runs."""
    return (old, new) if run % 2 == 0 else (new, old)


def ratios(numerators: Sequence[float], denominators: Sequence[float]) -> list[float]:
    return [n / d for n, d in zip(numerators, denominators, strict=True)]


def paired(new: Sequence[float], old: Sequence[float]) -> tuple[float, list[float]]:
    """The median of the runs' ratios new/old, and those ratios."""
    each = ratios(new, old)
    return statistics.median(each), each


def rate_row(label: str, rates: Sequence[float], width: int = 36) -> str:
    per_run = " ".join(f"{rate:,.0f}" for rate in rates)
    return f"{label:{width}}{statistics.median(rates):>12,.0f}   {per_run}"


def ratio_row(label: str, new: Sequence[float], old: Sequence[float], width: int = 36) -> str:
    middle, each = paired(new, old)
    return f"{label:{width}}{middle:>12.2f}   {' '.join(f'{r:.2f}' for r in each)}"


@contextmanager
def cluster_of(build: Build, nodes: int, base_port: int) -> Iterator[list[str]]:
    """`kvactors cluster` from `build`: its own LocalCluster starts `nodes` node processes
    on ports `base_port` upwards and reports them once they see each other; the endpoints
    are yielded. SIGTERM on exit makes it stop them all."""
    with tempfile.TemporaryFile(mode="w+") as log:
        process = build.popen(
            ["--log-level", "WARNING", "cluster", "--nodes", str(nodes), "--base-port",
             str(base_port)],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )  # fmt: skip
        assert process.stdout is not None
        try:
            endpoints = []
            for line in process.stdout:
                if _CLUSTER_READY in line:
                    break
                endpoints.append(line.split()[1])  # "node-1  tcp://127.0.0.1:P  (pid N)"
            else:
                log.seek(0)
                raise RuntimeError(
                    f"{build.label}: the cluster exited with {process.wait()}:\n{log.read()}"
                )
            yield endpoints
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            process.stdout.close()
