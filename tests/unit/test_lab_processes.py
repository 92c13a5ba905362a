"""rainctl.lab.processes: marked processes, and teardown that ends the unrecorded ones.

Real processes (sleep), started by the module itself; every one is ended by PID.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from rainctl.lab import builder, processes

# A child that leaves its parent's process group and session (as a daemonising helper
# would), prints its PID, then sleeps: `end_group` of the parent cannot reach it.
ESCAPER = (
    "import os, subprocess, sys; "
    "child = subprocess.Popen([sys.executable, '-c', "
    "'import os, time; os.setsid(); print(os.getpid(), flush=True); time.sleep(60)']); "
    "child.wait()"
)


def _wait_for_pid(log: Path) -> int:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = log.read_text(encoding="utf-8").strip()
        if text:
            return int(text.splitlines()[0])
        time.sleep(0.02)
    raise AssertionError(f"no PID in {log}")


def test_spawned_process_carries_the_marker_and_is_found(tmp_path: Path) -> None:
    record = processes.spawn(("sleep", "60"), tmp_path / "log", marker="lab-a")
    try:
        assert processes.is_alive(record)
        assert record in processes.marked("lab-a")
        assert record not in processes.marked("lab-b")
        assert processes.end_marked("lab-b") == []
        assert processes.is_alive(record)
    finally:
        processes.end_group(record)
    assert not processes.is_alive(record)
    assert processes.marked("lab-a") == []


def test_end_marked_reaches_a_process_that_left_its_group(tmp_path: Path) -> None:
    log = tmp_path / "log"
    record = processes.spawn((sys.executable, "-c", ESCAPER), log, marker="lab-escape")
    escaped = _wait_for_pid(log)
    try:
        processes.end_group(record)
        assert escaped in [r.pid for r in processes.marked("lab-escape")]
    finally:
        ended = processes.end_marked("lab-escape")
    assert escaped in [r.pid for r in ended]
    assert processes.marked("lab-escape") == []


def test_down_without_a_state_file_still_ends_the_labs_processes(tmp_path: Path) -> None:
    state_dir = tmp_path / "lab"
    state_dir.mkdir()
    log = tmp_path / "log"
    record = processes.spawn((sys.executable, "-c", ESCAPER), log, marker=str(state_dir.absolute()))
    escaped = _wait_for_pid(log)
    try:
        assert builder.down(state_dir) is False  # no lab recorded ...
        # ... but its processes are gone all the same, the one that left its group too.
        parent_alive = processes.is_alive(record)
        left = [r.pid for r in processes.marked(str(state_dir.absolute()))]
    finally:
        processes.end_group(record)
        processes.end_marked(str(state_dir.absolute()))
    assert not parent_alive
    assert left == []
    assert escaped not in left
