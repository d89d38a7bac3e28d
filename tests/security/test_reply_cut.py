"""A reply never outgrows a frame: a get_many of many large values is cut to what fits,
the keys left out are answered `too_large` ("the reply is full"), and the Python client
asks for them again until it has every key."""

from __future__ import annotations

from collections.abc import Iterator

import msgpack
import pytest
import zmq

from kvactors import ActorSystem, Client
from kvactors.config import NodeConfig
from kvactors.net.protocol import Codec, Op, Request, WireFormat
from kvactors.node.frontend import REPLY_FULL, reply_for

MAX_FRAME_BYTES = Codec.from_config(NodeConfig()).max_frame_bytes
VALUE = "v" * 900_000  # two fit a frame, three do not
KEYS = [f"big-{index}" for index in range(7)]


def _get_many(keys: int, fmt: WireFormat = WireFormat.MSGPACK) -> Request:
    return Request(
        Op.GET_MANY, fmt, 1, b"", b"", None, None, None, None, False,
        tuple(b"k%d" % n for n in range(keys)), (),
    )  # fmt: skip


def _found(value_bytes: int) -> tuple[bytes, bytes]:
    return b"x" * value_bytes, b"\x01\x00"  # (value, context): a key only this node holds


ITEM_BYTES = 64 + 3_000 + 2  # the cut's estimate of one item: overhead, value, context


def test_items_past_the_frame_are_answered_reply_full_and_the_first_always_fits() -> None:
    frame = 20_000  # a budget of 15,904 bytes: five items of 3,066 fit, not six
    assert 5 * ITEM_BYTES <= frame - 4096 < 6 * ITEM_BYTES
    results = [_found(3_000) for _ in range(8)]
    reply = reply_for(_get_many(8), results, frame)
    assert reply.results is not None
    assert [item.error is None for item in reply.results] == [True] * 5 + [False] * 3
    for item in reply.results[5:]:
        assert item.error is not None
        assert item.error.code == "too_large" and str(item.error) == REPLY_FULL
    # One value larger than the whole budget still goes: a request always makes progress.
    alone = reply_for(_get_many(2), [_found(30_000), _found(10)], frame)
    assert alone.results is not None
    assert alone.results[0].error is None and alone.results[1].error is not None
    # Without a frame (the embedded client) nothing is cut.
    whole = reply_for(_get_many(8), results, None)
    assert whole.results is not None and all(item.error is None for item in whole.results)


def test_json_replies_are_cut_to_a_sixth_of_the_frame() -> None:
    frame = 60_000  # JSON: a budget of 10,000 bytes, three items; msgpack: all ten
    results = [_found(3_000) for _ in range(10)]
    for fmt, kept in ((WireFormat.JSON, 3), (WireFormat.MSGPACK, 10)):
        reply = reply_for(_get_many(10, fmt), results, frame)
        assert reply.results is not None
        assert sum(1 for item in reply.results if item.error is None) == kept, fmt


@pytest.fixture
def node() -> Iterator[ActorSystem]:
    with ActorSystem(name="cut", bind="tcp://127.0.0.1:0", partitions=64) as system:
        for key in KEYS:
            system.client.put(key, VALUE)
        yield system


def test_a_get_many_of_large_values_fits_a_frame_on_the_wire(node: ActorSystem) -> None:
    assert node.endpoint is not None
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(node.endpoint)
    try:
        sock.send(msgpack.packb({"op": "get_many", "keys": KEYS, "id": 3}))
        assert sock.poll(10_000), "no reply"
        frame = sock.recv()
    finally:
        sock.close()
    assert len(frame) <= MAX_FRAME_BYTES
    reply = msgpack.unpackb(frame, raw=False)
    assert reply["ok"] is True
    answered = [item for item in reply["results"] if item.get("ok")]
    full = [item for item in reply["results"] if not item.get("ok")]
    assert len(answered) == 2 and all(item["value"] == VALUE for item in answered)
    assert len(full) == len(KEYS) - 2
    assert all(item["error"] == {"code": "too_large", "message": REPLY_FULL} for item in full)


def test_the_client_asks_again_until_it_has_every_key(node: ActorSystem) -> None:
    assert node.endpoint is not None
    with Client(node.endpoint, timeout=10.0) as client:
        assert client.get_many([*KEYS, "missing"]) == dict.fromkeys(KEYS, VALUE)
