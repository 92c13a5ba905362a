"""One-shot commands run inside a lab node (`GuestJob`): the benchmarks that time something
inside a UML guest (IPVS at scale, the configuration worker's memory, the checkers' cost).

`wait_for_job` waits for the output the node writes whole when the command has ended;
`run_job` boots a 1-node lab (no daemon) that runs the job, waits for it and takes the lab
down, whatever happens; `print_job` is that for a benchmark's command line.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from rainctl.lab import builder
from rainctl.lab.plan import JOB_EXIT_PREFIX, GuestJob
from rainctl.lab.processes import LabError

POLL_S = 1.0


def wait_for_job(state_dir: Path, job: GuestJob, *, timeout_s: float) -> str:
    """The output of `job` (its last line `exit status 0`); LabError when it failed or wrote
    nothing within `timeout_s`."""
    output = builder.job_output(state_dir, job)
    deadline = time.monotonic() + timeout_s
    while not output.exists():
        if time.monotonic() > deadline:
            raise LabError(f"the guest's job wrote no result within {timeout_s:g} s")
        time.sleep(POLL_S)
    text = output.read_text(encoding="utf-8")
    if not text.rstrip().endswith(f"{JOB_EXIT_PREFIX}0"):
        raise LabError(f"the guest's job failed:\n{text}")
    return text


def run_job(job: GuestJob, *, prefix: str, memory_mb: int, timeout_s: float) -> str:
    """Boot a 1-node lab that runs `job`, and its output (`wait_for_job`); the lab is taken
    down in any case."""
    missing = builder.missing_prerequisites()
    if missing:
        raise LabError("the lab cannot run here: " + "; ".join(missing))
    with tempfile.TemporaryDirectory(prefix=f"rainctl-{prefix}-") as scratch:
        state_dir = Path(scratch) / "lab"
        try:
            builder.up(state_dir, nodes=1, backends=0, prefix=prefix, memory_mb=memory_mb, job=job)
            return wait_for_job(state_dir, job, timeout_s=timeout_s)
        finally:
            builder.down(state_dir)


def print_job(job: GuestJob, *, prefix: str, memory_mb: int, timeout_s: float) -> int:
    """`run_job` for a benchmark's command line: the output on stdout and 0, or the reason on
    stderr and 1."""
    try:
        output = run_job(job, prefix=prefix, memory_mb=memory_mb, timeout_s=timeout_s)
    except LabError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(output, end="")
    return 0
