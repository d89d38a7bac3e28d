"""NodeConfig: every setting of a node in one frozen dataclass.

A config comes from keyword arguments, a TOML file, `KVACTORS_*` environment variables
and command-line flags; later sources override earlier ones (file < env < flags).
Values are checked once, here, so a bad setting fails before anything starts.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvactors.errors import ConfigError

__all__ = ["NodeConfig", "is_loopback"]

_ENV_PREFIX = "KVACTORS_"
_STORAGE_KINDS = ("memory", "lmdb")
_FSYNC_POLICIES = ("always", "interval", "never")


def _default_name() -> str:
    return f"node-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """Settings of one kvactors node. See docs/configuration.md for each field."""

    name: str = field(default_factory=_default_name)
    """Unique name of the node in its cluster; its identity across restarts."""

    bind: str | None = None
    """ZeroMQ endpoint the node serves on, e.g. ``tcp://127.0.0.1:5555``; None: embedded only."""

    advertise: str | None = None
    """The endpoint peers and clients should use, when it differs from `bind`
    (e.g. bind ``tcp://0.0.0.0:5555``, advertise ``tcp://10.0.0.7:5555``)."""

    peer_bind: str | None = None
    """ZeroMQ endpoint of the node's peer plane, where only other nodes connect (replica
    operations, anti-entropy, handoff, gossip); by default `bind`'s port + 10,000 (port
    0 stays 0: any free port)."""

    advertise_peer: str | None = None
    """The peer endpoint other nodes should use, when it differs from the peer bind; by
    default `advertise`'s host with the peer port."""

    seeds: tuple[str, ...] = ()
    """Endpoints of nodes to join the cluster through; none: found a new cluster."""

    partitions: int = 2048
    """Q: number of partitions, a power of two, fixed when the cluster is created. Every
    node of a cluster must use the same Q."""

    replicas: int = 3
    """N: copies of each key, on N distinct nodes (capped at the cluster's size)."""

    read_quorum: int = 2
    """R: replicas that must answer a read (capped at N); a request may ask for its own `r`."""

    write_quorum: int = 2
    """W: replicas that must hold a write before it is acknowledged (capped at N); a
    request may ask for its own `w`."""

    tombstone_grace: float = 600.0
    """Seconds a deleted key's tombstone is kept, so that replicas which missed the delete
    learn it instead of bringing the value back."""

    anti_entropy_interval: float = 2.0
    """Seconds between anti-entropy exchanges (each with one peer, in turn); 0 turns
    anti-entropy off."""

    anti_entropy_max_keys: int = 5000
    """Most keys one anti-entropy exchange repairs; the rest wait for the next one. With
    `anti_entropy_interval` it bounds the repair rate (2,500 keys a second per exchanging
    pair by default)."""

    hinted_handoff: bool = True
    """Keep hints for replicas that miss writes (dead, or not answering) and hand the keys
    over when they are back."""

    hint_max_age: float = 10800.0
    """Seconds a hint is kept before it is dropped (anti-entropy repairs what it would
    have); three hours."""

    hint_max_bytes: int = 64 * 1024 * 1024
    """Size bound of the hints a node keeps (keys and target names); hints past it are
    dropped and counted."""

    handoff_concurrency: int = 16
    """Transfers at once: a leaving node streams this many partitions at a time; a joining
    node keeps this many pull calls open (each for up to 64 partitions and 1,000 keys)."""

    handoff_rate: float = 4000.0
    """Most keys a second a joining node pulls (0: as fast as it can). The bound keeps
    the transfer from taking the machine from the clients, at the cost of a longer join
    (benchmarks/rebalance.py: unbounded, 100,000 keys moved in 5.7 s while the clients
    got 0.28 of their rate before; at 4,000 a second, 23.7 s and 0.68)."""

    join_handoff: bool = True
    """A node new to the cluster pulls every partition it will replicate before it owns
    any (it is their next owner meanwhile, and takes their writes). Off: it owns its share
    at once, empty, and anti-entropy and read repair fill it."""

    handoff_drop_delay: float = 10.0
    """Seconds the cluster must stay settled (nobody joining, leaving, suspect or dead)
    before a node drops the copies of partitions it no longer replicates (never while it
    has hints to deliver: their delivery reads those copies); negative: keep them."""

    gossip_interval: float = 0.25
    """Seconds between gossip rounds."""

    suspect_timeout: float = 3.0
    """Seconds without a heartbeat before a member is suspect."""

    dead_timeout: float = 7.5
    """Seconds without a heartbeat before a member is dead (from the same moment)."""

    cluster: str = "kvactors"
    """The cluster's name. A durable node remembers it in its data directory and refuses
    to start on a directory written for another cluster."""

    storage: str = "memory"
    """Storage backend: ``memory`` (lost when the process ends) or ``lmdb`` (durable, under
    `data_dir`)."""

    data_dir: str | None = None
    """Directory of a durable backend's files (required for ``lmdb``)."""

    fsync: str = "always"
    """When a durable backend forces writes to disk: ``always`` (before acknowledging
    them), ``interval`` (every `sync_interval_ms`; a machine crash may lose the writes
    acknowledged in the last interval) or ``never`` (the operating system decides)."""

    sync_interval_ms: int = 100
    """Milliseconds between forced writes under ``fsync = "interval"``."""

    group_commit: bool = True
    """Force the writes of one pass of the request loop to disk together, with one fsync,
    before any of them is acknowledged. Off: one transaction and fsync per write batch
    (slower; for comparison)."""

    max_key_bytes: int = 64 * 1024
    """Largest key accepted, in bytes (UTF-8 for str keys)."""

    max_value_bytes: int = 1024 * 1024
    """Largest value accepted, in bytes of its msgpack encoding."""

    max_siblings: int = 100
    """Most concurrent values (siblings) a client write may leave on a key. A write that
    would leave more is refused with ``bad_request``; the key stays readable, and a write
    with the context of a read resolves it. Merges between replicas are never refused."""

    max_state_bytes: int = 4 * 1024 * 1024
    """Largest stored state of one key (every sibling, its context and tombstones), in
    bytes. A client write that would grow a key past it is refused with ``bad_request``;
    merges between replicas are never refused."""

    max_clock_skew: float = 60.0
    """Seconds a clock stamp from outside may run ahead of this node's clock. A context or
    a replica's state stamped further in the future is refused: a stamp near the end of
    time would leave the key unwritable."""

    request_timeout: float = 5.0
    """Seconds a client request may take before it fails with ``timeout``."""

    max_inflight: int = 10_000
    """Network requests in flight before new ones are answered ``overloaded``."""

    max_inflight_per_connection: int = 128
    """Requests in flight from one client connection before its new ones are answered
    ``overloaded``: one connection cannot take the whole of `max_inflight`, nor make the
    node hold more than this many values at once while they are served. Twice what it
    takes to keep a node busy (benchmarks pipeline 64)."""

    max_reply_backlog_bytes: int = 16 * 1024 * 1024
    """Bytes of replies the node holds for one client connection that does not read
    them (its ZeroMQ queue full). A reply past it is dropped and counted, and that
    connection's requests are refused ``overloaded`` until it has read what is held."""

    max_restarts: int = 10
    """Restart intensity: more than this many restarts ..."""

    max_seconds: float = 5.0
    """... within this many seconds and a supervisor gives up and escalates."""

    secret_key: str | None = None
    """Path of this node's own secret certificate (``NAME.key_secret``, as ``kvactors
    keygen`` writes it; its name must be the node's). With `trust_dir`, the node runs
    secure: CURVE on both planes, every key checked against the trust directory."""

    trust_dir: str | None = None
    """Directory of the public certificates (``*.key``) this node trusts: the other
    nodes' and its clients'. Re-read on SIGHUP and every few seconds."""

    insecure: bool = False
    """Bind a non-loopback address without keys (protected mode refuses to otherwise):
    anyone who reaches the node's ports can then read, write and join."""

    def __post_init__(self) -> None:
        # A TOML list or an env var's parts arrive as a list; the frozen config keeps a tuple.
        object.__setattr__(self, "seeds", tuple(self.seeds))
        _check(bool(self.name) and self.name.isprintable(), "name must be a non-empty string")
        _check(
            self.partitions > 0 and self.partitions & (self.partitions - 1) == 0,
            f"partitions must be a power of two, got {self.partitions}",
        )
        _check(
            self.storage in _STORAGE_KINDS,
            f"storage must be one of {', '.join(_STORAGE_KINDS)}, got {self.storage!r}",
        )
        _check(
            self.fsync in _FSYNC_POLICIES,
            f"fsync must be one of {', '.join(_FSYNC_POLICIES)}, got {self.fsync!r}",
        )
        _check(self.sync_interval_ms > 0, "sync_interval_ms must be positive")
        _check(
            self.storage != "lmdb" or bool(self.data_dir),
            "storage lmdb needs a data directory: give data_dir (--data-dir)",
        )
        _check(bool(self.cluster) and self.cluster.isprintable(), "cluster must be a name")
        _check(self.anti_entropy_interval >= 0, "anti_entropy_interval must be zero or more")
        _check(self.anti_entropy_max_keys > 0, "anti_entropy_max_keys must be positive")
        _check(self.hint_max_age > 0, "hint_max_age must be positive")
        _check(self.hint_max_bytes > 0, "hint_max_bytes must be positive")
        _check(self.handoff_concurrency > 0, "handoff_concurrency must be positive")
        _check(self.replicas >= 1, "replicas must be at least 1")
        _check(
            1 <= self.read_quorum <= self.replicas and 1 <= self.write_quorum <= self.replicas,
            "read_quorum and write_quorum must be between 1 and replicas",
        )
        _check(self.tombstone_grace >= 0, "tombstone_grace must be zero or more")
        _check(self.max_key_bytes > 0, "max_key_bytes must be positive")
        _check(self.max_value_bytes > 0, "max_value_bytes must be positive")
        _check(self.max_siblings >= 1, "max_siblings must be at least 1")
        _check(self.max_state_bytes > 0, "max_state_bytes must be positive")
        _check(self.max_clock_skew > 0, "max_clock_skew must be positive")
        _check(self.request_timeout > 0, "request_timeout must be positive")
        _check(self.max_inflight > 0, "max_inflight must be positive")
        _check(self.max_inflight_per_connection > 0, "max_inflight_per_connection must be positive")
        _check(self.max_reply_backlog_bytes > 0, "max_reply_backlog_bytes must be positive")
        _check(self.max_restarts >= 0, "max_restarts must be zero or more")
        _check(self.gossip_interval > 0, "gossip_interval must be positive")
        _check(
            self.gossip_interval < self.suspect_timeout < self.dead_timeout,
            "timeouts must grow: gossip_interval < suspect_timeout < dead_timeout",
        )
        _check(
            all(isinstance(seed, str) and seed for seed in self.seeds),
            "seeds must be endpoints",
        )
        _check(
            not (self.seeds and self.advertise is None and _is_wildcard(self.bind)),
            "a node that binds every interface must say how peers reach it: give advertise",
        )
        _check(self.max_seconds > 0, "max_seconds must be positive")
        _check(
            (self.secret_key is None) == (self.trust_dir is None),
            "secret_key and trust_dir go together: a secure node needs its own key "
            "(--secret-key) and the keys it trusts (--trust-dir)",
        )
        _check(
            not (
                self.seeds
                and self.advertise is None
                and self.advertise_peer is None
                and _is_wildcard(self.peer_bind)
            ),
            "a node whose peer plane binds every interface must say how peers reach it: "
            "give advertise or advertise_peer",
        )
        if self.bind is not None:
            _check(
                self.peer_bind_endpoint != self.bind or self.bind.endswith(":0"),
                "peer_bind must differ from bind",
            )

    @property
    def endpoint(self) -> str:
        """The endpoint this node is known by: `advertise`, else `bind`, else a local name."""
        return self.advertise or self.bind or f"inproc://{self.name}"

    @property
    def peer_bind_endpoint(self) -> str | None:
        """Where the peer plane binds: `peer_bind`, else `bind`'s port + 10,000 (None
        without `bind`)."""
        if self.peer_bind is not None:
            return self.peer_bind
        return None if self.bind is None else peer_bind_for(self.bind)

    @property
    def peer_endpoint(self) -> str:
        """The endpoint other nodes reach this node's peer plane at: `advertise_peer`,
        else `advertise`'s host with the peer port, else the peer bind."""
        if self.advertise_peer is not None:
            return self.advertise_peer
        bind = self.peer_bind_endpoint
        if bind is None:
            return f"inproc://{self.name}-peer"
        if self.advertise is not None:
            return with_port(self.advertise, port_of(bind))
        return bind

    @property
    def secure(self) -> bool:
        """Whether the node runs with CURVE keys (`secret_key` and `trust_dir`)."""
        return self.secret_key is not None

    def unprotected_binds(self) -> list[str]:
        """The endpoints this node would bind on a non-loopback address without keys
        (protected mode refuses to start then, unless `insecure`)."""
        if self.secure or self.insecure or self.bind is None:
            return []
        binds = [self.bind, self.peer_bind_endpoint or self.bind]
        return [bind for bind in dict.fromkeys(binds) if not is_loopback(bind)]

    def replace(self, **changes: Any) -> NodeConfig:
        """A copy with some fields changed (checked again)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def load(
        cls,
        toml_path: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> NodeConfig:
        """Build a config from a TOML file, then `KVACTORS_*` variables, then `overrides`.

        Overrides whose value is None are ignored, so CLI flags that were not given
        do not mask the file or the environment.
        """
        values: dict[str, Any] = {}
        if toml_path is not None:
            values.update(_from_toml(Path(toml_path)))
        values.update(_from_env(os.environ if env is None else env))
        values.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(values) - _field_types().keys()
        _check(not unknown, f"unknown config fields: {', '.join(sorted(unknown))}")
        return cls(**values)


def port_of(endpoint: str) -> str:
    """The port of a ``tcp://host:port`` endpoint (``*`` or digits)."""
    return endpoint.rpartition(":")[2]


def with_port(endpoint: str, port: str) -> str:
    """`endpoint` with another port: ``tcp://host:5555`` -> ``tcp://host:PORT``."""
    return f"{endpoint.rpartition(':')[0]}:{port}"


PEER_PORT_OFFSET = 10_000
"""The default peer port is the client port plus this: 5555 serves clients, 15555 peers.
(Not + 1: nodes on consecutive client ports, as in a local cluster, would collide.)"""


def peer_bind_for(endpoint: str) -> str:
    """The default peer bind of a client `endpoint`: its port + PEER_PORT_OFFSET (port 0
    or * stays: any free port); an endpoint that is not ``tcp://`` gets ``-peer``
    appended (``ipc://node`` -> ``ipc://node-peer``)."""
    if not endpoint.startswith("tcp://"):
        return endpoint + "-peer"
    port = port_of(endpoint)
    if port in ("*", "0"):
        return endpoint
    if not port.isdigit() or int(port) + PEER_PORT_OFFSET > 65535:
        raise ConfigError(
            f"cannot derive a peer endpoint from {endpoint!r} (its port + "
            f"{PEER_PORT_OFFSET}): give peer_bind (--peer-bind)"
        )
    return with_port(endpoint, str(int(port) + PEER_PORT_OFFSET))


_LOOPBACK_NAMES = ("localhost", "ip6-localhost")


def is_loopback(endpoint: str) -> bool:
    """Whether `endpoint` can be reached from this machine only: ``ipc://``,
    ``inproc://``, or ``tcp://`` on 127.0.0.0/8, ``::1`` or localhost. A wildcard
    (``*``, ``0.0.0.0``), another address or a host name is not."""
    scheme, _, rest = endpoint.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp":
        return False
    host = rest.rpartition(":")[0]
    host = host.strip("[]").lower()
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # an interface name or a host name: it may face the network


def _is_wildcard(bind: str | None) -> bool:
    return bind is not None and ("*" in bind or "0.0.0.0" in bind or "[::]" in bind)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _field_types() -> dict[str, str]:
    # Annotations are strings under `from __future__ import annotations`.
    return {f.name: str(f.type) for f in dataclasses.fields(NodeConfig)}


def _from_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            data = tomllib.load(file)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    # Accept either top-level keys or a [node] table.
    table = data.get("node", data)
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [node] must be a table")
    return {key.replace("-", "_"): value for key, value in table.items()}


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    types = _field_types()
    values: dict[str, Any] = {}
    for key, raw in env.items():
        if not key.startswith(_ENV_PREFIX):
            continue
        name = key[len(_ENV_PREFIX) :].lower()
        if name in types:
            values[name] = _parse(name, types[name], raw)
    return values


def _parse_bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {raw!r}")


def _parse(name: str, type_name: str, raw: str) -> Any:
    try:
        if type_name.startswith("int"):
            return int(raw)
        if type_name.startswith("float"):
            return float(raw)
        if type_name.startswith("bool"):
            return _parse_bool(raw)
        if type_name.startswith("tuple"):
            return tuple(part.strip() for part in raw.split(",") if part.strip())
    except ValueError as exc:
        raise ConfigError(f"{_ENV_PREFIX}{name.upper()}: {exc}") from exc
    return raw
