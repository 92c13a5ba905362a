"""The lab's processes: started with a known PID, marked, and ended by PID only.

Every process the lab starts (UML nodes, back-end servers, probers, traffic clients) is
started directly by `subprocess.Popen` in a session of its own, so its PID and process group
are known exactly (LAB.md pitfall 3). Its environment also carries a marker,
`RAINCTL_LAB=<the lab's state directory>`, which every descendant inherits (UML's helper
processes, a process that left its group). Teardown ends the recorded process groups first
and then every process that still carries this lab's marker: a process the state file does
not know about (a record lost to a crash, a helper that called setsid) cannot outlive
`down`. Only processes the lab itself started carry the marker, so nothing else is ever
signalled, and no name pattern is ever matched.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rainctl.errors import RainctlError

MARKER_ENV = "RAINCTL_LAB"
ENVIRONMENT_WAIT_S = 1.0
"""Environment variable naming the lab (its absolute state directory) a process belongs to."""
STOP_TIMEOUT_S = 10.0
POLL_S = 0.02

_children: dict[int, subprocess.Popen[bytes]] = {}
"""Processes started by this Python process, so that ending one also reaps it."""


class LabError(RainctlError):
    """The lab cannot be built, inspected or changed; the message says what and why."""


@dataclass(frozen=True, slots=True)
class ProcessRecord:
    """A process the lab started: PID (also its process group) and kernel start time."""

    pid: int
    start_time: int


def _stat_fields(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/PID/stat (state first), or None if there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name is in parentheses and may contain spaces: split after the last ')'.
    return text.rpartition(")")[2].split()


def start_time(pid: int) -> int | None:
    """The kernel start time of `pid` (clock ticks since boot), None if it does not exist."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def is_alive(record: ProcessRecord) -> bool:
    """The recorded process still exists, is the same process, and is not a zombie."""
    fields = _stat_fields(record.pid)
    return fields is not None and int(fields[19]) == record.start_time and fields[0] != "Z"


def _live_pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def process_group(pgid: int) -> list[int]:
    """The live (not zombie) processes in process group `pgid`."""
    members = []
    for pid in _live_pids():
        fields = _stat_fields(pid)
        if fields is not None and int(fields[2]) == pgid and fields[0] != "Z":
            members.append(pid)
    return members


def marked(marker: str, *, key: str = MARKER_ENV) -> list[ProcessRecord]:
    """Live (not zombie) processes whose environment holds `key=marker`, sorted by PID.

    The environment a process started with is in /proc/PID/environ; processes of other
    users or ones that exit meanwhile are skipped.
    """
    needle = f"{key}={marker}".encode()
    found = []
    for pid in sorted(_live_pids()):
        if pid == os.getpid():
            continue
        try:
            environment = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if needle not in environment.split(b"\0"):
            continue
        fields = _stat_fields(pid)
        if fields is not None and fields[0] != "Z":
            found.append(ProcessRecord(pid=pid, start_time=int(fields[19])))
    return found


def _reap(pid: int) -> None:
    child = _children.pop(pid, None)
    if child is not None:
        child.wait()


def end_group(record: ProcessRecord) -> None:
    """SIGKILL the recorded process group (UML's helper processes included); wait it out."""
    if is_alive(record):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(record.pid, signal.SIGKILL)
    _reap(record.pid)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    # Only the group of a process we started: if its leader is gone and reused, the group
    # members left (UML helpers) still carry the recorded group id, which no new process
    # can get while they live.
    while process_group(record.pid):
        if time.monotonic() > deadline:
            raise LabError(
                f"process group {record.pid} still alive {STOP_TIMEOUT_S:g} s after SIGKILL"
            )
        time.sleep(POLL_S)


def end_marked(marker: str, *, key: str = MARKER_ENV) -> list[ProcessRecord]:
    """SIGKILL every process still carrying `key=marker` (checked again by start time just
    before the signal, so a reused PID is never hit) and wait until they are gone. Returns
    the processes it found."""
    strays = marked(marker, key=key)
    for record in strays:
        if is_alive(record):
            with contextlib.suppress(ProcessLookupError):
                os.kill(record.pid, signal.SIGKILL)
        _reap(record.pid)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while any(is_alive(record) for record in strays):
        if time.monotonic() > deadline:
            alive = [r.pid for r in strays if is_alive(r)]
            raise LabError(f"processes {alive} still alive {STOP_TIMEOUT_S:g} s after SIGKILL")
        time.sleep(POLL_S)
    return strays


def spawn(
    command: Sequence[str],
    log: Path,
    *,
    marker: str,
    environment: dict[str, str] | None = None,
) -> ProcessRecord:
    """Start `command` in a session of its own, output appended to `log`, its environment
    (`environment`, else this process's) carrying `MARKER_ENV=marker`."""
    env = {**(os.environ if environment is None else environment), MARKER_ENV: marker}
    with log.open("ab") as output:
        child = subprocess.Popen(  # noqa: S603 - fixed argv built from the plan
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    _children[child.pid] = child
    started = start_time(child.pid)
    if started is None or not _environment_shows(child, f"{MARKER_ENV}={marker}".encode()):
        child.wait()
        raise LabError(f"{command[0]} exited at once; see {log}")
    return ProcessRecord(pid=child.pid, start_time=started)


def _environment_shows(child: subprocess.Popen[bytes], needle: bytes) -> bool:
    """Wait until the child's /proc environ holds `needle`: Popen returns once the child's
    execve released the parent, but the kernel sets the new environment's bounds a moment
    later, and `marked` must find the child from the start. False if it exited first."""
    deadline = time.monotonic() + ENVIRONMENT_WAIT_S
    while child.poll() is None:
        try:
            if needle in Path(f"/proc/{child.pid}/environ").read_bytes().split(b"\0"):
                return True
        except OSError:
            pass
        if time.monotonic() > deadline:
            return True  # still running: go on, it is recorded by PID and start time anyway
        time.sleep(0.001)
    return False
