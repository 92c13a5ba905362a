"""`rainctl lab`: build and break the virtual lab (docs/lab.md).

`up` builds namespaces, bridges, back-end servers and user-mode-linux nodes and waits until
every node has IPVS loaded; `status` shows what is recorded and alive; `down` removes it all.
`kill`, `freeze` and `thaw` are faults on one node. All of them read and write the lab's
state directory (`--state-dir`), which is how `down` knows exactly what to end.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from rainctl.lab import builder
from rainctl.lab.builder import DEFAULT_STATE_DIR, LabStatus

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
        f"lab {plan.prefix}: switch namespace {plan.switch_namespace}, state {status.state_dir}"
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
            f"{backend.host.address.ip}:80 in {backend.host.namespace}"
        )
    client = status.client
    lines.append(
        f"client  {client.host.name:<16} {client.state:<8} {'':<12} "
        f"{client.host.address.ip} in {client.host.namespace}"
    )
    return lines


@lab_app.command()
def up(
    *,
    nodes: Annotated[int, typer.Option("--nodes", help="User-mode-linux front nodes.")] = 3,
    backends: Annotated[int, typer.Option("--backends", help="Back-end namespaces.")] = 2,
    prefix: Annotated[
        str, typer.Option("--prefix", help="Prefix of every namespace and interface name.")
    ] = "rlab",
    memory_mb: Annotated[int, typer.Option("--memory-mb", help="Memory of each node.")] = 128,
    timeout_s: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for the nodes to boot.")
    ] = builder.BOOT_TIMEOUT_S,
    state_dir: StateDir = DEFAULT_STATE_DIR,
) -> None:
    """Build the lab and wait until every node has IPVS loaded."""
    started = time.monotonic()
    status = builder.up(
        state_dir,
        nodes=nodes,
        backends=backends,
        prefix=prefix,
        memory_mb=memory_mb,
        timeout_s=timeout_s,
    )
    elapsed_s = time.monotonic() - started
    typer.echo(f"lab up in {elapsed_s:.1f} s")
    for line in status_lines(status):
        typer.echo(line)


@lab_app.command()
def status(state_dir: StateDir = DEFAULT_STATE_DIR) -> None:
    """Show the recorded lab and which of its processes are alive."""
    for line in status_lines(builder.status(state_dir)):
        typer.echo(line)


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


def register(app: typer.Typer) -> None:
    app.add_typer(lab_app)
