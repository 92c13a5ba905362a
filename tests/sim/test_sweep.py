"""Seed sweep: random fault schedules through the simulator, every invariant checked.

`RAINCTL_SIM_SEEDS` (default 300) sets how many seeds run (1..N). Seeds run in chunks of
20 so a failing test names a small range; the failure lists every failing seed of the chunk
with its violation and the command that replays it. Deselect with `-m "not slow"`.
"""

from __future__ import annotations

import os
import sys

import pytest

from rainctl.testing.invariants import InvariantViolation
from rainctl.testing.scenario import Scenario, random_scenario
from rainctl.testing.sim import SimResult, run_scenario

CHUNK = 20
SEEDS = int(os.environ.get("RAINCTL_SIM_SEEDS", "300"))
CHUNKS = [range(start, min(start + CHUNK, SEEDS + 1)) for start in range(1, SEEDS + 1, CHUNK)]


def replay_command(seed: int) -> str:
    command = random_scenario(seed).replay
    assert command, "random scenarios must say how to replay them"
    return command


def run_seed(seed: int) -> str | None:
    """None if the seed passes, else a one-line report naming the seed and its replay."""
    try:
        run_scenario(random_scenario(seed))
    except InvariantViolation as violation:
        report = str(violation)
        assert f"seed {seed}" in report, report
        assert replay_command(seed) in report, report
        return f"seed {seed}: {report}"
    except Exception as error:  # noqa: BLE001 - a crash of the core is a failure too
        return f"seed {seed}: {type(error).__name__}: {error} [replay: {replay_command(seed)}]"
    return None


@pytest.mark.slow
@pytest.mark.parametrize("seeds", CHUNKS, ids=[f"seeds-{c.start}-{c.stop - 1}" for c in CHUNKS])
def test_random_schedules_keep_every_invariant(seeds: range) -> None:
    failures = {seed: report for seed in seeds if (report := run_seed(seed)) is not None}
    for report in failures.values():
        print(report)
    # The first line (what `-ra` shows) lists every failing seed of the chunk.
    assert not failures, (
        f"failing seeds {sorted(failures)} (of {seeds.start}..{seeds.stop - 1}):\n"
        + "\n".join(failures.values())
    )


def test_a_failing_seed_is_reported_with_its_replay_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def violating(scenario: Scenario, **_: object) -> SimResult:
        # What Simulation.run does with a violation: attach the seed and replay command.
        violation = InvariantViolation("VIP x has two owners in one ring", at_ms=4321)
        violation.seed = scenario.seed
        violation.replay = scenario.replay
        raise violation

    monkeypatch.setattr(sys.modules[__name__], "run_scenario", violating)
    report = run_seed(42)
    assert report is not None
    assert "seed 42" in report
    assert "replay: rainctl sim --seed 42 --random" in report

    def crashing(scenario: Scenario, **_: object) -> SimResult:
        raise KeyError("boom")

    monkeypatch.setattr(sys.modules[__name__], "run_scenario", crashing)
    report = run_seed(43)
    assert report is not None
    assert "seed 43" in report
    assert "KeyError" in report
    assert "rainctl sim --seed 43 --random" in report


def test_violation_message_names_seed_and_replay() -> None:
    violation = InvariantViolation("two owners", at_ms=1234)
    violation.seed = 77
    violation.replay = replay_command(77)
    assert str(violation) == (
        "at 1234 ms: two owners [seed 77; replay: rainctl sim --seed 77 --random]"
    )


def _fingerprint(result: SimResult) -> tuple[object, ...]:
    return (
        result.timeline,
        result.outages,
        result.converged_at_ms,
        result.datagrams_sent,
        result.datagrams_rejected,
        result.steps,
        result.max_dual_owner_ms,
        result.final_ring_size,
        result.counters,
    )


@pytest.mark.parametrize("seed", [3, 17])
def test_same_seed_same_run(seed: int) -> None:
    first = run_scenario(random_scenario(seed))
    second = run_scenario(random_scenario(seed))
    assert first.timeline == second.timeline
    assert _fingerprint(first) == _fingerprint(second)


def test_different_seeds_differ() -> None:
    assert random_scenario(3) != random_scenario(4)
    first = run_scenario(random_scenario(3))
    second = run_scenario(random_scenario(4))
    assert first.timeline != second.timeline
