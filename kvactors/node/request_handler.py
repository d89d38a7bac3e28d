"""RequestHandler: requests from the network, served without blocking.

`RequestHandler` is the supervised actor (the seed's RequestHandler); it owns the
node's `Transport` and a `RequestService`, which wires the node's request path together
and hands the transport its handlers. They run on the transport thread:

1. a frame arrives on the client ROUTER and goes straight to the `Frontend`, which
   decodes it and starts a quorum operation per key; a frame on the peer ROUTER goes to
   the `RpcServer`;
2. the operations queue replica ops through the `NodeChannel`: for this node's
   StoreServers in `LocalBatches`, for peers in `PeerCalls`;
3. when the transport has drained everything ready (the flush), each partition's queue
   goes to its StoreServer as one `StoreBatch`, and each peer's as one RPC;
4. answers come back as callbacks; once R or W replicas of every key have answered,
   `InFlight` has the request answered with its original envelope.

The periodic tick expires deadlines and runs the background tasks.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import pykka

from kvactors.core.membership import Remove, RemoveResult
from kvactors.errors import BadRequestError, ForbiddenError, InternalError, UnavailableError
from kvactors.net import rpc
from kvactors.net.certs import Certificate, Role
from kvactors.net.protocol import Codec, Reply, Request
from kvactors.net.replies import Replies
from kvactors.net.transport import (
    SocketOptions,
    Transport,
    TransportHandlers,
    TransportSecurity,
)
from kvactors.node.background import BackgroundTasks
from kvactors.node.channel import NodeChannel
from kvactors.node.frontend import Frontend
from kvactors.node.group_commit import GroupCommit
from kvactors.node.inflight import InFlight
from kvactors.node.local_batches import LocalBatches
from kvactors.node.peer_calls import PeerCalls
from kvactors.node.rpc_server import RpcServer
from kvactors.node.seeds import Seeds
from kvactors.node.services import NodeServices
from kvactors.node.status import cluster_status, storage_status
from kvactors.runtime.supervision import SupervisedActor

__all__ = ["RequestHandler", "RequestService"]

logger = logging.getLogger(__name__)

TRUST_RELOAD_INTERVAL = 5.0
"""Seconds between two reads of a secure node's trust directory (SIGHUP reads it at once)."""


class RequestService:
    """The transport's handler: the node's request path, wired. Thread: transport."""

    def __init__(
        self,
        services: NodeServices,
        transport: Transport,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        config = services.config
        self._services = services
        self._config = config
        self._transport = transport
        codec = Codec.from_config(config)
        # A call to a peer stays well under the frame its ROUTER accepts.
        call_bytes = codec.max_frame_bytes // 2
        self.rpc = rpc.RpcClient(transport, clock, config.request_timeout)
        client_seeds = [seed for seed in config.seeds if seed not in services.peer_seeds]
        self.seeds = Seeds(client_seeds, transport.send_to_peer, clock)
        self.rpc.route = self.seeds.route
        self.inflight = InFlight(
            config.max_inflight,
            config.request_timeout,
            clock,
            max_per_connection=config.max_inflight_per_connection,
            slow_connections=transport.reply_backlog.slow,
        )
        self.replies = Replies(transport.send_to_client, codec.max_frame_bytes)
        self.local = LocalBatches(services.directory, transport.call_soon, transport.in_loop_thread)
        if services.storage_sync is not None and services.storage is not None:
            self.local.group = GroupCommit(
                services.storage,
                services.storage_sync,
                transport.call_soon,
                self.local.done,
                self.local.failed,
            )
        self.peers = PeerCalls(
            self.rpc,
            services.ring,
            config.request_timeout,
            call_bytes,
            transport.call_soon,
            max_clock_skew=config.max_clock_skew,
        )
        self.channel = NodeChannel(
            config.name, self.local, self.peers, self.rpc, config.request_timeout
        )
        self.frontend = Frontend(
            config,
            ring=services.ring,
            codec=codec,
            inflight=self.inflight,
            replies=self.replies,
            channel=self.channel,
            local=self.local,
            status=self.status,
            tell_gossip=services.tell_gossip,
            remove_member=self._remove_member,
        )
        self.rpc_server = RpcServer(
            services,
            codec=codec,
            inflight=self.inflight,
            local=self.local,
            frontend=self.frontend,
            send=transport.reply_to_peer,
            call_bytes=call_bytes,
        )
        self.background = BackgroundTasks(services, self.channel)
        self._security = services.security
        self._trust_generation = 0 if self._security is None else self._security.generation
        self._next_trust_reload = clock() + TRUST_RELOAD_INTERVAL
        # Frames go straight to the component that serves them. The flush sends the
        # local batches; peer calls have theirs scheduled when something is queued for a
        # peer, so a write's state reaches the other replicas in the same pass.
        self.handlers = TransportHandlers(
            client_frames=self.frontend.on_frames,
            peer_request=self.rpc_server.on_frames,
            peer_reply=self.on_peer_reply,
            flush=self.local.flush,
            tick=self.on_tick,
            close=self.on_close,
            authorized_client_frames=self.frontend.on_authorized_frames,
            authorized_peer_request=self.on_authorized_peer_request,
        )

    def on_authorized_peer_request(
        self, frames: list[bytes], certificate: Certificate | None
    ) -> None:
        """A message on a secure peer ROUTER: served only while its sender's key is a
        node's in the live trust set (the handshake admitted node keys only, but a key
        removed since keeps its open connection)."""
        if certificate is not None and certificate.role is Role.NODE:
            self.rpc_server.on_frames(frames)
            return
        call_id = None
        if len(frames) >= 3 and frames[1] == rpc.MARKER:
            call_id = rpc.decode_call(frames[2:]).call_id
        refusal = ForbiddenError("the peer plane serves trusted node keys only")
        self._transport.reply_to_peer([frames[0], rpc.MARKER, rpc.encode_error(call_id, refusal)])

    def _remove_member(self, name: str, answer: Callable[[RemoveResult], None]) -> None:
        """Ask the gossip protocol to remove member `name`; `answer` hears the result on
        the transport thread."""
        call_soon = self._transport.call_soon

        def reply(result: RemoveResult) -> None:
            call_soon(lambda: answer(result))

        self._services.tell_gossip(Remove(name, reply=reply))

    def on_peer_reply(self, endpoint: str, frames: list[bytes]) -> None:
        if not self.seeds.on_reply(endpoint, frames):
            self.rpc.on_reply(endpoint, frames)

    def on_tick(self, now: float) -> None:
        if self._security is not None:
            self._watch_trust(now)
        self.peers.on_tick()
        self.rpc.on_tick(now)
        self.inflight.expire(now)
        self.background.on_tick(now)
        self.local.on_tick()

    def _watch_trust(self, now: float) -> None:
        """Re-read the trust dir every TRUST_RELOAD_INTERVAL; after any change (this
        read's, or a SIGHUP's on another thread), drop connections to keys gone."""
        security = self._security
        assert security is not None
        if now >= self._next_trust_reload:
            self._next_trust_reload = now + TRUST_RELOAD_INTERVAL
            security.reload()
        if security.generation != self._trust_generation:
            self._trust_generation = security.generation
            self._transport.refresh_peer_keys()

    def on_close(self) -> None:
        if self.local.group is not None:
            self.local.group.stop()
        error = UnavailableError("the node is shutting down")
        self.rpc.fail_all(error)
        self.inflight.close(error)

    # -- the embedded client (RequestGateway) -------------------------------------------

    def submit(self, request: Request) -> Future[Reply]:
        """Coordinate a key request from another thread (the embedded client)."""
        future: Future[Reply] = Future()
        if not self._transport.call_soon(lambda: self.frontend.submit(request, future)):
            future.set_exception(UnavailableError("the node's transport has stopped"))
        return future

    def status(self) -> dict[str, Any]:
        """The node's view of the cluster and its own counters (the `status` reply)."""
        config, transport = self._config, self._transport.stats
        backlog = self._transport.reply_backlog
        group = self.local.group
        return {
            **cluster_status(config, self._services.ring.current),
            "peer_endpoint": self._transport.peer_endpoint or config.peer_endpoint,
            "inflight": self.inflight.count,
            "requests": self.frontend.requests,
            "forwarded": self.peers.forwarded,
            "read_repairs": self.channel.read_repairs,
            "errors": self.replies.errors,
            "overloaded": self.inflight.overloaded,
            "timeouts": self.inflight.timeouts,
            "unroutable_replies": transport.unroutable,
            "held_replies": backlog.held_replies,
            "held_reply_bytes": backlog.held_bytes,
            "backlogged_connections": len(backlog.held),
            "replies_held_total": backlog.held_total,
            "slow_connections": len(backlog.slow),
            "slow_consumer_drops": backlog.dropped,
            "slow_consumer_refusals": self.inflight.slow_refusals,
            "connection_inflight_refusals": self.inflight.connection_refusals,
            "secure": self._security is not None,
            "unauthorized_messages": transport.unauthorized,
            "peer_sends_dropped": transport.peer_send_dropped,
            "peer_plane": {
                "calls": self.rpc_server.calls,
                "refused_frames": self.rpc_server.refused,
                "calls_in_other_formats": self.rpc_server.calls_in_other_formats,
                "peers_in_other_formats": self.rpc.peers_in_other_formats,
            },
            "storage": storage_status(
                config, self._services.storage, 0 if group is None else group.syncs
            ),
            **self.background.status(),
        }


@dataclass(frozen=True, slots=True)
class _TransportFailed:
    error: BaseException


class RequestHandler(SupervisedActor):
    """The supervised owner of the node's transport and request service.

    If the transport thread dies, this actor crashes with it, so its supervisor
    restarts both: the socket is bound again and serving resumes.
    """

    def __init__(self, services: NodeServices) -> None:
        super().__init__()
        config = services.config
        if config.bind is None:
            raise BadRequestError("a RequestHandler needs a bind endpoint")
        self._services = services
        self._config = config
        self._dispatcher = services.dispatcher
        options = SocketOptions.from_config(config)
        security = services.security
        self._transport = Transport(
            config.bind,
            options,
            peer_bind=config.peer_bind_endpoint,
            name=f"{config.name}-transport",
            security=None
            if security is None
            else TransportSecurity(security.certificate, security.trust, security.server_keys),
        )
        self._service = RequestService(services, self._transport)

    def __str__(self) -> str:
        return f"RequestHandler {self._config.name}"

    def on_start(self) -> None:
        self._transport.start(self._service.handlers, on_failure=self._transport_failed)
        # StoreServers now run on the transport thread: a request is served start to end
        # there, with no thread hand-off.
        self._dispatcher.attach(self._transport)
        self._services.network.attach(self._service.rpc)
        self._services.gateway = self._service
        logger.info(
            "node %s serving clients on %s, peers on %s%s",
            self._config.name,
            self._transport.endpoint,
            self._transport.peer_endpoint,
            "" if self._services.security is None else " (CURVE)",
        )

    def on_stop(self) -> None:
        self._close()

    def on_failure(self, *_exc_info: Any) -> None:
        self._close()

    def _close(self) -> None:
        if self._services.gateway is self._service:
            self._services.gateway = None
        self._services.network.detach(self._service.rpc)
        self._dispatcher.detach(self._transport)
        self._transport.stop()
        # The transport's on_close stops the group commit; a transport that died in a
        # handler never ran it. (Stopping twice is harmless.)
        if self._service.local.group is not None:
            self._service.local.group.stop()

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, _TransportFailed):
            raise InternalError(f"the transport thread failed: {message.error!r}")
        return super().on_receive(message)

    def endpoint(self) -> str:
        """The endpoint the node is bound to (ports given as 0 are resolved)."""
        return self._transport.endpoint

    def peer_endpoint(self) -> str | None:
        """The endpoint of the node's peer plane (ports given as 0 resolved)."""
        return self._transport.peer_endpoint

    def status(self) -> dict[str, Any]:
        return self._service.status()

    def rpc_call(
        self, endpoint: str, op: str, args: dict[str, Any], timeout: float | None = None
    ) -> Any:
        """An RPC to a peer, for admin paths and tests: returns a Future to wait on."""
        return self._service.rpc.call_threadsafe(endpoint, op, args, timeout)

    def _transport_failed(self, error: BaseException) -> None:
        with contextlib.suppress(pykka.ActorDeadError):  # stopping already
            self.actor_ref.tell(_TransportFailed(error))
