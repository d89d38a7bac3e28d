"""Bad input over real ZeroMQ sockets: a real node answers it all and stays healthy.

The acceptance test of the client protocol's "Limits and safety" (``protocol.py``): one
``kvactors node`` process, a DEALER and a REQ socket, and a Hypothesis test of over 2,000
examples drawn from every kind of bad input: random bytes; truncated msgpack and JSON;
wrong types for every field; a missing op; unknown ops; structures nested 10,000 deep;
msgpack headers declaring 4 GB; non-string map keys; invalid UTF-8; multi-frame garbage,
with and without the node-to-node RPC marker. Every message is answered exactly once, in
its own format, with an error (or, for one that happens to be valid, a success) that
echoes the id whenever the node could read it; afterwards a normal put and get work,
nothing was logged as a failure, and the node's RSS grew by less than 50 MB.

A frame over ``MAXMSGSIZE`` cannot be answered (libzmq drops the connection before the
node sees it), so it has its own test, as do two cases of the node-to-node RPC marker.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msgpack
import pytest
import zmq
import zmq.utils.monitor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvactors.config import NodeConfig
from kvactors.net.protocol import (
    DEFAULT_MAX_BATCH_ITEMS,
    DEFAULT_MAX_CONTEXT_BYTES,
    MAX_ID_BYTES,
    Codec,
)
from kvactors.net.replies import decode_reply
from kvactors.net.rpc import MARKER, RPC_FORMAT
from kvactors.net.rpc import decode_reply as decode_rpc_reply
from kvactors.testing import peer_endpoint

# The node runs on the defaults: these are its limits.
MAX_KEY_BYTES: Final = NodeConfig().max_key_bytes
MAX_VALUE_BYTES: Final = NodeConfig().max_value_bytes
MAX_FRAME_BYTES: Final = Codec.from_config(NodeConfig()).max_frame_bytes

EXAMPLES: Final = 2_000
FIELD_EXAMPLES: Final = 25  # for each of the 11 fields, on top of EXAMPLES
MIN_PER_KIND: Final = 25
RSS_GROWTH_LIMIT: Final = 50 * 1024 * 1024
REPLY_TIMEOUT_MS: Final = 5_000  # bad input is answered at once; this is only a backstop
ERROR_CODES: Final = frozenset({"bad_request", "too_large"})
OPS: Final = ("put", "get", "delete", "get_many", "put_many", "ping", "status")
FIELDS_OF: Final[dict[str, tuple[str, ...]]] = {
    "put": ("key", "value", "context", "w"),
    "get": ("key", "r", "siblings"),
    "delete": ("key", "context", "w"),
    "get_many": ("keys", "r", "siblings"),
    "put_many": ("items", "w"),
    "ping": (),
    "status": (),
}
COMMON_FIELDS: Final = ("op", "id", "timeout_ms")
ALL_FIELDS: Final = frozenset(COMMON_FIELDS).union(*FIELDS_OF.values())
JSON_WHITESPACE: Final = b" \t\r\n"


# -- the node -------------------------------------------------------------------------


@dataclass
class Node:
    """A `kvactors node` child process on a loopback port; its output goes to `log_path`."""

    process: subprocess.Popen[bytes]
    endpoint: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def rss_bytes(self) -> int:
        """VmRSS of the node process, from /proc."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS line in /proc status")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers_ping(context: zmq.Context[zmq.Socket[bytes]], endpoint: str) -> bool:
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send(msgpack.packb({"op": "ping"}))
        return bool(sock.poll(500))
    finally:
        sock.close()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """One node process for the whole module (starting one costs seconds)."""
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    log_path = tmp_path_factory.mktemp("bad-input") / "node.log"
    command = [sys.executable, "-m", "kvactors", "node", "--name", "bad-input"]
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [*command, "--bind", endpoint, "--peer-bind", "tcp://127.0.0.1:0"],
            stdout=log,
            stderr=log,
        )
    started = Node(process, endpoint, log_path)
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        deadline = time.monotonic() + 30
        while not _answers_ping(context, endpoint):
            assert started.alive(), f"the node exited:\n{started.log()}"
            assert time.monotonic() < deadline, f"the node did not answer:\n{started.log()}"
        yield started
    finally:
        context.term()
        if started.alive():
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=15)


# -- talking to it --------------------------------------------------------------------


class Wire:
    """A DEALER and a REQ socket to the node, reopened after a failed exchange."""

    def __init__(self, node: Node) -> None:
        self._node = node
        self._context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._sequence = 0
        self.dealer = self._socket(zmq.DEALER)
        self.req = self._socket(zmq.REQ)
        self.peer_endpoint = peer_endpoint(node.endpoint)
        self.peer = self._socket(zmq.DEALER, self.peer_endpoint)

    def monitored_dealer(self) -> tuple[zmq.Socket[bytes], zmq.Socket[bytes]]:
        """A new DEALER to the node and a monitor of its connection events, attached
        before it connects so that none is missed; the caller closes both."""
        sock = self._context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        monitor = sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        sock.connect(self._node.endpoint)
        return sock, monitor

    def _socket(self, kind: int, endpoint: str | None = None) -> zmq.Socket[bytes]:
        sock = self._context.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint or self._node.endpoint)
        return sock

    def reset(self) -> None:
        """Fresh sockets, so a reply still in flight cannot confuse the next exchange."""
        self.dealer.close()
        self.req.close()
        self.peer.close()
        self.dealer = self._socket(zmq.DEALER)
        self.req = self._socket(zmq.REQ)
        self.peer = self._socket(zmq.DEALER, self.peer_endpoint)

    def close(self) -> None:
        self.dealer.close()
        self.req.close()
        self.peer.close()
        self._context.term()

    def exchange(self, frames: Sequence[bytes], via_req: bool = False) -> list[bytes]:
        """Send `frames`, return the reply's frames; fails if none comes in time."""
        sock = self.req if via_req else self.dealer
        sock.send_multipart(frames)
        return self.receive(sock)

    def call(self, frames: Sequence[bytes]) -> list[bytes]:
        """Send `frames` to the node's peer plane, return the reply's frames."""
        self.peer.send_multipart(frames)
        return self.receive(self.peer)

    def receive(self, sock: zmq.Socket[bytes]) -> list[bytes]:
        if not sock.poll(REPLY_TIMEOUT_MS):
            state = "running" if self._node.alive() else "DEAD"
            tail = self._node.log()[-3000:]
            raise AssertionError(f"no reply within {REPLY_TIMEOUT_MS} ms; node {state}:\n{tail}")
        return sock.recv_multipart()

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """A well-formed msgpack request on the DEALER; its decoded reply."""
        frames = self.exchange([msgpack.packb(message)])
        assert len(frames) == 1, frames
        return decode_reply(frames[0])

    def check_nothing_else_came(self) -> None:
        """A ping with a fresh id must be the next reply: nothing was answered twice.

        Bad input is answered synchronously in the transport thread, so a second reply
        to it would have been queued before this ping's.
        """
        self._sequence += 1
        frames = self.exchange([msgpack.packb({"op": "ping", "id": self._sequence})])
        assert frames == [msgpack.packb({"ok": True, "id": self._sequence})], (
            f"expected only the ping's reply, got {frames!r:.500}"
        )


@pytest.fixture(scope="module")
def wire(node: Node) -> Iterator[Wire]:
    opened = Wire(node)
    yield opened
    opened.close()


# -- the cases --------------------------------------------------------------------------


class _Absent:
    def __repr__(self) -> str:
        return "<no id>"


ABSENT: Final = _Absent()
"""Stands for a reply without an "id" in a case's allowed ids."""


@dataclass(frozen=True)
class BadInput:
    """Frames to send and what their answer may be.

    `allowed_ids`: what the reply's "id" may be (ABSENT: no id); None leaves it
    unchecked (random bytes might by chance hold a readable id). `may_succeed`: the input
    is valid by chance or by construction (a value nested 500 deep), so ok=true is right.
    """

    kind: str
    detail: str
    frames: tuple[bytes, ...]
    allowed_ids: tuple[object, ...] | None
    may_succeed: bool = False
    via_req: bool = False


def echo(message: dict[str, Any]) -> tuple[object, ...]:
    """The reply must echo the request's (valid) id, or carry none if it had none."""
    return (message["id"],) if "id" in message else (ABSENT,)


def either(message: dict[str, Any]) -> tuple[object, ...]:
    """Echoing the id is allowed but not required (the node could not read it)."""
    return (message["id"], ABSENT) if "id" in message else (ABSENT,)


NO_ID: Final = (ABSENT,)


@dataclass(frozen=True)
class JsonAsIs:
    """A JSON fragment sent as written (a malformed "$bytes" or "$map"); never msgpack."""

    content: Any


def to_json(obj: Any) -> Any:
    """`obj` in the protocol's JSON form: bytes as {"$bytes"}, other maps as {"$map"}."""
    if isinstance(obj, JsonAsIs):
        return obj.content
    if isinstance(obj, bytes):
        return {"$bytes": base64.b64encode(obj).decode("ascii")}
    if isinstance(obj, list):
        return [to_json(item) for item in obj]
    if isinstance(obj, dict):
        tagged = len(obj) == 1 and next(iter(obj)) in ("$bytes", "$map")
        if all(type(key) is str for key in obj) and not tagged:
            return {key: to_json(value) for key, value in obj.items()}
        return {"$map": [[to_json(key), to_json(value)] for key, value in obj.items()]}
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"{type(obj).__name__} has no JSON form")


def encode_json(message: Any, leading: bytes = b"", ascii_only: bool = True) -> bytes:
    text = json.dumps(to_json(message), ensure_ascii=ascii_only)
    try:
        return leading + text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: only its \u escape can carry it
        return leading + json.dumps(to_json(message)).encode("ascii")


@st.composite
def encoded(draw: st.DrawFn, message: dict[str, Any]) -> bytes:
    """`message` as msgpack or as JSON: the format drawn, or the one that can carry it."""
    leading = draw(st.sampled_from([b"", b" ", b"\r\n\t "]))
    encoders: list[Callable[[], bytes]] = [
        lambda: msgpack.packb(message),
        lambda: encode_json(message, leading, draw(st.booleans())),
    ]
    if draw(st.booleans()):
        encoders.reverse()
    for encoder in encoders:
        try:
            return encoder()
        except (TypeError, ValueError, OverflowError):
            continue
    raise AssertionError(f"no encoding for {message!r:.200}")


def is_json(frame: bytes) -> bool:
    """The protocol's rule: JSON if the first byte after ASCII whitespace is `{`."""
    return frame.lstrip(JSON_WHITESPACE)[:1] == b"{"


def packed_map(pairs: Sequence[tuple[bytes, bytes]]) -> bytes:
    """A msgpack map assembled from packed keys and values (fewer than 16)."""
    assert len(pairs) < 16
    return bytes((0x80 | len(pairs),)) + b"".join(key + value for key, value in pairs)


def with_raw_field(message: dict[str, Any], field: Any, raw: bytes) -> bytes:
    """`message` packed, with `field` (packed as is if bytes) holding the raw bytes `raw`."""
    pairs = [(msgpack.packb(name), msgpack.packb(value)) for name, value in message.items()]
    name = field if isinstance(field, bytes) else msgpack.packb(field)
    return packed_map([*pairs, (name, raw)])


# Plain data of every msgpack kind, small.
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(),
    st.text(max_size=8),
    st.binary(max_size=8),
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=6,
)
request_ids = st.one_of(
    st.integers(-(2**63), 2**64 - 1), st.text(max_size=12), st.binary(max_size=12)
)
keys = st.one_of(st.text(max_size=12), st.binary(max_size=12))
put_items = st.one_of(
    st.tuples(keys, values).map(list), st.tuples(keys, values, st.binary(max_size=8)).map(list)
)


@st.composite
def valid_requests(draw: st.DrawFn, op: str | None = None) -> dict[str, Any]:
    """A valid request, its id (most have one) first; quorums are 1, the node's only size."""
    op = draw(st.sampled_from(OPS)) if op is None else op
    message: dict[str, Any] = {}
    if draw(st.integers(0, 9)):
        message["id"] = draw(request_ids)
    message["op"] = op
    if op in ("put", "get", "delete"):
        message["key"] = draw(keys)
    if op == "put":
        message["value"] = draw(values)
    if op in ("put", "delete") and draw(st.booleans()):
        message["context"] = draw(st.binary(max_size=16))
    if op in ("put", "delete", "put_many") and draw(st.booleans()):
        message["w"] = 1
    if op in ("get", "get_many") and draw(st.booleans()):
        message["r"] = 1
    if op in ("get", "get_many") and draw(st.booleans()):
        message["siblings"] = draw(st.booleans())
    if op == "get_many":
        message["keys"] = draw(st.lists(keys, min_size=1, max_size=4))
    if op == "put_many":
        message["items"] = draw(st.lists(put_items, min_size=1, max_size=3))
    if draw(st.booleans()):
        message["timeout_ms"] = draw(st.integers(1_000, 60_000))
    return message


def _sized(make: Callable[[int], Any], base: int) -> st.SearchStrategy[Any]:
    """Something just over a limit, built rather than drawn (Hypothesis draws little data)."""
    return st.integers(base, base + 3).map(make)


lists_and_maps = st.one_of(
    st.lists(st.integers(), min_size=0, max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
ext_types = st.one_of(
    st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8)),
    st.builds(msgpack.Timestamp, st.integers(0, 2**32 - 1)),
)
not_ints = st.one_of(
    st.floats(), st.text(max_size=4), st.binary(max_size=4), st.booleans(), lists_and_maps
)
# r, w and timeout_ms: not a positive int32. (2 and up would be `unavailable` for r and w.)
bad_positive_ints = st.one_of(
    not_ints,
    st.integers(max_value=0),
    st.integers(min_value=2**31, max_value=2**64 - 1),
    ext_types,
)
json_tag_faults = st.sampled_from(
    [
        JsonAsIs({"$bytes": "!!not base64"}),
        JsonAsIs({"$bytes": 5}),
        JsonAsIs({"$map": 5}),
        JsonAsIs({"$map": [[1, 2]]}),
        JsonAsIs({"$map": [["a"]]}),
        JsonAsIs({"$map": [[None, 1]]}),
    ]
)
too_long_ints = st.one_of(st.integers(min_value=10**30), st.integers(max_value=-(10**30)))
bad_keys = st.one_of(
    st.none(),
    st.integers(),
    st.floats(),
    st.booleans(),
    lists_and_maps,
    ext_types,
    _sized(lambda size: b"k" * size, MAX_KEY_BYTES + 1),
    _sized(lambda size: "k" * size, MAX_KEY_BYTES + 1),
    st.just("lone \ud800 surrogate"),
    json_tag_faults,
)
BAD_VALUES_OF: Final[dict[str, st.SearchStrategy[Any]]] = {
    "op": st.one_of(
        st.integers(), st.floats(), st.binary(max_size=8), st.booleans(), lists_and_maps
    ),
    "id": st.one_of(
        st.floats(),
        st.booleans(),
        lists_and_maps,
        ext_types,
        too_long_ints,
        st.integers(min_value=2**64, max_value=2**70),
        _sized(lambda size: "i" * size, MAX_ID_BYTES + 1),
        _sized(lambda size: b"i" * size, MAX_ID_BYTES + 1),
        st.just("\udfff"),
        json_tag_faults,
    ),
    "key": bad_keys,
    "value": st.one_of(
        ext_types,
        st.lists(ext_types, min_size=1, max_size=2),
        _sized(lambda size: b"v" * size, MAX_VALUE_BYTES),  # bin32 header: over the limit
        _sized(lambda size: "v" * size, MAX_VALUE_BYTES),
        st.just(["lone \udc00 surrogate"]),
        too_long_ints,
        json_tag_faults,
    ),
    "context": st.one_of(
        st.text(max_size=8),
        st.integers(),
        st.floats(),
        st.booleans(),
        lists_and_maps,
        ext_types,
        _sized(lambda size: b"c" * size, DEFAULT_MAX_CONTEXT_BYTES + 1),
        json_tag_faults,
    ),
    "r": bad_positive_ints,
    "w": bad_positive_ints,
    "timeout_ms": st.one_of(bad_positive_ints, too_long_ints),
    "siblings": st.one_of(
        st.integers(), st.floats(), st.text(max_size=4), st.binary(max_size=4), lists_and_maps
    ),
    "keys": st.one_of(
        st.text(max_size=4),
        st.integers(),
        st.binary(max_size=4),
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
        st.just([]),
        _sized(lambda size: ["k"] * size, DEFAULT_MAX_BATCH_ITEMS + 1),
        st.tuples(st.lists(keys, max_size=3), bad_keys, st.lists(keys, max_size=3)).map(
            lambda parts: [*parts[0], parts[1], *parts[2]]
        ),
    ),
    "items": st.one_of(
        st.text(max_size=4),
        st.integers(),
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
        st.just([]),
        _sized(lambda size: [["k", 1]] * size, DEFAULT_MAX_BATCH_ITEMS + 1),
        st.lists(
            st.one_of(
                st.integers(),
                st.text(max_size=3),
                st.lists(keys, max_size=1),  # too short
                st.lists(st.integers(), min_size=4, max_size=5),  # too long
                st.tuples(bad_keys, values).map(list),
                st.tuples(keys, st.sampled_from([msgpack.ExtType(1, b"x")])).map(list),
                st.tuples(keys, values, st.text(max_size=3)).map(list),
            ),
            min_size=1,
            max_size=3,
        ),
    ),
}


@st.composite
def wrong_types(draw: st.DrawFn, field: str | None = None) -> BadInput:
    """A valid request with one field (of those its op takes) holding a wrong value."""
    # The field first, so that each is drawn as often (some belong to a single op).
    field = draw(st.sampled_from(sorted(ALL_FIELDS))) if field is None else field
    takers = [op for op in OPS if field in COMMON_FIELDS or field in FIELDS_OF[op]]
    message = draw(valid_requests(draw(st.sampled_from(takers))))
    message[field] = draw(BAD_VALUES_OF[field])
    allowed = NO_ID if field == "id" else echo(message)
    return BadInput("wrong_type", field, (draw(encoded(message)),), allowed)


@st.composite
def unexpected_fields(draw: st.DrawFn) -> BadInput:
    """A valid request plus a field its op does not take (or that no op takes)."""
    op = draw(st.sampled_from(OPS))
    message = draw(valid_requests(op))
    others = sorted(ALL_FIELDS - set(FIELDS_OF[op]) - set(COMMON_FIELDS))
    field = draw(st.sampled_from([*others, "operations", "Op", "ID", ""]))
    message[field] = draw(values)
    return BadInput("wrong_type", "unexpected field", (draw(encoded(message)),), echo(message))


@st.composite
def missing_ops(draw: st.DrawFn) -> BadInput:
    message = draw(valid_requests())
    if draw(st.booleans()):
        del message["op"]
    else:
        message["op"] = None  # nil means absent
    return BadInput("missing_op", "", (draw(encoded(message)),), echo(message))


@st.composite
def unknown_ops(draw: st.DrawFn) -> BadInput:
    message = draw(valid_requests())
    known = message["op"]
    unknown = draw(
        st.one_of(
            st.text(max_size=12).filter(lambda name: name not in OPS),
            st.sampled_from(
                [known.upper(), f" {known}", f"{known}\x00", known.title(), "GET", "getMany", ""]
            ),
        )
    )
    how = draw(st.sampled_from(["op", "operation", "disagree"]))
    if how == "operation":
        del message["op"]
        message["operation"] = unknown
    elif how == "disagree":
        message["operation"] = draw(st.sampled_from([op for op in OPS if op != known]))
    else:
        message["op"] = unknown
    return BadInput("unknown_op", how, (draw(encoded(message)),), echo(message))


def _deep_msgpack(shape: str, depth: int) -> bytes:
    opener = b"\x91" if shape == "array" else b"\x81\xa1a"
    return opener * depth + b"\xc0"


def _deep_json(shape: str, depth: int) -> str:
    if shape == "array":
        return "[" * depth + "null" + "]" * depth
    return '{"a":' * depth + "null" + "}" * depth


@st.composite
def deep_nesting(draw: st.DrawFn) -> BadInput:
    """Structures 10,000 deep (and 1,100; and 500, which is allowed) in a field or on top."""
    shape = draw(st.sampled_from(["array", "map"]))
    depth = draw(st.sampled_from([10_000, 1_100, 500]))
    as_json = draw(st.booleans())
    if draw(st.integers(0, 3)) == 0:  # the whole frame
        if as_json:
            deep = _deep_json(shape, depth)
            frame = (deep if shape == "map" else '{"x": ' + deep + "}").encode()
        else:
            frame = _deep_msgpack(shape, depth)
        return BadInput("deep_nesting", f"top {shape} {depth}", (frame,), NO_ID)
    op = draw(st.sampled_from(OPS))
    message = draw(valid_requests(op))
    field = draw(st.sampled_from(["id", "op", "key", "value", "context", "keys", "items", "r"]))
    message.pop(field, None)
    may_succeed = field == "value" and op == "put" and depth == 500
    detail = f"{field} {shape} {depth}"
    if as_json:
        # JSON nesting is bounded by the recursion limit: past it the node cannot read the id.
        head = json.dumps(to_json(message))[:-1]
        separator = ", " if message else ""
        text = f"{head}{separator}{json.dumps(field)}: {_deep_json(shape, depth)}}}"
        readable = depth == 500
        allowed = NO_ID if field == "id" else echo(message) if readable else NO_ID
        return BadInput("deep_nesting", "json " + detail, (text.encode(),), allowed, may_succeed)
    frame = with_raw_field(message, field, _deep_msgpack(shape, depth))
    # The id comes first, so the node reads it even when a later field is too deep.
    allowed = NO_ID if field == "id" else echo(message)
    return BadInput("deep_nesting", "msgpack " + detail, (frame,), allowed, may_succeed)


HUGE_HEADERS: Final = {
    "str32": b"\xdb\xff\xff\xff\xff",
    "bin32": b"\xc6\xff\xff\xff\xff",
    "array32": b"\xdd\xff\xff\xff\xff",
    "map32": b"\xdf\xff\xff\xff\xff",
    "ext32": b"\xc9\xff\xff\xff\xff\x01",
}


@st.composite
def huge_headers(draw: st.DrawFn) -> BadInput:
    """msgpack headers that declare 4 GB, with only a few bytes behind them."""
    name = draw(st.sampled_from(sorted(HUGE_HEADERS)))
    raw = HUGE_HEADERS[name] + draw(st.binary(max_size=16))
    message = draw(valid_requests())
    where = draw(st.sampled_from(["top", "id", "op", "key", "value", "keys", "items", "extra"]))
    if where == "top":
        # The frame itself declares 4 GB: a map32 header in front of real entries.
        pairs = [(msgpack.packb(k), msgpack.packb(v)) for k, v in message.items()]
        frame = b"\xdf\xff\xff\xff\xff" + b"".join(k + v for k, v in pairs)
        return BadInput("huge_header", "top map32", (frame,), either(message))
    if where == "extra":
        frame = with_raw_field(message, raw, msgpack.packb(1))  # the 4 GB thing is a map key
        return BadInput("huge_header", f"{name} as a map key", (frame,), echo(message))
    message.pop(where, None)
    frame = with_raw_field(message, where, raw)
    allowed = NO_ID if where == "id" else echo(message)
    return BadInput("huge_header", f"{name} in {where}", (frame,), allowed)


NON_STRING_KEYS: Final = {
    "int": msgpack.packb(1),
    "negative int": msgpack.packb(-7),
    "float": msgpack.packb(1.5),
    "true": msgpack.packb(True),
    "nil": msgpack.packb(None),
    "array": b"\x91\x01",
    "map": b"\x81\xa1a\x01",
    "ext": b"\xd4\x01\x00",
}


@st.composite
def non_string_keys(draw: st.DrawFn) -> BadInput:
    """Maps with keys that are not str: at the top, inside a value, or only such keys."""
    key_name = draw(st.sampled_from(sorted(NON_STRING_KEYS)))
    key = NON_STRING_KEYS[key_name]
    where = draw(st.sampled_from(["top", "value", "deeper", "only", "bytes keys", "json"]))
    message = draw(valid_requests("put"))
    if where == "top":
        frame = with_raw_field(message, key, msgpack.packb("x"))
        return BadInput("non_string_keys", f"{key_name} key on top", (frame,), echo(message))
    if where in ("value", "deeper"):
        del message["value"]
        inner = b"\x81" + key + msgpack.packb(draw(values))
        raw = inner if where == "value" else b"\x92\x01\x81\xa1a" + inner
        frame = with_raw_field(message, "value", raw)
        return BadInput("non_string_keys", f"{key_name} key {where}", (frame,), echo(message))
    if where == "only":
        frame = b"\x81" + key + msgpack.packb("x")
        return BadInput("non_string_keys", f"only a {key_name} key", (frame,), NO_ID)
    if where == "bytes keys":
        # bytes keys are allowed in maps, but b"op" is not the field "op".
        as_bytes = {name.encode(): content for name, content in message.items()}
        frame = msgpack.packb(as_bytes)
        return BadInput("non_string_keys", "bytes field names", (frame,), NO_ID)
    json_key = draw(st.sampled_from([1, None, 1.5, True, [1], {"a": 1}]))
    message["value"] = JsonAsIs({"$map": [[json_key, 1]]})
    frame = encode_json(message)
    return BadInput("non_string_keys", f"json $map key {json_key!r}", (frame,), echo(message))


@st.composite
def truncated(draw: st.DrawFn) -> BadInput:
    """A valid request cut short: msgpack, or JSON."""
    message = draw(valid_requests())
    frame = draw(encoded(message))
    cut = draw(st.integers(0, len(frame) - 1))
    if is_json(frame):
        # The node does not parse JSON piecewise, so it need not find the id.
        return BadInput("truncated", "json", (frame[:cut],), either(message))
    # msgpack: the node reads the id (the map's first entry) when it arrived whole.
    id_end = len(msgpack.packb({"id": message["id"]})) if "id" in message else len(frame) + 1
    allowed = echo(message) if cut >= id_end else NO_ID
    return BadInput("truncated", "msgpack", (frame[:cut],), allowed)


@st.composite
def invalid_utf8(draw: st.DrawFn) -> BadInput:
    """A string field whose bytes are not UTF-8."""
    message = draw(valid_requests("put"))
    field = draw(st.sampled_from(["key", "value", "op", "unknown"]))
    junk = draw(st.sampled_from([b"\xff", b"\xc3", b"a\xed\xa0\x80b", b"\xf8\x88\x80\x80\x80"]))
    message.pop(field, None)
    if draw(st.booleans()):
        raw = bytes((0xA0 | len(junk),)) + junk  # fixstr
        if field == "unknown":
            frame = with_raw_field(message, raw, msgpack.packb(1))
        else:
            frame = with_raw_field(message, field, raw)
        return BadInput("invalid_utf8", f"msgpack {field}", (frame,), echo(message))
    head = json.dumps(to_json(message))[:-1].encode()
    frame = head + b', "' + field.encode() + b'": "' + junk + b'"}'
    return BadInput("invalid_utf8", f"json {field}", (frame,), either(message))


@st.composite
def random_bytes(draw: st.DrawFn) -> BadInput:
    prefix = draw(st.sampled_from([b"", b"{", b" \n{", b"\x81", b"\x82\xa2op"]))
    frame = prefix + draw(st.binary(max_size=200))
    return BadInput("random_bytes", repr(prefix), (frame,), None, may_succeed=True)


@st.composite
def random_structures(draw: st.DrawFn) -> BadInput:
    """Well-formed msgpack or JSON that is not a request: not a map, or random fields."""
    content = draw(
        st.one_of(
            values.filter(lambda value: not isinstance(value, dict)),
            st.dictionaries(st.sampled_from(["op", "id", "key", "x", ""]) | st.text(), values),
        )
    )
    if isinstance(content, dict):
        return BadInput("random_structure", "map", (draw(encoded(content)),), None, True)
    frame = draw(st.sampled_from([msgpack.packb, encode_json]))(content)
    return BadInput("random_structure", type(content).__name__, (frame,), NO_ID)


@st.composite
def any_single_frame(draw: st.DrawFn) -> bytes:
    message = draw(valid_requests())
    return draw(st.one_of(st.binary(max_size=64), encoded(message)))


@st.composite
def multi_frame_garbage(draw: st.DrawFn) -> BadInput:
    """2 to 5 frames: random, valid requests, JSON-looking, after an empty delimiter or not."""
    frames = draw(st.lists(any_single_frame(), min_size=2, max_size=5))
    start = draw(st.sampled_from(["as drawn", "delimiter", "json", "spaced json"]))
    if start == "delimiter":
        frames[0] = b""
    elif start != "as drawn":
        frames[0] = (b" \r\n" if start == "spaced json" else b"") + b'{"op": "ping"}'
    return BadInput("multi_frame", start, tuple(frames), None, True, draw(st.booleans()))


int64s = st.integers(-(2**63), 2**63 - 1)
rpc_junk_ops = st.one_of(
    int64s,
    st.text(max_size=4),
    st.tuples(st.sampled_from(["get", "put", "delete"]), st.text(max_size=4)).map(list),
    st.tuples(st.sampled_from(["frob", "GET"]), st.binary(max_size=4)).map(list),
    st.tuples(st.just("put"), st.binary(max_size=4)).map(list),  # put without a value
    st.dictionaries(st.text(max_size=3), int64s, max_size=2),
)


@st.composite
def rpc_garbage(draw: st.DrawFn) -> BadInput:
    """Frames after the node-to-node RPC marker: garbage, or calls that are not valid."""
    call = {
        "id": draw(st.one_of(st.integers(0, 2**63), st.text(max_size=4), st.none())),
        "op": draw(st.sampled_from(["store", "store", "nope", 5, None])),
        "timeout": draw(st.one_of(st.floats(), st.integers(-5, 5000), st.text(max_size=3))),
        "ops": draw(st.lists(rpc_junk_ops, max_size=3)),
    }
    rpc_format = bytes((RPC_FORMAT,))
    body = draw(
        st.one_of(
            st.lists(st.binary(max_size=64), min_size=1, max_size=4),
            st.binary(max_size=64).map(lambda garbage: [rpc_format + garbage]),
            st.just([rpc_format + msgpack.packb(call)]),
            st.just([msgpack.packb(call)]),  # no format byte: refused unread
        )
    )
    return BadInput("rpc_garbage", "", (MARKER, *body), None, may_succeed=True)


@st.composite
def sent_by_req_or_dealer(draw: st.DrawFn, cases: st.SearchStrategy[BadInput]) -> BadInput:
    """A one-frame case, sent by the REQ socket a quarter of the time."""
    case = draw(cases)
    if draw(st.integers(0, 3)) == 0:
        return dataclasses.replace(case, via_req=True)
    return case


bad_inputs = st.one_of(
    # Listed twice: Hypothesis draws few distinct small binaries from one branch.
    sent_by_req_or_dealer(random_bytes()),
    sent_by_req_or_dealer(random_bytes()),
    sent_by_req_or_dealer(random_structures()),
    sent_by_req_or_dealer(random_structures()),
    sent_by_req_or_dealer(truncated()),
    sent_by_req_or_dealer(wrong_types()),
    sent_by_req_or_dealer(unexpected_fields()),
    sent_by_req_or_dealer(missing_ops()),
    sent_by_req_or_dealer(unknown_ops()),
    sent_by_req_or_dealer(deep_nesting()),
    sent_by_req_or_dealer(huge_headers()),
    sent_by_req_or_dealer(non_string_keys()),
    sent_by_req_or_dealer(invalid_utf8()),
    multi_frame_garbage(),
    rpc_garbage(),
)


# -- what an answer must look like ----------------------------------------------------


def is_rpc(case: BadInput) -> bool:
    return not case.via_req and len(case.frames) >= 2 and case.frames[0] == MARKER


def check_answer(case: BadInput, reply: list[bytes]) -> None:
    """One reply, in the request's format, an error (unless valid), echoing what it may."""
    frames = list(case.frames)
    if is_rpc(case):
        check_refused_on_the_client_plane(reply)
        return
    envelope: list[bytes] = []
    if not case.via_req and b"" in frames[:-1]:
        # The envelope runs to the first empty frame with a body after it (REQ's
        # delimiter; proxies and REQ_CORRELATE add frames before it): it comes back.
        delimiter = frames.index(b"", 0, len(frames) - 1)
        envelope, frames = frames[: delimiter + 1], frames[delimiter + 1 :]
    assert len(reply) == len(envelope) + 1, f"expected {len(envelope) + 1} frame(s): {reply!r:.300}"
    assert reply[:-1] == envelope, f"the envelope did not come back: {reply!r:.300}"
    frame = reply[-1]
    if is_json(frames[0]):
        assert frame[:1] == b"{", f"a JSON request got a non-JSON reply: {frame!r:.300}"
        assert isinstance(json.loads(frame), dict)
    else:
        assert 0x80 <= frame[0] <= 0x8F, (
            f"a msgpack request got a non-msgpack reply: {frame!r:.300}"
        )
    answer = decode_reply(frame)
    if answer["ok"]:
        assert case.may_succeed and len(frames) == 1, f"bad input was accepted: {answer!r:.300}"
    else:
        assert answer["error"]["code"] in ERROR_CODES, answer
    if case.allowed_ids is not None:
        got = answer.get("id", ABSENT)
        assert any(type(got) is type(allowed) and got == allowed for allowed in case.allowed_ids), (
            f"id {got!r:.100} in the reply; allowed: {case.allowed_ids!r:.300}"
        )


def check_refused_on_the_client_plane(reply: list[bytes]) -> None:
    """Node-to-node calls are refused on the client endpoint, whatever they carry."""
    assert len(reply) == 1, f"not a client reply: {reply!r:.300}"
    answer = decode_reply(reply[0])
    assert answer["ok"] is False and answer["error"]["code"] == "bad_request", answer
    assert "peer endpoint" in answer["error"]["message"], answer


def check_rpc_answer(reply: list[bytes]) -> None:
    assert len(reply) == 2 and reply[0] == MARKER, f"not an RPC reply: {reply!r:.300}"
    answer = decode_rpc_reply(reply[1])  # in the node's RPC format, whatever the call's
    assert isinstance(answer, dict) and isinstance(answer.get("ok"), bool), answer
    if not answer["ok"]:
        assert answer["error"]["code"] in ERROR_CODES, answer


# -- the tests --------------------------------------------------------------------------


def send_and_check(wire: Wire, case: BadInput) -> None:
    try:
        check_answer(case, wire.exchange(case.frames, case.via_req))
        if is_rpc(case):  # and on the peer plane, where it is served or refused
            check_rpc_answer(wire.call(case.frames))
        if not case.via_req:
            wire.check_nothing_else_came()
    except BaseException:
        wire.reset()
        raise


def _warm_up(wire: Wire, count: int) -> None:
    """Normal traffic, so the node's buffers and caches exist before RSS is measured."""
    for index in range(count // 2):
        key, value = f"warm:{index}", {"n": index, "blob": b"x" * (index * 100)}
        assert wire.request({"op": "put", "key": key, "value": value, "id": index})["ok"]
        assert wire.request({"op": "get", "key": key})["value"] == value


def _status(wire: Wire) -> dict[str, Any]:
    answer = wire.request({"op": "status"})
    assert answer["ok"], answer
    status: dict[str, Any] = answer["status"]
    return status


def test_every_bad_input_is_answered_and_the_node_stays_healthy(node: Node, wire: Wire) -> None:
    _warm_up(wire, 200)
    rss_before = node.rss_bytes()
    log_before = len(node.log())
    requests_before = _status(wire)["requests"]
    seen: Counter[str] = Counter()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(case=bad_inputs)
    def answers(case: BadInput) -> None:
        seen[case.kind] += 1
        send_and_check(wire, case)

    answers()

    assert sum(seen.values()) >= EXAMPLES, seen
    assert min(seen.values()) >= MIN_PER_KIND and len(seen) == 12, seen
    # Still serving, and never restarted (a new RequestService would count from zero).
    stored = {"after": "bad input", "n": [1, 2.5, None]}
    assert wire.request({"op": "put", "key": "after", "value": stored, "id": "p"}) == {
        "ok": True,
        "id": "p",
    }
    got = wire.request({"op": "get", "key": "after", "id": "g"})
    assert got["ok"] and got["found"] and got["value"] == stored and got["id"] == "g", got
    assert _status(wire)["requests"] >= requests_before + sum(seen.values())
    new_log = node.log()[log_before:]
    assert "Traceback" not in new_log and " ERROR " not in new_log, new_log[-3000:]
    growth = node.rss_bytes() - rss_before
    print(f"bad inputs: {sum(seen.values())} {dict(seen)}; RSS grew {growth / 2**20:.1f} MiB")
    assert growth < RSS_GROWTH_LIMIT, f"RSS grew by {growth / 2**20:.1f} MiB"


@pytest.mark.parametrize("field", sorted(ALL_FIELDS))
@settings(
    max_examples=FIELD_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    # The function-scoped fixture is conftest's autouse check for leaked actors.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_a_wrong_value_in_each_field_is_refused(
    wire: Wire, field: str, data: st.DataObject
) -> None:
    """Every field, for certain: the test above draws fields unevenly."""
    send_and_check(wire, data.draw(wrong_types(field)))


def _put_frame_of_size(size: int, request_id: int) -> bytes:
    """A put whose frame is exactly `size` bytes (its value is bytes, over the value limit)."""
    head = {"id": request_id, "op": "put", "key": "big"}
    overhead = len(msgpack.packb({**head, "value": b"x" * 70_000})) - 70_000
    frame: bytes = msgpack.packb({**head, "value": b"x" * (size - overhead)})
    assert len(frame) == size
    return frame


def test_a_frame_over_maxmsgsize_is_dropped_and_the_node_serves_on(node: Node, wire: Wire) -> None:
    # At the limit, the frame reaches the node and gets an answer naming the real fault.
    at_limit = wire.exchange([_put_frame_of_size(MAX_FRAME_BYTES, 41)])
    answer = decode_reply(at_limit[-1])
    assert not answer["ok"] and answer["error"]["code"] == "too_large" and answer["id"] == 41

    # One byte more: libzmq drops the connection; there is nobody to answer.
    sock, monitor = wire.monitored_dealer()
    try:
        assert _next_event(monitor) == zmq.EVENT_CONNECTED
        sock.send(_put_frame_of_size(MAX_FRAME_BYTES + 1, 42))
        assert _next_event(monitor) == zmq.EVENT_DISCONNECTED
        assert not sock.poll(200), "a frame over MAXMSGSIZE was answered"
        # The socket reconnects by itself and is served like any other.
        sock.send(msgpack.packb({"op": "ping", "id": 43}))
        assert decode_reply(wire.receive(sock)[-1]) == {"ok": True, "id": 43}
    finally:
        sock.disable_monitor()
        monitor.close()
        sock.close()
    assert wire.request({"op": "ping", "id": 44}) == {"ok": True, "id": 44}
    assert node.alive()


def _next_event(monitor: zmq.Socket[bytes]) -> int:
    assert monitor.poll(REPLY_TIMEOUT_MS), "no socket event"
    event: int = zmq.utils.monitor.recv_monitor_message(monitor)["event"]
    return event


def _nested(depth: int) -> bytes:
    return b"\x91" * depth + b"\xc0"


def test_a_deeply_nested_rpc_store_op_is_answered_without_a_restart(node: Node, wire: Wire) -> None:
    """Anyone who reaches the peer plane may send a call; one malformed store op must not
    crash the transport thread (a dozen would exceed the restart intensity and stop the node)."""
    requests_before = _status(wire)["requests"]
    call = msgpack.packb({"id": 5, "op": "store", "timeout": 1.0, "ops": [None]})
    deep_call = call.replace(b"\xa3ops\x91\xc0", b"\xa3ops\x91" + _nested(1_010))
    for _ in range(3):
        reply = wire.call([MARKER, bytes((RPC_FORMAT,)) + deep_call])
        assert reply[0] == MARKER, reply
        answer = decode_rpc_reply(reply[1])
        assert answer["ok"] is False and answer["id"] == 5, answer
        assert answer["error"]["code"] in ("bad_request", "internal"), answer
    assert _status(wire)["requests"] > requests_before, "the request service was restarted"
    assert "transport thread failed" not in node.log()


def test_the_rpc_marker_cannot_store_a_value_a_get_cannot_return(wire: Wire) -> None:
    """A store call's value is held to the same rules as a client's, or a get would splice
    bytes that are not msgpack into its reply."""
    call = {"id": 6, "op": "store", "timeout": 1.0, "ops": [["put", b"rpc-injected", b"\xc1"]]}
    reply = wire.call([MARKER, bytes((RPC_FORMAT,)) + msgpack.packb(call)])
    answer = decode_rpc_reply(reply[1])
    assert answer["ok"] is False and answer["error"]["code"] == "bad_request", answer
    got = decode_reply(wire.exchange([msgpack.packb({"op": "get", "key": "rpc-injected"})])[0])
    assert got == {"ok": True, "found": False, "context": b"\x01\x00"}  # an empty clock
