"""Talk to a kvactors node with nothing but pyzmq and msgpack: a REQ socket, one frame.

This is what a client in any language does (docs/protocol.md is the contract): encode a
msgpack map, send it as one frame, wait for the one-frame reply with a timeout. It
imports nothing from kvactors on purpose.

Start a node, then run the client against it:

    kvactors node --bind tcp://127.0.0.1:5555
    python examples/req_client.py tcp://127.0.0.1:5555
"""

from __future__ import annotations

import sys
from typing import Any

import msgpack
import zmq

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"
# Longer than the node's own request timeout (5 s), so a live node's `timeout` reply
# would arrive before we give up on it.
REPLY_TIMEOUT_MS = 6_000
ATTEMPTS = 2  # one try, then one retry on a fresh socket (Lazy Pirate)


class NoReplyError(Exception):
    """The node did not answer, even after a retry."""


class ReqClient:
    """One REQ socket to one node; on a timeout it is closed and a new one opened."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self._context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self._socket = self._open()
        self._next_id = 1

    def _open(self) -> zmq.Socket[bytes]:
        sock: zmq.Socket[bytes] = self._context.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)  # closing never waits for an unsent request
        sock.connect(self.endpoint)
        return sock

    def call(self, request: dict[str, Any]) -> dict[str, Any]:
        """Send one request and return its reply; the same request is sent again on a
        new socket if the first gets no answer (every operation is idempotent)."""
        request = {**request, "id": self._next_id}
        self._next_id += 1
        print(f"  -> sent     {request}")
        frame = msgpack.packb(request)
        for _attempt in range(ATTEMPTS):
            self._socket.send(frame)
            if self._socket.poll(REPLY_TIMEOUT_MS, zmq.POLLIN):
                reply: dict[str, Any] = msgpack.unpackb(self._socket.recv())
                print(f"  <- received {reply}")
                return reply
            # A REQ socket cannot send again before it receives, and a late reply must
            # not be read as the answer to the next request: start over with a new one.
            self._socket.close()
            self._socket = self._open()
        raise NoReplyError(
            f"no reply from {self.endpoint} within {REPLY_TIMEOUT_MS / 1000:.0f} s "
            f"({ATTEMPTS} attempts); is a node running there? "
            f"Start one with: kvactors node --bind {self.endpoint}"
        )

    def close(self) -> None:
        self._socket.close()


def describe_error(reply: dict[str, Any]) -> str:
    error = reply["error"]
    return f"{error['code']}: {error['message']}"


def run(client: ReqClient) -> list[str]:
    """The five requests; returns what did not go as expected (nothing, normally)."""
    problems: list[str] = []
    user = {"name": "Ada", "langs": ["en", "fr"]}

    print("1. put user:1")
    reply = client.call({"op": "put", "key": "user:1", "value": user})
    if reply["ok"]:
        print("   put user:1: stored")
    else:
        problems.append(f"put failed ({describe_error(reply)})")

    print("2. get user:1")
    reply = client.call({"op": "get", "key": "user:1"})
    if reply["ok"] and reply["found"] and reply["value"] == user:
        print(f"   get user:1: found {reply['value']}")
    else:
        problems.append(f"get did not return what was put: {reply}")

    print("3. delete user:1")
    reply = client.call({"op": "delete", "key": "user:1"})
    if reply["ok"] and reply["deleted"]:
        print("   delete user:1: deleted (it was there)")
    else:
        problems.append(f"delete did not delete: {reply}")

    print("4. get user:1 again, now that it is gone")
    reply = client.call({"op": "get", "key": "user:1"})
    if reply["ok"] and not reply["found"]:
        print("   get user:1: not found (a miss is an ordinary reply, not an error)")
    else:
        problems.append(f"the deleted key is still there: {reply}")

    print("5. a bad request: a key that is a number")
    reply = client.call({"op": "get", "key": 42})
    if not reply["ok"] and reply["error"]["code"] == "bad_request":
        print(f"   the node refused it with a clear error ({describe_error(reply)})")
    else:
        problems.append(f"a numeric key was not refused: {reply}")
    return problems


def main(argv: list[str]) -> int:
    endpoint = argv[1] if len(argv) > 1 else DEFAULT_ENDPOINT
    client = ReqClient(endpoint)
    print(f"Connected a REQ socket to {endpoint}; every request is one msgpack frame.")
    try:
        problems = run(client)
    except NoReplyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        client.close()
    if problems:
        for problem in problems:
            print(f"unexpected: {problem}", file=sys.stderr)
        return 1
    print("All five requests were answered as expected.")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
