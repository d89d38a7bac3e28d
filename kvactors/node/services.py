"""NodeServices: what the components of one node share.

The actors of a node are restarted independently, so they must not hold each other's
refs from their constructors. They share this object instead, created once by the
ActorSystem: the config, the shared read-mostly structures (the partition directory,
the ring snapshot), the dispatcher and the peer network, and the live ref of the two
actors others send messages to (each sets its own when it starts). Components
coordinate by those messages, never by flags in here.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

import pykka

from kvactors.config import NodeConfig
from kvactors.core.gossip import GossipState
from kvactors.core.hashtree import PartitionTrees
from kvactors.core.membership import Member
from kvactors.core.placement import RingHolder
from kvactors.errors import UnavailableError
from kvactors.net.protocol import Reply, Request
from kvactors.net.rpc import PeerNetwork
from kvactors.node.security import NodeSecurity
from kvactors.runtime.dispatch import NodeDispatcher
from kvactors.storage.store_supervisor import PartitionDirectory
from kvactors.storage.tables import StorageBackend

__all__ = ["NodeServices", "RequestGateway"]


class RequestGateway(Protocol):
    """Coordinates a client request from any thread (the RequestService does)."""

    def submit(self, request: Request) -> Future[Reply]: ...


@dataclass(slots=True)
class NodeServices:
    config: NodeConfig
    directory: PartitionDirectory
    dispatcher: NodeDispatcher
    network: PeerNetwork
    ring: RingHolder
    stop_node: Callable[[], None]
    """Asks the node to stop; returns at once (the stop happens on another thread)."""
    membership: pykka.ActorRef[Any] | None = None
    """The MembershipManager, while it runs (it sets this when it starts)."""
    gossip: pykka.ActorRef[Any] | None = None
    """The GossipProtocol, while it runs (it sets this when it starts)."""
    gossip_state: GossipState | None = None
    """The GossipState of this node's gossip protocol, kept here so that a restarted
    GossipProtocol carries on with the member table instead of starting alone (a node
    that forgot its cluster would take writes it cannot replicate)."""
    remembered: tuple[Member, ...] = ()
    """The members (`Member` records, alive at incarnation 0) a node restarted on its
    data knew: it starts with them in its member table, so its ring places keys as the
    cluster does from the first request on, not on the few members gossip has reached."""
    peer_seeds: tuple[str, ...] = ()
    """The seeds that are peer endpoints already (the members a node restarted on its
    data remembers); the other seeds are client endpoints, asked for their peer one."""
    incarnation: int = 0
    """The incarnation this node starts at: one above the last it had, when it restarts
    on a durable data directory (so that its news outranks what others remember)."""
    trees: PartitionTrees | None = None
    """Each partition's hash tree, for anti-entropy (kept by the StoreServers)."""
    storage: StorageBackend | None = None
    """The node's storage backend, while the node runs."""
    storage_sync: Callable[[], None] | None = None
    """Forces the writes applied so far to disk; the request path calls it once per pass,
    before acknowledging them (group commit). None when acknowledgements need no sync:
    a memory backend, or a durable one with an fsync policy other than ``always``, or
    without group commit (each write batch then syncs itself)."""
    gateway: RequestGateway | None = None
    """The request path's entry for the embedded client, while the node serves the network."""
    security: NodeSecurity | None = None
    """A secure node's keys (its certificate, the trust set); None for an insecure node."""

    def tell_gossip(self, message: object) -> None:
        """Send `message` to the GossipProtocol; UnavailableError if it is not running."""
        _running(self.gossip, "the gossip protocol").tell(message)

    def tell_membership(self, message: object) -> None:
        """Send `message` to the MembershipManager; UnavailableError if it is not running."""
        _running(self.membership, "the membership manager").tell(message)


def _running(ref: pykka.ActorRef[Any] | None, what: str) -> pykka.ActorRef[Any]:
    if ref is None or not ref.is_alive():
        raise UnavailableError(f"{what} is not running")
    return ref
