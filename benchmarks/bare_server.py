"""The baseline: a bare pyzmq + msgpack dict server, the stack's own limit.

It speaks the same requests as a kvactors node (msgpack maps with op, key, value, id)
on a ROUTER socket and answers from a dict in one loop, with no validation, no actors
and no threads. Run: python benchmarks/bare_server.py tcp://127.0.0.1:5600
"""

from __future__ import annotations

import sys

import msgpack
import zmq


def serve(endpoint: str) -> None:
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.bind(endpoint)
    data: dict[bytes, bytes] = {}
    packb, unpackb = msgpack.packb, msgpack.unpackb
    while True:
        frames = router.recv_multipart()
        request = unpackb(frames[-1])
        op, key = request["op"], request.get("key")
        if op == "put":
            data[key] = packb(request["value"])
            reply = {"ok": True, "id": request.get("id")}
        elif op == "get":
            value = data.get(key)
            reply = {"ok": True, "id": request.get("id"), "found": value is not None}
            if value is not None:
                reply["value"] = unpackb(value)
        elif op == "stop":
            router.send_multipart([*frames[:-1], packb({"ok": True})])
            break
        else:
            reply = {"ok": True, "id": request.get("id")}
        frames[-1] = packb(reply)
        router.send_multipart(frames)
    router.close(linger=1000)
    context.term()


if __name__ == "__main__":
    serve(sys.argv[1])
