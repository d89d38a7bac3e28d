"""The `kvactors` command."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from kvactors import __version__

__all__ = ["main"]

_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


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
        help="log level for messages on stderr (default: INFO)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    selftest = commands.add_parser(
        "selftest",
        help="start an embedded node, write and read back some keys, and stop",
        description="Start an embedded node on the defaults, store and read back "
        "KEYS keys through system.client, print the figures and stop.",
    )
    selftest.add_argument("--keys", type=int, default=1000, help="how many keys (default 1000)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "selftest":
        return _selftest(args.keys)
    parser.print_help()
    return 0


def _selftest(keys: int) -> int:
    import time  # noqa: PLC0415

    from kvactors.system import ActorSystem  # noqa: PLC0415

    with ActorSystem() as system:
        started = time.perf_counter()
        system.client.put_many({f"selftest:{i}": i for i in range(keys)})
        found = system.client.get_many([f"selftest:{i}" for i in range(keys)])
        elapsed = time.perf_counter() - started
    wrong = sum(1 for i in range(keys) if found.get(f"selftest:{i}") != i)
    print(f"node {system.name}: wrote and read back {keys} keys in {elapsed:.3f}s, {wrong} wrong")
    return 1 if wrong else 0
