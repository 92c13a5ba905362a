"""`rainctl bench failover` end to end, small: 3 nodes, 2 kills of rainctl (fast), 2 of
keepalived at advert_int 0.1, each in its own lab that the command builds and takes down.

It checks what the benchmark must get right, not how fast anything is (the figures go to the
"lab figures" summary): every kill was measured and recovered, rainctl's cases come from the
wire log, keepalived's adverts are on the wire at the configured rate (6 VRRP instances
every 0.1 s), CPU and memory were read in every guest, and no lab is left behind.
"""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from rainctl.cli.app import app
from rainctl.lab import builder
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
        "--save", str(output),
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
