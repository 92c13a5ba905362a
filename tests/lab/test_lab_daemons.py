"""The lab's nodes run the real `rainctl daemon`: one ring, every VIP owned once, failover.

One 3-node lab (`up --daemon --profile fast`, no back-ends) for this module; the tests run in
file order and the last one takes it down. Everything is observed the way `rainctl lab
status` observes it: through the status file each node's helper rewrites every
STATUS_INTERVAL_S (docs/lab.md), so every time measured here includes up to that delay.
"""

from __future__ import annotations

import datetime
import json
import re
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from rainctl.lab import builder, demo, processes
from rainctl.lab.builder import DaemonStatus, LabStatus
from rainctl.lab.plan import lab_vips, lab_vips6
from tests.lab.conftest import DAEMON_NODES, FIGURES, NOTES, Lab

FORMATION_BOUND_S = 30.0
"""From `up`'s start: boots, Python start-up inside UML (0.3-1 s each, 2 processes per
node), the fast profile's joins. A bound, not a benchmark (docs/lab.md has the figures)."""
ARPING = ("-c", "2", "-w", "2", "-I", "eth0")
"""Two ARP requests, at most 2 s: every responder answers both."""
OUTAGE_BOUND_S = 3.0
"""The client's longest run of lost probes to a VIP of the killed node (fast: ~0.1-0.2 s)."""
FAILOVER_BOUND_S = 5.0
"""From `lab kill`: token loss or a failed hop (fast profile: < 0.3 s) plus the status
files' delay."""
POLL_S = 0.02
_INSTALLED = re.compile(r"^(\S+ \S+) INFO rainctl\.driver: ring \S+ installed: \[([0-9,]+)\]")


def wait_for(
    lab: Lab, condition: Callable[[LabStatus], bool], bound_s: float, what: str
) -> tuple[LabStatus, float]:
    """Poll the lab's status until `condition`; the status and the monotonic time it held."""
    deadline = time.monotonic() + bound_s
    while True:
        status = builder.status(lab.state_dir)
        if condition(status):
            return status, time.monotonic()
        if time.monotonic() > deadline:
            logs = {
                d.node.name: _tail(lab.state_dir / "nodes" / d.node.name / "daemon.log")
                for d in status.daemons
            }
            raise AssertionError(f"{what}: not within {bound_s:g} s; {status.daemons}; {logs}")
        time.sleep(POLL_S)


def _tail(path: Path) -> str:
    try:
        return " | ".join(path.read_text(encoding="utf-8").splitlines()[-5:])
    except OSError:
        return "(no log)"


def agree(daemons: Sequence[DaemonStatus], members: set[int], vips: set[str]) -> bool:
    """Every daemon answers, they report one ring with exactly `members`, and each of
    `vips` is owned by exactly one of them."""
    if not daemons or any(d.state != "up" or d.ring is None for d in daemons):
        return False
    if len({json.dumps(d.ring, sort_keys=True) for d in daemons}) != 1:
        return False
    if any(set(d.members) != members or len(d.members) != len(members) for d in daemons):
        return False
    owned = Counter(vip for d in daemons for vip in d.owned)
    return set(owned) == vips and set(owned.values()) == {1}


def settled(lab: Lab, status: LabStatus, members: set[int] | None = None) -> bool:
    """One ring of `members` (default: every node) owning every VIP once, each at its home
    (the lab homes VIP k of each family on node k mod n + 1): the hand-backs after
    formation are over, and nothing moves without a fault."""
    plan = builder.status(lab.state_dir).plan
    homes = {
        str(vip): index % len(plan.nodes) + 1
        for family in (lab_vips(plan), lab_vips6(plan))
        for index, vip in enumerate(family)
    }
    everyone = members or set(range(1, len(plan.nodes) + 1))
    if not agree(status.daemons, everyone, set(homes)):
        return False
    return all(homes[vip] == d.node_id for d in status.daemons for vip in d.owned)


def all_vips(lab: Lab) -> set[str]:
    return {str(vip) for vip in lab_vips(builder.status(lab.state_dir).plan)}


def test_daemons_form_one_ring_owning_every_vip_once(daemon_lab: Lab) -> None:
    vips = all_vips(daemon_lab)
    assert len(vips) == 2 * DAEMON_NODES
    status, formed = wait_for(
        daemon_lab,
        lambda s: agree(s.daemons, set(range(1, DAEMON_NODES + 1)), vips),
        FORMATION_BOUND_S - (time.monotonic() - daemon_lab.started),
        "one ring of every node owning every VIP once",
    )
    formation_s = formed - daemon_lab.started
    FIGURES[f"ring of {DAEMON_NODES} formed, every VIP owned once (from `up` start)"] = formation_s
    print(f"ring of {DAEMON_NODES} formed {formation_s:.2f} s after `lab up` started")
    assert formation_s < FORMATION_BOUND_S
    assert status.profile == "fast"
    for daemon in status.daemons:
        assert daemon.phase in {"member", "passing", "holding"}, daemon
        assert daemon.rss_kb is not None, daemon
        assert daemon.rss_kb > 0, daemon
        assert daemon.document is not None
        assert daemon.document["data_plane"] == builder.GUEST_DATA_PLANE
        log = (daemon_lab.state_dir / "nodes" / daemon.node.name / "daemon.log").read_text()
        assert f"node {daemon.node_id} incarnation 1 listening on {daemon.node.front}:7400" in log
    key = daemon_lab.state_dir / builder.KEY_FILE
    assert key.stat().st_mode & 0o777 == 0o600
    rss = sorted(d.rss_kb / 1024 for d in status.daemons if d.rss_kb is not None)
    helpers = sorted(
        json.loads((daemon_lab.state_dir / "nodes" / d.node.name / "status.json").read_text())[
            "agent_rss_kb"
        ]
        / 1024
        for d in status.daemons
    )
    NOTES.append(
        f"RSS inside UML: daemon {rss[0]:.0f}-{rss[-1]:.0f} MB, "
        f"status helper {helpers[0]:.0f}-{helpers[-1]:.0f} MB"
    )
    NOTES.append(f"host CPU per node (daemon + status helper, idle ring): {_cpu(status)}")


def _cpu(status: LabStatus, seconds: float = 2.0) -> str:
    """Host CPU of each node's UML processes over `seconds`, as % of one core."""

    def ticks(pgid: int) -> int:
        total = 0
        for pid in processes.process_group(pgid):
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])
        return total

    groups = [node.process.pid for node in status.nodes if node.process is not None]
    before = [ticks(pgid) for pgid in groups]
    time.sleep(seconds)
    after = [ticks(pgid) for pgid in groups]
    shares = sorted((b - a) / 100 / seconds * 100 for a, b in zip(before, after, strict=True))
    return f"{shares[0]:.0f}-{shares[-1]:.0f} % of a core"


def test_lab_status_shows_the_daemons(daemon_lab: Lab) -> None:
    code, output = daemon_lab.rainctl("status", "--json")
    assert code == 0, output
    document = json.loads(output)
    assert document["profile"] == "fast"
    assert [d["node_id"] for d in document["daemons"]] == list(range(1, DAEMON_NODES + 1))
    for daemon in document["daemons"]:
        assert daemon["state"] == "up", daemon
        assert sorted(daemon["members"]) == list(range(1, DAEMON_NODES + 1))
        assert daemon["status"]["ring"] == daemon["ring"]
    code, output = daemon_lab.rainctl("status")
    assert code == 0, output
    assert "rainctl daemons (profile fast)" in output
    for daemon in document["daemons"]:
        assert daemon["node"] in output


def test_each_vip_answers_the_client_from_its_owners_mac(daemon_lab: Lab) -> None:
    status, _ = wait_for(daemon_lab, lambda s: settled(daemon_lab, s), FORMATION_BOUND_S, "settled")
    vips = all_vips(daemon_lab)
    started = time.monotonic()
    watchers = builder.start_watchers(daemon_lab.state_dir)
    demo.wait_for_probes(watchers, vips, since=time.time())
    FIGURES["prober started, every VIP answering"] = time.monotonic() - started
    neighbours = demo.client_neighbours(status)
    macs = demo.owner_macs(status)
    assert set(macs) == vips
    for vip in sorted(vips):
        assert neighbours.get(vip) == macs[vip], (vip, neighbours, macs)
    # ARP: exactly the owner answers (the others hold the VIP on rainctl0, arp_ignore=1).
    arpings = {
        vip: subprocess.Popen(
            ["ip", "netns", "exec", status.plan.client.namespace, "arping", *ARPING, vip],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for vip in sorted(vips)
    }
    for vip, process in arpings.items():
        output, _ = process.communicate(timeout=10)
        responders = {mac.lower() for mac in re.findall(r"\[([0-9A-Fa-f:]{17})\]", output)}
        assert responders == {macs[vip]}, (vip, output)
    code, output = daemon_lab.rainctl("status", "--json")
    assert code == 0, output
    for daemon in json.loads(output)["daemons"]:
        assert daemon["status"]["data_plane"] == builder.GUEST_DATA_PLANE


def test_kill_of_a_vip_owner_moves_its_vips_to_the_survivors(daemon_lab: Lab) -> None:
    """The demo's core path: the client's outage and the new owner's GARP on br0."""
    vips = all_vips(daemon_lab)
    vip = min(vips)
    status, _ = wait_for(daemon_lab, lambda s: settled(daemon_lab, s), FORMATION_BOUND_S, "settled")
    victim = next(d for d in status.daemons if vip in d.owned)
    survivors = {d.node_id for d in status.daemons} - {victim.node_id}
    watch = daemon_lab.state_dir / builder.WATCH_DIR
    watchers = builder.Watchers(watch / builder.PROBE_LOG, watch / builder.GARP_LOG)
    result = demo.failover(daemon_lab.state_dir, watchers, vip)
    assert result.victim == victim.node.name
    FIGURES[f"failover seen through the status files (kill of {vip}'s owner)"] = result.agreed_s
    installed = _ring_installed_after(daemon_lab, survivors, result.killed_at)
    NOTES.append(f"failover in the daemons' logs (ring of 2 installed after the kill): {installed}")
    assert result.agreed_s < FAILOVER_BOUND_S
    status = builder.status(daemon_lab.state_dir)
    assert agree([d for d in status.daemons if d.node_id in survivors], survivors, vips)
    dead = next(d for d in status.daemons if d.node_id == victim.node_id)
    assert dead.state == "stale"
    assert {o.vip for o in result.vips} == set(victim.owned)
    for outcome in result.vips:
        print(
            f"{outcome.vip}: {outcome.old_owner} -> {outcome.new_owner}, client outage "
            f"{outcome.outage_ms} ms ({outcome.lost} probes lost), GARP after {outcome.garp_ms} ms"
        )
        assert outcome.new_owner is not None
        assert outcome.new_owner != victim.node.name
        assert outcome.outage_ms is not None, f"{outcome.vip} never answered the client again"
        assert outcome.outage_ms < OUTAGE_BOUND_S * 1000, outcome
        assert outcome.garp_ms is not None, f"no GARP for {outcome.vip} on br0"
        assert outcome.garp_mac == outcome.new_owner_mac, outcome
        assert outcome.client_mac == outcome.new_owner_mac, outcome
    first = next(o for o in result.vips if o.vip == vip)
    assert first.outage_ms is not None
    assert first.garp_ms is not None
    # Every survivor's timeline (its log's structured event lines) names the failover.
    for node in status.daemons:
        if node.node_id in survivors:
            log = (daemon_lab.state_dir / "nodes" / node.node.name / "daemon.log").read_text()
            for moved in victim.owned:
                line = rf"kind=vip-moved .* vip={re.escape(moved)} from={victim.node_id} to=\d+ "
                assert re.search(line + "reason=failover", log), (node.node_id, moved)
    FIGURES[f"client-observed outage of {vip} (10 ms ICMP probes)"] = first.outage_ms / 1000
    FIGURES[f"first GARP for {vip} on br0 after the kill"] = first.garp_ms / 1000
    assert (
        demo.problems(
            demo.Trial(profile="fast", nodes=DAEMON_NODES, ring_s=0.0, before={}, failover=result)
        )
        == []
    )


def _ring_installed_after(lab: Lab, survivors: set[int], killed_at: float) -> str:
    """When the survivors' logs say they installed a ring of just themselves, relative to
    the kill (the guests' clocks are the host's); best effort, for the figures."""
    delays = []
    for node in builder.status(lab.state_dir).daemons:
        if node.node_id not in survivors:
            continue
        log = (lab.state_dir / "nodes" / node.node.name / "daemon.log").read_text()
        for line in log.splitlines():
            match = _INSTALLED.match(line)
            if match and {int(n) for n in match.group(2).split(",")} == survivors:
                moment = datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")
                delays.append(moment.timestamp() - killed_at)
    if not delays or not all(0 <= delay < FAILOVER_BOUND_S for delay in delays):
        return "n/a"
    return "/".join(f"{delay:.2f} s" for delay in sorted(delays))


def test_daemon_lab_down_leaves_nothing(daemon_lab: Lab) -> None:
    daemon_lab.down_leaves_nothing()
