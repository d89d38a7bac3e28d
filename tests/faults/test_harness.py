"""The harness's own promises: it fails (never skips) without root or iproute2, and it
removes what crashed runs left behind while leaving live runs alone."""

from __future__ import annotations

import fcntl
import secrets
import subprocess

import harness
import pytest


def test_without_root_the_suite_fails_saying_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(harness.os, "geteuid", lambda: 1000)
    with pytest.raises(pytest.fail.Exception, match="needs root"):
        harness.require_network_privileges()


def test_without_iproute2_the_suite_fails_naming_the_package(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(harness.shutil, "which", lambda tool: None)
    with pytest.raises(pytest.fail.Exception, match="iproute2"):
        harness.require_network_privileges()


@pytest.mark.parametrize(("probability", "threshold"), [(0.0, 0), (0.25, 2**30), (1.0, 2**32 - 1)])
def test_a_random_filter_matches_below_its_threshold(probability: float, threshold: int) -> None:
    program = harness._bpf_with_probability(probability).split(",")
    assert program[0] == "4"  # four instructions
    assert program[2] == f"53 0 1 {threshold}"  # jge threshold: no match, else match


def test_leftovers_of_dead_runs_are_removed_and_live_runs_kept() -> None:
    harness.require_network_privileges()
    dead, live = secrets.token_hex(3), secrets.token_hex(3)
    namespaces = [f"kva-{dead}-n1", f"kva-{live}-n1"]
    for name in namespaces:
        subprocess.run(["ip", "netns", "add", name], check=True)
    lock = harness._lock_path(live).open("w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        removed = harness.remove_leftovers()
        remaining = harness._our_namespaces()
        assert f"kva-{dead}-n1" in removed
        assert f"kva-{dead}-n1" not in remaining
        assert f"kva-{live}-n1" in remaining
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()
        harness._lock_path(live).unlink(missing_ok=True)
        for name in namespaces:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
