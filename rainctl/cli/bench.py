"""`rainctl bench`: benchmarks in the lab that print figures (docs/benchmarks.md).

`failover` kills a VIP's owner many times in a lab running rainctl, then in labs running
keepalived VRRPv3 at each advert_int, and prints the client's outage (p50 / p99 / max) per
system and case, the ratio to rainctl, the control packets per second at rest, and the
daemons' CPU and memory at rest inside the guests. `soak` runs each system for a while with
every core busy and a share of its control packets dropped, and counts false failovers.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from rainctl.bench import failover, report, soak
from rainctl.core.spec import ExclusionMode
from rainctl.lab import keepalived
from rainctl.lab.plan import NODES_MAX, PROFILES

bench_app = typer.Typer(
    name="bench",
    help="Benchmarks in the virtual lab (root; figures, not pass/fail).",
    no_args_is_help=True,
)

DEFAULT_STATE_DIR = Path("/var/lib/rainctl-bench")
PEERS = ("keepalived", "none")


ALL_ADVERT_INTS = ",".join(f"{value:g}" for value in keepalived.ADVERT_INTS)
NodesOption = Annotated[int, typer.Option("--nodes", help="User-mode-linux front nodes.")]
ProfileOption = Annotated[
    str, typer.Option("--profile", help=f"rainctl's timer profile ({', '.join(PROFILES)}).")
]
PeerOption = Annotated[
    str, typer.Option("--peer", help="The peer run in the same way (keepalived | none).")
]
AdvertIntOption = Annotated[
    str, typer.Option("--advert-int", help="keepalived VRRPv3 advert_int values, comma-separated.")
]
PrefixOption = Annotated[
    str, typer.Option("--prefix", help="Prefix of every namespace and interface name.")
]
StateDirOption = Annotated[
    Path, typer.Option("--state-dir", help="The labs' state directory (one at a time).")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the results as JSON.")]
SaveOption = Annotated[
    Path | None, typer.Option("--save", help="Also write the JSON results to this file.")
]


def parse_advert_ints(text: str) -> tuple[float, ...]:
    """`1,0.1,0.05` -> (1.0, 0.1, 0.05); BadParameter names the bad value."""
    values = []
    for item in text.split(","):
        try:
            values.append(keepalived.check_advert_int(float(item)))
        except ValueError as exc:
            raise typer.BadParameter(
                str(exc) if item.strip() else "empty value", param_hint="--advert-int"
            ) from exc
    return tuple(values)


def _systems(profile: str, peer: str, nodes: int, advert_int: str) -> list[failover.SystemSpec]:
    """The systems a benchmark runs, after checking the options every benchmark shares."""
    if profile not in PROFILES:
        raise typer.BadParameter(f"must be one of {', '.join(PROFILES)}", param_hint="--profile")
    if peer not in PEERS:
        raise typer.BadParameter(f"must be one of {', '.join(PEERS)}", param_hint="--peer")
    if not 2 <= nodes <= NODES_MAX:
        raise typer.BadParameter(
            f"must be 2..{NODES_MAX} (a survivor is needed)", param_hint="--nodes"
        )
    adverts = parse_advert_ints(advert_int)
    return failover.systems(profile, None if peer == "none" else peer, adverts)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}x"


def failover_table(results: list[report.SystemResult], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    columns = ("system", "case", "trials", "failed", "p50 ms", "p99 ms", "max ms",
               "p50 / rainctl", "p99 / rainctl", "ctl pkt/s at rest", "CPU % at rest",
               "RSS MB")  # fmt: skip
    for column in columns:
        table.add_column(column, no_wrap=True, justify="left" if column in columns[:2] else "right")
    for row in report.rows(results):
        table.add_row(
            row.system,
            row.case,
            str(row.summary.count),
            str(row.summary.failed),
            _ms(row.summary.p50_ms),
            _ms(row.summary.p99_ms),
            _ms(row.summary.max_ms),
            _ratio(row.ratio_p50),
            _ratio(row.ratio_p99),
            "-" if row.control_pps is None else f"{row.control_pps:.0f}",
            "-" if row.cpu_percent is None else f"{row.cpu_percent:.2f}",
            "-" if row.rss_mb is None else f"{row.rss_mb:.1f}",
        )
    return table


UnicastRingOption = Annotated[
    bool,
    typer.Option(
        "--unicast-ring",
        help="rainctl without the lab's ring_group: two datagrams per token hop.",
    ),
]
LogsOption = Annotated[
    Path | None,
    typer.Option("--logs", help="Copy the nodes' logs here (one directory per system)."),
]


def _usable_logs_dir(logs: Path | None) -> None:
    """Create --logs up front: a directory that cannot be made fails now, with one line,
    not after the whole run."""
    if logs is None:
        return
    try:
        logs.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise typer.BadParameter(f"{logs}: {exc.strerror or exc}", param_hint="--logs") from exc


@bench_app.command("failover")
def failover_command(
    *,
    trials: Annotated[int, typer.Option("--trials", help="Kills per system.")] = 20,
    nodes: NodesOption = 3,
    profile: ProfileOption = "fast",
    peer: PeerOption = "keepalived",
    advert_int: AdvertIntOption = ALL_ADVERT_INTS,
    rest_s: Annotated[
        float,
        typer.Option("--rest", help="Seconds at rest per system (control packets, CPU, RSS)."),
    ] = 10.0,
    prefix: PrefixOption = "rbf",
    state_dir: StateDirOption = DEFAULT_STATE_DIR,
    as_json: JsonOption = False,
    save: SaveOption = None,
    unicast_ring: UnicastRingOption = False,
    logs: LogsOption = None,
) -> None:
    """Kill the owner of a VIP N times per system (rainctl, then keepalived at each
    advert_int), each system in its own lab of the same topology; print the client's outage.

    rainctl trials alternate a kill right after the token reached the victim and right after
    it went to another node; the table's case is what the wire log showed at the kill.
    Between trials the killed node boots again and the cluster settles.
    """
    if trials < 1:
        raise typer.BadParameter("must be at least 1", param_hint="--trials")
    if rest_s <= 0:
        raise typer.BadParameter("must be positive", param_hint="--rest")
    _usable_logs_dir(logs)
    specs = [
        dataclasses.replace(spec, ring_group=not unicast_ring)
        for spec in _systems(profile, peer, nodes, advert_int)
    ]
    started = datetime.datetime.now(datetime.UTC)
    clock = time.monotonic()

    def progress(line: str) -> None:
        if not as_json:
            typer.echo(line)

    results = failover.run(
        specs,
        state_dir=state_dir,
        prefix=prefix,
        nodes=nodes,
        trials=trials,
        rest_s=rest_s,
        progress=progress,
        logs=logs,
    )
    meta = {
        "started": started.isoformat(timespec="seconds"),
        "wall_s": round(time.monotonic() - clock, 1),
        "machine": platform.node(),
        "nodes": nodes,
        "profile": profile,
        "trials": trials,
        "rest_s": rest_s,
        "probe_interval_ms": 10,
        "ring": "unicast" if unicast_ring else "group",
    }
    title = (
        f"rainctl bench failover: {nodes} nodes, {trials} SIGKILLs per system, probes every "
        f"10 ms; {meta['started']}, {meta['wall_s']} s"
    )
    _output(
        report.report_json(results, meta),
        save=save,
        as_json=as_json,
        table=lambda: failover_table(results, title),
    )


def soak_table(results: list[soak.SoakResult], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    columns = ("system", "minutes", "false VIP moves", "ring changes", "client gaps >= 50 ms",
               "longest gap ms", "host stalls >= 50 ms", "longest stall ms",
               "guest CPU waits >= 50 ms", "longest wait ms", "control pkts", "dropped",
               "loss %")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column == "system" else "right")
    for result in results:
        loss = result.loss_percent
        table.add_row(
            result.system,
            f"{result.duration_s / 60:.1f}",
            str(result.vip_moves),
            "-" if result.kind != "rainctl" else str(result.ring_changes),
            str(result.client_gaps),
            _ms(result.longest_gap_ms),
            str(result.host_stalls),
            str(result.longest_host_stall_ms),
            str(result.guest_waits),
            str(result.longest_guest_wait_ms),
            str(result.control_packets),
            str(result.dropped),
            "-" if loss is None else f"{loss:.2f}",
        )
    return table


@bench_app.command("soak")
def soak_command(
    *,
    duration_s: Annotated[
        float, typer.Option("--duration", help="Seconds of stress per system.")
    ] = 600.0,
    nodes: NodesOption = 3,
    profile: ProfileOption = "lan",
    peer: PeerOption = "keepalived",
    advert_int: AdvertIntOption = "1,0.1",
    loss_permille: Annotated[
        int,
        typer.Option("--loss-permille", help="Control packets dropped on the switch (10 = 1 %)."),
    ] = 10,
    hogs: Annotated[
        int | None,
        typer.Option(
            "--hogs", help="CPU hog processes (default: one per host core).", show_default=False
        ),
    ] = None,
    prefix: PrefixOption = "rbs",
    state_dir: StateDirOption = DEFAULT_STATE_DIR,
    as_json: JsonOption = False,
    save: SaveOption = None,
    logs: LogsOption = None,
    exclusion: Annotated[
        ExclusionMode,
        typer.Option("--exclusion", help="rainctl's cluster.exclusion for this run."),
    ] = ExclusionMode.CONSERVATIVE,
    with_rainctl: Annotated[
        bool,
        typer.Option(
            "--rainctl/--no-rainctl",
            help="Run rainctl first (--no-rainctl: the peer alone, beside an earlier run).",
        ),
    ] = True,
    unicast_ring: UnicastRingOption = False,
) -> None:
    """Run each system (rainctl, then keepalived at each advert_int) in its own lab for
    --duration seconds with every core busy and --loss-permille of its control packets
    dropped; nothing is killed, so every VIP move is a false failover (GOALS.md F3)."""
    if duration_s <= 0:
        raise typer.BadParameter("must be positive", param_hint="--duration")
    if not with_rainctl and peer == "none":
        raise typer.BadParameter(
            "--no-rainctl with --peer none leaves nothing to run", param_hint="--no-rainctl"
        )
    if not 0 <= loss_permille <= 1000:
        raise typer.BadParameter("must be 0..1000", param_hint="--loss-permille")
    if hogs is not None and hogs < 0:
        raise typer.BadParameter("must be 0 or more", param_hint="--hogs")
    _usable_logs_dir(logs)
    specs = [
        dataclasses.replace(spec, exclusion=exclusion.value, ring_group=not unicast_ring)
        for spec in _systems(profile, peer, nodes, advert_int)
        if with_rainctl or spec.kind != "rainctl"
    ]
    started = datetime.datetime.now(datetime.UTC)
    clock = time.monotonic()

    def progress(line: str) -> None:
        if not as_json:
            typer.echo(line)

    results = [
        soak.run_system(
            spec,
            state_dir=state_dir,
            prefix=prefix,
            nodes=nodes,
            duration_s=duration_s,
            loss_permille=loss_permille,
            hogs=hogs,
            progress=progress,
            logs=logs,
        )
        for spec in specs
    ]
    meta = {
        "started": started.isoformat(timespec="seconds"),
        "wall_s": round(time.monotonic() - clock, 1),
        "machine": platform.node(),
        "nodes": nodes,
        "profile": profile,
        "duration_s": duration_s,
        "loss_permille": loss_permille,
        "hogs": hogs,
        "exclusion": exclusion.value,
        "ring": "unicast" if unicast_ring else "group",
    }
    title = (
        f"rainctl bench soak: {nodes} nodes, {duration_s:g} s per system, "
        f"{loss_permille / 10:g} % control loss, "
        f"{hogs if hogs is not None else os.cpu_count() or 1} CPU hogs; {meta['started']}"
    )
    _output(
        {"meta": meta, "systems": [result.as_json() for result in results]},
        save=save,
        as_json=as_json,
        table=lambda: soak_table(results, title),
    )


def _output(
    document: dict[str, Any], *, save: Path | None, as_json: bool, table: Callable[[], Table]
) -> None:
    """A benchmark's results: JSON to `save` if given, then JSON or the rich table."""
    text = json.dumps(document, indent=2)
    if save is not None:
        save.write_text(text + "\n", encoding="utf-8")
    if as_json:
        typer.echo(text)
    else:
        Console(width=200).print(table())


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app)
