"""The host stall monitor of the benchmarks: its lines, and reading them back."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from rainctl.bench.host_stalls import parse_stalls, steal_ms


def test_parse_keeps_the_window_and_skips_the_header_and_a_partial_line() -> None:
    text = (
        "# host stall monitor: SCHED_FIFO 90, ticks of 10 ms, lines from 50 ms late\n"
        "100.000 60 0\n"
        "200.500 122 40\n"
        "300.000 55 0\n"
        "300.5"
    )
    assert parse_stalls(text, since=150.0, until=300.0) == [(200.5, 122, 40), (300.0, 55, 0)]
    assert parse_stalls("", since=0.0, until=1.0) == []


def test_the_monitor_writes_a_header_and_one_line_per_late_wake_up(tmp_path: Path) -> None:
    output = tmp_path / "stalls.log"
    # Threshold 0: every wake-up is "late", so each of the 5 ticks gives a line.
    subprocess.run(
        [sys.executable, "-m", "rainctl.bench.host_stalls", "--output", str(output),
         "--threshold-ms", "0", "--ticks", "5"],
        check=True, timeout=30,
    )  # fmt: skip
    lines = output.read_text(encoding="ascii").splitlines()
    assert lines[0].startswith("# host stall monitor: SCHED_FIFO 90, ticks of 10 ms")
    stalls = parse_stalls("\n".join(lines), since=0.0, until=float("inf"))
    assert len(stalls) == 5
    assert all(late_ms >= 0 and stolen_ms >= 0 for _, late_ms, stolen_ms in stalls)
    assert [at for at, _, _ in stalls] == sorted(at for at, _, _ in stalls)


def test_steal_time_is_read_from_proc_stat() -> None:
    assert steal_ms() >= 0
