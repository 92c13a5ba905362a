"""`rainctl events` against three real daemons on loopback: the timeline tells what happened.

A drain, a crash and a restart are made to happen; each node's events (asked through the
console script, as an operator would) must name them with the right reasons: the drained
node's VIPs moved for `drain`, the crashed node's for `failover`, the ring installs with who
left and who came back, and `--follow` prints events as they happen.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from rainctl.testing.ports import RAINCTL
from tests.integration.test_daemon_operate import cluster, rainctl, rainctl_json
from tests.integration.test_daemon_ring import (
    VIPS,
    Cluster,
    Daemon,
    converged,
    start_daemon,
    wait_for,
)

__all__ = ["cluster"]  # the fixture, imported for pytest


SINCE_MARGIN_S = 10.0


def events_of(daemon: Daemon, *arguments: str) -> list[dict[str, Any]]:
    result = rainctl(daemon, "events", "--json", *arguments)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def moves(events: list[dict[str, Any]], reason: str) -> dict[str, tuple[int, int]]:
    return {
        event["fields"]["vip"]: (event["fields"]["from"], event["fields"]["to"])
        for event in events
        if event["kind"] == "vip-moved" and event["fields"]["reason"] == reason
    }


def test_events_tell_drain_crash_and_restart(cluster: Cluster, tmp_path: Path) -> None:
    daemons = cluster.daemons
    logs = [daemon.log_path for daemon in daemons.values()]
    wait_for(lambda: converged(list(daemons.values())), 15.0, "a ring of 3", logs)
    first, second, third = daemons[1], daemons[2], daemons[3]

    # The start and the ring of three are in every node's timeline; sequence numbers grow.
    for daemon in daemons.values():
        events = events_of(daemon)
        assert events[0]["kind"] == "start"
        assert [e["seq"] for e in events] == sorted({e["seq"] for e in events})
        rings = [e for e in events if e["kind"] == "ring"]
        assert rings, events
        assert sorted(rings[-1]["fields"]["members"]) == [1, 2, 3]
        assert any(e["kind"] == "vip-gained" for e in events)

    # --follow on node 1 prints the drain of node 3 as it happens.
    follower = subprocess.Popen(
        [str(RAINCTL), "events", "--follow", "--json", "--socket", str(first.socket_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C's default: a suite started in the background of a script hands its
        # children SIGINT ignored, and the follower would never see the SIGINT below.
        preexec_fn=_default_sigint,  # noqa: PLW1509
    )
    try:
        time.sleep(0.5)  # its first ask answered: what follows is news
        owned_by_third = set((third.status() or {})["owned"])
        assert owned_by_third
        assert rainctl_json(second, "node", "drain", "3")["via"] == "ring"
        wait_for(lambda: (third.status() or {}).get("owned") == [], 10.0, "node 3 drained", logs)
        time.sleep(0.5)
    finally:
        follower.send_signal(signal.SIGINT)
        out, err = follower.communicate(timeout=10)
    assert follower.returncode == 0, err
    followed = [json.loads(line) for line in out.splitlines()]
    assert any(
        e["kind"] == "node-state" and e["fields"] == {"node": 3, "state": "drained"}
        for e in followed
    ), followed
    drained_moves = moves(followed, "drain")
    assert set(drained_moves) == owned_by_third, followed
    assert all(source == 3 for source, _target in drained_moves.values())
    # Node 3 itself lost them for the same reason.
    lost = [e for e in events_of(third) if e["kind"] == "vip-lost"]
    assert {e["fields"]["vip"] for e in lost} >= owned_by_third
    assert {e["fields"]["reason"] for e in lost if e["fields"]["vip"] in owned_by_third} == {
        "drain"
    }
    assert rainctl_json(second, "node", "undrain", "3")["via"] == "ring"

    # SIGKILL of node 1: the survivors' timelines say who went, which VIPs failed over.
    wait_for(lambda: bool((first.status() or {}).get("owned")), 10.0, "node 1 owning", logs)
    crashed_owned = set((first.status() or {})["owned"])
    seen_before = {survivor.node_id: events_of(survivor)[-1]["seq"] for survivor in (second, third)}
    mark_s = time.time()
    os.kill(first.process.pid, signal.SIGKILL)
    first.process.wait(timeout=5)
    wait_for(lambda: converged([second, third]), 10.0, "failover to nodes 2 and 3", logs)
    time.sleep(0.3)
    for survivor in (second, third):
        after = [e for e in events_of(survivor) if e["seq"] > seen_before[survivor.node_id]]
        gone = [e for e in after if e["kind"] == "ring" and 1 in e["fields"]["gone"]]
        assert gone, after
        failed_over = moves(after, "failover")
        assert set(failed_over) == crashed_owned, after
        assert {source for source, _target in failed_over.values()} == {1}
        # --since: the same events (and none older than asked). The CLI turns the duration
        # into a time when it has started, which on a loaded machine takes seconds: the
        # window reaches SINCE_MARGIN_S before the kill.
        recent = events_of(survivor, "--since", f"{time.time() - mark_s + SINCE_MARGIN_S:.1f}s")
        assert {e["seq"] for e in after} <= {e["seq"] for e in recent}, (after, recent)
        assert all(e["time_ms"] >= (mark_s - SINCE_MARGIN_S) * 1000 for e in recent)
    decisions = {e["kind"] for survivor in (second, third) for e in events_of(survivor)} & {
        "exclusion",
        "911",
        "regenerate",
    }
    assert decisions, "no survivor logged the failure decision"

    # Node 1 comes back: the ring's timeline shows it joining; VIPs spread back to it.
    daemons[1] = start_daemon(tmp_path / "cluster.toml", tmp_path, 1)
    logs = [daemon.log_path for daemon in daemons.values()]
    wait_for(lambda: converged(list(daemons.values())), 15.0, "node 1 back", logs)
    joined = [e for e in events_of(second) if e["kind"] == "ring" and 1 in e["fields"]["joined"]]
    assert joined
    counts = (second.status() or {})["events"]
    assert counts["kinds"]["vip-moved"] >= len(VIPS) // 3
    assert sum(row["count"] for row in counts["vip_moves"]) == counts["kinds"]["vip-moved"]
    # The same events are in the daemon's log as structured lines.
    log_text = second.log_path.read_text()
    assert "kind=vip-moved" in log_text
    assert "reason=failover" in log_text


def test_events_bad_input_is_one_line(cluster: Cluster) -> None:
    daemon = cluster.daemons[1]
    result = rainctl(daemon, "events", "--since", "ten minutes")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "--since 'ten minutes': not a duration" in result.stderr
    missing = subprocess.run(
        [str(RAINCTL), "events", "--socket", str(daemon.socket_path) + ".absent"],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert missing.returncode == 2
    assert missing.stderr.startswith("rainctl: error: cannot reach the daemon")
    assert missing.stderr.count("\n") == 1


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
