"""`rainctl import keepalived` and `rainctl export keepalived`: move from keepalived and back.

The converted file goes to `--output PATH`, or to standard output; the summary (rich, or
JSON with `--json`) then goes to standard error so that `> file` captures the file alone.
`--json` needs `--output`: one stream cannot carry both documents. Failures are one line,
`rainctl: error: FILE:LINE: ...`, exit status 2 (the app's error boundary).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console, RenderableType

from rainctl.cli.migrate_render import (
    export_document,
    export_summary,
    import_document,
    import_summary,
)
from rainctl.config import load_config
from rainctl.errors import MigrationError, OptionError
from rainctl.migrate.keepalived_export import export_keepalived
from rainctl.migrate.keepalived_import import import_keepalived

import_app = typer.Typer(
    help="Turn another tool's configuration into a rainctl cluster config.", no_args_is_help=True
)
export_app = typer.Typer(
    help="Write another tool's configuration from a rainctl cluster config.",
    no_args_is_help=True,
)

OutputOption = Annotated[
    Path | None,
    typer.Option("--output", "-o", help="Write the file here instead of standard output."),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print the summary as JSON (needs --output).")
]


@import_app.command("keepalived")
def import_keepalived_command(
    files: Annotated[
        list[Path],
        typer.Argument(
            metavar="FILE...",
            help="keepalived.conf of each front node, node 1 first (one file: that node's).",
            show_default=False,
        ),
    ],
    output: OutputOption = None,
    as_json: JsonOption = False,
) -> None:
    """Write the rainctl cluster config that does what FILE's keepalived does, annotated:
    VRRP VIPs, virtual servers, real servers and their checks; every directive without a
    rainctl equivalent is listed with its file:line."""
    _check_json(as_json, output)
    result = import_keepalived(files)
    _finish(
        result.text,
        output,
        as_json,
        lambda destination: import_document(result, destination),
        lambda destination: import_summary(result, destination),
    )


@export_app.command("keepalived")
def export_keepalived_command(
    config_file: Annotated[
        Path,
        typer.Argument(metavar="CONFIG", help="Cluster config file (TOML).", show_default=False),
    ],
    node: Annotated[
        int | None,
        typer.Option("--node", help="The node whose keepalived.conf to write."),
    ] = None,
    interface: Annotated[
        str | None,
        typer.Option(
            "--interface", help="The VIPs' interface (default: the node's front_interface)."
        ),
    ] = None,
    output: OutputOption = None,
    as_json: JsonOption = False,
) -> None:
    """Write the keepalived.conf that does on node ID what rainctl does (for rollback or
    comparison): VRRP instances for the VIPs, virtual servers with their checks."""
    _check_json(as_json, output)
    config = load_config(config_file)
    result = export_keepalived(config, node_id=node, interface=interface, source=str(config_file))
    _finish(
        result.text,
        output,
        as_json,
        lambda destination: export_document(result, destination),
        lambda destination: export_summary(result, destination),
    )


def _check_json(as_json: bool, output: Path | None) -> None:
    if as_json and output is None:
        raise OptionError("--json: needs --output (the file itself goes to standard output)")


def _emit(text: str, output: Path | None) -> None:
    if output is None:
        typer.echo(text, nl=False)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as error:
        raise MigrationError(f"{output}: cannot write: {error.strerror or error}") from error


def _finish(
    text: str,
    output: Path | None,
    as_json: bool,
    document: Callable[[str | None], dict[str, Any]],
    summary: Callable[[str | None], RenderableType],
) -> None:
    """Write the file (or print it), then the JSON document or the summary (on stderr when
    the file went to stdout), both told where the file went."""
    _emit(text, output)
    destination = None if output is None else str(output)
    if as_json:
        typer.echo(json.dumps(document(destination), indent=2))
    else:
        Console(stderr=output is None, width=160).print(summary(destination))


def register(app: typer.Typer) -> None:
    app.add_typer(import_app, name="import")
    app.add_typer(export_app, name="export")
