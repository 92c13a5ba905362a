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
        f"token seq {document['seq']}, rotation {_rotation(document)}, "
        + ("quorum" if document["has_quorum"] else "NO QUORUM"),
    )
    owned = ", ".join(document["owned"]) or "none"
    owned_line = Text(f"owns: {owned} (data plane {document['data_plane']})")
    parts: list[RenderableType] = [header, owned_line]
    lease = document.get("vip_lease")
    if lease is not None:
        parts.append(Text(_leases_line(lease)))
    config = document.get("config")
    if config is not None:
        parts += _config_lines(config)
    parts += [
        _members_table(document),
        _vips_table(document),
    ]
    ipvs = document.get("ipvs")
    if ipvs is not None:
        parts.append(_ipvs_table(ipvs))
    proxy = document.get("proxy")
    if proxy is not None:
        parts.append(_proxy_table(proxy))
    return Group(*parts)


def _config_lines(config: dict[str, Any]) -> list[RenderableType]:
    """The configuration version this node runs, a push in flight, versions lost at merges
    and why this node cannot run the ring's version, if so."""
    line = f"config: version {config['version']} ({config['digest'][:12]})"
    ring_version = config["ring_version"]
    if ring_version is not None and not config["runs_ring_version"]:
        line += f", NOT the ring's version {ring_version} yet (owns no VIP until it runs it)"
    lines: list[RenderableType] = [Text(line)]
    proposal = config["proposal"]
    if proposal is not None:
        voted = ", ".join(
            f"{vote['node']} {'yes' if vote['accepted'] else 'no'}" for vote in proposal["votes"]
        )
        lines.append(
            Text(
                f"  push of version {proposal['version']} from node {proposal['origin']} "
                f"being voted on ({voted or 'no vote yet'})"
            )
        )
    for lost in config["lost"]:
        lines.append(
            Text(
                f"  version {lost['version']} ({lost['digest'][:12]}) of node {lost['node']} was "
                f"lost at a merge, replaced by version {lost['replaced_by']}: "
                f"`rainctl config history` on node {lost['node']} keeps it",
                style="yellow",
            )
        )
    if config["problem"]:
        lines.append(Text(f"  {config['problem']}", style="red"))
    return lines


def _proxy_table(proxy: dict[str, Any]) -> RenderableType:
    """The node's `mode = "http"` services: back-ends and the workers' summed counters."""
    workers = len(proxy["workers"])
    table = Table(
        title=f"HTTP proxy: {workers} worker(s), {proxy['restarts']} restart(s)",
        title_justify="left",
    )
    columns = ("service", "back-ends", "requests", "body bytes", "resumes", "retries", "aborts")
    for column in (*columns, "refused resumes"):
        table.add_column(column, justify="left" if column in ("service", "back-ends") else "right")
    for service in proxy["services"]:
        counters = service["counters"]
        refused = ", ".join(
            f"{reason} {count}" for reason, count in counters.get("refused", {}).items()
        )
        listen = service["listen"]
        if service["refused_listen"]:
            listen += f" (NOT LISTENING: {service['refused_listen']})"
        elif not service.get("listening_workers"):
            listen += " (not listening yet)"
        table.add_row(
            listen,
            " ".join(service["backends"]),
            *(
                str(counters.get(name, 0))
                for name in ("requests", "body_bytes", "resumes", "retries", "aborts")
            ),
            refused or "-",
        )
    return table


def _ipvs_table(ipvs: dict[str, Any]) -> RenderableType:
    """Services and real servers with their counters, as of the reconciler's last pass."""
    state = "in sync" if ipvs["in_sync"] else f"NOT IN SYNC ({ipvs['last_error'] or 'pending'})"
    sync = ", ".join(
        f"{daemon['state']} on {daemon['interface']} id {daemon['sync_id']}"
        for daemon in ipvs["sync_daemons"]
    )
    table = Table(title=f"IPVS: {state}; connection sync: {sync or 'off'}", title_justify="left")
    for column in ("service", "scheduler", "real server", "fwd", "weight", "active", "inactive"):
        table.add_column(
            column, justify="left" if column in ("service", "real server") else "right"
        )
    for service in ipvs["services"]:
        name = f"{service['protocol']} {service['vip']}:{service['port']}"
        servers = service["real_servers"] or [None]
        for index, server in enumerate(servers):
            first = index == 0
            if server is None:
                table.add_row(name, service["scheduler"], "(none)", "", "", "", "")
                continue
            table.add_row(
                name if first else "",
                service["scheduler"] if first else "",
                f"{server['address']}:{server['port']}",
                server["forwarding"],
                str(server["weight"]),
                str(server["active_connections"]),
                str(server["inactive_connections"]),
            )
    hidden = ipvs.get("services_total", 0) - len(ipvs["services"])
    if hidden > 0:
        table.caption = (
            f"... and {hidden} more services ({ipvs['real_servers_total']} real servers in "
            "all): `rainctl backends` lists every one"
        )
    return table


def _leases_line(lease: dict[str, Any]) -> str:
    """How this node's VIPs go silent if its daemon dies (docs/operations.md section 4)."""
    address = f"{lease['lease_s']} s" if lease["lease_s"] else "off"
    answer = lease.get("answer", {})
    state = answer.get("state", "off")
    if state in {"nftables", "memory"}:
        shown = f"{answer['lease_ms']} ms ({state}), {answer['lapses']} lapses"
    else:
        shown = state
    return f"leases: address {address}, {lease['lapses']} lapses; answer {shown}"


def _rotation(document: dict[str, Any]) -> str:
    rotation_ms = document.get("rotation_ms")
    return "-" if rotation_ms is None else f"{rotation_ms} ms"


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
    table.add_column("pinned to", justify="right")
    pins = {pin["vip"]: pin["node"] for pin in document.get("pins", [])}
    for record in document["vips"]:
        owner = record["owner"]
        pending = record["pending_owner"]
        pin = pins.get(record["vip"])
        table.add_row(
            record["vip"],
            "-" if owner is None else str(owner),
            "" if pending is None else str(pending),
            "" if pin is None else str(pin),
        )
    return table


def vips_view(document: dict[str, Any]) -> RenderableType:
    """`rainctl vips`: every configured VIP with its owner, planned move, pin and home."""
    table = Table(
        title=f"VIPs as node {document['node_id']} sees them"
        + ("" if document["in_ring"] else " (NOT IN A RING: owners unknown)"),
        title_justify="left",
    )
    for column in ("VIP", "owner", "moving to", "pinned to", "home", "here"):
        table.add_column(column, justify="left" if column == "VIP" else "right")
    for row in document["vips"]:
        table.add_row(
            row["vip"],
            *(
                "" if row[key] is None else str(row[key])
                for key in ("owner", "pending_owner", "pinned_to", "home")
            ),
            "yes" if row["owned_here"] else "",
        )
    return table


def backends_view(document: dict[str, Any]) -> RenderableType:
    """`rainctl backends`: per service, each real server's agreed state, the weight IPVS gets,
    its checkers and this node's own last result where it is one of them."""
    title = (
        f"Back-ends as node {document['node_id']} sees them "
        f"({document['checkers_per_server']} checkers per server)"
    )
    if not document["in_ring"]:
        title += " (NOT IN A RING: verdicts unknown)"
    table = Table(title=title, title_justify="left")
    for column in ("service", "real server", "state", "weight", "checkers", "here: last check"):
        table.add_column(column, justify="right" if column == "weight" else "left")
    for service in document["services"]:
        name = f"{service['protocol']} {service['vip']}:{service['port']}"
        if service["sorry_serving"]:
            name += f" (sorry server {service['sorry_server']} serving)"
        for server in service["real_servers"]:
            local = server["local"]
            here = ""
            if local is not None:
                latency = "" if local["latency_ms"] is None else f", {local['latency_ms']} ms"
                here = f"{local['state']} for {local['since_s']} s: {local['last']}{latency}"
                if not local["counted"]:
                    here += " (newly assigned: abstains until counted)"
            weight = server["weight"]
            state = server["state"] + (" (drained by operator)" if server["maintenance"] else "")
            table.add_row(
                name,
                f"{server['address']}:{server['port']}",
                state,
                "removed" if weight is None else f"{weight}/{server['configured_weight']}",
                ",".join(str(node) for node in server["checkers"]),
                here,
            )
            name = ""
    return table
