"""Client sockets for integration tests. (tests/integration is on the path, as for
conftest.)"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import zmq


@contextlib.contextmanager
def connected(kind: int, endpoint: str) -> Iterator[zmq.Socket[bytes]]:
    """A socket of `kind` (zmq.REQ, zmq.DEALER, ...) connected to `endpoint`, closed after."""
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        yield sock
    finally:
        sock.close()
