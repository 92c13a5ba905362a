"""`rainctl status`: ask a running daemon over its control socket."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from rainctl.cli.status_render import status_view
from rainctl.daemon.control import DEFAULT_SOCKET, request


def status(
    socket_path: Annotated[
        Path, typer.Option("--socket", help="The daemon's control socket.")
    ] = DEFAULT_SOCKET,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw status JSON.")] = False,
) -> None:
    """Show the ring, its members and the VIP owners as the local daemon sees them."""
    document = request(socket_path, "status")
    if as_json:
        typer.echo(json.dumps(document, indent=2))
    else:
        Console().print(status_view(document))


def register(app: typer.Typer) -> None:
    app.command("status")(status)
