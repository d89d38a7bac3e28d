"""Secure mode measured beside insecure: the keys and CURVE sockets of `--secure`.

`--secure` (throughput.py, replicated.py) measures the same workload against a secure
node or cluster (CURVE on both planes, every message checked against the trust set) and
an insecure one in the same run, in alternating order (`in_turn`, as `--baseline-ref`
does), and prints the median of the runs' ratios secure/insecure. The load generators
drive raw DEALER sockets; `Credentials` makes each one a CURVE client holding the admin
client's key and pinned to the key of the node it connects to, as `kvactors.Client` does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import zmq

from kvactors.launcher import ADMIN_CLIENT, ClusterKeys, LocalCluster
from kvactors.net.certs import Certificate, load_certificate
from kvactors.net.zap import secure_client

# The ratio secure/insecure a secure cluster is to keep (issue: at least 0.8).
SECURE_RATIO_TARGET = 0.8


@dataclass(frozen=True)
class Credentials:
    """A client certificate and, for each endpoint, the public key of the node there."""

    certificate: Certificate
    server_keys: Mapping[str, bytes]

    def apply(self, sock: zmq.Socket[bytes], endpoint: str) -> None:
        """Make `sock` a CURVE client for `endpoint`'s node; before it connects."""
        secure_client(sock, self.certificate, self.server_keys[endpoint])


def credentials(keys: ClusterKeys, nodes: Mapping[str, str]) -> Credentials:
    """The admin client's credentials for `nodes` (endpoint: node name)."""
    return Credentials(
        load_certificate(keys.secret_key(ADMIN_CLIENT)),
        {
            endpoint: load_certificate(keys.trust_dir / f"{name}.key").public_key
            for endpoint, name in nodes.items()
        },
    )


def cluster_credentials(cluster: LocalCluster) -> Credentials | None:
    """The admin client's credentials for every node of `cluster`; None if insecure."""
    if cluster.keys is None:
        return None
    return credentials(cluster.keys, {node.endpoint: node.name for node in cluster.nodes})


def connect(
    sock: zmq.Socket[bytes], endpoint: str, secure: Credentials | None
) -> zmq.Socket[bytes]:
    """Connect `sock` to `endpoint`, first as a CURVE client if `secure`."""
    if secure is not None:
        secure.apply(sock, endpoint)
    sock.connect(endpoint)
    return sock


def verdict(ratio: float) -> str:
    met = ratio >= SECURE_RATIO_TARGET
    return f"target secure/insecure >= {SECURE_RATIO_TARGET}: {'met' if met else 'NOT met'}"
