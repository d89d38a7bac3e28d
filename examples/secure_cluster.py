"""A secure three-node cluster: keys, roles, and a rogue node that cannot get in.

`LocalCluster(..., keys_dir=DIR)` makes a CURVE key pair for each node and for each
client named here (an admin, a writer and a read-only reader), puts their public
certificates in one trust dir, and starts every node with `--secret-key` and
`--trust-dir` (docs/security.md, "Running a secure cluster"). Then this script

- writes through the writer's key and reads back through the reader's, on other nodes;
- shows the reader refused a write: `ForbiddenError`, error code `forbidden`;
- starts a rogue node with a key of its own, not in the cluster's trust dir, told to
  join the cluster: the members refuse its handshake, and it never becomes a member.

    python examples/secure_cluster.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from kvactors import Client
from kvactors.errors import ForbiddenError, KVActorsError
from kvactors.launcher import LocalCluster, NodeProcess, free_port_block
from kvactors.net.certs import load_certificate, write_key_pair

HOST = "127.0.0.1"
CLIENTS = {"admin": "admin", "writer": "write", "reader": "read"}
# How long the rogue node is given to knock, and then watched staying out.
KNOCK_TIMEOUT = 20.0
WATCH_SECONDS = 2.0
POLL_INTERVAL = 0.1


def roles_at_work(cluster: LocalCluster) -> int:
    """Write with the writer's key, read with the reader's; the reader may not write."""
    assert cluster.keys is not None
    first, second = cluster.endpoints[0], cluster.endpoints[1]
    with cluster.keys.client(first, "writer") as writer:
        writer.put("greeting", "hello, securely", w=3)
    print(f"  writer (role write) put greeting through {cluster.nodes[0].name}")
    with cluster.keys.client(second, "reader") as reader:
        found = reader.get("greeting", r=2)
        print(f"  reader (role read) got greeting through {cluster.nodes[1].name}: {found!r}")
        try:
            reader.put("greeting", "overwritten")
        except ForbiddenError as refused:
            print(
                f"  reader's put was refused: {type(refused).__name__} ({refused.code}): {refused}"
            )
        else:
            print("  reader's put was ACCEPTED: roles are not enforced")
            return 1
        after = reader.get("greeting", r=2)
    print(f"  greeting is still {after!r}")
    return 0 if found == after == "hello, securely" else 1


def rogue_knocks(cluster: LocalCluster, outsiders: Path, log_dir: Path) -> int:
    """A node whose key the cluster does not trust tries to join; it stays out."""
    assert cluster.keys is not None
    _, rogue_secret = write_key_pair(outsiders, "rogue", "node")
    rogue_key = load_certificate(rogue_secret).public_key.decode()
    # The rogue trusts the cluster (it has the cluster's trust dir); the cluster does
    # not trust the rogue, whose key is in no trust dir but its own folder.
    args = ["--secret-key", str(rogue_secret), "--trust-dir", str(cluster.keys.trust_dir)]
    args += ["--join", cluster.endpoints[0]]
    rogue = NodeProcess(
        "rogue",
        f"tcp://{HOST}:{free_port_block(1)}",
        args,
        log=(log_dir / "rogue.log").open("ab"),
    )
    print(f"  rogue node (key {rogue_key[:10]}..., in no trust dir) joins through node-1")
    rogue.launch()
    try:
        first_log = log_dir / f"{cluster.nodes[0].name}.log"
        deadline = time.monotonic() + KNOCK_TIMEOUT
        while f"untrusted key {rogue_key}" not in first_log.read_text(errors="replace"):
            if time.monotonic() > deadline:
                print(f"  node-1 never logged the rogue's knock within {KNOCK_TIMEOUT}s")
                return 1
            time.sleep(POLL_INTERVAL)
        print("  node-1 refused its handshake (its log: 'untrusted key ...')")
        watch_until = time.monotonic() + WATCH_SECONDS
        while time.monotonic() < watch_until:
            members = {
                name for endpoint in cluster.endpoints for name in members_of(cluster, endpoint)
            }
            if "rogue" in members:
                print(f"  the rogue became a member: {sorted(members)}")
                return 1
            time.sleep(POLL_INTERVAL)
        print(f"  after {WATCH_SECONDS:.0f} s more, every node lists only {sorted(members)}")
        rogue_view = rogue_status(cluster, rogue, outsiders)
        print(
            f"  the rogue, still running ({rogue.running}), lists only "
            f"{rogue_view['members']} and holds {rogue_view['keys']} keys"
        )
        if rogue_view["members"] != ["rogue"] or rogue_view["keys"] != 0:
            return 1
    finally:
        rogue.stop()
        assert rogue.log is not None
        rogue.log.close()
    return 0


def rogue_status(cluster: LocalCluster, rogue: NodeProcess, outsiders: Path) -> dict[str, object]:
    """What the rogue itself sees, asked by the admin, who must trust the rogue's key for
    that (the rogue accepts the admin: it has the cluster's trust dir)."""
    assert cluster.keys is not None
    trusts_rogue = outsiders / "trusts-rogue"
    trusts_rogue.mkdir(exist_ok=True)
    (trusts_rogue / "rogue.key").write_bytes((outsiders / "rogue.key").read_bytes())
    with Client(
        rogue.endpoint,
        timeout=5.0,
        retries=0,
        secret_key=cluster.keys.secret_key("admin"),
        trust_dir=trusts_rogue,
    ) as admin:
        status = admin.status()
    return {
        "members": sorted(member["name"] for member in status["members"]),
        "keys": status["storage"]["keys"],
    }


def members_of(cluster: LocalCluster, endpoint: str) -> set[str]:
    """The names of the members `endpoint`'s node lists (asked with the admin's key)."""
    with cluster.client(endpoint, timeout=2.0, retries=0) as admin:
        return {member["name"] for member in admin.status()["members"]}


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="kvactors-secure-") as scratch:
        root = Path(scratch)
        cluster = LocalCluster(
            3,
            base_port=free_port_block(3),
            host=HOST,
            keys_dir=root / "keys",
            clients=CLIENTS,
            log_dir=root / "logs",
        )
        assert cluster.keys is not None
        print("Made a key pair for node-1..node-3 and for clients admin, writer, reader;")
        print(f"the trust dir holds their public certificates ({cluster.keys.trust_dir.name}/).")
        code = 1
        try:
            cluster.start()
            print("3 secure nodes running: every node sees 3 alive members.")
            print("\nRoles:")
            code = roles_at_work(cluster)
            print("\nA rogue node:")
            code |= rogue_knocks(cluster, root / "outsiders", root / "logs")
        except KVActorsError as problem:
            print(f"error: {problem}", file=sys.stderr)
        finally:
            cluster.stop()
        exit_codes = [node.process.returncode for node in cluster.nodes if node.process]
        stopped = "cleanly" if all(c == 0 for c in exit_codes) else f"with exit codes {exit_codes}"
        print(f"\nstopped all 3 nodes {stopped}")
        if code == 0 and stopped == "cleanly":
            print("The cluster served its own keys by role and kept the rogue out.")
            return 0
        return 1


if __name__ == "__main__":
    sys.exit(main())
