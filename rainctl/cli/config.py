"""`rainctl config ...`: check a cluster config file; show, change and roll back the running
cluster's configuration through the local daemon (docs/operations.md, "Changing a running
cluster").

`check` reads a file and needs no daemon. `push`, `diff`, `show`, `history` and `rollback`
ask the local daemon: a push is validated by every member and committed through the ring,
or refused everywhere with the one-line reason (which node, which key).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from rainctl.cli.operate import JsonOption, SocketOption
from rainctl.cli.render import config_document, config_summary
from rainctl.config import key_file_path, load_config, load_keys
from rainctl.config.files import read_text
from rainctl.config.live import document_spec
from rainctl.daemon.control import DEFAULT_SOCKET, request
from rainctl.errors import OptionError

config_app = typer.Typer(
    help="Check config files; show, change and roll back the running cluster's configuration.",
    no_args_is_help=True,
)

PUSH_TIMEOUT_S = 150.0
"""The daemon answers a push within its own bound (120 s); the client waits a bit longer."""

FileArgument = Annotated[
    Path, typer.Argument(metavar="FILE", help="Cluster config file (TOML).", show_default=False)
]
VersionOption = Annotated[
    int | None,
    typer.Option("--version", help="A version of this node's history.", show_default=False),
]


@config_app.command("check")
def check(
    file: FileArgument,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the derived ring settings as JSON.")
    ] = False,
) -> None:
    """Validate FILE (and the key file it names) and summarise the ring it defines."""
    config = load_config(file)
    key_path = key_file_path(config, file)
    keys = None if key_path is None else load_keys(key_path)
    # The digest a push of this file would have (the document's, as `config show` prints).
    spec = document_spec(config, read_text(file))
    if as_json:
        typer.echo(json.dumps(config_document(config, spec, keys), indent=2))
    else:
        Console().print(config_summary(config, spec, keys))


@config_app.command("push")
def push(
    file: FileArgument,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Validate and show the changes; push nothing.")
    ] = False,
    expect_version: Annotated[
        int | None,
        typer.Option(
            "--expect-version",
            help="Refuse unless the ring still runs this version (default: this node's).",
            show_default=False,
        ),
    ] = None,
    socket_path: SocketOption = DEFAULT_SOCKET,
    as_json: JsonOption = False,
) -> None:
    """Commit FILE as the cluster's next configuration version, applied by every node."""
    if expect_version is not None and expect_version < 0:
        raise OptionError(f"--expect-version: {expect_version} is not a version (0 or more)")
    answer = _push(socket_path, file, dry_run=dry_run, expect_version=expect_version)
    if as_json:
        typer.echo(json.dumps(answer, indent=2))
        return
    _print_changes(answer["changes"])
    if dry_run:
        typer.echo(f"dry run: nothing pushed (the ring runs version {answer['base_version']})")
    elif answer["version"] == answer["base_version"]:
        typer.echo(f"unchanged: the ring already runs this document as version {answer['version']}")
    else:
        typer.echo(f"committed as version {answer['version']} ({answer['digest'][:12]})")


@config_app.command("diff")
def diff(
    file: FileArgument, socket_path: SocketOption = DEFAULT_SOCKET, as_json: JsonOption = False
) -> None:
    """What pushing FILE would change, per section (validated as a push would be)."""
    answer = _push(socket_path, file, dry_run=True, expect_version=None)
    if as_json:
        typer.echo(json.dumps(answer, indent=2))
        return
    if not answer["changes"]:
        typer.echo(f"no change against the running version {answer['base_version']}")
    _print_changes(answer["changes"])


@config_app.command("show")
def show(
    version: VersionOption = None,
    socket_path: SocketOption = DEFAULT_SOCKET,
    as_json: JsonOption = False,
) -> None:
    """Print the configuration document this node runs (or version N of its history)."""
    if version is not None and version < 0:
        raise OptionError(f"--version: {version} is not a version (0 or more)")
    answer = request(socket_path, "config_show", arguments={"version": version})
    if as_json:
        typer.echo(json.dumps(answer, indent=2))
    else:
        typer.echo(answer["text"], nl=False)


@config_app.command("history")
def history(socket_path: SocketOption = DEFAULT_SOCKET, as_json: JsonOption = False) -> None:
    """The versions this node ran, newest first (lost ones: versions a merge did not adopt)."""
    answer = request(socket_path, "config_history")
    if as_json:
        typer.echo(json.dumps(answer, indent=2))
        return
    for entry in answer["history"]:
        marker = "*" if entry["number"] == answer["running"] else " "
        typer.echo(
            f"{marker} {entry['number']:>5}  {entry['digest'][:12]}  {entry['applied_at']}  "
            f"{entry['status']:<10}  {entry['source']}"
        )


@config_app.command("rollback")
def rollback(
    version: Annotated[int, typer.Argument(metavar="VERSION", help="A version of the history.")],
    socket_path: SocketOption = DEFAULT_SOCKET,
    as_json: JsonOption = False,
) -> None:
    """Push version VERSION's document again, as a new version."""
    if version < 1:
        raise OptionError(f"VERSION: {version} is not a committed version (1 or more)")
    answer = request(
        socket_path, "config_rollback", timeout_s=PUSH_TIMEOUT_S, arguments={"version": version}
    )
    if as_json:
        typer.echo(json.dumps(answer, indent=2))
        return
    _print_changes(answer["changes"])
    typer.echo(f"version {version} committed again as version {answer['version']}")


def _push(
    socket_path: Path, file: Path, *, dry_run: bool, expect_version: int | None
) -> dict[str, Any]:
    text = read_text(file)
    return request(
        socket_path,
        "config_push",
        timeout_s=PUSH_TIMEOUT_S,
        arguments={
            "text": text,
            "source": str(file),
            "expect_version": expect_version,
            "dry_run": dry_run,
        },
    )


def _print_changes(changes: dict[str, list[str]]) -> None:
    for section, lines in changes.items():
        typer.echo(f"[{section}]")
        for line in lines:
            typer.echo(f"  {line}")


def register(app: typer.Typer) -> None:
    app.add_typer(config_app, name="config")
