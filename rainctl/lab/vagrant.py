"""The Vagrant lab: the UML lab's topology as virtual machines (`rainctl lab vagrant`).

Everything comes from the UML lab's plan (rainctl.lab.plan), so the two labs cannot drift:
the front nodes' front and back addresses, the back-ends' and the client's addresses, the
VIPs and the cluster config (`plan.cluster_config`: the same nodes, VIPs, homes, services
and real servers, DR forwarding). What only makes sense in UML (veth names, fixed MACs,
guest memory, the switch namespace) is left out; what differs is said here once:

- the interfaces: Vagrant puts a VM's private networks on the interfaces after its own NAT
  interface (PRIVATE_INTERFACES): a front node's or the client's front network is the first,
  its back network the second; a back-end's back network is its first (the config and the
  files name them; the provisioning scripts stop if the box named them otherwise);
- the router: the UML lab's switch namespace routes between the two networks. Here the
  client VM holds the back network's router address (ROUTER_BACK) and the back-ends route
  only the front network through it (their default route stays Vagrant's NAT, for apt):
  the back-ends' DR replies reach the client directly;
- the timers: profile "lan" (VMs on a shared host), and the default TCP health check on
  every service (`check_defaults`).

The generated files are the Vagrantfile, the cluster config, the provisioning scripts and
the files they install, and a .gitignore; all rendered from templates/vagrant/. The key is
made by the Vagrantfile itself on the first `vagrant up`, never rendered or committed.
Pure but for `write_lab`, which writes the files atomically and reports each one.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from rainctl.lab.plan import (
    BACK_NETWORK,
    BACKEND_PORT,
    CLIENT_ADDRESS,
    ECHO_PORT,
    FRONT_NETWORK,
    ROUTER_BACK,
    LabPlan,
    cluster_config,
    lab_vips,
    node_id,
    plan_lab,
)
from rainctl.node.setup import Outcome, SetupError, sync_file
from rainctl.templating import TEMPLATES_DIR, render

REPOSITORY = TEMPLATES_DIR.parent
DEFAULT_OUTPUT = REPOSITORY / "vagrant"
BOX = "debian/bookworm64"
BACKENDS = 2
PROFILE = "lan"
PRIVATE_INTERFACES = ("eth1", "eth2")
"""eth0 is Vagrant's NAT interface (management, apt); the private networks follow."""
FRONT_INTERFACE, BACK_INTERFACE = PRIVATE_INTERFACES
"""Of the front nodes and the client."""
BACKEND_INTERFACE = PRIVATE_INTERFACES[0]
"""A back-end's only private network is the back one."""
FRONT_NETWORK_NAME = "rainctl-front"
BACK_NETWORK_NAME = "rainctl-back"
MEMORY_MB = 1024
"""`make setup` builds the venv (pip) in every VM; the daemon needs about 100 MB."""
CPUS = 1
GUEST_REPOSITORY = "/rainctl"
GUEST_LAB = "/vagrant"
"""The Vagrantfile's directory in the VMs: config, key, provisioning files."""
CONFIG_FILE = "cluster.toml"
KEY_FILE_NAME = "cluster.key"
KEY_FILE = "/etc/rainctl/cluster.key"
"""Where the nodes keep the key (the config's key_file)."""
BACKEND_UNIT = "rainctl-lab-backend"
BACKEND_SYSCTL_FILE = "60-rainctl-lab-backend.conf"
CLIENT_SYSCTL_FILE = "60-rainctl-lab-client.conf"
REPOSITORY_EXCLUDES = (
    ".git/", ".venv/", ".venv-lock/", ".vagrant/", "__pycache__/", ".mypy_cache/",
    ".ruff_cache/", ".pytest_cache/", ".hypothesis/", KEY_FILE_NAME,
)  # fmt: skip
"""Not synced to the VMs: the host's venv and caches (the VMs make their own), the key."""
PACKAGES = {
    "front": ("iproute2", "ipvsadm", "iputils-arping", "tcpdump", "nftables"),
    "backend": ("iproute2",),
    "client": ("iproute2", "iputils-ping", "iputils-arping", "curl", "tcpdump", "wrk"),
}
"""`make setup LAB_PACKAGES=...` per role: the tools each kind of VM needs to look around
(and, on the front nodes, nftables for the daemon's answer lease)."""
SCRIPT_MODE = 0o755
FILE_MODE = 0o644


@dataclass(frozen=True, slots=True)
class Machine:
    """One VM of the Vagrantfile."""

    name: str
    role: str
    """"front", "backend" or "client" (PACKAGES, the provisioning script)."""
    comment: str
    addresses: tuple[tuple[str, ipaddress.IPv4Interface], ...]
    """(private network name, address) in interface order from FRONT/BACK_INTERFACE on."""
    arguments: tuple[str, ...]
    """Of its provisioning script."""

    @property
    def script(self) -> str:
        return f"provision/{self.role}.sh"


def lab_plan(nodes: int) -> LabPlan:
    """The UML lab's plan the Vagrant lab is made of (DR, BACKENDS back-ends)."""
    return plan_lab(nodes=nodes, backends=BACKENDS)


def machines(plan: LabPlan) -> tuple[tuple[Machine, ...], tuple[Machine, ...], Machine]:
    """The back-ends, the front nodes and the client, in that order of `vagrant up`: the
    real servers listen before the nodes program them."""
    backends = tuple(
        Machine(
            name=host.name,
            role="backend",
            comment=f"Back-end {host.name}: HTTP on port {BACKEND_PORT}, echo on {ECHO_PORT}.",
            addresses=((BACK_NETWORK_NAME, host.address),),
            arguments=(host.name, str(host.address.ip)),
        )
        for host in plan.backends
    )
    nodes = tuple(
        Machine(
            name=node.name,
            role="front",
            comment=f"Front node {node_id(plan, node)}: rainctl@{node_id(plan, node)}.service.",
            addresses=(
                (FRONT_NETWORK_NAME, node.nics[0].address),
                (BACK_NETWORK_NAME, node.nics[1].address),
            ),
            arguments=(str(node_id(plan, node)), str(node.front), str(node.back)),
        )
        for node in plan.nodes
    )
    client = Machine(
        name=plan.client.name,
        role="client",
        comment="The client, and the back network's router address for the DR replies.",
        addresses=((FRONT_NETWORK_NAME, plan.client.address), (BACK_NETWORK_NAME, ROUTER_BACK)),
        arguments=(str(CLIENT_ADDRESS), str(ROUTER_BACK.ip)),
    )
    return backends, nodes, client


def render_lab(plan: LabPlan, output: Path) -> dict[str, tuple[str, int]]:
    """Every file of the Vagrant lab for `plan`, rendered into directory `output`: relative
    path -> (text, mode). The Vagrantfile syncs the repository by its path relative to
    `output` (`..` for the repository's own vagrant/)."""
    backends, nodes, client = machines(plan)
    vips = [str(vip) for vip in lab_vips(plan)]
    common = {
        "guest_repository": GUEST_REPOSITORY,
        "guest_lab": GUEST_LAB,
        "front_interface": FRONT_INTERFACE,
        "back_interface": BACK_INTERFACE,
        "vips": vips,
    }
    files = {
        "Vagrantfile": render(
            "vagrant/Vagrantfile.j2",
            box=BOX,
            repository=os.path.relpath(REPOSITORY, output.absolute()),
            repository_excludes=REPOSITORY_EXCLUDES,
            key_file_name=KEY_FILE_NAME,
            memory_mb=MEMORY_MB,
            cpus=CPUS,
            backends=list(backends),
            nodes=list(nodes),
            client=client,
            front_network=FRONT_NETWORK,
            back_network=BACK_NETWORK,
            **common,
        ),
        CONFIG_FILE: cluster_config(
            plan,
            profile=PROFILE,
            key_file=KEY_FILE,
            check_defaults=True,
            front_interface=FRONT_INTERFACE,
            back_interface=BACK_INTERFACE,
        ),
        ".gitignore": render("vagrant/gitignore.j2", key_file_name=KEY_FILE_NAME),
        "provision/front.sh": render(
            "vagrant/front.sh.j2",
            packages=PACKAGES["front"],
            key_file_name=KEY_FILE_NAME,
            key_file=KEY_FILE,
            config_file_name=CONFIG_FILE,
            **common,
        ),
        "provision/backend.sh": render(
            "vagrant/backend.sh.j2",
            packages=PACKAGES["backend"],
            interface=BACKEND_INTERFACE,
            sysctl_file_name=BACKEND_SYSCTL_FILE,
            unit_file_name=f"{BACKEND_UNIT}@.service",
            unit_name=BACKEND_UNIT,
            **common,
        ),
        "provision/client.sh": render(
            "vagrant/client.sh.j2",
            packages=PACKAGES["client"],
            sysctl_file_name=CLIENT_SYSCTL_FILE,
            **common,
        ),
        f"provision/{BACKEND_SYSCTL_FILE}": render("vagrant/backend-sysctl.conf.j2"),
        f"provision/{CLIENT_SYSCTL_FILE}": render(
            "vagrant/client-sysctl.conf.j2",
            front_interface=FRONT_INTERFACE,
            back_interface=BACK_INTERFACE,
        ),
        f"provision/{BACKEND_UNIT}@.service": render(
            "vagrant/rainctl-lab-backend@.service.j2",
            vips=vips,
            front_network=FRONT_NETWORK,
            router=ROUTER_BACK.ip,
            interface=BACKEND_INTERFACE,
            python=f"{GUEST_REPOSITORY}/.venv/bin/python",
            http_port=BACKEND_PORT,
            echo_port=ECHO_PORT,
        ),
    }
    return {
        path: (text, SCRIPT_MODE if path.endswith(".sh") else FILE_MODE)
        for path, text in files.items()
    }


def write_lab(files: dict[str, tuple[str, int]], output: Path) -> list[tuple[str, Outcome]]:
    """Write `files` (render_lab) into `output`, each atomically and only if it differs;
    what happened to each, in order. SetupError names a file that cannot be written."""
    outcomes = []
    for relative, (text, mode) in files.items():
        path = output / relative
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SetupError(f"{path.parent}: cannot create: {exc.strerror or exc}") from exc
        outcome, _detail = sync_file(path, text, mode, dry_run=False)
        outcomes.append((relative, outcome))
    return outcomes
