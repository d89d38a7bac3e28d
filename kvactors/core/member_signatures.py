"""Signed member records: in a secure cluster, only member X makes X's claims.

Gossip relays records, so a node cannot tell who made a record by who sent it. In a
secure cluster every record carries a signature (`Member.signature`), made once by the
node that changed the record and checked by every node that receives it:

- a member's claim, the record it announces of itself (name, endpoint, client endpoint,
  incarnation and its status when it is one that only the member itself announces:
  JOINING, ALIVE, LEAVING or LEFT) is signed by that member (`ClaimSignature`). The
  member signs again whenever its claim changes (a new incarnation, a leave, another
  endpoint after a restart); a heartbeat is not signed;
- an accusation (SUSPECT, DEAD) is made by others: it keeps the accused's signature of
  the claim it accuses, with the status the accused announced. A receiver takes it only
  at an incarnation, endpoint and client endpoint the accused itself signed, with a
  status the accused could still be accused in (JOINING, ALIVE or LEAVING);
- a tombstone (REMOVED, an admin's `remove` on one node) is signed by the node that
  removed the member, the remover (`RemovalSignature`, which names it). Only the
  remover's signature is checked: the member may be gone for good, its key revoked.
  A tombstone outranks every record at its incarnation, as an accusation does, and a
  live member refutes it the same way.

`MemberSigning` is a node's side of it: `sign_own` signs the node's own record,
`seal_removal` a tombstone it made, and `authentic` picks the records of a gossip
message that carry a valid signature of a trusted node. The node's key and the trusted
keys stay outside the core: they come in as a `RecordSigner` and a `RecordVerifier`
(kvactors.cluster.signatures makes them of the node's certificate and trust set).

A signature is checked once: the claims verified are kept (at most `VERIFIED_LIMIT`,
the oldest forgotten first) until `forget_verified` (the trust set changed). Once a
message has shown `MAX_BAD_SIGNATURES` wrong signatures, the records of it not verified
before are refused unchecked: an honest node sends none, and checking costs a liar
nothing but costs the receiver tens of microseconds each.

What signatures do not stop: a heartbeat is not signed, so a forger trusted as a node
can keep a dead member's heartbeat moving (it looks alive, and is suspected only once
the forger stops); a trusted node can still accuse any member at its current
incarnation, or remove it, which the member refutes; and records are not bound to a
time, so an old record can be sent again (it loses to the newer one a node holds).

Pure logic: the payloads signed are encoded here, field by field with their lengths,
so that two claims never encode alike.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Final, Protocol

from kvactors.core.membership import (
    MAX_MEMBERS,
    ClaimSignature,
    Member,
    MemberStatus,
    MemberTable,
    RemovalSignature,
)

__all__ = [
    "MAX_BAD_SIGNATURES",
    "VERIFIED_LIMIT",
    "MemberSigning",
    "RecordSigner",
    "RecordVerifier",
    "claim_payload",
    "removal_payload",
    "signature_is_plausible",
]


class RecordSigner(Protocol):
    """Signs with this node's own key."""

    def sign(self, payload: bytes) -> bytes:
        """The signature of `payload`."""
        ...


class RecordVerifier(Protocol):
    """Checks signatures against the keys of the trusted nodes."""

    def verify(self, name: str, payload: bytes, signature: bytes) -> bool:
        """True when `signature` is node `name`'s signature of `payload`; False when it
        is not, or `name` is not a trusted node. Never raises."""
        ...


MAX_BAD_SIGNATURES: Final = 8
"""Wrong signatures a message may show before the rest of it goes unchecked (refused)."""

VERIFIED_LIMIT: Final = 4 * MAX_MEMBERS
"""Verified signatures kept, so that a record seen again costs no check."""

_ANNOUNCED: Final = frozenset(
    {MemberStatus.JOINING, MemberStatus.ALIVE, MemberStatus.LEAVING, MemberStatus.LEFT}
)
"""Statuses only the member itself announces."""
_ACCUSABLE: Final = frozenset({MemberStatus.JOINING, MemberStatus.ALIVE, MemberStatus.LEAVING})
"""Announced statuses an accusation may stand on: a member that has left is not accused."""
_ACCUSATIONS: Final = frozenset({MemberStatus.SUSPECT, MemberStatus.DEAD})

_CLAIM_DOMAIN: Final = b"kvactors member claim 1\n"
_REMOVAL_DOMAIN: Final = b"kvactors member removal 1\n"


def _field(text: str) -> bytes:
    encoded = text.encode("utf-8")
    return len(encoded).to_bytes(4, "big") + encoded


def claim_payload(
    name: str, endpoint: str, client_endpoint: str, incarnation: int, announced: MemberStatus
) -> bytes:
    """What a member signs of its claim: every field, each with its length."""
    return b"".join(
        (
            _CLAIM_DOMAIN,
            _field(name),
            _field(endpoint),
            _field(client_endpoint),
            incarnation.to_bytes(8, "big"),
            _field(announced.value),
        )
    )


def removal_payload(
    remover: str, name: str, endpoint: str, client_endpoint: str, incarnation: int
) -> bytes:
    """What node `remover` signs when it removes a member at `incarnation`."""
    return b"".join(
        (
            _REMOVAL_DOMAIN,
            _field(remover),
            _field(name),
            _field(endpoint),
            _field(client_endpoint),
            incarnation.to_bytes(8, "big"),
        )
    )


def signature_is_plausible(record: Member) -> bool:
    """Whether `record`'s signature is of the kind its status needs (see the module
    docstring), before any key is asked."""
    signature = record.signature
    status = record.status
    if status is MemberStatus.REMOVED:
        return isinstance(signature, RemovalSignature)
    if not isinstance(signature, ClaimSignature):
        return False
    if status in _ACCUSATIONS:
        return signature.announced in _ACCUSABLE
    return signature.announced is status


def _payload(record: Member) -> tuple[str, bytes, bytes]:
    """(signer, payload, signature) of a record whose signature is plausible."""
    signature = record.signature
    if isinstance(signature, RemovalSignature):
        payload = removal_payload(
            signature.remover,
            record.name,
            record.endpoint,
            record.client_endpoint,
            record.incarnation,
        )
        return signature.remover, payload, signature.signature
    assert signature is not None
    payload = claim_payload(
        record.name,
        record.endpoint,
        record.client_endpoint,
        record.incarnation,
        signature.announced,
    )
    return record.name, payload, signature.signature


_VerifiedKey = tuple[str, str, str, int, ClaimSignature | RemovalSignature]


class MemberSigning:
    """One node's signing and checking of member records; see the module docstring.
    Not thread-safe: the GossipState that holds it makes every call."""

    __slots__ = ("_last_signed", "_name", "_signed", "_signer", "_verified", "_verifier")

    def __init__(self, name: str, signer: RecordSigner, verifier: RecordVerifier) -> None:
        self._name = name
        self._signer = signer
        self._verifier = verifier
        # The claim this node last signed of itself, and its signature.
        self._last_signed: tuple[tuple[str, str, str, int, MemberStatus], ClaimSignature] | None = (
            None
        )
        # Verified signatures, by (name, endpoint, client endpoint, incarnation, signature),
        # oldest first (a dict keeps insertion order).
        self._verified: dict[_VerifiedKey, None] = {}
        # The signed records of the last table asked about, and that table.
        self._signed: tuple[MemberTable, tuple[Member, ...]] | None = None

    def sign_own(self, record: Member) -> Member:
        """This node's record, signed: with the signature it has when that still fits
        the claim, else with a new one."""
        claim = record.claim
        if self._last_signed is None or self._last_signed[0] != claim:
            if record.status not in _ANNOUNCED:
                raise ValueError(f"a node does not announce itself {record.status.value}")
            payload = claim_payload(
                record.name,
                record.endpoint,
                record.client_endpoint,
                record.incarnation,
                record.status,
            )
            self._last_signed = (claim, ClaimSignature(record.status, self._signer.sign(payload)))
        signature = self._last_signed[1]
        if record.signature == signature:
            return record
        return dataclasses.replace(record, signature=signature)

    def seal_removal(self, tombstone: Member) -> Member:
        """`tombstone` (REMOVED), signed by this node as its remover."""
        if tombstone.status is not MemberStatus.REMOVED:
            raise ValueError("only a tombstone is sealed as a removal")
        payload = removal_payload(
            self._name,
            tombstone.name,
            tombstone.endpoint,
            tombstone.client_endpoint,
            tombstone.incarnation,
        )
        signature = RemovalSignature(self._name, self._signer.sign(payload))
        return dataclasses.replace(tombstone, signature=signature)

    def authentic(self, records: Iterable[Member]) -> tuple[list[Member], int]:
        """The records that carry a valid signature of a trusted node, and how many were
        refused (unsigned, wrongly signed, or signed by a node not trusted)."""
        taken: list[Member] = []
        refused = bad = 0
        verified = self._verified
        for record in records:
            signature = record.signature
            if signature is None or not signature_is_plausible(record):
                refused += 1
                continue
            key = (
                record.name,
                record.endpoint,
                record.client_endpoint,
                record.incarnation,
                signature,
            )
            if key in verified:
                taken.append(record)
                continue
            if bad >= MAX_BAD_SIGNATURES:
                refused += 1
                continue
            signer, payload, signature_bytes = _payload(record)
            if self._verifier.verify(signer, payload, signature_bytes):
                self._remember(key)
                taken.append(record)
            else:
                bad += 1
                refused += 1
        return taken, refused

    def signed_records(self, table: MemberTable) -> tuple[Member, ...]:
        """The signed records of `table`, in table order: what this node sends (an
        unsigned record is its own guess). Picked once per table."""
        if self._signed is None or self._signed[0] is not table:
            signed = tuple(record for record in table.members() if record.signature is not None)
            self._signed = (table, signed)
        return self._signed[1]

    def forget_verified(self) -> None:
        """Check every signature again from now on: the trusted keys have changed."""
        self._verified.clear()

    def _remember(self, key: _VerifiedKey) -> None:
        verified = self._verified
        if len(verified) >= VERIFIED_LIMIT:
            del verified[next(iter(verified))]
        verified[key] = None
