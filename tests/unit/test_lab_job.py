"""The lab's one-shot guest job (`GuestJob`): off by default, quoted, in the background,
its result written whole after the ready marker; waiting for it (rainctl.lab.jobs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rainctl.lab import builder, jobs
from rainctl.lab.plan import JOB_EXIT_PREFIX, GuestJob, init_script, plan_lab
from rainctl.lab.processes import LabError


def test_no_job_by_default() -> None:
    plan = plan_lab(nodes=1, backends=0)
    script = init_script(plan, plan.nodes[0], "/lab/nodes/rlab-node1")
    assert "GuestJob" not in script
    assert script == init_script(plan, plan.nodes[0], "/lab/nodes/rlab-node1", None, None)


def test_job_runs_after_the_ready_marker_in_the_background() -> None:
    plan = plan_lab(nodes=1, backends=0)
    job = GuestJob(argv=("/venv/bin/python", "-m", "pytest", "-m", "a or b"), cwd="/src dir")
    script = init_script(plan, plan.nodes[0], "/lab/nodes/n1", job=job)
    assert "(cd '/src dir' && exec /venv/bin/python -m pytest -m 'a or b')" in script
    assert f'echo "{JOB_EXIT_PREFIX}$?" >> /lab/nodes/n1/job.txt.tmp' in script
    assert "mv /lab/nodes/n1/job.txt.tmp /lab/nodes/n1/job.txt" in script
    assert script.index("$scratch/ready".replace("$scratch", "/lab/nodes/n1")) < script.index(
        "exec /venv/bin/python"
    )
    assert script.index(") &\n") < script.index("mkfifo /run/rainctl/idle")


def test_waiting_for_a_job_gives_its_output_or_says_why_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    output = tmp_path / "job.txt"
    monkeypatch.setattr(builder, "job_output", lambda state_dir, job: output)
    monkeypatch.setattr(jobs, "POLL_S", 0.01)
    job = GuestJob(argv=("true",), cwd="/")
    with pytest.raises(LabError, match=r"^the guest's job wrote no result within 0.05 s$"):
        jobs.wait_for_job(tmp_path, job, timeout_s=0.05)
    output.write_text(f"boom\n{JOB_EXIT_PREFIX}1\n")
    with pytest.raises(LabError, match="the guest's job failed:\nboom\n"):
        jobs.wait_for_job(tmp_path, job, timeout_s=0.05)
    output.write_text(f"fine\n{JOB_EXIT_PREFIX}0\n")
    assert jobs.wait_for_job(tmp_path, job, timeout_s=0.05) == f"fine\n{JOB_EXIT_PREFIX}0\n"
