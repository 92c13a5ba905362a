"""The lab's topology as a value: every name, address and MAC, decided before anything runs.

Layout (LAB.md, "Topology that worked"): a switch namespace holds bridge br0 (front,
198.18.0.0/24) and br1 (back, 198.18.1.0/24) and runs the user-mode-linux nodes; node i has
vec0 = 198.18.0.(1+i) on br0 and vec1 = 198.18.1.(1+i) on br1, each through a veth pair made
in the switch namespace (the UML end is opened with a raw socket, the other end is on the
bridge). A client namespace sits on br0 at 198.18.0.10; back-end namespaces sit on br1 at
198.18.1.(10+j) with a default route via the gateway VIP 198.18.1.1 (NAT mode) and no leg on
the front subnet (LAB.md pitfall 5). Pure: no I/O, so it is unit-tested without root.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shlex
import string
from dataclasses import dataclass

NODES_MAX = 8
"""Node back addresses (.2 to .9) stay below the back-ends' (.11 up)."""
BACKENDS_MAX = 32
PREFIX_MAX_CHARS = 8
"""Interface names are at most 15 characters: `<prefix>n8v1` and `<prefix>c0b` must fit."""
MEMORY_MB_MIN = 64
LAB_NETWORK = ipaddress.IPv4Network("198.18.0.0/15")
FRONT_NETWORK = ipaddress.IPv4Network("198.18.0.0/24")
BACK_NETWORK = ipaddress.IPv4Network("198.18.1.0/24")
CLIENT_ADDRESS = ipaddress.IPv4Address("198.18.0.10")
GATEWAY_VIP = ipaddress.IPv4Address("198.18.1.1")
BACKEND_PORT = 80
IPVS_MODULES = ("ip_vs", "ip_vs_rr", "ip_vs_wlc")
UML_MODULES_DIR = "/usr/lib/uml/modules"
RING_PORT = 7400
"""UDP port of the ring transport on each node's front address."""
VIP_BASE = ipaddress.IPv4Address("198.18.0.100")
VIPS_PER_NODE = 2
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


def plan_lab(*, nodes: int, backends: int, prefix: str = "rlab", memory_mb: int = 128) -> LabPlan:
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
    front_bridge, back_bridge = "br0", "br1"
    client = Host(
        name="client",
        namespace=f"{prefix}-client",
        bridge=front_bridge,
        bridge_end=f"{prefix}c0b",
        mac=_mac(1, 0, 0),
        address=ipaddress.IPv4Interface(f"{CLIENT_ADDRESS}/{FRONT_NETWORK.prefixlen}"),
        gateway=None,
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
            gateway=GATEWAY_VIP,
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
    )


# ---- the ring the nodes' daemons form -------------------------------------------------------


def node_id(plan: LabPlan, node: Node) -> int:
    """The node's id in the cluster config: its position in the plan, from 1."""
    return plan.nodes.index(node) + 1


def lab_vips(plan: LabPlan) -> tuple[ipaddress.IPv4Address, ...]:
    """VIPS_PER_NODE VIPs per node on the front subnet, from VIP_BASE up."""
    return tuple(VIP_BASE + index for index in range(VIPS_PER_NODE * len(plan.nodes)))


def cluster_config(plan: LabPlan, *, profile: str, key_file: str) -> str:
    """The cluster config (TOML) every node's daemon runs with.

    Nodes are the front addresses on br0, port RING_PORT; VIP k has node (k mod n) + 1 as its
    home, so a formed ring spreads them evenly; quorum is the majority of the configured nodes.
    Raises ValueError for an unknown profile.
    """
    if profile not in PROFILES:
        raise ValueError(f"profile {profile!r}: must be one of {', '.join(PROFILES)}")
    lines = [
        f"# The lab's cluster ({plan.prefix}), generated by rainctl.lab: do not edit.",
        "[cluster]",
        f'name = "{CLUSTER_NAME}"',
        f"id = {CLUSTER_ID}",
        f"key_file = {_toml_string(key_file)}",
        f'profile = "{profile}"',
        'quorum = "majority"',
        "",
    ]
    for node in plan.nodes:
        lines += [
            "[[nodes]]",
            f"id = {node_id(plan, node)}",
            f'address = "{node.front}:{RING_PORT}"',
        ]
        lines.append("")
    for index, vip in enumerate(lab_vips(plan)):
        lines += ["[[vips]]", f'address = "{vip}"', f"home = {index % len(plan.nodes) + 1}", ""]
    return "\n".join(lines)


def _toml_string(text: str) -> str:
    # A basic TOML string: JSON's escaping of backslash, quote and control characters is valid.
    return json.dumps(text)


@dataclass(frozen=True, slots=True)
class DaemonLaunch:
    """How a node's init script starts its resident `rainctl daemon` and status helper."""

    python: str
    """The interpreter with rainctl installed (the host's venv: the guest root is hostfs)."""
    config: str
    """The cluster config on the host's filesystem."""


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

_INIT_TEMPLATE = string.Template(
    r"""#!/bin/sh
# PID 1 of UML node $name, generated by rainctl.lab. The root is the host's filesystem:
# guest files go to /run (a tmpfs) or to the node's scratch directory $scratch.
PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs -o mode=0755 tmpfs /run
# Debian ships the guest's modules in $modules_dir/<version>; modprobe reads
# /lib/modules/<version>, which on the host belongs to the host. Give the guest, and only
# the guest, a module root on its tmpfs and make every modprobe (the kernel's own requests
# for schedulers included) use it.
release=$$(uname -r)
mkdir -p /run/rainctl/modroot/lib/modules /run/rainctl/bin
ln -s "$modules_dir/$$release" "/run/rainctl/modroot/lib/modules/$$release"
printf '#!/bin/sh\nexec /sbin/modprobe -d /run/rainctl/modroot "$$@"\n' \
    > /run/rainctl/bin/modprobe
chmod 0755 /run/rainctl/bin/modprobe
echo /run/rainctl/bin/modprobe > /proc/sys/kernel/modprobe
PATH=/run/rainctl/bin:$$PATH
export PATH
hostname $name
if [ -d /proc/sys/net/ipv6 ]; then
    echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6
    echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6
fi
echo 1 > /proc/sys/net/ipv4/conf/all/arp_ignore
echo 2 > /proc/sys/net/ipv4/conf/all/arp_announce
echo 1 > /proc/sys/net/ipv4/ip_forward
ip link set lo up
$addresses
for module in $modules; do
    modprobe "$$module" || echo "modprobe $$module failed" >> $scratch/errors
done
# The ready marker lists the IPVS modules the guest really has loaded.
grep -E '^ip_vs' /proc/modules | cut -d ' ' -f 1 > $scratch/ready.tmp
mv $scratch/ready.tmp $scratch/ready
$daemon$job# Idle on builtins only (LAB.md pitfall 1): a read on a FIFO opened read-write never sees
# end of file. A later agent may write "halt" into it; otherwise the node ends by kill or
# `uml_mconsole ... halt`.
mkfifo /run/rainctl/idle
exec 3<> /run/rainctl/idle
while read -r line <&3; do
    [ "$$line" = halt ] && break
done
halt -f
"""
)


_DAEMON_TEMPLATE = string.Template(
    r"""# The node's resident rainctl daemon, started once: Python costs 0.3-1 s to start inside
# UML. Data plane linux: owned VIPs go on $front_interface (GARP on takeover), the others on
# the local rainctl0 device. Its status helper is one more resident Python process that asks
# the daemon every $interval s over the control socket and writes $scratch/status.json
# (tmp + rename) for the host, which cannot connect to a socket of the guest's kernel.
mkdir -p $scratch/state
$python -c 'from rainctl.cli.app import main; main()' daemon --config $config \
    --node $node_id --state-dir $scratch/state --control-socket $socket \
    --data-plane linux --front-interface $front_interface \
    < /dev/null > $scratch/daemon.log 2>&1 &
daemon_pid=$$!
$python -m rainctl.lab.agent --socket $socket --daemon-pid "$$daemon_pid" \
    --output $scratch/status.json --interval $interval \
    < /dev/null > $scratch/agent.log 2>&1 &
"""
)


_JOB_TEMPLATE = string.Template(
    r"""# A one-shot job (rainctl.lab.plan.GuestJob), in the background so the node idles as usual.
(
    (cd $cwd && exec $command) < /dev/null > $scratch/$output.tmp 2>&1
    echo "$exit_prefix$$?" >> $scratch/$output.tmp
    mv $scratch/$output.tmp $scratch/$output
) &
"""
)


def init_script(
    plan: LabPlan,
    node: Node,
    scratch: str,
    daemon: DaemonLaunch | None = None,
    job: GuestJob | None = None,
) -> str:
    """The shell script UML runs as PID 1; `scratch` is the node's directory on the host.

    With `daemon`, the node also starts its `rainctl daemon` and status helper once the
    ready marker is written; with `job`, it also runs that command once, in the background.
    """
    job_section = ""
    if job is not None:
        job_section = _JOB_TEMPLATE.substitute(
            cwd=shlex.quote(job.cwd),
            command=shlex.join(job.argv),
            scratch=shlex.quote(scratch),
            output=shlex.quote(job.output),
            exit_prefix=JOB_EXIT_PREFIX,
        )
    daemon_section = ""
    if daemon is not None:
        daemon_section = _DAEMON_TEMPLATE.substitute(
            python=shlex.quote(daemon.python),
            config=shlex.quote(daemon.config),
            node_id=node_id(plan, node),
            scratch=shlex.quote(scratch),
            socket=GUEST_CONTROL_SOCKET,
            interval=STATUS_INTERVAL_S,
            front_interface=node.nics[0].guest_name,
        )
    lines = []
    for nic in node.nics:
        lines.append(f"ip addr add {nic.address} dev {nic.guest_name}")
        lines.append(f"ip link set {nic.guest_name} up")
    for nic in node.nics:
        lines.append(f"echo 1 > /proc/sys/net/ipv4/conf/{nic.guest_name}/arp_ignore")
        lines.append(f"echo 2 > /proc/sys/net/ipv4/conf/{nic.guest_name}/arp_announce")
    return _INIT_TEMPLATE.substitute(
        name=node.name,
        scratch=shlex.quote(scratch),
        modules_dir=UML_MODULES_DIR,
        addresses="\n".join(lines),
        modules=" ".join(IPVS_MODULES),
        daemon=daemon_section,
        job=job_section,
    )


def uml_command(
    plan: LabPlan, node: Node, *, kernel: str, uml_dir: str, init_path: str
) -> tuple[str, ...]:
    """The command that boots `node` inside the switch namespace (LAB.md, "Start a node")."""
    nics = tuple(
        f"{nic.guest_name}:transport=raw,ifname={nic.uml_end},mac={nic.mac}" for nic in node.nics
    )
    return (
        "ip",
        "netns",
        "exec",
        plan.switch_namespace,
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
