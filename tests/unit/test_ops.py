"""Tests for kvactors.core.ops: the wire form of the replica ops that travel (`to_wire`),
read back as hostile input (`from_wire`), and its size estimate (`wire_bytes`), plus the
`store` call that carries them (`net.rpc.store_ops`). What crosses the network goes
through msgpack here, as it does between nodes."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvactors.core.clocks import HlcStamp
from kvactors.core.ops import (
    Coordinate,
    Delete,
    Forget,
    Get,
    MergeKey,
    MergeMany,
    MergeRecord,
    Put,
    ReadKey,
    ReadWinner,
    RemoteOp,
    StoreOp,
    WriteKey,
    from_wire,
    to_wire,
    wire_bytes,
)
from kvactors.core.versions import EMPTY_STATE, KeyState, coordinate_write, merge_states
from kvactors.errors import BadRequestError, TooLargeError
from kvactors.net import rpc
from kvactors.storage.records import encode_state, read_wire_state

MAX_KEY = 64
MAX_VALUE = 1000


def check_value(value: bytes) -> bytes:
    """What a node checks values with: size, and one whole msgpack object."""
    return rpc.checked_value(value, MAX_VALUE)


def through_msgpack(raw: Any) -> Any:
    return msgpack.unpackb(msgpack.packb(raw), raw=False, strict_map_key=True)


def received(op: RemoteOp) -> RemoteOp:
    """`op` as the peer reads it."""
    return from_wire(through_msgpack(to_wire(op)), MAX_KEY, check_value)


def write(base: KeyState, node: str, value: bytes | None, wall_ms: int) -> KeyState:
    return coordinate_write(base, node, base.context, value, HlcStamp(wall_ms, 0, node))


A1 = write(EMPTY_STATE, "a", msgpack.packb("one"), 1)
B1 = write(EMPTY_STATE, "b", msgpack.packb([1, 2]), 2)
SIBLINGS = merge_states(A1, B1)
GONE = write(SIBLINGS, "a", None, 3)
STATES = (EMPTY_STATE, A1, B1, SIBLINGS, GONE)

keys = st.binary(max_size=MAX_KEY)
values = st.builds(
    msgpack.packb, st.one_of(st.integers(-(2**63), 2**64 - 1), st.text(max_size=20), st.none())
)
remote_ops = st.one_of(
    st.builds(ReadKey, keys),
    st.builds(MergeKey, keys, st.sampled_from(STATES)),
    st.builds(
        Coordinate,
        keys,
        st.none() | values,
        st.none() | st.binary(max_size=30),
        st.none() | st.integers(1, 5),
    ),
    st.builds(Get, keys),
    st.builds(Put, keys, values),
    st.builds(Delete, keys),
)


# -- round trips ----------------------------------------------------------------------------


@given(remote_ops)
def test_every_op_that_travels_is_read_back_as_itself(op: RemoteOp) -> None:
    assert received(op) == op


@pytest.mark.parametrize("state", STATES)
def test_a_record_sent_as_stored_is_read_back_as_a_merge_of_its_state(state: KeyState) -> None:
    record = MergeRecord(b"k", read_wire_state(encode_state(state)))
    assert to_wire(record) == to_wire(MergeKey(b"k", state))
    assert received(record) == MergeKey(b"k", state)


@pytest.mark.parametrize(
    ("op", "form"),
    [
        (ReadKey(b"k"), ["read", b"k"]),
        (Coordinate(b"k", b"\x03", b"ctx", 2), ["write", b"k", b"\x03", b"ctx", 2]),
        (Coordinate(b"k", None, None, None), ["write", b"k", None, None, None]),
        (Get(b"k"), ["get", b"k"]),
        (Put(b"k", b"\x03"), ["put", b"k", b"\x03"]),
        (Delete(b"k"), ["delete", b"k"]),
    ],
)
def test_the_wire_forms_are_those_the_protocol_documents(op: RemoteOp, form: list[Any]) -> None:
    assert to_wire(op) == form


@pytest.mark.parametrize(
    "op",
    [
        WriteKey(b"k", b"\x03", None),
        MergeMany([(b"k", A1)]),
        Forget(b"k", b"record"),
        ReadWinner(b"k"),
    ],
)
def test_an_op_only_this_nodes_store_takes_has_no_wire_form(op: StoreOp) -> None:
    with pytest.raises(TypeError, match="not an op that travels"):
        to_wire(op)


# -- refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (None, "not a replica op: NoneType; the ops are read, merge, write"),
        ("read", "not a replica op: str"),
        ([], r"not a replica op: \[\]"),
        (["frob", b"k"], r"not a replica op: \['frob', bytes\]"),
        (["READ", b"k"], r"not a replica op: \['READ', bytes\]"),
        ([b"read", b"k"], r"not a replica op: \[bytes, bytes\]"),
        (["read"], r"malformed read op \['read'\]: its form is \['read', key\]"),
        (["read", "k"], r"malformed read op \['read', str\]"),
        (["read", b"k", b"extra"], r"malformed read op \['read', bytes, bytes\]"),
        (["get", 5], r"malformed get op \['get', int\]"),
        (["delete", None], r"malformed delete op"),
        (["put", b"k"], r"malformed put op \['put', bytes\]: its form is \['put', key, value\]"),
        (["put", b"k", "text"], r"malformed put op \['put', bytes, str\]"),
        (["merge", b"k"], r"malformed merge op .*\['merge', key, state\]"),
        (["merge", b"k", ["not", "a", "state"]], "merge op: malformed key state"),
        (["merge", b"k", [[], [["v"]]]], "merge op: malformed key state"),
        (["write", b"k", b"\x03", None], r"malformed write op \['write', bytes, bytes, NoneType\]"),
        (["write", b"k", b"\x03", None, 0], "w \\(a positive integer\\) or nil"),
        (["write", b"k", b"\x03", None, -1], "malformed write op"),
        (["write", b"k", b"\x03", None, True], "malformed write op"),
        (["write", b"k", b"\x03", None, "3"], "malformed write op"),
        (["write", b"k", "v", None, None], "malformed write op"),
        (["write", b"k", None, "ctx", None], "malformed write op"),
        (["read", b"k", 1, 2, 3, 4], r"\['read', bytes, int, int, int, \.\.\.\]"),
    ],
)
def test_a_malformed_op_is_a_bad_request_naming_its_shape(raw: object, message: str) -> None:
    with pytest.raises(BadRequestError, match=message):
        from_wire(raw, MAX_KEY, check_value)


@pytest.mark.parametrize("verb", ["read", "merge", "write", "get", "put", "delete"])
def test_a_key_over_the_limit_is_too_large_whatever_the_op(verb: str) -> None:
    raw = to_wire(_example(verb, b"k" * (MAX_KEY + 1)))
    with pytest.raises(TooLargeError, match=f"the key is {MAX_KEY + 1} bytes; the limit is 64"):
        from_wire(raw, MAX_KEY, check_value)
    assert from_wire(to_wire(_example(verb, b"k" * MAX_KEY)), MAX_KEY, check_value)


def _example(verb: str, key: bytes) -> RemoteOp:
    return {
        "read": ReadKey(key),
        "merge": MergeKey(key, A1),
        "write": Coordinate(key, b"\x03", None, None),
        "get": Get(key),
        "put": Put(key, b"\x03"),
        "delete": Delete(key),
    }[verb]


@pytest.mark.parametrize(
    "op",
    [
        Put(b"k", b"\xc1"),  # not msgpack
        Put(b"k", b"\x03\x03"),  # two objects, not one
        Coordinate(b"k", b"\xc1", None, None),
        MergeKey(b"k", write(EMPTY_STATE, "a", b"\xc1", 1)),
    ],
)
def test_every_value_is_checked_in_every_op_that_carries_one(op: RemoteOp) -> None:
    with pytest.raises(BadRequestError, match="a stored value must be one msgpack object"):
        from_wire(to_wire(op), MAX_KEY, check_value)


@pytest.mark.parametrize(
    "op",
    [
        Put(b"k", msgpack.packb("v" * MAX_VALUE)),
        Coordinate(b"k", msgpack.packb("v" * MAX_VALUE), None, None),
        MergeKey(b"k", write(EMPTY_STATE, "a", msgpack.packb("v" * MAX_VALUE), 1)),
    ],
)
def test_a_value_over_the_limit_is_too_large(op: RemoteOp) -> None:
    with pytest.raises(TooLargeError, match=f"the limit is {MAX_VALUE}"):
        from_wire(to_wire(op), MAX_KEY, check_value)


wire_junk = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=8)
    | st.sampled_from(["read", "merge", "write", "get", "put", "delete"]),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=20,
)


@given(
    st.one_of(
        wire_junk,
        st.tuples(
            st.sampled_from(["read", "merge", "write", "get", "put", "delete"]),
            st.binary(max_size=MAX_KEY + 2),
            st.lists(wire_junk, max_size=4),
        ).map(lambda t: [t[0], t[1], *t[2]]),
    )
)
def test_any_input_is_an_op_or_a_bad_request(raw: object) -> None:
    try:
        op = from_wire(through_msgpack(raw), MAX_KEY, check_value)
    except BadRequestError:
        return
    assert received(op) == op  # what it read, it reads again the same


# -- sizes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "op",
    [
        Put(b"key", b"\x03" * 5000),
        Coordinate(b"key", b"\x03" * 5000, b"c" * 100, 2),
        MergeKey(b"key", write(EMPTY_STATE, "a", b"\x03" * 5000, 1)),
        MergeKey(b"key", merge_states(write(EMPTY_STATE, "a", b"\x03" * 5000, 1), B1)),
        ReadKey(b"key"),
        Get(b"key"),
        Delete(b"key"),
    ],
)
def test_the_size_estimate_counts_every_key_and_value_byte(op: RemoteOp) -> None:
    """A peer's ROUTER drops a call over its frame: the cuts into calls (`call_bounds`)
    must not underestimate what an op's values weigh."""
    form = to_wire(op)
    assert wire_bytes(form) >= len(msgpack.packb(form)) - 100


# -- the store call -------------------------------------------------------------------------


def store_call(ops: object) -> rpc.Call:
    return rpc.Call(1, rpc.STORE, 1.0, {"ops": ops})


def test_a_store_call_carries_replica_and_key_ops() -> None:
    ops: list[RemoteOp] = [ReadKey(b"a"), MergeKey(b"b", A1), Get(b"c"), Put(b"d", b"\x03")]
    ops.append(Delete(b"e"))
    decoded = rpc.store_ops(store_call([to_wire(op) for op in ops]), MAX_KEY, MAX_VALUE)
    assert decoded == ops


def test_a_store_call_refuses_a_write_which_a_coordinate_call_carries() -> None:
    raw = [to_wire(ReadKey(b"a")), to_wire(Coordinate(b"k", b"\x03", None, None))]
    with pytest.raises(BadRequestError, match=r"store op 1 is a write.*coordinate call"):
        rpc.store_ops(store_call(raw), MAX_KEY, MAX_VALUE)


@pytest.mark.parametrize("ops", [None, "ops", [], [["read", b"k"]] * (rpc.MAX_CALL_OPS + 1)])
def test_a_store_call_needs_a_bounded_list_of_ops(ops: object) -> None:
    with pytest.raises(BadRequestError, match="a store call needs a list of ops"):
        rpc.store_ops(store_call(ops), MAX_KEY, MAX_VALUE)
