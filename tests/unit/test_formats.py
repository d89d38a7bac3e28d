"""Every format that leaves a node's process carries its version, and a reader refuses
another version with an error naming both instead of misreading it: records and the
metadata on disk, hint entries, node-to-node RPC payloads and gossip messages."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import lmdb
import msgpack
import pytest
from _stores import put_meta  # tests/unit is on the path, as for conftest

from kvactors.core.clocks import HlcStamp, VectorClock
from kvactors.core.gossip import GOSSIP_FORMAT, Sync, SyncReply, message_from_wire
from kvactors.core.membership import Member, MemberStatus
from kvactors.core.placement import RingHolder
from kvactors.core.versions import EMPTY_STATE, coordinate_write
from kvactors.errors import (
    BadRequestError,
    ConfigError,
    KVActorsError,
    RequestTimeoutError,
    StorageError,
)
from kvactors.net.rpc import (
    MARKER,
    RPC_FORMAT,
    BadCall,
    Call,
    RpcClient,
    RpcFormatError,
    decode_call,
    decode_reply,
    encode_call,
    encode_error,
    encode_result,
)
from kvactors.net.transport import Transport
from kvactors.replication.hints import HINT_FORMAT, HintedHandoff
from kvactors.storage.lmdb_store import IDENTITY_FORMAT, LAYOUT_FORMAT, LmdbBackend
from kvactors.storage.memory import MemoryTable
from kvactors.storage.records import (
    RECORD_FORMAT,
    RecordFormatError,
    decode_state,
    decode_trusted_state,
    encode_state,
    read_blind_base,
    read_winner,
    read_wire_state,
)
from kvactors.storage.tables import NodeIdentity
from kvactors.testing import FakeTransport

OTHER = 2  # a format byte no release has written yet
assert OTHER not in (RECORD_FORMAT, RPC_FORMAT, GOSSIP_FORMAT, HINT_FORMAT, IDENTITY_FORMAT)

# -- records ------------------------------------------------------------------------------


def a_record() -> bytes:
    state = coordinate_write(EMPTY_STATE, "n1", VectorClock(), b"\xa1v", HlcStamp(5, 0, "n1"))
    return encode_state(state)


READERS: list[Callable[[bytes], object]] = [
    decode_state,
    decode_trusted_state,
    read_winner,
    read_blind_base,
    read_wire_state,
]


def test_every_record_written_carries_its_format_and_every_reader_reads_it() -> None:
    record = a_record()
    assert record[0] == RECORD_FORMAT
    state = decode_state(record)
    assert decode_trusted_state(record) == state
    assert read_winner(record) == (b"\xa1v", state.encoded_context())
    assert read_blind_base(record) == (True, state.context)
    assert read_wire_state(record)[1][0][0] == b"\xa1v"


@pytest.mark.parametrize("reader", READERS, ids=lambda reader: reader.__name__)
def test_every_record_reader_refuses_another_format_naming_both(
    reader: Callable[[bytes], object],
) -> None:
    # The same body behind another format byte: a reader that skipped the check would
    # read it as a perfectly good record.
    foreign = bytes((OTHER,)) + a_record()[1:]
    with pytest.raises(RecordFormatError) as refused:
        reader(foreign)
    assert isinstance(refused.value, StorageError)  # a request meeting it fails, cleanly
    assert isinstance(refused.value, ValueError)
    message = str(refused.value)
    assert f"record format {OTHER}" in message and f"record format {RECORD_FORMAT}" in message
    with pytest.raises(RecordFormatError, match="empty record"):
        reader(b"")


# -- the lmdb metadata ----------------------------------------------------------------------


def read_meta(path: Path, key: bytes) -> object:
    env = lmdb.open(str(path), max_dbs=8, readonly=True)
    try:
        meta = env.open_db(b"meta", create=False)
        with env.begin(db=meta) as txn:
            raw = txn.get(key)
    finally:
        env.close()
    return None if raw is None else msgpack.unpackb(raw)


IDENTITY = NodeIdentity("blue", "n1", 3, (("n1", "tcp://10.0.0.1:7001"),), (0, 4))


def test_a_new_data_directory_records_each_format_and_reads_its_identity_back(
    tmp_path: Path,
) -> None:
    backend = LmdbBackend(tmp_path)
    backend.write_identity(IDENTITY)
    backend.close()
    assert read_meta(tmp_path, b"record_format") == RECORD_FORMAT
    assert read_meta(tmp_path, b"layout_format") == LAYOUT_FORMAT
    identity = read_meta(tmp_path, b"identity")
    assert isinstance(identity, list) and identity[0] == IDENTITY_FORMAT
    backend = LmdbBackend(tmp_path)
    try:
        backend.check_compatible("blue")
        assert backend.read_identity() == IDENTITY
    finally:
        backend.close()


@pytest.mark.parametrize(
    ("key", "label", "supported"),
    [(b"record_format", "record format", RECORD_FORMAT), (b"layout_format", "storage layout", 1)],
)
def test_a_format_no_release_wrote_is_refused_naming_both(
    tmp_path: Path, key: bytes, label: str, supported: int
) -> None:
    LmdbBackend(tmp_path).close()
    put_meta(tmp_path, key, msgpack.packb(supported - 1))
    backend = LmdbBackend(tmp_path)
    try:
        with pytest.raises(StorageError) as refused:
            backend.check_compatible("blue")
    finally:
        backend.close()
    message = str(refused.value)
    assert f"{label} {supported - 1}" in message and f"reads {label} {supported}" in message
    # A newer one is the operator's to fix (run a newer kvactors): a ConfigError, as before.
    put_meta(tmp_path, key, msgpack.packb(supported + 1))
    backend = LmdbBackend(tmp_path)
    try:
        with pytest.raises(ConfigError, match=f"{label} {supported + 1}"):
            backend.check_compatible("blue")
    finally:
        backend.close()


def test_an_identity_of_a_format_no_release_wrote_is_refused_naming_both(
    tmp_path: Path,
) -> None:
    LmdbBackend(tmp_path).close()
    fields = [IDENTITY_FORMAT - 1, "blue", "n1", 3, [], []]
    put_meta(tmp_path, b"identity", msgpack.packb(fields))
    backend = LmdbBackend(tmp_path)
    try:
        with pytest.raises(StorageError) as refused:
            backend.read_identity()
    finally:
        backend.close()
    message = str(refused.value)
    assert f"format {IDENTITY_FORMAT - 1}" in message
    assert f"reads format {IDENTITY_FORMAT}" in message


# -- hint entries ---------------------------------------------------------------------------


def hinted_handoff(table: MemoryTable) -> HintedHandoff:
    # Loading the table touches neither the ring nor the channel.
    return HintedHandoff(
        table,
        cast("RingHolder", None),
        cast("Any", None),
        lambda: 1_000.0,
        max_age=3600.0,
        max_bytes=1 << 20,
    )


def test_hint_entries_carry_their_format_and_load_back() -> None:
    table = MemoryTable()
    hinted_handoff(table).add("n2", 7, b"k")
    [(_, entry)] = list(table.items())
    assert entry[0] == HINT_FORMAT
    assert hinted_handoff(table).pending() == {"n2": 1}


def test_hint_entries_from_before_the_format_byte_still_load() -> None:
    table = MemoryTable()
    table.apply([(b"n2\x00k", msgpack.packb([7, 999_000]))])
    assert hinted_handoff(table).pending() == {"n2": 1}


def test_a_hint_entry_of_another_format_is_refused_naming_both() -> None:
    table = MemoryTable()
    table.apply([(b"n2\x00k", bytes((OTHER,)) + msgpack.packb([7, 999_000]))])
    with pytest.raises(StorageError) as refused:
        hinted_handoff(table)
    message = str(refused.value)
    assert f"format {OTHER}" in message and f"hint format {HINT_FORMAT}" in message


# -- node-to-node RPC -----------------------------------------------------------------------


def test_a_call_round_trips_behind_its_format_byte() -> None:
    payload = encode_call(12, "store", 2.5, {"ops": [["read", b"k"]]})
    assert payload[0] == RPC_FORMAT
    assert decode_call([payload]) == Call(12, "store", 2.5, {"ops": [["read", b"k"]]})
    big = encode_call(13, "store", 1.0, {"ops": [["put", b"k", b"\xc4" * 100_000]]})
    assert decode_call([big]) == Call(13, "store", 1.0, {"ops": [["put", b"k", b"\xc4" * 100_000]]})


def test_replies_round_trip_behind_their_format_byte() -> None:
    result = encode_result(12, {"results": [None, b"v"]})
    assert result[0] == RPC_FORMAT
    assert decode_reply(result) == {"id": 12, "ok": True, "result": {"results": [None, b"v"]}}
    error = encode_error(13, RequestTimeoutError("too slow"))
    assert error[0] == RPC_FORMAT
    assert decode_reply(error) == {
        "id": 13,
        "ok": False,
        "error": {"code": "timeout", "message": "too slow"},
    }


def call_map(call_id: int = 5) -> bytes:
    packed: bytes = msgpack.packb({"id": call_id, "op": "ping", "timeout": 1.0})
    return packed


@pytest.mark.parametrize(
    ("payload", "found"),
    [
        (bytes((OTHER,)) + call_map(), f"in RPC format {OTHER}"),
        (call_map(), "without a format byte (from a node older than RPC format 1)"),
        (b"", "with no payload"),
    ],
    ids=["another format", "no format byte", "empty"],
)
def test_a_call_of_another_format_is_refused_unread_naming_both(payload: bytes, found: str) -> None:
    refused = decode_call([payload])
    assert isinstance(refused, BadCall)
    assert refused.call_id is None  # nothing after the byte was read, not even the id
    assert isinstance(refused.error, RpcFormatError)
    assert refused.error.code == "bad_request"
    assert str(refused.error) == (f"an RPC call {found}; this node speaks RPC format {RPC_FORMAT}")
    # The refusal itself is in this node's format.
    answer = decode_reply(encode_error(refused.call_id, refused.error))
    assert answer["ok"] is False and found in answer["error"]["message"]


def test_a_reply_of_another_format_is_refused_by_decode_reply() -> None:
    with pytest.raises(RpcFormatError, match=f"RPC format {OTHER}; this node speaks RPC format 1"):
        decode_reply(bytes((OTHER,)) + msgpack.packb({"id": 1, "ok": True, "result": None}))


Outcome = tuple[Any, KVActorsError | None]


def calling(client: RpcClient, endpoint: str, outcomes: list[Outcome]) -> None:
    client.call(endpoint, "ping", {}, lambda result, error: outcomes.append((result, error)))


def test_the_caller_fails_every_call_to_a_peer_that_answers_in_another_format() -> None:
    transport = FakeTransport()
    client = RpcClient(cast("Transport", transport), clock=lambda: 0.0, default_timeout=5.0)
    to_b: list[Outcome] = []
    to_c: list[Outcome] = []
    calling(client, "tcp://b:1", to_b)
    calling(client, "tcp://b:1", to_b)
    calling(client, "tcp://c:1", to_c)
    assert [frames[0] for _, frames in transport.to_peers] == [MARKER] * 3
    assert all(frames[1][0] == RPC_FORMAT for _, frames in transport.to_peers)

    foreign = bytes((OTHER,)) + msgpack.packb({"whatever": "format 2 says"})
    client.on_reply("tcp://b:1", [MARKER, foreign])
    assert len(to_b) == 2 and to_c == []  # both of b's calls, at once; none of c's
    for result, error in to_b:
        assert result is None and isinstance(error, RpcFormatError)
        assert str(error) == (
            f"tcp://b:1 answered in RPC format {OTHER}; this node speaks RPC format {RPC_FORMAT}"
        )

    # c speaks this format: its answer is read as ever.
    c_call_id = decode_call([transport.to_peers[2][1][1]])
    assert isinstance(c_call_id, Call)
    client.on_reply("tcp://c:1", [MARKER, encode_result(c_call_id.call_id, {"node": "c"})])
    assert to_c == [({"node": "c"}, None)]


def test_the_caller_fails_calls_to_a_peer_without_the_format_byte() -> None:
    client = RpcClient(cast("Transport", FakeTransport()), clock=lambda: 0.0, default_timeout=5.0)
    outcomes: list[Outcome] = []
    calling(client, "tcp://old:1", outcomes)
    # What a node from before RPC formats answers a call it cannot read.
    old_refusal = msgpack.packb({"id": None, "ok": False, "error": {"code": "bad_request"}})
    client.on_reply("tcp://old:1", [MARKER, old_refusal])
    [(_, error)] = outcomes
    assert isinstance(error, RpcFormatError)
    assert str(error) == (
        "tcp://old:1 answered without a format byte (from a node older than RPC format 1); "
        f"this node speaks RPC format {RPC_FORMAT}"
    )


# -- gossip -----------------------------------------------------------------------------------


def a_sync() -> Sync:
    return Sync("a", "tcp://a:1", (Member("b", "tcp://b:1", MemberStatus.ALIVE, 1, 2),))


def test_gossip_messages_carry_their_format_and_round_trip() -> None:
    for message in (a_sync(), SyncReply("b", "tcp://b:1", a_sync().members)):
        wire = message.to_wire()
        assert wire["format"] == GOSSIP_FORMAT
        assert message_from_wire(wire) == message
        assert type(message).from_wire(wire) == message


@pytest.mark.parametrize(
    ("found", "described"),
    [
        (OTHER, f"in gossip format {OTHER}"),
        (None, "without a format"),
        ("1", "in gossip format '1'"),
    ],
)
def test_a_gossip_message_of_another_format_is_refused_naming_both(
    found: object, described: str
) -> None:
    wire: dict[str, Any] = dict(a_sync().to_wire())
    if found is None:
        del wire["format"]
    else:
        wire["format"] = found
    expected = f"a gossip message {described}; this node speaks gossip format {GOSSIP_FORMAT}"
    for read in (message_from_wire, Sync.from_wire):
        with pytest.raises(BadRequestError) as refused:
            read(wire)
        assert str(refused.value) == expected
    # Checked before anything else: another format may not even have a type.
    with pytest.raises(BadRequestError, match=f"in gossip format {OTHER};"):
        message_from_wire({"format": OTHER})
