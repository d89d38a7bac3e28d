"""The `kvactors` command: run a node, talk to one, or try an embedded one."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from kvactors import __version__

__all__ = ["main"]

_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_EXAMPLE_ENDPOINT = "tcp://127.0.0.1:5555"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kvactors",
        description="kvactors: a Dynamo-style distributed key-value store.",
    )
    parser.add_argument("--version", action="version", version=f"kvactors {__version__}")
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="level of the log lines written to stderr (default: INFO)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_node(commands)
    _add_client_commands(commands)
    selftest = commands.add_parser(
        "selftest",
        help="start an embedded node, write and read back some keys, and stop",
        description="Start an embedded node on the defaults, store and read back "
        "KEYS keys through system.client, print the figures and stop.",
    )
    selftest.add_argument("--keys", type=int, default=1000, help="how many keys (default 1000)")
    return parser


def _add_node(commands: Any) -> None:
    node = commands.add_parser(
        "node",
        help="run a node in the foreground",
        description="Run a kvactors node in the foreground until SIGINT or SIGTERM. "
        "Settings come from --config, then KVACTORS_* environment variables, then flags.",
        epilog=f"example: kvactors node --name a --bind {_EXAMPLE_ENDPOINT}",
    )
    node.add_argument("--name", help="unique name of the node (default: random)")
    node.add_argument("--bind", help=f"endpoint to serve on, e.g. {_EXAMPLE_ENDPOINT}")
    node.add_argument("--partitions", type=int, help="number of partitions, a power of two")
    node.add_argument("--config", metavar="FILE", help="a TOML file of node settings")


def _add_client_commands(commands: Any) -> None:
    specs = [
        ("get", "print the value stored under KEY (as JSON)", ["key"]),
        ("put", "store VALUE (JSON, or a plain string) under KEY", ["key", "value"]),
        ("delete", "delete KEY", ["key"]),
        ("ping", "measure a round trip to a node", []),
        ("status", "print a node's status as JSON", []),
    ]
    for name, summary, positionals in specs:
        command = commands.add_parser(
            name,
            help=summary,
            description=f"{summary[0].upper()}{summary[1:]}.",
            epilog=f"example: kvactors {name} -e {_EXAMPLE_ENDPOINT}"
            + "".join(f" {p.upper()}" for p in positionals),
        )
        command.add_argument(
            "-e",
            "--endpoint",
            action="append",
            required=True,
            help="a node's endpoint; repeat to give fallbacks",
        )
        command.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")
        for positional in positionals:
            command.add_argument(positional)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr, format=_LOG_FORMAT)
    if args.command == "node":
        return _run_node(args)
    if args.command == "selftest":
        return _selftest(args.keys)
    if args.command in ("get", "put", "delete", "ping", "status"):
        return _client_command(args)
    parser.print_help()
    return 0


def _run_node(args: argparse.Namespace) -> int:
    from kvactors.config import NodeConfig  # noqa: PLC0415 - keep `--help` fast
    from kvactors.errors import KVActorsError  # noqa: PLC0415
    from kvactors.system import ActorSystem  # noqa: PLC0415

    log = logging.getLogger("kvactors.node")
    done = threading.Event()
    signals: list[str] = []

    def on_signal(number: int, _frame: object) -> None:
        signals.append(signal.Signals(number).name)
        done.set()

    # Before the node starts: it answers requests as soon as its transport is up, and a
    # signal sent from then on must stop it cleanly, not kill it with the default action.
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        config = NodeConfig.load(
            args.config, name=args.name, bind=args.bind, partitions=args.partitions
        )
        if config.bind is None:
            raise KVActorsError("a node needs an endpoint: give --bind or KVACTORS_BIND")
        system = ActorSystem(config).start()
    except KVActorsError as exc:
        log.error("cannot start: %s", exc)
        return 2

    def watch_for_failure() -> None:
        system.wait()
        done.set()

    threading.Thread(target=watch_for_failure, daemon=True).start()
    log.info("node %s ready on %s", config.name, system.endpoint)
    done.wait()
    if signals:
        log.info("received %s; stopping", signals[0])
    system.stop()
    if system.failure is not None:
        log.critical("node %s stopped on a failure: %r", config.name, system.failure)
        return 1
    return 0


def _client_command(args: argparse.Namespace) -> int:
    from kvactors.api.client import Client  # noqa: PLC0415
    from kvactors.errors import KVActorsError  # noqa: PLC0415

    try:
        with Client(args.endpoint, timeout=args.timeout, retries=len(args.endpoint) - 1) as client:
            if args.command == "get":
                missing = object()
                value = client.get(args.key, missing)
                if value is missing:
                    print(f"(not found: {args.key})", file=sys.stderr)
                    return 1
                print(json.dumps(value, default=_bytes_to_text))
            elif args.command == "put":
                client.put(args.key, _parse_value(args.value))
                print("OK")
            elif args.command == "delete":
                print("deleted" if client.delete(args.key) else "(was not there)")
            elif args.command == "ping":
                # Ping first: on a fallback, the endpoint that answered is known only after.
                round_trip = client.ping()
                print(f"pong from {client.endpoint} in {round_trip * 1000:.2f} ms")
            else:
                print(json.dumps(client.status(), indent=2, default=_bytes_to_text))
    except KVActorsError as exc:
        print(f"error ({exc.code}): {exc}", file=sys.stderr)
        return 1
    return 0


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _bytes_to_text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _selftest(keys: int) -> int:
    from kvactors.system import ActorSystem  # noqa: PLC0415

    with ActorSystem() as system:
        started = time.perf_counter()
        system.client.put_many({f"selftest:{i}": i for i in range(keys)})
        found = system.client.get_many([f"selftest:{i}" for i in range(keys)])
        elapsed = time.perf_counter() - started
    wrong = sum(1 for i in range(keys) if found.get(f"selftest:{i}") != i)
    print(f"node {system.name}: wrote and read back {keys} keys in {elapsed:.3f}s, {wrong} wrong")
    return 1 if wrong else 0
