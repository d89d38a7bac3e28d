"""NetCluster and the nemeses: real node processes in network namespaces, real faults.

Each node is a `kvactors node` process in a network namespace of its own
(``kva-<run>-n<i>``), linked by a veth pair to a bridge (``kva-br-<run>``) in the root
namespace, on a private 10.x.y.0/24 drawn per run (so that runs side by side do not
clash). Clients run in the root namespace and reach every node through the bridge.

Faults come from outside the nodes, with iproute2 alone (`ip`, `tc`):

- partitions (one node isolated, or the cluster split in halves): a tc `htb` qdisc on each
  node's own end of its veth, and a classic-BPF `bpf` filter per cut peer that sends the
  packets for that peer's address to a class whose queue holds nothing, so they are
  dropped silently, as an iptables DROP rule would. Clients keep reaching every node.
- a bad link (what netem is for; the kernel this suite was written on has no `sch_netem`,
  so it is built from htb classes, random classic-BPF filters and `mirred`): a share of
  the node's packets, drawn at random per packet, is dropped, another is sent through a
  slow class (delayed behind its queue, so reordered against the rest), and another is
  copied (mirred to the bridge: duplicated), in both directions for loss and delay.
- process faults: `kill -9` and a restart with the same name and arguments (a memory node
  comes back empty), SIGSTOP/SIGCONT, and StoreServer crashes (SIGUSR1 to a node started
  through `_node.py`).

Every nemesis draws its choices from a `random.Random(seed)` and logs what it did, with
monotonic and wall-clock timestamps, as JSON lines. Needs root and iproute2: without them
`require_network_privileges` fails the test with a message saying what is missing.

A secure cluster (`NetCluster(..., secure=True)`) runs every node with a key of its own
and a trust dir, made in the run's directory (`kvactors.launcher.ClusterKeys`):
node keys, a `workload` client key (role write) for the workloads and final reads, an
`admin` client key for the harness's status calls, and a `checker` node key with which
`replica_states` reads each replica over the peer plane (which admits node keys only),
pinned to that node's own key. Without `secure` the nodes say `--insecure` (their
addresses are not loopback, so protected mode would refuse them otherwise).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Self

import pytest
import zmq
from checker import Window

from kvactors import Client
from kvactors.core.ring import Ring
from kvactors.core.versions import KeyState, state_from_wire
from kvactors.launcher import ClusterKeys, node_answers
from kvactors.net.certs import load_certificate
from kvactors.net.rpc import MARKER, STORE, decode_reply, encode_call
from kvactors.net.zap import secure_client
from kvactors.testing import peer_endpoint

PREFIX = "kva-"
NODE_PORT = 7000
# The client keys of a secure cluster, by name and role (see the module docstring).
ADMIN, WORKLOAD, CHECKER = "admin", "workload", "checker"
SECURE_CLIENTS = {ADMIN: "admin", WORKLOAD: "write", CHECKER: "node"}
NODE_WRAPPER = Path(__file__).with_name("_node.py")
LOCK_DIR = Path(tempfile.gettempdir())
_RUN_ID = re.compile(r"^kva-(?:br-)?([0-9a-f]{6})(?:-[nh]\d+)?$")

# tc handles of the qdisc every node's veth ends carry (see `_shape_link`).
_ROOT = "1:"
_NORMAL, _SLOW, _DROP = "1:10", "1:20", "1:30"
_PARTITION_PRIO, _LOSS_PRIO, _SLOW_PRIO = 1, 2, 3
# Classic BPF for cls_bpf (tc's "bytecode" form). Packets start at the Ethernet header.
_LOAD_DST_IP = "32 0 0 30"  # ld [30]: the IPv4 destination
_LOAD_RANDOM = "32 0 0 4294963256"  # ld rand (SKF_AD_OFF + SKF_AD_RANDOM)
_MATCH, _NO_MATCH = "6 0 0 4294967295", "6 0 0 0"  # ret -1 (the filter's class), ret 0


def _bpf_destination_is(address: str) -> str:
    return f"4,{_LOAD_DST_IP},21 0 1 {int(ipaddress.IPv4Address(address))},{_MATCH},{_NO_MATCH}"


def _bpf_with_probability(probability: float) -> str:
    threshold = min(2**32 - 1, max(0, round(probability * 2**32)))
    # A < threshold matches: jge threshold -> no match.
    return f"4,{_LOAD_RANDOM},53 0 1 {threshold},{_NO_MATCH},{_MATCH}"


# -- privileges and commands ---------------------------------------------------------------


def require_network_privileges() -> None:
    """Fail (never skip) unless this process can build namespaces and shape links."""
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        pytest.fail(
            f"the fault suite needs iproute2 ({', '.join(missing)} not found on PATH): "
            "install the iproute2 package (it provides ip and tc)",
            pytrace=False,
        )
    if os.geteuid() != 0:
        pytest.fail(
            "the fault suite needs root (network namespaces, veth pairs, tc): run it as root, "
            "e.g. in CI or with sudo",
            pytrace=False,
        )
    probe = f"{PREFIX}probe-{os.getpid()}"
    created = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    if created.returncode != 0:
        pytest.fail(
            f"cannot create a network namespace ({created.stderr.strip()}): the fault suite "
            "needs CAP_SYS_ADMIN and CAP_NET_ADMIN",
            pytrace=False,
        )


def run(*command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {result.stderr.strip()}")
    return result


def in_netns(netns: str, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run("ip", "netns", "exec", netns, *command, check=check)


# -- leftovers of crashed runs ---------------------------------------------------------------


def _lock_path(run_id: str) -> Path:
    return LOCK_DIR / f"kvactors-faults-{run_id}.lock"


def _run_is_live(run_id: str) -> bool:
    """A run holds an flock on its lock file for as long as it lives."""
    path = _lock_path(run_id)
    if not path.exists():
        return False
    with path.open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(lock, fcntl.LOCK_UN)
    return False


def _our_namespaces() -> list[str]:
    listing = run("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in listing.splitlines() if line.startswith(PREFIX)]


def _our_links() -> list[str]:
    listing = run("ip", "-o", "link", "show", check=False).stdout
    names = [line.split(":")[1].strip().split("@")[0] for line in listing.splitlines()]
    return [name for name in names if name.startswith(PREFIX)]


def _remove_netns(netns: str) -> None:
    pids = run("ip", "netns", "pids", netns, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGCONT)
            os.kill(int(pid), signal.SIGKILL)
    run("ip", "netns", "del", netns, check=False)


def remove_leftovers(keep: str | None = None) -> list[str]:
    """Delete the namespaces and links of runs that are no longer alive (a crashed or
    killed run); `keep` is this run's id. Returns what was removed."""
    removed = []
    for name in [*_our_namespaces(), *_our_links()]:
        match = _RUN_ID.match(name)
        if match is None or match.group(1) == keep or _run_is_live(match.group(1)):
            continue
        if name in _our_namespaces():
            _remove_netns(name)
        else:
            run("ip", "link", "del", name, check=False)
        removed.append(name)
        _lock_path(match.group(1)).unlink(missing_ok=True)
    return removed


def _pick_subnet() -> ipaddress.IPv4Network:
    """A 10.x.y.0/24 no address or route of this machine touches."""
    used = run("ip", "-4", "-o", "addr", "show").stdout + run("ip", "-4", "route").stdout
    taken = [
        ipaddress.IPv4Network(text, strict=False)
        for text in re.findall(r"\b(\d+\.\d+\.\d+\.\d+(?:/\d+)?)", used)
    ]
    draw = secrets.SystemRandom()
    for _ in range(200):
        subnet = ipaddress.IPv4Network(f"10.{draw.randrange(100, 250)}.{draw.randrange(256)}.0/24")
        if not any(subnet.overlaps(other) for other in taken):
            return subnet
    raise RuntimeError("found no free 10.x.y.0/24 subnet")


# -- the event log ---------------------------------------------------------------------------


class EventLog:
    """What the harness and the nemeses did, one JSON object a line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] = path.open("a", buffering=1)

    def record(self, action: str, **details: Any) -> float:
        moment = time.monotonic()
        entry = {"time": moment, "wall": datetime.now(UTC).isoformat(), "action": action}
        self._file.write(json.dumps({**entry, **details}, default=str) + "\n")
        return moment

    def close(self) -> None:
        self._file.close()


# -- nodes -------------------------------------------------------------------------------------


@dataclass
class FaultNode:
    """One node: its namespace, its veth ends, its address and its process."""

    name: str
    netns: str
    host_veth: str
    node_veth: str
    address: str
    args: list[str]
    log_path: Path
    wrapper: bool = False
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    restart_args: list[str] | None = None
    keys: ClusterKeys | None = None
    """Secure: this node's key and the trust dir; None runs it --insecure."""

    @property
    def endpoint(self) -> str:
        return f"tcp://{self.address}:{NODE_PORT}"

    @property
    def skew_file(self) -> Path:
        """Where the clock skew for the _node.py wrapper is written (read on SIGUSR2)."""
        return self.log_path.with_suffix(".skew")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def launch(self, args: Sequence[str] | None = None) -> None:
        program = [str(NODE_WRAPPER)] if self.wrapper else ["-m", "kvactors"]
        # Non-loopback addresses: protected mode refuses a keyless node unless told.
        security = self.keys.node_args(self.name) if self.keys is not None else ["--insecure"]
        command = [
            "ip", "netns", "exec", self.netns, sys.executable, *program, "node",
            "--name", self.name, "--bind", self.endpoint,
            *security, *(self.args if args is None else args),
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            # `ip netns exec` execs the command: the child's pid is the node's.
            self.process = subprocess.Popen(
                command,
                stdout=log,
                stderr=log,
                start_new_session=True,
                env={**os.environ, **self.env, "KVA_FAULTS_SKEW_FILE": str(self.skew_file)},
            )

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.answers():
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode}; see {self.log_path}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not answer within {timeout}s")

    def answers(self) -> bool:
        """Whether the node answers a ping (secure: the admin key's)."""
        if self.keys is not None:
            return self.keys.answers(self.endpoint)
        return node_answers(self.endpoint)

    def signal(self, number: int) -> None:
        assert self.process is not None
        os.kill(self.process.pid, number)

    def kill(self) -> None:
        if self.running:
            assert self.process is not None
            self.process.send_signal(signal.SIGCONT)  # a stopped process dies as well
            self.process.kill()
            self.process.wait(timeout=30)

    def stop(self, timeout: float = 15.0) -> None:
        if not self.running:
            return
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()


@dataclass(frozen=True, slots=True)
class LinkFaults:
    """A bad link, each share drawn per packet: lost, delayed through a slow queue
    (so reordered against the others), duplicated (outgoing packets only)."""

    loss: float = 0.15
    delay: float = 0.3
    duplicate: float = 0.1
    slow_rate_kbit: int = 256
    slow_queue_packets: int = 64


class NetCluster:
    """`size` nodes, each in a network namespace of its own. A context manager.

    `node_args` go to every node (`--replicas 3` ...); `per_node_args(name)` may add more
    (`--data-dir`). Node 1 founds the cluster, the others join it; a node restarted by
    `restart` comes back with its own arguments plus, with `rejoin`, `--join` of the
    other nodes (a memory node restarted alone would otherwise found a cluster of its own).
    """

    def __init__(
        self,
        directory: Path,
        *,
        size: int = 5,
        node_args: Sequence[str] = (),
        per_node_args: Callable[[str], list[str]] | None = None,
        rejoin: bool = True,
        wrapper: bool = False,
        env: dict[str, str] | None = None,
        secure: bool = False,
    ) -> None:
        require_network_privileges()
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        names = [f"node-{index}" for index in range(1, size + 1)]
        self.keys = (
            ClusterKeys.create(directory / "keys", names, SECURE_CLIENTS) if secure else None
        )
        self.run_id = secrets.token_hex(3)
        self.bridge = f"{PREFIX}br-{self.run_id}"
        self.events = EventLog(directory / "nemesis.jsonl")
        self._lock = _lock_path(self.run_id).open("w")
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        self._rejoin = rejoin
        self._stopped = False
        self._cut: list[FaultNode] = []
        self._degraded: list[FaultNode] = []
        subnet = _pick_subnet()
        hosts = list(subnet.hosts())
        self.gateway = str(hosts[0])
        self.prefix_length = subnet.prefixlen
        self.nodes = []
        for index in range(1, size + 1):
            name = f"node-{index}"
            self.nodes.append(
                FaultNode(
                    name=name,
                    netns=f"{PREFIX}{self.run_id}-n{index}",
                    host_veth=f"{PREFIX}{self.run_id}-h{index}",
                    node_veth="eth0",
                    address=str(hosts[9 + index]),
                    args=[*node_args, *(per_node_args(name) if per_node_args else [])],
                    log_path=directory / f"{name}.log",
                    wrapper=wrapper,
                    env=dict(env or {}),
                    keys=self.keys,
                )
            )
        first = self.nodes[0].endpoint
        for node in self.nodes[1:]:
            node.args += ["--join", first]

    # -- life cycle ------------------------------------------------------------------------

    def start(self, timeout: float = 90.0) -> Self:
        try:
            removed = remove_leftovers(keep=self.run_id)
            self.events.record("start", run=self.run_id, leftovers_removed=removed)
            self._build_network()
            for node in self.nodes:
                node.launch()
            for node in self.nodes:
                node.wait_ready(timeout)
            self.wait_all_alive(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _build_network(self) -> None:
        run("ip", "link", "add", self.bridge, "type", "bridge")
        run("ip", "addr", "add", f"{self.gateway}/{self.prefix_length}", "dev", self.bridge)
        run("ip", "link", "set", self.bridge, "up")
        for node in self.nodes:
            run("ip", "netns", "add", node.netns)
            run(
                "ip", "link", "add", node.host_veth, "type", "veth",
                "peer", "name", node.node_veth, "netns", node.netns,
            )  # fmt: skip
            run("ip", "link", "set", node.host_veth, "master", self.bridge)
            run("ip", "link", "set", node.host_veth, "up")
            address = f"{node.address}/{self.prefix_length}"
            in_netns(node.netns, "ip", "addr", "add", address, "dev", node.node_veth)
            in_netns(node.netns, "ip", "link", "set", node.node_veth, "up")
            in_netns(node.netns, "ip", "link", "set", "lo", "up")
            in_netns(node.netns, "ip", "route", "add", "default", "via", self.gateway)
            self._shape_link(node.node_veth, node.netns)
            self._shape_link(node.host_veth, None)

    def _shape_link(self, device: str, netns: str | None) -> None:
        """An htb root with three classes: normal, slow and drop (a queue of nothing)."""

        def tc(*args: str) -> None:
            if netns is None:
                run("tc", *args)
            else:
                in_netns(netns, "tc", *args)

        tc("qdisc", "add", "dev", device, "root", "handle", _ROOT, "htb", "default", "10")
        tc("class", "add", "dev", device, "parent", _ROOT, "classid", _NORMAL, "htb",
           "rate", "10gbit")  # fmt: skip
        tc("class", "add", "dev", device, "parent", _ROOT, "classid", _SLOW, "htb",
           "rate", "10gbit")  # fmt: skip
        tc("class", "add", "dev", device, "parent", _ROOT, "classid", _DROP, "htb",
           "rate", "10gbit")  # fmt: skip
        tc("qdisc", "add", "dev", device, "parent", _DROP, "handle", "30:", "pfifo", "limit", "0")

    def stop(self) -> None:
        """Stop every node and remove the network; safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.stop()
        for node in self.nodes:
            _remove_netns(node.netns)
            run("ip", "link", "del", node.host_veth, check=False)
        run("ip", "link", "del", self.bridge, check=False)
        with contextlib.suppress(Exception):
            self.events.record("stop")
            self.events.close()
        fcntl.flock(self._lock, fcntl.LOCK_UN)
        self._lock.close()
        _lock_path(self.run_id).unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # -- views -------------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return [node.name for node in self.nodes]

    @property
    def endpoints(self) -> dict[str, str]:
        return {node.name: node.endpoint for node in self.nodes}

    def node(self, name: str) -> FaultNode:
        return next(node for node in self.nodes if node.name == name)

    def client(self, endpoints: str | Sequence[str], *, timeout: float, retries: int) -> Client:
        """A Client of these nodes (secure: holding the admin key)."""
        if self.keys is not None:
            return self.keys.client(endpoints, ADMIN, timeout=timeout, retries=retries)
        return Client(endpoints, timeout=timeout, retries=retries)

    def client_keys(self) -> tuple[Path, Path] | None:
        """The workloads' (secret key, trust dir) in a secure cluster, else None."""
        if self.keys is None:
            return None
        return self.keys.secret_key(WORKLOAD), self.keys.trust_dir

    def status(self, name: str, timeout: float = 3.0) -> dict[str, Any]:
        with self.client(self.node(name).endpoint, timeout=timeout, retries=0) as client:
            return client.status()

    def alive_in_view(self, name: str) -> set[str]:
        return {m["name"] for m in self.status(name)["members"] if m["status"] == "alive"}

    def wait_all_alive(self, timeout: float) -> float:
        """Wait until every node sees every node alive; returns how long it took."""
        started = time.monotonic()
        everyone = set(self.names)
        for node in self.nodes:
            wait_for(
                lambda node=node: everyone <= _quietly(lambda: self.alive_in_view(node.name)),  # type: ignore[misc]
                timeout - (time.monotonic() - started),
                f"{node.name} never saw all of {sorted(everyone)} alive",
            )
        return time.monotonic() - started

    # -- process faults ---------------------------------------------------------------------------

    def kill(self, name: str) -> float:
        self.node(name).kill()
        return self.events.record("kill -9", node=name)

    def restart(self, name: str, timeout: float = 60.0) -> float:
        node = self.node(name)
        args = node.args
        if self._rejoin:
            others = ",".join(other.endpoint for other in self.nodes if other is not node)
            args = [*_drop_flag_value(node.args, "--join"), "--join", others]
        node.launch(args)
        at = self.events.record("restart", node=name, args=args)
        node.wait_ready(timeout)
        self.events.record("restarted", node=name)
        return at

    def pause(self, name: str) -> float:
        self.node(name).signal(signal.SIGSTOP)
        return self.events.record("SIGSTOP", node=name)

    def resume(self, name: str) -> float:
        self.node(name).signal(signal.SIGCONT)
        return self.events.record("SIGCONT", node=name)

    def crash_store_servers(self, name: str) -> float:
        node = self.node(name)
        assert node.wrapper, "StoreServer crashes need the nodes started through _node.py"
        node.signal(signal.SIGUSR1)
        return self.events.record("crash StoreServers", node=name)

    def skew_clock(self, name: str, seconds: float) -> float:
        """Shift node `name`'s wall clock by `seconds` (0 puts it right again)."""
        node = self.node(name)
        assert node.wrapper, "clock skew needs the nodes started through _node.py"
        node.skew_file.write_text(repr(seconds))
        node.signal(signal.SIGUSR2)
        return self.events.record("clock skew", node=name, seconds=seconds)

    # -- network faults ---------------------------------------------------------------------------

    def partition(self, groups: Sequence[Iterable[str]]) -> float:
        """Cut every node off from the nodes of the other groups (both ways)."""
        sides = [set(group) for group in groups]
        for node in self.nodes:
            own = next((side for side in sides if node.name in side), {node.name})
            for peer in self.nodes:
                if peer.name not in own:
                    in_netns(
                        node.netns, "tc", "filter", "add", "dev", node.node_veth,
                        "parent", _ROOT, "protocol", "ip", "prio", str(_PARTITION_PRIO),
                        "bpf", "bytecode", _bpf_destination_is(peer.address), "flowid", _DROP,
                    )  # fmt: skip
            self._cut.append(node)
        return self.events.record("partition", groups=[sorted(side) for side in sides])

    def isolate(self, name: str) -> float:
        return self.partition([[name], [other for other in self.names if other != name]])

    def degrade(self, name: str, faults: LinkFaults) -> float:
        """Make the link of `name` lossy, slow and duplicating, both ways."""
        node = self.node(name)
        ends: list[tuple[str, str | None]] = [(node.node_veth, node.netns), (node.host_veth, None)]
        for device, netns in ends:
            prefix = ["ip", "netns", "exec", netns] if netns else []
            run(*prefix, "tc", "class", "change", "dev", device, "parent", _ROOT,
                "classid", _SLOW, "htb", "rate", f"{faults.slow_rate_kbit}kbit",
                "burst", "1600", "cburst", "1600")  # fmt: skip
            run(*prefix, "tc", "qdisc", "replace", "dev", device, "parent", _SLOW,
                "handle", "20:", "pfifo", "limit", str(faults.slow_queue_packets))  # fmt: skip
            for prio, probability, target in (
                (_LOSS_PRIO, faults.loss, _DROP),
                (_SLOW_PRIO, faults.delay, _SLOW),
            ):
                run(*prefix, "tc", "filter", "add", "dev", device, "parent", _ROOT,
                    "protocol", "ip", "prio", str(prio), "bpf", "bytecode",
                    _bpf_with_probability(probability), "flowid", target)  # fmt: skip
        # Copies of what the node sends, put back on the bridge: the peer gets it twice.
        run("tc", "qdisc", "add", "dev", node.host_veth, "handle", "ffff:", "ingress")
        run("tc", "filter", "add", "dev", node.host_veth, "parent", "ffff:", "protocol", "ip",
            "prio", "1", "bpf", "bytecode", _bpf_with_probability(faults.duplicate),
            "action", "mirred", "egress", "mirror", "dev", self.bridge)  # fmt: skip
        self._degraded.append(node)
        return self.events.record("degrade", node=name, faults=faults.__repr__())

    def heal(self) -> float:
        """Undo every network fault."""
        for node in self._cut + self._degraded:
            in_netns(node.netns, "tc", "filter", "del", "dev", node.node_veth, "parent", _ROOT,
                     check=False)  # fmt: skip
            run("tc", "filter", "del", "dev", node.host_veth, "parent", _ROOT, check=False)
            run("tc", "qdisc", "del", "dev", node.host_veth, "ingress", check=False)
        self._cut.clear()
        self._degraded.clear()
        return self.events.record("heal")

    def dropped_packets(self) -> dict[str, int]:
        """Packets each node's own veth end dropped on purpose so far (a fault's proof)."""
        counts = {}
        for node in self.nodes:
            shown = in_netns(node.netns, "tc", "-s", "class", "show", "dev", node.node_veth,
                             "classid", _DROP).stdout  # fmt: skip
            found = re.search(r"dropped (\d+)", shown)
            counts[node.name] = int(found.group(1)) if found else 0
        return counts

    # -- what the replicas hold ---------------------------------------------------------------

    def ring(self) -> Ring:
        status = self.status(self.names[0])
        return Ring.build(
            self.names, partitions=int(status["partitions"]), replicas=status["replication"]["n"]
        )

    def _peer_credentials(self, node: FaultNode) -> PeerCredentials | None:
        """What `replica_states` needs to read `node`'s replicas in a secure cluster."""
        if self.keys is None:
            return None
        status = self.status(node.name, timeout=10.0)
        return PeerCredentials(
            peer_endpoint=str(status["peer_endpoint"]),
            checker_secret_key=self.keys.secret_key(CHECKER),
            node_public_key=load_certificate(self.keys.trust_dir / f"{node.name}.key").public_key,
        )

    def disagreements(self, keys: Sequence[str], ring: Ring) -> list[str]:
        """The keys whose replicas (the ring's owners) do not all hold the same state."""
        held = {
            node.name: replica_states(node.endpoint, keys, secure=self._peer_credentials(node))
            for node in self.nodes
        }
        return [
            key
            for key in keys
            if len({held[owner][key] for owner in ring.owners(key.encode())}) > 1
        ]


def _drop_flag_value(args: Sequence[str], flag: str) -> list[str]:
    kept: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == flag:
            skip = True
        else:
            kept.append(arg)
    return kept


@dataclass(frozen=True)
class PeerCredentials:
    """How to reach a secure node's peer plane: its endpoint, a node key to present (the
    plane admits node keys only), and the node's own public key, to pin."""

    peer_endpoint: str
    checker_secret_key: Path
    node_public_key: bytes


def replica_states(
    endpoint: str,
    keys: Sequence[str],
    timeout: float = 10.0,
    chunk: int = 500,
    *,
    secure: PeerCredentials | None = None,
) -> dict[str, KeyState]:
    """What the node at `endpoint` holds for each key in its own store (node-to-node
    `store` reads, `chunk` keys a call), as kvactors.testing.replica_state does for one.
    `secure`: the node runs secure; read its peer plane with these credentials."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    states: dict[str, KeyState] = {}
    with context.socket(zmq.DEALER) as sock:
        sock.setsockopt(zmq.LINGER, 0)
        if secure is None:
            sock.connect(peer_endpoint(endpoint, timeout))
        else:
            checker = load_certificate(secure.checker_secret_key)
            secure_client(sock, checker, secure.node_public_key)
            sock.connect(secure.peer_endpoint)
        for start in range(0, len(keys), chunk):
            part = keys[start : start + chunk]
            ops = [["read", key.encode()] for key in part]
            sock.send_multipart([MARKER, encode_call(start + 1, STORE, timeout, {"ops": ops})])
            if not sock.poll(int(timeout * 1000)):
                raise TimeoutError(f"{endpoint} did not answer a store read in {timeout}s")
            reply = decode_reply(sock.recv_multipart()[-1])
            if not reply.get("ok"):
                raise RuntimeError(f"{endpoint} refused a store read: {reply.get('error')}")
            for key, result in zip(part, reply["result"]["results"], strict=True):
                states[key] = state_from_wire(result)
    return states


def _quietly(view: Callable[[], set[str]]) -> set[str]:
    """The view, or nothing while the node does not answer."""
    try:
        return view()
    except Exception:  # a node busy or restarting: ask again
        return set()


def wait_for(condition: Callable[[], object], timeout: float, message: str) -> float:
    """Poll `condition` until true (returns the seconds it took) or fail at the deadline."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(message)
        time.sleep(0.1)
    return time.monotonic() - started


# -- nemeses ---------------------------------------------------------------------------------------


@dataclass
class Nemesis:
    """A fault schedule: `run` injects and heals faults for `duration` seconds, drawing
    every choice from `rng`, and returns the windows during which a fault was in force."""

    duration: float
    windows: list[Window] = field(default_factory=list)
    faulty: set[str] = field(default_factory=set)
    """Every node a fault touched (the minority side, for availability)."""

    name = "nemesis"

    def run(self, cluster: NetCluster, rng: Any) -> list[Window]:
        deadline = time.monotonic() + self.duration
        while time.monotonic() < deadline - 0.5:
            self.cycle(cluster, rng, deadline)
        return self.windows

    def cycle(self, cluster: NetCluster, rng: Any, deadline: float) -> None:
        raise NotImplementedError

    def hold(self, deadline: float, longest: float) -> None:
        """The fault's timed wait: until `deadline` or `longest` seconds, whichever first."""
        time.sleep(max(0.0, min(longest, deadline - time.monotonic())))

    def fault_one_node(
        self,
        cluster: NetCluster,
        rng: Any,
        deadline: float,
        *,
        inject: Callable[[str], float],
        undo: Callable[[str], float],
        length: float,
        gap: float,
        settle: bool = True,
    ) -> None:
        """One cycle on one node drawn by `rng`: `inject` the fault (its start time), hold
        it `length` seconds, `undo` it (its end time), wait until every node sees every
        node alive again if `settle`, then `gap` seconds before the next cycle."""
        victim = rng.choice(cluster.names)
        self.faulty.add(victim)
        start = inject(victim)
        self.hold(deadline, length)
        self.windows.append(Window(start, undo(victim)))
        if settle:
            cluster.wait_all_alive(60.0)
        self.hold(deadline, gap)


@dataclass
class KillNemesis(Nemesis):
    """kill -9 one node, keep it down `down` seconds, restart it; next cycle once every
    node sees every node alive again (one faulty node at a time)."""

    down: float = 4.0
    gap: float = 3.0
    name = "kill9"

    def cycle(self, cluster: NetCluster, rng: Any, deadline: float) -> None:
        victim = rng.choice(cluster.names)
        self.faulty.add(victim)
        start = cluster.kill(victim)
        self.hold(deadline, self.down)
        cluster.restart(victim)
        self.windows.append(Window(start, time.monotonic()))
        cluster.wait_all_alive(60.0)
        self.hold(deadline, self.gap)


@dataclass
class PauseNemesis(Nemesis):
    """SIGSTOP one node for `paused` seconds (beyond the dead timeout), then SIGCONT."""

    paused: float = 9.5
    gap: float = 3.0
    name = "pause"

    def cycle(self, cluster: NetCluster, rng: Any, deadline: float) -> None:
        victim = rng.choice(cluster.names)
        self.faulty.add(victim)
        start = cluster.pause(victim)
        time.sleep(self.paused)  # the whole pause, even past the deadline: it must outlast
        # the dead timeout
        self.windows.append(Window(start, cluster.resume(victim)))
        cluster.wait_all_alive(60.0)
        self.hold(deadline, self.gap)


@dataclass
class IsolateNemesis(Nemesis):
    """Cut one node off from every other node for `cut` seconds."""

    cut: float = 10.0
    gap: float = 3.0
    name = "isolate"

    def cycle(self, cluster: NetCluster, rng: Any, deadline: float) -> None:
        self.fault_one_node(
            cluster,
            rng,
            deadline,
            inject=cluster.isolate,
            undo=lambda _victim: cluster.heal(),
            length=self.cut,
            gap=self.gap,
        )


@dataclass
class SplitNemesis(Nemesis):
    """Split the cluster in two halves (2 and 3 nodes of 5) for `cut` seconds."""

    cut: float = 10.0
    gap: float = 3.0
    name = "split"

    def cycle(self, cluster: NetCluster, rng: Any, deadline: float) -> None:
        names = list(cluster.names)
        rng.shuffle(names)
        small = names[: len(names) // 2]
        self.faulty.update(small)
        start = cluster.partition([small, names[len(names) // 2 :]])
        self.hold(deadline, self.cut)
        self.windows.append(Window(start, cluster.heal()))
        cluster.wait_all_alive(60.0)
        self.hold(deadline, self.gap)


@dataclass
class LinkNemesis(Nemesis):
    """A lossy, slow, reordering and duplicating link on one node for `bad` seconds."""

    bad: float = 10.0
    gap: float = 3.0
    faults: LinkFaults = field(default_factory=LinkFaults)
    name = "netem"

    def cycle(self, cluster: NetCluster, rng: Any, deadline: float) -> None:
        self.fault_one_node(
            cluster,
            rng,
            deadline,
            inject=lambda victim: cluster.degrade(victim, self.faults),
            undo=lambda _victim: cluster.heal(),
            length=self.bad,
            gap=self.gap,
            settle=False,
        )


@dataclass
class CrashNemesis(Nemesis):
    """Every `every` seconds, crash StoreServers on one node (each node started with
    `KVA_FAULTS_CRASHES` crashes a signal), never the same node twice within `spacing`
    seconds: with 4 crashes a signal and 2.5 s, a node restarts at most 8 StoreServers in
    5 s, within the StoreSupervisor's restart intensity (10 in 5 s). Past it, the node's
    tree restarts (escalation), a harsher fault; `every=0.5, spacing=0` with 16 crashes a
    signal gets there."""

    every: float = 1.0
    spacing: float = 2.5
    name = "store-crash"

    def run(self, cluster: NetCluster, rng: Any) -> list[Window]:
        start = time.monotonic()
        deadline = start + self.duration
        last_hit: dict[str, float] = {}
        while time.monotonic() < deadline:
            now = time.monotonic()
            ready = [n for n in cluster.names if now - last_hit.get(n, -1e9) >= self.spacing]
            if ready:
                victim = rng.choice(ready)
                self.faulty.add(victim)
                cluster.crash_store_servers(victim)
                last_hit[victim] = now
            self.hold(deadline, self.every)
        self.windows.append(Window(start, time.monotonic()))
        return self.windows


@dataclass
class KillAllNemesis(Nemesis):
    """kill -9 every node at once, restart them all `down` seconds later (lmdb)."""

    down: float = 1.0
    gap: float = 3.0
    name = "kill-all"

    def cycle(self, cluster: NetCluster, rng: Any, deadline: float) -> None:
        self.faulty.update(cluster.names)
        for name in cluster.names:
            cluster.kill(name)
        start = time.monotonic()
        self.hold(deadline, self.down)
        for node in cluster.nodes:
            node.launch()
        cluster.events.record("restart all")
        for node in cluster.nodes:
            node.wait_ready(60.0)
        self.windows.append(Window(start, time.monotonic()))
        cluster.wait_all_alive(60.0)
        self.hold(deadline, self.gap)


@dataclass
class SkewNemesis(Nemesis):
    """Shift one node's wall clock for `skewed` seconds: ahead or behind, by seconds to
    an hour (a clock that jumped, or an NTP step); then put it right."""

    skewed: float = 8.0
    gap: float = 2.0
    offsets: tuple[float, ...] = (2.0, 30.0, 600.0, 3600.0)
    """The sizes of skew drawn from."""
    directions: tuple[int, ...] = (-1, 1)
    """Ahead (1), behind (-1) or either."""
    name = "clock-skew"

    @property
    def largest(self) -> float:
        return max(self.offsets)

    def cycle(self, cluster: NetCluster, rng: Any, deadline: float) -> None:
        def skew(victim: str) -> float:  # drawn after the victim, as the seed expects
            seconds = rng.choice(self.directions) * rng.choice(self.offsets)
            return cluster.skew_clock(victim, seconds)

        self.fault_one_node(
            cluster,
            rng,
            deadline,
            inject=skew,
            undo=lambda victim: cluster.skew_clock(victim, 0.0),
            length=self.skewed,
            gap=self.gap,
            settle=False,
        )


@contextlib.contextmanager
def net_cluster(directory: Path, **options: Any) -> Iterator[NetCluster]:
    cluster = NetCluster(directory, **options)
    with cluster:
        yield cluster
