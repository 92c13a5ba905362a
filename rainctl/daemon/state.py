"""Persistent node state: the incarnation number, one file per node in the state directory.

Every daemon start is a new incarnation (docs/protocol.md: a restart is a new member). Peers
refuse datagrams from an incarnation older than one they have seen, so the number must grow
across restarts and crashes: it is read, incremented and written back durably (temporary
file, fsync, rename, fsync of the directory) before the node sends anything. A file that
cannot be read as a number is an error, not a reason to start again from 1, which peers
would refuse.
"""

from __future__ import annotations

import os
from pathlib import Path

from rainctl.core.types import U32_MAX, NodeId
from rainctl.errors import RainctlError


class StateError(RainctlError):
    """The state directory or a file in it cannot be used."""


def incarnation_path(state_dir: Path, node_id: NodeId) -> Path:
    return state_dir / f"node-{node_id}.incarnation"


def next_incarnation(state_dir: Path, node_id: NodeId) -> int:
    """Read the last incarnation of `node_id` (0 if none), store it + 1, return it + 1."""
    path = incarnation_path(state_dir, node_id)
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        previous = _read_incarnation(path)
    except OSError as exc:
        raise StateError(f"{path}: {exc.strerror or exc}") from exc
    incarnation = previous + 1
    if incarnation > U32_MAX:
        raise StateError(f"{path}: incarnation {previous} cannot grow any further")
    try:
        write_atomically(path, f"{incarnation}\n".encode("ascii"))
    except OSError as exc:
        raise StateError(f"{path}: {exc.strerror or exc}") from exc
    return incarnation


def _read_incarnation(path: Path) -> int:
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return 0
    except UnicodeDecodeError:
        text = "?"
    if not text.isdigit():
        raise StateError(f"{path}: expected a non-negative integer, found {text[:20]!r}")
    return int(text)


def write_atomically(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace `path` with `data` so a crash leaves either the old or the new content; the
    file gets `mode` (whatever the umask, or the mode of a temporary file left behind)."""
    temporary = path.with_name(f".{path.name}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(descriptor, mode)
        remaining = memoryview(data)
        while remaining:
            remaining = remaining[os.write(descriptor, remaining) :]
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    os.replace(temporary, path)
    # The rename itself is durable only once the directory entry is on disk.
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
