"""`rainctl bench failover` end to end, small: 3 nodes, 2 kills of rainctl (fast), 2 of
keepalived at advert_int 0.1, each in its own lab that the command builds and takes down.

It checks what the benchmark must get right, not how fast anything is (the figures go to the
"lab figures" summary): every kill was measured and recovered, rainctl's cases come from the
wire log, keepalived's adverts are on the wire at the configured rate (6 VRRP instances
every 0.1 s), CPU and memory were read in every guest, and no lab is left behind.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from typer.testing import CliRunner

from rainctl.cli.app import app
from rainctl.lab import builder, probe
from tests.bench import failover_phases
from tests.lab.conftest import FIGURES, NOTES, _require_lab_machine
from tests.tags import RUN_TAG


def test_bench_failover_small_run(tmp_path: Path) -> None:
    _require_lab_machine()
    state_dir = tmp_path / "bench"
    output = tmp_path / "bench.json"
    arguments = [
        "bench", "failover", "--trials", "2", "--nodes", "3", "--profile", "fast",
        "--peer", "keepalived", "--advert-int", "0.1", "--rest", "2",
        "--prefix", f"rtb{RUN_TAG}", "--state-dir", str(state_dir),
        "--save", str(output), "--logs", str(tmp_path / "logs"),
    ]  # fmt: skip
    try:
        result = CliRunner().invoke(app, arguments)
    finally:
        builder.down(state_dir)
    assert result.exit_code == 0, result.output
    assert "keepalived 0.1" in result.output
    document = json.loads(output.read_text(encoding="utf-8"))
    FIGURES["bench failover (2 + 2 kills, 2 labs)"] = document["wall_s"]
    rainctl, peer = document["systems"]
    assert (rainctl["system"], peer["system"]) == ("rainctl fast", "keepalived 0.1")
    for system in (rainctl, peer):
        assert len(system["trials"]) == 2
        for trial in system["trials"]:
            assert trial["outage_ms"] is not None, trial
            assert trial["vips"], trial
        rest = system["rest"]
        assert len(rest["cpu_percent"]) == 3, rest
        assert all(kb > 0 for kb in rest["rss_kb"]), rest
        assert rest["control_packets_per_s"] > 0, rest
    assert {t["case"] for t in rainctl["trials"]} <= {"holder", "non-holder"}
    assert {t["case"] for t in peer["trials"]} == {"master"}
    # 6 VIPs = 6 VRRP instances, each master advertising every 0.1 s: about 60 per second.
    assert 30 <= peer["rest"]["control_packets_per_s"] <= 90, peer["rest"]
    for row in document["rows"]:
        if row["case"] == "all":
            NOTES.append(
                f"bench failover {row['system']}: outage p50 {row['p50_ms']:.0f} ms, max "
                f"{row['max_ms']:.0f} ms; {row['control_packets_per_s']:.0f} control packets/s"
            )
    assert not (state_dir / builder.STATE_FILE).exists()
    # The kept logs (every node's boots appended) give each rainctl kill's phases.
    kept = tmp_path / "logs" / "rainctl-fast"
    assert sorted(p.name for p in (kept / "nodes").iterdir()) == [
        f"rtb{RUN_TAG}-node{n}" for n in (1, 2, 3)
    ]
    assert (tmp_path / "logs" / "keepalived-0.1" / "watch" / "probe.log").stat().st_size > 0
    lines = failover_phases.read_daemon_logs(kept)
    garps = probe.garps(kept / "watch" / "garp.log")
    answers = probe.answers(kept / "watch" / "probe.log")
    macs = failover_phases.victim_macs(garps, lines)
    for trial in rainctl["trials"]:
        phases = failover_phases.trial_phases(
            trial, lines, garps, answers, macs.get(trial["victim"])
        )
        assert None not in phases.values(), (trial, phases)
        assert 0 < phases["decided"] <= phases["owned"] <= phases["applied"], phases  # type: ignore[operator]
        assert phases["applied"] <= phases["announced"], phases  # type: ignore[operator]


SOAK_STOP_BOUND_S = 60.0
"""A bound, not a benchmark: the lab's `down` takes about a second (docs/lab.md)."""


def _recorded_pids(state_dir: Path, *, until_started: str) -> list[int]:
    """The PIDs of the processes the lab's state file records, once it records
    `until_started` (the soak starts its hogs just after it says "soaking")."""
    deadline = time.monotonic() + SOAK_STOP_BOUND_S
    while True:
        recorded = json.loads((state_dir / builder.STATE_FILE).read_text())["processes"]
        if until_started in recorded or time.monotonic() > deadline:
            assert until_started in recorded, recorded
            return [entry["pid"] for entry in recorded.values()]
        time.sleep(0.2)


def test_sigterm_takes_a_running_benchmarks_lab_down(tmp_path: Path) -> None:
    """`rainctl bench soak` ended by SIGTERM mid-run (as `kill`, `timeout` or a cancelled CI
    job do) takes its lab down: guests, hog, prober, watchers, namespaces, drop rule. It
    once died on the spot and left all of it running."""
    _require_lab_machine()
    state_dir = tmp_path / "soak"
    prefix = f"rts{RUN_TAG}"
    arguments = [
        "bench", "soak", "--duration", "600", "--nodes", "2", "--peer", "none",
        "--hogs", "1", "--loss-permille", "10", "--prefix", prefix,
        "--state-dir", str(state_dir),
    ]  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-m", "rainctl", *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        output = []
        for line in process.stdout:  # the lab is up and the stress runs when it says so
            output.append(line)
            if "soaking" in line:
                break
        assert "soaking" in output[-1], "".join(output)
        started = _recorded_pids(state_dir, until_started="cpu-hog-0")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=SOAK_STOP_BOUND_S) == 128 + signal.SIGTERM
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        builder.down(state_dir)
    assert not (state_dir / builder.STATE_FILE).exists()
    assert not [pid for pid in started if Path(f"/proc/{pid}").exists()]
    namespaces = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=True, timeout=10
    ).stdout
    assert prefix not in namespaces
