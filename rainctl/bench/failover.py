"""`rainctl bench failover`: kill a VIP's owner many times, rainctl beside keepalived.

For each system (rainctl with the chosen profile first, then keepalived VRRPv3 at each
advert_int) one lab on the same machine and topology (`builder.up`, no back-ends), then:

1. wait until it settles (rainctl: one ring of every node, every VIP owned once; keepalived:
   every VIP held once, by its home node), start the resident watchers (`start_watchers`: the
   client's ICMP prober, every VIP every 10 ms, and the GARP reader) and the control-packet
   counter on br0 (rainctl.bench.wire);
2. rest `rest_s` seconds: control packets per second on br0, and the daemon's (or
   keepalived's) CPU and memory inside every guest from the status helpers' files;
3. `trials` times: pick a victim owning VIPs, SIGKILL its node (rainctl: alternately right
   after the token was sent to it, the holder case, and right after it was sent to another
   node; the wire log then says who really held it at the kill), wait until the client
   reaches each of its VIPs again, take the longest run of lost probes (the outage), boot the
   node again (`builder.restart_node`) and wait for the cluster to settle;
4. `down`, always.

A soak (e.g. `--duration` with a CPU hog, GOALS.md F3) would be one more phase per system
between 2 and 3, reading the same logs: the lab, the watchers and the wire log stay up for
the whole system run.
"""

from __future__ import annotations

import ipaddress
import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rainctl.bench import report
from rainctl.bench.report import RestResult, SystemResult, TrialResult
from rainctl.lab import builder, demo, keepalived, probe
from rainctl.lab.builder import DaemonStatus, Watchers
from rainctl.lab.plan import LabPlan, Node, lab_vips, node_id
from rainctl.lab.processes import LabError

WIRE = "wire-counter"
WIRE_LOG = "wire.log"
SETTLE_TIMEOUT_S = 45.0
RECOVERY_TIMEOUT_S = 20.0
"""From the kill until the client reaches each of the victim's VIPs again."""
TOKEN_WAIT_S = 3.0
"""How long to wait for the token to reach (or leave) the victim before killing anyway."""
AFTER_RECOVERY_S = 0.3
SETTLED_QUIET_S = 1.0
"""Settled state held this long (and every VIP answering) before the next kill."""
STATUS_FRESH_S = 2.0


@dataclass(frozen=True, slots=True)
class SystemSpec:
    kind: str
    """"rainctl" or "keepalived"."""
    profile: str | None = None
    advert_int: float | None = None
    exclusion: str = "conservative"
    """rainctl's `cluster.exclusion`."""
    ring_group: bool = True
    """rainctl's cluster has the lab's `ring_group` (one datagram per hop)."""

    @property
    def name(self) -> str:
        if self.kind == "rainctl":
            suffix = "" if self.exclusion == "conservative" else f" {self.exclusion}"
            suffix += "" if self.ring_group else " unicast"
            return f"rainctl {self.profile}{suffix}"
        return f"keepalived {self.advert_int:g}"

    @property
    def setting(self) -> str:
        return str(self.profile) if self.kind == "rainctl" else f"advert_int {self.advert_int:g}"


# ---- logs read from an offset (the whole probe log grows by ~40 kB/s) --------------------


class LogTail:
    """The part of a growing log written since a given byte offset."""

    def __init__(self, path: Path, offset: int | None = None) -> None:
        self.path = path
        self.offset = path.stat().st_size if offset is None else offset

    def text(self) -> str:
        with self.path.open("rb") as log:
            log.seek(self.offset)
            data = log.read()
        # Only complete lines: a line being written is left for the next read.
        return data[: data.rfind(b"\n") + 1].decode("ascii", errors="replace")

    def as_file(self, scratch: Path) -> Path:
        """The tail written to `scratch`, for rainctl.lab.probe's readers."""
        scratch.write_text(self.text(), encoding="ascii")
        return scratch


# ---- status of the peer's nodes -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PeerNode:
    node: Node
    fresh: bool
    owned: tuple[str, ...]
    running: bool
    """keepalived's parent and VRRP child both alive."""
    document: dict[str, Any] | None


def peer_status(state_dir: Path, plan: LabPlan) -> list[PeerNode]:
    vips = {str(vip) for vip in lab_vips(plan)}
    lab = builder.status(state_dir)
    result = []
    for node_status in lab.nodes:
        path = state_dir / "nodes" / node_status.node.name / keepalived.STATUS_FILE
        document: dict[str, Any] | None = None
        fresh = False
        try:
            fresh = time.time() - path.stat().st_mtime < STATUS_FRESH_S
            loaded = json.loads(path.read_text(encoding="utf-8"))
            document = loaded if isinstance(loaded, dict) else None
        except (OSError, ValueError):
            pass
        alive = node_status.state == "running" and fresh and document is not None
        processes = document.get("processes", []) if document else []
        running = alive and bool(processes) and all(p.get("pid") for p in processes)
        owned = tuple(a for a in (document or {}).get("addresses", []) if a in vips)
        result.append(PeerNode(node_status.node, alive, owned if alive else (), running, document))
    return result


def peer_settled(plan: LabPlan, nodes: list[PeerNode]) -> bool:
    """Every node runs keepalived and every VIP is held exactly once, by its home node."""
    if not all(n.running for n in nodes):
        return False
    owners = Counter(vip for n in nodes for vip in n.owned)
    vips = [str(vip) for vip in lab_vips(plan)]
    if set(owners) != set(vips) or set(owners.values()) != {1}:
        return False
    return all(vip in next(n for n in nodes if n.node == keepalived.home_node(plan, vip)).owned
               for vip in vips)  # fmt: skip


# ---- the run --------------------------------------------------------------------------------


Progress = Callable[[str], None]


def _peer_hook(advert_int: float) -> builder.PeerHook:
    def hook(plan: LabPlan, node: Node, scratch: Path) -> str:
        text = keepalived.config(plan, node, advert_int=advert_int)
        (scratch / keepalived.CONFIG_FILE).write_text(text, encoding="utf-8")
        return keepalived.init_section(node, scratch=str(scratch), python=sys.executable)

    return hook


def rings_and_owners(state_dir: Path) -> tuple[set[tuple[int, int, int]], list[list[str]]]:
    """The rings the lab's daemons report and each one's owned VIPs (did a benchmark move
    anything?)."""
    status = builder.status(state_dir)
    rings = {
        (ring["epoch"], ring["creator"], ring["creator_incarnation"])
        for daemon in status.daemons
        if (ring := (daemon.document or {}).get("ring")) is not None
    }
    return rings, [sorted(daemon.owned) for daemon in status.daemons]


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll `condition` every 50 ms until it holds; LabError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise LabError(f"{what}: not within {timeout_s:g} s")
        time.sleep(0.05)


def rainctl_settled(plan: LabPlan, daemons: Sequence[DaemonStatus]) -> bool:
    """One ring of every daemon, every VIP owned exactly once and by its home node: the
    state keepalived's trials start from (`peer_settled`), so both systems' kills are alike
    (without it a kill comes a second after the restarted node joined, owning nothing yet)."""
    vips = [str(vip) for vip in lab_vips(plan)]
    if not demo.agree(daemons, set(vips)):
        return False
    owned = {daemon.node.name: daemon.owned for daemon in daemons}
    return all(vip in owned.get(keepalived.home_node(plan, vip).name, ()) for vip in vips)


def _settled(spec: SystemSpec, state_dir: Path) -> bool:
    status = builder.status(state_dir)
    if spec.kind == "rainctl":
        return rainctl_settled(status.plan, status.daemons)
    return peer_settled(status.plan, peer_status(state_dir, status.plan))


def wait_settled(spec: SystemSpec, state_dir: Path, watchers: Watchers | None) -> None:
    """Settled (see `_settled`) for SETTLED_QUIET_S, and every VIP answering the client."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    since: float | None = None
    while True:
        now = time.monotonic()
        if _settled(spec, state_dir):
            since = now if since is None else since
            if now - since >= SETTLED_QUIET_S:
                break
        else:
            since = None
        if now > deadline:
            raise LabError(f"{spec.name}: the lab did not settle within {SETTLE_TIMEOUT_S:g} s")
        time.sleep(0.05)
    if watchers is not None:
        vips = demo.all_vips(builder.status(state_dir))
        tail = LogTail(watchers.probe_log)
        scratch = watchers.probe_log.with_name("settle.log")
        wait_until(
            lambda: vips <= probe.answered(tail.as_file(scratch), since=time.time() - 1.0),
            SETTLE_TIMEOUT_S,
            f"{spec.name}: every VIP answering the client",
        )


def _snapshots(spec: SystemSpec, state_dir: Path) -> list[dict[str, Any] | None]:
    plan = builder.status(state_dir).plan
    documents = []
    for node in plan.nodes:
        try:
            loaded = json.loads(
                (state_dir / "nodes" / node.name / builder.STATUS_FILE).read_text("utf-8")
            )
        except (OSError, ValueError):
            loaded = None
        documents.append(loaded if isinstance(loaded, dict) else None)
    return documents


def _ticks_rss(spec: SystemSpec, document: dict[str, Any]) -> tuple[int, int] | None:
    if spec.kind == "rainctl":
        ticks, rss = document.get("daemon_cpu_ticks"), document.get("daemon_rss_kb")
        return (ticks, rss) if isinstance(ticks, int) and isinstance(rss, int) else None
    processes = document.get("processes", [])
    if not processes or any(p.get("cpu_ticks") is None for p in processes):
        return None
    return (
        sum(int(p["cpu_ticks"]) for p in processes),
        sum(int(p.get("rss_kb") or 0) for p in processes),
    )


def measure_rest(spec: SystemSpec, state_dir: Path, wire_log: Path, rest_s: float) -> RestResult:
    """Control packets on br0 and the guests' daemon CPU and memory over `rest_s`."""
    tail = LogTail(wire_log)
    before = _snapshots(spec, state_dir)
    start = time.time()
    time.sleep(rest_s)
    end = time.time()
    after = _snapshots(spec, state_dir)
    cpu: list[float] = []
    rss: list[int] = []
    for first, last in zip(before, after, strict=True):
        if first is None or last is None:
            continue
        a, b = _ticks_rss(spec, first), _ticks_rss(spec, last)
        seconds = float(last.get("monotonic", 0.0)) - float(first.get("monotonic", 0.0))
        if a is None or b is None or seconds <= 0:
            continue
        cpu.append(report.cpu_percent(a[0], b[0], int(last.get("clock_ticks", 100)), seconds))
        rss.append(b[1])
    kind = "R" if spec.kind == "rainctl" else "V"
    rate = report.control_rate(report.parse_wire(tail.text()), kind, start, end)
    return RestResult(seconds=end - start, control=rate, cpu_percent=tuple(cpu), rss_kb=tuple(rss))


def _kill_on_token(state_dir: Path, wire_log: Path, victim: Node, victim_id: int, *,
                   holder: bool) -> float:  # fmt: skip
    """SIGKILL `victim` as soon as the wire log shows a TOKEN sent to it (holder) or to
    another node (non-holder); after TOKEN_WAIT_S without one, kill anyway. Returns the wall
    clock just before the kill."""
    tail = LogTail(wire_log)
    deadline = time.monotonic() + TOKEN_WAIT_S
    while time.monotonic() < deadline:
        text = tail.text()
        tail.offset += len(text.encode("ascii"))
        packets = report.parse_wire(text)
        hit = any(
            (destination := report.token_destination(p)) is not None
            and (destination == victim_id) == holder
            for p in packets
        )
        if hit:
            break
        time.sleep(0.001)
    killed_at = time.time()
    builder.kill_node(state_dir, victim.name)
    return killed_at


def run_trial(
    spec: SystemSpec, state_dir: Path, watchers: Watchers, wire_log: Path, number: int
) -> TrialResult:
    status = builder.status(state_dir)
    plan = status.plan
    vips_all = [str(vip) for vip in lab_vips(plan)]
    wire_tail = LogTail(wire_log)
    probe_tail = LogTail(watchers.probe_log)
    if spec.kind == "rainctl":
        owners = sorted((d for d in status.daemons if d.owned), key=lambda d: d.node_id)
        if not owners:
            raise LabError("no daemon owns a VIP")
        want_holder = number % 2 == 1
        daemon = owners[(number // 2) % len(owners)]
        victim, moved = daemon.node, tuple(sorted(daemon.owned, key=ipaddress.IPv4Address))
        killed_at = _kill_on_token(state_dir, wire_log, victim, daemon.node_id, holder=want_holder)
        holder = report.holder_at(report.parse_wire(wire_tail.text()), killed_at)
        case = "holder" if holder == node_id(plan, victim) else "non-holder"
    else:
        nodes = peer_status(state_dir, plan)
        target = vips_all[(number - 1) % len(vips_all)]
        owner = next(n for n in nodes if target in n.owned)
        victim = owner.node
        moved = tuple(sorted(owner.owned, key=ipaddress.IPv4Address))
        killed_at = time.time()
        builder.kill_node(state_dir, victim.name)
        case = "master"
    scratch = watchers.probe_log.with_name("trial.log")
    deadline = time.monotonic() + RECOVERY_TIMEOUT_S
    while time.monotonic() < deadline:
        answered = probe.answered(probe_tail.as_file(scratch), since=killed_at + 0.05)
        if set(moved) <= answered:
            break
        time.sleep(0.05)
    time.sleep(AFTER_RECOVERY_S)
    until = time.time()
    runs = probe.outages(probe_tail.as_file(scratch), since=killed_at - 0.1, until=until)
    worst: float | None = 0.0
    lost = 0
    for vip in moved:
        run = runs.get(vip)
        if run is None:
            continue
        duration = run.duration_s
        if duration is None:
            worst, lost = None, max(lost, run.lost)
            break
        if worst is not None and duration * 1000 >= worst:
            worst, lost = duration * 1000, run.lost
    builder.restart_node(state_dir, victim.name)
    wait_settled(spec, state_dir, watchers)
    return TrialResult(spec.name, number, case, victim.name, moved, worst, lost, killed_at)


@contextmanager
def watched_lab(
    spec: SystemSpec, *, state_dir: Path, prefix: str, nodes: int
) -> Iterator[tuple[Path, Watchers, Path]]:
    """A settled lab of `spec` (no back-ends) with the client's prober, the GARP reader and
    the br0 packet counter running: (absolute state dir, watchers, wire log). `down` at the
    end, always."""
    if spec.kind == "rainctl":
        builder.up(
            state_dir,
            nodes=nodes,
            backends=0,
            prefix=prefix,
            profile=spec.profile,
            exclusion=spec.exclusion,
            ring_group=spec.ring_group,
        )
    else:
        assert spec.advert_int is not None
        builder.up(
            state_dir, nodes=nodes, backends=0, prefix=prefix, peer=_peer_hook(spec.advert_int)
        )
    try:
        state_dir = state_dir.absolute()
        wait_settled(spec, state_dir, None)
        watchers = builder.start_watchers(state_dir)
        plan = builder.status(state_dir).plan
        wire_log = state_dir / builder.WATCH_DIR / WIRE_LOG
        wire_log.touch()
        builder.start_process(
            state_dir,
            WIRE,
            ("ip", "netns", "exec", plan.switch_namespace, sys.executable, "-m",
             "rainctl.bench.wire", "--interface", plan.bridges[0][0],
             "--output", str(wire_log)),
            state_dir / builder.WATCH_DIR / f"{WIRE}.err",
        )  # fmt: skip
        wait_settled(spec, state_dir, watchers)
        yield state_dir, watchers, wire_log
    finally:
        builder.down(state_dir)


def run_system(
    spec: SystemSpec,
    *,
    state_dir: Path,
    prefix: str,
    nodes: int,
    trials: int,
    rest_s: float,
    progress: Progress,
    logs: Path | None = None,
) -> SystemResult:
    """One lab for `spec`: up, settle, rest, `trials` kills; down always. With `logs`, the
    nodes' logs and the watchers' (probe, GARP, wire) are copied to `logs/<system>/` before
    the lab goes down, for reading a slow or failed trial afterwards."""
    result = SystemResult(system=spec.name, kind=spec.kind, setting=spec.setting)
    started = time.monotonic()
    with watched_lab(spec, state_dir=state_dir, prefix=prefix, nodes=nodes) as lab:
        state_dir, watchers, wire_log = lab
        progress(f"{spec.name}: lab settled in {time.monotonic() - started:.1f} s; resting")
        try:
            result.rest = measure_rest(spec, state_dir, wire_log, rest_s)
            for number in range(1, trials + 1):
                trial = run_trial(spec, state_dir, watchers, wire_log, number)
                result.trials.append(trial)
                outage = "not recovered" if trial.outage_ms is None else f"{trial.outage_ms:.0f} ms"
                progress(
                    f"{spec.name}: trial {number}/{trials} killed {trial.victim} ({trial.case}, "
                    f"{' '.join(trial.vips)}): outage {outage}"
                )
        finally:
            if logs is not None:
                builder.keep_logs(state_dir, logs / spec.name.replace(" ", "-"), watchers=True)
    return result


def systems(profile: str, peer: str | None, advert_ints: tuple[float, ...]) -> list[SystemSpec]:
    """rainctl first (the ratios' base), then the peer at each advert_int."""
    specs = [SystemSpec("rainctl", profile=profile)]
    if peer == "keepalived":
        specs += [SystemSpec("keepalived", advert_int=a) for a in advert_ints]
    return specs


def run(
    specs: list[SystemSpec],
    *,
    state_dir: Path,
    prefix: str,
    nodes: int,
    trials: int,
    rest_s: float,
    progress: Progress,
    logs: Path | None = None,
) -> list[SystemResult]:
    return [
        run_system(
            spec,
            state_dir=state_dir,
            prefix=prefix,
            nodes=nodes,
            trials=trials,
            rest_s=rest_s,
            progress=progress,
            logs=logs,
        )
        for spec in specs
    ]
