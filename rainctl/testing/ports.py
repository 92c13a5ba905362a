"""Helpers for the tests and benchmarks that start real daemons: free UDP and TCP ports on
loopback, the daemon's command line, its status."""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Any

from rainctl.daemon.control import ControlError, request

RAINCTL = Path(sys.executable).parent / "rainctl"
"""The venv's `rainctl` entry point (beside the interpreter running the tests)."""


def free_udp_ports(count: int) -> list[int]:
    """`count` distinct UDP ports on 127.0.0.1 that were free a moment ago."""
    return _free_ports(socket.SOCK_DGRAM, count)


def free_tcp_ports(count: int) -> list[int]:
    """`count` distinct TCP ports on 127.0.0.1 that were free a moment ago (the metrics
    endpoints of daemons on loopback)."""
    return _free_ports(socket.SOCK_STREAM, count)


def _free_ports(kind: socket.SocketKind, count: int) -> list[int]:
    # Bound, then released together, so no two are the same.
    sockets = [socket.socket(socket.AF_INET, kind) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def daemon_command(config: Path, node_id: int, state_dir: Path, socket_path: Path) -> list[str]:
    """`rainctl daemon` for `node_id` (the default data plane: none, all in memory)."""
    return [
        str(RAINCTL), "daemon", "--config", str(config), "--node", str(node_id),
        "--state-dir", str(state_dir), "--control-socket", str(socket_path),
    ]  # fmt: skip


def status_or_none(socket_path: Path) -> dict[str, Any] | None:
    """The daemon's `status` document, or None while it does not answer (starting,
    stopped, gone)."""
    try:
        return request(socket_path, "status", timeout_s=1.0)
    except ControlError:
        return None
