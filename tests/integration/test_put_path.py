"""The path of one put through the node that coordinates it, as docs/architecture.md
tells it: the kvactors files whose code runs for it on the node's transport thread.

A profiler hook (`threading.setprofile`, set before the node starts its threads) records
each kvactors file entered on the transport thread while one put is served, after a
warm-up put. What the steps only use (the pure core's hashing and versions, the storage
engine under the replica, the actor base classes) is not counted as a step.

An idle StoreServer applies the put with no message (`run_now`), and one that crashes
on it fails the put and is restarted by its supervisor.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
import zmq

import kvactors
from kvactors import ActorSystem
from kvactors.core.hashing import partition_of
from kvactors.core.ops import StoreOp
from kvactors.errors import InternalError
from kvactors.net.protocol import encode_request
from kvactors.net.replies import decode_reply, reply_error
from kvactors.storage.replica import Replica
from kvactors.testing import wait_until

PACKAGE = Path(kvactors.__file__).parent

# The steps of a put on a single node, in the order docs/architecture.md names them.
STEPS = [
    "net/transport.py",  # the frame arrives on the client ROUTER
    "node/frontend.py",  # envelope, decode, admission, the key's write; later the reply
    "net/protocol.py",  # decoding and validation
    "node/inflight.py",  # the request waits for its key
    "node/local_batches.py",  # the key's op, queued for its partition, flushed
    "runtime/dispatch.py",  # the StoreBatch handed to the StoreServer on this thread
    "storage/store_server.py",  # the partition's actor
    "storage/replica.py",  # the write's new version, stored
    "net/replies.py",  # the reply, encoded
]
# Not steps: what the steps use. The pure core, the storage engine under the replica,
# the actor base classes and the partition directory.
HELPERS = {
    "storage/records.py",
    "storage/memory.py",
    "storage/store_supervisor.py",
    "runtime/supervision.py",
}


class _Recorder:
    """Records the kvactors files entered on the transport thread from when it is armed
    until the end of the flush in which a reply was sent (deterministic: it does not
    depend on when the client's thread sees the reply)."""

    def __init__(self) -> None:
        self.armed = False
        self.replied = False
        self.done = threading.Event()
        self.files: set[str] = set()
        self.functions: set[str] = set()

    def __call__(self, frame: FrameType, event: str, _arg: Any) -> None:
        if not self.armed or not threading.current_thread().name.endswith("-transport"):
            return
        name = frame.f_code.co_name
        if event == "return":
            if name == "flush" and self.replied and _is_flush(frame):
                self.armed = False
                self.done.set()
            return
        if event != "call" or _in_tick(frame):
            return
        if name == "send_to_client":
            self.replied = True
        filename = frame.f_code.co_filename
        if filename.startswith(str(PACKAGE)):
            self.files.add(Path(filename).relative_to(PACKAGE).as_posix())
            self.functions.add(name)


def _is_flush(frame: FrameType) -> bool:
    """The transport's flush: the local batches'."""
    return frame.f_code.co_filename.endswith("node/local_batches.py")


def _in_tick(frame: FrameType | None) -> bool:
    """Whether `frame` runs inside the transport's periodic tick (timers, background
    tasks), which may fire during the put but is not part of it."""
    while frame is not None:
        if frame.f_code.co_name == "on_tick":
            return True
        frame = frame.f_back
    return False


@pytest.fixture
def recorder() -> Iterator[_Recorder]:
    recorder = _Recorder()
    threading.setprofile(recorder)
    try:
        yield recorder
    finally:
        threading.setprofile(None)  # type: ignore[arg-type]
        sys.setprofile(None)


def put_once(system: ActorSystem, recorder: _Recorder | None = None) -> dict[str, Any]:
    """A warm-up put, then one put (recorded, if a recorder is given); the second reply."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    with context.socket(zmq.DEALER) as sock:
        sock.setsockopt(zmq.LINGER, 0)
        assert system.endpoint is not None
        sock.connect(system.endpoint)

        def put(key: str) -> dict[str, Any]:
            sock.send(encode_request("put", key=key, value=b"v" * 100, request_id=1))
            assert sock.poll(5000), "no reply"
            return decode_reply(sock.recv())

        assert put("warm-up")["ok"]
        if recorder is not None:
            recorder.armed = True
        reply = put("the-put")
        if recorder is not None:
            assert recorder.done.wait(5.0), "the put's flush did not end"
        return reply


def test_a_put_passes_through_the_documented_files(recorder: _Recorder) -> None:
    with ActorSystem(name="path", bind="tcp://127.0.0.1:0", partitions=64) as system:
        assert put_once(system, recorder)["ok"]
    steps = {name for name in recorder.files if not name.startswith("core/")} - HELPERS
    assert steps == set(STEPS), sorted(steps ^ set(STEPS))


def test_an_idle_store_server_applies_the_put_without_a_message(recorder: _Recorder) -> None:
    with ActorSystem(name="direct", bind="tcp://127.0.0.1:0", partitions=64) as system:
        assert put_once(system, recorder)["ok"]
    assert {"run_now", "apply_batch"} <= recorder.functions
    assert not {"deliver", "_handle_envelope", "batch_done"} & recorder.functions


def test_a_store_server_crashing_on_a_put_fails_it_and_is_restarted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    crashed_on: list[str] = []
    apply = Replica.apply

    def crashing_apply(replica: Replica, ops: Sequence[StoreOp]) -> Any:
        if not crashed_on and any(op.key == b"the-put" for op in ops):
            crashed_on.append(threading.current_thread().name)
            raise RuntimeError("the replica failed")
        return apply(replica, ops)

    monkeypatch.setattr(Replica, "apply", crashing_apply)
    with ActorSystem(name="crash", bind="tcp://127.0.0.1:0", partitions=64) as system:
        partition = partition_of(b"the-put", system.config.partitions)
        before = system.store_server(partition)
        reply = put_once(system)
        assert crashed_on == ["crash-transport"]  # applied on the transport thread
        assert isinstance(reply_error(reply), InternalError)
        wait_until(lambda: system.store_server(partition) not in (None, before))
        assert system.store_supervisor().restart_count().get() == 1
        assert system.client.get("the-put") is None  # nothing of the batch was stored
        system.client.put("the-put", "again")
        assert system.client.get("the-put") == "again"
