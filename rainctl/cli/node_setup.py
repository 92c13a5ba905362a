"""`rainctl node setup`: a front node's bootstrap (rainctl.node.setup), and its report.

The command sits in the `node` group beside `drain`, `undrain` and `leave`
(rainctl.cli.operate); unlike them it needs no daemon. Each directory and file is one
line (created / changed / unchanged; a changed file's unified diff is indented below it),
each command one line (ran / would run / not needed / skipped, with the reason), then the
notes and a summary line.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from rainctl.kernel.interfaces import DataPlane
from rainctl.node.setup import (
    ROOT,
    CommandState,
    HostSystem,
    Outcome,
    SetupReport,
    SetupRequest,
    setup_node,
)

DEFAULT_EXECUTABLE = Path(sys.executable).parent / "rainctl"
"""The console script of the environment this rainctl runs in (`make setup`: .venv/bin)."""
DIFF_INDENT = "    "


def setup(
    *,
    config: Annotated[
        Path,
        typer.Option(
            "--config",
            help="Cluster config file; installed as /etc/rainctl/cluster.toml if elsewhere.",
            show_default=False,
        ),
    ],
    node: Annotated[
        int, typer.Option("--node", help="This node's id in the config.", show_default=False)
    ],
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="Print what would change (diffs, commands); change nothing."
        ),
    ] = False,
    root: Annotated[
        Path,
        typer.Option(
            "--root",
            help="Write every file under this directory (an image, a test); no command runs "
            "unless it is /.",
        ),
    ] = ROOT,
    data_plane: Annotated[
        DataPlane,
        typer.Option("--data-plane", help="The unit's --data-plane: linux or ipvs."),
    ] = DataPlane.IPVS,
    executable: Annotated[
        Path, typer.Option("--executable", help="The rainctl program the systemd unit starts.")
    ] = DEFAULT_EXECUTABLE,
) -> None:
    """Bootstrap this node (idempotent): check the config and key file, create the config and
    state directories, install the config, the sysctl.d file and rainctl@.service, apply
    the sysctls, enable rainctl@ID."""
    live = root.resolve() == ROOT
    request = SetupRequest(
        config=config,
        node_id=node,
        executable=executable,
        data_plane=data_plane,
        root=root,
        dry_run=dry_run,
    )
    report = setup_node(request, HostSystem() if live else None)
    for line in report_lines(report):
        typer.echo(line)


_PATH_WORDS = {
    (Outcome.CREATED, False): "created",
    (Outcome.CHANGED, False): "changed",
    (Outcome.UNCHANGED, False): "unchanged",
    (Outcome.CREATED, True): "would be created",
    (Outcome.CHANGED, True): "would change",
    (Outcome.UNCHANGED, True): "unchanged",
}


def report_lines(report: SetupReport) -> list[str]:
    """The human report of one run (pure)."""
    where = "" if report.root == ROOT else f", files under {report.root}"
    dry = " (dry run: nothing is changed)" if report.dry_run else ""
    lines = [
        f"node {report.node_id} of {report.config}, data plane {report.data_plane.value}"
        f"{where}{dry}",
        f"key file  {report.key_file}: ok (owned by root, not readable by others)",
    ]
    for path in report.paths:
        outcome = _PATH_WORDS[path.outcome, report.dry_run]
        mode = f" ({path.mode:04o})" if path.outcome is Outcome.CREATED else ""
        lines.append(f"{path.kind:<9} {path.path}: {outcome}{mode}")
        lines += [DIFF_INDENT + line for line in path.detail.splitlines()]
    for command in report.commands:
        lines.append(
            f"command   {' '.join(command.argv)}: {command.state.value} ({command.reason})"
        )
    lines += [f"note: {note}" for note in report.notes]
    changed = sum(path.outcome is not Outcome.UNCHANGED for path in report.paths)
    ran = sum(
        command.state in (CommandState.RAN, CommandState.WOULD_RUN) for command in report.commands
    )
    if changed == 0 and ran == 0:
        lines.append("everything is set up already: nothing changed, no command needed")
    elif report.dry_run:
        lines.append(f"dry run: {changed} path(s) would change, {ran} command(s) would run")
    else:
        lines.append(f"{changed} path(s) changed, {ran} command(s) run")
    return lines


def register(node_app: typer.Typer) -> None:
    """Adds `setup` to the `node` group (rainctl.cli.operate.node_app)."""
    node_app.command("setup")(setup)
