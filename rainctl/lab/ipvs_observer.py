"""An observer of a lab node's IPVS table, for the benchmarks that time changes of it
(tests/bench/bench_health_failover.py, bench_config_push.py).

`python -m rainctl.lab.ipvs_observer SCRATCH [--signal-on-request PIDFILE]` runs inside a
UML guest: every OBSERVE_INTERVAL_S (longer for large tables: READ_SHARE_MAX) it reads
/proc/net/ip_vs and appends every change of a
real server's weight (or its removal) to SCRATCH/EVENTS_FILE with the guest's wall clock
(UML's clock is the host's), and writes the time of its last read to SCRATCH/CLOCK_FILE.
With `--signal-on-request`, a file SCRATCH/REQUEST_FILE written by the host makes it send
SIGHUP to the process in PIDFILE (keepalived's reload, as an operator's `kill -HUP`) and
log the moment in SCRATCH/SIGNALS_FILE: one resident process that never forks (LAB.md
pitfall 1). `Views` reads the events back on the host.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

OBSERVE_INTERVAL_S = 0.05
READ_SHARE_MAX = 0.2
"""The observer spends at most this share of the guest's CPU reading the table: with 10,000
services a read of /proc/net/ip_vs takes tens of milliseconds in UML, and reading it every
50 ms would load the very guest being timed (the interval grows, the resolution with it)."""
EVENTS_FILE = "ipvs-events.jsonl"
CLOCK_FILE = "observer-clock"
REQUEST_FILE = "signal-request"
SIGNALS_FILE = "signals.jsonl"


# ---- in the guest ----------------------------------------------------------------------------


def _endpoint(hex_text: str) -> str:
    address, port = hex_text.split(":")
    octets = [str(int(address[i : i + 2], 16)) for i in range(0, 8, 2)]
    return f"{'.'.join(octets)}:{int(port, 16)}"


def read_ipvs(text: str) -> dict[tuple[str, str], int]:
    """/proc/net/ip_vs as {(service, real server): weight}; a service is "FWM 11" or
    "TCP 198.18.0.100:80"."""
    table: dict[tuple[str, str], int] = {}
    service = ""
    for line in text.splitlines()[3:]:
        words = line.split()
        if not words:
            continue
        if words[0] == "->":
            table[(service, _endpoint(words[1]))] = int(words[3])
        elif words[0] == "FWM":
            service = f"FWM {int(words[1], 16)}"
        else:
            service = f"{words[0]} {_endpoint(words[1])}"
    return table


def _signal_if_requested(directory: Path, pidfile: Path) -> None:
    request = directory / REQUEST_FILE
    if not request.exists():
        return
    request.unlink()
    now = time.time()
    try:
        pid = int(pidfile.read_text(encoding="ascii").split()[0])
        os.kill(pid, signal.SIGHUP)
        outcome: object = pid
    except (OSError, ValueError, IndexError) as exc:
        outcome = f"not signalled: {exc}"
    with (directory / SIGNALS_FILE).open("a", encoding="utf-8") as signals:
        signals.write(json.dumps([now, outcome]) + "\n")


def observe(directory: Path, signal_pidfile: Path | None = None) -> None:
    """Write every change of the table as a JSON line: [time, service, server, weight or
    None (removed)]; the clock file says the guest's time of its last read."""
    previous: dict[tuple[str, str], int] = {}
    with (directory / EVENTS_FILE).open("a", encoding="utf-8") as events:
        while True:
            if signal_pidfile is not None:
                _signal_if_requested(directory, signal_pidfile)
            started = time.monotonic()
            now = time.time()
            with open("/proc/net/ip_vs", encoding="ascii") as proc:
                table = read_ipvs(proc.read())
            lines = [
                json.dumps([now, service, server, table.get((service, server))])
                for service, server in sorted(previous.keys() | table.keys())
                if previous.get((service, server)) != table.get((service, server))
            ]
            if lines:
                events.write("\n".join(lines) + "\n")
                events.flush()
            previous = table
            clock = directory / f"{CLOCK_FILE}.tmp"
            clock.write_text(repr(now), encoding="ascii")
            clock.replace(directory / CLOCK_FILE)
            spent_s = time.monotonic() - started
            time.sleep(max(OBSERVE_INTERVAL_S, spent_s / READ_SHARE_MAX - spent_s))


# ---- on the host -----------------------------------------------------------------------------


@dataclass
class Views:
    """Every node's table as its observer last wrote it."""

    scratches: list[Path]

    def tables(self, until: float = float("inf")) -> list[dict[tuple[str, str], int]]:
        tables = []
        for scratch in self.scratches:
            table: dict[tuple[str, str], int] = {}
            path = scratch / EVENTS_FILE
            text = path.read_text(encoding="utf-8") if path.exists() else ""
            for line in text.splitlines():
                try:
                    at, service, server, weight = json.loads(line)
                except ValueError:
                    continue  # a line being written
                if at > until:
                    break
                if weight is None:
                    table.pop((service, server), None)
                else:
                    table[(service, server)] = weight
            tables.append(table)
        return tables

    def changes(self, address: str, since: float) -> list[list[tuple[float, str, int | None]]]:
        """Per node: the changes of `address`'s weights since `since` (time, service,
        weight or None)."""
        found = []
        for scratch in self.scratches:
            node: list[tuple[float, str, int | None]] = []
            for line in (scratch / EVENTS_FILE).read_text(encoding="utf-8").splitlines():
                try:
                    at, service, endpoint, weight = json.loads(line)
                except ValueError:
                    continue
                if endpoint.rsplit(":", 1)[0] == address and at >= since:
                    node.append((at, service, weight))
            found.append(node)
        return found

    def request_signal(self) -> float:
        """Ask every node's observer to signal its process (all at once); the host's time."""
        asked = time.time()
        for scratch in self.scratches:
            (scratch / REQUEST_FILE).write_text("", encoding="ascii")
        return asked


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rainctl.lab.ipvs_observer")
    parser.add_argument("scratch", type=Path)
    parser.add_argument("--signal-on-request", type=Path, metavar="PIDFILE")
    arguments = parser.parse_args(argv)
    observe(arguments.scratch, arguments.signal_on_request)


if __name__ == "__main__":
    main()
