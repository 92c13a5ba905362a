"""Where a lab failover's time goes: the phases of every trial of a `rainctl bench failover`
run, read from its saved results and the logs it kept.

    rainctl bench failover ... --save run.json --logs DIR
    python tests/bench/failover_phases.py run.json DIR

For each rainctl trial, measured from the kill (the bench's `killed_at`, host clock; the
UML guests' clocks follow the host's, their log lines agree with the switch's GARP reader
to about a millisecond), for the victim's VIP that got there last:

* `decided`: the first failure decision of a survivor (an exclusion or a regeneration);
* `ring`: the first survivor's ring without the victim installed;
* `owned`: the VIP's new owner's ring driver has it (its token copy gives it the VIP);
* `applied`: its new owner's reconciler has the VIP in the kernel ("owned VIPs applied");
* `announced`: the new owner's gratuitous ARP sent ("announced");
* `garp`: the switch's reader saw that GARP from a node other than the victim;
* `answered`: the client's first answered probe sent after the kill;
* `outage`: the bench's own figure (first lost probe's send to the first answered one's).

p50 / p99 / max per phase and case (holder, non-holder, all): what the ring takes
(`decided`), what the new owner's kernel work takes (`announced - owned`), what the network
and client take (`answered - announced`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rainctl.bench.report import percentile
from rainctl.lab import probe

FIELD = re.compile(r'(\w+)=("[^"]*"|\S+)')
SLOWEST = 3
PHASES = ("decided", "ring", "owned", "applied", "announced", "garp", "answered", "outage")


@dataclass(frozen=True, slots=True)
class LogLine:
    time: float
    node: str
    logger: str
    text: str

    def event(self) -> dict[str, str] | None:
        """The fields of a journal event line (`event seq=.. kind=..`), else None."""
        if self.logger != "rainctl.events" or not self.text.startswith("event "):
            return None
        return {key: value.strip('"') for key, value in FIELD.findall(self.text)}


def read_daemon_logs(system_dir: Path) -> list[LogLine]:
    """Every node's daemon log lines, in time order."""
    lines = []
    for log in sorted(system_dir.glob("nodes/*/daemon.log")):
        node = log.parent.name
        for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
            parts = line.split(" ", 4)
            if len(parts) < 5 or not parts[3].endswith(":"):
                continue  # a traceback's or a wrapped line
            try:
                stamp = datetime.datetime.strptime(
                    f"{parts[0]} {parts[1]}", "%Y-%m-%d %H:%M:%S,%f"
                ).replace(tzinfo=datetime.UTC)
            except ValueError:
                continue
            lines.append(LogLine(stamp.timestamp(), node, parts[3][:-1], parts[4]))
    lines.sort(key=lambda line: line.time)
    return lines


def node_number(name: str) -> str:
    """`rbf-node3` -> "3" (the lab's node ids follow the names)."""
    return name.rsplit("node", 1)[1]


def first(times: Iterable[float]) -> float | None:
    return min(times, default=None)


def trial_phases(
    trial: dict[str, object],
    lines: Sequence[LogLine],
    garps: Sequence[tuple[float, str, str]],
    answers: Sequence[tuple[float, str, float]],
    victim_mac: str | None,
) -> dict[str, float | None]:
    """The phases of one trial, in ms after the kill (None: not seen in the logs)."""
    killed_at = float(trial["killed_at"])  # type: ignore[arg-type]
    victim = str(trial["victim"])
    victim_id = node_number(victim)
    vips = [str(vip) for vip in trial["vips"]]  # type: ignore[attr-defined]
    horizon = killed_at + 10.0
    after = [line for line in lines if killed_at <= line.time <= horizon and line.node != victim]
    events = [(line, event) for line in after if (event := line.event()) is not None]

    def since_kill(value: float | None) -> float | None:
        return None if value is None else (value - killed_at) * 1000

    decided = first(
        line.time
        for line, event in events
        if (event.get("kind") == "exclusion" and event.get("node") == victim_id)
        or event.get("kind") == "regenerate"
    )
    ring = first(
        line.time
        for line, event in events
        if event.get("kind") == "ring" and victim_id in event.get("gone", "").split(",")
    )
    per_vip: dict[str, list[float | None]] = {phase: [] for phase in PHASES[2:7]}
    for vip in vips:
        gained = [
            line
            for line, event in events
            if event.get("kind") == "vip-gained" and event.get("vip") == vip
        ]
        owner = gained[0].node if gained else None
        for phase, prefix in (
            ("owned", "owned VIPs:"),
            ("applied", "owned VIPs applied:"),
            ("announced", "announced:"),
        ):
            per_vip[phase].append(
                first(
                    line.time
                    for line in after
                    if line.node == owner
                    and line.text.startswith(prefix)
                    and vip in line.text.split(": ", 1)[1].split(",")
                )
            )
        per_vip["garp"].append(
            first(
                at
                for at, mac, address in garps
                if address == vip and killed_at <= at <= horizon and mac != victim_mac
            )
        )
        per_vip["answered"].append(
            first(
                answered_at
                for sent_at, address, answered_at in answers
                if address == vip and killed_at <= sent_at <= horizon
            )
        )
    result: dict[str, float | None] = {
        "decided": since_kill(decided),
        "ring": since_kill(ring),
    }
    for phase, values in per_vip.items():
        result[phase] = None if None in values else since_kill(max(values))  # type: ignore[type-var]
    outage = trial.get("outage_ms")
    result["outage"] = None if outage is None else float(outage)  # type: ignore[arg-type]
    return result


def victim_macs(
    garps: Sequence[tuple[float, str, str]], lines: Sequence[LogLine]
) -> dict[str, str]:
    """Each node's MAC, from the GARPs it sent right after its own `announced:` lines."""
    macs: dict[str, str] = {}
    for line in lines:
        if line.node in macs or not line.text.startswith("announced:"):
            continue
        vip = line.text.split(": ", 1)[1].split(",")[0]
        near = [mac for at, mac, address in garps if address == vip and abs(at - line.time) < 0.05]
        if near:
            macs[line.node] = near[0]
    return macs


def summarise(rows: Sequence[dict[str, float | None]], phase: str) -> str:
    values = sorted(value for row in rows if (value := row[phase]) is not None)
    if not values:
        return "-"
    return (
        f"{percentile(values, 0.5):.0f} / {percentile(values, 0.99):.0f} / {values[-1]:.0f}"
        f" ({len(values)})"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", type=Path, help="the bench's --save file")
    parser.add_argument("logs", type=Path, help="the bench's --logs directory")
    arguments = parser.parse_args(argv)
    try:
        document = json.loads(arguments.results.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        parser.error(f"{arguments.results}: not a saved bench failover run ({exc})")
    if not arguments.logs.is_dir():
        parser.error(f"{arguments.logs}: no such directory (the bench's --logs)")
    for system in document["systems"]:
        if system["kind"] != "rainctl":
            continue
        system_dir = arguments.logs / system["system"].replace(" ", "-")
        lines = read_daemon_logs(system_dir)
        garps = probe.garps(system_dir / "watch" / "garp.log")
        answers = probe.answers(system_dir / "watch" / "probe.log")
        macs = victim_macs(garps, lines)
        rows: dict[str, list[dict[str, float | None]]] = {"holder": [], "non-holder": []}
        timed: list[tuple[dict[str, Any], dict[str, float | None]]] = []
        for trial in system["trials"]:
            if trial.get("killed_at") is None:
                continue
            phases = trial_phases(trial, lines, garps, answers, macs.get(trial["victim"]))
            rows.setdefault(trial["case"], []).append(phases)
            timed.append((trial, phases))
        rows["all"] = rows["holder"] + rows["non-holder"]
        print(f"{system['system']}: ms after the kill, p50 / p99 / max (trials)")
        print(f"{'phase':<22}" + "".join(f"{case:>26}" for case in rows))
        for phase in PHASES:
            print(f"{phase:<22}" + "".join(f"{summarise(r, phase):>26}" for r in rows.values()))
        for name, (start, end) in {
            "announced - owned": ("owned", "announced"),
            "answered - announced": ("announced", "answered"),
        }.items():
            gaps = {
                case: [
                    {"gap": row[end] - row[start]}  # type: ignore[operator]
                    for row in case_rows
                    if row[start] is not None and row[end] is not None
                ]
                for case, case_rows in rows.items()
            }
            print(f"{name:<22}" + "".join(f"{summarise(r, 'gap'):>26}" for r in gaps.values()))
        print(f"slowest {SLOWEST} trials (ms after the kill):")
        timed.sort(key=lambda pair: -(pair[1]["outage"] or float("inf")))
        for trial, phases in timed[:SLOWEST]:
            shown = " ".join(
                f"{phase} {'-' if value is None else f'{value:.0f}'}"
                for phase, value in phases.items()
            )
            print(f"  #{trial['number']} {trial['case']} {trial['victim']}: {shown}")


if __name__ == "__main__":
    main()
