"""What a configuration change changes, per section (`rainctl config diff`, push answers).

Both configurations are compared as validated models (so formatting, comments and defaults
written out or left implicit are not changes). Sections that are lists are matched by
their identity (nodes by id, VIPs by address, services by protocol, VIP and port) and each
entry is reported added, removed or changed with the keys that changed; other sections
report the keys that changed with their old and new values.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from rainctl.config.models import ClusterConfig

_IDENTITIES: dict[str, Callable[[dict[str, Any]], str]] = {
    "nodes": lambda node: f"node {node['id']}",
    "vips": lambda vip: str(vip["address"]),
    "services": lambda service: f"{service['protocol']} {_host(service['vip'])}:{service['port']}",
}


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def config_changes(before: ClusterConfig, after: ClusterConfig) -> dict[str, list[str]]:
    """Per top-level section, one line per change; sections without change are left out.

    List entries that are the very same model objects (a reread reuses the models of
    unchanged tables, rainctl.config.reread) are not dumped: 10,000 services cost what
    changed."""
    changes: dict[str, list[str]] = {}
    for section in type(after).model_fields:
        old_value, new_value = getattr(before, section), getattr(after, section)
        identity = _IDENTITIES.get(section)
        if identity is not None:
            kept = {id(entry) for entry in old_value} & {id(entry) for entry in new_value}
            lines = _list_changes(_dumped(old_value, kept), _dumped(new_value, kept), identity)
        else:
            lines = _value_changes(
                before.model_dump(mode="json", include={section})[section],
                after.model_dump(mode="json", include={section})[section],
                "",
            )
        if lines:
            changes[section] = lines
    return changes


def _dumped(entries: tuple[BaseModel, ...], kept: set[int]) -> list[dict[str, Any]]:
    return [entry.model_dump(mode="json") for entry in entries if id(entry) not in kept]


def _list_changes(
    old: list[dict[str, Any]], new: list[dict[str, Any]], identity: Callable[[dict[str, Any]], str]
) -> list[str]:
    before = {identity(entry): entry for entry in old}
    after = {identity(entry): entry for entry in new}
    lines = [f"+ {name}" for name in after if name not in before]
    lines += [f"- {name}" for name in before if name not in after]
    for name, entry in after.items():
        previous = before.get(name)
        if previous is not None and previous != entry:
            keys = sorted(key for key in entry if entry[key] != previous.get(key))
            lines.append(f"~ {name}: {', '.join(keys)}")
    return lines


def _value_changes(old: Any, new: Any, prefix: str) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        lines: list[str] = []
        for key in sorted(new.keys() | old.keys()):
            lines += _value_changes(old.get(key), new.get(key), f"{prefix}{key}.")
        return lines
    if old == new:
        return []
    return [f"{prefix.rstrip('.')}: {_show(old)} -> {_show(new)}"]


def _show(value: Any) -> str:
    return "(unset)" if value is None else repr(value) if isinstance(value, str) else str(value)


def change_count(changes: dict[str, list[str]]) -> int:
    return sum(len(lines) for lines in changes.values())
