"""`rainctl bench soak`: false failovers under stress (GOALS.md F3), rainctl beside keepalived.

For each system (rainctl with a timer profile, keepalived VRRPv3 at an advert_int) one lab of
the same topology as `bench failover` (rainctl.bench.failover: up, settle, the client's 10 ms
ICMP prober and the br0 packet counter). Then, for `duration_s`:

* every host core busy with a CPU hog (one resident busy loop per core, recorded by the lab
  and ended by PID), so the user-mode-linux nodes compete for CPU;
* `loss_permille` of the control traffic dropped on the switch: an nftables bridge rule in
  the switch namespace, `numgen random`, on the ring's UDP ports (unicast and the ring
  group's) and on VRRP (IP protocol 112), so both systems lose the same share of their own
  control packets and nothing else; a multicast packet is judged once per forwarded copy;
* the host stall monitor (rainctl.bench.host_stalls, real-time priority) notes every moment
  the machine itself stopped for HOST_STALL_MS or more, and every time a node's guest
  waited that long for a host CPU: a false move at such a moment is the lab machine's (its
  hypervisor's, when the steal time says so; its scheduler's, for a guest's wait), not the
  system's;
* nothing is killed. Every owner change of a VIP is a false failover; for rainctl, every new
  ring id is a spurious re-formation (a false 911 or exclusion). Owners are sampled from the
  nodes' status files every SAMPLE_S; the client's prober shows what a user would have seen
  (runs of lost probes).

The drop rule's counters and the packet counter's log give the loss really applied.
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rainctl.bench import host_stalls, report
from rainctl.bench.failover import WIRE_LOG, LogTail, SystemSpec, peer_status, watched_lab
from rainctl.lab import builder
from rainctl.lab.plan import RING_GROUP_PORT, RING_PORT, lab_vips
from rainctl.templating import render

SAMPLE_S = 0.25
GAP_PROBES = 5
"""A client-visible gap: at least this many consecutive lost probes (50 ms at 10 ms)."""
HOG = "cpu-hog"
HOST_STALL_MS = 50
NFT_TABLE = "rainctl_soak"

Progress = Callable[[str], None]


@dataclass(slots=True)
class SoakResult:
    system: str
    kind: str
    setting: str
    duration_s: float = 0.0
    samples: int = 0
    vip_moves: int = 0
    """Changes of a VIP's sole owner (false failovers: nothing was killed)."""
    ring_changes: int = 0
    """rainctl only: new ring ids seen (spurious re-formations)."""
    unowned_samples: int = 0
    """Samples in which some VIP had no owner or two."""
    client_gaps: int = 0
    longest_gap_ms: float = 0.0
    host_stalls: int = 0
    """Moments the machine itself stopped for HOST_STALL_MS or more."""
    longest_host_stall_ms: int = 0
    guest_waits: int = 0
    """Times a node (a UML guest) waited HOST_STALL_MS or more for a host CPU."""
    longest_guest_wait_ms: int = 0
    dropped: int = 0
    control_packets: int = 0
    """Control packets seen on br0 (before the drop rule, which judges forwarded copies)."""
    forwarded_copies: int = 0
    """Their copies the bridge forwarded: 1 per unicast packet; for a multicast one (the
    ring group's passes, VRRP) one per other bridge port (the other nodes and the client: the
    bridge floods it); each copy is dropped or not on its own."""
    events: list[str] = field(default_factory=list)

    @property
    def loss_percent(self) -> float | None:
        """Dropped copies over forwarded copies: the loss each receiving link saw."""
        copies = self.forwarded_copies
        return None if copies == 0 else 100 * self.dropped / copies

    def as_json(self) -> dict[str, Any]:
        return {
            "system": self.system,
            "kind": self.kind,
            "setting": self.setting,
            "duration_s": round(self.duration_s, 1),
            "samples": self.samples,
            "vip_moves": self.vip_moves,
            "ring_changes": self.ring_changes if self.kind == "rainctl" else None,
            "unowned_samples": self.unowned_samples,
            "client_gaps": self.client_gaps,
            "longest_gap_ms": round(self.longest_gap_ms, 1),
            "host_stalls": self.host_stalls,
            "longest_host_stall_ms": self.longest_host_stall_ms,
            "guest_waits": self.guest_waits,
            "longest_guest_wait_ms": self.longest_guest_wait_ms,
            "control_packets": self.control_packets,
            "dropped": self.dropped,
            "loss_percent": None if self.loss_percent is None else round(self.loss_percent, 2),
            "events": self.events[:50],
        }


def nft_rules(loss_permille: int) -> str:
    """The switch namespace's drop rule for `loss_permille` of ring (unicast and group) and
    VRRP (IP protocol 112) packets (templates/bench_soak.nft.j2)."""
    return render(
        "bench_soak.nft.j2",
        table=NFT_TABLE,
        ring_port=RING_PORT,
        group_port=RING_GROUP_PORT,
        loss_permille=loss_permille,
    )


def dropped_packets(ruleset: str) -> int:
    """The sum of the drop rules' packet counters in `nft -j list table` output."""
    document = json.loads(ruleset)
    total = 0
    for item in document.get("nftables", []):
        for expression in item.get("rule", {}).get("expr", []):
            counter = expression.get("counter") if isinstance(expression, dict) else None
            if isinstance(counter, dict):
                total += int(counter.get("packets", 0))
    return total


def client_gaps(log_text: str, *, since: float, until: float) -> tuple[int, float]:
    """(runs of >= GAP_PROBES consecutive lost probes, the longest run in ms) over every VIP
    for probes sent in [since, until]."""
    sent: dict[str, list[tuple[float, int]]] = {}
    answered: set[tuple[str, int]] = set()
    for line in log_text.splitlines():
        fields = line.split()
        if len(fields) != 4:
            continue
        kind, stamp, vip, seq = fields
        if kind == "S" and since <= float(stamp) <= until:
            sent.setdefault(vip, []).append((float(stamp), int(seq)))
        elif kind == "R":
            answered.add((vip, int(seq)))
    gaps = 0
    longest_ms = 0.0
    for target, probes in sent.items():
        run: list[float] = []
        for sent_at, number in [*probes, (float("inf"), -1)]:
            if number >= 0 and (target, number) not in answered:
                run.append(sent_at)
                continue
            if len(run) >= GAP_PROBES:
                gaps += 1
                longest_ms = max(longest_ms, (run[-1] - run[0]) * 1000 + 10)
            run = []
    return gaps, longest_ms


Owners = dict[str, tuple[str, ...]]


def owner_moves(last: Owners, now: Owners) -> tuple[list[str], Owners]:
    """The VIPs whose sole owner changed between two samples ("vip a -> b"), and the owners
    to compare the next sample with. A move is a new sole owner: two holders or none in one
    sample is the status files' skew (each up to 0.2 s old) mid-move, counted once, at its
    end, and the last sole owner is kept meanwhile."""
    moves = [
        f"{vip} {','.join(last.get(vip, ()))} -> {nodes[0]}"
        for vip, nodes in now.items()
        if len(nodes) == 1 and nodes != last.get(vip)
    ]
    kept = {vip: nodes if len(nodes) == 1 else last.get(vip, ()) for vip, nodes in now.items()}
    return moves, kept


def owners_now(spec: SystemSpec, state_dir: Path) -> tuple[Owners, set[str]]:
    """VIP -> the nodes holding it now (sorted), and the ring ids the nodes report."""
    status = builder.status(state_dir)
    vips = [str(vip) for vip in lab_vips(status.plan)]
    holders: dict[str, list[str]] = {vip: [] for vip in vips}
    rings: set[str] = set()
    if spec.kind == "rainctl":
        for daemon in status.daemons:
            if daemon.state == "up":
                for vip in daemon.owned:
                    holders.setdefault(vip, []).append(daemon.node.name)
                if daemon.ring is not None:
                    rings.add(json.dumps(daemon.ring, sort_keys=True))
    else:
        for peer in peer_status(state_dir, status.plan):
            for vip in peer.owned:
                holders.setdefault(vip, []).append(peer.node.name)
    return {vip: tuple(sorted(nodes)) for vip, nodes in holders.items()}, rings


def _nft(state_dir: Path, *arguments: str, stdin: str | None = None) -> str:
    return builder.in_switch(state_dir, ("nft", *arguments), stdin=stdin)


def soak(
    spec: SystemSpec,
    state_dir: Path,
    *,
    duration_s: float,
    loss_permille: int,
    hogs: int,
    progress: Progress,
) -> SoakResult:
    """One settled lab under stress for `duration_s` (the lab is up, settled, watched)."""
    node_count = len(builder.status(state_dir).plan.nodes)
    result = SoakResult(
        system=spec.name,
        kind=spec.kind,
        setting=spec.setting,
    )
    watch = state_dir / builder.WATCH_DIR
    wire_tail = LogTail(watch / WIRE_LOG)
    probe_log = watch / "probe.log"
    probe_tail = LogTail(probe_log)
    if loss_permille:
        _nft(state_dir, "-f", "-", stdin=nft_rules(loss_permille))
    for index in range(hogs):
        builder.start_process(
            state_dir,
            f"{HOG}-{index}",
            (sys.executable, "-c", "while True: pass"),
            watch / f"{HOG}-{index}.err",
        )
    stall_log = host_stalls.start_monitor(state_dir, HOST_STALL_MS)
    owners, rings = owners_now(spec, state_dir)
    start = time.time()
    deadline = time.monotonic() + duration_s
    next_report = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(SAMPLE_S)
        now_owners, now_rings = owners_now(spec, state_dir)
        result.samples += 1
        if any(len(nodes) != 1 for nodes in now_owners.values()):
            result.unowned_samples += 1
        moved, owners = owner_moves(owners, now_owners)
        result.vip_moves += len(moved)
        result.events += [f"{time.time() - start:.1f} s: {move}" for move in moved]
        fresh_rings = now_rings - rings
        if spec.kind == "rainctl" and fresh_rings:
            result.ring_changes += len(fresh_rings)
            result.events.append(f"{time.time() - start:.1f} s: new ring {sorted(fresh_rings)}")
        rings |= now_rings
        if time.monotonic() >= next_report:
            next_report += 60
            progress(
                f"{spec.name}: {time.time() - start:.0f} s, {result.vip_moves} VIP moves, "
                f"{result.ring_changes} ring changes"
            )
    end = time.time()
    result.duration_s = end - start
    for index in range(hogs):
        builder.stop_process(state_dir, f"{HOG}-{index}")
    builder.stop_process(state_dir, host_stalls.MONITOR)
    _note_stalls(result, stall_log, start, end)
    result.events.sort(key=lambda event: float(event.split(" s: ", 1)[0]))
    if loss_permille:
        result.dropped = dropped_packets(_nft(state_dir, "-j", "list", "table", "bridge",
                                              NFT_TABLE))  # fmt: skip
        _nft(state_dir, "delete", "table", "bridge", NFT_TABLE)
    kind = "R" if spec.kind == "rainctl" else "V"
    packets = report.parse_wire(wire_tail.text())
    counted = [packet for packet in packets if packet.kind == kind and start <= packet.time <= end]
    result.control_packets = len(counted)
    result.forwarded_copies = sum(
        node_count if ipaddress.ip_address(packet.destination).is_multicast else 1
        for packet in counted
    )
    result.client_gaps, result.longest_gap_ms = client_gaps(
        probe_tail.text(), since=start, until=end - 1.0
    )
    return result


def _note_stalls(result: SoakResult, stall_log: Path, start: float, end: float) -> None:
    """The host stall monitor's figures and events (module docstring) into `result`."""
    stall_text = stall_log.read_text(encoding="ascii") if stall_log.exists() else ""
    stalls = host_stalls.parse_stalls(stall_text, since=start, until=end)
    waits = host_stalls.parse_guest_waits(stall_text, since=start, until=end)
    result.guest_waits = len(waits)
    result.longest_guest_wait_ms = max((waited_ms for _, _, waited_ms in waits), default=0)
    result.host_stalls = len(stalls)
    result.longest_host_stall_ms = max((late_ms for _, late_ms, _ in stalls), default=0)
    result.events += [
        f"{at - start:.1f} s: the machine stopped {late_ms} ms (steal {stolen_ms} ms)"
        for at, late_ms, stolen_ms in stalls
    ]
    result.events += [
        f"{at - start:.1f} s: {guest} waited {waited_ms} ms for a host CPU"
        for at, guest, waited_ms in waits
    ]


def run_system(
    spec: SystemSpec,
    *,
    state_dir: Path,
    prefix: str,
    nodes: int,
    duration_s: float,
    loss_permille: int,
    hogs: int | None,
    progress: Progress,
    logs: Path | None = None,
) -> SoakResult:
    """One lab for `spec`: up, settle, watch, soak; down always. With `logs`, the nodes'
    logs (daemon, console) are copied to `logs/<system>/nodes/<node>/` before the lab goes down."""
    with watched_lab(spec, state_dir=state_dir, prefix=prefix, nodes=nodes) as lab:
        state_dir = lab[0]
        progress(f"{spec.name}: settled; soaking {duration_s:g} s")
        try:
            return soak(
                spec,
                state_dir,
                duration_s=duration_s,
                loss_permille=loss_permille,
                hogs=hogs if hogs is not None else (os.cpu_count() or 1),
                progress=progress,
            )
        finally:
            if logs is not None:
                builder.keep_logs(state_dir, logs / spec.name.replace(" ", "-"))
