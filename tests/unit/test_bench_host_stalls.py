"""The host stall monitor of the benchmarks: its lines, and reading them back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rainctl.bench.host_stalls import (
    _Guest,
    group_members,
    main,
    parse_guest_waits,
    parse_stalls,
    steal_ms,
    waited_ns,
)


def test_parse_keeps_the_window_and_skips_the_header_and_a_partial_line() -> None:
    text = (
        "# host stall monitor: SCHED_FIFO 90, ticks of 10 ms, lines from 50 ms late\n"
        "100.000 60 0\n"
        "200.500 122 40\n"
        "300.000 55 0\n"
        "300.5\n"
        "250.000 guest rbl-node2 130\n"
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
    assert lines[0].endswith("guests none")
    stalls = parse_stalls("\n".join(lines), since=0.0, until=float("inf"))
    assert len(stalls) == 5
    assert all(late_ms >= 0 and stolen_ms >= 0 for _, late_ms, stolen_ms in stalls)
    assert [at for at, _, _ in stalls] == sorted(at for at, _, _ in stalls)


def test_steal_time_is_read_from_proc_stat() -> None:
    assert steal_ms() >= 0


def test_guest_lines_are_read_apart_from_the_machines() -> None:
    text = "# header\n100.000 60 0\n200.000 guest rbl-node2 130\n400.000 guest rbl-node1 70\n"
    assert parse_guest_waits(text, since=150.0, until=300.0) == [(200.0, "rbl-node2", 130)]


def test_a_guest_waiting_most_of_each_sample_is_one_line_when_the_run_ends() -> None:
    guest = _Guest("n1", 1, waited_ns=0, sampled_at=10.0)
    ms = 1_000_000
    # 20 ms samples: waiting 18, 20, 19 ms of them (a run of 57 ms), then running.
    assert guest.sample(10.02, 18 * ms, threshold_ms=50) is None
    assert guest.sample(10.04, 38 * ms, threshold_ms=50) is None
    assert guest.sample(10.06, 57 * ms, threshold_ms=50) is None
    assert guest.sample(10.08, 59 * ms, threshold_ms=50) == 57
    # A shorter run than the threshold gives no line.
    assert guest.sample(10.10, 79 * ms, threshold_ms=50) is None
    assert guest.sample(10.12, 80 * ms, threshold_ms=50) is None


def test_a_group_is_listed_and_its_waiting_summed() -> None:
    group = os.getpgid(0)
    members = group_members({group, 999_999_999})
    assert os.getpid() in members[group]
    assert members[999_999_999] == []
    assert waited_ns(members[group]) >= 0
    assert waited_ns([999_999_999]) == 0  # no such process: nothing, no error


def test_the_monitor_follows_a_guest_given_as_name_and_group(tmp_path: Path) -> None:
    output = tmp_path / "stalls.log"
    # In a child: the monitor makes its process real-time, never the test runner.
    subprocess.run(
        [sys.executable, "-m", "rainctl.bench.host_stalls", "--output", str(output),
         "--ticks", "4", "--guest", f"self={os.getpgid(0)}"],
        check=True, timeout=30,
    )  # fmt: skip
    header = output.read_text(encoding="ascii").splitlines()[0]
    assert header.endswith("guests self")


def test_a_guest_option_without_a_group_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):  # refused while parsing, before any scheduling change
        main(["--output", "/nonexistent/x", "--guest", "node1"])
    assert "--guest 'node1': expected NAME=PGID" in capsys.readouterr().err
