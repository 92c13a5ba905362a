"""rainctl.daemon.realtime: SCHED_RR and mlockall for the daemon, and their option errors.

The real calls run in a child process, so the test runner itself never becomes real-time.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from rainctl.cli.app import app
from rainctl.daemon.realtime import RealtimeError, apply_realtime

CHILD = (
    "import os; from rainctl.daemon.realtime import apply_realtime; "
    "apply_realtime(7, lock_memory=True); "
    "policy = os.sched_getscheduler(0); "
    "print(policy & ~os.SCHED_RESET_ON_FORK == os.SCHED_RR, os.sched_getparam(0).sched_priority); "
    "print([l for l in open('/proc/self/status') if l.startswith('VmLck')][0].split()[1]); "
    "import subprocess, sys; "
    "print(subprocess.run([sys.executable, '-c', 'import os; print(os.sched_getscheduler(0))'], "
    "capture_output=True, text=True, check=True).stdout.strip() == str(os.SCHED_OTHER)); "
    "import threading; seen = []; "
    "thread = threading.Thread(target=lambda: seen.append(os.sched_getscheduler(0))); "
    "thread.start(); thread.join(); "
    "print(seen == [os.SCHED_OTHER])"
)


def test_the_daemon_process_becomes_round_robin_with_locked_memory() -> None:
    result = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, check=True, timeout=30
    )
    policy, locked_kb, child_normal, thread_normal = result.stdout.splitlines()
    assert policy == "True 7"
    assert int(locked_kb) > 1000  # the interpreter's pages are locked
    assert child_normal == "True"  # what the daemon starts is not real-time
    assert thread_normal == "True"  # nor are the threads it starts after


LOCKED_WITH_THREADS = (
    "import sys, threading; "
    "from rainctl.daemon.realtime import apply_realtime, size_thread_stacks_for_locking; "
    "sys.argv[1] == 'sized' and size_thread_stacks_for_locking(); "
    "done = threading.Event(); "
    "threads = [threading.Thread(target=done.wait) for _ in range(8)]; "
    "[thread.start() for thread in threads]; "
    "apply_realtime(0, lock_memory=True); "
    "print([l for l in open('/proc/self/status') if l.startswith('VmLck')][0].split()[1]); "
    "done.set()"
)


def test_locked_threads_cost_their_sized_stacks_not_glibcs_default() -> None:
    def locked_kb(mode: str) -> int:
        result = subprocess.run(
            [sys.executable, "-c", LOCKED_WITH_THREADS, mode],
            capture_output=True, text=True, check=True, timeout=30,
        )  # fmt: skip
        return int(result.stdout)

    default_kb, sized_kb = locked_kb("default"), locked_kb("sized")
    # 8 threads: 8 x 8 MiB at glibc's default, 8 x 1 MiB sized (what else is locked is the
    # same in both processes).
    assert default_kb - sized_kb >= 8 * 6 * 1024


def test_nothing_asked_changes_nothing() -> None:
    before = os.sched_getscheduler(0)
    apply_realtime(0, lock_memory=False)
    assert os.sched_getscheduler(0) == before


def test_an_out_of_range_priority_is_one_error() -> None:
    with pytest.raises(RealtimeError, match=r"--realtime-priority: 100 is not 1\.\.99"):
        apply_realtime(100, lock_memory=False)


def test_the_cli_refuses_an_out_of_range_priority_before_starting() -> None:
    result = CliRunner().invoke(
        app, ["daemon", "--config", "/nonexistent.toml", "--node", "1",
              "--realtime-priority", "120"],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "--realtime-priority: 120 is not 1..99 (or 0 for none)" in result.output
