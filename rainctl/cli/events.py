"""`rainctl events`: the local node's timeline of what happened and why (rainctl.events).

One line per event, oldest first: UTC time to the millisecond, the kind, the sentence. With
`--json`, one JSON object per line instead (JSON Lines: `seq`, `time_ms`, `kind`,
`message`, `fields`, `node_id`), which `jq` and log shippers read as a stream. `--since 10m`
keeps the events of the last ten minutes (s, m, h, d; a bare number is seconds).
`--follow` goes on printing new events as they happen until interrupted; if the node's
journal dropped events between two asks (more than its capacity at once), it says how many.
"""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from rainctl.daemon.control import CLIENT_TIMEOUT_S, DEFAULT_SOCKET, request
from rainctl.errors import OptionError

FOLLOW_WAIT_S = 3.0
"""How long one ask of `--follow` lets the daemon wait for news (below the daemon's cap)."""

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration_s(text: str) -> float:
    """`90`, `90s`, `10m`, `2h`, `1d` -> seconds; OptionError naming --since otherwise."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise OptionError(
            f"--since {text!r}: not a duration (a number with an optional unit s, m, h or d, "
            "e.g. 90s, 10m, 2h)"
        )
    return float(match.group(1)) * _UNIT_S[match.group(2)]


def events(
    socket_path: Annotated[
        Path, typer.Option("--socket", help="The daemon's control socket.")
    ] = DEFAULT_SOCKET,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new events until interrupted.")
    ] = False,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            help="Only events of the last DURATION (90s, 10m, 2h, 1d).",
            metavar="DURATION",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per event and line.")
    ] = False,
) -> None:
    """Show what happened on this node and why: rings, exclusions, 911s, VIP moves,
    back-end states, configuration versions, drains and pins."""
    since_ms = None
    if since is not None:
        since_ms = max(0, int((time.time() - parse_duration_s(since)) * 1000))
    last_seq = 0
    while True:  # an answer carries at most 1,000 events: ask until caught up
        answer = request(
            socket_path, "events", arguments={"after_seq": last_seq, "since_ms": since_ms}
        )
        printed = _print_answer(answer, as_json)
        last_seq = answer["last_seq"] if printed is None else printed
        if last_seq >= answer["last_seq"]:
            break
    if not follow:
        return
    try:
        while True:
            answer = request(
                socket_path,
                "events",
                timeout_s=FOLLOW_WAIT_S + CLIENT_TIMEOUT_S,
                arguments={"after_seq": last_seq, "wait_s": FOLLOW_WAIT_S},
            )
            dropped = answer["oldest_seq"] - last_seq - 1
            if dropped > 0:
                typer.echo(f"rainctl: {dropped} events were not kept by the node", err=True)
            last_seq = _print_answer(answer, as_json) or last_seq
    except KeyboardInterrupt:
        return


def _print_answer(answer: dict[str, Any], as_json: bool) -> int | None:
    """Print the answer's events; the last sequence number printed (None: none)."""
    last_seq = None
    for event in answer["events"]:
        if as_json:
            typer.echo(json.dumps({**event, "node_id": answer["node_id"]}))
        else:
            typer.echo(format_event(event))
        last_seq = event["seq"]
    return last_seq


def format_event(event: dict[str, Any]) -> str:
    """`2026-12-06 17:40:01.123  vip-moved     VIP ... (failover)`."""
    moment = datetime.fromtimestamp(event["time_ms"] / 1000, tz=UTC)
    stamp = moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{event['time_ms'] % 1000:03d}"
    return f"{stamp}  {event['kind']:<13} {event['message']}"


def register(app: typer.Typer) -> None:
    app.command("events")(events)
