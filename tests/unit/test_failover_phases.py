"""tests/bench/failover_phases.py: a failover's phases read off a bench run's kept logs."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest

from rainctl.lab import probe
from tests.bench import failover_phases

KILLED_AT = 1796675435.0


def _stamp(offset_s: float) -> str:
    moment = datetime.datetime.fromtimestamp(KILLED_AT + offset_s, datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S,") + f"{moment.microsecond // 1000:03d}"


def _write_run(tmp_path: Path) -> tuple[Path, Path]:
    system = tmp_path / "logs" / "rainctl-fast"
    node2 = system / "nodes" / "rbf-node2"
    node2.mkdir(parents=True)
    (system / "nodes" / "rbf-node3").mkdir()
    (system / "watch").mkdir()
    lines = [
        (-5.0, "rainctl.reconciler", "announced: 198.18.0.101"),
        (0.080, "rainctl.events", 'event seq=4 kind=exclusion msg="exclude of node 3" node=3'),
        (0.081, "rainctl.events", 'event seq=5 kind=ring msg="ring" ring=5.1 members=2 gone=3'),
        (0.082, "rainctl.events", 'event seq=6 kind=vip-gained msg="owns" vip=198.18.0.102'),
        (0.083, "rainctl.driver", "owned VIPs: 198.18.0.101,198.18.0.102"),
        (0.090, "rainctl.reconciler", "owned VIPs applied: 198.18.0.101,198.18.0.102"),
        (0.091, "rainctl.reconciler", "announced: 198.18.0.102"),
    ]
    (node2 / "daemon.log").write_text(
        "".join(f"{_stamp(at)} INFO {logger}: {text}\n" for at, logger, text in lines)
        + "Traceback (most recent call last):\n"
    )
    # The victim's own log gives its MAC (its GARPs before the kill), never a phase.
    (system / "nodes" / "rbf-node3" / "daemon.log").write_text(
        f"{_stamp(-3.0)} INFO rainctl.reconciler: announced: 198.18.0.102\n"
        f"{_stamp(0.001)} INFO rainctl.reconciler: announced: 198.18.0.102\n"
    )
    (system / "watch" / "garp.log").write_text(
        f"G {KILLED_AT - 5.0 + 0.001} 02:00:00:00:02:00 198.18.0.101 1\n"
        f"G {KILLED_AT - 3.0 + 0.001} 02:00:00:00:03:00 198.18.0.102 1\n"
        f"G {KILLED_AT + 0.050} 02:00:00:00:03:00 198.18.0.102 1\n"
        f"G {KILLED_AT + 0.092} 02:00:00:00:02:00 198.18.0.102 1\n"
    )
    (system / "watch" / "probe.log").write_text(
        f"S {KILLED_AT - 0.010} 198.18.0.102 1\nR {KILLED_AT - 0.009} 198.18.0.102 1\n"
        f"S {KILLED_AT + 0.005} 198.18.0.102 2\n"
        f"S {KILLED_AT + 0.095} 198.18.0.102 3\nR {KILLED_AT + 0.096} 198.18.0.102 3\n"
    )
    trial = {
        "number": 1,
        "case": "non-holder",
        "victim": "rbf-node3",
        "vips": ["198.18.0.102"],
        "outage_ms": 90.0,
        "lost_probes": 9,
        "killed_at": KILLED_AT,
    }
    results = tmp_path / "run.json"
    results.write_text(
        json.dumps({"systems": [{"system": "rainctl fast", "kind": "rainctl", "trials": [trial]}]})
    )
    return results, tmp_path / "logs"


def test_phases_are_read_from_the_survivors_logs(tmp_path: Path) -> None:
    results, logs = _write_run(tmp_path)
    system = logs / "rainctl-fast"
    lines = failover_phases.read_daemon_logs(system)
    garps = probe.garps(system / "watch" / "garp.log")
    trial = json.loads(results.read_text())["systems"][0]["trials"][0]
    macs = failover_phases.victim_macs(garps, lines)
    assert macs == {"rbf-node2": "02:00:00:00:02:00", "rbf-node3": "02:00:00:00:03:00"}
    phases = failover_phases.trial_phases(
        trial,
        lines,
        garps,
        probe.answers(system / "watch" / "probe.log"),
        macs["rbf-node3"],
    )
    assert phases == pytest.approx(
        {
            "decided": 80,
            "ring": 81,
            "owned": 83,
            "applied": 90,
            "announced": 91,
            "garp": 92,
            "answered": 96,
            "outage": 90,
        },
        abs=1.5,
    )


def test_main_prints_every_phase_and_the_gaps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results, logs = _write_run(tmp_path)
    failover_phases.main([str(results), str(logs)])
    printed = capsys.readouterr().out
    decided = next(line for line in printed.splitlines() if line.startswith("decided"))
    assert "80 / 80 / 80 (1)" in decided
    assert "8 / 8 / 8 (1)" in printed  # announced - owned
    assert "5 / 5 / 5 (1)" in printed  # answered - announced
    assert "#1 non-holder rbf-node3: decided 80 ring 81 owned 83 applied 90" in printed
