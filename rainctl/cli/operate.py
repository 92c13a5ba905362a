"""Operator commands on a running cluster, through the local daemon's control socket.

`rainctl vips`, `rainctl backends`, `rainctl node drain|undrain ID`, `rainctl node leave`,
`rainctl backend drain|undrain VIP:PORT ADDR:PORT`, `rainctl vip pin|unpin VIP [NODE]` and
`rainctl reload`. Any node's daemon can be asked: pins
travel in the token and drains of other members as ring multicast (rainctl.daemon.commands);
`node leave` stops the asked daemon itself. The daemon validates the arguments against its
config and refuses with one line; the CLI exits 2 then.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from rainctl.cli.status_render import backends_view, vips_view
from rainctl.daemon.control import DEFAULT_SOCKET, request

SocketOption = Annotated[Path, typer.Option("--socket", help="The daemon's control socket.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the daemon's JSON answer.")]
NodeArgument = Annotated[int, typer.Argument(help="A configured node id.", min=1, max=65535)]
VipArgument = Annotated[str, typer.Argument(help="A VIP of the configured pool.")]

node_app = typer.Typer(help="Drain, undrain or stop a node.", no_args_is_help=True)
vip_app = typer.Typer(help="Pin a VIP to a node, or unpin it.", no_args_is_help=True)
backend_app = typer.Typer(
    help="Drain a real server for maintenance on every node, or undrain it.",
    no_args_is_help=True,
)
ServiceArgument = Annotated[
    str, typer.Argument(help="The service: VIP:PORT (IPv6 as [VIP]:PORT).", show_default=False)
]
ServerArgument = Annotated[
    str, typer.Argument(help="Its real server: ADDR:PORT (IPv6 as [ADDR]:PORT).")
]
ProtocolOption = Annotated[
    str | None,
    typer.Option(
        "--protocol", help="tcp or udp: needed only when both serve VIP:PORT.", show_default=False
    ),
]


def _print(document: dict[str, Any], as_json: bool, line: str) -> None:
    typer.echo(json.dumps(document, indent=2) if as_json else line)


def backends(socket_path: SocketOption = DEFAULT_SOCKET, as_json: JsonOption = False) -> None:
    """Show every service's real servers: agreed state, IPVS weight, checkers, own checks."""
    document = request(socket_path, "backends")
    if as_json:
        typer.echo(json.dumps(document, indent=2))
    else:
        Console(width=160).print(backends_view(document))


def vips(socket_path: SocketOption = DEFAULT_SOCKET, as_json: JsonOption = False) -> None:
    """Show every configured VIP: owner, planned move, pin, home, owned here."""
    document = request(socket_path, "vips")
    if as_json:
        typer.echo(json.dumps(document, indent=2))
    else:
        Console().print(vips_view(document))


@node_app.command("drain")
def drain(
    node: NodeArgument, socket_path: SocketOption = DEFAULT_SOCKET, as_json: JsonOption = False
) -> None:
    """Move every VIP off NODE and give it no new ones (persists across its restarts)."""
    document = request(socket_path, "drain", arguments={"node": node})
    _print(document, as_json, f"node {node}: drain requested ({document['via']})")


@node_app.command("undrain")
def undrain(
    node: NodeArgument, socket_path: SocketOption = DEFAULT_SOCKET, as_json: JsonOption = False
) -> None:
    """Make NODE eligible for VIPs again."""
    document = request(socket_path, "undrain", arguments={"node": node})
    _print(document, as_json, f"node {node}: undrain requested ({document['via']})")


@vip_app.command("pin")
def pin(
    vip: VipArgument,
    node: NodeArgument,
    socket_path: SocketOption = DEFAULT_SOCKET,
    as_json: JsonOption = False,
) -> None:
    """Keep VIP on NODE while NODE is an eligible member (it moves there now)."""
    document = request(socket_path, "pin", arguments={"vip": vip, "node": node})
    _print(document, as_json, f"{document['vip']}: pinned to node {node}")


@vip_app.command("unpin")
def unpin(
    vip: VipArgument, socket_path: SocketOption = DEFAULT_SOCKET, as_json: JsonOption = False
) -> None:
    """Remove VIP's pin (it stays where it is until something else moves it)."""
    document = request(socket_path, "unpin", arguments={"vip": vip})
    _print(document, as_json, f"{document['vip']}: unpinned")


def _maintenance(
    command: str, service: str, server: str, protocol: str | None, socket_path: Path
) -> dict[str, Any]:
    arguments: dict[str, Any] = {"service": service, "server": server}
    if protocol is not None:
        arguments["protocol"] = protocol
    return request(socket_path, command, arguments=arguments)


def _maintenance_line(document: dict[str, Any]) -> str:
    verb = "drained" if document["drained"] else "undrained"
    if not document["committed"]:
        return (
            f"{document['server']}: {verb} on node {document['node_id']}, which is in no ring: "
            "the ring takes it when the node joins one"
        )
    later = "; a later request has superseded it" if document["superseded"] else ""
    return f"{document['server']}: {verb} on every node of ring {document['ring']}{later}"


@backend_app.command("drain")
def backend_drain(
    service: ServiceArgument,
    server: ServerArgument,
    protocol: ProtocolOption = None,
    socket_path: SocketOption = DEFAULT_SOCKET,
    as_json: JsonOption = False,
) -> None:
    """Give SERVER of SERVICE weight 0 on every node (existing connections stay); persists
    across restarts of every node until `backend undrain`."""
    document = _maintenance("backend_drain", service, server, protocol, socket_path)
    _print(document, as_json, _maintenance_line(document))


@backend_app.command("undrain")
def backend_undrain(
    service: ServiceArgument,
    server: ServerArgument,
    protocol: ProtocolOption = None,
    socket_path: SocketOption = DEFAULT_SOCKET,
    as_json: JsonOption = False,
) -> None:
    """Return SERVER of SERVICE to service (its health checks decide its weight again)."""
    document = _maintenance("backend_undrain", service, server, protocol, socket_path)
    _print(document, as_json, _maintenance_line(document))


def reload(socket_path: SocketOption = DEFAULT_SOCKET, as_json: JsonOption = False) -> None:
    """Re-read the daemon's config and apply it by diff (like SIGHUP); refused whole if invalid."""
    document = request(socket_path, "reload")
    _print(document, as_json, "reloaded")


@node_app.command("leave")
def leave(socket_path: SocketOption = DEFAULT_SOCKET, as_json: JsonOption = False) -> None:
    """Make the asked daemon leave the ring (its VIPs go to the others) and exit, as SIGTERM."""
    document = request(socket_path, "leave")
    _print(document, as_json, f"node {document['node']}: leaving the ring")


def register(app: typer.Typer) -> None:
    app.command("vips")(vips)
    app.command("backends")(backends)
    app.command("reload")(reload)
    app.add_typer(node_app, name="node")
    app.add_typer(vip_app, name="vip")
    app.add_typer(backend_app, name="backend")
