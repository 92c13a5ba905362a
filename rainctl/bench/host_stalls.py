"""How often the machine itself stopped during a benchmark: the host stall monitor.

A lab's nodes are processes of one machine, so a false exclusion in a soak says something
about rainctl only if the machine ran its nodes at that moment. The monitor runs at
real-time FIFO priority (when the kernel allows it): nothing of the machine's own work but
the kernel delays it. It sleeps TICK_MS at a time and writes one line for every wake-up
that came `threshold_ms` or more late: the wall time, the lateness and the steal time the
kernel counted meanwhile (/proc/stat: CPU time the hypervisor gave to other guests of the
same host). A stall of the monitor is a stall of everything the lab runs.

Started and ended by PID like the soak's CPU hogs (`builder.start_process`):

    python -m rainctl.bench.host_stalls --output FILE [--threshold-ms 50]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

TICK_MS = 10
THRESHOLD_MS_DEFAULT = 50
PRIORITY = 90
PROC_STAT = Path("/proc/stat")
USER_HZ = os.sysconf("SC_CLK_TCK")


def steal_ms() -> int:
    """The machine's steal time so far, all CPUs (0 where the kernel does not count it)."""
    fields = PROC_STAT.read_text(encoding="ascii").split("\n", 1)[0].split()
    return int(fields[8]) * 1000 // USER_HZ if len(fields) > 8 else 0


def parse_stalls(text: str, *, since: float, until: float) -> list[tuple[float, int, int]]:
    """The monitor's lines within [since, until]: (wall time, lateness ms, steal ms)."""
    stalls = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 3:  # a header, or a line being written
            continue
        at, late_ms, stolen_ms = float(parts[0]), int(parts[1]), int(parts[2])
        if since <= at <= until:
            stalls.append((at, late_ms, stolen_ms))
    return stalls


def monitor(output: Path, threshold_ms: int, scheduling: str, *, ticks: int | None = None) -> None:
    """Watch until killed (or for `ticks` sleeps), appending a line per stall to `output`
    after a header naming the monitor's `scheduling`."""
    tick_s = TICK_MS / 1000
    with output.open("a", encoding="ascii") as out:
        out.write(
            f"# host stall monitor: {scheduling}, ticks of {TICK_MS} ms, "
            f"lines from {threshold_ms} ms late\n"
        )
        out.flush()
        count = 0
        while ticks is None or count < ticks:
            count += 1
            steal_before = steal_ms()
            started = time.monotonic()
            time.sleep(tick_s)
            late_ms = round((time.monotonic() - started - tick_s) * 1000)
            if late_ms >= threshold_ms:
                stolen_ms = steal_ms() - steal_before
                out.write(f"{time.time():.3f} {late_ms} {stolen_ms}\n")
                out.flush()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m rainctl.bench.host_stalls", description=__doc__
    )
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--threshold-ms", type=int, default=THRESHOLD_MS_DEFAULT)
    parser.add_argument("--ticks", type=int, default=None, help="stop after this many sleeps")
    arguments = parser.parse_args(argv)
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(PRIORITY))
        scheduling = f"SCHED_FIFO {PRIORITY}"
    except OSError:
        # The figures then include this machine's own load, and the header says so.
        scheduling = "normal scheduling (SCHED_FIFO refused)"
    monitor(arguments.output, arguments.threshold_ms, scheduling, ticks=arguments.ticks)


if __name__ == "__main__":
    main()
