"""`rainctl lab`: build and break the virtual lab (docs/lab.md).

`up` builds namespaces, bridges, back-end servers and user-mode-linux nodes and waits until
every node has IPVS loaded (with `--daemon`, every node also runs `rainctl daemon`); `status`
shows what is recorded and alive, and each daemon's ring as its status file reports it;
`down` removes it all. `vagrant` renders the same topology as a Vagrant lab (no root).
`kill`, `freeze` and `thaw` are faults on one node, `partition` and `heal` cut the nodes into
groups and join them again; `ctl` sends a control command to a node's daemon; `demo` kills a
VIP's owner and measures the outage the client sees. All of them read and write the lab's
state directory (`--state-dir`), which is how `down` knows exactly what to end.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from rainctl.errors import OptionError
from rainctl.lab import builder, demo, vagrant
from rainctl.lab.builder import DEFAULT_STATE_DIR, DaemonStatus, LabStatus
from rainctl.lab.plan import (
    BACKEND_PORT,
    ECHO_PORT,
    MEMORY_MB_DEFAULT,
    MODES,
    PROFILES,
    PROXY_PORT,
)
from rainctl.lab.processes import LabError

lab_app = typer.Typer(
    name="lab",
    help="Build and break the virtual lab (root; user-mode-linux nodes, network namespaces).",
    no_args_is_help=True,
)

StateDir = Annotated[
    Path,
    typer.Option("--state-dir", help="Where the lab records its processes and scratch files."),
]
NodeName = Annotated[str, typer.Argument(help="A node's name, as `rainctl lab status` shows.")]


def status_lines(status: LabStatus) -> list[str]:
    """The human view of a lab: one line per node, back-end and the client."""
    plan = status.plan
    missing = sorted(set(plan.namespaces) - set(status.namespaces_present))
    lines = [
        f"lab {plan.prefix} ({plan.mode}): switch namespace {plan.switch_namespace} "
        f"(router {', '.join(str(address.ip) for _bridge, address in plan.routers)}), "
        f"state {status.state_dir}"
        + (f" (missing namespaces: {', '.join(missing)})" if missing else "")
    ]
    for node in status.nodes:
        pid = node.process.pid if node.process else "-"
        modules = ",".join(sorted(node.ipvs_modules)) or "-"
        lines.append(
            f"node    {node.node.name:<16} {node.state:<8} pid {pid!s:<8} "
            f"front {node.node.front}  back {node.node.back}  ipvs {modules}"
        )
    for backend in status.backends:
        pid = backend.process.pid if backend.process else "-"
        lines.append(
            f"backend {backend.host.name:<16} {backend.state:<8} pid {pid!s:<8} "
            f"{backend.host.address.ip}:{BACKEND_PORT},{ECHO_PORT} in {backend.host.namespace}"
        )
    client = status.client
    lines.append(
        f"client  {client.host.name:<16} {client.state:<8} {'':<12} "
        f"{client.host.address.ip} in {client.host.namespace}"
    )
    return lines


def ring_label(ring: dict[str, int] | None) -> str:
    """A ring id as `epoch/creator.incarnation`, or "-" outside a ring."""
    if ring is None:
        return "-"
    return f"{ring.get('epoch')}/{ring.get('creator')}.{ring.get('creator_incarnation')}"


def daemon_table(status: LabStatus) -> Table:
    """The nodes' daemons as their status files report them (docs/lab.md)."""
    table = Table(title=f"rainctl daemons (profile {status.profile})", title_justify="left")
    for column in ("node", "id", "daemon", "age", "phase", "ring", "members", "owned", "rss"):
        table.add_column(column, no_wrap=column != "owned")
    for daemon in status.daemons:
        table.add_row(
            daemon.node.name,
            str(daemon.node_id),
            daemon.state,
            "-" if daemon.age_s is None else f"{daemon.age_s:.1f} s",
            daemon.phase or "-",
            ring_label(daemon.ring),
            ",".join(str(member) for member in daemon.members) or "-",
            " ".join(daemon.owned) or "-",
            "-" if daemon.rss_kb is None else f"{daemon.rss_kb / 1024:.0f} MB",
        )
    return table


def _daemon_json(daemon: DaemonStatus) -> dict[str, Any]:
    return {
        "node": daemon.node.name,
        "node_id": daemon.node_id,
        "state": daemon.state,
        "age_s": daemon.age_s,
        "phase": daemon.phase,
        "ring": daemon.ring,
        "members": list(daemon.members),
        "owned": list(daemon.owned),
        "rss_kb": daemon.rss_kb,
        "error": daemon.error,
        "status": daemon.document,
    }


def status_json(status: LabStatus) -> dict[str, Any]:
    """The machine view of a lab (`rainctl lab status --json`)."""
    return {
        "prefix": status.plan.prefix,
        "state_dir": str(status.state_dir),
        "switch_namespace": status.plan.switch_namespace,
        "mode": status.plan.mode,
        "namespaces_present": list(status.namespaces_present),
        "nodes": [
            {
                "name": node.node.name,
                "state": node.state,
                "pid": node.process.pid if node.process else None,
                "front": str(node.node.front),
                "back": str(node.node.back),
                "ipvs_modules": list(node.ipvs_modules),
            }
            for node in status.nodes
        ],
        "backends": [
            {
                "name": host.host.name,
                "state": host.state,
                "pid": host.process.pid if host.process else None,
                "address": str(host.host.address.ip),
            }
            for host in status.backends
        ],
        "client": {"state": status.client.state, "address": str(status.client.host.address.ip)},
        "profile": status.profile,
        "daemons": [_daemon_json(daemon) for daemon in status.daemons],
    }


def _show(status: LabStatus) -> None:
    for line in status_lines(status):
        typer.echo(line)
    if status.daemons:
        Console(width=160).print(daemon_table(status))


@lab_app.command()
def up(
    *,
    nodes: Annotated[int, typer.Option("--nodes", help="User-mode-linux front nodes.")] = 3,
    backends: Annotated[int, typer.Option("--backends", help="Back-end namespaces.")] = 2,
    prefix: Annotated[
        str, typer.Option("--prefix", help="Prefix of every namespace and interface name.")
    ] = "rlab",
    memory_mb: Annotated[
        int, typer.Option("--memory-mb", help="Memory of each node.")
    ] = MEMORY_MB_DEFAULT,
    timeout_s: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for the nodes to boot.")
    ] = builder.BOOT_TIMEOUT_S,
    daemon: Annotated[
        bool,
        typer.Option(
            "--daemon/--no-daemon",
            help="Run `rainctl daemon` (data plane ipvs, VIPs on vec0) on every node, in one ring.",
        ),
    ] = False,
    mode: Annotated[
        str,
        typer.Option("--mode", help=f"IPVS forwarding to the back-ends ({', '.join(MODES)})."),
    ] = "dr",
    profile: Annotated[
        str, typer.Option("--profile", help=f"The ring's timer profile ({', '.join(PROFILES)}).")
    ] = "fast",
    ipv6: Annotated[
        bool,
        typer.Option(
            "--ipv6", help="IPv6 on the front subnet: one IPv6 VIP per node besides the IPv4 ones."
        ),
    ] = False,
    checks: Annotated[
        bool,
        typer.Option(
            "--checks", help="Run the back-end health checks (TCP every 2 s) with --daemon."
        ),
    ] = False,
    proxy: Annotated[
        bool,
        typer.Option(
            "--proxy",
            help='With --daemon: the first VIP also serves a mode = "http" service on port '
            f"{PROXY_PORT} (the nodes' resumable proxies, docs/proxy.md).",
        ),
    ] = False,
    state_dir: StateDir = DEFAULT_STATE_DIR,
) -> None:
    """Build the lab and wait until every node has IPVS loaded (and its daemon answers)."""
    if profile not in PROFILES:
        raise typer.BadParameter(f"must be one of {', '.join(PROFILES)}", param_hint="--profile")
    if mode not in MODES:
        raise typer.BadParameter(f"must be one of {', '.join(MODES)}", param_hint="--mode")
    if checks and not daemon:
        raise OptionError("--checks needs --daemon (the checks run in the nodes' daemons)")
    if proxy and not daemon:
        raise OptionError("--proxy needs --daemon (the proxies run under the nodes' daemons)")
    started = time.monotonic()
    status = builder.up(
        state_dir,
        nodes=nodes,
        backends=backends,
        prefix=prefix,
        memory_mb=memory_mb,
        timeout_s=timeout_s,
        profile=profile if daemon else None,
        mode=mode,
        ipv6=ipv6,
        checks=checks,
        proxy=proxy,
    )
    elapsed_s = time.monotonic() - started
    typer.echo(f"lab up in {elapsed_s:.1f} s")
    _show(status)


@lab_app.command()
def status(
    state_dir: StateDir = DEFAULT_STATE_DIR,
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False,
) -> None:
    """Show the recorded lab, which of its processes are alive, and the nodes' daemons."""
    lab_status = builder.status(state_dir)
    if as_json:
        typer.echo(json.dumps(status_json(lab_status), indent=2))
    else:
        _show(lab_status)


@lab_app.command()
def down(state_dir: StateDir = DEFAULT_STATE_DIR) -> None:
    """End the lab's processes and remove its namespaces and files (idempotent)."""
    started = time.monotonic()
    if builder.down(state_dir):
        typer.echo(f"lab down in {time.monotonic() - started:.1f} s")
    else:
        typer.echo(f"no lab recorded in {state_dir.absolute()}")


@lab_app.command()
def kill(node: NodeName, state_dir: StateDir = DEFAULT_STATE_DIR) -> None:
    """Crash a node: SIGKILL its user-mode-linux processes."""
    builder.kill_node(state_dir, node)
    typer.echo(f"killed {node}")


@lab_app.command("kill-backend")
def kill_backend(
    backend: Annotated[str, typer.Argument(help="A back-end's name, e.g. backend1.")],
    state_dir: StateDir = DEFAULT_STATE_DIR,
) -> None:
    """SIGKILL a back-end's servers (HTTP, echo, agent): its ports answer RST from now on."""
    builder.kill_backend(state_dir, backend)
    typer.echo(f"killed the servers of {backend}")


@lab_app.command("start-backend")
def start_backend(
    backend: Annotated[str, typer.Argument(help="A back-end's name, e.g. backend1.")],
    state_dir: StateDir = DEFAULT_STATE_DIR,
) -> None:
    """Start a back-end's servers again after `kill-backend`."""
    builder.start_backend(state_dir, backend)
    typer.echo(f"started the servers of {backend}")


@lab_app.command()
def restart(
    node: NodeName,
    state_dir: StateDir = DEFAULT_STATE_DIR,
    timeout_s: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for the node to boot.")
    ] = builder.BOOT_TIMEOUT_S,
) -> None:
    """Boot a killed node again with its init script (and daemon); wait until it is ready."""
    started = time.monotonic()
    builder.restart_node(state_dir, node, timeout_s=timeout_s)
    typer.echo(f"restarted {node} in {time.monotonic() - started:.1f} s")


@lab_app.command()
def freeze(node: NodeName, state_dir: StateDir = DEFAULT_STATE_DIR) -> None:
    """Freeze a node's kernel (uml_mconsole stop): hung, not dead."""
    builder.freeze_node(state_dir, node)
    typer.echo(f"froze {node}")


@lab_app.command()
def thaw(node: NodeName, state_dir: StateDir = DEFAULT_STATE_DIR) -> None:
    """Resume a frozen node (uml_mconsole go)."""
    builder.thaw_node(state_dir, node)
    typer.echo(f"thawed {node}")


@lab_app.command("partition")
def partition_command(
    groups: Annotated[
        str,
        typer.Argument(
            help="Groups of nodes (names or ids) separated by '/', e.g. 1,2/3; the nodes not "
            "listed form one more group."
        ),
    ],
    state_dir: StateDir = DEFAULT_STATE_DIR,
) -> None:
    """Cut the nodes into groups that cannot reach each other (the client still reaches all)."""
    names = builder.partition(state_dir, groups)
    typer.echo("partitioned: " + " / ".join(",".join(group) for group in names))


@lab_app.command()
def heal(state_dir: StateDir = DEFAULT_STATE_DIR) -> None:
    """Undo `partition`: every node reaches every other again."""
    typer.echo("healed" if builder.heal(state_dir) else "no partition in place")


def parse_arguments(pairs: list[str]) -> dict[str, Any]:
    """`key=value` pairs -> a JSON object; a value that parses as JSON (numbers, true, null,
    quoted strings) is that value, anything else is a string."""
    result: dict[str, Any] = {}
    for pair in pairs:
        key, equals, value = pair.partition("=")
        if not equals or not key:
            raise typer.BadParameter(f"{pair!r}: must be key=value", param_hint="--arg")
        try:
            result[key] = json.loads(value)
        except ValueError:
            result[key] = value
    return result


@lab_app.command()
def ctl(
    node: Annotated[str, typer.Argument(help="A node's name or id.")],
    command: Annotated[str, typer.Argument(help="A control command: status, vips, drain, ...")],
    arguments: Annotated[
        list[str] | None,
        typer.Option("--arg", help="An argument of the command, key=value (repeatable)."),
    ] = None,
    state_dir: StateDir = DEFAULT_STATE_DIR,
) -> None:
    """Send a control command to a node's daemon (through its helper) and print the answer."""
    result = builder.control(state_dir, node, command, parse_arguments(arguments or []))
    typer.echo(json.dumps(result, indent=2))


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def demo_table(trials: list[demo.Trial]) -> Table:
    """One row per VIP of each killed node: who had it, who has it, what the client saw."""
    table = Table(title="rainctl lab demo: SIGKILL of the first VIP's owner", title_justify="left")
    columns = ("trial", "profile", "VIP", "old owner", "new owner", "outage ms", "lost probes",
               "GARP seen after ms", "GARP from new owner", "client MAC ok")  # fmt: skip
    for column in columns:
        table.add_column(column, no_wrap=True)
    for number, trial in enumerate(trials, 1):
        for outcome in trial.failover.vips:
            table.add_row(
                str(number),
                trial.profile,
                outcome.vip,
                outcome.old_owner,
                outcome.new_owner or "-",
                _ms(outcome.outage_ms),
                str(outcome.lost),
                _ms(outcome.garp_ms),
                "yes" if outcome.garp_mac and outcome.garp_mac == outcome.new_owner_mac else "no",
                "yes" if outcome.client_mac == outcome.new_owner_mac else "no",
            )
    return table


def demo_json(trials: list[demo.Trial]) -> list[dict[str, Any]]:
    """The machine view of the demo's trials (`rainctl lab demo --json`)."""
    return [
        {
            "profile": trial.profile,
            "nodes": trial.nodes,
            "ring_s": trial.ring_s,
            "victim": trial.failover.victim,
            "killed_at": trial.failover.killed_at,
            "survivors_agreed_s": trial.failover.agreed_s,
            "client_macs_before": {
                vip: {"owner_mac": mac, "client_mac": client}
                for vip, (mac, client) in sorted(trial.before.items())
            },
            "vips": [
                {
                    "vip": o.vip,
                    "old_owner": o.old_owner,
                    "new_owner": o.new_owner,
                    "new_owner_mac": o.new_owner_mac,
                    "outage_ms": o.outage_ms,
                    "lost_probes": o.lost,
                    "garp_ms": o.garp_ms,
                    "garp_mac": o.garp_mac,
                    "client_mac": o.client_mac,
                }
                for o in trial.failover.vips
            ],
            "problems": demo.problems(trial),
        }
        for trial in trials
    ]


@lab_app.command("demo")
def demo_command(
    *,
    nodes: Annotated[int, typer.Option("--nodes", help="User-mode-linux front nodes.")] = 3,
    profile: Annotated[
        str, typer.Option("--profile", help=f"The ring's timer profile ({', '.join(PROFILES)}).")
    ] = "fast",
    trials: Annotated[
        int, typer.Option("--trials", help="Whole demos (up, kill, measure, down) in a row.")
    ] = 1,
    prefix: Annotated[
        str, typer.Option("--prefix", help="Prefix of every namespace and interface name.")
    ] = "rlab",
    state_dir: StateDir = DEFAULT_STATE_DIR,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Kill the owner of a VIP and measure the outage the client sees, then take the lab down.

    Each trial: `up --daemon` (no back-ends), wait for the ring, start the resident prober
    (client) and GARP reader (br0), SIGKILL the node owning the first VIP, measure every VIP
    it owned, `down` (always).
    """
    if profile not in PROFILES:
        raise typer.BadParameter(f"must be one of {', '.join(PROFILES)}", param_hint="--profile")
    if trials < 1:
        raise typer.BadParameter("must be at least 1", param_hint="--trials")
    if nodes < 2:
        raise typer.BadParameter("must be at least 2 (a survivor)", param_hint="--nodes")
    results = []
    for _ in range(trials):
        results.append(demo.run_trial(state_dir, nodes=nodes, profile=profile, prefix=prefix))
        if not as_json:
            trial = results[-1]
            typer.echo(
                f"trial {len(results)}: ring of {nodes} in {trial.ring_s:.1f} s; killed "
                f"{trial.failover.victim}; survivors' status files agreed after "
                f"{trial.failover.agreed_s * 1000:.0f} ms"
            )
    if as_json:
        typer.echo(json.dumps(demo_json(results), indent=2))
    else:
        Console(width=200).print(demo_table(results))
    found = [problem for trial in results for problem in demo.problems(trial)]
    if found:
        raise LabError(f"demo: {len(found)} problem(s): " + "; ".join(found))


@lab_app.command("vagrant")
def vagrant_command(
    nodes: Annotated[int, typer.Option("--nodes", help="Front node VMs.")] = 3,
    output: Annotated[
        Path, typer.Option("--output", help="Where the Vagrantfile and its files go.")
    ] = vagrant.DEFAULT_OUTPUT,
) -> None:
    """Render the Vagrant lab (docs/vagrant.md): the UML lab's topology, VIPs and services as
    VMs (front nodes, back-ends, a client), with its Vagrantfile, cluster config and
    provisioning scripts. Needs no root; starts nothing."""
    try:
        plan = vagrant.lab_plan(nodes)
    except ValueError as exc:
        raise OptionError(f"--nodes: {exc}") from exc
    for relative, outcome in vagrant.write_lab(vagrant.render_lab(plan, output), output):
        typer.echo(f"{outcome.value:<9} {output / relative}")


def register(app: typer.Typer) -> None:
    app.add_typer(lab_app)
