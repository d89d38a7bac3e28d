"""The causal context a client carries: the opaque bytes a `get` hands back and the next
`put` or `delete` of the key sends, a `VectorClock` in a canonical binary form
(docs/protocol.md describes it for clients).

`decode_context` reads the format (any clock a context can spell); `client_context` also
holds what a client sends to what a node could have made (`MAX_CLIENT_COUNTER`). The
replica that coordinates the write holds it to its clock as well
(`kvactors.core.clocks.counter_ceiling`) and to the key's history.

Pure logic: no I/O.
"""

from __future__ import annotations

from functools import lru_cache

from kvactors.core.clocks import MAX_COUNTER, VectorClock, first_counter_above
from kvactors.errors import BadRequestError

__all__ = [
    "CONTEXT_FORMAT",
    "MAX_CLIENT_COUNTER",
    "MAX_CONTEXT_BYTES",
    "MAX_CONTEXT_ENTRIES",
    "MAX_NODE_NAME_BYTES",
    "client_context",
    "decode_context",
    "encode_context",
]

# Layout of an encoded context (all integers are unsigned LEB128 varints, minimal length):
#
#     format byte (CONTEXT_FORMAT = 1)
#     entry count                          at most MAX_CONTEXT_ENTRIES
#     per entry, names strictly ascending (by UTF-8 bytes, the same as by str):
#         name length                      1 .. MAX_NODE_NAME_BYTES
#         name                             UTF-8
#         counter                          1 .. MAX_COUNTER
#
# The encoding is canonical: one clock has exactly one encoding, and decoding rejects any
# other byte string (trailing bytes, padded varints, unsorted names), so a context that
# decodes also re-encodes to the same bytes.

CONTEXT_FORMAT = 1
MAX_CONTEXT_ENTRIES = 256
MAX_NODE_NAME_BYTES = 255
_MAX_VARINT_BYTES = 10  # enough for MAX_COUNTER
MAX_CONTEXT_BYTES = 1 + 2 + MAX_CONTEXT_ENTRIES * (2 + MAX_NODE_NAME_BYTES + _MAX_VARINT_BYTES)

# The highest counter a client's context may carry. Counters are clock readings: a
# node's dots count its clock's milliseconds times 1,024 (`kvactors.core.clocks.dot_floor`),
# which stays below 2**52 until the year 144,000. A context at 2**64 - 2 would leave its
# key no room for another write; one below 2**62 leaves room for 3 x 2**62 writes.
MAX_CLIENT_COUNTER = 2**62 - 1


_ONE_BYTE_VARINTS = tuple(bytes((number,)) for number in range(0x80))
_SPREAD_LIMIT = 1 << 56  # numbers of at most 8 groups of 7 bits fit one 64-bit spread
# Per varint size, the continuation bit of every byte but the last.
_CONTINUATION_BITS = tuple(
    sum(0x80 << (8 * index) for index in range(size - 1)) for size in range(9)
)


def _varint(number: int) -> bytes:
    """`number` (0 .. MAX_COUNTER) as a minimal unsigned LEB128 varint."""
    if number < 0x80:
        return _ONE_BYTE_VARINTS[number]
    if number < _SPREAD_LIMIT:
        # Dots' counters come from the clock in milliseconds (about 51 bits): moving the
        # 7-bit groups into bytes with a few whole-number steps beats a loop per byte.
        # Each step moves the upper half of every lane up: 28 bits to 32, 14 to 16, 7 to 8.
        spread = (number & 0xFFFFFFF) | (number >> 28 << 32)
        spread = (spread & 0x00003FFF00003FFF) | ((spread & 0x0FFFC0000FFFC000) << 2)
        spread = (spread & 0x007F007F007F007F) | ((spread & 0x3F803F803F803F80) << 1)
        size = (number.bit_length() + 6) // 7
        return (spread | _CONTINUATION_BITS[size]).to_bytes(size, "little")
    out = bytearray()
    while number > 0x7F:
        out.append(number & 0x7F | 0x80)
        number >>= 7
    out.append(number)
    return bytes(out)


# The format byte and the entry count, for each possible count.
_CONTEXT_HEADERS = tuple(
    bytes((CONTEXT_FORMAT,)) + _varint(count) for count in range(MAX_CONTEXT_ENTRIES + 1)
)


@lru_cache(maxsize=1024)
def _encoded_name(node: str) -> bytes:
    """A node name as a context spells it: its length, then its UTF-8 bytes. Cached: a
    cluster has few node names, and every context repeats them."""
    name = node.encode("utf-8")
    if len(name) > MAX_NODE_NAME_BYTES:
        raise ValueError(f"node names in a context are at most {MAX_NODE_NAME_BYTES} bytes")
    return _varint(len(name)) + name


def encode_context(clock: VectorClock) -> bytes:
    """The opaque bytes a client carries from a `get` to its next `put` or `delete`."""
    entries = clock.entries
    if len(entries) == 1:  # the context of a key one node writes: no list to join
        ((node, counter),) = entries
        return _CONTEXT_HEADERS[1] + _encoded_name(node) + _varint(counter)
    if len(entries) > MAX_CONTEXT_ENTRIES:
        raise ValueError(f"a context holds at most {MAX_CONTEXT_ENTRIES} entries")
    parts = [_CONTEXT_HEADERS[len(entries)]]
    for node, counter in entries:
        parts.append(_encoded_name(node))
        parts.append(_varint(counter))
    return b"".join(parts)


class _ContextReader:
    """A cursor over untrusted context bytes; every read checks bounds."""

    __slots__ = ("_data", "_position")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._position = 0

    def at_end(self) -> bool:
        return self._position == len(self._data)

    def take(self, count: int) -> bytes:
        end = self._position + count
        if end > len(self._data):
            raise ValueError("context is truncated")
        chunk = self._data[self._position : end]
        self._position = end
        return chunk

    def varint(self) -> int:
        number = 0
        for index in range(_MAX_VARINT_BYTES):
            byte = self.take(1)[0]
            number |= (byte & 0x7F) << (7 * index)
            if not byte & 0x80:
                if byte == 0 and index > 0:
                    raise ValueError("context varint is not minimal")
                if number > MAX_COUNTER:
                    raise ValueError("context varint is out of range")
                return number
        raise ValueError("context varint is too long")


def decode_context(data: object) -> VectorClock:
    """The clock inside a context a client sent; raises ValueError unless it is exactly what
    `encode_context` produces for some clock, within the size limits."""
    if not isinstance(data, bytes | bytearray):
        raise ValueError("a context must be bytes")
    if len(data) > MAX_CONTEXT_BYTES:
        raise ValueError("context is too large")
    reader = _ContextReader(bytes(data))
    if reader.take(1)[0] != CONTEXT_FORMAT:
        raise ValueError("unknown context format")
    count = reader.varint()
    if count > MAX_CONTEXT_ENTRIES:
        raise ValueError("context has too many entries")
    entries: list[tuple[str, int]] = []
    for _ in range(count):
        name_length = reader.varint()
        if not 1 <= name_length <= MAX_NODE_NAME_BYTES:
            raise ValueError("context node name has a bad length")
        try:
            node = reader.take(name_length).decode("utf-8")
        except UnicodeDecodeError as error:
            raise ValueError("context node name is not UTF-8") from error
        counter = reader.varint()
        if counter == 0:
            raise ValueError("context counter is zero")
        if entries and node <= entries[-1][0]:
            raise ValueError("context entries are not sorted")
        entries.append((node, counter))
    if not reader.at_end():
        raise ValueError("context has trailing bytes")
    return VectorClock(tuple(entries))


def client_context(context: bytes | None) -> tuple[VectorClock, bytes] | None:
    """The clock of the context a client sent with a write, and the context itself; None
    when it sent none. A context no node made is the client's error: BadRequestError,
    also for a counter above MAX_CLIENT_COUNTER."""
    if context is None:
        return None
    try:
        clock = decode_context(context)
    except ValueError as exc:
        raise BadRequestError(f"context is not one a node made: {exc}") from None
    too_high = first_counter_above(clock, MAX_CLIENT_COUNTER)
    if too_high is not None:
        raise BadRequestError(
            f"context is not one a node made: a counter is {too_high[1]}, above "
            f"{MAX_CLIENT_COUNTER} (2**62 - 1); use the context a get returned"
        )
    return clock, context
