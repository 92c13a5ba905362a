"""Back-end health on real kernels: a back-end whose servers are SIGKILLed (its ports answer
RST) and, separately, one whose link goes down (no RST: only timeouts tell) is given weight
0 in every node's IPVS within a bound, after which no HTTP request through the VIPs reaches
the dead back-end (none is refused), and it returns after `rise` passes; every node reads
back the same weights. While the only real server of the sorry service is dead, its sorry
server answers; a director cut off from one back-end only (isolated bridge ports) counts it
down while every node keeps it at weight 1; an operator's `backend drain` asked of one node
holds on every node until another node is asked to undrain; a back-end's agent halves its
weight and drains it on every node.

One 3-node lab (profile lan, DR, 2 back-ends, `--checks`: TCP every 2 s, 2 failures,
plan.LAB_CHECK) for this module; tests in file order, the last one takes it down. Weights are
read from each daemon's status file (its IPVS table as the kernel holds it).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from rainctl.lab import builder, traffic
from rainctl.lab.builder import LabStatus
from rainctl.lab.plan import AGENT_WEIGHT, BACKEND_PORT, ECHO_PORT, agent_service, sorry_service
from rainctl.lab.processes import LabError
from tests.lab.conftest import FIGURES, NOTES, Lab
from tests.lab.test_lab_daemons import settled, wait_for
from tests.lab.test_lab_traffic import (
    REQUEST_TIMEOUT_S,
    _formed,
    _vips,
    _warm_up,
    in_sync,
    wait_recovered,
)

DETECTION_BOUND_S = 12.0
"""A bound, not the figure (the lab checks every 2 s: LAB_CHECK; B1 is for benchmarks)."""
RETURN_BOUND_S = 15.0
AGENT_BOUND_S = 25.0
"""The agent service is checked every 2 s and a weight moves a quarter per check."""


def weights(
    status: LabStatus, address: str, service: tuple[str, int] | None = None
) -> list[int | None]:
    """Per daemon: the IPVS weight of `address` in `service` (VIP, port; default: the first
    VIP's port-80 service), None where it is not a real server there."""
    found: list[int | None] = []
    for daemon in status.daemons:
        ipvs = (daemon.document or {}).get("ipvs") or {}
        weight = None
        for row in ipvs.get("services", []):
            if service is None and row["port"] != BACKEND_PORT:
                continue
            if service is not None and (row["vip"], row["port"]) != service:
                continue
            for server in row["real_servers"]:
                if server["address"] == address:
                    weight = server["weight"]
            break
        found.append(weight)
    return found


def every_weight(status: LabStatus, address: str) -> list[set[int]]:
    """Per daemon: the IPVS weights `address` has over every service it serves in."""
    found: list[set[int]] = []
    for daemon in status.daemons:
        ipvs = (daemon.document or {}).get("ipvs") or {}
        found.append(
            {
                server["weight"]
                for row in ipvs.get("services", [])
                for server in row["real_servers"]
                if server["address"] == address
            }
        )
    return found


def everywhere(lab: Lab, address: str, weight: int, bound_s: float) -> float:
    """Seconds until `address` has this weight in every service on every node (each of its
    servers, one per service, has checkers of its own)."""
    started = time.monotonic()
    _, held = wait_for(
        lab,
        lambda s: in_sync(s.daemons) and every_weight(s, address) == [{weight}] * len(s.daemons),
        bound_s,
        f"weight {weight} in every service on every node",
    )
    return held - started


def every_node(
    lab: Lab,
    address: str,
    weight: int | None,
    bound_s: float,
    what: str,
    service: tuple[str, int] | None = None,
) -> float:
    """Seconds until every daemon's IPVS gives `address` this weight (None: no entry)."""
    started = time.monotonic()
    _, held = wait_for(
        lab,
        lambda s: in_sync(s.daemons) and weights(s, address, service) == [weight] * len(s.daemons),
        bound_s,
        what,
    )
    return held - started


def _service(plan_service: tuple[object, int] | None) -> tuple[str, int]:
    assert plan_service is not None, "the health lab has 2 back-ends"
    vip, port = plan_service
    return str(vip), port


def _rings(lab: Lab) -> set[tuple[int, int, int]]:
    """The rings the daemons are in now (one element while the ring is stable)."""
    return {
        (ring["epoch"], ring["creator"], ring["creator_incarnation"])
        for daemon in builder.status(lab.state_dir).daemons
        if (ring := (daemon.document or {}).get("ring")) is not None
    }


def test_a_killed_backend_is_quiesced_everywhere_and_returns(health_lab: Lab) -> None:
    _formed(health_lab)
    wait_for(health_lab, lambda s: settled(health_lab, s), 30.0, "every VIP at its home")
    vips = _vips(health_lab)
    _warm_up(health_lab, vips)
    plan = builder.status(health_lab.state_dir).plan
    victim = plan.backends[0]
    try:
        _kill_and_judge(health_lab, vips, victim.name, str(victim.address.ip))
    finally:
        with contextlib.suppress(LabError):  # running already when all went well
            builder.start_backend(health_lab.state_dir, victim.name)


def _kill_and_judge(health_lab: Lab, vips: list[str], name: str, address: str) -> None:
    plan = builder.status(health_lab.state_dir).plan
    log = builder.start_traffic(health_lab.state_dir, "kill", "http", vips, interval_s=0.05,
                                timeout_s=REQUEST_TIMEOUT_S)  # fmt: skip
    builder.kill_backend(health_lab.state_dir, name)
    killed = time.time()
    took = everywhere(health_lab, address, 0, DETECTION_BOUND_S)
    detected = time.time()
    rings_before = _rings(health_lab)
    recovered = wait_recovered(log, vips, detected)
    builder.stop_traffic(health_lab.state_dir, "kill")
    ring_changed = _rings(health_lab) != rings_before or len(rings_before) != 1
    events = traffic.read_log(log)
    after = [e for e in events if e.at >= detected + REQUEST_TIMEOUT_S]
    # The dead back-end answers RST: a refused request after the verdict reached every node's
    # IPVS went to it, in one ring or across a ring change (a newly assigned checker
    # abstains until it has counted: docs/protocol.md, "Back-end health"). Timeouts are
    # counted, not judged: at this load a VIP can move now and then (a false exclusion),
    # which is the ring's matter, not the health check's.
    refused = [e for e in after if e.result != "OK" and "Refused" in e.detail]
    assert refused == [], (
        f"{len(refused)} refused from {refused[0].at - detected:.2f} s to "
        f"{refused[-1].at - detected:.2f} s after weight 0 everywhere (killed "
        f"{detected - killed:.2f} s before that; ring changed: {ring_changed}): "
        f"{sorted({e.target for e in refused})}"
    )
    other = sum(1 for e in after if e.result != "OK")
    during = sum(1 for e in events if e.result != "OK" and killed <= e.at < detected)
    FIGURES["health: SIGKILLed back-end -> weight 0 everywhere (status files)"] = took
    NOTES.append(
        f"health: back-end {name} SIGKILLed: weight 0 in all its services on all 3 nodes "
        f"{took:.2f} s "
        f"later (status files lag up to 0.2 s); {during} failed requests before that, "
        f"{len(refused)} refused after ({other} failures in all; checked until "
        f"{recovered - detected:.1f} s after; ring changed meanwhile: {ring_changed})"
    )
    # The sorry service's only real server is the victim: its sorry server serves meanwhile.
    sorry = _service(sorry_service(plan))
    spare = str(plan.backends[1].address.ip)
    every_node(health_lab, spare, 1, RETURN_BOUND_S, "the sorry server in, everywhere", sorry)
    rings_before = _rings(health_lab)
    echo = builder.start_traffic(health_lab.state_dir, "sorry", "echo",
                                 [f"{sorry[0]}:{ECHO_PORT}"], interval_s=0.2,
                                 timeout_s=2.0)  # fmt: skip
    time.sleep(2.0)
    builder.stop_traffic(health_lab.state_dir, "sorry")
    ring_changed = _rings(health_lab) != rings_before or len(rings_before) != 1
    answered = traffic.summarize(traffic.read_log(echo))
    ok = sum(s.ok for s in answered.values())
    failed = sum(s.failed for s in answered.values())
    assert ok >= 5, answered
    if not ring_changed:
        assert failed == 0, answered
    builder.start_backend(health_lab.state_dir, name)
    back = every_node(health_lab, address, 1, RETURN_BOUND_S, "weight 1 again on every node")
    NOTES.append(f"health: restarted back-end {name} back at weight 1 after {back:.2f} s")
    every_node(health_lab, spare, None, RETURN_BOUND_S, "the sorry server out again", sorry)
    NOTES.append(
        f"health: sorry server {spare} answered {ok} echoes ({failed} failed; ring changed: "
        f"{ring_changed}) through {sorry[0]}:{ECHO_PORT} while its only real server was "
        "dead, and left after"
    )


def test_a_backend_behind_a_dead_link_is_quiesced_by_timeouts(health_lab: Lab) -> None:
    plan = builder.status(health_lab.state_dir).plan
    victim = plan.backends[1]
    address = str(victim.address.ip)
    every_node(health_lab, address, 1, RETURN_BOUND_S, "weight 1 before the link goes down")
    builder.set_backend_link(health_lab.state_dir, victim.name, up=False)
    try:
        took = everywhere(health_lab, address, 0, DETECTION_BOUND_S)
    finally:
        builder.set_backend_link(health_lab.state_dir, victim.name, up=True)
    FIGURES["health: back-end link down -> weight 0 on every node (status files)"] = took
    back = every_node(health_lab, address, 1, RETURN_BOUND_S, "weight 1 after the link is up")
    NOTES.append(
        f"health: link of {victim.name} down: weight 0 in all its services on all 3 nodes "
        f"after {took:.2f} s "
        f"(no RST, timeouts only); back at weight 1 {back:.2f} s after the link came up"
    )


def _cut_off_views(document: dict[str, Any], address: str) -> list[str]:
    """The node's own check results of `address`'s servers (the ones it checks)."""
    views = []
    for service in document["services"]:
        for row in service["real_servers"]:
            if row["address"] == address and row["local"] is not None:
                views.append(row["local"]["state"])
    return views


def test_a_director_cut_off_from_a_backend_does_not_take_it_out(health_lab: Lab) -> None:
    plan = builder.status(health_lab.state_dir).plan
    host = plan.backends[0]
    address = str(host.address.ip)
    every_node(health_lab, address, 1, RETURN_BOUND_S, "weight 1 before the cut")
    document = builder.control(health_lab.state_dir, "1", "backends")
    checkers = {
        node_id
        for service in document["services"]
        for row in service["real_servers"]
        if row["address"] == address
        for node_id in row["checkers"]
    }
    cut_off = str(min(checkers))
    builder.cut_path(health_lab.state_dir, cut_off, host.name, cut=True)
    try:
        wait_for(
            health_lab,
            lambda _s: (
                set(
                    _cut_off_views(
                        builder.control(health_lab.state_dir, cut_off, "backends"), address
                    )
                )
                == {"down"}
            ),
            DETECTION_BOUND_S,
            f"node {cut_off} counts {host.name} down",
        )
        # Its own view is down; the ring's verdict must not be, on any node, for a while.
        held_until = time.monotonic() + 3 * DETECTION_BOUND_S / 2
        samples = 0
        while time.monotonic() < held_until:
            status = builder.status(health_lab.state_dir)
            seen = weights(status, address)
            assert seen == [1] * len(status.daemons), f"weights of {address}: {seen}"
            samples += 1
            time.sleep(0.2)
    finally:
        builder.cut_path(health_lab.state_dir, cut_off, host.name, cut=False)
    NOTES.append(
        f"health: node {cut_off} cut off from {host.name} only (isolated bridge ports): it "
        f"counts the back-end down, yet weight 1 on all 3 nodes in {samples} samples over "
        f"{3 * DETECTION_BOUND_S / 2:.0f} s"
    )


def test_an_operator_drain_through_one_node_holds_on_every_node(health_lab: Lab) -> None:
    plan = builder.status(health_lab.state_dir).plan
    host = plan.backends[1]
    address = str(host.address.ip)
    service = f"{_vips(health_lab)[0]}:{BACKEND_PORT}"
    arguments = {"service": service, "server": f"{address}:{BACKEND_PORT}"}
    every_node(health_lab, address, 1, RETURN_BOUND_S, "weight 1 before the drain")
    asked = time.monotonic()
    answer = builder.control(health_lab.state_dir, "2", "backend_drain", arguments)
    assert (answer["drained"], answer["committed"]) == (True, True), answer
    answered = time.monotonic() - asked
    took = answered + every_node(health_lab, address, 0, RETURN_BOUND_S, "drained everywhere")
    document = builder.control(health_lab.state_dir, "1", "backends")
    row = next(r for r in document["services"][0]["real_servers"] if r["address"] == address)
    assert (row["maintenance"], row["state"]) == (True, "up"), row
    answer = builder.control(health_lab.state_dir, "3", "backend_undrain", arguments)
    assert (answer["drained"], answer["committed"]) == (False, True), answer
    every_node(health_lab, address, 1, RETURN_BOUND_S, "undrained on every node")
    NOTES.append(
        f"health: `backend drain` of {address} in {service} asked of node 2: answered "
        f"(carried by the token) after {answered:.2f} s, weight 0 on all 3 nodes' status "
        f"files after {took:.2f} s; undrain asked of node 3 undid it"
    )


def _agent_row(health_lab: Lab, node: str, service: tuple[str, int], address: str) -> Any:
    document = builder.control(health_lab.state_dir, node, "backends")
    row = next(r for r in document["services"] if (r["vip"], r["port"]) == service)
    return next(s for s in row["real_servers"] if s["address"] == address)


def test_an_agent_sets_its_backends_weight_and_drains_it(health_lab: Lab) -> None:
    """The agent-checked service (weight AGENT_WEIGHT): the back-end's agent says "50%",
    then "drain", then nothing ("up"): every node follows, the weight in bounded steps."""
    plan = builder.status(health_lab.state_dir).plan
    host = plan.backends[0]
    address = str(host.address.ip)
    service = _service(agent_service(plan))
    full, half = AGENT_WEIGHT, AGENT_WEIGHT // 2
    every_node(health_lab, address, full, RETURN_BOUND_S, "full weight first", service)
    try:
        builder.set_agent_reply(health_lab.state_dir, host.name, "up 50%")
        asked = time.monotonic()
        # The weight steps towards the aim and stops within the deadband (10 % of the
        # configured weight) of it: 10 -> 8 -> 6 for an aim of 5.
        status, held = wait_for(
            health_lab,
            lambda s: (
                in_sync(s.daemons)
                and len(set(weights(s, address, service))) == 1
                and abs((weights(s, address, service)[0] or 0) - half) <= full // 10
            ),
            AGENT_BOUND_S,
            "about half the weight on every node",
        )
        halved, weight = held - asked, weights(status, address, service)[0]
        row = _agent_row(health_lab, "1", service, address)
        assert (row["state"], row["weight"]) == ("up", weight), row
        builder.set_agent_reply(health_lab.state_dir, host.name, "drain")
        drained = every_node(health_lab, address, 0, AGENT_BOUND_S, "drained by its agent", service)
        row = _agent_row(health_lab, "2", service, address)
        assert (row["state"], row["weight"], row["maintenance"]) == ("drain", 0, False), row
    finally:
        builder.set_agent_reply(health_lab.state_dir, host.name, None)
    back = every_node(health_lab, address, full, AGENT_BOUND_S, "full weight again", service)
    NOTES.append(
        f"health: agent of {host.name} said 50%: weight {full} -> {weight} on all 3 nodes after "
        f"{halved:.2f} s (steps of a quarter per 2 s check); drain: 0 after {drained:.2f} s; "
        f"up: {full} again after {back:.2f} s"
    )


def test_health_lab_down_leaves_nothing(health_lab: Lab) -> None:
    health_lab.down_leaves_nothing()
