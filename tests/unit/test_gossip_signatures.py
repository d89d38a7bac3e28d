"""Signed gossip (issue 16, attack 4): in a secure cluster only member X makes X's claims,
a tombstone is signed by its remover, and a receiver takes nothing else
(kvactors.core.member_signatures, kvactors.core.gossip, kvactors.core.membership).

Pure logic with fake keys (a keyed hash per node name), and one test with the real
Ed25519 keys of node certificates (kvactors.cluster.signatures).
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvactors.cluster.signatures import CertificateSigner, TrustSetVerifier
from kvactors.core.gossip import GOSSIP_FORMAT, GossipState, Output, Sync, message_from_wire
from kvactors.core.member_signatures import (
    MAX_BAD_SIGNATURES,
    MemberSigning,
    claim_payload,
    removal_payload,
)
from kvactors.core.membership import (
    ClaimSignature,
    Member,
    MemberStatus,
    MemberTable,
    RemovalSignature,
    RemoveOutcome,
)
from kvactors.errors import BadRequestError
from kvactors.net.certs import Role, TrustSet, load_certificate, write_key_pair

JOINING, ALIVE, LEAVING = MemberStatus.JOINING, MemberStatus.ALIVE, MemberStatus.LEAVING
SUSPECT, DEAD, LEFT = MemberStatus.SUSPECT, MemberStatus.DEAD, MemberStatus.LEFT
REMOVED = MemberStatus.REMOVED
NOW = 0.0


class FakeKeys:
    """Keys for nodes by name: a signature is a hash of the node's secret and the payload;
    a name is trusted once it is given a key. Counts the checks it makes."""

    def __init__(self, *names: str) -> None:
        self.secrets = {name: f"secret of {name}".encode() for name in names}
        self.checks = 0
        self.signed = 0

    def signature(self, name: str, payload: bytes) -> bytes:
        return hashlib.sha256(self.secrets[name] + payload).digest()

    def signer(self, name: str) -> FakeSigner:
        return FakeSigner(self, name)

    def verify(self, name: str, payload: bytes, signature: bytes) -> bool:
        self.checks += 1
        return name in self.secrets and signature == self.signature(name, payload)


@dataclasses.dataclass
class FakeSigner:
    keys: FakeKeys
    name: str

    def sign(self, payload: bytes) -> bytes:
        self.keys.signed += 1
        return self.keys.signature(self.name, payload)


def endpoint_of(name: str) -> str:
    return f"tcp://{name}:1"


def claim(
    keys: FakeKeys,
    name: str,
    status: MemberStatus = ALIVE,
    incarnation: int = 0,
    heartbeat: int = 0,
    *,
    endpoint: str | None = None,
    signed_by: str | None = None,
) -> Member:
    """`name`'s record as `name` (or `signed_by`) signs it."""
    endpoint = endpoint or endpoint_of(name)
    payload = claim_payload(name, endpoint, "", incarnation, status)
    signature = ClaimSignature(status, keys.signature(signed_by or name, payload))
    return Member(name, endpoint, status, incarnation, heartbeat, signature=signature)


def accused(record: Member, status: MemberStatus = SUSPECT) -> Member:
    """An accusation of `record`, as a failure detector makes it: its signature kept."""
    return dataclasses.replace(record, status=status)


def secure_node(keys: FakeKeys, name: str, *others: Member) -> GossipState:
    state = GossipState.found_cluster(
        name, endpoint_of(name), NOW, signer=keys.signer(name), verifier=keys
    )
    if others:
        state.on_message(Sync("peer", endpoint_of("peer"), others), NOW)
    return state


def sync_from(sender: str, *records: Member) -> Sync:
    return Sync(sender, endpoint_of(sender), records)


def is_authentic(keys: FakeKeys, record: Member) -> bool:
    signing = MemberSigning("checker", keys.signer("checker"), keys)
    taken, _ = signing.authentic([record])
    return bool(taken)


# -------------------------------------------------------------------- a node's own record


def test_a_secure_node_signs_its_claim_and_signs_again_only_when_it_changes() -> None:
    keys = FakeKeys("a", "b")
    state = secure_node(keys, "a")
    assert state.me.signature == ClaimSignature(
        ALIVE, keys.signature("a", claim_payload("a", endpoint_of("a"), "", 0, ALIVE))
    )
    signed = keys.signed
    rng = random.Random(1)
    for tick in range(1, 20):
        state.tick(float(tick), rng)
    assert state.me.heartbeat > 0
    assert keys.signed == signed  # a heartbeat is not signed
    state.leave(NOW, rng)
    assert (state.me.status, state.me.incarnation) == (LEAVING, 1)
    assert is_authentic(keys, state.me)
    state.complete_leave(NOW, rng)
    assert state.me.status is LEFT
    assert is_authentic(keys, state.me)
    assert keys.signed == signed + 2


def test_a_joining_node_signs_again_when_it_turns_alive() -> None:
    keys = FakeKeys("a", "b")
    joiner = GossipState.join(
        "b", endpoint_of("b"), [endpoint_of("a")], NOW, signer=keys.signer("b"), verifier=keys
    )
    assert joiner.me.signature is not None and joiner.me.signature.announced is JOINING
    joiner.on_message(sync_from("a", claim(keys, "a")), NOW)
    assert joiner.me.status is ALIVE
    assert joiner.me.signature is not None and joiner.me.signature.announced is ALIVE
    assert is_authentic(keys, joiner.me)


def test_an_insecure_node_signs_nothing_and_its_wire_form_is_as_before() -> None:
    state = GossipState.found_cluster("a", endpoint_of("a"), NOW)
    assert state.me.signature is None
    assert state.me.to_wire() == ["a", endpoint_of("a"), "alive", 0, 0]
    with_client = Member("a", endpoint_of("a"), ALIVE, 0, 0, "tcp://a:2")
    assert with_client.to_wire() == ["a", endpoint_of("a"), "alive", 0, 0, "tcp://a:2"]


def test_a_node_needs_both_a_signer_and_a_verifier() -> None:
    keys = FakeKeys("a")
    with pytest.raises(ValueError, match="both"):
        GossipState.found_cluster("a", endpoint_of("a"), NOW, signer=keys.signer("a"))
    with pytest.raises(ValueError, match="both"):
        GossipState.found_cluster("a", endpoint_of("a"), NOW, verifier=keys)


@pytest.mark.parametrize(
    "signature",
    [
        ClaimSignature(ALIVE, b"\x01" * 64),
        ClaimSignature(LEFT, b"s"),
        RemovalSignature("remover", b"\x00" * 128),
    ],
)
def test_signed_records_travel_intact(signature: ClaimSignature | RemovalSignature) -> None:
    record = Member("b", endpoint_of("b"), DEAD, 3, 9, signature=signature)
    wire = record.to_wire()
    assert len(wire) == 7 and wire[5] == ""
    assert Member.from_wire(wire) == record


@pytest.mark.parametrize(
    "signature",
    [
        [],
        ["alive"],
        ["suspect", b"s"],  # an accusation is nobody's own claim
        ["removed", b"s"],
        ["alive", "text, not bytes"],
        ["alive", b""],
        ["alive", b"s" * 129],
        ["alive", "remover", b"s"],
        ["removed", "bad\nname", b"s"],
        ["removed", "remover", b"s", "more"],
        b"s",
    ],
)
def test_malformed_signatures_are_refused_with_the_typed_error(signature: object) -> None:
    message = {
        "format": GOSSIP_FORMAT,
        "type": "sync",
        "sender": "x",
        "endpoint": endpoint_of("x"),
        "members": [["b", endpoint_of("b"), "alive", 0, 0, "", signature]],
    }
    with pytest.raises(BadRequestError):
        message_from_wire(message)


# -------------------------------------------------------------------- forged claims refused


def forged_claims(keys: FakeKeys) -> dict[str, Member]:
    """Records of b that b never signed, each as a forger could make it."""
    honest = claim(keys, "b", ALIVE, 3)
    return {
        "unsigned": dataclasses.replace(honest, signature=None),
        "endpoint moved, b's signature kept": dataclasses.replace(
            honest, endpoint="tcp://mallory:1", incarnation=4
        ),
        "endpoint moved at b's incarnation": dataclasses.replace(
            honest, endpoint="tcp://mallory:1"
        ),
        "incarnation raised": dataclasses.replace(honest, incarnation=5),
        "left, b's alive signature kept": dataclasses.replace(honest, status=LEFT, incarnation=4),
        "left, its signature relabelled": dataclasses.replace(
            honest,
            status=LEFT,
            signature=ClaimSignature(LEFT, honest.signature.signature),  # type: ignore[union-attr]
        ),
        "leaving, signed by trusted c": claim(keys, "b", LEAVING, 4, signed_by="c"),
        "endpoint moved, signed by trusted c": claim(
            keys, "b", ALIVE, 4, endpoint="tcp://mallory:1", signed_by="c"
        ),
        "garbage signature": dataclasses.replace(
            honest, incarnation=4, signature=ClaimSignature(ALIVE, b"\x00" * 32)
        ),
    }


@pytest.mark.parametrize("forgery", list(forged_claims(FakeKeys("b", "c"))))
def test_a_forged_claim_is_refused_and_counted(forgery: str) -> None:
    keys = FakeKeys("a", "b", "c")
    honest = claim(keys, "b", ALIVE, 3)
    node = secure_node(keys, "a", honest)
    assert node.table["b"] == honest
    output = node.on_message(sync_from("c", forged_claims(keys)[forgery]), NOW)
    assert output.forged == 1
    assert node.forged_records == 1
    assert node.table["b"] == honest


def test_a_member_no_key_vouches_for_is_refused() -> None:
    keys = FakeKeys("a", "b", "mallory")
    record = claim(keys, "mallory")
    del keys.secrets["mallory"]  # signed, but not by a trusted node
    node = secure_node(keys, "a")
    output = node.on_message(sync_from("b", record, claim(keys, "b")), NOW)
    assert output.forged == 1
    assert set(node.table) == {"a", "b"}


def test_an_honest_change_of_claim_is_taken() -> None:
    keys = FakeKeys("a", "b")
    node = secure_node(keys, "a", claim(keys, "b", ALIVE, 3))
    moved = claim(keys, "b", LEAVING, 4, endpoint="tcp://b-elsewhere:1")
    output = node.on_message(sync_from("b", moved), NOW)
    assert output.forged == 0
    assert node.table["b"] == moved


def test_a_forged_record_of_the_node_itself_is_refused_not_refuted() -> None:
    keys = FakeKeys("a", "b")
    node = secure_node(keys, "a", claim(keys, "b"))
    forged = claim(keys, "a", LEFT, 1, signed_by="b")
    output = node.on_message(sync_from("b", forged), NOW)
    assert output.forged == 1
    assert (node.me.status, node.me.incarnation) == (ALIVE, 0)


# -------------------------------------------------------------------- accusations


@pytest.mark.parametrize("status", [SUSPECT, DEAD])
@pytest.mark.parametrize("announced", [JOINING, ALIVE, LEAVING])
def test_an_accusation_at_a_signed_incarnation_is_taken(
    status: MemberStatus, announced: MemberStatus
) -> None:
    keys = FakeKeys("a", "b", "c")
    node = secure_node(keys, "a", claim(keys, "b", announced, 3))
    accusation = accused(claim(keys, "b", announced, 3), status)
    output = node.on_message(sync_from("c", accusation), NOW)
    assert output.forged == 0
    assert node.table["b"].status is status


@pytest.mark.parametrize("status", [SUSPECT, DEAD])
def test_an_accusation_at_an_incarnation_the_member_never_signed_is_refused(
    status: MemberStatus,
) -> None:
    keys = FakeKeys("a", "b", "c")
    node = secure_node(keys, "a", claim(keys, "b", ALIVE, 3))
    ahead = dataclasses.replace(accused(claim(keys, "b", ALIVE, 3), status), incarnation=4)
    output = node.on_message(sync_from("c", ahead), NOW)
    assert output.forged == 1
    assert node.table["b"].status is ALIVE


def test_an_accusation_of_a_member_that_left_is_refused() -> None:
    keys = FakeKeys("a", "b", "c")
    node = secure_node(keys, "a")
    accusation = accused(claim(keys, "b", LEFT, 3), DEAD)
    assert node.on_message(sync_from("c", accusation), NOW).forged == 1
    assert "b" not in node.table


def test_a_node_refutes_a_signed_accusation_with_a_new_signed_claim() -> None:
    keys = FakeKeys("a", "b")
    node = secure_node(keys, "a", claim(keys, "b"))
    accusation = accused(node.me, DEAD)
    node.on_message(sync_from("b", accusation), NOW)
    assert (node.me.status, node.me.incarnation) == (ALIVE, 1)
    assert is_authentic(keys, node.me)


def test_failure_detection_accuses_with_the_accused_members_signature() -> None:
    keys = FakeKeys("a", "b", "c")
    node = secure_node(keys, "a", claim(keys, "b"))
    rng = random.Random(3)
    node.tick(node.config.dead_timeout + 1.0, rng)
    node.tick(node.config.dead_timeout + 2.0, rng)
    dead = node.table["b"]
    assert dead.status is DEAD
    other = secure_node(keys, "c", claim(keys, "b"))
    assert other.on_message(sync_from("a", dead), NOW).forged == 0
    assert other.table["b"].status is DEAD


# -------------------------------------------------------------------- signed over unsigned


def test_an_unsigned_record_never_replaces_a_signed_one_in_a_merge() -> None:
    keys = FakeKeys("b")
    signed = claim(keys, "b", ALIVE, 3)
    table = MemberTable([signed])
    for status in MemberStatus:
        unsigned = Member("b", "tcp://mallory:1", status, 5, 99)
        merged, changes = table.merge([unsigned])
        assert merged["b"].precedence == signed.precedence
        assert merged["b"].signature == signed.signature
        assert changes == ()


def test_a_signed_record_replaces_a_remembered_unsigned_one_whatever_its_incarnation() -> None:
    keys = FakeKeys("a", "b")
    remembered = Member("b", endpoint_of("b"), ALIVE, 7, 0)
    node = GossipState.join(
        "a",
        endpoint_of("a"),
        [endpoint_of("b")],
        NOW,
        remembered=[remembered],
        signer=keys.signer("a"),
        verifier=keys,
    )
    # The guess is its own: a secure node sends only signed records.
    sent = node.tick(1.0, random.Random(1)).messages
    assert sent and all(m.name != "b" for out in sent for m in out.message.members)
    node.on_message(sync_from("b", claim(keys, "b", ALIVE, 2)), NOW)
    assert node.table["b"] == claim(keys, "b", ALIVE, 2)


def test_an_insecure_node_drops_signatures_on_arrival() -> None:
    keys = FakeKeys("b")
    node = GossipState.found_cluster("a", endpoint_of("a"), NOW)
    node.on_message(sync_from("b", claim(keys, "b", ALIVE, 3)), NOW)
    assert node.table["b"].signature is None
    # So its own cluster's unsigned news still outranks it, as it always did.
    node.on_message(sync_from("b", Member("b", endpoint_of("b"), LEFT, 3, 0)), NOW)
    assert node.table["b"].status is LEFT


def test_equal_claims_with_different_signatures_merge_alike_in_either_order() -> None:
    keys = FakeKeys("b", "r1", "r2")
    joining = accused(claim(keys, "b", JOINING, 2))
    alive = accused(claim(keys, "b", ALIVE, 2))
    assert joining.precedence == alive.precedence
    for one, other in [(joining, alive), (alive, joining)]:
        assert MemberTable([one]).merge([other])[0]["b"] == alive
        assert one.merged_with(other) == other.merged_with(one) == alive


# -------------------------------------------------------------------- tombstones


def dead_cluster(keys: FakeKeys) -> tuple[GossipState, GossipState]:
    dead_b = accused(claim(keys, "b", ALIVE, 3), DEAD)
    return secure_node(keys, "a", dead_b), secure_node(keys, "c", dead_b)


def test_a_tombstone_is_signed_by_its_remover_and_taken_by_a_trusting_node() -> None:
    keys = FakeKeys("a", "b", "c")
    remover, other = dead_cluster(keys)
    result, output = remover.remove("b", NOW, random.Random(1))
    assert result.outcome is RemoveOutcome.REMOVED
    tombstone = remover.table["b"]
    assert tombstone.signature == RemovalSignature(
        "a", keys.signature("a", removal_payload("a", "b", endpoint_of("b"), "", 3))
    )
    assert output.changes and output.changes[0].after == tombstone
    assert other.on_message(sync_from("a", tombstone), NOW).forged == 0
    assert other.table["b"].status is REMOVED


def test_a_tombstone_stands_when_the_removed_members_key_is_revoked() -> None:
    keys = FakeKeys("a", "b", "c")
    remover, other = dead_cluster(keys)
    remover.remove("b", NOW, random.Random(1))
    del keys.secrets["b"]
    other.trust_changed()
    assert other.on_message(sync_from("a", remover.table["b"]), NOW).forged == 0
    assert other.table["b"].status is REMOVED


def test_a_tombstone_from_a_remover_nobody_trusts_or_unsealed_is_refused() -> None:
    keys = FakeKeys("a", "b", "c", "mallory")
    _, other = dead_cluster(keys)
    dead_b = other.table["b"]
    payload = removal_payload("mallory", "b", endpoint_of("b"), "", 3)
    by_mallory = dataclasses.replace(
        dead_b,
        status=REMOVED,
        signature=RemovalSignature("mallory", keys.signature("mallory", payload)),
    )
    del keys.secrets["mallory"]
    unsealed = dataclasses.replace(dead_b, status=REMOVED)  # b's claim signature only
    claimed_by_a = dataclasses.replace(
        by_mallory, signature=RemovalSignature("a", keys.signature("c", payload))
    )
    output = other.on_message(sync_from("a", by_mallory, unsealed, claimed_by_a), NOW)
    assert output.forged == 3
    assert other.table["b"].status is DEAD


# -------------------------------------------------------------------- cost of checking


def test_a_signature_is_checked_once_until_the_trust_changes() -> None:
    keys = FakeKeys("a", "b", "c")
    node = secure_node(keys, "a")
    message = sync_from("b", claim(keys, "b", ALIVE, 1), claim(keys, "c", ALIVE, 4))
    node.on_message(message, NOW)
    checks = keys.checks
    for heartbeat in range(1, 5):  # the same claims, heartbeats moving on
        beats = tuple(r.with_heartbeat(heartbeat) for r in message.members)
        node.on_message(sync_from("b", *beats), NOW)
    assert keys.checks == checks
    node.trust_changed()
    node.on_message(message, NOW)
    assert keys.checks == checks + 2


def test_a_message_of_forgeries_is_checked_only_so_far() -> None:
    keys = FakeKeys("a", "b")
    node = secure_node(keys, "a")
    forgeries = [
        Member(f"m{i}", endpoint_of(f"m{i}"), ALIVE, 0, 0, signature=ClaimSignature(ALIVE, b"x"))
        for i in range(40)
    ]
    keys.secrets.update({f"m{i}": b"k" for i in range(40)})
    checks = keys.checks
    output = node.on_message(sync_from("b", *forgeries, claim(keys, "b")), NOW)
    assert keys.checks - checks == MAX_BAD_SIGNATURES
    assert output.forged == 41  # the honest record too: the message is a liar's
    assert set(node.table) == {"a"}


# -------------------------------------------------------------------- the merge order


names = st.sampled_from(["b", "c"])


@st.composite
def signed_records(draw: st.DrawFn) -> Member:
    keys = FakeKeys("b", "c", "r1", "r2")
    name = draw(names)
    status = draw(st.sampled_from(list(MemberStatus)))
    incarnation = draw(st.integers(0, 2))
    heartbeat = draw(st.integers(0, 3))
    endpoint = draw(st.sampled_from([endpoint_of(name), "tcp://other:1"]))
    if status is REMOVED:
        remover = draw(st.sampled_from(["r1", "r2"]))
        payload = removal_payload(remover, name, endpoint, "", incarnation)
        signature: ClaimSignature | RemovalSignature = RemovalSignature(
            remover, keys.signature(remover, payload)
        )
    else:
        accusable = [JOINING, ALIVE, LEAVING]
        announced = draw(st.sampled_from(accusable)) if status in (SUSPECT, DEAD) else status
        payload = claim_payload(name, endpoint, "", incarnation, announced)
        signature = ClaimSignature(announced, keys.signature(name, payload))
    unsigned = draw(st.booleans()) and draw(st.booleans())  # a few unsigned ones
    return Member(
        name, endpoint, status, incarnation, heartbeat, signature=None if unsigned else signature
    )


@settings(max_examples=500, deadline=None)
@given(st.lists(signed_records(), max_size=6), st.lists(signed_records(), max_size=6))
def test_the_merge_of_signed_records_is_commutative_associative_and_idempotent(
    first: list[Member], second: list[Member]
) -> None:
    def table(records: list[Member]) -> MemberTable:
        merged = MemberTable()
        for record in records:
            merged, _ = merged.merge([record])
        return merged

    one, other = table(first), table(second)
    assert one.merge(other)[0] == other.merge(one)[0]
    assert one.merge(one)[0] == one
    both = one.merge(other)[0]
    assert both.merge(other)[0] == both
    for record in second:
        assert table([*first, record]).merge(other)[0] == both


# -------------------------------------------------------------------- a fuzz of the path


KEYS = FakeKeys("a", "b", "c", "d")
text = st.sampled_from(["b", "c", "d", "e", "a", "", "x\n", 7, None])
endpoints = st.sampled_from([endpoint_of("b"), endpoint_of("c"), "tcp://mallory:1", "", 3])
statuses = st.sampled_from([s.value for s in MemberStatus] + ["gone", 1])
counters = st.one_of(st.integers(0, 4), st.sampled_from([2**63 - 1, 2**64, -1, 1.5, True]))


@st.composite
def wire_records(draw: st.DrawFn) -> Any:
    """A record's wire form: mostly a validly signed one, possibly altered after signing."""
    name = draw(st.sampled_from(["b", "c", "d", "e", "a"]))
    status = draw(st.sampled_from(list(MemberStatus)))
    incarnation = draw(st.integers(0, 3))
    signer = draw(st.sampled_from(["b", "c", "d", "e", "a", name, name]))
    if status is REMOVED:
        payload = removal_payload(signer, name, endpoint_of(name), "", incarnation)
        signature: list[Any] = ["removed", signer, KEYS.signature("a", payload)]
        if signer in KEYS.secrets:
            signature[2] = KEYS.signature(signer, payload)
    else:
        announced = draw(st.sampled_from([JOINING, ALIVE, LEAVING, LEFT, status]))
        payload = claim_payload(name, endpoint_of(name), "", incarnation, announced)
        key = signer if signer in KEYS.secrets else "a"
        signature = [announced.value, KEYS.signature(key, payload)]
    wire: list[Any] = [name, endpoint_of(name), status.value, incarnation, 0, "", signature]
    for _ in range(draw(st.integers(0, 2))):  # alter a field after signing
        field = draw(st.integers(0, 6))
        wire[field] = draw(
            [text, endpoints, statuses, counters, counters, endpoints, st.just(b"sig")][field]
        )
    return [*wire, "extra"][: draw(st.sampled_from([7, 7, 7, 6, 5, 8]))]


messages = st.fixed_dictionaries(
    {
        "format": st.sampled_from([GOSSIP_FORMAT, GOSSIP_FORMAT, 2]),
        "type": st.sampled_from(["sync", "sync_reply"]),
        "sender": st.sampled_from(["b", "c", "mallory"]),
        "endpoint": st.just("tcp://x:1"),
        "members": st.lists(wire_records(), max_size=8),
    }
)


@settings(max_examples=2_500, deadline=None)
@given(st.lists(messages, min_size=1, max_size=4))
def test_signed_gossip_takes_anything_and_refuses_only_with_its_typed_error(
    wires: list[dict[str, Any]],
) -> None:
    node = secure_node(KEYS, "a", claim(KEYS, "b"), claim(KEYS, "c"))
    checker = MemberSigning("checker", KEYS.signer("a"), KEYS)
    for wire in wires:
        try:
            message = message_from_wire(wire)
        except BadRequestError:
            continue
        output = node.on_message(message, NOW)
        assert isinstance(output, Output)
        forged_in_message = len(message.members) - len(checker.authentic(message.members)[0])
        assert output.forged == forged_in_message
    # Every record held is one a trusted node signed (or this node's own, signed by it).
    held = node.table.members()
    assert len(checker.authentic(held)[0]) == len(held)
    assert node.me.status is ALIVE


# -------------------------------------------------------------------- real keys


def test_real_node_keys_sign_and_a_trusting_node_checks(tmp_path: Path) -> None:
    trust_dir, secrets = tmp_path / "trust", tmp_path / "secrets"
    trust_dir.mkdir()
    for name, role in [("a", Role.NODE), ("b", Role.NODE), ("c", Role.NODE), ("w", Role.WRITE)]:
        public, _ = write_key_pair(secrets, name, role)
        (trust_dir / public.name).write_bytes(public.read_bytes())
    trust = TrustSet.load(trust_dir)

    def state(name: str) -> GossipState:
        certificate = load_certificate(secrets / f"{name}.key_secret")
        return GossipState.found_cluster(
            name,
            endpoint_of(name),
            NOW,
            signer=CertificateSigner(certificate),
            verifier=TrustSetVerifier(trust),
        )

    a, b, c = state("a"), state("b"), state("c")
    assert b.me.signature is not None and len(b.me.signature.signature) == 64
    # b's own record, over the wire, is taken.
    wire_sync = message_from_wire(Sync("b", endpoint_of("b"), (b.me,)).to_wire())
    assert a.on_message(wire_sync, NOW).forged == 0
    assert a.table["b"] == b.me
    # c, a trusted node, signs b moved to its own socket: refused.
    forged_payload = claim_payload("b", "tcp://mallory:1", "", 1, ALIVE)
    c_signing = CertificateSigner(load_certificate(secrets / "c.key_secret"))
    forged = Member(
        "b",
        "tcp://mallory:1",
        ALIVE,
        1,
        0,
        signature=ClaimSignature(ALIVE, c_signing.sign(forged_payload)),
    )
    assert a.on_message(sync_from("c", forged, c.me), NOW).forged == 1
    assert a.table["b"] == b.me
    assert a.table["c"] == c.me
    # A record in the name of a client key (role write) is nobody's claim.
    w_payload = claim_payload("w", endpoint_of("w"), "", 0, ALIVE)
    by_w = Member(
        "w",
        endpoint_of("w"),
        ALIVE,
        0,
        0,
        signature=ClaimSignature(ALIVE, c_signing.sign(w_payload)),
    )
    assert a.on_message(sync_from("c", by_w), NOW).forged == 1
    # A revoked node's new claims are refused once the trust set is re-read.
    (trust_dir / "b.key").unlink()
    trust.reload()
    a.trust_changed()
    b.leave(NOW, random.Random(1))
    assert a.on_message(sync_from("b", b.me), NOW).forged == 1
    assert a.table["b"].status is ALIVE
