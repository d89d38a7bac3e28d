"""GossipProtocol: runs this node's gossip (kvactors.core.gossip) over RPC.

Every gossip interval a ticker tells the actor to tick: the pure `GossipState` bumps the
heartbeat, detects failures and picks a peer to exchange tables with. Messages travel as
one-way `gossip` RPCs through the node's PeerNetwork (a lost one is just lost: gossip
repeats itself); incoming ones are handed to this actor by the transport thread.
Membership changes go to the MembershipManager, without tombstones (the ring and the
status know only members).

Gossip comes from anyone who can reach the node, so what it refuses (kvactors.core.gossip)
is logged sparingly: the first refusal of each sender per `_REFUSAL_LOG_INTERVAL`, and a
count of the rest. A name from outside is logged only once it has been read as printable,
or escaped (`claimed_sender`).
`Remove` (an admin's `remove`) turns a DEAD or LEFT member into a tombstone.

A secure node signs its own record and its tombstones with its certificate's key and
takes only records signed by a trusted node (kvactors.cluster.signatures); when the
trust set changes, the signatures verified so far are checked again.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kvactors.cluster.membership_manager import TableUpdate
from kvactors.cluster.signatures import record_keys
from kvactors.core.gossip import (
    GossipConfig,
    GossipState,
    Output,
    RefusalLog,
    claimed_sender,
    message_from_wire,
)
from kvactors.core.membership import (
    HandedOver,
    Joined,
    Leave,
    MemberStatus,
    Remove,
    RemoveResult,
)
from kvactors.errors import BadRequestError
from kvactors.net.rpc import GOSSIP
from kvactors.node.services import NodeServices
from kvactors.runtime.supervision import SupervisedActor

__all__ = ["GossipProtocol"]

logger = logging.getLogger(__name__)

_REMOVED = MemberStatus.REMOVED

# Ticks a joining node waits for a seed before it says, once, that it serves alone.
_PATIENCE_TICKS = 8
# Ticks between announcing LEAVING, announcing LEFT, and stopping the node.
_LEAVE_TICKS = 4
# Ticks between log lines while a leave waits for its handoff.
_LEAVE_LOG_TICKS = 40
# Seconds in which a sender's refused gossip is logged once (the rest is counted).
_REFUSAL_LOG_INTERVAL = 10.0


@dataclass(frozen=True, slots=True)
class _Tick:
    pass


@dataclass(frozen=True, slots=True)
class _Incoming:
    message: Any


class GossipProtocol(SupervisedActor):
    """Owns the node's GossipState and its timer."""

    def __init__(self, services: NodeServices) -> None:
        super().__init__()
        self._services = services
        config = services.config
        self._gossip_config = GossipConfig(
            interval=config.gossip_interval,
            suspect_timeout=config.suspect_timeout,
            dead_timeout=config.dead_timeout,
        )
        self._rng = random.Random()
        self._clock: Callable[[], float] = time.monotonic
        self._state: GossipState | None = None
        self._ticks = 0
        self._announced_contact = False
        self._leaving_since: int | None = None
        self._left_at: int | None = None
        # A node off the network has nothing to hand over when it leaves.
        self._handed_over = config.bind is None
        self._stop_ticker = threading.Event()
        self._ticker: threading.Thread | None = None
        self._refusals = RefusalLog(_REFUSAL_LOG_INTERVAL)
        # The trust set's generation the verified signatures were checked against.
        self._trust_generation = 0

    def __str__(self) -> str:
        return f"GossipProtocol {self._services.config.name}"

    # -- lifecycle -------------------------------------------------------------------

    def on_start(self) -> None:
        self._services.gossip = self.actor_ref
        config, now = self._services.config, self._clock()
        # Peers reach this node on its peer endpoint; seeds may be either kind (the
        # request path routes a seed's client endpoint to its peer one).
        endpoint = config.peer_endpoint
        seeds = [seed for seed in config.seeds if seed not in (endpoint, config.endpoint)]
        signer, verifier = record_keys(self._services.security)
        if self._services.gossip_state is not None:
            self._state = self._services.gossip_state  # restarted: carry on
            self._state.restarted(now)
        elif seeds:
            self._state = GossipState.join(
                config.name,
                endpoint,
                seeds,
                now,
                client_endpoint=config.endpoint,
                config=self._gossip_config,
                incarnation=self._services.incarnation,
                # A node new to the cluster owns nothing until its partitions are handed
                # to it; one restarted on its data rejoins as the owner it was.
                hold_joining=config.join_handoff and self._services.incarnation == 0,
                remembered=self._services.remembered,
                signer=signer,
                verifier=verifier,
            )
        else:
            self._state = GossipState.found_cluster(
                config.name,
                endpoint,
                now,
                client_endpoint=config.endpoint,
                config=self._gossip_config,
                incarnation=self._services.incarnation,
                signer=signer,
                verifier=verifier,
            )
        self._services.gossip_state = self._state
        self._services.network.handle(GOSSIP, self._incoming)
        self._report(Output())
        self._ticker = threading.Thread(target=self._run_ticker, name=f"{self}-ticker", daemon=True)
        self._ticker.start()

    def on_stop(self) -> None:
        self._end_ticker()

    def on_failure(self, *_exc_info: Any) -> None:
        self._end_ticker()

    def _end_ticker(self) -> None:
        # Joined, so that a stopped node leaves no thread behind; it only sleeps or tells.
        self._stop_ticker.set()
        if self._ticker is not None:
            self._ticker.join(5.0)

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, _Tick):
            self._tick()
        elif isinstance(message, _Incoming):
            self._receive(message.message)
        elif isinstance(message, Leave):
            self._start_leaving()
        elif isinstance(message, Joined):
            self._finish_joining()
        elif isinstance(message, HandedOver):
            self._handed_over = True
        elif isinstance(message, Remove):
            result = self._remove(message.name)
            if message.reply is not None:
                message.reply(result)
            return result
        else:
            return super().on_receive(message)
        return None

    # -- the work ----------------------------------------------------------------------

    def _run_ticker(self) -> None:
        interval = self._gossip_config.interval
        while not self._stop_ticker.wait(interval):
            try:
                self.actor_ref.tell(_Tick())
            except Exception:  # the actor has stopped
                return

    def _incoming(self, args: dict[str, Any]) -> None:
        """Serves the `gossip` RPC on the transport thread: hand over, never block."""
        self.actor_ref.tell(_Incoming(args.get("message")))

    def _tick(self) -> None:
        state = self._live_state()
        self._ticks += 1
        now = self._clock()
        self._send(state.tick(now, self._rng))
        unlogged = self._refusals.summary(now)
        if unlogged:
            logger.warning(
                "refused %d more gossip messages or records in the last %.0f s",
                unlogged,
                _REFUSAL_LOG_INTERVAL,
            )
        if state.status is MemberStatus.JOINING and self._ticks == _PATIENCE_TICKS:
            logger.warning(
                "no seed of %s has answered yet; taking no data requests until one does",
                ", ".join(state.seeds),
            )
        if self._leaving_since is not None:
            self._continue_leaving(state)

    def _finish_joining(self) -> None:
        state = self._live_state()
        if state.holding_join:
            logger.info("every partition is handed over: owning its share now")
            self._send(state.finish_joining(self._clock(), self._rng))

    def _receive(self, data: Any) -> None:
        state = self._live_state()
        try:
            message = message_from_wire(data)
        except ValueError as exc:  # BadRequestError: its text is printable
            sender = claimed_sender(data)
            if self._refusals.note(sender, self._clock()):
                logger.warning("refusing gossip from %s: %s", sender, exc)
            return
        was_joining = state.status is MemberStatus.JOINING
        self._check_trust(state)
        output = state.on_message(message, self._clock())
        self._send(output)
        if (output.refused or output.ignored) and self._refusals.note(
            message.sender, self._clock()
        ):
            logger.warning(
                "gossip from %s: %d records refused (too far ahead), %d new members "
                "ignored (the member table is full)",
                message.sender,
                output.refused,
                output.ignored,
            )
        if output.forged and self._refusals.note(message.sender, self._clock()):
            logger.warning(
                "gossip from %s: %d records refused (unsigned, wrongly signed, or signed "
                "by a node not trusted)",
                message.sender,
                output.forged,
            )
        if was_joining and state.status is MemberStatus.ALIVE:
            logger.info("joined the cluster through %s", message.sender)
        elif was_joining and state.holding_join and not self._announced_contact:
            self._announced_contact = True
            logger.info(
                "joined the cluster through %s; taking its partitions over before owning them",
                message.sender,
            )
            self._send(state.sync_everyone())

    def _check_trust(self, state: GossipState) -> None:
        """After a change of the trust set, check every signature again."""
        security = self._services.security
        if security is not None and security.generation != self._trust_generation:
            self._trust_generation = security.generation
            state.trust_changed()

    def _remove(self, name: str) -> RemoveResult:
        state = self._live_state()
        result, output = state.remove(name, self._clock(), self._rng)
        self._send(output)  # the MembershipManager logs the removal
        return result

    def _start_leaving(self) -> None:
        state = self._live_state()
        if self._leaving_since is None:
            logger.info("leaving the cluster")
            self._leaving_since = self._ticks
            self._send(state.leave(self._clock(), self._rng))

    def _continue_leaving(self, state: GossipState) -> None:
        assert self._leaving_since is not None
        waited = self._ticks - self._leaving_since
        if self._left_at is None:
            # LEAVING until every partition is handed over (the news has spread by then).
            if waited >= _LEAVE_TICKS and self._handed_over:
                self._left_at = self._ticks
                self._send(state.complete_leave(self._clock(), self._rng))
            elif waited % _LEAVE_LOG_TICKS == 0 and waited:
                logger.info("leaving: waiting for the partitions to be handed over")
        elif self._ticks - self._left_at == _LEAVE_TICKS:
            logger.info("left the cluster; stopping")
            self._services.stop_node()

    def _send(self, output: Output) -> None:
        network = self._services.network
        timeout = 4 * self._gossip_config.interval
        for outgoing in output.messages:
            # Fire and forget: gossip repeats itself, so a lost message is just lost.
            network.call(
                outgoing.endpoint, GOSSIP, {"message": outgoing.message.to_wire()}, timeout
            )
        self._report(output)

    def _report(self, output: Output) -> None:
        if output.changes or self._ticks == 0:
            state = self._live_state()
            members = tuple(m for m in state.table.members() if m.status is not _REMOVED)
            update = TableUpdate(state.me, members, output.changes)
            self._services.tell_membership(update)

    def _live_state(self) -> GossipState:
        if self._state is None:
            raise BadRequestError("gossip has not started")
        return self._state
