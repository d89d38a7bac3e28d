"""The `kvactors` command: run a node, talk to one, or try an embedded one."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from kvactors import __version__

if TYPE_CHECKING:
    from kvactors.launcher import LocalCluster

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
    _add_keygen(commands)
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
    node.add_argument(
        "--join",
        metavar="ENDPOINT[,ENDPOINT...]",
        help="join the cluster through any of these nodes (default: found a new cluster)",
    )
    node.add_argument("--advertise", help="the endpoint clients should use, if not --bind")
    node.add_argument(
        "--peer-bind",
        metavar="ENDPOINT",
        help="endpoint of the peer plane, where only other nodes connect "
        "(default: --bind's port + 10000)",
    )
    node.add_argument(
        "--advertise-peer",
        metavar="ENDPOINT",
        help="the peer endpoint other nodes should use, if not --peer-bind",
    )
    node.add_argument("--partitions", type=int, help="number of partitions, a power of two")
    node.add_argument("--replicas", type=int, help="N: copies of each key (default 3)")
    node.add_argument("--read-quorum", type=int, help="R: replicas a read waits for (default 2)")
    node.add_argument("--write-quorum", type=int, help="W: replicas a write waits for (default 2)")
    node.add_argument("--cluster", help="the cluster's name (default kvactors)")
    node.add_argument(
        "--storage", choices=("memory", "lmdb"), help="storage backend (default memory)"
    )
    node.add_argument("--data-dir", metavar="DIR", help="where the lmdb backend keeps its files")
    node.add_argument(
        "--fsync",
        choices=("always", "interval", "never"),
        help="when durable writes are forced to disk (default always)",
    )
    node.add_argument(
        "--sync-interval-ms", type=int, help="milliseconds between syncs under --fsync interval"
    )
    node.add_argument(
        "--no-group-commit",
        dest="group_commit",
        action="store_const",
        const=False,
        help="one transaction and fsync per write batch (for comparison)",
    )
    node.add_argument(
        "--secret-key",
        metavar="FILE",
        help="this node's secret certificate (NAME.key_secret from kvactors keygen): run "
        "secure, with CURVE on both planes; needs --trust-dir",
    )
    node.add_argument(
        "--trust-dir",
        metavar="DIR",
        help="the public certificates (*.key) of the nodes and clients this node accepts; "
        "re-read on SIGHUP and every few seconds",
    )
    node.add_argument(
        "--insecure",
        action="store_const",
        const=True,
        help="bind an address other machines can reach without keys (refused otherwise)",
    )
    node.add_argument("--config", metavar="FILE", help="a TOML file of node settings")


def _add_keygen(commands: Any) -> None:
    keygen = commands.add_parser(
        "keygen",
        help="make a CURVE key pair: DIR/NAME.key (public) and DIR/NAME.key_secret",
        description="Write a new key pair for NAME: DIR/NAME.key, the public certificate "
        "to put in the trust dir of those who must trust NAME, and DIR/NAME.key_secret "
        "(mode 0600), which stays with NAME. Both record NAME and ROLE. Existing files "
        "are never overwritten.",
        epilog="example: kvactors keygen --dir keys --role node node-a",
    )
    keygen.add_argument("name", metavar="NAME", help="the node's or client's name")
    keygen.add_argument("--dir", required=True, metavar="DIR", help="where to write the files")
    keygen.add_argument(
        "--role",
        choices=("node", "read", "write", "admin"),
        default="node",
        help="node (a cluster member), or a client's read, write or admin (default node)",
    )


def _add_client_commands(commands: Any) -> None:
    specs = [
        ("get", "print the value stored under KEY (as JSON)", ["key"]),
        ("put", "store VALUE (JSON, or a plain string) under KEY", ["key", "value"]),
        ("delete", "delete KEY", ["key"]),
        ("ping", "measure a round trip to a node", []),
        ("status", "print a node's view of the cluster: members, partitions, ring balance", []),
        ("leave", "make a node leave its cluster and stop", []),
        ("remove", "take a dead or left member out of the cluster for good", ["member"]),
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
        command.add_argument(
            "--secret-key",
            metavar="FILE",
            default=os.environ.get("KVACTORS_SECRET_KEY"),
            help="this client's secret certificate, for a secure cluster "
            "(default: $KVACTORS_SECRET_KEY); needs --trust-dir",
        )
        command.add_argument(
            "--trust-dir",
            metavar="DIR",
            default=os.environ.get("KVACTORS_TRUST_DIR"),
            help="the node certificates this client trusts (default: $KVACTORS_TRUST_DIR)",
        )
        if name == "status":
            command.add_argument("--json", action="store_true", help="print the status as JSON")
            command.add_argument(
                "--plan",
                action="store_true",
                help="also show what a join of one more node, or each member's leave, "
                "would move: partitions, replica transfers and bytes",
            )
        for positional in positionals:
            command.add_argument(positional)
    cluster = commands.add_parser(
        "cluster",
        help="run a local cluster of node processes until Ctrl-C",
        description="Start NODES node processes on 127.0.0.1, ports BASE-PORT upwards, the "
        "others joining the first; print their endpoints; stop them all on Ctrl-C or SIGTERM.",
        epilog="example: kvactors cluster --nodes 3 --base-port 5555",
    )
    cluster.add_argument("--nodes", type=int, default=3, help="how many nodes (default 3)")
    cluster.add_argument("--base-port", type=int, default=5555, help="first port (default 5555)")
    cluster.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    cluster.add_argument(
        "--data-dir",
        metavar="DIR",
        help="keep each node's data durably (lmdb) in DIR/NODE-NAME (default: in memory)",
    )
    cluster.add_argument(
        "--secure",
        action="store_true",
        help="run secure: make a key pair per node and an admin client key, start the "
        "nodes with them, and print how to use the client key",
    )
    cluster.add_argument(
        "--keys-dir",
        metavar="DIR",
        help="with --secure, where the keys are made, or reused if there (default: "
        "DATA-DIR/keys with --data-dir, else a temporary directory removed at the end)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr, format=_LOG_FORMAT)
    if args.command == "node":
        return _run_node(args)
    if args.command == "selftest":
        return _selftest(args.keys)
    if args.command in ("get", "put", "delete", "ping", "status", "leave"):
        return _client_command(args)
    if args.command == "cluster":
        return _run_cluster(args)
    if args.command == "keygen":
        return _keygen(args)
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
        seeds = None if args.join is None else tuple(args.join.split(","))
        config = NodeConfig.load(
            args.config,
            name=args.name,
            bind=args.bind,
            advertise=args.advertise,
            peer_bind=args.peer_bind,
            advertise_peer=args.advertise_peer,
            seeds=seeds,
            partitions=args.partitions,
            replicas=args.replicas,
            read_quorum=args.read_quorum,
            write_quorum=args.write_quorum,
            cluster=args.cluster,
            storage=args.storage,
            data_dir=args.data_dir,
            fsync=args.fsync,
            sync_interval_ms=args.sync_interval_ms,
            group_commit=args.group_commit,
            secret_key=args.secret_key,
            trust_dir=args.trust_dir,
            insecure=args.insecure,
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
    if config.secure:
        # Re-read the trust dir now (revoking a key takes effect at once).
        signal.signal(signal.SIGHUP, lambda *_: system.reload_trust())
    # Everything built so far (thousands of actors, the ring) lives as long as the node:
    # keep the garbage collector from scanning it again and again.
    gc.freeze()
    log.info("node %s ready on %s (peers: %s)", config.name, system.endpoint, system.peer_endpoint)
    done.wait()
    # Stopping now: a second signal (Ctrl-C and a launcher's SIGTERM often both come)
    # must not cut the clean stop short.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if signals:
        log.info("received %s; stopping", signals[0])
    system.stop()
    if system.failure is not None:
        log.critical("node %s stopped on a failure: %r", config.name, system.failure)
        return 1
    return 0


def _keygen(args: argparse.Namespace) -> int:
    from kvactors.errors import ConfigError  # noqa: PLC0415 - keep `--help` fast
    from kvactors.net.certs import write_key_pair  # noqa: PLC0415

    try:
        public_path, secret_path = write_key_pair(args.dir, args.name, args.role)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(public_path)
    print(secret_path)
    return 0


def _client_command(args: argparse.Namespace) -> int:
    from kvactors.client.client import Client  # noqa: PLC0415
    from kvactors.errors import KVActorsError  # noqa: PLC0415

    try:
        with Client(
            args.endpoint,
            timeout=args.timeout,
            retries=len(args.endpoint) - 1,
            secret_key=args.secret_key,
            trust_dir=args.trust_dir,
        ) as client:
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
            elif args.command == "leave":
                client.leave()
                print(f"{client.endpoint} is leaving the cluster")
            elif args.command == "remove":
                client.remove(args.member)
                print(f"{args.member} is removed from the cluster")
            elif args.json:
                print(json.dumps(client.status(), indent=2, default=_bytes_to_text))
            else:
                status = client.status()
                print(format_status(status))
                if args.plan:
                    print("\n".join(["", *format_plan(status)]))
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


def format_status(status: dict[str, Any]) -> str:
    """A node's status as a table a person reads at a glance."""
    rows = [("NAME", "ENDPOINT", "STATUS", "INCARNATION", "PARTITIONS")]
    rows += [
        (m["name"], m["endpoint"], m["status"], str(m["incarnation"]), str(m["partitions"]))
        for m in status.get("members", [])
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    ring = status.get("ring", {})
    lines.append("")
    lines.append(
        f"as seen by {status.get('node')}: {status.get('partitions')} partitions over "
        f"{ring.get('owners')} owning members; ring balance {ring.get('balance')} "
        "(busiest member's partitions / average)"
    )
    lines += _recovery_lines(status)
    return "\n".join(line.rstrip() for line in lines)


def format_plan(status: dict[str, Any]) -> list[str]:
    """What one more node, or each owning member's leave, would move: planned here from
    the status (members, partitions, replicas) with the node's own ring rules, so asking
    costs the node nothing. Bytes are estimated from what the node asked stores."""
    from kvactors.core.handoff import plan_change  # noqa: PLC0415 - keep --help fast

    partitions = int(status["partitions"])
    replication = status.get("replication", {})
    replicas = int(replication.get("replicas", replication.get("n", 3)))
    owners = [m["name"] for m in status["members"] if m["status"] not in ("dead", "left")]
    storage = status.get("storage") or {}
    per_replica = int(storage.get("bytes", 0)) / max(1, _replicated_here(status, owners))

    def line(change: str, after: list[str]) -> str:
        plan = plan_change(owners, after, partitions=partitions, replicas=replicas)
        transfers = len(plan.transfers)
        return (
            f"  {change}: {plan.partitions_moving} partitions, {transfers} replica transfers, "
            f"about {_human_bytes(transfers * per_replica)}"
        )

    newcomer = _unused_name(owners)
    lines = [
        "plan (what would move):",
        line(f"one more node ({newcomer}) joins", [*owners, newcomer]),
    ]
    lines += [
        line(f"{name} leaves", [other for other in owners if other != name])
        for name in owners
        if len(owners) > 1
    ]
    return lines


def _replicated_here(status: dict[str, Any], owners: list[str]) -> int:
    """About how many partitions the node asked holds a replica of."""
    n = min(int(status.get("replication", {}).get("n", 1)), max(1, len(owners)))
    return max(1, int(status["partitions"]) * n // max(1, len(owners)))


def _unused_name(names: list[str]) -> str:
    number = len(names) + 1
    while f"node-{number}" in names:
        number += 1
    return f"node-{number}"


def _human_bytes(count: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:,.0f} {unit}" if unit == "bytes" else f"{count:,.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def _recovery_lines(status: dict[str, Any]) -> list[str]:
    """Storage, hints and anti-entropy, each when the node reports it."""
    lines = []
    storage = status.get("storage")
    if isinstance(storage, dict):
        lines.append(f"storage: {storage.get('backend')}, {storage.get('keys')} keys stored")
    hints = status.get("hints")
    if isinstance(hints, dict):
        pending = hints.get("pending") or {}
        waiting = ", ".join(f"{name} {count}" for name, count in pending.items()) or "none"
        lines.append(
            f"hints pending: {waiting}; delivered {hints.get('delivered')}, "
            f"dropped {hints.get('dropped')}"
        )
    handoff = status.get("handoff")
    if isinstance(handoff, dict):
        lines.append(
            f"leaving, handing over: {handoff.get('done')} of {handoff.get('transfers')} "
            f"partition transfers done, {handoff.get('waiting')} waiting, "
            f"{handoff.get('keys_sent')} keys sent"
        )
        me = status.get("node")
        lines += [
            f"  partition {t['partition']} from {me} to {t['to']}: {t['keys_sent']} of "
            f"{t['keys']} keys, {_human_bytes(t['bytes_sent'])}, "
            f"{t['keys_per_second']} keys/s, ETA {t['eta_seconds']} s"
            for t in handoff.get("running", [])
        ]
    lines += _join_lines(status)
    entropy = status.get("anti_entropy")
    if isinstance(entropy, dict):
        lines.append(
            f"anti-entropy: {entropy.get('exchanges')} exchanges, "
            f"{entropy.get('keys_repaired')} keys repaired, "
            f"{entropy.get('keys_deferred')} deferred"
        )
    return lines


def _join_lines(status: dict[str, Any]) -> list[str]:
    """A joining node's pulls, and the copies a node dropped after a switch."""
    lines = []
    join = status.get("join")
    if isinstance(join, dict) and join.get("partitions"):
        state = "owner now" if join.get("caught_up") else "next owner"
        lines.append(
            f"joined ({state}): {join.get('done')} of {join.get('partitions')} partitions "
            f"pulled, {join.get('waiting')} waiting, {join.get('keys_received')} keys "
            f"({_human_bytes(join.get('bytes_received') or 0)}) received, catch-up rounds "
            f"{join.get('catch_up_rounds')}"
        )
        lines += [
            f"  partition {t['partition']} from {t['from']} to {t['to']}: "
            f"{t['keys_sent']} keys, {_human_bytes(t['bytes_sent'])}, "
            f"{t['keys_per_second']} keys/s, ETA {t['eta_seconds']} s"
            for t in join.get("running", [])
        ]
    dropped = status.get("dropped")
    if isinstance(dropped, dict) and dropped.get("keys"):
        lines.append(
            f"dropped copies no longer replicated here: {dropped['keys']} keys "
            f"of {dropped['partitions']} partitions"
        )
    return lines


def _run_cluster(args: argparse.Namespace) -> int:
    import tempfile  # noqa: PLC0415 - keep `--help` fast

    from kvactors.errors import KVActorsError  # noqa: PLC0415
    from kvactors.launcher import LocalCluster  # noqa: PLC0415

    log = logging.getLogger("kvactors.cluster")
    done = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: done.set())
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    with tempfile.TemporaryDirectory(prefix="kvactors-keys-") as scratch:
        keys_dir = _cluster_keys_dir(args, scratch)
        try:
            cluster = LocalCluster(
                args.nodes,
                base_port=args.base_port,
                host=args.host,
                data_dir=args.data_dir,
                keys_dir=keys_dir,
            )
        except KVActorsError as exc:
            log.error("cannot start: %s", exc)
            return 2
        with cluster:
            for node in cluster.nodes:
                print(f"{node.name}  {node.endpoint}  (pid {node.pid})", flush=True)
            if cluster.keys is not None:
                print(_secure_cluster_help(cluster), flush=True)
            print(f"{args.nodes} nodes running; Ctrl-C stops them all", flush=True)
            while not done.wait(0.5):
                failed = cluster.failed()
                if failed:
                    log.error("node %s failed; stopping the others", failed[0])
                    return 1
                if len(cluster.exited()) == len(cluster.nodes):
                    log.info("every node has left")
                    return 0
    return 0


def _cluster_keys_dir(args: argparse.Namespace, scratch: str) -> str | None:
    """Where `kvactors cluster` keeps its keys: None unless --secure."""
    if not args.secure:
        return None
    if args.keys_dir is not None:
        return str(args.keys_dir)
    if args.data_dir is not None:
        return os.path.join(args.data_dir, "keys")
    return scratch


def _secure_cluster_help(cluster: LocalCluster) -> str:
    """Where a secure local cluster's client keys are, and a command that uses them."""
    keys = cluster.keys
    assert keys is not None
    secret, trust = keys.secret_key("admin"), keys.trust_dir
    return "\n".join(
        [
            f"secure: keys in {keys.directory}",
            f"  admin client key: {secret}",
            f"  trust dir:        {trust}",
            "  try:",
            f"    kvactors status -e {cluster.endpoints[0]} --secret-key {secret} "
            f"--trust-dir {trust}",
            f"  or: export KVACTORS_SECRET_KEY={secret} KVACTORS_TRUST_DIR={trust}",
            f"  more client keys: kvactors keygen --dir {keys.secrets} --role read NAME, "
            f"then copy {keys.secrets}/NAME.key into {trust}",
        ]
    )
