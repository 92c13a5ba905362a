"""Client traffic through IPVS (DR) to the back-ends, with faults: freeze, partition, kill.

One 3-node lab with daemons (profile lan: conftest.DR_PROFILE) and 2 DR back-ends for this
module; the tests run in file order (a partition needs all three nodes, so the kill comes
last) and the last one takes the lab down. The client's traffic comes from the resident
tools of rainctl.lab.traffic in the client namespace; the daemons are seen through their
status files (up to STATUS_INTERVAL_S late) and reached through `lab ctl`.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from rainctl.lab import builder, probe, traffic
from rainctl.lab.builder import DaemonStatus, LabStatus
from rainctl.lab.plan import ECHO_PORT, lab_vips
from tests.lab.conftest import DR_NODES, FIGURES, NOTES, Lab
from tests.lab.test_lab_daemons import agree, wait_for

FORMATION_BOUND_S = 40.0
"""From `up`'s start until one ring of every node owns every VIP once (bound, not figure)."""
CHANGE_BOUND_S = 15.0
"""A fault or repair until the daemons agree again (lan profile: about 1 s)."""
RECOVERY_BOUND_S = 15.0
"""A fault until every VIP answers the client's HTTP loop again."""
OUTAGE_BOUND_S = 3.0
REQUEST_TIMEOUT_S = 0.5
INTERVAL_S = 0.05
ECHO_TIMEOUT_S = 10.0
ALL = set(range(1, DR_NODES + 1))


def _vips(lab: Lab) -> list[str]:
    return [str(vip) for vip in lab_vips(builder.status(lab.state_dir).plan)]


def applied(daemons: Sequence[DaemonStatus]) -> bool:
    """Every daemon holds in the kernel exactly the VIPs it owns."""
    return all(
        sorted((d.document or {}).get("applied_owned") or []) == sorted(d.owned) for d in daemons
    )


def in_sync(daemons: Sequence[DaemonStatus]) -> bool:
    """Every daemon's IPVS data plane reports the kernel in sync with its config."""
    return all(((d.document or {}).get("ipvs") or {}).get("in_sync") is True for d in daemons)


def _formed(lab: Lab) -> LabStatus:
    vips = set(_vips(lab))
    status, _ = wait_for(
        lab,
        lambda s: agree(s.daemons, ALL, vips) and applied(s.daemons),
        max(1.0, FORMATION_BOUND_S - (time.monotonic() - lab.started)),
        "one ring of every node owning every VIP once, applied",
    )
    return status


def _warm_up(lab: Lab, vips: Sequence[str]) -> None:
    """Until every VIP has answered one HTTP request (the directors' services are there)."""
    log = builder.start_traffic(lab.state_dir, "warm-up", "http", vips, interval_s=0.1,
                                timeout_s=1.0)  # fmt: skip
    deadline = time.monotonic() + RECOVERY_BOUND_S
    try:
        while True:
            summary = traffic.summarize(traffic.read_log(log))
            if all(vip in summary and summary[vip].ok for vip in vips):
                return
            assert time.monotonic() < deadline, f"not every VIP answers HTTP: {summary}"
            time.sleep(0.1)
    finally:
        builder.stop_traffic(lab.state_dir, "warm-up")


def _only(daemons: Sequence[DaemonStatus], ids: set[int]) -> list[DaemonStatus]:
    return [daemon for daemon in daemons if daemon.node_id in ids]


def wait_recovered(log: Path, vips: Sequence[str], since: float) -> float:
    """Until the last settled request to every VIP sent at least 1 s after `since` succeeded
    (a request is settled once its timeout has passed); the wall-clock time it held."""
    deadline = time.monotonic() + RECOVERY_BOUND_S
    while True:
        settled = time.time() - REQUEST_TIMEOUT_S - 0.2
        last: dict[str, traffic.Event] = {}
        for event in traffic.read_log(log):
            if since <= event.at <= settled:
                last[event.target] = event
        if settled > since + 1.0 and all(vip in last and last[vip].result == "OK" for vip in vips):
            return settled
        if time.monotonic() > deadline:
            raise AssertionError(
                f"the client's requests did not all succeed again within {RECOVERY_BOUND_S} s: "
                f"{ {vip: last.get(vip) for vip in vips} }"
            )
        time.sleep(0.1)


def stop_without_failures(
    lab: Lab, name: str, log: Path, *, since: float, until: float
) -> dict[str, traffic.Summary]:
    """Stop the traffic `name`; its per-VIP summary in [since, until], which must hold no
    failed request."""
    builder.stop_traffic(lab.state_dir, name)
    summary = traffic.summarize(traffic.read_log(log), since=since, until=until)
    failed = {vip: (s.failed, dict(s.reasons)) for vip, s in summary.items() if s.failed}
    assert failed == {}, failed
    return summary


def test_every_node_programs_ipvs(dr_lab: Lab) -> None:
    """The daemons' IPVS data plane: every service of the config on every node, in sync."""
    _formed(dr_lab)
    status, _ = wait_for(dr_lab, lambda s: in_sync(s.daemons), CHANGE_BOUND_S, "IPVS in sync")
    for daemon in status.daemons:
        assert daemon.document is not None
        services = daemon.document["ipvs"]["services"]
        assert len(services) == 2 * len(_vips(dr_lab)), services


def test_http_through_every_vip_is_spread_over_the_backends(dr_lab: Lab) -> None:
    _formed(dr_lab)
    vips = _vips(dr_lab)
    _warm_up(dr_lab, vips)
    drops_before = builder.backend_listen_drops(dr_lab.state_dir)
    log = builder.start_traffic(dr_lab.state_dir, "spread", "http", vips, interval_s=0.1,
                                timeout_s=2.0)  # fmt: skip
    echo_target = f"{vips[0]}:{ECHO_PORT}"
    echo_log = builder.start_traffic(dr_lab.state_dir, "echo", "echo", [echo_target],
                                     interval_s=0.1, timeout_s=2.0)  # fmt: skip
    deadline = time.monotonic() + 20.0
    while True:
        summary = traffic.summarize(traffic.read_log(log))
        echoes = traffic.summarize(traffic.read_log(echo_log)).get(echo_target)
        # mh hashes the client's source port: 10 requests all land on one of 2 back-ends
        # once in 512, so the spread is awaited, not judged after a fixed count.
        enough = all(
            summary.get(vip) and summary[vip].ok >= 10 and len(summary[vip].backends) == 2
            for vip in vips
        )
        if enough and echoes is not None and echoes.ok >= 10:
            break
        assert time.monotonic() < deadline, (summary, echoes)
        time.sleep(0.1)
    builder.stop_traffic(dr_lab.state_dir, "spread")
    builder.stop_traffic(dr_lab.state_dir, "echo")
    summary = traffic.summarize(traffic.read_log(log))
    for vip in vips:
        assert summary[vip].failed == 0, (vip, summary[vip])
        assert set(summary[vip].backends) == {"backend1", "backend2"}, (vip, summary[vip])
    echoes = traffic.summarize(traffic.read_log(echo_log))[echo_target]
    assert (echoes.connects, echoes.failed) == (1, 0), echoes
    # The back-ends never turned a connection away (a full accept queue costs the client a
    # 1 s SYN retry: requests lost to the lab rather than to the front nodes).
    assert builder.backend_listen_drops(dr_lab.state_dir) == drops_before
    assert set(drops_before) == {"backend1", "backend2"}
    spread = {name: sum(s.backends[name] for s in summary.values()) for name in ("backend1",
              "backend2")}  # fmt: skip
    NOTES.append(
        f"DR: {sum(s.ok for s in summary.values())} HTTP requests through {len(vips)} VIPs, "
        f"none failed; answered by {spread}; {echoes.ok} echoes on one connection"
    )


def test_ctl_asks_a_daemon_inside_its_node(dr_lab: Lab) -> None:
    started = time.monotonic()
    code, output = dr_lab.rainctl("ctl", "2", "status")
    FIGURES["lab ctl round trip (status)"] = time.monotonic() - started
    assert code == 0, output
    document = json.loads(output)
    assert document["node_id"] == 2
    assert {m["node_id"] for m in document["members"]} == ALL
    node1 = builder.status(dr_lab.state_dir).plan.nodes[0].name
    assert builder.control(dr_lab.state_dir, node1, "status")["node_id"] == 1
    code, output = dr_lab.rainctl("ctl", node1, "nonesuch")
    assert code == 2
    assert output.startswith(f"rainctl: error: node {node1}: nonesuch: ")
    assert output.count("\n") == 1
    code, output = dr_lab.rainctl("ctl", "9", "status")
    assert code == 2
    assert "no node '9' in the lab" in output


def test_reload_changes_one_real_server_and_touches_nothing_else(dr_lab: Lab) -> None:
    """A reload (the SIGHUP path, through `lab ctl`) under HTTP traffic: with the config
    unchanged no node changes anything in IPVS; with one real server's weight changed each
    node makes exactly that one update; no request fails."""
    status = _formed(dr_lab)
    wait_for(dr_lab, lambda s: in_sync(s.daemons), CHANGE_BOUND_S, "IPVS in sync")
    vips = _vips(dr_lab)
    config = dr_lab.state_dir / builder.CONFIG_FILE
    original = config.read_text(encoding="utf-8")

    def operations() -> dict[int, int]:
        answers = {
            d.node_id: builder.control(dr_lab.state_dir, str(d.node_id), "status")
            for d in status.daemons
        }
        return {node: answer["ipvs"]["operations"] for node, answer in answers.items()}

    def reload_everywhere() -> None:
        for daemon in status.daemons:
            answer = builder.control(dr_lab.state_dir, str(daemon.node_id), "reload")
            assert answer["reloaded"] is True, answer

    log = builder.start_traffic(dr_lab.state_dir, "reload", "http", vips,
                                interval_s=INTERVAL_S, timeout_s=REQUEST_TIMEOUT_S)  # fmt: skip
    started = time.time()
    try:
        before = operations()
        reload_everywhere()
        time.sleep(2.0)  # more than one reconciler pass
        assert operations() == before
        # The second real server (backend2) of the first VIP's port-80 service: weight 0.
        service = original.index(f'vip = "{vips[0]}"\nport = 80\n')
        second = original.index("weight = 1", original.index("weight = 1", service) + 1)
        changed = original[:second] + "weight = 0" + original[second + len("weight = 1") :]
        config.write_text(changed, encoding="utf-8")
        reload_everywhere()
        wait_for(
            dr_lab,
            lambda _: operations() == {node: count + 1 for node, count in before.items()},
            CHANGE_BOUND_S,
            "one IPVS update on every node",
        )
    finally:
        config.write_text(original, encoding="utf-8")
    reload_everywhere()
    settled = wait_recovered(log, vips, started)
    summary = stop_without_failures(dr_lab, "reload", log, since=started, until=settled)
    NOTES.append(
        "reload under 50 ms HTTP requests: unchanged config 0 IPVS operations, one weight "
        f"changed 1 per node; {sum(s.ok for s in summary.values())} requests, none failed"
    )


def _owner(status: LabStatus, vip: str) -> DaemonStatus:
    return next(d for d in status.daemons if vip in d.owned)


def test_freeze_of_a_vip_owner_then_thaw(dr_lab: Lab) -> None:
    status = _formed(dr_lab)
    vips = _vips(dr_lab)
    victim = _owner(status, vips[0])
    survivors = ALL - {victim.node_id}
    log = builder.start_traffic(dr_lab.state_dir, "freeze", "http", vips,
                                interval_s=INTERVAL_S, timeout_s=REQUEST_TIMEOUT_S)  # fmt: skip
    time.sleep(1.0)
    frozen_at = time.time()
    builder.freeze_node(dr_lab.state_dir, victim.node.name)
    wait_for(
        dr_lab,
        lambda s: agree(_only(s.daemons, survivors), survivors, set(vips)),
        CHANGE_BOUND_S,
        "the survivors of a freeze owning every VIP",
    )
    recovered = wait_recovered(log, vips, frozen_at)
    thawed_at = time.time()
    started = time.monotonic()
    builder.thaw_node(dr_lab.state_dir, victim.node.name)
    _, rejoined = wait_for(
        dr_lab, lambda s: agree(s.daemons, ALL, set(vips)), 30.0, "a ring of 3 after the thaw"
    )
    FIGURES["thaw until a ring of 3 owns every VIP (status files)"] = rejoined - started
    wait_recovered(log, vips, thawed_at)
    builder.stop_traffic(dr_lab.state_dir, "freeze")
    events = traffic.read_log(log)
    during = traffic.summarize(events, since=frozen_at - 0.2, until=recovered)
    moved = [vip for vip in vips if vip in victim.owned]
    for vip in vips:
        if vip not in moved:
            assert during[vip].failed == 0, (vip, during[vip])
    worst = max(during[vip].outage_s for vip in moved)
    assert worst < OUTAGE_BOUND_S, during
    FIGURES[f"client HTTP outage, freeze of {vips[0]}'s owner (worst of its VIPs)"] = worst
    after = traffic.summarize(events, since=thawed_at - 0.2)
    failures = ", ".join(f"{vip} {after[vip].failed}" for vip in vips if after[vip].failed)
    NOTES.append(f"thaw of the frozen owner, failed client HTTP requests: {failures or 'none'}")


def test_partition_minority_releases_and_heal_reannounces(dr_lab: Lab) -> None:
    try:
        _partition_and_heal(dr_lab)
    finally:
        # A failure part-way must not leave the session's lab cut for the tests after it.
        builder.heal(dr_lab.state_dir)


def _partition_and_heal(dr_lab: Lab) -> None:
    status = _formed(dr_lab)
    vips = _vips(dr_lab)
    garp_log = builder.start_garp_reader(dr_lab.state_dir)
    log = builder.start_traffic(dr_lab.state_dir, "partition", "http", vips,
                                interval_s=INTERVAL_S, timeout_s=REQUEST_TIMEOUT_S)  # fmt: skip
    time.sleep(0.5)
    started = time.monotonic()
    cut_at = time.time()
    code, output = dr_lab.rainctl("partition", "1,2/3")
    assert code == 0, output
    names = [node.name for node in status.plan.nodes]
    assert output == f"partitioned: {names[0]},{names[1]} / {names[2]}\n"

    def split(s: LabStatus) -> bool:
        minority = next(d for d in s.daemons if d.node_id == 3)
        return (
            minority.state == "up"
            and minority.document is not None
            and minority.document.get("has_quorum") is False
            and minority.owned == ()
            and agree(_only(s.daemons, {1, 2}), {1, 2}, set(vips))
        )

    _, split_at = wait_for(dr_lab, split, CHANGE_BOUND_S, "node 3 released, 1 and 2 own all")
    FIGURES["partition {1,2}/{3}: node 3 released, {1,2} own every VIP"] = split_at - started
    wait_recovered(log, vips, cut_at)
    healed_at = time.time()
    started = time.monotonic()
    code, output = dr_lab.rainctl("heal")
    assert (code, output) == (0, "healed\n")
    status, merged = wait_for(
        dr_lab, lambda s: agree(s.daemons, ALL, set(vips)), 30.0, "a ring of 3 after the heal"
    )
    FIGURES["heal: a ring of 3 owns every VIP"] = merged - started
    owners = {vip: d.node.nics[0].mac for d in status.daemons for vip in d.owned}
    deadline = time.monotonic() + 5.0
    while True:
        seen = {(mac, vip) for at, mac, vip in probe.garps(garp_log) if at >= healed_at}
        if all((owners[vip], vip) in seen for vip in vips) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert all((owners[vip], vip) in seen for vip in vips), (owners, seen)
    wait_recovered(log, vips, healed_at)
    builder.stop_traffic(dr_lab.state_dir, "partition")
    summary = traffic.summarize(traffic.read_log(log), since=cut_at - 0.2)
    worst = max(s.outage_s for s in summary.values())
    FIGURES["client HTTP outage around partition and heal (worst VIP)"] = worst
    links = subprocess.run(
        ["ip", "-n", status.plan.switch_namespace, "-o", "link", "show"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "br0g1" not in links
    assert "br1g2" not in links


def test_drain_moves_vips_off_a_node_without_a_failed_request(dr_lab: Lab) -> None:
    """`lab ctl` drain through another node (via the ring), then undrain."""
    status = _formed(dr_lab)
    vips = _vips(dr_lab)
    victim = _owner(status, vips[0])
    other = next(d for d in status.daemons if d.node_id != victim.node_id)
    log = builder.start_traffic(dr_lab.state_dir, "drain", "http", vips,
                                interval_s=INTERVAL_S, timeout_s=REQUEST_TIMEOUT_S)  # fmt: skip
    time.sleep(1.0)
    drained_at = time.time()
    started = time.monotonic()
    answer = builder.control(dr_lab.state_dir, str(other.node_id), "drain",
                             {"node": victim.node_id})  # fmt: skip
    assert answer == {"node": victim.node_id, "drained": True, "via": "ring"}

    def moved(s: LabStatus) -> bool:
        drained = next(d for d in s.daemons if d.node_id == victim.node_id)
        return drained.owned == () and agree(s.daemons, ALL, set(vips)) and applied(s.daemons)

    _, done = wait_for(dr_lab, moved, CHANGE_BOUND_S, f"node {victim.node_id} drained")
    FIGURES["drain: the drained node's VIPs moved (status files)"] = done - started
    settled = wait_recovered(log, vips, drained_at)
    code, output = dr_lab.rainctl("ctl", str(victim.node_id), "undrain", "--arg",
                                  f"node={victim.node_id}")  # fmt: skip
    assert code == 0, output
    assert json.loads(output) == {"node": victim.node_id, "drained": False, "via": "local"}
    summary = stop_without_failures(dr_lab, "drain", log, since=drained_at - 0.5, until=settled)
    NOTES.append(
        f"drain of node {victim.node_id} ({len(victim.owned)} VIPs) under 50 ms HTTP requests: "
        f"{sum(s.ok for s in summary.values())} requests, none failed"
    )


def test_graceful_leave_and_join_without_a_failed_request(dr_lab: Lab) -> None:
    """`node leave` of a VIP owner (its VIPs handed over with the token, the daemon exits),
    then the node boots again and its daemon joins: no client request fails either time
    (the boot itself is not judged: see below)."""
    status = _formed(dr_lab)
    vips = _vips(dr_lab)
    leaver = _owner(status, vips[1])
    others = ALL - {leaver.node_id}
    log = builder.start_traffic(dr_lab.state_dir, "leave", "http", vips,
                                interval_s=INTERVAL_S, timeout_s=REQUEST_TIMEOUT_S)  # fmt: skip
    time.sleep(1.0)
    left_at = time.time()
    started = time.monotonic()
    answer = builder.control(dr_lab.state_dir, str(leaver.node_id), "leave")
    assert answer == {"node": leaver.node_id, "leaving": True}
    _, done = wait_for(
        dr_lab,
        lambda s: agree(_only(s.daemons, others), others, set(vips)),
        CHANGE_BOUND_S,
        f"node {leaver.node_id} gone, the others owning every VIP",
    )
    FIGURES["graceful leave of a VIP owner: the others own every VIP (status files)"] = (
        done - started
    )
    # The node itself stays up without a daemon; boot it again so its daemon rejoins.
    killed_at = time.time()
    builder.kill_node(dr_lab.state_dir, leaver.node.name)
    joined_from = time.monotonic()
    builder.restart_node(dr_lab.state_dir, leaver.node.name)
    booted_at = time.time()
    _, joined = wait_for(
        dr_lab,
        lambda s: agree(s.daemons, ALL, set(vips)) and applied(s.daemons),
        FORMATION_BOUND_S,
        f"node {leaver.node_id} back in a ring of {len(ALL)}",
    )
    FIGURES["join after a restart: ring of 3 owning every VIP (from boot)"] = joined - joined_from
    settled = wait_recovered(log, vips, left_at)
    # Judged: the leave, and the join from the end of the boot. Booting a UML guest takes
    # the 2-core host for a moment (requests to every VIP, on every node, stall together
    # then): a lab artefact, not the ring's; those requests are counted, not judged.
    builder.stop_traffic(dr_lab.state_dir, "leave")
    events = traffic.read_log(log)
    leave = traffic.summarize(events, since=left_at - 0.5, until=killed_at)
    boot = traffic.summarize(events, since=killed_at, until=booted_at + REQUEST_TIMEOUT_S)
    join = traffic.summarize(events, since=booted_at + REQUEST_TIMEOUT_S, until=settled)
    for phase, summary in (("leave", leave), ("join", join)):
        failed = {vip: (s.failed, dict(s.reasons)) for vip, s in summary.items() if s.failed}
        assert failed == {}, (phase, failed)
    judged = sum(s.ok for s in (*leave.values(), *join.values()))
    NOTES.append(
        f"graceful leave of node {leaver.node_id} ({len(leaver.owned)} VIPs) and its join "
        f"under 50 ms HTTP requests: {judged} requests judged, none failed "
        f"({sum(s.failed for s in boot.values())} of "
        f"{sum(s.ok + s.failed for s in boot.values())} failed while the node booted)"
    )


def test_kill_of_a_vip_owner_client_http_recovers(dr_lab: Lab) -> None:
    status = _formed(dr_lab)
    vips = _vips(dr_lab)
    victim = _owner(status, vips[0])
    survivors = ALL - {victim.node_id}
    log = builder.start_traffic(dr_lab.state_dir, "kill", "http", vips,
                                interval_s=INTERVAL_S, timeout_s=REQUEST_TIMEOUT_S)  # fmt: skip
    # One long-lived TCP connection through the victim's VIP: the new owner must carry it on
    # (its IPVS has the connection from the sync daemons) instead of resetting it. The
    # timeout is long so that TCP's own retransmissions bridge the outage.
    echo_target = f"{vips[0]}:{ECHO_PORT}"
    echo_log = builder.start_traffic(dr_lab.state_dir, "kill-echo", "echo", [echo_target],
                                     interval_s=INTERVAL_S, timeout_s=ECHO_TIMEOUT_S)  # fmt: skip
    time.sleep(1.0)
    killed_at = time.time()
    started = time.monotonic()
    builder.kill_node(dr_lab.state_dir, victim.node.name)
    _, agreed = wait_for(
        dr_lab,
        lambda s: agree(_only(s.daemons, survivors), survivors, set(vips)),
        CHANGE_BOUND_S,
        "the survivors of a kill owning every VIP",
    )
    FIGURES["kill of a VIP owner: survivors own every VIP (status files)"] = agreed - started
    recovered = wait_recovered(log, vips, killed_at)
    builder.stop_traffic(dr_lab.state_dir, "kill")
    echo_resumed = _echo_resumed(echo_log, echo_target, killed_at)
    builder.stop_traffic(dr_lab.state_dir, "kill-echo")
    echo = traffic.summarize(traffic.read_log(echo_log))[echo_target]
    assert echo.connects == 1, f"the echo connection was re-made: {echo}"
    assert echo.failed == 0, f"the echo connection failed: {echo}"
    FIGURES["long-lived TCP echo through the killed owner's VIP: stall"] = echo_resumed
    during = traffic.summarize(traffic.read_log(log), since=killed_at - 0.2, until=recovered)
    moved = [vip for vip in vips if vip in victim.owned]
    for vip in vips:
        if vip not in moved:
            assert during[vip].failed == 0, (vip, during[vip])
    for vip in moved:
        assert during[vip].outage_s < OUTAGE_BOUND_S, (vip, during[vip])
    FIGURES[f"client HTTP outage, kill of {vips[0]}'s owner"] = during[vips[0]].outage_s
    NOTES.append(
        "kill of a VIP owner, client HTTP outage per moved VIP (50 ms requests, 0.5 s timeout): "
        + ", ".join(f"{vip} {during[vip].outage_s * 1000:.0f} ms" for vip in moved)
    )


MANY_OLD = 250
"""Per moved VIP: established connections that have exchanged many echoes."""
MANY_YOUNG = 250
"""Per moved VIP: connections opened just before the kill (at most 2 echoes: F6's
"younger than 3 packets")."""
MANY_INTERVAL_S = 1.0
SPREAD_BOUND_S = 60.0
"""A node's restart (boot, Python start-up in UML) + settle_ms + the hand-backs."""


def _connected(log: Path) -> set[str]:
    return {e.target for e in traffic.read_log(log) if e.result == "CONNECT"}


def test_restart_restores_the_spread_and_a_kill_keeps_many_connections(dr_lab: Lab) -> None:
    # The node killed above boots again; once it has settled, planned handovers give it its
    # share back: 2 VIPs per node, without a failed request (F7).
    status = builder.status(dr_lab.state_dir)
    dead = next(d for d in status.daemons if d.state != "up")
    vips = _vips(dr_lab)
    log = builder.start_traffic(dr_lab.state_dir, "spread", "http", vips,
                                interval_s=INTERVAL_S, timeout_s=REQUEST_TIMEOUT_S)  # fmt: skip
    started = time.monotonic()
    restarted_at = time.time()
    builder.restart_node(dr_lab.state_dir, dead.node.name)
    booted_at = time.time()
    _, spread = wait_for(
        dr_lab,
        lambda s: (
            agree(s.daemons, ALL, set(vips))
            and all(len(d.owned) == len(vips) // DR_NODES for d in s.daemons)
            and applied(s.daemons)
        ),
        SPREAD_BOUND_S,
        "every node back at ceil(6/3) = 2 VIPs after the restart",
    )
    FIGURES["restart of a killed node until the spread is 2/2/2 (boot + settle)"] = spread - started
    time.sleep(1.0)
    wait_recovered(log, vips, restarted_at)
    # Judged from the end of the boot (a UML boot takes the 2-core host for a moment: the
    # leave-and-join test above says more); the hand-backs all come after it.
    after_boot = stop_without_failures(
        dr_lab, "spread", log, since=booted_at + REQUEST_TIMEOUT_S, until=time.time()
    )
    boot = traffic.summarize(
        traffic.read_log(log), since=restarted_at, until=booted_at + REQUEST_TIMEOUT_S
    )
    NOTES.append(
        f"restart until the spread is 2/2/2: {sum(s.ok for s in after_boot.values())} requests "
        f"judged after the boot, none failed ({sum(s.failed for s in boot.values())} failed "
        "while the node booted)"
    )
    # F6 for real: 1,000 connections through the VIPs of one node, half of them opened just
    # before that node is killed. Every one must carry on: no reset, no reconnect.
    status = _formed(dr_lab)
    victim = next(d for d in status.daemons if len(d.owned) == 2)
    survivors = ALL - {victim.node_id}
    targets = [f"{vip}:{ECHO_PORT}" for vip in sorted(victim.owned)]
    logs = []
    for index, target in enumerate(targets):
        logs.append(builder.start_traffic(
            dr_lab.state_dir, f"old{index}", "echo", [target], interval_s=MANY_INTERVAL_S,
            timeout_s=ECHO_TIMEOUT_S, connections=MANY_OLD))  # fmt: skip
    deadline = time.monotonic() + 30
    while sum(len(_connected(path)) for path in logs) < MANY_OLD * len(targets):
        assert time.monotonic() < deadline, "the old connections were not all made"
        time.sleep(0.1)
    time.sleep(3.0)  # several echoes each, and the sync daemons have seen them
    young = []
    for index, target in enumerate(targets):
        young.append(builder.start_traffic(
            dr_lab.state_dir, f"young{index}", "echo", [target], interval_s=MANY_INTERVAL_S,
            timeout_s=ECHO_TIMEOUT_S, connections=MANY_YOUNG))  # fmt: skip
    while sum(len(_connected(path)) for path in young) < MANY_YOUNG * len(targets):
        assert time.monotonic() < deadline + 30, "the young connections were not all made"
        time.sleep(0.01)
    killed_at = time.time()
    builder.kill_node(dr_lab.state_dir, victim.node.name)
    wait_for(
        dr_lab,
        lambda s: agree(_only(s.daemons, survivors), survivors, set(vips)),
        CHANGE_BOUND_S,
        "the survivors own every VIP",
    )
    time.sleep(ECHO_TIMEOUT_S / 2)
    for index in range(len(targets)):
        builder.stop_traffic(dr_lab.state_dir, f"old{index}")
        builder.stop_traffic(dr_lab.state_dir, f"young{index}")
    per_connection: dict[str, traffic.Summary] = {}
    echoes_before: dict[str, int] = {}
    for path in (*logs, *young):  # the same TARGET#i names in each log: keyed by log too
        events = traffic.read_log(path)
        for name, summary in traffic.summarize(events).items():
            per_connection[f"{path.name}:{name}"] = summary
        for event in events:
            if event.result == "ECHO" and event.at < killed_at:
                key = f"{path.name}:{event.target}"
                echoes_before[key] = echoes_before.get(key, 0) + 1
    total = len(per_connection)
    assert total == (MANY_OLD + MANY_YOUNG) * len(targets)
    broken = sorted(name for name, s in per_connection.items()
                    if s.connects != 1 or s.failed)  # fmt: skip
    carried_on = [name for name, s in per_connection.items()
                  if s.ok > echoes_before.get(name, 0)]  # fmt: skip
    youngest = sum(1 for name in per_connection if echoes_before.get(name, 0) < 3)
    survived = total - len(broken)
    NOTES.append(
        f"kill of a director carrying {total} TCP connections ({youngest} with fewer than 3 "
        f"echoes before the kill): {survived} survived without reconnect "
        f"({100 * survived / total:.2f} %), {len(carried_on)} echoed after the kill"
    )
    assert youngest >= MANY_YOUNG * len(targets) * 0.9, youngest
    assert len(carried_on) == total - len(broken)
    assert survived >= total * 0.999, broken[:10]


def _echo_resumed(log: Path, target: str, since: float) -> float:
    """Seconds from `since` until the echo connection's first echo sent after `since`
    (it stalls while the VIP moves and resumes on the same connection)."""
    deadline = time.monotonic() + RECOVERY_BOUND_S
    while time.monotonic() < deadline:
        later = [
            event
            for event in traffic.read_log(log)
            if event.target == target and event.result == "ECHO" and event.at > since
        ]
        if later:
            return later[0].at + later[0].ms / 1000 - since
        time.sleep(0.1)
    raise AssertionError(f"the echo connection did not resume within {RECOVERY_BOUND_S} s")


def test_dr_lab_down_leaves_nothing(dr_lab: Lab) -> None:
    dr_lab.down_leaves_nothing()
