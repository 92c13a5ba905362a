"""Pure renderers of a simulator run: a `SimReport` in, rich renderables or JSON out.

The report is plain data built by `rainctl/cli/sim.py` from the simulator's result, so this
module (like every production module but `sim.py`) never imports `rainctl.testing`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

RING_MERGE_WINDOW_MS = 100
"""Installs of one ring by several nodes within this window share one timeline row."""
VIPS_SHOWN = 4
"""Longer VIP lists are shortened in the collapsed timeline (`--all` shows them whole)."""
HIDDEN_KINDS = frozenset({"deliver"})
"""Timeline kinds shown only with `--all`."""


@dataclass(frozen=True, slots=True)
class TimelineEvent:
    """One simulator timeline entry; node 0 stands for the whole cluster (e.g. a partition)."""

    at_ms: int
    node: int
    kind: str
    detail: str


@dataclass(frozen=True, slots=True)
class OutageRecord:
    """A VIP whose owner crashed or paused, and when a live node owned it again."""

    vip: str
    failed_node: int
    was_holder: bool
    failed_at_ms: int
    reowned_at_ms: int | None

    @property
    def outage_ms(self) -> int | None:
        if self.reowned_at_ms is None:
            return None
        return self.reowned_at_ms - self.failed_at_ms


@dataclass(frozen=True, slots=True)
class SimReport:
    """Everything `rainctl sim` shows about one run, as plain values."""

    seed: int
    nodes: int
    vips: int
    profile: str
    quorum: str
    exclusion: str
    rebalance: bool
    duration_ms: int
    faults: tuple[str, ...]
    """The fault schedule, one short description per fault (`crash 3@3000`)."""
    scenario: dict[str, object]
    """The whole scenario as a JSON-ready mapping."""
    replay: str
    """The command that reruns exactly this simulation."""
    last_fault_ms: int
    converged_at_ms: int | None
    liveness_checked: bool
    liveness_bound_ms: int
    timeline: tuple[TimelineEvent, ...]
    outages: tuple[OutageRecord, ...]
    datagrams_sent: int
    datagrams_rejected: int
    steps: int
    max_dual_owner_ms: int
    final_ring_size: int
    wall_s: float
    """Wall-clock seconds the simulation took (measured by the CLI)."""
    counters: dict[str, int] = field(default_factory=dict)

    @property
    def convergence_ms(self) -> int | None:
        """Time from the last fault to one ring of the live nodes owning every VIP."""
        if self.converged_at_ms is None:
            return None
        return self.converged_at_ms - self.last_fault_ms

    @property
    def speed(self) -> float | None:
        """Simulated seconds per wall-clock second (None if the run took no measurable time)."""
        if self.wall_s <= 0:
            return None
        return self.duration_ms / 1000 / self.wall_s


@dataclass(frozen=True, slots=True)
class TimelineRow:
    """One displayed timeline row: several nodes when they did the same thing together."""

    at_ms: int
    nodes: tuple[int, ...]
    kind: str
    detail: str


# ---- the timeline --------------------------------------------------------------------------


def timeline_rows(events: tuple[TimelineEvent, ...], *, everything: bool) -> list[TimelineRow]:
    """The rows of the timeline table.

    With `everything`, one row per event. Otherwise: no `deliver` rows; ownership as changes
    (`gains vip`, `loses vip`), rows that change nothing dropped; installs of the same ring by
    several nodes within `RING_MERGE_WINDOW_MS` merged into one row; long VIP lists shortened.
    """
    if everything:
        return [TimelineRow(e.at_ms, (e.node,), e.kind, e.detail) for e in events]
    rows: list[TimelineRow] = []
    owned: dict[int, frozenset[str]] = {}
    ring_rows: dict[str, int] = {}
    for event in events:
        if event.kind in HIDDEN_KINDS:
            continue
        if event.kind == "start":
            owned[event.node] = frozenset()
        if event.kind == "ring":
            index = ring_rows.get(event.detail)
            if index is not None and event.at_ms - rows[index].at_ms <= RING_MERGE_WINDOW_MS:
                row = rows[index]
                nodes = tuple(sorted((*row.nodes, event.node)))
                rows[index] = TimelineRow(row.at_ms, nodes, row.kind, row.detail)
                continue
            ring_rows[event.detail] = len(rows)
        detail = event.detail
        if event.kind == "own":
            now = _vip_set(event.detail)
            before = owned.get(event.node, frozenset())
            owned[event.node] = now
            if now == before:
                continue
            detail = _ownership_change(before, now)
        elif event.kind == "announce":
            detail = _short_vips(sorted(_vip_set(event.detail)))
        elif event.kind == "ring":
            detail = _ring_detail(event.detail)
        rows.append(TimelineRow(event.at_ms, (event.node,), event.kind, detail))
    return rows


def _vip_set(detail: str) -> frozenset[str]:
    return frozenset(vip for vip in detail.split(",") if vip and vip != "-")


def _ring_detail(detail: str) -> str:
    """`2.1 [1,2,3]` (ring id epoch.creator, members) as `2.1: members 1,2,3`."""
    ring, _, members = detail.partition(" ")
    if not (members.startswith("[") and members.endswith("]")):
        return detail
    return f"{ring}: members {members[1:-1]}"


def _short_vips(vips: list[str]) -> str:
    if len(vips) <= VIPS_SHOWN:
        return ", ".join(vips)
    return ", ".join(vips[:VIPS_SHOWN]) + f", ... ({len(vips)} in all)"


def _ownership_change(before: frozenset[str], now: frozenset[str]) -> str:
    parts = []
    gained = sorted(now - before)
    lost = sorted(before - now)
    if gained:
        parts.append("gains " + _short_vips(gained))
    if lost:
        parts.append("loses " + _short_vips(lost))
    return "; ".join(parts) + f" (owns {len(now)})"


def _nodes_cell(nodes: tuple[int, ...]) -> str:
    return ",".join("-" if node == 0 else str(node) for node in nodes)


def timeline_table(rows: list[TimelineRow]) -> Table:
    table = Table(title="timeline (simulated)", title_justify="left")
    table.add_column("ms", justify="right")
    table.add_column("node")
    table.add_column("event")
    table.add_column("detail")
    styles = {
        "fault": "bold red",
        "ring": "cyan",
        "own": "green",
        "left": "yellow",
        "exclude": "red",
        "911": "magenta",
    }
    for row in rows:
        table.add_row(
            str(row.at_ms),
            _nodes_cell(row.nodes),
            Text(row.kind, style=styles.get(row.kind, "")),
            row.detail,
        )
    return table


# ---- outages and summary -------------------------------------------------------------------


def outage_table(outages: tuple[OutageRecord, ...]) -> RenderableType:
    if not outages:
        return Text("VIP outages: none (no node owning VIPs crashed or paused)")
    table = Table(title="VIP outages (simulated time)", title_justify="left")
    table.add_column("VIP")
    table.add_column("node", justify="right")
    table.add_column("holder")
    table.add_column("failed ms", justify="right")
    table.add_column("re-owned ms", justify="right")
    table.add_column("outage ms", justify="right")
    for outage in outages:
        table.add_row(
            outage.vip,
            str(outage.failed_node),
            "yes" if outage.was_holder else "no",
            str(outage.failed_at_ms),
            "never" if outage.reowned_at_ms is None else str(outage.reowned_at_ms),
            "-" if outage.outage_ms is None else str(outage.outage_ms),
        )
    return table


def _convergence_line(report: SimReport) -> str:
    if report.converged_at_ms is None:
        return "not converged by the end of the run"
    return (
        f"{report.convergence_ms} ms after the last fault (at {report.converged_at_ms} ms); "
        f"final ring of {report.final_ring_size} nodes"
    )


def _liveness_line(report: SimReport) -> str:
    if report.liveness_checked:
        return f"checked, passed (bound {report.liveness_bound_ms} ms after the last fault)"
    tail = report.duration_ms - report.last_fault_ms
    return (
        f"not checked: the run ends {tail} ms after the last fault, "
        f"the bound is {report.liveness_bound_ms} ms"
    )


def _speed_line(report: SimReport) -> str:
    speed = "-" if report.speed is None else f"{report.speed:,.0f}"
    return (
        f"{report.duration_ms} simulated ms in {report.wall_s * 1000:.0f} wall ms "
        f"({speed} simulated s per wall s)"
    )


def summary_table(report: SimReport) -> Table:
    table = Table(title="summary", title_justify="left", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    outages = [o.outage_ms for o in report.outages if o.outage_ms is not None]
    unowned = sum(1 for o in report.outages if o.outage_ms is None)
    worst = f"max {max(outages)} ms over {len(outages)} VIPs" if outages else "none"
    if unowned:
        worst += f", {unowned} never re-owned"
    rows = [
        ("cluster", f"{report.nodes} nodes, {report.vips} VIPs"),
        (
            "policies",
            f"{report.profile} timers, quorum {report.quorum}, exclusion {report.exclusion}, "
            + ("rebalance on" if report.rebalance else "no rebalance"),
        ),
        ("seed", f"{report.seed} (replay: {report.replay})"),
        ("run", _speed_line(report)),
        ("last fault", f"{report.last_fault_ms} ms"),
        ("converged", _convergence_line(report)),
        ("liveness", _liveness_line(report)),
        ("VIP outage", worst),
        ("dual owner", f"max window {report.max_dual_owner_ms} ms"),
        ("datagrams", f"{report.datagrams_sent} sent, {report.datagrams_rejected} rejected"),
        ("steps", str(report.steps)),
        ("counters", ", ".join(f"{name} {value}" for name, value in report.counters.items())),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


def sim_view(report: SimReport, *, everything: bool = False) -> RenderableType:
    """The human report of a run: header, timeline, outages, summary."""
    faults = ", ".join(report.faults) if report.faults else "none"
    header = Text.assemble(
        ("rainctl sim", "bold"),
        f": {report.nodes} simulated nodes, {report.vips} VIPs, profile {report.profile}, "
        f"seed {report.seed}, {report.duration_ms} ms\nfaults: {faults}",
    )
    return Group(
        header,
        timeline_table(timeline_rows(report.timeline, everything=everything)),
        outage_table(report.outages),
        summary_table(report),
    )


# ---- JSON ----------------------------------------------------------------------------------


def sim_document(report: SimReport, *, everything: bool = False) -> dict[str, object]:
    """The machine-readable report: stable keys; the timeline uncollapsed (`deliver` entries
    only with `everything`)."""
    return {
        "scenario": report.scenario,
        "replay": report.replay,
        "timeline": [
            {"at_ms": e.at_ms, "node": e.node, "kind": e.kind, "detail": e.detail}
            for e in report.timeline
            if everything or e.kind not in HIDDEN_KINDS
        ],
        "outages": [
            {
                "vip": o.vip,
                "failed_node": o.failed_node,
                "was_holder": o.was_holder,
                "failed_at_ms": o.failed_at_ms,
                "reowned_at_ms": o.reowned_at_ms,
                "outage_ms": o.outage_ms,
            }
            for o in report.outages
        ],
        "summary": {
            "nodes": report.nodes,
            "vips": report.vips,
            "profile": report.profile,
            "quorum": report.quorum,
            "exclusion": report.exclusion,
            "rebalance": report.rebalance,
            "seed": report.seed,
            "duration_ms": report.duration_ms,
            "last_fault_ms": report.last_fault_ms,
            "converged_at_ms": report.converged_at_ms,
            "convergence_ms": report.convergence_ms,
            "final_ring_size": report.final_ring_size,
            "liveness_checked": report.liveness_checked,
            "liveness_bound_ms": report.liveness_bound_ms,
            "max_outage_ms": max(
                (o.outage_ms for o in report.outages if o.outage_ms is not None), default=None
            ),
            "max_dual_owner_ms": report.max_dual_owner_ms,
            "datagrams_sent": report.datagrams_sent,
            "datagrams_rejected": report.datagrams_rejected,
            "steps": report.steps,
            "wall_s": round(report.wall_s, 6),
            "sim_seconds_per_wall_second": (
                None if report.speed is None else round(report.speed, 1)
            ),
        },
        "counters": dict(report.counters),
    }
