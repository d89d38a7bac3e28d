"""Redis as replicated.py's baseline: a master and two replicas on loopback, driven here.

Writes are `SET` then `WAIT 1` pipelined on one connection, so a write is answered once a
replica has it too (two copies, as kvactors' W=2). Reads are `GET` on the master (one
copy answers, where kvactors' R=2 asks two). Each of `inflight` connections has one
request (a GET, or a SET + WAIT pair) outstanding at a time.
"""

from __future__ import annotations

import random
import re
import selectors
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from _loadgen import VALUE_BYTES, KeyMaker, Measurement

from kvactors.launcher import free_port_block


class RedisError(str):
    """An error reply ("-ERR ...")."""


RedisReply = str | int | bytes | None | RedisError


def resp(*parts: bytes | str) -> bytes:
    """One command in the Redis protocol (RESP), as an array of bulk strings."""
    encoded = [part.encode() if isinstance(part, str) else part for part in parts]
    chunks = [b"*%d\r\n" % len(encoded)]
    for part in encoded:
        chunks.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(chunks)


def parse_reply(buffer: bytes) -> tuple[RedisReply, bytes] | None:
    """The first reply in `buffer` and the bytes after it; None while it is incomplete.
    Simple strings, errors, integers and bulk strings (what SET, WAIT, GET answer)."""
    line_end = buffer.find(b"\r\n")
    if line_end < 0:
        return None
    kind, line, rest = buffer[:1], buffer[1:line_end], buffer[line_end + 2 :]
    if kind == b"+":
        return line.decode(), rest
    if kind == b"-":
        return RedisError(line.decode()), rest
    if kind == b":":
        return int(line), rest
    if kind == b"$":
        length = int(line)
        if length < 0:
            return None, rest  # a nil bulk string: GET of a missing key
        if len(rest) < length + 2:
            return None
        return rest[:length], rest[length + 2 :]
    raise ValueError(f"unexpected Redis reply {buffer[:40]!r}")


def redis_info(port: int, section: str) -> str:
    """The text of `INFO section` (a bulk string reply), or "" if the server is not up."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(resp("INFO", section))
            reader = sock.makefile("rb")
            header = reader.readline()
            if not header.startswith(b"$"):
                return ""
            return reader.read(int(header[1:]) + 2).decode()
    except OSError:
        return ""


@dataclass(frozen=True, slots=True)
class RedisRequest:
    kind: str  # "set": SET + WAIT 1, two replies; "get": GET, one reply
    key: str
    payload: bytes

    @property
    def replies(self) -> int:
        return 2 if self.kind == "set" else 1


def write_request(key: str, value: bytes) -> RedisRequest:
    return RedisRequest("set", key, resp("SET", key, value) + resp("WAIT", "1", "5000"))


def read_request(key: str) -> RedisRequest:
    return RedisRequest("get", key, resp("GET", key))


def outcome(request: RedisRequest, replies: list[RedisReply]) -> str:
    """ "ok", "missing" (a GET of no value) or "failed" for a request's replies."""
    if request.kind == "set":
        acknowledged = isinstance(replies[1], int) and replies[1] >= 1
        return "ok" if replies[0] == "OK" and acknowledged else "failed"
    if isinstance(replies[0], RedisError):
        return "failed"
    return "missing" if replies[0] is None else "ok"


@dataclass
class RedisConnection:
    """One connection with at most one request outstanding."""

    sock: socket.socket
    buffer: bytes = b""
    request: RedisRequest | None = None
    replies: list[RedisReply] = field(default_factory=list)
    sent_at: float = 0.0

    def send(self, request: RedisRequest) -> None:
        self.request, self.replies = request, []
        self.sent_at = time.perf_counter()
        self.sock.sendall(request.payload)  # a few hundred bytes into an empty send buffer

    def take(self, count: int) -> bool:
        """Takes replies from the buffer until there are `count`; whether there are."""
        while len(self.replies) < count:
            parsed = parse_reply(self.buffer)
            if parsed is None:
                return False
            reply, self.buffer = parsed
            self.replies.append(reply)
        return True


class RedisGroup:
    """A Redis master and two replicas, on loopback, without persistence."""

    def __init__(self, executable: str, log_dir: Path) -> None:
        self.port = free_port_block(3)
        self.written: list[str] = []
        self._processes: list[subprocess.Popen[bytes]] = []
        self._logs: list[IO[bytes]] = []
        for index in range(3):
            command = [
                executable, "--port", str(self.port + index), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--daemonize", "no",
                # A replica's first sync may still write an RDB file: keep it out of the
                # working directory.
                "--dir", str(log_dir),
            ]  # fmt: skip
            if index:
                command += ["--replicaof", "127.0.0.1", str(self.port)]
            log = (log_dir / f"redis-{index}.log").open("wb")
            self._logs.append(log)
            self._processes.append(subprocess.Popen(command, stdout=log, stderr=log))

    def wait_replicated(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while len(re.findall(r"slave\d+:.*state=online", redis_info(self.port, "replication"))) < 2:
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis replicas did not come online")
            time.sleep(0.05)

    def version(self) -> str:
        match = re.search(r"redis_version:(\S+)", redis_info(self.port, "server"))
        return match.group(1) if match else "?"

    def stop(self) -> None:
        for process in self._processes:
            process.terminate()
        for process in self._processes:
            process.wait(timeout=10)
        for log in self._logs:
            log.close()

    def load(self, keys: Iterable[str], value: bytes, batch: int = 1000) -> None:
        """SET every key (pipelined on one connection, `batch` at a time), then one
        WAIT 1: the records a mixed load reads and updates, on a replica too."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as sock:
            connection = RedisConnection(sock)
            pending = list(keys)
            for start in range(0, len(pending), batch):
                chunk = pending[start : start + batch]
                sock.sendall(b"".join(resp("SET", key, value) for key in chunk))
                connection.replies = []
                while not connection.take(len(chunk)):
                    connection.buffer += sock.recv(65536)
                if any(reply != "OK" for reply in connection.replies):
                    raise RuntimeError("a Redis SET of the records failed")
            sock.sendall(resp("WAIT", "1", "30000"))
            connection.replies = []
            while not connection.take(1):
                connection.buffer += sock.recv(65536)

    def drive(
        self,
        inflight: int,
        warmup: float,
        seconds: float,
        next_request: Callable[[], RedisRequest],
    ) -> Measurement:
        """`inflight` connections, each with one request of `next_request` at a time;
        replies in `seconds` after `warmup` are counted. Acknowledged SETs' keys are
        kept in `written`."""
        selector = selectors.DefaultSelector()
        connections: list[RedisConnection] = []
        for _ in range(inflight):
            sock = socket.create_connection(("127.0.0.1", self.port))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connections.append(RedisConnection(sock))
        started = time.perf_counter()
        measure_from = started + warmup
        deadline = measure_from + seconds
        for connection in connections:
            connection.send(next_request())
            connection.sock.setblocking(False)
            selector.register(connection.sock, selectors.EVENT_READ, connection)
        latencies: list[float] = []
        failed = missing = 0
        outstanding = inflight
        while outstanding:
            events = selector.select(timeout=30)
            if not events:
                raise RuntimeError(f"{outstanding} Redis requests unanswered for 30 s")
            for selected, _ in events:
                connection = selected.data
                received = connection.sock.recv(65536)
                if not received:
                    raise RuntimeError("Redis closed a connection")
                connection.buffer += received
                request = connection.request
                assert request is not None
                if not connection.take(request.replies):
                    continue
                now = time.perf_counter()
                result = outcome(request, connection.replies)
                if result == "ok" and request.kind == "set":
                    self.written.append(request.key)
                if measure_from <= now <= deadline:
                    if result == "failed":
                        failed += 1
                    else:
                        latencies.append(now - connection.sent_at)
                        missing += result == "missing"
                if now < deadline:
                    connection.send(next_request())
                else:
                    outstanding -= 1
        for connection in connections:
            selector.unregister(connection.sock)
            connection.sock.close()
        selector.close()
        return Measurement(len(latencies), failed, seconds, latencies, missing)


def new_key_writes() -> Callable[[], RedisRequest]:
    """SET + WAIT 1 of a new random key each time, 100-byte values."""
    keys = KeyMaker(random.Random())
    value = b"v" * VALUE_BYTES
    return lambda: write_request(keys(), value)


def reads_of(written: list[str], rng: random.Random) -> Callable[[], RedisRequest]:
    """GET of a key an earlier write acknowledged, chosen at random."""
    return lambda: read_request(rng.choice(written))
