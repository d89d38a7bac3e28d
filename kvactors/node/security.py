"""A secure node's keys: its own certificate, the certificates it trusts, and which key
each endpoint it calls must present.

A node runs secure when its config names a secret certificate (`secret_key`) and a trust
directory (`trust_dir`). The transport then makes both of its ROUTERs CURVE servers and
every DEALER it opens a CURVE client pinned to one node key, which `server_keys` picks:

- an endpoint of a member the ring knows (its peer or its client endpoint): the key of
  the certificate that bears the member's name, if that certificate is a node's;
- any other endpoint (a seed's client endpoint, before its node is known): every trusted
  node key but this node's own; the transport tries them side by side, and the one
  whose handshake completes answers.

The trust directory is re-read on SIGHUP and on a timer (`reload`); `generation` counts
the changes, so the transport can drop connections pinned to keys no longer trusted.
"""

from __future__ import annotations

import logging
from pathlib import Path

from kvactors.config import NodeConfig
from kvactors.core.placement import RingHolder
from kvactors.errors import ConfigError
from kvactors.net.certs import Certificate, Role, TrustSet, load_certificate

__all__ = ["NodeSecurity", "load_node_certificate"]

logger = logging.getLogger(__name__)


def load_node_certificate(path: str | Path, name: str) -> Certificate:
    """This node's own secret certificate: a node's, named `name`; else ConfigError."""
    certificate = load_certificate(path)
    if certificate.secret_key is None:
        raise ConfigError(
            f"{path} is a public certificate: a node's secret_key (--secret-key) is the "
            "NAME.key_secret file kvactors keygen wrote"
        )
    if certificate.role is not Role.NODE:
        raise ConfigError(
            f"{path} is a {certificate.role.value} key: a node needs a key of role node "
            f"(kvactors keygen --role node {name})"
        )
    if certificate.name != name:
        raise ConfigError(
            f"{path} is the key of {certificate.name!r}, but this node is named {name!r}: "
            f"give --name {certificate.name} (other nodes find a member's key by its name)"
        )
    return certificate


class NodeSecurity:
    """The keys of a secure node; see the module docstring. Thread-safe: `reload` may
    run on any thread while the transport's thread looks keys up."""

    def __init__(self, certificate: Certificate, trust: TrustSet, ring: RingHolder) -> None:
        self.certificate = certificate
        self.trust = trust
        self._ring = ring
        self.generation = 0
        """How many reloads have changed the trust set."""
        self._last_problem: str | None = None

    @classmethod
    def load(cls, config: NodeConfig, ring: RingHolder) -> NodeSecurity | None:
        """The keys `config` names, read and checked; None for an insecure node."""
        if config.secret_key is None or config.trust_dir is None:
            return None
        certificate = load_node_certificate(config.secret_key, config.name)
        return cls(certificate, TrustSet.load(config.trust_dir), ring)

    def server_keys(self, endpoint: str) -> list[bytes]:
        """The node keys a server at `endpoint` may hold (Z85): one for a known member
        (none if its name has no node certificate), else every trusted node key."""
        for member in self._ring.current.members:
            if endpoint in (member.endpoint, member.client_endpoint):
                certificate = self.trust.by_name(member.name)
                if certificate is None or certificate.role is not Role.NODE:
                    return []
                return [certificate.public_key]
        own = self.certificate.public_key
        return [
            cert.public_key
            for cert in self.trust
            if cert.role is Role.NODE and cert.public_key != own
        ]

    def reload(self) -> bool:
        """Re-read the trust directory; whether anything changed. A bad directory is
        logged (once per distinct problem), never raised: the set then keeps only what
        is unchanged (TrustSet.reload), and this counts as a change."""
        try:
            changed = self.trust.reload()
        except ConfigError as exc:
            problem = str(exc)
            if problem != self._last_problem:
                logger.error("trust directory not reloaded cleanly: %s", problem)
                self._last_problem = problem
            self.generation += 1  # trust may have been withdrawn
            return True
        if self._last_problem is not None:
            logger.info("trust directory %s reads cleanly again", self.trust.directory)
            self._last_problem = None
        if changed:
            self.generation += 1
            logger.info(
                "trust directory %s reloaded: %d certificates",
                self.trust.directory,
                len(self.trust),
            )
        return changed
