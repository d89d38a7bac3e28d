"""ActorSystem: one kvactors node, the seed's Application.

It builds the node's supervision tree and starts it in the seed's order, stopping it in
reverse. Components that do not exist yet in this version are simply absent from the
order; the root supervisor uses `rest_for_one`, so a crash of an early component
(the storage) restarts everything that depends on it.

    with ActorSystem() as system:
        system.client.put("user:1", {"name": "Ada"})
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Mapping
from concurrent.futures import Future
from types import TracebackType
from typing import Any, Self

import pykka

from kvactors.client.local_client import LocalClient
from kvactors.cluster.gossip_protocol import GossipProtocol
from kvactors.cluster.membership_manager import MembershipManager, Subscribe
from kvactors.cluster.responsibility_manager import ResponsibilityManager
from kvactors.config import NodeConfig
from kvactors.core.hashtree import PartitionTrees
from kvactors.core.membership import Leave, Member, MemberStatus
from kvactors.core.placement import RingHolder, RingSnapshot, build_snapshot
from kvactors.errors import ConfigError, KVActorsError, UnavailableError
from kvactors.net.rpc import PeerNetwork
from kvactors.node.request_handler import RequestHandler
from kvactors.node.security import NodeSecurity
from kvactors.node.services import NodeServices
from kvactors.runtime.dispatch import NodeDispatcher
from kvactors.runtime.supervision import (
    ChildExited,
    ChildSpec,
    ExitReason,
    Strategy,
    Supervisor,
    start_supervised,
)
from kvactors.storage.backends import open_backend
from kvactors.storage.replica import ReplicaLimits
from kvactors.storage.store_supervisor import PartitionDirectory, StoreSupervisor
from kvactors.storage.tables import NodeIdentity, StorageBackend

__all__ = ["ActorSystem"]

logger = logging.getLogger(__name__)


class ActorSystem:
    """A kvactors node embedded in this process.

    `ActorSystem()` runs a single node on the defaults; pass a `NodeConfig` (or its
    fields as keywords) to change them. Use it as a context manager, or call `start()`
    and `stop()`.
    """

    def __init__(self, config: NodeConfig | None = None, **overrides: Any) -> None:
        base = config if config is not None else NodeConfig()
        self.config = _with_concrete_port(base.replace(**overrides) if overrides else base)
        self._root: pykka.ActorRef[Any] | None = None
        self._backend: StorageBackend | None = None
        self._remembered: NodeIdentity | None = None
        self._directory = PartitionDirectory(self.config.partitions)
        me = _member(self.config, _first_status(self.config), 0)
        self._services = NodeServices(
            config=self.config,
            directory=self._directory,
            dispatcher=NodeDispatcher(name=f"{self.config.name}-dispatcher"),
            network=PeerNetwork(),
            ring=RingHolder(
                build_snapshot(0, me, [me], self.config.partitions, self.config.replicas)
            ),
            stop_node=self._stop_soon,
        )
        if self.config.bind is not None and (
            self.config.anti_entropy_interval > 0 or self.config.join_handoff
        ):
            # Trees only where anti-entropy can run: a node on the network (a joining
            # node's catch-up uses them even with periodic anti-entropy off).
            self._services.trees = PartitionTrees(self.config.partitions)
        self._client = LocalClient(self._services)
        self._stopped = threading.Event()
        self._failure: BaseException | None = None
        self._lock = threading.Lock()
        self._stopper: threading.Thread | None = None  # see `_stop_soon`

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def client(self) -> LocalClient:
        """get/put/delete (and batches) on this node; usable from any thread."""
        return self._client

    @property
    def running(self) -> bool:
        return self._root is not None and self._root.is_alive()

    @property
    def failure(self) -> BaseException | None:
        """Why the node stopped on its own (its root supervisor gave up), else None."""
        return self._failure

    def start(self) -> Self:
        """Start the supervision tree; returns once every component is up."""
        with self._lock:
            if self._root is not None:
                raise KVActorsError(f"node {self.name} is started already")
            self._stopped.clear()
            self._failure = None
            self._services.gossip_state = None  # a new start is a new life
            refuse_unprotected(self.config)
            self._services.security = NodeSecurity.load(self.config, self._services.ring)
            self._backend = self._open_storage()
            children = self._components(self._backend)
            try:
                self._root = start_supervised(
                    lambda: Supervisor.start(
                        children,
                        strategy=Strategy.REST_FOR_ONE,
                        max_restarts=self.config.max_restarts,
                        max_seconds=self.config.max_seconds,
                        name=f"{self.name}/root",
                    ),
                    self._root_exited,
                    name=f"{self.name}/root",
                )
            except BaseException:
                # The tree has stopped what it had started; what it ran on goes too.
                self._release()
                raise
        logger.info("node %s started (%d partitions)", self.name, self.config.partitions)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop every component in reverse start order. Safe to call twice."""
        with self._lock:
            root, self._root = self._root, None
            if root is not None:
                root.stop(block=True, timeout=timeout)
                logger.info("node %s stopped", self.name)
            self._release()
        self._stopped.set()
        stopper = self._stopper
        if stopper is not None and stopper is not threading.current_thread():
            stopper.join(timeout)  # it has only to return: no thread outlives the node

    def _release(self) -> None:
        """Close the storage and end the dispatcher's threads, once no actor runs."""
        try:
            if self._backend is not None:
                self._backend.close()
                self._backend = None
        finally:
            self._services.dispatcher.stop()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the node has stopped (by `stop()` or a failure); False on timeout."""
        return self._stopped.wait(timeout)

    def reload_trust(self) -> bool:
        """Re-read a secure node's trust directory now (the node also does every few
        seconds, and on SIGHUP); whether anything changed. False for an insecure node.
        A key whose certificate is gone loses its open connections' rights at once."""
        security = self._services.security
        return security is not None and security.reload()

    def store_supervisor(self) -> pykka.ActorProxy[StoreSupervisor]:
        """The StoreSupervisor's proxy, for admin tasks and tests (blocking)."""
        proxy: pykka.ActorProxy[StoreSupervisor] = self._component("store_supervisor")
        return proxy

    @property
    def endpoint(self) -> str | None:
        """The endpoint the node serves on (a port given as 0 resolved), or None."""
        if self.config.bind is None:
            return None
        endpoint: str = self._component("request_handler").endpoint().get()
        return endpoint

    @property
    def peer_endpoint(self) -> str | None:
        """The endpoint of the node's peer plane, where other nodes call it, or None."""
        if self.config.bind is None:
            return None
        endpoint: str | None = self._component("request_handler").peer_endpoint().get()
        return endpoint

    def status(self) -> dict[str, Any]:
        """The node's status, as the `status` request reports it (needs `bind`)."""
        status: dict[str, Any] = self._component("request_handler").status().get()
        return status

    def rpc(
        self,
        endpoint: str,
        op: str,
        args: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Future[Any]:
        """Call the node at `endpoint` over node-to-node RPC, for admin tasks and tests.

        `op` is ``"ping"`` (result ``{"node": NAME}``) or ``"store"``: `args` is
        ``{"ops": [["put", KEY, VALUE], ["get", KEY], ["delete", KEY], ...]}`` with keys
        as bytes and values as their msgpack encoding, and the result is
        ``{"results": [...]}``, one per op. `timeout` is in seconds (default: the
        config's `request_timeout`). Returns at once; the Future then holds the result
        or a typed error: `kvactors.errors.PeerUnreachableError` when nothing could be
        sent, `RequestTimeoutError` when the peer did not answer in time, or the error
        the peer answered with. Needs `bind` (else `UnavailableError`).
        """
        future: Future[Any] = (
            self._component("request_handler")
            .rpc_call(endpoint, op, dict(args or {}), timeout)
            .get()
        )
        return future

    def ring_snapshot(self) -> RingSnapshot:
        """Who owns what, as this node sees it now (read without asking any actor)."""
        return self._services.ring.current

    def ring_owners(self) -> tuple[str, ...]:
        """The members that own partitions now, by name."""
        return self._services.ring.current.ring.members

    def leave(self) -> None:
        """Leave the cluster: announce it, then stop (`wait()` returns when done)."""
        self._services.tell_gossip(Leave())

    def members(self) -> tuple[Member, ...]:
        """Every member this node knows of, with its status (admin path; blocking)."""
        members: tuple[Member, ...] = self._component("membership_manager").members().get()
        return members

    def store_server(self, partition: int) -> pykka.ActorRef[Any] | None:
        """The live StoreServer of a partition, or None while it is (re)starting."""
        return self._directory.current(partition)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals ---------------------------------------------------------------------

    def _open_storage(self) -> StorageBackend:
        """Open the backend and take up the identity it remembers, before anything starts."""
        config = self.config
        backend = open_backend(
            config.storage,
            data_dir=config.data_dir,
            fsync=config.fsync,
            sync_interval_ms=config.sync_interval_ms,
            group_commit=config.group_commit,
        )
        try:
            backend.check_compatible(config.cluster)
            self._resume_identity(backend)
        except BaseException:
            backend.close()
            raise
        services = self._services
        services.storage = backend
        # Only `always` with group commit needs the request path to sync: without group
        # commit every write batch syncs itself, and the other policies sync on their own.
        group_sync = backend.durable and config.fsync == "always" and config.group_commit
        services.storage_sync = backend.sync if group_sync else None
        return backend

    def _resume_identity(self, backend: StorageBackend) -> None:
        """A node restarted on its data comes back as itself: at the incarnation after
        the one it last had, and through the members it knew when it was given no seeds."""
        config, services = self.config, self._services
        known = backend.read_identity()
        if known is not None and known.name != config.name:
            raise ConfigError(
                f"the data directory {config.data_dir} belongs to node {known.name!r}, "
                f"not {config.name!r}: start that node on it, or give another directory"
            )
        services.incarnation = 0 if known is None else known.incarnation + 1
        if known is not None and not config.seeds:
            seeds = tuple(endpoint for name, endpoint in known.members if name != config.name)
            if seeds:
                # Remembered endpoints are peer endpoints: gossip calls them directly.
                services.peer_seeds = seeds
                self.config = services.config = config.replace(seeds=seeds)
                logger.info("rejoining the members this node knew: %s", ", ".join(seeds))
        services.remembered = tuple(
            Member(name, endpoint, MemberStatus.ALIVE, 0, 0)
            for name, endpoint in (known.members if known is not None else ())
            if name != config.name
        )
        # A node restarted on its data is a member already: alive, with the ring it knew.
        status = MemberStatus.ALIVE if services.remembered else _first_status(self.config)
        me = _member(config, status, services.incarnation)
        services.ring.publish(
            build_snapshot(0, me, [me, *services.remembered], config.partitions, config.replicas)
        )
        self._remembered = None
        self._remember(backend, services.ring.current)

    def _remember(self, backend: StorageBackend, snapshot: RingSnapshot) -> None:
        """Keep who this node is and whom it knows with its data (a durable backend keeps
        it across restarts); written only when something in it changed."""
        me = snapshot.members_by_name.get(self.name)
        identity = NodeIdentity(
            cluster=self.config.cluster,
            name=self.name,
            incarnation=max(self._services.incarnation, me.incarnation if me else 0),
            members=tuple(
                (member.name, member.endpoint)
                for member in snapshot.members
                if member.status is not MemberStatus.LEFT
            ),
            partitions=tuple(
                p for p in range(self.config.partitions) if self.name in snapshot.replicas(p)
            ),
        )
        if identity != self._remembered:
            backend.write_identity(identity)
            self._remembered = identity

    def _components(self, backend: StorageBackend) -> list[ChildSpec]:
        """The seed's start order: StoreSupervisor, MembershipManager, GossipProtocol,
        NodeResponsibilityManager, RequestHandler (the last only with a bind endpoint)."""
        config, services = self.config, self._services

        def subscribe(ref: pykka.ActorRef[Any]) -> None:
            services.tell_membership(Subscribe(ref))

        specs = [
            ChildSpec(
                "store_supervisor",
                lambda: StoreSupervisor.start(
                    backend,
                    services.directory,
                    range(config.partitions),
                    dispatcher=services.dispatcher,
                    node=config.name,
                    tombstone_grace=config.tombstone_grace,
                    sync=services.storage_sync,
                    trees=services.trees,
                    max_restarts=config.max_restarts,
                    max_seconds=config.max_seconds,
                    limits=ReplicaLimits.from_config(config),
                ),
                shutdown=30.0,
                start_timeout=60.0,
            ),
            ChildSpec("membership_manager", lambda: MembershipManager.start(services)),
            ChildSpec("gossip_protocol", lambda: GossipProtocol.start(services)),
            ChildSpec(
                "responsibility_manager",
                lambda: ResponsibilityManager.start(
                    services.ring,
                    config.partitions,
                    subscribe,
                    config.replicas,
                    on_snapshot=lambda snapshot: self._remember(backend, snapshot),
                ),
            ),
        ]
        if config.bind is not None:
            specs.append(
                ChildSpec("request_handler", lambda: RequestHandler.start(services), shutdown=15.0)
            )
        return specs

    def _stop_soon(self) -> None:
        # Called from inside the tree (a node that has left): stopping waits for every
        # actor, the caller included, so it must happen on a thread of its own.
        self._stopper = threading.Thread(target=self.stop, name=f"{self.name}-stop", daemon=True)
        self._stopper.start()

    def _component(self, child_id: str) -> Any:
        root = self._root
        if root is None:
            raise UnavailableError(f"node {self.name} is not running")
        ref = root.proxy().child_ref(child_id).get()
        if ref is None:
            raise UnavailableError(f"node {self.name} has no running {child_id}")
        return ref.proxy()

    def _root_exited(self, exit_: ChildExited) -> None:
        if exit_.reason is ExitReason.CRASH:
            self._failure = exit_.error
            logger.critical(
                "node %s: the root supervisor gave up (%r); the node has stopped",
                self.name,
                exit_.error,
            )
        self._stopped.set()


def refuse_unprotected(config: NodeConfig) -> None:
    """Protected mode: ConfigError, saying why and what to do, for a node without keys
    asked to bind an address other machines can reach."""
    exposed = config.unprotected_binds()
    if exposed:
        raise ConfigError(
            f"refusing to bind {' and '.join(exposed)} without keys: anyone who can reach "
            "it could read, write and delete every key, and join the cluster. Give the "
            "node its key and the keys it trusts (--secret-key FILE --trust-dir DIR; "
            "docs/security.md), bind 127.0.0.1 only, or give --insecure to insist"
        )


def _with_concrete_port(config: NodeConfig) -> NodeConfig:
    """Pick the free ports a `bind` or peer bind of port 0 stands for, before anything
    starts.

    Peers learn a node's endpoints through gossip, which starts before the transport
    binds; an endpoint of port 0 would send them nowhere. (A port taken by someone else
    in between makes the start fail clearly, with "cannot bind".)
    """
    if config.bind is None:
        return config
    peer_bind = config.peer_bind_endpoint
    bind = _concrete(config.bind)
    if peer_bind is not None:
        peer_bind = _concrete(peer_bind)
    if bind == config.bind and peer_bind == config.peer_bind:
        return config
    return config.replace(bind=bind, peer_bind=peer_bind)


def _concrete(bind: str) -> str:
    """`bind` with a free port in place of port 0."""
    if not bind.startswith("tcp://") or not bind.endswith(":0"):
        return bind
    host = bind[len("tcp://") : -len(":0")]
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host.strip("[]") if host != "*" else "", 0))
        port = probe.getsockname()[1]
    return f"tcp://{host}:{port}"


def _member(config: NodeConfig, status: MemberStatus, incarnation: int) -> Member:
    """This node's own record: peers reach it on its peer endpoint."""
    return Member(
        config.name,
        config.peer_endpoint,
        status,
        incarnation,
        0,
        client_endpoint=config.endpoint,
    )


def _first_status(config: NodeConfig) -> MemberStatus:
    """How a node sees itself before gossip has run: a node with seeds is joining (it
    takes no data requests until one answers), a founder is alive."""
    return MemberStatus.JOINING if config.seeds else MemberStatus.ALIVE
