"""`rainctl config ...`: work with cluster config files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from rainctl.cli.render import config_document, config_summary
from rainctl.config import key_file_path, load_config, load_keys, to_ring_spec

config_app = typer.Typer(help="Validate cluster config files.", no_args_is_help=True)


@config_app.command("check")
def check(
    file: Annotated[
        Path, typer.Argument(metavar="FILE", help="Cluster config file (TOML).", show_default=False)
    ],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the derived ring settings as JSON.")
    ] = False,
) -> None:
    """Validate FILE (and the key file it names) and summarise the ring it defines."""
    config = load_config(file)
    key_path = key_file_path(config, file)
    keys = None if key_path is None else load_keys(key_path)
    spec = to_ring_spec(config)
    if as_json:
        typer.echo(json.dumps(config_document(config, spec, keys), indent=2))
    else:
        Console().print(config_summary(config, spec, keys))


def register(app: typer.Typer) -> None:
    app.add_typer(config_app, name="config")
