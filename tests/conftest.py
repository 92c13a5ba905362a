"""Suite-wide check: a test run leaves nothing behind.

At the start of the run this process's environment gets a marker, `RAINCTL_SUITE=<id>`,
which every process the tests start inherits (lab nodes, daemons, probers, helpers). After
the last test (every fixture torn down) the run fails if any process still carries the
marker or a network namespace of this run (its name carries tests.tags.RUN_TAG) exists
that was not there at the start. The report names each
leftover (PID, command line, the lab state directory it belongs to), then ends those
processes by PID and removes those namespaces, so one leaking run does not poison the next.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from pathlib import Path

import pytest

from rainctl.lab import processes
from tests.tags import is_this_runs

SUITE_ENV = "RAINCTL_SUITE"
_namespaces_at_start: set[str] = set()
_leftovers: list[str] = []


def _namespaces() -> set[str]:
    try:
        result = subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True, check=False, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return set()
    return {line.split()[0] for line in result.stdout.splitlines() if line.strip()}


def _describe(pid: int) -> str:
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        environment = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return f"pid {pid} (gone)"
    lab = next(
        (
            entry.decode().partition("=")[2]
            for entry in environment
            if entry.startswith(processes.MARKER_ENV.encode() + b"=")
        ),
        None,
    )
    where = f" [lab {lab}]" if lab else ""
    return f"pid {pid}: {command.strip()[:160]}{where}"


def pytest_configure(config: pytest.Config) -> None:
    # Always a new id: a run inside a run (tests of this check) judges only its own processes.
    os.environ[SUITE_ENV] = secrets.token_hex(8)
    _namespaces_at_start.update(_namespaces())


@pytest.hookimpl(trylast=True)  # after the runner's own teardown of session fixtures
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    marker = os.environ[SUITE_ENV]
    strays = processes.marked(marker, key=SUITE_ENV)
    _leftovers.extend(_describe(record.pid) for record in strays)
    new_namespaces = sorted(
        name for name in _namespaces() - _namespaces_at_start if is_this_runs(name)
    )
    _leftovers.extend(f"network namespace {name}" for name in new_namespaces)
    if not _leftovers:
        return
    processes.end_marked(marker, key=SUITE_ENV)
    for name in new_namespaces:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=10)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _leftovers:
        return
    terminalreporter.section("left behind by the tests (now ended and removed)", red=True)
    for line in _leftovers:
        terminalreporter.write_line(line)
    terminalreporter.write_line(
        "FAILED: the suite must end every process and namespace it starts (tests/conftest.py)",
        red=True,
    )
