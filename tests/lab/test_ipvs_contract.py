"""The IPVS contract suite (tests/contract/test_ipvs_table.py) against a real kernel: a 1-node
lab whose node runs that file with pytest once it has loaded IPVS (`up(job=...)`), both the
in-memory and the real-kernel (`ipvs_kernel`) cases; the host waits for the node's result
file and asserts the run passed. The guest's root is the host's filesystem, so the node runs
this checkout with the host's interpreter.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from rainctl.lab.jobs import run_job
from rainctl.lab.plan import GuestJob
from rainctl.lab.processes import LabError
from tests.lab.conftest import FIGURES, NOTES, _require_lab_machine
from tests.tags import RUN_TAG

ROOT = Path(__file__).resolve().parents[2]
RESULT_BOUND_S = 300.0
"""A bound: Python and pytest start slowly inside UML (0.3-1 s per interpreter start)."""

JOB = GuestJob(
    argv=(
        sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
        "-m", "ipvs_kernel or not ipvs_kernel", "tests/contract/test_ipvs_table.py",
    ),
    cwd=str(ROOT),
    output="ipvs-contract.txt",
)  # fmt: skip


def test_ipvs_contract_inside_a_lab_node() -> None:
    _require_lab_machine()
    started = time.monotonic()
    try:
        output = run_job(JOB, prefix=f"rli{RUN_TAG}", memory_mb=256, timeout_s=RESULT_BOUND_S)
    except LabError as exc:
        pytest.fail(str(exc))
    FIGURES["ipvs contract in a lab node (up + in-guest pytest)"] = time.monotonic() - started
    print(output)
    lines = output.strip().splitlines()
    NOTES.extend(line.strip() for line in lines if line.strip().startswith("IPVS-FIGURES"))
    summary = [line for line in lines if " passed" in line]
    assert summary, output
    assert "deselected" not in summary[-1], summary[-1]
    assert "skipped" not in summary[-1], summary[-1]
    assert "IPVS-FIGURES" in output, output
