"""The keys gossip signs and checks member records with, in a secure cluster.

The pure core (kvactors.core.member_signatures) asks for a `RecordSigner` and a
`RecordVerifier`; here they are made of a node's certificates: `CertificateSigner`
signs with the Ed25519 key of the node's own certificate, and `TrustSetVerifier` checks
a signature against the sign key of the trusted certificate bearing the signer's name,
if that certificate is a node's. The trust set is the live one, so a certificate
removed from the trust dir stops vouching for its node's records at once (the gossip
protocol also forgets the signatures it verified, see `GossipProtocol`).
"""

from __future__ import annotations

import nacl.exceptions
import nacl.signing

from kvactors.core.member_signatures import RecordSigner, RecordVerifier
from kvactors.errors import ConfigError
from kvactors.net.certs import Certificate, Role, TrustSet
from kvactors.node.security import NodeSecurity

__all__ = ["CertificateSigner", "TrustSetVerifier", "record_keys"]


class CertificateSigner:
    """Signs with a node's own certificate (a secret one, of role node)."""

    __slots__ = ("_key",)

    def __init__(self, certificate: Certificate) -> None:
        # Read once: a certificate without its sign-secret-key fails here, at start.
        self._key = certificate.signing_key()

    def sign(self, payload: bytes) -> bytes:
        return self._key.sign(payload).signature


class TrustSetVerifier:
    """Checks a node's signature against its certificate in the live trust set."""

    __slots__ = ("_keys", "_trust")

    def __init__(self, trust: TrustSet) -> None:
        self._trust = trust
        # Verify keys by the certificate's sign key, so that one is decoded once and a
        # replaced certificate (a new key under the same name) is never checked with the
        # old one.
        self._keys: dict[bytes, nacl.signing.VerifyKey] = {}

    def verify(self, name: str, payload: bytes, signature: bytes) -> bool:
        certificate = self._trust.by_name(name)
        if certificate is None or certificate.role is not Role.NODE:
            return False
        sign_key = certificate.sign_key
        if sign_key is None:
            return False
        key = self._keys.get(sign_key)
        if key is None:
            try:
                key = certificate.verify_key()
            except (ConfigError, ValueError, TypeError):
                return False
            if len(self._keys) >= 1024:  # keys of certificates long gone
                self._keys.clear()
            self._keys[sign_key] = key
        try:
            key.verify(payload, signature)
        except (nacl.exceptions.CryptoError, ValueError, TypeError):
            return False
        return True


def record_keys(
    security: NodeSecurity | None,
) -> tuple[RecordSigner | None, RecordVerifier | None]:
    """The signer and verifier of a secure node's gossip; (None, None) for an insecure
    node, whose records go unsigned."""
    if security is None:
        return None, None
    return CertificateSigner(security.certificate), TrustSetVerifier(security.trust)
