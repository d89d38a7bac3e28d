"""Tests for kvactors.core.gossip: the exchange, joining, failure detection, refutation,
leaving, the wire form, and whole clusters of up to 1,000 nodes on a simulated network.

The simulation (``Network`` below) is a fake clock plus a fake network: each round every
running node ticks once, at its own fixed phase within the interval; a message is delivered
at once (a reply too, so an exchange completes within the sender's tick) unless the seeded
rng drops it. With ``fanout`` 1 each node starts one exchange per round.

Figures measured with the default GossipConfig (interval 0.25 s, suspect 3.0 s, dead 7.5 s)
and 5 % of messages dropped; ``pytest -s`` prints them again.

* Join, n = 1000: a node joining through one seed is known to all 1000 after 10 rounds
  (seed 1, the default run) and 8 rounds (seeds 2, 3, 4; slow test), i.e. 2 to 2.5 s.
  Bound asserted: spread_bound(1000) = 20 rounds. Rounds here are asynchronous (each node
  ticks at its own phase), so news can hop more than once per round, as on a real network.
* Kill, n = 1000 (slow test): first declared DEAD 7.30 s after the crash, DEAD at every node
  after 8.50 s; bound asserted: detection_bound(1000) = 7.5 + 21 x 0.25 = 12.75 s.
  n = 200 (default run): 7.15 s and 8.25 s, bound 11.75 s.
* 30 simulated seconds: no live node ever DEAD anywhere, no false suspicion at all, every
  incarnation still 0; longest heartbeat silence sampled 1.53 s at n = 100 (default run) and
  2.00 s at n = 1000 (slow test), against suspect_timeout 3.0 s.
* Cost: a 1000-node round takes 0.5 to 1 s of CPU (each node merges a 1000-record table and
  a ~500-record reply per round), so only the 1000-node join runs by default (about 8 s);
  the 1000-node kill (~40 s) and 30 s (~3 min) runs are marked slow.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvactors.core.gossip import (
    GossipConfig,
    GossipMessage,
    GossipState,
    Outgoing,
    Output,
    Sync,
    SyncReply,
    WireValue,
    message_from_wire,
)
from kvactors.core.membership import Member, MemberChange, MemberStatus, MemberTable

ALIVE, SUSPECT, DEAD = MemberStatus.ALIVE, MemberStatus.SUSPECT, MemberStatus.DEAD
JOINING, LEAVING, LEFT = MemberStatus.JOINING, MemberStatus.LEAVING, MemberStatus.LEFT

CONFIG = GossipConfig()
LOSS = 0.05


# ------------------------------------------------------------------------------ the simulator


def endpoint_of(name: str) -> str:
    return f"tcp://{name}:5555"


def converged_cluster(size: int, config: GossipConfig = CONFIG) -> list[GossipState]:
    """``size`` nodes that all know each other, ALIVE, as after a long calm spell."""
    records = [Member(f"n{i:04d}", endpoint_of(f"n{i:04d}"), ALIVE, 0, 0) for i in range(size)]
    table = MemberTable(records)
    return [GossipState(record, 0.0, config=config, table=table) for record in records]


@dataclass
class Network:
    """A fake clock and network for GossipStates (see the module docstring)."""

    nodes: dict[str, GossipState]
    rng: random.Random
    drop_rate: float = 0.0
    via_wire: bool = False
    config: GossipConfig = CONFIG
    rounds: int = 0
    order: list[str] = field(default_factory=list)
    by_endpoint: dict[str, str] = field(default_factory=dict)
    down: set[str] = field(default_factory=set)
    side: dict[str, int] = field(default_factory=dict)  # partition: only same side talks
    false_deaths: list[tuple[float, str, str]] = field(default_factory=list)
    suspicions: set[tuple[str, int]] = field(default_factory=set)
    first_dead: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        nodes: Iterable[GossipState],
        seed: int,
        drop_rate: float = 0.0,
        via_wire: bool = False,
    ) -> Network:
        network = cls({}, random.Random(seed), drop_rate=drop_rate, via_wire=via_wire)
        for node in nodes:
            network.add(node)
        return network

    @property
    def now(self) -> float:
        return self.rounds * self.config.interval

    def add(self, node: GossipState) -> None:
        self.nodes[node.name] = node
        self.by_endpoint[node.endpoint] = node.name
        self.order.insert(self.rng.randrange(len(self.order) + 1), node.name)

    def running(self) -> list[GossipState]:
        return [node for name, node in self.nodes.items() if name not in self.down]

    def run_round(self) -> None:
        phase = self.config.interval / max(len(self.order), 1)
        for index, name in enumerate(list(self.order)):
            if name not in self.down:
                now = self.now + index * phase
                self.carry(self.nodes[name].tick(now, self.rng), name, now)
        self.rounds += 1

    def run_until(self, done: Callable[[], bool], max_rounds: int) -> int | None:
        """Rounds run until ``done()`` held (checked after each round), None if it never did."""
        for taken in range(1, max_rounds + 1):
            self.run_round()
            if done():
                return taken
        return None

    def deliver(self, sender: str, outgoing: Outgoing, now: float) -> Output | None:
        name = outgoing.destination or self.by_endpoint.get(outgoing.endpoint)
        if name is None or name in self.down or name not in self.nodes:
            return None
        if self.side.get(sender, 0) != self.side.get(name, 0):
            return None
        if self.drop_rate and self.rng.random() < self.drop_rate:
            return None
        message: GossipMessage = outgoing.message
        if self.via_wire:
            message = message_from_wire(message.to_wire())
        return self.nodes[name].on_message(message, now)

    def carry(self, output: Output, sender: str, now: float) -> None:
        self.observe(output.changes, sender, now)
        for outgoing in output.messages:
            reply = self.deliver(sender, outgoing, now)
            if reply is not None:
                receiver = outgoing.destination or self.by_endpoint[outgoing.endpoint]
                self.carry(reply, receiver, now)

    def observe(self, changes: Iterable[MemberChange], observer: str, now: float) -> None:
        # Every record that enters any table enters it as a change, so watching the changes
        # catches every moment any node believes a running node is suspect or dead.
        for change in changes:
            after = change.after
            if after.status is DEAD:
                self.first_dead.setdefault(after.name, now)
                if after.name not in self.down:
                    self.false_deaths.append((now, observer, after.name))
            elif after.status is SUSPECT and after.name not in self.down:
                self.suspicions.add((after.name, after.incarnation))

    def everyone_knows(self, name: str) -> bool:
        return all(name in node.table for node in self.running())

    def everyone_sees(self, name: str, status: MemberStatus) -> bool:
        return all(
            node.table[name].status is status for node in self.running() if node.name != name
        )


# ------------------------------------------------------------------------------ bounds


SPREAD_SLACK_ROUNDS = 3


def spread_bound(size: int) -> int:
    """Rounds within which news started by one node reaches all ``size`` nodes.

    Push-only rumour spreading, each informed node telling one random node per round,
    informs everyone in log2(n) + ln(n) + O(1) rounds (Frieze and Grimmett; Pittel).
    Push-pull does at least as well (it adds pulls to the same pushes; Karp et al. show
    log3(n) + O(log log n)), so log2(n) + ln(n) bounds it. The slack c = 3 rounds covers the
    joiner's first exchange with its seed (one round) and 5 % loss plus the random tail (two).
    At n = 1000: ceil(9.97 + 6.91) + 3 = 20 = ceil(2 * log2(1000)).
    """
    return math.ceil(math.log2(size) + math.log(size)) + SPREAD_SLACK_ROUNDS


def detection_bound(size: int, config: GossipConfig = CONFIG) -> float:
    """Seconds from a crash until every node holds the crashed member DEAD.

    Every observer last saw the victim's heartbeat advance no later than the crash plus the
    spread time, and the one that exchanged with it last saw it at the crash itself; that one
    declares it DEAD at its first tick after ``dead_timeout`` (one interval at most), and the
    DEAD then spreads like any news: dead_timeout + (1 + spread_bound(n)) intervals.
    """
    return config.dead_timeout + (1 + spread_bound(size)) * config.interval


# ------------------------------------------------------------------------------ helpers


def exchange(initiator: GossipState, receiver: GossipState, now: float) -> list[Output]:
    """A full push-pull: the initiator's Sync to the receiver, and the reply back."""
    outputs = []
    sync = Sync(initiator.name, initiator.endpoint, initiator.table.members())
    outputs.append(receiver.on_message(sync, now))
    (reply,) = outputs[-1].messages
    outputs.append(initiator.on_message(reply.message, now))
    return outputs


def pair(config: GossipConfig = CONFIG) -> tuple[GossipState, GossipState]:
    a, b = converged_cluster(2, config)
    return a, b


def changed_statuses(output: Output) -> dict[str, MemberStatus]:
    return {change.name: change.after.status for change in output.changes}


def test_config_defaults_and_validation() -> None:
    assert (CONFIG.interval, CONFIG.suspect_timeout, CONFIG.dead_timeout, CONFIG.fanout) == (
        0.25,
        3.0,
        7.5,
        1,
    )
    for bad in (
        {"interval": 0.0},
        {"suspect_timeout": 0.2},
        {"dead_timeout": 3.0},
        {"fanout": 0},
        {"announce_fanout": 0},
        {"dead_probe_probability": 1.5},
    ):
        with pytest.raises(ValueError):
            GossipConfig(**bad)


# ------------------------------------------------------------------------------ exchange


def test_tick_raises_the_heartbeat_and_pushes_the_whole_table() -> None:
    a, _ = pair()
    output = a.tick(0.25, random.Random(1))
    assert a.me.heartbeat == 1 and a.table["n0000"].heartbeat == 1
    (outgoing,) = output.messages
    assert (outgoing.destination, outgoing.endpoint) == ("n0001", endpoint_of("n0001"))
    assert isinstance(outgoing.message, Sync)
    assert set(outgoing.message.members) == set(a.table.members())
    assert output.changes == ()  # a heartbeat is not a membership change


def test_reply_carries_only_what_the_initiator_lacks() -> None:
    nodes = converged_cluster(4)
    a, b = nodes[0], nodes[1]
    for _ in range(3):
        b.tick(0.25, random.Random(2))  # b's own heartbeat moves on; a has not seen it
    c_newer = nodes[2].table["n0002"].with_heartbeat(9)
    b.on_message(SyncReply("n0002", endpoint_of("n0002"), (c_newer,)), 0.3)
    a.tick(0.5, random.Random(3))  # a has news of itself only
    sync = Sync(a.name, a.endpoint, a.table.members())
    output = b.on_message(sync, 0.5)
    (reply,) = output.messages
    assert reply.destination == a.name and isinstance(reply.message, SyncReply)
    assert {m.name: m.heartbeat for m in reply.message.members} == {"n0001": 3, "n0002": 9}
    assert b.table["n0000"].heartbeat == a.me.heartbeat  # and b took a's news
    a.on_message(reply.message, 0.5)
    assert a.table == b.table


def test_a_message_from_ourselves_is_ignored() -> None:
    a, _ = pair()
    sync = Sync(a.name, a.endpoint, (a.me.with_heartbeat(50),))
    assert a.on_message(sync, 1.0) == Output()
    assert a.me.heartbeat == 0


# ------------------------------------------------------------------------------ joining


def test_join_flow_through_a_seed_known_by_endpoint_only() -> None:
    rng = random.Random(4)
    seed = GossipState.found_cluster("seed", endpoint_of("seed"), 0.0)
    joiner = GossipState.join("new", endpoint_of("new"), [endpoint_of("seed")], 0.0)
    assert joiner.status is JOINING and list(joiner.table) == ["new"]

    first = joiner.tick(0.25, rng)
    (hello,) = first.messages
    assert hello.destination is None and hello.endpoint == endpoint_of("seed")
    assert isinstance(hello.message, Sync)
    assert [m.name for m in hello.message.members] == ["new"]

    at_seed = seed.on_message(hello.message, 0.3)
    assert changed_statuses(at_seed) == {"new": JOINING}
    (answer,) = at_seed.messages
    assert (answer.destination, answer.endpoint) == ("new", endpoint_of("new"))
    assert [m.name for m in answer.message.members] == ["seed"]  # all the joiner lacks, once

    at_joiner = joiner.on_message(answer.message, 0.3)
    assert changed_statuses(at_joiner) == {"seed": ALIVE, "new": ALIVE}
    assert joiner.status is ALIVE and set(joiner.table) == {"seed", "new"}
    (next_sync,) = joiner.tick(0.5, rng).messages
    assert next_sync.destination == "seed"  # by name from now on
    seed.on_message(next_sync.message, 0.5)
    assert seed.table["new"].status is ALIVE


def test_the_client_endpoint_of_the_local_member_reaches_the_other_node() -> None:
    seed = GossipState.found_cluster(
        "seed", endpoint_of("seed"), 0.0, client_endpoint="tcp://seed:1"
    )
    joiner = GossipState.join(
        "new", endpoint_of("new"), [endpoint_of("seed")], 0.0, client_endpoint="tcp://new:1"
    )
    assert seed.me.client_endpoint == "tcp://seed:1"
    assert joiner.me.client_endpoint == "tcp://new:1"
    assert GossipState.found_cluster("x", endpoint_of("x"), 0.0).me.client_endpoint == ""
    (hello,) = joiner.tick(0.25, random.Random(4)).messages
    (answer,) = seed.on_message(message_from_wire(hello.message.to_wire()), 0.3).messages
    joiner.on_message(message_from_wire(answer.message.to_wire()), 0.3)
    assert seed.table["new"].client_endpoint == "tcp://new:1"
    assert joiner.table["seed"].client_endpoint == "tcp://seed:1"
    assert joiner.me.client_endpoint == "tcp://new:1"  # kept through the refutation logic


def test_joiner_retries_its_seeds_until_one_answers() -> None:
    rng = random.Random(5)
    seeds = [endpoint_of("s1"), endpoint_of("s2"), endpoint_of("new")]  # its own is skipped
    joiner = GossipState.join("new", endpoint_of("new"), seeds, 0.0)
    assert joiner.seeds == (endpoint_of("s1"), endpoint_of("s2"))
    targets = [joiner.tick(0.25 * k, rng).messages[0].endpoint for k in range(1, 30)]
    assert set(targets) == {endpoint_of("s1"), endpoint_of("s2")}
    assert joiner.status is JOINING


def test_join_needs_a_seed_and_a_founder_talks_to_nobody() -> None:
    with pytest.raises(ValueError):
        GossipState.join("new", endpoint_of("new"), [endpoint_of("new")], 0.0)
    founder = GossipState.found_cluster("first", endpoint_of("first"), 0.0)
    assert founder.tick(0.25, random.Random(6)).messages == ()
    assert founder.me.heartbeat == 1


def test_node_with_no_reachable_peer_falls_back_to_its_seeds() -> None:
    me = Member("me", endpoint_of("me"), ALIVE, 0, 0)
    table = MemberTable([me, Member("gone", endpoint_of("gone"), DEAD, 0, 0)])
    quiet = GossipConfig(dead_probe_probability=0.0)
    node = GossipState(me, 0.0, config=quiet, table=table, seeds=[endpoint_of("seed")])
    (outgoing,) = node.tick(0.25, random.Random(7)).messages
    assert (outgoing.destination, outgoing.endpoint) == (None, endpoint_of("seed"))


# ------------------------------------------------------------------------------ failure detection


def test_silent_member_becomes_suspect_then_dead_at_the_configured_times() -> None:
    a, _ = pair()
    rng = random.Random(8)
    statuses = {}
    for k in range(1, 40):
        now = k * CONFIG.interval
        output = a.tick(now, rng)
        statuses[now] = a.table["n0001"].status
        if now == CONFIG.suspect_timeout:
            assert changed_statuses(output) == {"n0001": SUSPECT}
        if now == CONFIG.dead_timeout:
            assert changed_statuses(output) == {"n0001": DEAD}
    assert {s for t, s in statuses.items() if t < CONFIG.suspect_timeout} == {ALIVE}
    assert {
        s for t, s in statuses.items() if CONFIG.suspect_timeout <= t < CONFIG.dead_timeout
    } == {SUSPECT}
    assert {s for t, s in statuses.items() if t >= CONFIG.dead_timeout} == {DEAD}
    assert a.table["n0001"].incarnation == 0  # accusations keep the incarnation
    assert a.silence("n0001", 10.0) is None  # no longer watched once DEAD


def test_dead_is_counted_from_the_last_advance_and_stops_when_it_advances() -> None:
    a, b = pair()
    rng = random.Random(9)
    a.tick(3.0, rng)
    assert a.table["n0001"].status is SUSPECT
    newer = b.me.with_heartbeat(1)
    a.on_message(SyncReply(b.name, b.endpoint, (newer,)), 4.0)
    assert a.silence("n0001", 5.0) == pytest.approx(1.0)
    a.tick(7.5, rng)
    a.tick(10.0, rng)
    assert a.table["n0001"].status is SUSPECT  # only 6 s silent: suspect, not dead
    a.tick(11.5, rng)
    assert a.table["n0001"].status is DEAD


def test_suspected_node_refutes_with_a_higher_incarnation() -> None:
    a, b = pair()
    a.tick(3.0, random.Random(10))
    assert a.table["n0001"].status is SUSPECT
    outputs = exchange(a, b, 3.0)
    assert b.me.incarnation == 1 and b.status is ALIVE
    assert MemberChange(Member("n0001", endpoint_of("n0001"), ALIVE, 0, 0), b.me) in (
        outputs[0].changes
    )
    assert a.table["n0001"] == b.me
    assert b.table["n0001"] == b.me


def test_node_declared_dead_refutes_above_the_accusation() -> None:
    a, b = pair()
    accusation = Member(b.name, b.endpoint, DEAD, 5, 40)
    b.on_message(SyncReply(a.name, a.endpoint, (accusation,)), 1.0)
    assert (b.me.status, b.me.incarnation, b.me.heartbeat) == (ALIVE, 6, 40)


def test_dead_member_returns_alive_with_a_higher_incarnation() -> None:
    rng = random.Random(11)
    a, b = pair()
    for k in range(1, 31):
        a.tick(k * CONFIG.interval, rng)
    assert a.table["n0001"].status is DEAD
    restarted = GossipState.join(b.name, b.endpoint, [a.endpoint], 8.0)  # state lost
    network = Network.of([a, restarted], seed=12)
    network.rounds = 32
    network.run_round()
    network.run_round()
    assert a.table["n0001"].status is ALIVE and a.table["n0001"].incarnation == 1
    assert restarted.me == a.table["n0001"]


def test_dead_members_are_not_gossip_targets_but_are_probed_sometimes() -> None:
    me = Member("me", endpoint_of("me"), ALIVE, 0, 0)
    table = MemberTable(
        [me, Member("live", endpoint_of("live"), ALIVE, 0, 0)]
        + [Member(f"d{i}", endpoint_of(f"d{i}"), DEAD, 0, 0) for i in range(5)]
        + [Member("left", endpoint_of("left"), LEFT, 0, 0)]
    )
    rng = random.Random(13)
    node = GossipState(me, 0.0, table=table)
    # The clock stays put, so that "live" is never suspected here.
    destinations = [[out.destination for out in node.tick(0.1, rng).messages] for _ in range(200)]
    assert {d[0] for d in destinations} == {"live"}
    probes = [d[1] for d in destinations if len(d) == 2]
    assert set(probes) <= {f"d{i}" for i in range(5)}
    assert 5 <= len(probes) <= 40  # about 10 % of 200 ticks
    silent = GossipState(me, 0.0, table=table, config=GossipConfig(dead_probe_probability=0))
    assert all(len(silent.tick(0.1, rng).messages) == 1 for _ in range(50))


# ------------------------------------------------------------------------------ leaving


def test_leave_is_announced_then_completed_and_never_suspected() -> None:
    rng = random.Random(14)
    nodes = converged_cluster(6)
    leaver, others = nodes[0], nodes[1:]
    network = Network.of(nodes, seed=15)
    network.run_until(lambda: False, 4)

    output = leaver.leave(network.now, rng)
    assert leaver.status is LEAVING and leaver.me.incarnation == 1
    assert changed_statuses(output) == {leaver.name: LEAVING}
    told = [out.destination for out in output.messages]
    assert len(told) == len(set(told)) == CONFIG.announce_fanout
    network.carry(output, leaver.name, network.now)
    assert sum(node.table[leaver.name].status is LEAVING for node in others) >= 3
    assert leaver.leave(network.now, rng) == Output()  # already leaving
    assert network.run_until(lambda: network.everyone_sees(leaver.name, LEAVING), 20)

    final = leaver.complete_leave(network.now, rng)
    assert leaver.status is LEFT and changed_statuses(final) == {leaver.name: LEFT}
    network.carry(final, leaver.name, network.now)
    assert leaver.tick(network.now + 0.1, rng) == Output()
    network.down.add(leaver.name)  # the node stops
    network.run_until(lambda: False, 60)  # 15 s: twice dead_timeout
    assert all(node.table[leaver.name].status is LEFT for node in others)
    assert all(node.table[leaver.name].incarnation == 1 for node in others)
    assert network.false_deaths == [] and network.first_dead == {}


# ------------------------------------------------------------------------------ wire form


names = st.text("abcdef-0123456789", min_size=1, max_size=12)
records = st.builds(
    Member,
    name=names,
    endpoint=names.map(endpoint_of),
    status=st.sampled_from(MemberStatus),
    incarnation=st.integers(0, 2**63 - 1),
    heartbeat=st.integers(0, 2**63 - 1),
)
messages = st.sampled_from([Sync, SyncReply]).flatmap(
    lambda kind: st.builds(
        kind,
        sender=names,
        sender_endpoint=names.map(endpoint_of),
        members=st.lists(records, unique_by=lambda m: m.name, max_size=5).map(tuple),
    )
)


def only_builtin_types(value: object) -> bool:
    if isinstance(value, dict):
        return all(type(k) is str and only_builtin_types(v) for k, v in value.items())
    if isinstance(value, list):
        return all(only_builtin_types(item) for item in value)
    return value is None or type(value) in (str, int, float, bytes, bool)


@given(messages)
def test_message_wire_round_trip(message: GossipMessage) -> None:
    wire = message.to_wire()
    assert only_builtin_types(wire)
    assert message_from_wire(wire) == message
    assert type(message).from_wire(wire) == message


def valid_wire() -> dict[str, WireValue]:
    return Sync("a", "tcp://a:1", (Member("b", "tcp://b:1", ALIVE, 1, 2),)).to_wire()


@pytest.mark.parametrize(
    "broken",
    [
        lambda w: None,
        lambda w: [w],
        lambda w: {**w, "type": "gossip"},
        lambda w: {k: v for k, v in w.items() if k != "sender"},
        lambda w: {k: v for k, v in w.items() if k != "members"},
        lambda w: {**w, "sender": ""},
        lambda w: {**w, "endpoint": 7},
        lambda w: {**w, "members": "b"},
        lambda w: {**w, "members": [["b", "tcp://b:1", "alive", 1]]},
        lambda w: {**w, "members": [*w["members"], *w["members"]]},  # a name twice
        lambda w: {**w, "members": [["b", "tcp://b:1", "alive", 1, -2]]},
    ],
)
def test_malformed_messages_are_refused(broken: Callable[[dict[str, WireValue]], object]) -> None:
    assert message_from_wire(valid_wire()) is not None
    with pytest.raises(ValueError):
        message_from_wire(broken(valid_wire()))


def test_wire_type_must_match_the_class() -> None:
    with pytest.raises(ValueError):
        SyncReply.from_wire(valid_wire())


# ------------------------------------------------------------------------------ small clusters


@settings(max_examples=25, deadline=None)
@given(
    size=st.integers(2, 8),
    seed=st.integers(0, 2**32),
    accusation=st.sampled_from([SUSPECT, DEAD]),
    drop_rate=st.sampled_from([0.0, LOSS]),
    data=st.data(),
)
def test_refutation_reaches_everyone(
    size: int, seed: int, accusation: MemberStatus, drop_rate: float, data: st.DataObject
) -> None:
    nodes = converged_cluster(size)
    network = Network.of(nodes, seed=seed, drop_rate=drop_rate, via_wire=True)
    network.run_until(lambda: False, 4)
    victim = data.draw(st.sampled_from(nodes))
    accuser = data.draw(st.sampled_from([n for n in nodes if n is not victim]))
    seen = accuser.table[victim.name]
    false_record = Member(seen.name, seen.endpoint, accusation, victim.me.incarnation, 0)
    accuser.on_message(SyncReply("gossip", "tcp://gossip:1", (false_record,)), network.now)
    assert accuser.table[victim.name].status is accusation

    def refuted_everywhere() -> bool:
        return all(
            node.table[victim.name].status is ALIVE
            and node.table[victim.name].incarnation > false_record.incarnation
            for node in nodes
        )

    assert network.run_until(refuted_everywhere, 30) is not None
    assert victim.me.status is ALIVE and victim.me.incarnation == false_record.incarnation + 1


def test_partition_heals_through_dead_probes() -> None:
    nodes = converged_cluster(8)
    network = Network.of(nodes, seed=16)
    network.side = {node.name: index % 2 for index, node in enumerate(nodes)}
    split = network.run_until(
        lambda: all(
            node.table[other.name].status is DEAD
            for node in nodes
            for other in nodes
            if network.side[node.name] != network.side[other.name]
        ),
        60,
    )
    assert split is not None
    network.side = {}
    healed = network.run_until(
        lambda: all(m.status is ALIVE for node in nodes for m in node.table.values()), 40
    )
    assert healed is not None


# ------------------------------------------------------------------------------ 1,000 nodes


def run_join(size: int, seed: int, drop_rate: float) -> tuple[int | None, Network]:
    network = Network.of(converged_cluster(size), seed=seed, drop_rate=drop_rate)
    seed_endpoint = endpoint_of(network.rng.choice(network.order))
    joiner = GossipState.join("joiner", endpoint_of("joiner"), [seed_endpoint], network.now)
    network.add(joiner)
    rounds = network.run_until(lambda: network.everyone_knows("joiner"), 3 * spread_bound(size))
    return rounds, network


def test_join_reaches_all_1000_nodes_in_logarithmic_rounds() -> None:
    size = 1000
    rounds, network = run_join(size, seed=1, drop_rate=LOSS)
    print(f"\njoin, n={size}, {LOSS:.0%} loss: known to all after {rounds} rounds")
    assert rounds is not None and rounds <= spread_bound(size)
    assert network.nodes["joiner"].status is ALIVE
    assert network.false_deaths == []


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("seed", [2, 3, 4])
def test_join_rounds_at_1000_nodes_more_seeds(seed: int) -> None:
    rounds, _ = run_join(1000, seed=seed, drop_rate=LOSS)
    print(f"\njoin, n=1000, seed {seed}: known to all after {rounds} rounds")
    assert rounds is not None and rounds <= spread_bound(1000)


def run_kill(size: int, seed: int) -> tuple[float, float, Network]:
    network = Network.of(converged_cluster(size), seed=seed, drop_rate=LOSS)
    network.run_until(lambda: False, 8)
    victim = network.rng.choice(network.order)
    network.down.add(victim)
    killed_at = network.now
    limit = math.ceil(2 * detection_bound(size) / CONFIG.interval)
    rounds = network.run_until(lambda: network.everyone_sees(victim, DEAD), limit)
    assert rounds is not None, "the victim was never DEAD everywhere"
    first = network.first_dead[victim] - killed_at
    everyone = network.now - killed_at
    print(
        f"\nkill, n={size}, {LOSS:.0%} loss: first DEAD after {first:.2f} s, "
        f"DEAD everywhere after {everyone:.2f} s (bound {detection_bound(size):.2f} s)"
    )
    return first, everyone, network


SLOW_1000 = pytest.param(1000, marks=[pytest.mark.slow, pytest.mark.timeout(900)], id="1000")


@pytest.mark.parametrize("size", [200, SLOW_1000], ids=str)
def test_killed_node_is_dead_everywhere_within_the_timeouts(size: int) -> None:
    first, everyone, network = run_kill(size, seed=5)
    # Not before its heartbeat could have stopped for dead_timeout at the stalest observer,
    # which had heard from it at most suspect_timeout before the crash (nobody suspected it).
    assert first >= CONFIG.dead_timeout - CONFIG.suspect_timeout
    assert everyone <= detection_bound(size)
    assert network.false_deaths == []


@pytest.mark.parametrize("size", [100, SLOW_1000], ids=str)
def test_no_live_node_is_ever_declared_dead_under_5_percent_loss(size: int) -> None:
    network = Network.of(converged_cluster(size), seed=6, drop_rate=LOSS)
    duration = 30.0
    # The longest heartbeat silence any observer had of a live member, sampled over a few
    # observers each round (a separate rng, so sampling does not change the run).
    sampler, longest_silence = random.Random(7), 0.0
    for _ in range(round(duration / CONFIG.interval)):
        network.run_round()
        for observer in sampler.sample(network.running(), 5):
            silences = (observer.silence(name, network.now) for name in network.nodes)
            longest_silence = max(longest_silence, *(s for s in silences if s is not None))
    highest_incarnation = max(node.me.incarnation for node in network.running())
    print(
        f"\n{duration:.0f} s, n={size}, {LOSS:.0%} loss: {len(network.false_deaths)} false DEAD, "
        f"{len(network.suspicions)} false suspicions, highest incarnation {highest_incarnation}, "
        f"longest silence seen {longest_silence:.2f} s"
    )
    assert network.false_deaths == []
    assert all(node.status is ALIVE for node in network.running())
    # Suspicions are allowed (they are refuted), but they must stay rare.
    assert len(network.suspicions) <= size // 100


def test_a_held_join_stays_joining_until_finished_then_is_alive_everywhere() -> None:
    rng = random.Random(5)
    seed = GossipState.found_cluster("seed", endpoint_of("seed"), 0.0)
    joiner = GossipState.join(
        "new", endpoint_of("new"), [endpoint_of("seed")], 0.0, hold_joining=True
    )
    (hello,) = joiner.tick(0.25, rng).messages
    (answer,) = seed.on_message(hello.message, 0.3).messages
    joiner.on_message(answer.message, 0.3)
    assert joiner.status is JOINING and joiner.holding_join
    assert set(joiner.table) == {"seed", "new"}
    for k in range(2, 6):  # more rounds change nothing while the handoff runs
        exchange(joiner, seed, k * 0.25)
    assert joiner.status is JOINING and seed.table["new"].status is JOINING

    finished = joiner.finish_joining(1.5, rng)
    assert changed_statuses(finished) == {"new": ALIVE} and not joiner.holding_join
    (announce,) = finished.messages
    seed.on_message(announce.message, 1.5)
    assert seed.table["new"].status is ALIVE
    assert joiner.finish_joining(1.75, rng).messages == ()  # once


def test_a_held_join_of_a_node_the_cluster_knew_is_alive_at_once() -> None:
    # A memory node restarted under its old name is a member already: no handoff.
    rng = random.Random(6)
    a, b = pair()
    restarted = GossipState.join(b.name, b.endpoint, [a.endpoint], 1.0, hold_joining=True)
    (hello,) = restarted.tick(1.25, rng).messages
    (answer,) = a.on_message(hello.message, 1.3).messages
    restarted.on_message(answer.message, 1.3)
    assert restarted.status is ALIVE and not restarted.holding_join


def test_a_node_restarted_on_its_data_is_alive_at_once_with_the_members_it_knew() -> None:
    # Not JOINING: at a higher incarnation that would outrank its ALIVE record elsewhere
    # and make it look like a newcomer that owns nothing, moving its keys for a moment.
    known = [Member(n, endpoint_of(n), ALIVE, 0, 0) for n in ("a", "b", "me")]
    state = GossipState.join(
        "me", endpoint_of("me"), [endpoint_of("a")], 0.0, incarnation=3, remembered=known
    )
    assert state.status is ALIVE and state.me.incarnation == 3
    assert set(state.table) == {"a", "b", "me"}
    (sync,) = state.tick(0.25, random.Random(1)).messages
    assert sync.destination in {"a", "b"}  # by name: they are members


def test_a_joining_node_syncs_everyone_once_in_contact() -> None:
    a, b = pair()
    joiner = GossipState.join("new", endpoint_of("new"), [a.endpoint], 0.0, hold_joining=True)
    (hello,) = joiner.tick(0.25, random.Random(2)).messages
    (answer,) = a.on_message(hello.message, 0.3).messages
    joiner.on_message(answer.message, 0.3)
    everyone = joiner.sync_everyone()
    assert {m.destination for m in everyone.messages} == {a.name, b.name}
