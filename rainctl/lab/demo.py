"""`rainctl lab demo`: kill a VIP's owner and measure what the client sees (docs/lab.md).

The lab's nodes run `rainctl daemon --data-plane linux --front-interface vec0`; a resident
prober in the client namespace pings every VIP every 10 ms and a resident reader on br0 logs
gratuitous ARP (rainctl.lab.probe). `failover()` SIGKILLs the node owning a VIP and reads both
logs back: the client-observed outage of each VIP the node owned (the longest run of lost
probes, from the first lost probe's send to the first answered probe's send) and the first
GARP for it after the kill. `run_trial()` is one whole demo: up, ring, watchers, failover,
down (always).
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rainctl.lab import builder, probe
from rainctl.lab.builder import DaemonStatus, LabStatus, Watchers
from rainctl.lab.plan import lab_vips
from rainctl.lab.processes import LabError

RING_TIMEOUT_S = 30.0
"""From `up`'s end until one ring of every node owns every VIP once."""
PROBES_TIMEOUT_S = 10.0
"""Until every VIP answers the prober (the client resolves each VIP once)."""
FAILOVER_TIMEOUT_S = 10.0
"""From the kill until the survivors own every VIP and the client reaches each again."""
SETTLE_S = 0.5
"""Probing kept on after the last VIP answers again, so that a late relapse would show."""
POLL_S = 0.02


@dataclass(frozen=True, slots=True)
class VipOutcome:
    """What happened to one VIP of the killed node."""

    vip: str
    old_owner: str
    new_owner: str | None
    new_owner_mac: str | None
    outage_ms: float | None
    """The client's longest run of lost probes (0: none lost; None: not answered again)."""
    lost: int
    garp_ms: float | None
    """From the kill to the first GARP for the VIP on br0 (None: none seen)."""
    garp_mac: str | None
    client_mac: str | None
    """The VIP's MAC in the client's neighbour table once it answers again."""


@dataclass(frozen=True, slots=True)
class Failover:
    victim: str
    killed_at: float
    """Wall clock just before the SIGKILL."""
    agreed_s: float
    """From the kill until the survivors' status files report every VIP owned once."""
    vips: tuple[VipOutcome, ...]


def agree(daemons: Sequence[DaemonStatus], vips: set[str]) -> bool:
    """Every daemon answers, all report one ring of exactly themselves, and each of `vips` is
    owned by exactly one of them."""
    if not daemons or any(d.state != "up" or d.ring is None for d in daemons):
        return False
    if len({json.dumps(d.ring, sort_keys=True) for d in daemons}) != 1:
        return False
    ids = {d.node_id for d in daemons}
    if any(set(d.members) != ids or len(d.members) != len(ids) for d in daemons):
        return False
    owned = Counter(vip for d in daemons for vip in d.owned)
    return set(owned) == vips and set(owned.values()) == {1}


def all_vips(status: LabStatus) -> set[str]:
    return {str(vip) for vip in lab_vips(status.plan)}


def wait_for_ring(state_dir: Path, timeout_s: float = RING_TIMEOUT_S) -> LabStatus:
    """The lab's status once one ring of every node owns every VIP once."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = builder.status(state_dir)
        if agree(status.daemons, all_vips(status)):
            return status
        if time.monotonic() > deadline:
            raise LabError(f"no ring of every node owning every VIP within {timeout_s:g} s")
        time.sleep(0.1)


def client_neighbours(status: LabStatus) -> dict[str, str]:
    """The client namespace's neighbour table: address -> MAC (entries with one only)."""
    result = subprocess.run(  # noqa: S603 - fixed argv
        ["ip", "-n", status.plan.client.namespace, "-j", "neigh", "show", "dev", "eth0"],  # noqa: S607
        capture_output=True,
        text=True,
        check=False,
        timeout=10,
    )
    if result.returncode != 0:
        raise LabError(f"ip neigh in {status.plan.client.namespace}: {result.stderr.strip()}")
    return {
        str(entry["dst"]): str(entry["lladdr"])
        for entry in json.loads(result.stdout or "[]")
        if "lladdr" in entry
    }


def owner_macs(status: LabStatus, *, excluding: int | None = None) -> dict[str, str]:
    """VIP -> the front MAC of the node whose daemon reports owning it.

    `excluding` leaves out a killed node: its last status file still lists what it owned.
    """
    return {
        vip: d.node.nics[0].mac for d in status.daemons if d.node_id != excluding for vip in d.owned
    }


def wait_for_probes(
    watchers: Watchers, vips: set[str], since: float, timeout_s: float = PROBES_TIMEOUT_S
) -> None:
    """Until the prober has had an answer from each of `vips` to a probe sent after `since`."""
    deadline = time.monotonic() + timeout_s
    while True:
        if vips <= probe.answered(watchers.probe_log, since=since):
            return
        if time.monotonic() > deadline:
            missing = vips - probe.answered(watchers.probe_log, since=since)
            raise LabError(f"no answer from {', '.join(sorted(missing))} within {timeout_s:g} s")
        time.sleep(0.05)


def failover(state_dir: Path, watchers: Watchers, vip: str | None = None) -> Failover:
    """SIGKILL the node owning `vip` (default: the first VIP) and measure what follows."""
    status = builder.status(state_dir)
    vips = all_vips(status)
    vip = vip or str(min(ipaddress.IPv4Address(v) for v in vips))
    victim = next((d for d in status.daemons if vip in d.owned), None)
    if victim is None:
        raise LabError(f"no daemon owns {vip}")
    moved = sorted(victim.owned, key=ipaddress.IPv4Address)
    killed_at = time.time()
    started = time.monotonic()
    builder.kill_node(state_dir, victim.node.name)
    deadline = started + FAILOVER_TIMEOUT_S
    agreed_s: float | None = None
    while True:
        now = time.monotonic()
        if agreed_s is None:
            status = builder.status(state_dir)
            survivors = [d for d in status.daemons if d.node_id != victim.node_id]
            if agree(survivors, vips):
                agreed_s = now - started
        if agreed_s is not None and set(moved) <= probe.answered(
            watchers.probe_log, since=killed_at + 0.05
        ):
            break
        if now > deadline:
            break  # reported as not recovered (outage None) below
        time.sleep(POLL_S)
    time.sleep(SETTLE_S)
    if agreed_s is None:
        raise LabError(
            f"the survivors did not own every VIP within {FAILOVER_TIMEOUT_S:g} s of the kill"
        )
    macs = owner_macs(status, excluding=victim.node_id)
    owners = {
        vip: d.node.name for d in status.daemons if d.node_id != victim.node_id for vip in d.owned
    }
    runs = probe.outages(watchers.probe_log, since=killed_at - 0.1)
    seen = probe.garps(watchers.garp_log)
    neighbours = client_neighbours(status)
    outcomes = []
    for address in moved:
        run = runs.get(address)
        duration = 0.0 if run is None else run.duration_s
        first = next(((t, mac) for t, mac, a in seen if a == address and t >= killed_at), None)
        outcomes.append(
            VipOutcome(
                vip=address,
                old_owner=victim.node.name,
                new_owner=owners.get(address),
                new_owner_mac=macs.get(address),
                outage_ms=None if duration is None else duration * 1000,
                lost=0 if run is None else run.lost,
                garp_ms=None if first is None else (first[0] - killed_at) * 1000,
                garp_mac=None if first is None else first[1],
                client_mac=neighbours.get(address),
            )
        )
    return Failover(
        victim=victim.node.name, killed_at=killed_at, agreed_s=agreed_s, vips=tuple(outcomes)
    )


@dataclass(frozen=True, slots=True)
class Trial:
    profile: str
    nodes: int
    ring_s: float
    """From `up`'s start until one ring owns every VIP once."""
    before: dict[str, tuple[str, str | None]]
    """Before the kill: VIP -> (owner's planned MAC, the client's neighbour entry)."""
    failover: Failover


def run_trial(state_dir: Path, *, nodes: int, profile: str, prefix: str) -> Trial:
    """One demo: up --daemon, ring, watchers, failover of the first VIP's owner; down always.

    Raises LabError; a lab already recorded in `state_dir` is left alone.
    """
    started = time.monotonic()
    builder.up(state_dir, nodes=nodes, backends=0, prefix=prefix, profile=profile)
    try:
        status = wait_for_ring(state_dir)
        ring_s = time.monotonic() - started
        watchers = builder.start_watchers(state_dir)
        wait_for_probes(watchers, all_vips(status), since=time.time())
        time.sleep(SETTLE_S)
        neighbours = client_neighbours(status)
        before = {vip: (mac, neighbours.get(vip)) for vip, mac in owner_macs(status).items()}
        result = failover(state_dir, watchers)
        return Trial(profile=profile, nodes=nodes, ring_s=ring_s, before=before, failover=result)
    finally:
        builder.down(state_dir)


def problems(trial: Trial) -> list[str]:
    """What went wrong in a trial, one phrase each (empty: a clean failover)."""
    found = [
        f"{vip}: the client resolves it to {client} but its owner's MAC is {mac}"
        for vip, (mac, client) in sorted(trial.before.items())
        if client != mac
    ]
    for outcome in trial.failover.vips:
        if outcome.new_owner is None:
            found.append(f"{outcome.vip}: no new owner")
        if outcome.outage_ms is None:
            found.append(f"{outcome.vip}: the client never reached it again")
        if outcome.garp_mac is None:
            found.append(f"{outcome.vip}: no GARP seen on br0 after the kill")
        elif outcome.garp_mac != outcome.new_owner_mac:
            found.append(f"{outcome.vip}: GARP from {outcome.garp_mac}, not the new owner")
        if outcome.client_mac != outcome.new_owner_mac:
            found.append(f"{outcome.vip}: the client resolves it to {outcome.client_mac}")
    return found
