"""Pure renderers of `rainctl import keepalived` / `rainctl export keepalived` results: the
results in, rich renderables or JSON-ready documents out. No printing. Every cell is a
`Text`, so brackets from files and reasons (`[[nodes]]`) are never read as rich markup."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from rainctl.migrate.keepalived_export import ExportResult
from rainctl.migrate.keepalived_import import ImportResult


def import_document(result: ImportResult, output: str | None) -> dict[str, object]:
    """What the import did, for `--json`."""
    config = result.config
    return {
        "output": output,
        "sources": list(result.sources),
        "nodes": len(config.nodes),
        "vips": [{"address": vip.address, "home": vip.home} for vip in config.vips],
        "services": [service.describe() for service in config.services],
        "real_servers": sum(len(service.real_servers) for service in config.services),
        "placeholders": [
            {"key": placeholder.key, "text": placeholder.text}
            for placeholder in result.placeholders
        ],
        "unmapped": [
            {
                "file": entry.origin.file,
                "line": entry.origin.line,
                "directive": entry.directive,
                "reason": entry.reason,
            }
            for entry in result.unmapped
        ],
        "notes": [
            {
                "file": None if note.origin is None else note.origin.file,
                "line": None if note.origin is None else note.origin.line,
                "message": note.message,
            }
            for note in result.notes
        ],
    }


def import_summary(result: ImportResult, output: str | None) -> RenderableType:
    """The counts, the placeholders to fill in, the unmapped directives and the notes."""
    config = result.config
    homed = sum(1 for vip in config.vips if vip.home is not None)
    real_servers = sum(len(service.real_servers) for service in config.services)
    header = Text.assemble(
        ("imported ", "bold"),
        f"{len(result.sources)} file(s): {len(config.nodes)} nodes, {len(config.vips)} VIPs "
        f"({homed} with a home), {len(config.services)} services, {real_servers} real servers",
    )
    where = Text(f"wrote {output}" if output else "the config is on standard output")
    placeholders = Table(title="Fill in before use (rainctl config check refuses them)")
    placeholders.add_column("key")
    placeholders.add_column("placeholder")
    for placeholder in result.placeholders:
        placeholders.add_row(Text(placeholder.key), Text(placeholder.text))
    parts: list[RenderableType] = [header, where, placeholders]
    if result.unmapped:
        unmapped = Table(title=f"Not mapped: no rainctl equivalent ({len(result.unmapped)})")
        unmapped.add_column("where", no_wrap=True)
        unmapped.add_column("directive")
        unmapped.add_column("why")
        for entry in result.unmapped:
            unmapped.add_row(Text(str(entry.origin)), Text(entry.directive), Text(entry.reason))
        parts.append(unmapped)
    else:
        parts.append(Text("every directive was mapped"))
    if result.notes:
        notes = Table(title=f"Notes ({len(result.notes)})")
        notes.add_column("where", no_wrap=True)
        notes.add_column("note")
        for note in result.notes:
            notes.add_row(
                Text("-" if note.origin is None else str(note.origin)), Text(note.message)
            )
        parts.append(notes)
    return Group(*parts)


def export_document(result: ExportResult, output: str | None) -> dict[str, object]:
    """What the export wrote, for `--json`."""
    return {
        "output": output,
        "node": result.node_id,
        "vrrp_instances": [
            {
                "name": instance.name,
                "virtual_router_id": instance.virtual_router_id,
                "priority": instance.priority,
                "addresses": list(instance.addresses),
            }
            for instance in result.instances
        ],
        "virtual_servers": [f"{server.vip} {server.port}" for server in result.virtual_servers],
        "caveats": list(result.caveats),
    }


def export_summary(result: ExportResult, output: str | None) -> RenderableType:
    """The instances and services written, and what keepalived does differently."""
    header = Text.assemble(
        ("keepalived.conf ", "bold"),
        f"for node {result.node_id}: {len(result.instances)} VRRP instances, "
        f"{len(result.virtual_servers)} virtual servers"
        + (f", written to {output}" if output else " (on standard output)"),
    )
    instances = Table(title="VRRP instances")
    for column in ("instance", "router id", "priority", "VIPs"):
        instances.add_column(column)
    for instance in result.instances:
        instances.add_row(
            Text(instance.name),
            Text(str(instance.virtual_router_id)),
            Text(str(instance.priority)),
            Text(", ".join(instance.addresses)),
        )
    parts: list[RenderableType] = [header, instances]
    if result.caveats:
        parts.append(Text("keepalived does differently:"))
        parts.extend(Text(f"  - {caveat}") for caveat in result.caveats)
    return Group(*parts)
