"""Helpers for the tests and benchmarks that start real daemons on loopback: free UDP and
TCP ports and the daemon's command line."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

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
