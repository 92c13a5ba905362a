"""Pure renderer of a daemon's status document (`rainctl status`): JSON values in, rich out."""

from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text


def status_view(document: dict[str, Any]) -> RenderableType:
    """The node, its ring, the members with state and load, and the VIP owners it knows."""
    ring = document["ring"]
    ring_text = (
        "none"
        if ring is None
        else f"{ring['epoch']}.{ring['creator']} (creator incarnation "
        f"{ring['creator_incarnation']})"
    )
    header = Text.assemble(
        ("node ", "bold"),
        (str(document["node_id"]), "bold cyan"),
        f" incarnation {document['incarnation']}: {document['phase']}, ring {ring_text}, "
        f"token seq {document['seq']}, " + ("quorum" if document["has_quorum"] else "NO QUORUM"),
    )
    owned = ", ".join(document["owned"]) or "none"
    owned_line = Text(f"owns: {owned} (data plane {document['data_plane']})")
    return Group(header, owned_line, _members_table(document), _vips_table(document))


def _members_table(document: dict[str, Any]) -> Table:
    loads = {load["node_id"]: load for load in document["loads"]}
    table = Table(title="members", title_justify="left")
    for column in ("node", "incarnation", "state", "cpu", "connections", "report age (hops)"):
        table.add_column(column, justify="left" if column == "state" else "right")
    for member in document["members"]:
        load = loads.get(member["node_id"])
        if load is None:
            table.add_row(str(member["node_id"]), str(member["incarnation"]), "-", "-", "-", "-")
            continue
        table.add_row(
            str(member["node_id"]),
            str(member["incarnation"]),
            load["state"],
            f"{load['cpu_permille'] / 10:.1f}%",
            str(load["connections"]),
            str(load["age_hops"]),
        )
    return table


def _vips_table(document: dict[str, Any]) -> Table:
    table = Table(title="VIP owners (this node's token copy)", title_justify="left")
    table.add_column("VIP")
    table.add_column("owner", justify="right")
    table.add_column("moving to", justify="right")
    for record in document["vips"]:
        owner = record["owner"]
        pending = record["pending_owner"]
        table.add_row(
            record["vip"],
            "-" if owner is None else str(owner),
            "" if pending is None else str(pending),
        )
    return table
