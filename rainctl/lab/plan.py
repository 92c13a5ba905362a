"""The lab's topology as a value: every name, address and MAC, decided before anything runs.

Layout (LAB.md, "Topology that worked"): a switch namespace holds bridge br0 (front,
198.18.0.0/24) and br1 (back, 198.18.1.0/24) and runs the user-mode-linux nodes; node i has
vec0 = 198.18.0.(1+i) on br0 and vec1 = 198.18.1.(1+i) on br1, each through a veth pair made
in the switch namespace (the UML end is opened with a raw socket, the other end is on the
bridge). The switch namespace is also the upstream router: 198.18.0.1 on br0 and
198.18.1.254 on br1, forwarding between them. A client namespace sits on br0 at 198.18.0.10
with its default route via the router; back-end namespaces sit on br1 at 198.18.1.(10+j) with
no leg on the front subnet (LAB.md pitfall 5). In DR mode (the default, the classic LVS-DR
layout) each back-end holds every lab VIP on its loopback and answers the client directly
through the router; in NAT mode the back-ends have no default route and the director that
holds a connection masquerades it to its own back address, so replies come back through it.
Pure (no I/O but reading templates/): unit-tested without root. The files the lab writes for
other programs (the guests' init scripts, the cluster config) are rendered from templates/.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rainctl.templating import render

NODES_MAX = 8
"""Node back addresses (.2 to .9) stay below the back-ends' (.11 up)."""
BACKENDS_MAX = 32
PREFIX_MAX_CHARS = 8
"""Interface names are at most 15 characters: `<prefix>n8v1` and `<prefix>c0b` must fit."""
MEMORY_MB_MIN = 64
MEMORY_MB_DEFAULT = 192
"""A guest keeps about 97 of 128 MB for its processes; the daemon (~50 MB), its status
helper (~20 MB) and its health worker (~20 MB) left nothing for a burst, and the guest's
OOM killer took the daemon (seen in the health lab). 192 MB leaves room for a proxy worker
too."""
LAB_NETWORK = ipaddress.IPv4Network("198.18.0.0/15")
FRONT_NETWORK = ipaddress.IPv4Network("198.18.0.0/24")
BACK_NETWORK = ipaddress.IPv4Network("198.18.1.0/24")
CLIENT_ADDRESS = ipaddress.IPv4Address("198.18.0.10")
ROUTER_FRONT = ipaddress.IPv4Interface("198.18.0.1/24")
"""The switch namespace's address on br0: the client's default gateway."""
ROUTER_BACK = ipaddress.IPv4Interface("198.18.1.254/24")
"""The switch namespace's address on br1: the DR back-ends' default gateway."""
BACKEND_PORT = 80
ECHO_PORT = 9000
"""Each back-end's resident TCP echo server (long-lived connections, connection sync)."""
SERVICE_PORTS = (BACKEND_PORT, ECHO_PORT)
PROXY_PORT = 8080
"""With `proxy`: the first VIP's `mode = "http"` service (the nodes' proxies, to the
back-ends' HTTP port)."""
AGENT_PORT = 9777
"""The back-ends' agent (HAProxy's agent-check protocol; rainctl.lab.httpd)."""
AGENT_WEIGHT = 10
"""The configured weight of the agent-checked service's real servers (percentages show)."""
"""Every lab VIP gets one IPVS service per port, every back-end a real server of each."""
SERVICE_SCHEDULER = "mh"
"""Maglev hashing of the source address and port (mh_port): every node picks the same back-end
for a connection, so a VIP that moves keeps its connections even before connection sync has
copied them (the daemons run IPVS with sloppy_tcp; docs/operations.md)."""
MODES = ("dr", "nat")
"""IPVS forwarding of the lab's services: direct routing (default) or NAT."""
SYNC_ID = 1
DATA_PLANES = ("linux", "ipvs")
"""What the guests' daemons can run: `ipvs` (VIPs, IPVS services, connection sync) or `linux`
(VIPs and ARP only: the config then has no [sync] and no [[services]])."""
IPVS_MODULES = ("ip_vs", "ip_vs_rr", "ip_vs_wlc", "ip_vs_mh")
UML_MODULES_DIR = "/usr/lib/uml/modules"
RING_PORT = 7400
"""UDP port of the ring transport on each node's front address."""
RING_GROUP_PORT = 7401
RING_GROUP = f"239.192.74.1:{RING_GROUP_PORT}"
"""The lab cluster's `ring_group` (one datagram per token hop), on br0 only (hop limit 1)."""
VIP_BASE = ipaddress.IPv4Address("198.18.0.100")
VIPS_PER_NODE = 2
FRONT_NETWORK6 = ipaddress.IPv6Network("2001:2::/64")
"""The front subnet's IPv6 side (a lab with `ipv6`): RFC 5180's benchmarking prefix, the
IPv6 counterpart of 198.18.0.0/15."""
CLIENT_ADDRESS6 = ipaddress.IPv6Interface("2001:2::10/64")
VIP6_BASE = ipaddress.IPv6Address("2001:2::100")
VIPS6_PER_NODE = 1
PROFILES = ("fast", "lan")
CLUSTER_NAME = "rainctl-lab"
CLUSTER_ID = 1
GUEST_CONTROL_SOCKET = "/run/rainctl/control.sock"
"""On the guest's tmpfs: a Unix socket made by the guest kernel, even on hostfs, could not be
connected to from the host (another kernel), so the status helper asks it inside the guest."""
STATUS_INTERVAL_S = 0.2
"""How often each node's status helper copies its daemon's status to the host."""
_PREFIX = re.compile(r"[a-z][a-z0-9]*")


@dataclass(frozen=True, slots=True)
class Nic:
    """One UML network card: `vec<index>` in the guest, a veth pair in the switch namespace."""

    index: int
    uml_end: str
    """The veth end UML opens with `vecN:transport=raw,ifname=...`."""
    bridge_end: str
    bridge: str
    mac: str
    address: ipaddress.IPv4Interface

    @property
    def guest_name(self) -> str:
        return f"vec{self.index}"


@dataclass(frozen=True, slots=True)
class Node:
    """A user-mode-linux front node."""

    name: str
    """Also the UML umid."""
    nics: tuple[Nic, Nic]

    @property
    def front(self) -> ipaddress.IPv4Address:
        return self.nics[0].address.ip

    @property
    def back(self) -> ipaddress.IPv4Address:
        return self.nics[1].address.ip


@dataclass(frozen=True, slots=True)
class Host:
    """A network-namespace host (the client or a back-end) with one leg on a bridge."""

    name: str
    namespace: str
    bridge: str
    bridge_end: str
    """The veth end on the bridge, in the switch namespace; the other end is `eth0` inside."""
    mac: str
    address: ipaddress.IPv4Interface
    gateway: ipaddress.IPv4Address | None


@dataclass(frozen=True, slots=True)
class LabPlan:
    """Everything `up` creates, named."""

    prefix: str
    switch_namespace: str
    bridges: tuple[tuple[str, ipaddress.IPv4Network], ...]
    client: Host
    backends: tuple[Host, ...]
    nodes: tuple[Node, ...]
    memory_mb: int
    mode: str = "dr"
    """IPVS forwarding of the lab's services: "dr" or "nat" (MODES)."""
    ipv6: bool = False
    """IPv6 on the front subnet: the client at CLIENT_ADDRESS6, IPv6 VIPs (`lab_vips6`)."""

    @property
    def routers(self) -> tuple[tuple[str, ipaddress.IPv4Interface], ...]:
        """The switch namespace's router addresses: (bridge, address)."""
        return ((self.bridges[0][0], ROUTER_FRONT), (self.bridges[1][0], ROUTER_BACK))

    @property
    def namespaces(self) -> tuple[str, ...]:
        """Every namespace, the switch last (its removal takes the remaining veths along)."""
        hosts = (self.client, *self.backends)
        return (*(host.namespace for host in hosts), self.switch_namespace)

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        known = ", ".join(node.name for node in self.nodes)
        raise KeyError(f"no node {name!r} in the lab (nodes: {known})")


def _mac(kind: int, index: int, nic: int) -> str:
    # 02:... is locally administered and unicast; 52:4c is "RL".
    return f"02:52:4c:{kind:02x}:{index:02x}:{nic:02x}"


def bridge_mac(index: int) -> str:
    """The fixed MAC of the switch's bridge `index` (its router address's MAC)."""
    return _mac(3, index, 0)


def plan_lab(
    *,
    nodes: int,
    backends: int,
    prefix: str = "rlab",
    memory_mb: int = MEMORY_MB_DEFAULT,
    mode: str = "dr",
    ipv6: bool = False,
) -> LabPlan:
    """The plan of a lab with `nodes` UML nodes and `backends` back-end namespaces.

    Raises ValueError naming the bad value.
    """
    if not 1 <= nodes <= NODES_MAX:
        raise ValueError(f"nodes {nodes}: must be 1..{NODES_MAX}")
    if not 0 <= backends <= BACKENDS_MAX:
        raise ValueError(f"backends {backends}: must be 0..{BACKENDS_MAX}")
    if not (_PREFIX.fullmatch(prefix) and len(prefix) <= PREFIX_MAX_CHARS):
        raise ValueError(
            f"prefix {prefix!r}: must be 1..{PREFIX_MAX_CHARS} characters a-z0-9, "
            "starting with a letter"
        )
    if memory_mb < MEMORY_MB_MIN:
        raise ValueError(f"memory {memory_mb} MB: must be at least {MEMORY_MB_MIN}")
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: must be one of {', '.join(MODES)}")
    front_bridge, back_bridge = "br0", "br1"
    client = Host(
        name="client",
        namespace=f"{prefix}-client",
        bridge=front_bridge,
        bridge_end=f"{prefix}c0b",
        mac=_mac(1, 0, 0),
        address=ipaddress.IPv4Interface(f"{CLIENT_ADDRESS}/{FRONT_NETWORK.prefixlen}"),
        gateway=ROUTER_FRONT.ip,
    )
    backend_hosts = tuple(
        Host(
            name=f"backend{j}",
            namespace=f"{prefix}-be{j}",
            bridge=back_bridge,
            bridge_end=f"{prefix}b{j}b",
            mac=_mac(2, j, 0),
            address=ipaddress.IPv4Interface(
                f"{BACK_NETWORK.network_address + 10 + j}/{BACK_NETWORK.prefixlen}"
            ),
            # NAT: replies go to the director's back address (it masquerades), on-link.
            gateway=ROUTER_BACK.ip if mode == "dr" else None,
        )
        for j in range(1, backends + 1)
    )
    node_list = []
    for i in range(1, nodes + 1):
        nics = tuple(
            Nic(
                index=k,
                uml_end=f"{prefix}n{i}v{k}",
                bridge_end=f"{prefix}n{i}v{k}b",
                bridge=bridge,
                mac=_mac(0, i, k),
                address=ipaddress.IPv4Interface(
                    f"{network.network_address + 1 + i}/{network.prefixlen}"
                ),
            )
            for k, (bridge, network) in enumerate(
                ((front_bridge, FRONT_NETWORK), (back_bridge, BACK_NETWORK))
            )
        )
        node_list.append(Node(name=f"{prefix}-node{i}", nics=(nics[0], nics[1])))
    return LabPlan(
        prefix=prefix,
        switch_namespace=f"{prefix}-sw",
        bridges=((front_bridge, FRONT_NETWORK), (back_bridge, BACK_NETWORK)),
        client=client,
        backends=backend_hosts,
        nodes=tuple(node_list),
        memory_mb=memory_mb,
        mode=mode,
        ipv6=ipv6,
    )


def find_node(plan: LabPlan, reference: str) -> Node:
    """A node by name (`rlab-node2`) or id (`2`); raises ValueError naming the known ones."""
    for index, node in enumerate(plan.nodes, 1):
        if reference in {node.name, str(index)}:
            return node
    known = ", ".join(node.name for node in plan.nodes)
    raise ValueError(f"no node {reference!r} in the lab (nodes: {known}, or their ids 1..)")


def partition_groups(plan: LabPlan, spec: str) -> tuple[tuple[Node, ...], ...]:
    """The node groups of a partition spec: groups separated by '/', nodes in a group by ','
    (names or ids), e.g. `1,2/3`. The nodes no group lists form one more group together, so
    `3` alone cuts node 3 off from the rest. Raises ValueError when a node is unknown or listed
    twice, a group is empty, or fewer than two groups result."""
    groups: list[tuple[Node, ...]] = []
    seen: set[str] = set()
    for text in spec.split("/"):
        references = [reference.strip() for reference in text.split(",")]
        if not all(references):
            raise ValueError(f"partition {spec!r}: empty group or node (form: 1,2/3)")
        group = []
        for reference in references:
            node = find_node(plan, reference)
            if node.name in seen:
                raise ValueError(f"partition {spec!r}: node {node.name} is listed twice")
            seen.add(node.name)
            group.append(node)
        groups.append(tuple(group))
    rest = tuple(node for node in plan.nodes if node.name not in seen)
    if rest:
        groups.append(rest)
    if len(groups) < 2:
        raise ValueError(f"partition {spec!r}: needs at least two groups of nodes")
    return tuple(groups)


def partition_commands(plan: LabPlan, groups: Sequence[Sequence[Node]]) -> list[str]:
    """`ip -batch` lines (switch namespace) that split every bridge into `groups`.

    Per bridge B and group k: a bridge `Bg<k>` holding the group's ports of B, joined to B by a
    veth pair whose end on B (`Bg<k>u`) is an isolated bridge port. Isolated ports never
    forward to one another, only to B's other ports (the client, the back-ends, the router),
    so the groups are cut off from each other while everything else reaches every node.
    """
    commands = []
    for bridge, _network in plan.bridges:
        for k, group in enumerate(groups, 1):
            sub = f"{bridge}g{k}"
            commands += [
                f"link add {sub} type bridge",
                f"link set {sub} up",
                f"link add {sub}t type veth peer name {sub}u",
                f"link set {sub}t master {sub} up",
                f"link set {sub}u master {bridge}",
                f"link set {sub}u type bridge_slave isolated on",
                f"link set {sub}u up",
            ]
            for node in group:
                commands += [
                    f"link set {nic.bridge_end} master {sub}"
                    for nic in node.nics
                    if nic.bridge == bridge
                ]
    return commands


def heal_commands(plan: LabPlan, groups: int) -> list[str]:
    """`ip -batch` lines that undo `partition_commands` with `groups` groups."""
    commands = [
        f"link set {nic.bridge_end} master {nic.bridge}" for node in plan.nodes for nic in node.nics
    ]
    for bridge, _network in plan.bridges:
        for k in range(1, groups + 1):
            commands += [f"link del {bridge}g{k}u", f"link del {bridge}g{k}"]
    return commands


# ---- the ring the nodes' daemons form -------------------------------------------------------


def node_id(plan: LabPlan, node: Node) -> int:
    """The node's id in the cluster config: its position in the plan, from 1."""
    return plan.nodes.index(node) + 1


def lab_vips(plan: LabPlan) -> tuple[ipaddress.IPv4Address, ...]:
    """VIPS_PER_NODE VIPs per node on the front subnet, from VIP_BASE up."""
    return tuple(VIP_BASE + index for index in range(VIPS_PER_NODE * len(plan.nodes)))


SPARE_VIPS = 2


def spare_vips(plan: LabPlan) -> tuple[ipaddress.IPv4Address, ...]:
    """SPARE_VIPS addresses after the lab VIPs: not in the cluster config the lab writes, but
    on the DR back-ends' loopback and in the ARP prober's list, so a live configuration push
    can add them as VIPs with services (tests/lab/test_lab_config.py)."""
    first = VIP_BASE + VIPS_PER_NODE * len(plan.nodes)
    return tuple(first + index for index in range(SPARE_VIPS))


def lab_vips6(plan: LabPlan) -> tuple[ipaddress.IPv6Address, ...]:
    """With `ipv6`: VIPS6_PER_NODE IPv6 VIPs per node, from VIP6_BASE up (else none). They
    carry no IPVS service: they show ownership, NA and neighbour solicitation end to end."""
    if not plan.ipv6:
        return ()
    return tuple(VIP6_BASE + index for index in range(VIPS6_PER_NODE * len(plan.nodes)))


LAB_CHECK: dict[str, str | int] = {"kind": "tcp", "interval_ms": 2000, "timeout_ms": 1000}
"""The lab's back-end check with `checks` (a quarter of the default's probes)."""
DEFAULT_CHECK: dict[str, str | int] = {"kind": "tcp"}
"""With `check_defaults`: the default check (every 400 ms: rainctl.config.health)."""
LAB_AGENT_CHECK: dict[str, str | int] = {
    "kind": "agent",
    "port": AGENT_PORT,
    "interval_ms": 2000,
    "timeout_ms": 1000,
}
NO_CHECK: dict[str, str | int] = {"kind": "none"}


def agent_service(plan: LabPlan) -> tuple[ipaddress.IPv4Address, int] | None:
    """With `checks` and 2+ back-ends: the service whose real servers (weight AGENT_WEIGHT)
    are checked by their agents, the last VIP's HTTP service."""
    return (lab_vips(plan)[-1], BACKEND_PORT) if len(plan.backends) >= 2 else None


def sorry_service(plan: LabPlan) -> tuple[ipaddress.IPv4Address, int] | None:
    """With `checks` and 2+ back-ends: the service whose only real server is the first
    back-end and whose sorry server is the second, the last VIP's echo service."""
    return (lab_vips(plan)[-1], ECHO_PORT) if len(plan.backends) >= 2 else None


def cluster_config(
    plan: LabPlan,
    *,
    profile: str,
    key_file: str,
    data_plane: str = "ipvs",
    exclusion: str = "conservative",
    ring_group: bool = True,
    checks: bool = False,
    check_defaults: bool = False,
    proxy: bool = False,
    front_interface: str | None = None,
    back_interface: str | None = None,
) -> str:
    """The cluster config (TOML) every node's daemon runs with (templates/lab_cluster.toml.j2).

    Nodes are the front addresses on br0, port RING_PORT; VIP k has node (k mod n) + 1 as its
    home, so a formed ring spreads them evenly; quorum is the majority of the configured nodes.
    With data plane "ipvs": connection sync on (every node master and backup, on its back
    interface, SYNC_ID) and, when the lab has back-ends, for every VIP one service per
    SERVICE_PORTS port (tcp, SERVICE_SCHEDULER) with every back-end as a real server
    (forwarding = the plan's mode, weight 1), whose back-end health checks run only with
    `checks`, and then every 2 s (LAB_CHECK): on a 2-core host the UML nodes' ring timing
    has little room, and the default probes overloaded the guests (docs/lab.md).
    With `checks` the last VIP's two services show the other parts of back-end health: its
    HTTP service is checked by the back-ends' agents (`agent_service`), its echo service
    has one real server and a sorry server (`sorry_service`). With `check_defaults` instead
    (the health benchmark, the Vagrant lab) every service has the default TCP check and
    every back-end.
    With `proxy` the first VIP also has a `mode = "http"` service on PROXY_PORT whose real
    servers are the back-ends' HTTP servers (checked like the others).
    `exclusion` is the config's `cluster.exclusion` (checked when the daemons load it);
    `ring_group` gives the cluster RING_GROUP (else the ring passes unicast).
    `front_interface` and `back_interface` name every node's interfaces when the nodes are
    machines of their own (the Vagrant lab); by default the config names no front interface
    (the UML nodes' daemons get `--front-interface`) and the back interface is the UML
    guest's (vec1).
    Raises ValueError for an unknown profile or data plane.
    """
    if profile not in PROFILES:
        raise ValueError(f"profile {profile!r}: must be one of {', '.join(PROFILES)}")
    if data_plane not in DATA_PLANES:
        raise ValueError(f"data plane {data_plane!r}: must be one of {', '.join(DATA_PLANES)}")
    ipvs = data_plane == "ipvs"
    nodes = [
        {
            "id": node_id(plan, node),
            "address": f"{node.front}:{RING_PORT}",
            "front_interface": front_interface,
            "back_interface": (back_interface or node.nics[1].guest_name) if ipvs else None,
        }
        for node in plan.nodes
    ]
    vips = [
        {"address": str(vip), "home": index % len(plan.nodes) + 1}
        for addresses in (lab_vips(plan), lab_vips6(plan))
        for index, vip in enumerate(addresses)
    ]
    services = []
    if ipvs:
        services = [
            _service(plan, vip, port, checks, check_defaults)
            for vip in lab_vips(plan)
            for port in (SERVICE_PORTS if plan.backends else ())
        ]
    if ipvs and proxy and plan.backends:
        services.append(_proxied_service(plan, checks))
    return render(
        "lab_cluster.toml.j2",
        prefix=plan.prefix,
        cluster_name=CLUSTER_NAME,
        cluster_id=CLUSTER_ID,
        key_file=key_file,
        profile=profile,
        exclusion=exclusion,
        ring_group=RING_GROUP if ring_group else None,
        sync_id=SYNC_ID if ipvs else None,
        nodes=nodes,
        vips=vips,
        services=services,
    )


def _service(
    plan: LabPlan, vip: ipaddress.IPv4Address, port: int, checks: bool, check_defaults: bool
) -> dict[str, Any]:
    """One service of the lab's config: every back-end at weight 1; with `checks` a TCP check,
    except on the agent service (agent checks, weight AGENT_WEIGHT) and the sorry service
    (the first back-end only, the second as its sorry server)."""
    health = LAB_CHECK if checks else NO_CHECK
    backends, weight = plan.backends, 1
    settings: dict[str, Any] = {
        "vip": str(vip),
        "port": port,
        "protocol": "tcp",
        "scheduler": SERVICE_SCHEDULER,
        "mh_port": True,
        "forwarding": plan.mode,
    }
    if check_defaults:
        health, checks = DEFAULT_CHECK, False
    if checks and (vip, port) == agent_service(plan):
        health, weight = LAB_AGENT_CHECK, AGENT_WEIGHT
    if checks and (vip, port) == sorry_service(plan):
        backends = plan.backends[:1]
        settings["sorry_server"] = str(plan.backends[1].address.ip)
    settings["health"] = health
    real_servers = [
        {"address": str(host.address.ip), "port": port, "weight": weight} for host in backends
    ]
    return {"settings": settings, "real_servers": real_servers}


def _proxied_service(plan: LabPlan, checks: bool) -> dict[str, Any]:
    """The first VIP's `mode = "http"` service on PROXY_PORT (with `proxy`)."""
    settings: dict[str, Any] = {
        "vip": str(lab_vips(plan)[0]),
        "port": PROXY_PORT,
        "mode": "http",
        "health": LAB_CHECK if checks else NO_CHECK,
    }
    real_servers = [
        {"address": str(host.address.ip), "port": BACKEND_PORT} for host in plan.backends
    ]
    return {"settings": settings, "real_servers": real_servers}


@dataclass(frozen=True, slots=True)
class DaemonLaunch:
    """How a node's init script starts its resident `rainctl daemon` and status helper."""

    python: str
    """The interpreter with rainctl installed (the host's venv: the guest root is hostfs)."""
    config: str
    """The cluster config on the host's filesystem."""
    data_plane: str = "ipvs"
    """`rainctl daemon --data-plane` (DATA_PLANES); must match the config's data plane."""


@dataclass(frozen=True, slots=True)
class GuestJob:
    """A one-shot command a node runs once its ready marker is written (tests: an in-guest
    pytest run). Its stdout and stderr, then a last line `exit status N`, go to `output` in
    the node's scratch directory, written whole (tmp + rename) when the command ends."""

    argv: tuple[str, ...]
    cwd: str
    """A directory of the host's filesystem (the guest's root is hostfs)."""
    output: str = "job.txt"


JOB_EXIT_PREFIX = "exit status "


# ---- the guest's init script ---------------------------------------------------------------


def init_script(
    plan: LabPlan,
    node: Node,
    scratch: str,
    daemon: DaemonLaunch | None = None,
    job: GuestJob | None = None,
    *,
    peer: str = "",
) -> str:
    """The shell script UML runs as PID 1 (templates/lab_node_init.sh.j2); `scratch` is the
    node's directory on the host.

    With `daemon`, the node also starts its `rainctl daemon` and status helper once the
    ready marker is written; with `job`, it also runs that command once, in the background.
    `peer` is shell text run at the same point instead of (or besides) the daemon: the
    benchmark's keepalived section (rainctl.lab.keepalived.init_section).
    """
    address6 = None
    if plan.ipv6:
        host = int(node.front) % 256
        address6 = ipaddress.IPv6Interface(
            f"{FRONT_NETWORK6.network_address + host}/{FRONT_NETWORK6.prefixlen}"
        )
    return render(
        "lab_node_init.sh.j2",
        node=node,
        node_id=node_id(plan, node),
        scratch=scratch,
        modules_dir=UML_MODULES_DIR,
        modules=IPVS_MODULES,
        disable_ipv6=0 if plan.ipv6 else 1,
        address6=address6,
        nat=plan.mode == "nat",
        back_network=BACK_NETWORK,
        peer=peer,
        daemon=daemon,
        control_socket=GUEST_CONTROL_SOCKET,
        status_interval_s=STATUS_INTERVAL_S,
        job=job,
        job_exit_prefix=JOB_EXIT_PREFIX,
    )


def uml_command(
    plan: LabPlan, node: Node, *, kernel: str, uml_dir: str, init_path: str, python: str
) -> tuple[str, ...]:
    """The command that boots `node` inside the switch namespace (LAB.md, "Start a node"),
    through `python -m rainctl.lab.xstate_guard` so that it boots on any x86-64 host."""
    nics = tuple(
        f"{nic.guest_name}:transport=raw,ifname={nic.uml_end},mac={nic.mac}" for nic in node.nics
    )
    return (
        "ip",
        "netns",
        "exec",
        plan.switch_namespace,
        python,
        "-m",
        "rainctl.lab.xstate_guard",
        kernel,
        f"umid={node.name}",
        f"uml_dir={uml_dir}",
        f"mem={plan.memory_mb}M",
        "root=/dev/root",
        "rootfstype=hostfs",
        "rootflags=/",
        "rw",
        f"init={init_path}",
        "con=null",
        "con0=fd:0,fd:1",
        *nics,
    )
