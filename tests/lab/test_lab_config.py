"""Live configuration in the lab, under client traffic (docs/operations.md, "Changing a
running cluster"): three pushes through the ring while the client's HTTP requests run
through every VIP: a VIP and its service added (pushed at node 2), the ring's timers
changed, node 3 removed. Judged: no request to the unchanged services fails, every node
runs each version, the new VIP serves HTTP and only its owner answers ARP for it, and the
removed node hands its VIPs over and its daemon exits.

One 3-node lab (profile lan, 2 DR back-ends) for this module; the last test takes it down.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence

from rainctl.lab import builder, probe, traffic
from rainctl.lab.builder import DaemonStatus, LabStatus
from rainctl.lab.plan import spare_vips
from tests.lab.conftest import DR_NODES, NOTES, Lab
from tests.lab.test_lab_daemons import agree, wait_for
from tests.lab.test_lab_traffic import (
    CHANGE_BOUND_S,
    INTERVAL_S,
    REQUEST_TIMEOUT_S,
    _formed,
    _only,
    _vips,
    applied,
    stop_without_failures,
    wait_recovered,
)

ALL = set(range(1, DR_NODES + 1))
PUSH_TIMEOUT_S = 60.0


def _versions(daemons: Sequence[DaemonStatus]) -> set[int | None]:
    return {((d.document or {}).get("config") or {}).get("version") for d in daemons}


def _push(lab: Lab, node: int, text: str, source: str) -> int:
    answer = builder.control(
        lab.state_dir,
        str(node),
        "config_push",
        {"text": text, "source": source, "expect_version": None, "dry_run": False},
        timeout_s=PUSH_TIMEOUT_S,
    )
    version = answer["version"]
    assert isinstance(version, int), answer
    return version


def _with_service_for(text: str, vip: str, like: str) -> str:
    """`text` plus VIP `vip` and a copy of the port-80 service of VIP `like` on it."""
    start = text.index(f'[[services]]\nvip = "{like}"\nport = 80\n')
    end = text.find("[[services]]", start + 1)
    block = text[start : end if end != -1 else len(text)]
    return text + f'\n[[vips]]\naddress = "{vip}"\n\n' + block.replace(like, vip, 1)


def _without_node(text: str, node: int, instead: int) -> str:
    """`text` without node `node`'s entry; VIPs homed there homed on `instead`."""
    text = re.sub(rf"\[\[nodes\]\]\nid = {node}\n(?:[a-z_]+ = [^\n]*\n)*\n?", "", text)
    return text.replace(f"home = {node}\n", f"home = {instead}\n")


def _owner_mac(status: LabStatus, vip: str) -> tuple[int, str]:
    (owner,) = [d for d in status.daemons if vip in d.owned]
    return owner.node_id, owner.node.nics[0].mac


def test_pushes_under_traffic_add_a_vip_change_timers_and_remove_a_node(
    config_lab: Lab,
) -> None:
    _formed(config_lab)
    state = config_lab.state_dir
    vips = _vips(config_lab)
    spare = str(spare_vips(builder.status(state).plan)[0])
    arp_log = builder.start_arp_prober(state)
    original = (state / builder.CONFIG_FILE).read_text(encoding="utf-8")
    log = builder.start_traffic(state, "config", "http", vips,
                                interval_s=INTERVAL_S, timeout_s=REQUEST_TIMEOUT_S)  # fmt: skip
    time.sleep(1.0)
    started = time.time()

    # A VIP and its service, pushed at node 2.
    added = _with_service_for(original, spare, vips[0])
    assert _push(config_lab, 2, added, "added.toml") == 2
    status, _ = wait_for(
        config_lab,
        lambda s: (
            _versions(s.daemons) == {2}
            and agree(s.daemons, ALL, {*vips, spare})
            and applied(s.daemons)
        ),
        CHANGE_BOUND_S,
        "version 2 everywhere, the new VIP owned once",
    )
    committed_at = time.time()
    owner, mac = _owner_mac(status, spare)
    new_log = builder.start_traffic(state, "config-new", "http", [spare],
                                    interval_s=INTERVAL_S, timeout_s=REQUEST_TIMEOUT_S)  # fmt: skip
    new_ok = wait_recovered(new_log, [spare], committed_at)
    builder.stop_traffic(state, "config-new")

    # The ring's timers, then node 3 removed (its VIPs handed over, its daemon gone).
    timed = added.replace("[[nodes]]", "[timers]\nround_ms = 80\n\n[[nodes]]", 1)
    assert _push(config_lab, 1, timed, "timers.toml") == 3
    wait_for(config_lab, lambda s: _versions(s.daemons) == {3}, CHANGE_BOUND_S, "version 3")
    assert _push(config_lab, 1, _without_node(timed, 3, 1), "without-3.toml") == 4
    remaining = ALL - {3}
    wait_for(
        config_lab,
        lambda s: (
            _versions(_only(s.daemons, remaining)) == {4}
            and agree(_only(s.daemons, remaining), remaining, {*vips, spare})
            and applied(_only(s.daemons, remaining))
        ),
        CHANGE_BOUND_S,
        "version 4 on nodes 1 and 2, owning every VIP, node 3 gone",
    )
    settled = wait_recovered(log, vips, started)
    summary = stop_without_failures(config_lab, "config", log, since=started, until=settled)

    # Only the owner answered ARP for the new VIP from the commit until it moved (if the
    # removal of node 3 moved it), and nearly every round had an answer.
    rounds = [r for r in probe.arp_rounds(arp_log) if committed_at + 0.5 <= r.sent <= new_ok]
    answered = [r.answerers.get(spare, frozenset()) for r in rounds]
    assert all(macs <= {mac} for macs in answered), (spare, mac, answered)
    assert sum(1 for macs in answered if macs) >= 0.9 * len(answered), answered
    new_requests = traffic.summarize(traffic.read_log(new_log), since=committed_at)[spare]
    NOTES.append(
        f"live config under 50 ms HTTP requests: VIP + service added at node 2, timers "
        f"changed, node 3 removed: {sum(s.ok for s in summary.values())} requests to the "
        f"unchanged services, none failed; the new VIP {spare} answered "
        f"{new_requests.ok} requests, ARP from its owner (node {owner}) only"
    )


def test_config_lab_down_leaves_nothing(config_lab: Lab) -> None:
    config_lab.down_leaves_nothing()
