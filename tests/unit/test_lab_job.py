"""The lab's one-shot guest job (`GuestJob`): off by default, quoted, in the background,
its result written whole after the ready marker."""

from __future__ import annotations

from rainctl.lab.plan import JOB_EXIT_PREFIX, GuestJob, init_script, plan_lab


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
