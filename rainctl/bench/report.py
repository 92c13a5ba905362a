"""The pure parts of `rainctl bench failover`: statistics, reading the control-packet log,
who held the token at a kill, CPU at rest, and the report (rows and JSON).

No I/O: the lab side (rainctl.bench.failover) hands in text and numbers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rainctl.core.messages import MessageType

TOKEN_TYPES = (MessageType.TOKEN, MessageType.TOKEN_PASS)
"""The datagrams that move the token (a pass to the group carries its predecessor's ACK)."""


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (fraction in 0..1) of a non-empty sequence: a value that
    occurred, so p99 of 20 trials is the maximum."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction {fraction}: must be 0..1")
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def figures(values: Sequence[float], unit: str = "s", digits: int = 3) -> str:
    """`p50 X / p99 Y / max Z unit` of a non-empty sequence (the benchmarks' printed line)."""
    p50, p99, worst = percentile(values, 0.5), percentile(values, 0.99), max(values)
    return f"p50 {p50:.{digits}f} / p99 {p99:.{digits}f} / max {worst:.{digits}f} {unit}"


@dataclass(frozen=True, slots=True)
class Summary:
    count: int
    """Trials measured (recovered)."""
    failed: int
    """Trials whose VIPs the client did not reach again within the bench's timeout."""
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None


def summarize(outages_ms: Iterable[float | None]) -> Summary:
    """p50 / p99 / max over the recovered trials; None outages count as failed."""
    values = list(outages_ms)
    measured = [value for value in values if value is not None]
    failed = len(values) - len(measured)
    if not measured:
        return Summary(0, failed, None, None, None)
    return Summary(
        count=len(measured),
        failed=failed,
        p50_ms=percentile(measured, 0.5),
        p99_ms=percentile(measured, 0.99),
        max_ms=max(measured),
    )


# ---- the control-packet log (rainctl.bench.wire) --------------------------------------------


@dataclass(frozen=True, slots=True)
class WirePacket:
    kind: str
    """"R" (rainctl ring datagram) or "V" (VRRP advertisement)."""
    time: float
    source: str
    destination: str
    length: int
    fields: tuple[int, ...]
    """R: (type, source node id, destination node id); V: (vrid, priority)."""


def parse_wire(text: str) -> list[WirePacket]:
    """The complete lines of a wire log (a line being written is skipped)."""
    packets = []
    for line in text.splitlines():
        parts = line.split()
        expected = {"R": 8, "V": 7}.get(parts[0] if parts else "")
        if expected is None or len(parts) != expected:
            continue
        try:
            packets.append(
                WirePacket(
                    kind=parts[0],
                    time=float(parts[1]),
                    source=parts[2],
                    destination=parts[3],
                    length=int(parts[4]),
                    fields=tuple(int(value) for value in parts[5:]),
                )
            )
        except ValueError:
            continue
    return packets


@dataclass(frozen=True, slots=True)
class ControlRate:
    packets_per_s: float
    bytes_per_s: float


def control_rate(packets: Iterable[WirePacket], kind: str, start: float, end: float) -> ControlRate:
    """Packets and IP bytes per second of `kind` seen in [start, end)."""
    if end <= start:
        raise ValueError(f"empty window {start}..{end}")
    chosen = [p for p in packets if p.kind == kind and start <= p.time < end]
    seconds = end - start
    return ControlRate(len(chosen) / seconds, sum(p.length for p in chosen) / seconds)


def token_destination(packet: WirePacket) -> int | None:
    """The node a token datagram (TOKEN, TOKEN_PASS) goes to, else None."""
    if packet.kind == "R" and packet.fields and packet.fields[0] in TOKEN_TYPES:
        return packet.fields[2]
    return None


def holder_at(packets: Iterable[WirePacket], when: float) -> int | None:
    """The node the last TOKEN datagram seen before `when` went to: the token's holder then
    (None if no token was seen). A holder passing it on sends the next TOKEN, so a node that
    had just passed it is not the holder."""
    holder = None
    latest = -math.inf
    for packet in packets:
        destination = token_destination(packet)
        if destination is not None and latest <= packet.time <= when:
            holder, latest = destination, packet.time
    return holder


# ---- CPU and memory at rest -----------------------------------------------------------------


def cpu_percent(ticks_before: int, ticks_after: int, clock_ticks: int, seconds: float) -> float:
    """CPU time between two readings as % of one core."""
    if seconds <= 0 or clock_ticks <= 0:
        raise ValueError("cpu_percent needs a positive interval and clock tick rate")
    return 100.0 * (ticks_after - ticks_before) / clock_ticks / seconds


# ---- the report ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TrialResult:
    system: str
    """e.g. "rainctl fast" or "keepalived 0.05"."""
    number: int
    case: str
    """rainctl: "holder" or "non-holder" as the wire log saw it at the kill; keepalived:
    "master" (the token notion does not apply)."""
    victim: str
    vips: tuple[str, ...]
    """The VIPs the victim owned."""
    outage_ms: float | None
    """The longest client outage among `vips` (None: one never answered again)."""
    lost: int
    """Lost probes of that VIP."""
    killed_at: float | None = None
    """When the victim was killed (seconds since the epoch), for matching the nodes' logs."""


@dataclass(frozen=True, slots=True)
class RestResult:
    seconds: float
    control: ControlRate
    cpu_percent: tuple[float, ...]
    """Per node: the daemon's (rainctl) or keepalived's (parent + VRRP child) CPU, % of one
    core, inside the guest."""
    rss_kb: tuple[int, ...]
    """Per node: the same processes' resident memory at the end of the window."""


@dataclass(slots=True)
class SystemResult:
    system: str
    kind: str
    """"rainctl" or "keepalived"."""
    setting: str
    """The rainctl profile or keepalived's advert_int."""
    rest: RestResult | None = None
    trials: list[TrialResult] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Row:
    system: str
    case: str
    summary: Summary
    ratio_p50: float | None
    """This row's p50 / rainctl's p50 for the same case ("all" for the peer)."""
    ratio_p99: float | None
    control_pps: float | None
    cpu_percent: float | None
    """Mean over the nodes."""
    rss_mb: float | None
    """Mean over the nodes."""


def _ratio(value: float | None, base: float | None) -> float | None:
    if value is None or base is None or base <= 0:
        return None
    return value / base


def rows(results: Sequence[SystemResult]) -> list[Row]:
    """One row per system and case, plus an "all" row per system; ratios against the first
    rainctl system's "all" row (same lab, same run)."""
    table: list[Row] = []
    base: Summary | None = None
    for result in results:
        if result.kind == "rainctl" and result.trials:
            base = summarize(t.outage_ms for t in result.trials)
            break
    for result in results:
        cases = sorted({t.case for t in result.trials})
        groups = [("all", list(result.trials))]
        if len(cases) > 1:
            groups += [(case, [t for t in result.trials if t.case == case]) for case in cases]
        rest = result.rest
        for index, (case, trials) in enumerate(groups):
            summary = summarize(t.outage_ms for t in trials)
            first = index == 0 and rest is not None
            table.append(
                Row(
                    system=result.system,
                    case=case,
                    summary=summary,
                    ratio_p50=_ratio(summary.p50_ms, base.p50_ms if base else None),
                    ratio_p99=_ratio(summary.p99_ms, base.p99_ms if base else None),
                    control_pps=rest.control.packets_per_s if first and rest else None,
                    cpu_percent=(
                        sum(rest.cpu_percent) / len(rest.cpu_percent)
                        if first and rest and rest.cpu_percent
                        else None
                    ),
                    rss_mb=(
                        sum(rest.rss_kb) / len(rest.rss_kb) / 1024
                        if first and rest and rest.rss_kb
                        else None
                    ),
                )
            )
    return table


def report_json(results: Sequence[SystemResult], meta: dict[str, Any]) -> dict[str, Any]:
    """The machine view: the run's parameters, one entry per system with its rest figures,
    every trial, and the summary rows."""
    return {
        **meta,
        "systems": [
            {
                "system": r.system,
                "kind": r.kind,
                "setting": r.setting,
                "rest": None
                if r.rest is None
                else {
                    "seconds": r.rest.seconds,
                    "control_packets_per_s": r.rest.control.packets_per_s,
                    "control_bytes_per_s": r.rest.control.bytes_per_s,
                    "cpu_percent": list(r.rest.cpu_percent),
                    "rss_kb": list(r.rest.rss_kb),
                },
                "trials": [
                    {
                        "number": t.number,
                        "case": t.case,
                        "victim": t.victim,
                        "vips": list(t.vips),
                        "outage_ms": t.outage_ms,
                        "lost_probes": t.lost,
                        "killed_at": t.killed_at,
                    }
                    for t in r.trials
                ],
            }
            for r in results
        ],
        "rows": [
            {
                "system": row.system,
                "case": row.case,
                "trials": row.summary.count,
                "failed": row.summary.failed,
                "p50_ms": row.summary.p50_ms,
                "p99_ms": row.summary.p99_ms,
                "max_ms": row.summary.max_ms,
                "ratio_p50_to_rainctl": row.ratio_p50,
                "ratio_p99_to_rainctl": row.ratio_p99,
                "control_packets_per_s": row.control_pps,
                "cpu_percent_mean": row.cpu_percent,
                "rss_mb_mean": row.rss_mb,
            }
            for row in rows(results)
        ],
    }
