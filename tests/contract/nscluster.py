"""A cluster of real `rainctl daemon --data-plane linux` processes in network namespaces of
the host kernel, for what the UML guests' kernel cannot do (nftables' arp family: the
answer lease, GOALS.md F8).

Layout: a switch namespace with bridge `br0`; per node a namespace whose `front0` (veth) is
a port of it (198.18.77.N/24, 2001:db8:77::N/64); a client namespace (`lan0`, .100) that
runs the ARP prober (every 20 ms an ARP request / NS for every VIP, each answer logged with
its MAC) and the GARP reader (`rainctl.lab.probe`). Profile fast. Every process is ended by
PID and every namespace deleted at `close()`; names carry the run tag (tests/tags.py).
"""

from __future__ import annotations

import itertools
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rainctl.lab import probe
from rainctl.testing.loopback import cpu_times, rotation_samples
from rainctl.testing.ports import RAINCTL, status_or_none
from tests.contract.netlab import require_root, run
from tests.tags import RUN_TAG

SUBNET = "198.18.77"
SUBNET6 = "2001:db8:77"
CLIENT_ADDRESS = f"{SUBNET}.100"
CLIENT_ADDRESS6 = f"{SUBNET6}::100"
KEY = "1:" + "4c" * 32
_counter = itertools.count()


@dataclass
class NsNode:
    node_id: int
    namespace: str
    mac: str
    log: Path
    socket_path: Path
    process: subprocess.Popen[bytes] | None = None

    def status(self) -> dict[str, Any] | None:
        return status_or_none(self.socket_path)


@dataclass
class NsCluster:
    directory: Path
    switch: str
    client: str
    vips: tuple[str, ...]
    nodes: dict[int, NsNode] = field(default_factory=dict)
    helpers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    arp_log: Path | None = None
    garp_log: Path | None = None

    def start_daemon(self, node_id: int) -> None:
        node = self.nodes[node_id]
        with node.log.open("ab") as output:
            node.process = subprocess.Popen(
                [
                    "ip", "netns", "exec", node.namespace, str(RAINCTL), "daemon",
                    "--config", str(self.directory / "cluster.toml"), "--node", str(node_id),
                    "--state-dir", str(self.directory / f"state{node_id}"),
                    "--control-socket", str(node.socket_path),
                    "--data-plane", "linux", "--front-interface", "front0",
                    # As the shipped systemd unit runs it (1 MiB thread stacks when locked).
                    "--realtime-priority", "10", "--lock-memory",
                ],
                stdout=subprocess.DEVNULL,
                stderr=output,
            )  # fmt: skip

    def recover(self, node_id: int, fault: signal.Signals) -> None:
        """Undo `fault` (SIGSTOP: resume; SIGKILL: start the daemon again)."""
        if fault is signal.SIGSTOP:
            self.signal(node_id, signal.SIGCONT)
            return
        process = self.nodes[node_id].process
        assert process is not None
        process.wait(timeout=5)
        self.start_daemon(node_id)

    def signal(self, node_id: int, signum: signal.Signals) -> float:
        """Send `signum` to the node's daemon; the wall-clock time just before."""
        process = self.nodes[node_id].process
        assert process is not None
        before = time.time()
        process.send_signal(signum)
        return before

    def owners(self) -> dict[str, set[int]]:
        """VIP -> the nodes that say they own it (applied in their kernel)."""
        owners: dict[str, set[int]] = {vip: set() for vip in self.vips}
        for node_id, node in self.nodes.items():
            status = node.status()
            for vip in (status or {}).get("applied_owned") or ():
                owners[vip].add(node_id)
        return owners

    def wait_owned(self, members: set[int], timeout_s: float, what: str) -> dict[str, int]:
        """Wait until every VIP has exactly one owner, among `members`; VIP -> owner."""
        deadline = time.monotonic() + timeout_s
        owners: dict[str, set[int]] = {}
        while time.monotonic() < deadline:
            owners = {vip: nodes & members for vip, nodes in self.owners().items()}
            if all(len(nodes) == 1 for nodes in owners.values()):
                return {vip: next(iter(nodes)) for vip, nodes in owners.items()}
            time.sleep(0.05)
        raise AssertionError(f"{what} within {timeout_s} s: {owners}\n{self.logs_tail()}")

    def wait_spread(self, timeout_s: float) -> dict[str, int]:
        """Every node up and owning its share (the VIPs' homes)."""
        members = set(self.nodes)
        share = len(self.vips) // len(members)
        deadline = time.monotonic() + timeout_s
        while True:
            owners = self.wait_owned(members, max(0.1, deadline - time.monotonic()), "owners")
            counts = [list(owners.values()).count(node) for node in members]
            if all(count == share for count in counts):
                return owners
            if time.monotonic() > deadline:
                raise AssertionError(f"no even spread within {timeout_s} s: {owners}")
            time.sleep(0.1)

    def rotations(self, duration_s: float, sample_hz: float = 10) -> list[float]:
        """Every daemon's `rotation_ms`, `sample_hz` times a second for `duration_s`."""
        sockets = [node.socket_path for node in self.nodes.values()]
        return rotation_samples(sockets, duration_s, sample_hz)

    def cpu_seconds(self) -> dict[str, float]:
        """User + system CPU seconds so far of the daemons and of their children (nft)."""
        pids = [node.process.pid for node in self.nodes.values() if node.process is not None]
        totals = {"daemons": 0.0, "children": 0.0}
        for role, seconds in cpu_times(pids).values():
            totals["daemons" if role == "daemon" else "children"] += seconds
        return totals

    def start_watchers(self) -> None:
        """The client's ARP prober and GARP reader (logs: arp.log, garp.log)."""
        self.arp_log = self.directory / "arp.log"
        self.garp_log = self.directory / "garp.log"
        probe = [sys.executable, "-m", "rainctl.lab.probe"]
        for argv in (
            [*probe, "arp", "--output", str(self.arp_log), "--interface", "lan0",
             "--source", CLIENT_ADDRESS, "--source6", CLIENT_ADDRESS6, *self.vips],
            [*probe, "garp", "--output", str(self.garp_log), "--interface", "lan0"],
        ):  # fmt: skip
            self.helpers.append(
                subprocess.Popen(
                    ["ip", "netns", "exec", self.client, *argv],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        deadline = time.monotonic() + 5
        while not (self.arp_log.exists() and self.arp_log.stat().st_size > 0):
            assert time.monotonic() < deadline, "the ARP prober logged nothing"
            time.sleep(0.05)

    def logs_tail(self, lines: int = 30) -> str:
        parts = []
        for node in self.nodes.values():
            text = node.log.read_text(encoding="utf-8") if node.log.exists() else ""
            parts.append(f"--- node {node.node_id}\n" + "\n".join(text.splitlines()[-lines:]))
        return "\n".join(parts)

    def close(self) -> None:
        for process in [
            *(node.process for node in self.nodes.values() if node.process is not None),
            *self.helpers,
        ]:
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)
                process.kill()
            process.wait(timeout=10)
        for namespace in [*(node.namespace for node in self.nodes.values()), self.client,
                          self.switch]:  # fmt: skip
            run("ip", "netns", "delete", namespace, check=False)


def _config(
    directory: Path, node_ids: Sequence[int], vips: Sequence[str], cluster_extra: str
) -> None:
    (directory / "cluster.key").write_text(KEY + "\n", encoding="utf-8")
    lines = [
        "[cluster]",
        'name = "nscluster"',
        "id = 77",
        'key_file = "cluster.key"',
        'profile = "fast"',
        "vip_lease_s = 1",
        *cluster_extra.splitlines(),
    ]
    for node_id in node_ids:
        lines += ["[[nodes]]", f"id = {node_id}", f'address = "{SUBNET}.{node_id}:7400"']
    homes = itertools.cycle(node_ids)
    for vip in vips:
        lines += ["[[vips]]", f'address = "{vip}"', f"home = {next(homes)}"]
    (directory / "cluster.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _port(switch: str, namespace: str, inside_name: str, outside_name: str) -> str:
    """A veth from the switch's bridge into `namespace`; the MAC of its inner end."""
    run("ip", "-n", switch, "link", "add", outside_name, "type", "veth",
        "peer", "name", inside_name, "netns", namespace)  # fmt: skip
    run("ip", "-n", switch, "link", "set", outside_name, "master", "br0", "up")
    shown = run("ip", "-n", namespace, "link", "show", inside_name).stdout
    match = re.search(r"link/ether ([0-9a-f:]{17})", shown)
    assert match, shown
    return match.group(1)


@contextmanager
def ns_cluster(
    directory: Path,
    node_ids: Sequence[int] = (1, 2, 3),
    vips_per_node: int = 2,
    cluster_extra: str = "",
) -> Iterator[NsCluster]:
    """The namespaces and the config (daemons not started: `start_daemon`); `cluster_extra`:
    more lines of the config's [cluster] table."""
    require_root()
    tag = f"{RUN_TAG}-{next(_counter)}"
    vips = tuple(
        [f"{SUBNET}.{200 + index}" for index in range(len(node_ids) * vips_per_node - 1)]
        + [f"{SUBNET6}::200"]
    )
    cluster = NsCluster(directory, switch=f"rcns{tag}-sw", client=f"rcns{tag}-cl", vips=vips)
    namespaces = [cluster.switch, cluster.client]
    try:
        for namespace in namespaces:
            run("ip", "netns", "add", namespace)
        for conf in ("all", "default"):
            run("ip", "netns", "exec", cluster.client, "sysctl", "-qw",
                f"net.ipv6.conf.{conf}.accept_dad=0")  # fmt: skip
        run("ip", "-n", cluster.switch, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", cluster.switch, "link", "set", "br0", "up")
        _port(cluster.switch, cluster.client, "lan0", "cl")
        run("ip", "-n", cluster.client, "address", "add", f"{CLIENT_ADDRESS}/24", "dev", "lan0")
        run("ip", "-n", cluster.client, "address", "add", f"{CLIENT_ADDRESS6}/64", "dev", "lan0",
            "nodad")  # fmt: skip
        run("ip", "-n", cluster.client, "link", "set", "lan0", "up")
        for node_id in node_ids:
            namespace = f"rcns{tag}-n{node_id}"
            namespaces.append(namespace)
            run("ip", "netns", "add", namespace)
            run("ip", "-n", namespace, "link", "set", "lo", "up")
            for conf in ("all", "default"):
                run("ip", "netns", "exec", namespace, "sysctl", "-qw",
                    f"net.ipv6.conf.{conf}.accept_dad=0")  # fmt: skip
            mac = _port(cluster.switch, namespace, "front0", f"n{node_id}")
            run("ip", "-n", namespace, "address", "add", f"{SUBNET}.{node_id}/24", "dev", "front0")
            run("ip", "-n", namespace, "address", "add", f"{SUBNET6}::{node_id}/64", "dev",
                "front0", "nodad")  # fmt: skip
            run("ip", "-n", namespace, "link", "set", "front0", "up")
            cluster.nodes[node_id] = NsNode(
                node_id,
                namespace,
                mac,
                directory / f"daemon{node_id}.log",
                directory / f"control{node_id}.sock",
            )
        _config(directory, node_ids, vips, cluster_extra)
        yield cluster
    finally:
        cluster.close()
        for namespace in namespaces:
            run("ip", "netns", "delete", namespace, check=False)


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout_s} s")
        time.sleep(0.05)


@dataclass(frozen=True, slots=True)
class Silencing:
    """What the client saw of one VIP after a fault of its owner's daemon at `fault_at`."""

    vip: str
    silent_after_s: float
    """From the fault to the last round the old owner still answered (0: none after it)."""
    first_garp_after_s: float | None
    """From the fault to the new owner's first gratuitous ARP / NA (None: none seen)."""
    dual_after_garp_s: float
    """How long two MACs answered at once from that announcement on."""
    dual_after_fault_s: float
    """How long two MACs answered at once from the fault on."""


def silencing(
    cluster: NsCluster, victim: int, vips: Sequence[str], fault_at: float
) -> list[Silencing]:
    """Read the client's logs back for the VIPs `victim` owned when its daemon was hit."""
    assert cluster.arp_log is not None
    assert cluster.garp_log is not None
    rounds = probe.arp_rounds(cluster.arp_log)
    garps = probe.garps(cluster.garp_log)
    mac = cluster.nodes[victim].mac
    result = []
    for vip in vips:
        answered = [
            r.sent for r in rounds if r.sent >= fault_at and mac in r.answerers.get(vip, ())
        ]
        first_garp = min(
            (at for at, sender, address in garps
             if address == vip and at >= fault_at and sender != mac),
            default=None,
        )  # fmt: skip
        result.append(
            Silencing(
                vip,
                answered[-1] - fault_at if answered else 0.0,
                None if first_garp is None else first_garp - fault_at,
                0.0
                if first_garp is None
                else probe.dual_answer_window(rounds, vip, since=first_garp),
                probe.dual_answer_window(rounds, vip, since=fault_at),
            )
        )
    return result
