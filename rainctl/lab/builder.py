"""Build, inspect and tear down the lab a `LabPlan` describes (docs/lab.md).

Networking uses the `ip` command (iproute2), not pyroute2: the lab is test infrastructure,
`ip -batch` makes a whole namespace in one process, and the lab then needs nothing that the
project's runtime dependencies do not already pin.

Every process the lab starts (UML nodes, back-end HTTP servers) is started directly by
`subprocess.Popen` with its own session, so its PID and process group are known exactly
(LAB.md pitfall 3); the state file records PID and kernel start time, and teardown signals a
recorded process group only while its leader is still that same process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rainctl.lab import mconsole, processes
from rainctl.lab.plan import (
    AGENT_PORT,
    BACKEND_PORT,
    CLIENT_ADDRESS6,
    ECHO_PORT,
    MEMORY_MB_DEFAULT,
    UML_MODULES_DIR,
    DaemonLaunch,
    GuestJob,
    Host,
    LabPlan,
    Node,
    bridge_mac,
    cluster_config,
    find_node,
    heal_commands,
    init_script,
    lab_vips,
    lab_vips6,
    node_id,
    partition_commands,
    partition_groups,
    plan_lab,
    spare_vips,
    uml_command,
)
from rainctl.lab.processes import LabError, ProcessRecord, end_group, is_alive
from rainctl.templating import render

DEFAULT_STATE_DIR = Path("/var/lib/rainctl-lab")
"""Not under /run: the guests mount a tmpfs on /run and must still see their scratch files."""
DEFAULT_KERNEL = Path("/usr/bin/linux.uml")
STATE_FILE = "state.json"
CONFIG_FILE = "cluster.toml"
KEY_FILE = "cluster.key"
GUEST_DATA_PLANE = "ipvs"
"""What the guests' daemons run: VIPs and ARP, IPVS services and connection sync."""
STATUS_FILE = "status.json"
STATUS_STALE_S = 2.0
"""A node's status file older than this (by its host mtime) means its helper stopped."""
SHM_DIR = Path("/dev/shm")  # noqa: S108 - UML's own default; it unlinks its files at once
BOOT_TIMEOUT_S = 60.0
BRIDGE_NETFILTER_TABLES = ("iptables", "ip6tables", "arptables")
STOP_TIMEOUT_S = 10.0
MCONSOLE_TIMEOUT_S = 15.0
"""UML answers an mconsole command from its own kernel: on a host whose 2 cores the guests
and the tests' traffic saturate, `stop` went unanswered for 5 s twice in CI runs."""
POLL_S = 0.02

_log = logging.getLogger(__name__)

PeerHook = Callable[[LabPlan, Node, Path], str]
"""`up(peer=...)`: called with each node's fresh scratch directory before it boots; writes what
the node's peer needs there and returns the init-script section that starts it
(rainctl.bench.failover: keepalived instead of rainctl daemon)."""


@dataclass(frozen=True, slots=True)
class NodeStatus:
    node: Node
    process: ProcessRecord | None
    state: str
    """"running", "frozen", "dead" or "booting" (no ready marker yet)."""
    ipvs_modules: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class HostStatus:
    host: Host
    process: ProcessRecord | None
    state: str
    """"running" or "dead" for back-ends; "up" for the client (no process)."""


@dataclass(frozen=True, slots=True)
class DaemonStatus:
    """A node's `rainctl daemon` as its status helper last reported it (docs/lab.md)."""

    node: Node
    node_id: int
    state: str
    """"up" (answering), "down" (its process is gone or does not answer), "stale" (no
    fresh status file: node dead or frozen) or "starting" (no status file yet)."""
    age_s: float | None
    """Age of the status file (host clock, from its mtime); None without one."""
    ring: dict[str, int] | None
    members: tuple[int, ...]
    owned: tuple[str, ...]
    phase: str | None
    rss_kb: int | None
    """The daemon's resident memory inside the guest."""
    error: str | None
    document: dict[str, Any] | None
    """The daemon's whole status document (`rainctl status --json`), if any."""


@dataclass(frozen=True, slots=True)
class LabStatus:
    state_dir: Path
    plan: LabPlan
    namespaces_present: tuple[str, ...]
    nodes: tuple[NodeStatus, ...]
    backends: tuple[HostStatus, ...]
    client: HostStatus
    daemons: tuple[DaemonStatus, ...] = ()
    """One per node when the lab runs daemons (`up --daemon`), else empty."""
    profile: str | None = None


# ---- processes ------------------------------------------------------------------------------


def _spawn(
    state_dir: Path,
    command: Sequence[str],
    log: Path,
    *,
    environment: dict[str, str] | None = None,
) -> ProcessRecord:
    """Start a process of the lab in `state_dir`, marked as such (rainctl.lab.processes)."""
    return processes.spawn(command, log, marker=str(state_dir.absolute()), environment=environment)


def _run(command: Sequence[str], *, stdin: str | None = None) -> str:
    try:
        result = subprocess.run(  # noqa: S603 - fixed argv built from the plan
            list(command),
            input=stdin,
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LabError(f"{' '.join(command)}: {exc}") from exc
    if result.returncode != 0:
        detail = " ".join(result.stderr.split()) or f"exit status {result.returncode}"
        raise LabError(f"{' '.join(command[:4])}...: {detail}")
    return result.stdout


def _ip_batch(namespace: str, commands: Iterable[str]) -> None:
    _run(["ip", "-n", namespace, "-batch", "-"], stdin="".join(f"{c}\n" for c in commands))


def _sysctls_off(namespace: str, *, ipv6: bool = False) -> None:
    # Per-namespace values: IPv6 off unless this host uses it (the client of a lab with
    # `ipv6`), and bridged frames must not pass through the host's iptables (the files exist
    # only with br_netfilter).
    values = {
        f"net/ipv6/conf/{interface}/disable_ipv6": 0 if ipv6 else 1
        for interface in ("all", "default")
    }
    values |= {f"net/bridge/bridge-nf-call-{table}": 0 for table in BRIDGE_NETFILTER_TABLES}
    _sysctls(namespace, values, only_present=True)


def _existing_namespaces() -> set[str]:
    return {line.split()[0] for line in _run(["ip", "netns", "list"]).splitlines() if line}


# ---- state ----------------------------------------------------------------------------------


@dataclass(slots=True)
class _State:
    prefix: str
    nodes: int
    backends: int
    memory_mb: int
    processes: dict[str, ProcessRecord]
    frozen: set[str]
    profile: str | None = None
    """The ring's timer profile when the nodes run daemons; None when they do not."""
    mode: str = "dr"
    """IPVS forwarding of the lab's services (plan.MODES)."""
    ipv6: bool = False
    """IPv6 on the front subnet (plan.LabPlan.ipv6)."""
    partition: list[list[str]] | None = None
    """The node groups of the current partition (`lab partition`), None when whole."""

    def plan(self) -> LabPlan:
        return plan_lab(
            nodes=self.nodes,
            backends=self.backends,
            prefix=self.prefix,
            memory_mb=self.memory_mb,
            mode=self.mode,
            ipv6=self.ipv6,
        )

    def save(self, state_dir: Path) -> None:
        document = {
            "prefix": self.prefix,
            "nodes": self.nodes,
            "backends": self.backends,
            "memory_mb": self.memory_mb,
            "processes": {
                name: {"pid": record.pid, "start_time": record.start_time}
                for name, record in sorted(self.processes.items())
            },
            "frozen": sorted(self.frozen),
            "profile": self.profile,
            "mode": self.mode,
            "ipv6": self.ipv6,
            "partition": self.partition,
        }
        temporary = state_dir / f"{STATE_FILE}.tmp"
        temporary.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        temporary.replace(state_dir / STATE_FILE)


def _load_state(state_dir: Path) -> _State | None:
    path = state_dir / STATE_FILE
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        return _State(
            prefix=str(document["prefix"]),
            nodes=int(document["nodes"]),
            backends=int(document["backends"]),
            memory_mb=int(document["memory_mb"]),
            processes={
                str(name): ProcessRecord(pid=int(entry["pid"]), start_time=int(entry["start_time"]))
                for name, entry in document["processes"].items()
            },
            frozen={str(name) for name in document["frozen"]},
            profile=None if document.get("profile") is None else str(document["profile"]),
            mode=str(document.get("mode", "dr")),
            ipv6=bool(document.get("ipv6", False)),
            partition=(
                None
                if document.get("partition") is None
                else [[str(name) for name in group] for group in document["partition"]]
            ),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LabError(f"{path}: unreadable lab state ({exc}); remove it by hand") from exc


def _require_state(state_dir: Path) -> _State:
    state = _load_state(state_dir)
    if state is None:
        raise LabError(f"no lab in {state_dir} (run `rainctl lab up`)")
    return state


def _scratch(state_dir: Path, node: Node) -> Path:
    return state_dir / "nodes" / node.name


def job_output(state_dir: Path, job: GuestJob) -> Path:
    """Where the first node writes the result of the `job` given to `up` (whole, once done)."""
    state = _load_state(state_dir.absolute())
    if state is None:
        raise LabError(f"no lab is recorded in {state_dir}")
    return _scratch(state_dir.absolute(), state.plan().nodes[0]) / job.output


def _uml_dir(state_dir: Path) -> Path:
    return state_dir / "uml"


# ---- prerequisites --------------------------------------------------------------------------


def missing_prerequisites(kernel: Path = DEFAULT_KERNEL) -> list[str]:
    """What this machine lacks to run the lab, one phrase each (empty: nothing)."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root privileges")
    if not os.access(kernel, os.X_OK):
        missing.append(f"{kernel} (Debian package user-mode-linux; run `make setup`)")
    modules = Path(UML_MODULES_DIR)
    if not any(modules.glob("*/kernel/net/netfilter/ipvs/ip_vs.ko*")):
        missing.append(f"IPVS modules in {modules}/<version> (package user-mode-linux)")
    for tool, package in (("ip", "iproute2"), ("modprobe", "kmod")):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            missing.append(f"{tool} (package {package})")
    return missing


# ---- up / status / down ---------------------------------------------------------------------


def up(
    state_dir: Path,
    *,
    nodes: int,
    backends: int,
    prefix: str = "rlab",
    memory_mb: int = MEMORY_MB_DEFAULT,
    kernel: Path = DEFAULT_KERNEL,
    timeout_s: float = BOOT_TIMEOUT_S,
    profile: str | None = None,
    job: GuestJob | None = None,
    mode: str = "dr",
    peer: PeerHook | None = None,
    exclusion: str = "conservative",
    ring_group: bool = True,
    ipv6: bool = False,
    checks: bool = False,
    check_defaults: bool = False,
    proxy: bool = False,
) -> LabStatus:
    """Build the lab and wait until every node reports its IPVS modules loaded.

    With a `profile` ("fast" or "lan"), every node also runs `rainctl daemon` with that timer
    profile (data plane GUEST_DATA_PLANE), and `up` waits until each daemon answers its
    status helper. `mode` ("dr" or "nat") is the IPVS forwarding of the lab's services and
    decides the back-ends' routes; `checks` turns the services' back-end health checks on,
    `check_defaults` gives every service the default check instead, `proxy` adds a
    `mode = "http"` service (plan.cluster_config).
    With a `job`, the first node also runs it once after its ready marker (`job_output`
    names its result file). On any failure everything built so far is torn down before the
    error propagates.
    """
    try:
        plan = plan_lab(
            nodes=nodes,
            backends=backends,
            prefix=prefix,
            memory_mb=memory_mb,
            mode=mode,
            ipv6=ipv6,
        )
        config = None
        data_plane = GUEST_DATA_PLANE
        if profile is not None:
            config = cluster_config(
                plan,
                profile=profile,
                key_file=KEY_FILE,
                data_plane=data_plane,
                exclusion=exclusion,
                ring_group=ring_group,
                checks=checks,
                check_defaults=check_defaults,
                proxy=proxy,
            )
    except ValueError as exc:
        raise LabError(str(exc)) from exc
    missing = missing_prerequisites(kernel)
    if missing:
        raise LabError("the lab needs " + "; ".join(missing))
    state_dir = state_dir.absolute()
    if _load_state(state_dir) is not None:
        raise LabError(f"a lab is already recorded in {state_dir}; run `rainctl lab down` first")
    taken = sorted(set(plan.namespaces) & _existing_namespaces())
    if taken:
        raise LabError(f"namespaces already exist: {', '.join(taken)} (another lab?)")
    state_dir.mkdir(parents=True, exist_ok=True)
    state = _State(
        prefix=prefix,
        nodes=nodes,
        backends=backends,
        memory_mb=memory_mb,
        processes={},
        frozen=set(),
        profile=profile,
        mode=mode,
        ipv6=ipv6,
    )
    state.save(state_dir)
    try:
        daemon = None
        if config is not None:
            daemon = _write_cluster_files(state_dir, config, data_plane)
        _build_network(plan)
        _start_backends(plan, state, state_dir)
        _start_nodes(plan, state, state_dir, kernel, daemon, job=job, peer=peer)
        _wait_ready(plan, state, state_dir, timeout_s)
    except BaseException:
        down(state_dir)
        raise
    return status(state_dir)


def _write_cluster_files(state_dir: Path, config: str, data_plane: str) -> DaemonLaunch:
    """The cluster config and a fresh key file (0600) for the nodes' daemons."""
    key = state_dir / KEY_FILE
    key.unlink(missing_ok=True)
    descriptor = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as output:
        output.write(f"1:{secrets.token_hex(32)}\n")
    config_path = state_dir / CONFIG_FILE
    config_path.write_text(config, encoding="utf-8")
    # The guest's root is the host's filesystem: the venv's interpreter is there as it is here.
    return DaemonLaunch(python=sys.executable, config=str(config_path), data_plane=data_plane)


def _build_network(plan: LabPlan) -> None:
    switch = plan.switch_namespace
    hosts = (plan.client, *plan.backends)
    for namespace in plan.namespaces:
        _run(["ip", "netns", "add", namespace])
        _sysctls_off(namespace, ipv6=plan.ipv6 and namespace == plan.client.namespace)
    commands = ["link set lo up"]
    for index, (bridge, _network) in enumerate(plan.bridges):
        # No multicast snooping: neighbour solicitations to solicited-node groups reach
        # every port, whether or not the guest's MLD report has been seen yet. A fixed MAC:
        # a bridge without one takes its lowest port MAC, so a partition's new ports would
        # change the router's MAC under the hosts' neighbour caches (DR replies to the old
        # one are dropped until each back-end re-resolves it, 30 s and more).
        commands += [
            f"link add {bridge} address {bridge_mac(index)} type bridge mcast_snooping 0",
            f"link set {bridge} up",
        ]
    for host in hosts:
        commands += [
            f"link add {host.bridge_end} type veth peer name eth0 netns {host.namespace}",
            f"link set {host.bridge_end} master {host.bridge} up",
        ]
    for node in plan.nodes:
        for nic in node.nics:
            # gso_max_segs 1 on the bridge port: a TCP sender in a namespace (a back-end)
            # hands the veth segments of up to 64 KB, which reach UML's raw socket whole and
            # are dropped there (the guest reads one MTU); the kernel cuts them into MTU
            # frames before this port instead. Without it TCP into a guest crawls at ~20
            # KB/s (the proxied downloads of tests/lab/test_lab_proxy.py); IPVS never
            # noticed, its large replies go from the back-ends straight to the client.
            commands += [
                f"link add {nic.uml_end} type veth peer name {nic.bridge_end}",
                f"link set {nic.bridge_end} gso_max_segs 1",
                f"link set {nic.bridge_end} master {nic.bridge} up",
                f"link set {nic.uml_end} up",
            ]
    # The switch namespace is the upstream router between the client's and the back-ends'
    # subnets (DR replies: back-end -> router -> client). Reverse-path filtering off: a DR
    # reply arrives on br1 from a VIP of br0's subnet.
    for bridge, address in plan.routers:
        commands.append(f"addr add {address} dev {bridge}")
    _ip_batch(switch, commands)
    _sysctls(switch, {"net/ipv4/ip_forward": 1, **_rp_filter_off("br0", "br1")})
    dr_vips = (*lab_vips(plan), *spare_vips(plan)) if plan.mode == "dr" else ()
    for host in hosts:
        host_commands = [
            "link set lo up",
            f"link set eth0 address {host.mac}",
            f"addr add {host.address} dev eth0",
            "link set eth0 up",
        ]
        if plan.ipv6 and host is plan.client:
            host_commands.append(f"addr add {CLIENT_ADDRESS6} dev eth0 nodad")
        if host.gateway is not None:
            host_commands.append(f"route add default via {host.gateway} dev eth0 onlink")
        if host in plan.backends:
            # DR: every VIP on lo, and never an ARP answer or source for one (arp_ignore=1:
            # answer only for addresses of the asking interface; arp_announce=2: best local
            # source address), so only the director that owns a VIP answers ARP for it.
            host_commands += [f"addr add {vip}/32 dev lo" for vip in dr_vips]
            _sysctls(
                host.namespace,
                {
                    f"net/ipv4/conf/{interface}/{name}": value
                    for interface in ("all", "default", "lo", "eth0")
                    for name, value in (("arp_ignore", 1), ("arp_announce", 2))
                },
            )
        _ip_batch(host.namespace, host_commands)


def _rp_filter_off(*interfaces: str) -> dict[str, int]:
    return {f"net/ipv4/conf/{i}/rp_filter": 0 for i in ("all", "default", *interfaces)}


def _sysctls(namespace: str, values: dict[str, int], *, only_present: bool = False) -> None:
    """Write /proc/sys values inside `namespace` (one shell, no sysctl(8) needed); with
    `only_present`, values the namespace's kernel does not have are left out."""
    script = render("lab_sysctls.sh.j2", values=values, only_present=only_present)
    _run(["ip", "netns", "exec", namespace, "sh", "-ec", script])


def _start_backends(plan: LabPlan, state: _State, state_dir: Path) -> None:
    for host in plan.backends:
        _start_backend(host, state, state_dir)


def _start_backend(host: Host, state: _State, state_dir: Path) -> None:
    directory = state_dir / "backends" / host.name
    directory.mkdir(parents=True, exist_ok=True)
    # Any address: in DR mode requests arrive addressed to a VIP (on the back-end's lo).
    command = (
        "ip", "netns", "exec", host.namespace, sys.executable, "-m", "rainctl.lab.httpd",
        "--name", host.name, "--http-port", str(BACKEND_PORT), "--echo-port", str(ECHO_PORT),
        "--agent-port", str(AGENT_PORT), "--agent-file", str(_agent_file(state_dir, host)),
    )  # fmt: skip
    state.processes[host.name] = _spawn(state_dir, command, directory / "server.log")
    state.save(state_dir)


def _backend(state_dir: Path, name: str) -> tuple[_State, Host]:
    state = _require_state(state_dir)
    host = next((h for h in state.plan().backends if h.name == name), None)
    if host is None:
        known = ", ".join(h.name for h in state.plan().backends) or "none"
        raise LabError(f"no back-end {name!r} in this lab (back-ends: {known})")
    return state, host


def kill_backend(state_dir: Path, name: str) -> None:
    """SIGKILL a back-end's servers (HTTP and echo): its ports answer with RST from now on."""
    state_dir = state_dir.absolute()
    state, host = _backend(state_dir, name)
    record = state.processes.get(host.name)
    if record is None or not is_alive(record):
        raise LabError(f"back-end {name} is not running")
    end_group(record)


def start_backend(state_dir: Path, name: str) -> None:
    """Start a killed back-end's servers again."""
    state_dir = state_dir.absolute()
    state, host = _backend(state_dir, name)
    record = state.processes.get(host.name)
    if record is not None and is_alive(record):
        raise LabError(f"back-end {name} is running")
    _start_backend(host, state, state_dir)


def _agent_file(state_dir: Path, host: Host) -> Path:
    return state_dir / "backends" / host.name / "agent.txt"


def set_agent_reply(state_dir: Path, name: str, reply: str | None) -> None:
    """What a back-end's agent answers from now on ("50%", "drain", ...; None: "up"),
    written whole (tmp + rename) so that no probe reads half of it."""
    _state, host = _backend(state_dir.absolute(), name)
    path = _agent_file(state_dir.absolute(), host)
    if reply is None:
        path.unlink(missing_ok=True)
        return
    scratch = path.with_suffix(".tmp")
    scratch.write_text(reply + "\n", encoding="ascii")
    scratch.replace(path)


def backend_listen_drops(state_dir: Path) -> dict[str, int]:
    """Per back-end, the connections its kernel dropped because a listening socket's accept
    queue was full (TcpExt ListenDrops, which counts every listen-queue overflow too) since
    the lab started: a client's request lost to the back-end, not to the front nodes."""
    drops = {}
    for host in _require_state(state_dir.absolute()).plan().backends:
        text = _run(["ip", "netns", "exec", host.namespace, "cat", "/proc/net/netstat"])
        names, values = [line.split() for line in text.splitlines() if line.startswith("TcpExt:")]
        drops[host.name] = int(values[names.index("ListenDrops")])
    return drops


def set_backend_link(state_dir: Path, name: str, *, up: bool) -> None:
    """Take a back-end's only link down (no RST: only timeouts tell) or up again."""
    _state, host = _backend(state_dir.absolute(), name)
    _run(
        ["ip", "netns", "exec", host.namespace, "ip", "link", "set", "eth0", "up" if up else "down"]
    )
    if up and host.gateway is not None:
        # Bringing the link down dropped the default route with it.
        _run(["ip", "netns", "exec", host.namespace, "ip", "route", "replace", "default", "via",
              str(host.gateway), "dev", "eth0", "onlink"])  # fmt: skip


def cut_path(state_dir: Path, node_reference: str, backend_name: str, *, cut: bool) -> None:
    """Break (or mend) only the path between one node and one back-end: both their ports on
    the back-end bridge become isolated ports, which the bridge never forwards between, while
    each still reaches every other port (a director cut off from one back-end). Not during a
    partition: its sub-bridges' uplinks are isolated ports too, and the back-end would lose
    them all."""
    state_dir = state_dir.absolute()
    state, host = _backend(state_dir, backend_name)
    if cut and state.partition is not None:
        raise LabError("the lab is partitioned: heal it before cutting a path")
    try:
        node = find_node(state.plan(), node_reference)
    except ValueError as exc:
        raise LabError(str(exc)) from exc
    ports = [nic.bridge_end for nic in node.nics if nic.bridge == host.bridge]
    flag = "on" if cut else "off"
    _ip_batch(
        state.plan().switch_namespace,
        [
            f"link set dev {port} type bridge_slave isolated {flag}"
            for port in (*ports, host.bridge_end)
        ],
    )


def memory_dir(shm_free_mb: int, needed_mb: int, fallback: Path) -> Path:
    """Where UML keeps its guests' memory files (its TMPDIR).

    UML maps guest memory from a file in /dev/shm by default; where /dev/shm is small (64 MB
    in a default Docker container) guests die with SIGBUS as they touch memory. Then use
    `fallback`, on disk: slower, but it works.
    """
    return SHM_DIR if shm_free_mb >= needed_mb else fallback


def _start_nodes(
    plan: LabPlan,
    state: _State,
    state_dir: Path,
    kernel: Path,
    daemon: DaemonLaunch | None,
    *,
    job: GuestJob | None = None,
    peer: PeerHook | None = None,
) -> None:
    uml_dir = _uml_dir(state_dir)
    uml_dir.mkdir(parents=True, exist_ok=True)
    for node in plan.nodes:
        scratch = _scratch(state_dir, node)
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(uml_dir / node.name, ignore_errors=True)
        scratch.mkdir(parents=True)
        init = scratch / "init.sh"
        node_job = job if node is plan.nodes[0] else None
        peer_section = "" if peer is None else peer(plan, node, scratch)
        script = init_script(plan, node, str(scratch), daemon, node_job, peer=peer_section)
        init.write_text(script, encoding="utf-8")
        init.chmod(0o755)
        state.processes[node.name] = _boot(plan, node, state_dir, kernel, init)
        state.save(state_dir)


def _boot(plan: LabPlan, node: Node, state_dir: Path, kernel: Path, init: Path) -> ProcessRecord:
    """Start `node`'s kernel with `init` as PID 1; its console goes to the scratch dir."""
    uml_dir = _uml_dir(state_dir)
    try:
        shm_free_mb = shutil.disk_usage(SHM_DIR).free // 2**20
    except OSError:
        shm_free_mb = 0
    memory = memory_dir(shm_free_mb, plan.memory_mb * len(plan.nodes), uml_dir)
    command = uml_command(
        plan,
        node,
        kernel=str(kernel),
        uml_dir=str(uml_dir),
        init_path=str(init),
        python=sys.executable,
    )
    return _spawn(
        state_dir,
        command,
        _scratch(state_dir, node) / "console.log",
        environment={**os.environ, "TMPDIR": str(memory)},
    )


def _listening(record: ProcessRecord, port: int) -> bool:
    # /proc/PID/net/tcp lists the sockets of the PID's network namespace; 0A is LISTEN.
    try:
        lines = Path(f"/proc/{record.pid}/net/tcp").read_text(encoding="utf-8").splitlines()
    except OSError:
        return False
    return any(
        fields[1].endswith(f":{port:04X}") and fields[3] == "0A"
        for fields in (line.split() for line in lines[1:])
        if len(fields) > 3
    )


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text.splitlines()[-lines:] if line.strip())


def _wait_ready(plan: LabPlan, state: _State, state_dir: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    waiting: set[str] = {node.name for node in plan.nodes} | {h.name for h in plan.backends}
    while waiting:
        for node in plan.nodes:
            if node.name not in waiting:
                continue
            scratch = _scratch(state_dir, node)
            if not is_alive(state.processes[node.name]):
                raise LabError(
                    f"node {node.name} exited while booting: {_tail(scratch / 'console.log')}"
                )
            if (scratch / "ready").exists():
                errors = _tail(scratch / "errors")
                if errors:
                    raise LabError(f"node {node.name}: {errors}")
                if state.profile is None or _daemon_answers(scratch):
                    waiting.discard(node.name)
        for host in plan.backends:
            record = state.processes[host.name]
            if host.name in waiting and all(
                _listening(record, port) for port in (BACKEND_PORT, ECHO_PORT)
            ):
                waiting.discard(host.name)
        if waiting and time.monotonic() > deadline:
            # `up` removes the state directory on failure: say here what the logs said.
            tails = [
                (node.name, _tail(_scratch(state_dir, node) / log, 1))
                for node in plan.nodes
                if node.name in waiting
                for log in ("daemon.log", "console.log")
            ]
            said = [f"{name}: {line}" for name, line in tails if line]
            raise LabError(
                f"not ready after {timeout_s:g} s: {', '.join(sorted(waiting))}"
                + (f"; last log lines: {' | '.join(said)}" if said else "")
            )
        if waiting:
            time.sleep(POLL_S)


def _daemon_answers(scratch: Path) -> bool:
    document = _read_status_file(scratch / STATUS_FILE)
    return document is not None and isinstance(document.get("status"), dict)


def _read_status_file(path: Path) -> dict[str, Any] | None:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def daemon_status(
    plan: LabPlan, node: Node, path: Path, *, node_running: bool, now: float | None = None
) -> DaemonStatus:
    """What a node's status file says about its daemon; `now` is the host's time.time()."""
    try:
        mtime = path.stat().st_mtime
    except OSError:
        mtime = None
    document = _read_status_file(path) if mtime is not None else None
    identity = node_id(plan, node)
    if document is None or mtime is None:
        state = "starting" if node_running else "stale"
        return DaemonStatus(node, identity, state, None, None, (), (), None, None, None, None)
    age_s = max(0.0, (time.time() if now is None else now) - mtime)
    answer = document.get("status")
    answer = answer if isinstance(answer, dict) else None
    if not node_running or age_s > STATUS_STALE_S:
        state = "stale"
    else:
        state = "up" if answer is not None else "down"
    rss = document.get("daemon_rss_kb")
    error = document.get("error")
    ring = answer.get("ring") if answer else None
    return DaemonStatus(
        node=node,
        node_id=identity,
        state=state,
        age_s=age_s,
        ring=ring if isinstance(ring, dict) else None,
        members=tuple(int(m["node_id"]) for m in answer.get("members", ())) if answer else (),
        owned=tuple(str(vip) for vip in answer.get("owned", ())) if answer else (),
        phase=str(answer.get("phase")) if answer else None,
        rss_kb=rss if isinstance(rss, int) else None,
        error=error if isinstance(error, str) else None,
        document=answer,
    )


def status(state_dir: Path) -> LabStatus:
    """What the recorded lab looks like now."""
    state_dir = state_dir.absolute()
    state = _require_state(state_dir)
    plan = state.plan()
    present = _existing_namespaces()
    node_states = []
    for node in plan.nodes:
        record = state.processes.get(node.name)
        ready = _scratch(state_dir, node) / "ready"
        modules: tuple[str, ...] = ()
        if record is None or not is_alive(record):
            node_state = "dead"
        elif not ready.exists():
            node_state = "booting"
        else:
            node_state = "frozen" if node.name in state.frozen else "running"
            modules = tuple(ready.read_text(encoding="utf-8").split())
        node_states.append(NodeStatus(node, record, node_state, modules))
    backend_states = []
    for host in plan.backends:
        record = state.processes.get(host.name)
        alive = record is not None and is_alive(record)
        backend_states.append(HostStatus(host, record, "running" if alive else "dead"))
    client_state = "up" if plan.client.namespace in present else "missing"
    daemons: tuple[DaemonStatus, ...] = ()
    if state.profile is not None:
        now = time.time()
        daemons = tuple(
            daemon_status(
                plan,
                node_status.node,
                _scratch(state_dir, node_status.node) / STATUS_FILE,
                node_running=node_status.state == "running",
                now=now,
            )
            for node_status in node_states
        )
    return LabStatus(
        state_dir=state_dir,
        plan=plan,
        namespaces_present=tuple(sorted(set(plan.namespaces) & present)),
        nodes=tuple(node_states),
        backends=tuple(backend_states),
        client=HostStatus(plan.client, None, client_state),
        daemons=daemons,
        profile=state.profile,
    )


def keep_logs(state_dir: Path, target: Path, *, watchers: bool = False) -> None:
    """Copy the nodes' logs (daemon, console: `nodes/<node>/*.log`) and, with `watchers`,
    the watchers' files (probe, GARP, wire logs: `watch/*`) to `target`, at the same paths
    below it, before `down` removes them: for reading a run or a failure afterwards."""
    patterns = ("nodes/*/*.log", f"{WATCH_DIR}/*") if watchers else ("nodes/*/*.log",)
    for pattern in patterns:
        for path in sorted(state_dir.glob(pattern)):
            if path.is_file():
                copy = target / path.relative_to(state_dir)
                copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, copy)


def down(state_dir: Path) -> bool:
    """End every recorded process, remove the namespaces and the lab's files.

    Processes of this lab that the state file does not record (rainctl.lab.processes: every
    process the lab starts carries its marker) are ended too, with a warning naming them,
    also when no state file is left. Idempotent; returns False when no lab was recorded in
    `state_dir`.
    """
    state_dir = state_dir.absolute()
    state = _load_state(state_dir)
    if state is not None:
        for record in state.processes.values():
            end_group(record)
    strays = processes.end_marked(str(state_dir))
    if strays:
        _log.warning(
            "lab %s: ended %d processes its state file did not record: %s",
            state_dir,
            len(strays),
            ", ".join(str(record.pid) for record in strays),
        )
    if state is None:
        return False
    plan = state.plan()
    present = _existing_namespaces()
    for namespace in plan.namespaces:
        if namespace in present:
            _run(["ip", "netns", "del", namespace])
    for child in ("uml", "nodes", "backends", WATCH_DIR):
        shutil.rmtree(state_dir / child, ignore_errors=True)
    for name in (CONFIG_FILE, KEY_FILE):
        (state_dir / name).unlink(missing_ok=True)
    (state_dir / STATE_FILE).unlink(missing_ok=True)
    (state_dir / f"{STATE_FILE}.tmp").unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # not empty: it holds files that are not the lab's
        state_dir.rmdir()
    return True


# ---- watchers (rainctl lab demo) -------------------------------------------------------------

WATCH_DIR = "watch"
PROBER = "prober"
GARP_READER = "garp-reader"
PROBE_LOG = "probe.log"
GARP_LOG = "garp.log"


@dataclass(frozen=True, slots=True)
class Watchers:
    """The logs of the resident prober (client) and GARP reader (switch's br0)."""

    probe_log: Path
    garp_log: Path


def start_watchers(state_dir: Path) -> Watchers:
    """Start the resident VIP prober and GARP reader (rainctl.lab.probe); `down` ends them.

    Each is one Python process started once with its PID recorded like the nodes'; the prober
    sends an ICMP echo to every lab VIP every 10 ms from the client namespace, the reader logs
    every gratuitous ARP on br0 in the switch namespace. Raises LabError when they run already.
    """
    state_dir = state_dir.absolute()
    state = _require_state(state_dir)
    plan = state.plan()
    for name in (PROBER, GARP_READER):
        record = state.processes.get(name)
        if record is not None and is_alive(record):
            raise LabError(f"the {name} runs already (pid {record.pid})")
    directory = state_dir / WATCH_DIR
    directory.mkdir(parents=True, exist_ok=True)
    watchers = Watchers(probe_log=directory / PROBE_LOG, garp_log=directory / GARP_LOG)
    for path in (watchers.probe_log, watchers.garp_log):
        path.unlink(missing_ok=True)
        path.touch()
    python = (sys.executable, "-m", "rainctl.lab.probe")
    vips = [str(vip) for vip in lab_vips(plan)]
    commands = {
        GARP_READER: (
            "ip", "netns", "exec", plan.switch_namespace, *python, "garp",
            "--output", str(watchers.garp_log), "--interface", plan.bridges[0][0],
        ),
        PROBER: (
            "ip", "netns", "exec", plan.client.namespace, *python, "ping",
            "--output", str(watchers.probe_log), *vips,
        ),
    }  # fmt: skip
    for name, command in commands.items():
        state.processes[name] = _spawn(state_dir, command, directory / f"{name}.err")
        state.save(state_dir)
    return watchers


# ---- faults ---------------------------------------------------------------------------------


def _recorded_node(
    state_dir: Path, name: str
) -> tuple[_State, LabPlan, Node, ProcessRecord | None]:
    """The lab's state, plan, node `name` and its process record (None if never started)."""
    state = _require_state(state_dir)
    plan = state.plan()
    try:
        node = plan.node(name)
    except KeyError as exc:
        raise LabError(str(exc.args[0])) from exc
    return state, plan, node, state.processes.get(node.name)


def _live_node(state_dir: Path, name: str) -> tuple[_State, LabPlan, Node, ProcessRecord]:
    state, plan, node, record = _recorded_node(state_dir, name)
    if record is None or not is_alive(record):
        raise LabError(f"node {name} is not running")
    return state, plan, node, record


def kill_node(state_dir: Path, name: str) -> None:
    """Crash a node: SIGKILL its UML process group, then delete its uml_dir entry."""
    state_dir = state_dir.absolute()
    state, _plan, node, record = _live_node(state_dir, name)
    end_group(record)
    shutil.rmtree(_uml_dir(state_dir) / node.name, ignore_errors=True)
    state.frozen.discard(node.name)
    state.save(state_dir)


def _mconsole(state_dir: Path, name: str, line: str) -> tuple[_State, Node]:
    state, _plan, node, _record = _live_node(state_dir, name)
    try:
        mconsole.command(
            _uml_dir(state_dir) / node.name / "mconsole", line, timeout_s=MCONSOLE_TIMEOUT_S
        )
    except mconsole.MconsoleError as exc:
        raise LabError(f"node {name}: {exc}") from exc
    return state, node


def freeze_node(state_dir: Path, name: str) -> None:
    """Stop a node's kernel (`uml_mconsole stop`): a hung node, not a dead one."""
    state_dir = state_dir.absolute()
    state, node = _mconsole(state_dir, name, "stop")
    state.frozen.add(node.name)
    state.save(state_dir)


def thaw_node(state_dir: Path, name: str) -> None:
    """Resume a frozen node (`uml_mconsole go`)."""
    state_dir = state_dir.absolute()
    state, node = _mconsole(state_dir, name, "go")
    state.frozen.discard(node.name)
    state.save(state_dir)


# ---- restarts and extra processes (rainctl bench failover) ---------------------------------


def restart_node(state_dir: Path, name: str, *, timeout_s: float = BOOT_TIMEOUT_S) -> None:
    """Boot a dead node again with the init script it booted with (`<scratch>/init.sh`), so a
    benchmark can kill the same lab's nodes many times; waits for its ready marker and, when
    the lab runs daemons, until its daemon answers. Its scratch files (logs, the daemon's
    incarnation) stay; the ready marker and status file are removed first."""
    state_dir = state_dir.absolute()
    state, plan, node, record = _recorded_node(state_dir, name)
    if record is not None and is_alive(record):
        raise LabError(f"node {name} is running; kill it first")
    scratch = _scratch(state_dir, node)
    init = scratch / "init.sh"
    if not init.exists():
        raise LabError(f"node {name} has no init script in {scratch}")
    for stale in ("ready", STATUS_FILE, f"{STATUS_FILE}.tmp"):
        (scratch / stale).unlink(missing_ok=True)
    shutil.rmtree(_uml_dir(state_dir) / node.name, ignore_errors=True)
    state.processes[node.name] = _boot(plan, node, state_dir, DEFAULT_KERNEL, init)
    state.frozen.discard(node.name)
    state.save(state_dir)
    deadline = time.monotonic() + timeout_s
    while not (scratch / "ready").exists() or (
        state.profile is not None and not _daemon_answers(scratch)
    ):
        if not is_alive(state.processes[node.name]):
            raise LabError(f"node {name} exited while booting: {_tail(scratch / 'console.log')}")
        if time.monotonic() > deadline:
            raise LabError(f"node {name} not ready {timeout_s:g} s after its restart")
        time.sleep(POLL_S)


def start_process(state_dir: Path, name: str, command: Sequence[str], log: Path) -> None:
    """Start a resident helper (e.g. a packet counter in the switch namespace) and record it
    like the nodes, so `down` ends it. Raises LabError when one of that name runs already."""
    state_dir = state_dir.absolute()
    state = _require_state(state_dir)
    record = state.processes.get(name)
    if record is not None and is_alive(record):
        raise LabError(f"the {name} runs already (pid {record.pid})")
    state.processes[name] = _spawn(state_dir, command, log)
    state.save(state_dir)


def in_switch(state_dir: Path, command: Sequence[str], *, stdin: str | None = None) -> str:
    """Run `command` in the lab's switch namespace (e.g. nft for a benchmark's drop rule);
    its stdout, or LabError with its stderr."""
    state = _require_state(state_dir.absolute())
    return _run(("ip", "netns", "exec", state.plan().switch_namespace, *command), stdin=stdin)


def stop_process(state_dir: Path, name: str) -> None:
    """End the recorded process `name` (started by `start_process` or `start_traffic`) and
    its process group, by PID."""
    state_dir = state_dir.absolute()
    state = _require_state(state_dir)
    record = state.processes.pop(name, None)
    if record is None:
        raise LabError(f"no process {name!r} recorded")
    end_group(record)
    state.save(state_dir)


# ---- partitions (rainctl lab partition / heal) -----------------------------------------------


def partition(state_dir: Path, spec: str) -> tuple[tuple[str, ...], ...]:
    """Cut the lab's nodes into the groups of `spec` (plan.partition_groups) on both bridges;
    the client, the back-ends and the router still reach every node. A partition already in
    place is healed first. Returns the groups' node names."""
    state_dir = state_dir.absolute()
    state = _require_state(state_dir)
    plan = state.plan()
    try:
        groups = partition_groups(plan, spec)
    except ValueError as exc:
        raise LabError(str(exc)) from exc
    if state.partition is not None:
        heal(state_dir)
        state = _require_state(state_dir)
    names = tuple(tuple(node.name for node in group) for group in groups)
    state.partition = [list(group) for group in names]
    state.save(state_dir)  # before: a failure half-way is still healed by `heal` or `down`
    _ip_batch(plan.switch_namespace, partition_commands(plan, groups))
    return names


def heal(state_dir: Path) -> bool:
    """Undo the partition: every node port back on its bridge. False when there was none."""
    state_dir = state_dir.absolute()
    state = _require_state(state_dir)
    if state.partition is None:
        return False
    plan = state.plan()
    links = json.loads(_run(["ip", "-n", plan.switch_namespace, "-j", "link", "show"]) or "[]")
    existing = {str(link["ifname"]) for link in links}
    # A half-made partition (an error part-way) is healed too: delete only what exists.
    commands = [
        line
        for line in heal_commands(plan, len(state.partition))
        if not line.startswith("link del ") or line.split()[-1] in existing
    ]
    _ip_batch(plan.switch_namespace, commands)
    state.partition = None
    state.save(state_dir)
    return True


# ---- control requests into the guests (rainctl lab ctl) ---------------------------------------

CONTROL_TIMEOUT_S = 15.0
"""A request's round trip: the helper's poll (50 ms), the daemon, hostfs both ways."""


def control(
    state_dir: Path,
    node_reference: str,
    command: str,
    arguments: dict[str, Any] | None = None,
    *,
    timeout_s: float = CONTROL_TIMEOUT_S,
) -> dict[str, Any]:
    """Send one control command to a node's daemon (by name or id) through its helper's
    request directory; the daemon's result, or LabError with the daemon's refusal."""
    state_dir = state_dir.absolute()
    state = _require_state(state_dir)
    if state.profile is None:
        raise LabError("the lab runs no daemons (`rainctl lab up --daemon`)")
    plan = state.plan()
    try:
        node = find_node(plan, node_reference)
    except ValueError as exc:
        raise LabError(str(exc)) from exc
    record = state.processes.get(node.name)
    if record is None or not is_alive(record):
        raise LabError(f"node {node.name} is not running")
    if node.name in state.frozen:
        raise LabError(f"node {node.name} is frozen")
    scratch = _scratch(state_dir, node)
    identity = f"{os.getpid()}-{time.monotonic_ns()}"
    request_path = scratch / "requests" / f"{identity}.json"
    response_path = scratch / "responses" / f"{identity}.json"
    temporary = scratch / "requests" / f".{identity}.tmp"
    # The helper inside the node waits as long for the daemon (a large push takes long).
    document = {"command": command, "arguments": arguments or {}, "timeout_s": timeout_s}
    try:
        temporary.write_text(json.dumps(document) + "\n", encoding="utf-8")
        temporary.replace(request_path)
    except OSError as exc:
        raise LabError(f"node {node.name}: cannot write a request ({exc})") from exc
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            answer = json.loads(response_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            answer = None
        except (OSError, ValueError) as exc:
            raise LabError(f"node {node.name}: unreadable answer ({exc})") from exc
        if answer is not None:
            response_path.unlink(missing_ok=True)
            break
        if time.monotonic() > deadline:
            request_path.unlink(missing_ok=True)
            raise LabError(
                f"node {node.name}: no answer to {command!r} within {timeout_s:g} s "
                f"(see {scratch}/agent.log)"
            )
        time.sleep(POLL_S)
    if not isinstance(answer, dict) or answer.get("ok") is not True:
        error = answer.get("error") if isinstance(answer, dict) else answer
        raise LabError(f"node {node.name}: {command}: {error}")
    result = answer.get("result")
    return result if isinstance(result, dict) else {}


# ---- client traffic (rainctl.lab.traffic) -----------------------------------------------------

TRAFFIC_PREFIX = "traffic-"


def start_traffic(
    state_dir: Path,
    name: str,
    kind: str,
    targets: Sequence[str],
    *,
    interval_s: float = 0.05,
    timeout_s: float = 1.0,
    path: str = "/",
    connections: int = 1,
) -> Path:
    """Start a resident traffic generator (`kind` "http" or "echo", the latter with
    `connections` connections) in the client namespace, recorded as `traffic-<name>` so that
    `down` (or `stop_traffic`) ends it; its log."""
    state_dir = state_dir.absolute()
    state = _require_state(state_dir)
    plan = state.plan()
    if kind not in {"http", "echo"} or (kind == "echo" and len(targets) != 1) or not targets:
        raise LabError(f"traffic {kind!r} to {list(targets)}: http to targets, or echo to one")
    record_name = TRAFFIC_PREFIX + name
    record = state.processes.get(record_name)
    if record is not None and is_alive(record):
        raise LabError(f"traffic {name!r} runs already (pid {record.pid})")
    directory = state_dir / WATCH_DIR
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / f"{record_name}.log"
    log.unlink(missing_ok=True)
    log.touch()
    options = ["--output", str(log), "--interval", str(interval_s), "--timeout", str(timeout_s)]
    if kind == "http":
        options += ["--path", path]
    elif connections != 1:
        options += ["--connections", str(connections)]
    command = (
        "ip", "netns", "exec", plan.client.namespace, sys.executable, "-m",
        "rainctl.lab.traffic", kind, *options, *targets,
    )  # fmt: skip
    state.processes[record_name] = _spawn(state_dir, command, directory / f"{record_name}.err")
    state.save(state_dir)
    return log


def stop_traffic(state_dir: Path, name: str) -> None:
    """End the traffic generator `name` (its log stays until `down`)."""
    stop_process(state_dir, TRAFFIC_PREFIX + name)


def _start_watcher(
    state_dir: Path, name: str, log_name: str, command: Callable[[LabPlan, Path], Sequence[str]]
) -> Path:
    """Start a resident watcher recorded as `name`, writing a fresh `watch/<log_name>`; the
    log. `command` builds its argv from the plan and the log. Raises LabError when it runs
    already."""
    state_dir = state_dir.absolute()
    state = _require_state(state_dir)
    record = state.processes.get(name)
    if record is not None and is_alive(record):
        raise LabError(f"the {name} runs already (pid {record.pid})")
    directory = state_dir / WATCH_DIR
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / log_name
    log.unlink(missing_ok=True)
    log.touch()
    argv = command(state.plan(), log)
    state.processes[name] = _spawn(state_dir, argv, directory / f"{name}.err")
    state.save(state_dir)
    return log


def start_garp_reader(state_dir: Path) -> Path:
    """Start only the resident GARP reader on br0 (as `start_watchers` does, without the
    prober); its log. Raises LabError when it runs already."""
    return _start_watcher(
        state_dir,
        GARP_READER,
        GARP_LOG,
        lambda plan, log: (
            "ip", "netns", "exec", plan.switch_namespace, sys.executable, "-m",
            "rainctl.lab.probe", "garp", "--output", str(log), "--interface", plan.bridges[0][0],
        ),
    )  # fmt: skip


ARP_PROBER = "arp-prober"
ARP_LOG = "arp.log"


def start_arp_prober(state_dir: Path) -> Path:
    """Start the resident ARP prober in the client namespace (rainctl.lab.probe arp: every
    20 ms an ARP request for each lab VIP, every answerer logged); its log. Recorded like
    the other watchers, so `down` ends it. Raises LabError when it runs already."""
    return _start_watcher(
        state_dir,
        ARP_PROBER,
        ARP_LOG,
        lambda plan, log: (
            "ip", "netns", "exec", plan.client.namespace, sys.executable, "-m",
            "rainctl.lab.probe", "arp", "--output", str(log), "--interface", "eth0",
            "--source", str(plan.client.address.ip), "--source6", str(CLIENT_ADDRESS6.ip),
            *(str(vip) for vip in (*lab_vips(plan), *spare_vips(plan), *lab_vips6(plan))),
        ),
    )  # fmt: skip
