"""How often the machine itself stopped during a benchmark, and how long each lab guest
waited for a CPU: the host stall monitor.

A lab's nodes are processes of one machine, so a false exclusion in a soak says something
about rainctl only if the machine ran its nodes at that moment. The monitor runs at
real-time FIFO priority (when the kernel allows it): nothing of the machine's own work but
the kernel delays it. It sleeps TICK_MS at a time and writes one line for every wake-up
that came `threshold_ms` or more late: the wall time, the lateness and the steal time the
kernel counted meanwhile (/proc/stat: CPU time the hypervisor gave to other guests of the
same host). A stall of the monitor is a stall of everything the lab runs.

With `--guest NAME=PGID` (a user-mode-linux node: its kernel and the host processes of its
own processes share one process group) it also follows, every GUEST_SAMPLE_TICKS ticks, how
long the group's processes waited on the host's run queues (/proc/PID/schedstat of each
process's main thread, second field). A UML guest has one virtual CPU: its kernel process
and the host processes that run its processes' code take turns, so the group's waiting
time is the guest's, runnable and not run (UML's I/O helper threads are not counted). A run of
samples in which it waited for at least WAITING_SHARE of the elapsed time, `threshold_ms`
or longer in all, is one line: the host's scheduler kept that guest off the CPUs while the
machine ran others (a stall the guest cannot see as anything but lost time).

A benchmark starts it with `start_monitor` (recorded and ended by PID like the soak's CPU
hogs, `builder.start_process`, following every node of the lab) and reads its lines back
with `parse_stalls` and `parse_guest_waits`:

    python -m rainctl.bench.host_stalls --output FILE [--threshold-ms 50] [--guest N=PGID]...
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from rainctl.lab import builder

TICK_MS = 10
THRESHOLD_MS_DEFAULT = 50
PRIORITY = 90
GUEST_SAMPLE_TICKS = 2
MEMBERS_REFRESH_S = 1.0
"""How often a guest's process group is listed again (its processes come and go)."""
WAITING_SHARE = 0.8
PROC = Path("/proc")
USER_HZ = os.sysconf("SC_CLK_TCK")
GUEST_WORD = "guest"


MONITOR = "host-stalls"
"""Its name among the lab's recorded processes."""


def start_monitor(state_dir: Path, threshold_ms: int = THRESHOLD_MS_DEFAULT) -> Path:
    """Start the monitor for the lab in `state_dir`, following each of its nodes (a UML
    node's recorded PID is its process group); its log, in the lab's watch directory
    (removed by `down`), is returned. `builder.stop_process(state_dir, MONITOR)` ends it."""
    watch = state_dir / builder.WATCH_DIR
    watch.mkdir(exist_ok=True)
    log = watch / f"{MONITOR}.log"
    guests = [
        f"--guest={node.node.name}={node.process.pid}"
        for node in builder.status(state_dir).nodes
        if node.process is not None
    ]
    command = (sys.executable, "-m", "rainctl.bench.host_stalls", "--output", str(log),
               "--threshold-ms", str(threshold_ms), *guests)  # fmt: skip
    builder.start_process(state_dir, MONITOR, command, watch / f"{MONITOR}.err")
    return log


def steal_ms() -> int:
    """The machine's steal time so far, all CPUs (0 where the kernel does not count it)."""
    fields = (PROC / "stat").read_text(encoding="ascii").split("\n", 1)[0].split()
    return int(fields[8]) * 1000 // USER_HZ if len(fields) > 8 else 0


def parse_stalls(text: str, *, since: float, until: float) -> list[tuple[float, int, int]]:
    """The machine's stalls within [since, until]: (wall time, lateness ms, steal ms)."""
    stalls = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 3:  # a header, a guest's line, or a line being written
            continue
        at, late_ms, stolen_ms = float(parts[0]), int(parts[1]), int(parts[2])
        if since <= at <= until:
            stalls.append((at, late_ms, stolen_ms))
    return stalls


def parse_guest_waits(text: str, *, since: float, until: float) -> list[tuple[float, str, int]]:
    """The guests' waits for a CPU that ended within [since, until]: (wall time of the end,
    guest, milliseconds)."""
    waits = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 4 or parts[1] != GUEST_WORD:
            continue
        at, name, waited_ms = float(parts[0]), parts[2], int(parts[3])
        if since <= at <= until:
            waits.append((at, name, waited_ms))
    return waits


def group_members(groups: set[int]) -> dict[int, list[int]]:
    """The PIDs of every process in each of the process groups `groups`."""
    members: dict[int, list[int]] = {group: [] for group in groups}
    for entry in os.scandir(PROC):
        if not entry.name.isdigit():
            continue
        try:
            stat = (PROC / entry.name / "stat").read_text(encoding="ascii", errors="replace")
        except OSError:
            continue  # gone meanwhile
        # After the command name (in parentheses, maybe with spaces): state, ppid, pgrp.
        after_name = stat.rsplit(")", 1)[-1].split()
        if len(after_name) > 2 and int(after_name[2]) in members:
            members[int(after_name[2])].append(int(entry.name))
    return members


def waited_ns(pids: list[int]) -> int:
    """Nanoseconds the processes `pids` have spent runnable but not running, in all."""
    total = 0
    for pid in pids:
        try:
            total += int((PROC / str(pid) / "schedstat").read_text(encoding="ascii").split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile: the next listing drops it
    return total


@dataclass(slots=True)
class _Guest:
    name: str
    group: int
    members: list[int] = field(default_factory=list)
    waited_ns: int = 0
    sampled_at: float = 0.0
    run_ns: int = 0
    """Waiting time of the current run of samples that were mostly waiting."""

    def rebase(self, now: float, members: list[int]) -> None:
        """A new listing of the group: the next sample counts from here (a process listed
        for the first time brings all its past waiting with it)."""
        self.members = members
        self.waited_ns, self.sampled_at = waited_ns(members), now

    def sample(self, now: float, waited_ns: int, threshold_ms: int) -> int | None:
        """Take a sample; a finished run of mostly-waiting samples of `threshold_ms` or
        more comes back in milliseconds."""
        waited, elapsed_ns = waited_ns - self.waited_ns, (now - self.sampled_at) * 1e9
        self.waited_ns, self.sampled_at = waited_ns, now
        if elapsed_ns > 0 and waited >= WAITING_SHARE * elapsed_ns:
            self.run_ns += waited
            return None
        finished_ms, self.run_ns = self.run_ns // 1_000_000, 0
        return finished_ms if finished_ms >= threshold_ms else None


def monitor(
    output: Path,
    threshold_ms: int,
    scheduling: str,
    guests: dict[str, int],
    *,
    ticks: int | None = None,
) -> None:
    """Watch until killed (or for `ticks` sleeps), appending a line per stall to `output`
    after a header naming the monitor's `scheduling`."""
    tick_s = TICK_MS / 1000
    followed = [_Guest(name, group) for name, group in sorted(guests.items())]
    listed_at = 0.0
    with output.open("a", encoding="ascii") as out:
        out.write(
            f"# host stall monitor: {scheduling}, ticks of {TICK_MS} ms, "
            f"lines from {threshold_ms} ms late; guests {' '.join(sorted(guests)) or 'none'}\n"
        )
        out.flush()
        count = 0
        while ticks is None or count < ticks:
            count += 1
            if followed and count % GUEST_SAMPLE_TICKS == 0:
                now = time.monotonic()
                if now - listed_at >= MEMBERS_REFRESH_S:
                    listed_at = now
                    members = group_members({guest.group for guest in followed})
                    for guest in followed:
                        guest.rebase(now, members[guest.group])
                else:
                    _sample_guests(out, followed, now, threshold_ms)
            steal_before = steal_ms()
            started = time.monotonic()
            time.sleep(tick_s)
            late_ms = round((time.monotonic() - started - tick_s) * 1000)
            if late_ms >= threshold_ms:
                stolen_ms = steal_ms() - steal_before
                out.write(f"{time.time():.3f} {late_ms} {stolen_ms}\n")
                out.flush()


def _sample_guests(out: TextIO, followed: list[_Guest], now: float, threshold_ms: int) -> None:
    for guest in followed:
        waited_ms = guest.sample(now, waited_ns(guest.members), threshold_ms)
        if waited_ms is not None:
            out.write(f"{time.time():.3f} {GUEST_WORD} {guest.name} {waited_ms}\n")
            out.flush()


def _guest(text: str) -> tuple[str, int]:
    name, _, group = text.partition("=")
    if not name or not group.isdigit():
        raise argparse.ArgumentTypeError(f"--guest {text!r}: expected NAME=PGID")
    return name, int(group)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m rainctl.bench.host_stalls", description=__doc__
    )
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--threshold-ms", type=int, default=THRESHOLD_MS_DEFAULT)
    parser.add_argument("--guest", type=_guest, action="append", default=[])
    parser.add_argument("--ticks", type=int, default=None, help="stop after this many sleeps")
    arguments = parser.parse_args(argv)
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(PRIORITY))
        scheduling = f"SCHED_FIFO {PRIORITY}"
    except OSError:
        # The figures then include this machine's own load, and the header says so.
        scheduling = "normal scheduling (SCHED_FIFO refused)"
    guests = dict(arguments.guest)
    monitor(arguments.output, arguments.threshold_ms, scheduling, guests, ticks=arguments.ticks)


if __name__ == "__main__":
    main()
