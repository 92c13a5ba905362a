"""A lab node's status helper: copies its daemon's status to a file the host can read.

Runs inside a UML guest, started once by the node's init script next to `rainctl daemon`.
The host cannot connect to the daemon's control socket: a Unix socket belongs to the kernel
that made it, and the guest's kernel is not the host's, even when the socket file sits on
hostfs. So this one resident process (no fork per round, LAB.md pitfall 1) asks the daemon
every `--interval` seconds through the ordinary control client, adds what the guest's /proc
says about the daemon (alive, resident memory), and replaces `--output` atomically (write a
temporary file, then rename) so that a reader never sees half a document.

    python -m rainctl.lab.agent --socket S --daemon-pid P --output F [--interval 0.2]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from rainctl.daemon.control import ControlError, request

REQUEST_TIMEOUT_S = 1.0


def rss_kb(pid: int) -> int | None:
    """The resident set size of `pid` in kB (VmRSS), or None if it is gone or a zombie."""
    try:
        text = Path(f"/proc/{pid}/status").read_text(encoding="utf-8")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return None


def snapshot(socket_path: Path, daemon_pid: int) -> dict[str, Any]:
    """One status document: the daemon's answer (or the error) and its process figures."""
    document: dict[str, Any] = {
        "written_at": time.time(),
        "daemon_pid": daemon_pid,
        "daemon_rss_kb": rss_kb(daemon_pid),
        "agent_rss_kb": rss_kb(os.getpid()),
        "status": None,
        "error": None,
    }
    try:
        document["status"] = request(socket_path, "status", timeout_s=REQUEST_TIMEOUT_S)
    except ControlError as exc:
        document["error"] = str(exc)
    return document


def write_atomically(path: Path, document: dict[str, Any]) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(document, separators=(",", ":")) + "\n", encoding="utf-8")
    temporary.replace(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rainctl.lab.agent", description=__doc__)
    parser.add_argument("--socket", type=Path, required=True)
    parser.add_argument("--daemon-pid", type=int, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--interval", type=float, default=0.2)
    arguments = parser.parse_args(argv)
    while True:
        write_atomically(arguments.output, snapshot(arguments.socket, arguments.daemon_pid))
        time.sleep(arguments.interval)


if __name__ == "__main__":
    main()
