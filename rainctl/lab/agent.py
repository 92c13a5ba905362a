"""A lab node's status helper: copies its daemon's status to a file the host can read.

Runs inside a UML guest, started once by the node's init script next to `rainctl daemon`.
The host cannot connect to the daemon's control socket: a Unix socket belongs to the kernel
that made it, and the guest's kernel is not the host's, even when the socket file sits on
hostfs. So this one resident process (no fork per round, LAB.md pitfall 1) asks the daemon
every `--interval` seconds through the ordinary control client, adds what the guest's /proc
says about the daemon (alive, resident memory), and replaces `--output` atomically (write a
temporary file, then rename) so that a reader never sees half a document.

With `--control-dir D` it also carries the host's control requests to the daemon: the host
writes `D/requests/<id>.json` (`{"command": ..., "arguments": {...}}`, written under another
name and renamed), the helper, checking every REQUEST_POLL_S, removes it, asks the daemon with
the ordinary control client and writes the answer as `D/responses/<id>.json` (tmp + rename):
`{"ok": true, "result": {...}}` or `{"ok": false, "error": "..."}`, the control protocol's own
answer shapes.

    python -m rainctl.lab.agent --socket S --daemon-pid P --output F [--interval 0.2]
                                [--control-dir D]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from rainctl.daemon.control import ControlError, request

REQUEST_TIMEOUT_S = 1.0
CONTROL_TIMEOUT_S = 10.0
"""For the host's requests (drain and reload may take longer than a status); a request may
ask for longer (`timeout_s`, at most CONTROL_TIMEOUT_MAX_S: a large configuration push)."""
CONTROL_TIMEOUT_MAX_S = 300.0
REQUEST_POLL_S = 0.05
REQUESTS = "requests"
RESPONSES = "responses"


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


def cpu_ticks(pid: int) -> int | None:
    """utime + stime of `pid` in clock ticks, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])


def snapshot(socket_path: Path, daemon_pid: int) -> dict[str, Any]:
    """One status document: the daemon's answer (or the error) and its process figures."""
    document: dict[str, Any] = {
        "written_at": time.time(),
        "daemon_pid": daemon_pid,
        "daemon_rss_kb": rss_kb(daemon_pid),
        "agent_rss_kb": rss_kb(os.getpid()),
        # For CPU at rest (rainctl bench failover): the daemon's utime + stime in clock ticks
        # and the guest's monotonic clock, so two documents give % of one core.
        "daemon_cpu_ticks": cpu_ticks(daemon_pid),
        "monotonic": time.monotonic(),
        "clock_ticks": os.sysconf("SC_CLK_TCK"),
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


SIGNAL_DAEMON = "signal-daemon"
"""The one request the helper answers itself: send the daemon (only it, not the node) a
signal, `{"signal": "KILL" | "STOP" | "CONT" | "TERM"}` (the lease tests' daemon faults)."""
DAEMON_SIGNALS = {
    "KILL": signal.SIGKILL,
    "STOP": signal.SIGSTOP,
    "CONT": signal.SIGCONT,
    "TERM": signal.SIGTERM,
}


def _signal_daemon(daemon_pid: int | None, name: object) -> dict[str, Any]:
    if not isinstance(name, str) or name not in DAEMON_SIGNALS or daemon_pid is None:
        allowed = ", ".join(DAEMON_SIGNALS)
        return {"ok": False, "error": f"signal-daemon: signal must be one of {allowed}"}
    try:
        os.kill(daemon_pid, DAEMON_SIGNALS[name])
    except OSError as exc:
        return {"ok": False, "error": f"signal-daemon: pid {daemon_pid}: {exc}"}
    return {"ok": True, "result": {"pid": daemon_pid, "signal": name}}


def answer(socket_path: Path, document: object, daemon_pid: int | None = None) -> dict[str, Any]:
    """The daemon's answer to one request document, in the control protocol's shapes."""
    if not isinstance(document, dict) or not isinstance(document.get("command"), str):
        return {"ok": False, "error": "a request needs a string 'command'"}
    arguments = document.get("arguments") or None
    if arguments is not None and not isinstance(arguments, dict):
        return {"ok": False, "error": "'arguments' must be an object"}
    if document["command"] == SIGNAL_DAEMON:
        return _signal_daemon(daemon_pid, (arguments or {}).get("signal"))
    wanted = document.get("timeout_s")
    timeout_s = CONTROL_TIMEOUT_S
    if isinstance(wanted, int | float) and not isinstance(wanted, bool):
        timeout_s = min(max(float(wanted), CONTROL_TIMEOUT_S), CONTROL_TIMEOUT_MAX_S)
    try:
        result = request(socket_path, document["command"], timeout_s=timeout_s, arguments=arguments)
    except ControlError as exc:
        return {"ok": False, "error": str(exc)}
    return {"ok": True, "result": result}


def serve_requests(socket_path: Path, control_dir: Path, daemon_pid: int | None = None) -> int:
    """Answer every request file waiting in `control_dir`/requests; how many there were."""
    served = 0
    for path in sorted((control_dir / REQUESTS).glob("*.json")):
        try:
            text = path.read_text(encoding="utf-8")
            path.unlink()
        except OSError:
            continue  # removed meanwhile
        try:
            document: object = json.loads(text)
        except ValueError as exc:
            reply: dict[str, Any] = {"ok": False, "error": f"unreadable request: {exc}"}
        else:
            reply = answer(socket_path, document, daemon_pid)
        write_atomically(control_dir / RESPONSES / path.name, reply)
        served += 1
    return served


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rainctl.lab.agent", description=__doc__)
    parser.add_argument("--socket", type=Path, required=True)
    parser.add_argument("--daemon-pid", type=int, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--interval", type=float, default=0.2)
    parser.add_argument("--control-dir", type=Path, default=None)
    arguments = parser.parse_args(argv)
    next_status = time.monotonic()
    while True:
        if time.monotonic() >= next_status:
            write_atomically(arguments.output, snapshot(arguments.socket, arguments.daemon_pid))
            next_status = time.monotonic() + arguments.interval
        if arguments.control_dir is not None:
            serve_requests(arguments.socket, arguments.control_dir, arguments.daemon_pid)
            time.sleep(min(REQUEST_POLL_S, max(0.0, next_status - time.monotonic())))
        else:
            time.sleep(max(0.0, next_status - time.monotonic()))


if __name__ == "__main__":
    main()
