"""Calls between nodes fit the frame a peer's ROUTER accepts (`peer_frame_bytes`): a
merge of a key whose N replicas each reached `max_state_bytes` concurrently goes alone
in one call that fits, and `PeerCalls`' cutting (`call_bounds` at half a client frame)
makes calls that fit too. Otherwise libzmq would drop the connection unread, and the
key would silently stop replicating."""

from __future__ import annotations

import time

from kvactors.config import NodeConfig
from kvactors.core.clocks import HlcStamp, VectorClock
from kvactors.core.ops import MergeKey, to_wire
from kvactors.core.versions import KeyState, blind_write, merge_states
from kvactors.net import rpc
from kvactors.net.peer_sockets import SocketOptions
from kvactors.node.peer_calls import PeerEntry, call_bounds
from kvactors.replication.channel import IGNORE_ANSWERS
from kvactors.storage.records import encode_state

CONFIG = NodeConfig()
OPTIONS = SocketOptions.from_config(CONFIG)
CALL_BYTES = OPTIONS.max_message_bytes // 2  # as the node's RequestService cuts calls
NOW_MS = int(time.time() * 1000)


def state_of(node: str, value_bytes: int, wall_ms: int = NOW_MS) -> KeyState:
    return blind_write(VectorClock(), node, b"v" * value_bytes, HlcStamp(wall_ms, 0, node))


def replica_state_at_the_bound(replica: int) -> KeyState:
    """A replica's state of a key at `max_state_bytes`: a large sibling, and a newer
    small one (the winner, which a record also keeps apart for fast reads)."""
    small = state_of(f"small-{replica}", 10, NOW_MS + 1)
    size = CONFIG.max_state_bytes
    while True:
        state = merge_states(state_of(f"large-{replica}", size), small)
        over = len(encode_state(state)) - CONFIG.max_state_bytes
        if over <= 0:
            return state
        size -= over


def call_frame(ops: list[list[object]]) -> bytes:
    return rpc.encode_call(2**31, "store", 5.0, {"ops": ops})


def test_a_merge_of_n_states_at_max_state_bytes_fits_one_peer_frame() -> None:
    # Each replica's state at the bound, all written concurrently: the merged state
    # holds every one of them.
    states = [replica_state_at_the_bound(replica) for replica in range(CONFIG.replicas)]
    merged = states[0]
    for state in states[1:]:
        merged = merge_states(merged, state)
    assert len(merged.versions) == 2 * CONFIG.replicas
    key = b"k" * CONFIG.max_key_bytes
    frame = call_frame([to_wire(MergeKey(key, merged))])
    assert len(frame) > CONFIG.replicas * (CONFIG.max_state_bytes - 1000)  # it is that large
    assert len(frame) > OPTIONS.max_message_bytes  # far past a client frame
    assert len(frame) <= OPTIONS.peer_frame_bytes


def test_calls_cut_at_half_a_client_frame_fit_a_peer_frame() -> None:
    ops = [
        to_wire(MergeKey(b"key-%d" % index, state_of("node-1", size)))
        for index, size in enumerate([900_000, 1_000_000, 50_000, 300_000] * 8)
    ]
    entries: list[PeerEntry] = [(IGNORE_ANSWERS, None, op) for op in ops]
    bounds = call_bounds(entries, CALL_BYTES)
    assert len(bounds) > 1
    for start, end in bounds:
        frame = call_frame([entry[2] for entry in entries[start:end]])
        assert len(frame) <= OPTIONS.peer_frame_bytes
