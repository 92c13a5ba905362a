"""The files `rainctl node setup` installs on a front node, rendered from templates/.

Pure: values in, text out. The systemd unit (templates/rainctl@.service.j2) starts the
daemon with this machine's paths; the sysctl.d file (templates/sysctl-rainctl.conf.j2)
holds the kernel settings the daemon needs, taken from the same constants the daemon
writes at its start (rainctl.kernel.addresses.ARP_SYSCTLS, rainctl.kernel.ipvs.IPVS_SYSCTLS),
plus `net.ipv4.ip_forward` when a service forwards by NAT (the daemon never sets that one).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import NamedTuple

from rainctl.config.models import ClusterConfig
from rainctl.config.services import ServiceMode
from rainctl.core.dataplane import ForwardingMethod
from rainctl.daemon.control import DEFAULT_SOCKET
from rainctl.daemon.realtime import PRIORITY_MAX
from rainctl.daemon.service import DEFAULT_STATE_DIR
from rainctl.kernel.addresses import ARP_SYSCTLS
from rainctl.kernel.interfaces import DataPlane
from rainctl.kernel.ipvs import IPVS_SYSCTLS
from rainctl.templating import render

CONFIG_DIR = Path("/etc/rainctl")
INSTALLED_CONFIG = CONFIG_DIR / "cluster.toml"
"""Where the unit's daemon reads the cluster config."""
UNIT_DIR = Path("/etc/systemd/system")
UNIT_FILE = "rainctl@.service"
SYSCTL_FILE = Path("/etc/sysctl.d/60-rainctl.conf")
REALTIME_PRIORITY = 10
"""The unit's SCHED_RR priority: above every normal process, below the kernel's own threads
and anything an operator runs at higher priorities (keepalived's vrrp_rt_priority idea)."""
STATE_ROOT = PurePosixPath("/var/lib")
RUNTIME_ROOT = PurePosixPath("/run")
"""systemd's StateDirectory= and RuntimeDirectory= are relative to these."""


@dataclass(frozen=True, slots=True)
class UnitSettings:
    """What the unit's ExecStart needs of this machine."""

    executable: Path
    """The `rainctl` program (the console script of the venv rainctl is installed in)."""
    config: Path = INSTALLED_CONFIG
    state_dir: Path = DEFAULT_STATE_DIR
    control_socket: Path = DEFAULT_SOCKET
    data_plane: DataPlane = DataPlane.IPVS
    realtime_priority: int = REALTIME_PRIORITY


def systemd_unit(settings: UnitSettings) -> str:
    """rainctl@.service for `settings`. The state directory must be under /var/lib and the
    control socket's directory under /run, where systemd creates them (StateDirectory=,
    RuntimeDirectory=, mode 0700); ValueError names a value that does not fit."""
    for name, path in (
        ("executable", settings.executable),
        ("config", settings.config),
        ("state_dir", settings.state_dir),
        ("control_socket", settings.control_socket),
    ):
        if not path.is_absolute():
            raise ValueError(f"{name} {path}: must be an absolute path")
    if not 1 <= settings.realtime_priority <= PRIORITY_MAX:
        raise ValueError(
            f"realtime priority {settings.realtime_priority}: must be 1..{PRIORITY_MAX}"
        )
    return render(
        "rainctl@.service.j2",
        executable=settings.executable,
        config=settings.config,
        state_dir=settings.state_dir,
        control_socket=settings.control_socket,
        data_plane=settings.data_plane.value,
        realtime_priority=settings.realtime_priority,
        state_directory=_below(settings.state_dir, STATE_ROOT, f"state_dir {settings.state_dir}"),
        runtime_directory=_below(
            settings.control_socket.parent,
            RUNTIME_ROOT,
            f"control_socket {settings.control_socket}: its directory",
        ),
    )


def _below(path: Path, root: PurePosixPath, what: str) -> str:
    """`path` relative to `root`, as systemd's *Directory= settings take it."""
    posix = PurePosixPath(path)
    if not posix.is_relative_to(root) or posix == root:
        raise ValueError(f"{what}: must be below {root} (systemd creates it there)")
    return str(posix.relative_to(root))


class SysctlSettings(NamedTuple):
    """The sysctl.d file's values by group, full dotted keys in file order."""

    arp: dict[str, int]
    ipvs: dict[str, int]
    """Only with the ipvs data plane; absent from a kernel until ip_vs is loaded."""
    forwarding: dict[str, int]
    """`net.ipv4.ip_forward` when a service of the config forwards by NAT (ipvs only)."""

    def all(self) -> dict[str, int]:
        return self.arp | self.ipvs | self.forwarding


def sysctl_settings(config: ClusterConfig, data_plane: DataPlane) -> SysctlSettings:
    """What a node of `config` needs with `data_plane` (linux or ipvs)."""
    ipvs = data_plane is DataPlane.IPVS
    nat = any(
        service.forwarding_of(server) is ForwardingMethod.NAT
        for service in config.services
        if service.mode is ServiceMode.IPVS
        for server in service.real_servers
    )
    return SysctlSettings(
        arp={f"net.ipv4.conf.all.{name}": value for name, value in ARP_SYSCTLS.items()},
        ipvs={f"net.ipv4.vs.{name}": value for name, value in IPVS_SYSCTLS.items()} if ipvs else {},
        forwarding={"net.ipv4.ip_forward": 1} if ipvs and nat else {},
    )


def sysctl_conf(config: ClusterConfig, node_id: int, data_plane: DataPlane) -> str:
    """/etc/sysctl.d/60-rainctl.conf for node `node_id` of `config`."""
    settings = sysctl_settings(config, data_plane)
    return render(
        "sysctl-rainctl.conf.j2",
        node_id=node_id,
        data_plane=data_plane.value,
        settings=settings,
    )
