"""The lab's client traffic: an HTTP request loop and a long-lived TCP echo client.

Both run in the client namespace, started once by `rainctl.lab.builder.start_traffic` (like
the demo's prober: `ip netns exec` execs the venv's Python, the PID is recorded, `down` or
`stop_traffic` ends it), never fork, and log one line per event, wall-clock time first (the
client namespace shares the host's clock):

    python -m rainctl.lab.traffic http --output F [--interval S] [--timeout S] [--path P]
                                       TARGET...
    python -m rainctl.lab.traffic echo --output F [--interval S] [--timeout S]
                                       [--connections N] TARGET

TARGET is `ADDRESS[:PORT]` (port 80 for http, 9000 for echo).

- `http`: every interval, for each target, a new TCP connection, `GET PATH HTTP/1.0`, the
  whole answer read, all within the timeout (requests to different targets and successive
  requests overlap: one slow target delays nothing). Per request, logged when it ends:
  `<sent> <target> OK <backend> <ms>` (the answer's X-Backend header) or
  `<sent> <target> FAIL <reason> <ms>`.
- `echo`: one connection (`--connections N`: N of them, logged as `TARGET#1`..`TARGET#N`),
  and every interval a numbered line that must come back within the timeout:
  `<time> <target> CONNECT <local port> 0` when a connection is made,
  `<sent> <target> ECHO <seq> <ms>` per echo, `<time> <target> FAIL <reason> <ms>` when the
  connection breaks (reset, timeout, wrong echo); it then reconnects, so a connection that
  survived a takeover shows one CONNECT only.

`read_log()` and `summarize()` read the logs back.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

HTTP_PORT = 80
ECHO_PORT = 9000
INTERVAL_S = 0.05
TIMEOUT_S = 1.0
ANSWER_BYTES_MAX = 1 << 20


def parse_target(text: str, default_port: int) -> tuple[str, int]:
    """`ADDRESS[:PORT]` -> (address, port); raises ValueError naming the bad target."""
    address, colon, port = text.rpartition(":")
    if not colon:
        return text, default_port
    if not port.isdigit() or not 1 <= int(port) <= 65535 or not address:
        raise ValueError(f"target {text!r}: must be ADDRESS[:PORT] with a port 1..65535")
    return address, int(port)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timeout"
    return type(exc).__name__


def backend_of(answer: bytes) -> str | None:
    """The X-Backend header of a complete `200` HTTP answer, else None."""
    head, separator, _body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if not separator or len(lines[0].split()) < 2 or lines[0].split()[1] != "200":
        return None
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "x-backend" and value.strip():
            return value.strip()
    return None


async def _request(address: str, port: int, path: str) -> bytes:
    reader, writer = await asyncio.open_connection(address, port)
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n".encode())
        await writer.drain()
        return await reader.read(ANSWER_BYTES_MAX)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _one_http(log: TextIO, target: str, path: str, timeout_s: float) -> None:
    address, port = parse_target(target, HTTP_PORT)
    sent = time.time()
    started = time.monotonic()
    try:
        answer = await asyncio.wait_for(_request(address, port, path), timeout_s)
    except (OSError, TimeoutError) as exc:
        result, detail = "FAIL", _reason(exc)
    else:
        backend = backend_of(answer)
        result, detail = ("OK", backend) if backend else ("FAIL", "bad-answer")
    elapsed_ms = (time.monotonic() - started) * 1000
    log.write(f"{sent:.6f} {target} {result} {detail} {elapsed_ms:.1f}\n")


async def run_http(
    targets: Sequence[str], output: Path, interval_s: float, timeout_s: float, path: str
) -> None:
    """Request every target every `interval_s`, for ever, logging each request to `output`."""
    for target in targets:
        parse_target(target, HTTP_PORT)
    pending: set[asyncio.Task[None]] = set()
    with output.open("a", encoding="ascii", buffering=1) as log:
        next_tick = time.monotonic()
        while True:
            for target in targets:
                task = asyncio.create_task(_one_http(log, target, path, timeout_s))
                pending.add(task)
                task.add_done_callback(pending.discard)
            next_tick += interval_s
            now = time.monotonic()
            if next_tick < now:  # fell behind (host busy): do not burst
                next_tick = now + interval_s
            await asyncio.sleep(next_tick - now)


async def run_echo(
    target: str, output: Path, interval_s: float, timeout_s: float, connections: int = 1
) -> None:
    """Keep `connections` echo connections to `target` busy for ever, each reconnecting
    after a failure; with more than one, each logs as `TARGET#i` (i from 1)."""
    with output.open("a", encoding="ascii", buffering=1) as log:
        if connections == 1:
            await _echo_connection(target, target, log, interval_s, timeout_s)
            return
        await asyncio.gather(
            *(
                _echo_connection(target, f"{target}#{index}", log, interval_s, timeout_s)
                for index in range(1, connections + 1)
            )
        )


async def _echo_connection(
    target: str, name: str, log: TextIO, interval_s: float, timeout_s: float
) -> None:
    address, port = parse_target(target, ECHO_PORT)
    seq = 0
    while True:
        started = time.monotonic()
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(address, port), timeout_s
            )
        except (OSError, TimeoutError) as exc:
            elapsed_ms = (time.monotonic() - started) * 1000
            log.write(f"{time.time():.6f} {name} FAIL connect-{_reason(exc)} ")
            log.write(f"{elapsed_ms:.1f}\n")
            await asyncio.sleep(interval_s)
            continue
        local_port = writer.get_extra_info("sockname")[1]
        log.write(f"{time.time():.6f} {name} CONNECT {local_port} 0\n")
        try:
            while True:
                seq += 1
                line = f"{seq}\n".encode()
                sent = time.time()
                started = time.monotonic()
                writer.write(line)
                await writer.drain()
                echoed = await asyncio.wait_for(reader.readline(), timeout_s)
                elapsed_ms = (time.monotonic() - started) * 1000
                if echoed != line:
                    raise ConnectionError("wrong-echo" if echoed else "closed")
                log.write(f"{sent:.6f} {name} ECHO {seq} {elapsed_ms:.1f}\n")
                await asyncio.sleep(max(0.0, interval_s - elapsed_ms / 1000))
        except (OSError, TimeoutError) as exc:
            elapsed_ms = (time.monotonic() - started) * 1000
            reason = str(exc) if str(exc) in {"wrong-echo", "closed"} else _reason(exc)
            log.write(f"{time.time():.6f} {name} FAIL {reason} {elapsed_ms:.1f}\n")
        finally:
            writer.close()


# ---- reading the logs back ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Event:
    at: float
    target: str
    result: str
    """OK (http), ECHO (echo), FAIL or CONNECT (echo)."""
    detail: str
    """The back-end (OK), the sequence number (ECHO), the reason (FAIL) or the local port
    (CONNECT)."""
    ms: float


@dataclass(slots=True)
class Summary:
    """One target's traffic in a time window."""

    ok: int = 0
    """Answered requests (http) or echoes (echo)."""
    failed: int = 0
    connects: int = 0
    backends: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    outage_s: float = 0.0
    """The longest run of failures: from the first failure's time to the next success's
    (to the window's last event if none followed)."""
    first_failure: float | None = None
    last_failure: float | None = None


def read_log(path: Path) -> list[Event]:
    """Every complete line of a traffic log, in time order."""
    events = []
    for line in path.read_text(encoding="ascii", errors="replace").splitlines():
        fields = line.split()
        if len(fields) != 5:
            continue  # a line being written
        try:
            events.append(
                Event(float(fields[0]), fields[1], fields[2], fields[3], float(fields[4]))
            )
        except ValueError:
            continue
    events.sort(key=lambda event: event.at)
    return events


def summarize(
    events: Sequence[Event], *, since: float = 0.0, until: float | None = None
) -> dict[str, Summary]:
    """Per target, the counts and the longest outage among the events in [since, until]."""
    result: dict[str, Summary] = {}
    run_start: dict[str, float] = {}
    last_at: dict[str, float] = {}
    for event in events:
        if event.at < since or (until is not None and event.at > until):
            continue
        summary = result.setdefault(event.target, Summary())
        last_at[event.target] = event.at
        if event.result == "CONNECT":
            summary.connects += 1
        elif event.result in {"OK", "ECHO"}:
            summary.ok += 1
            if event.result == "OK":
                summary.backends[event.detail] += 1
            start = run_start.pop(event.target, None)
            if start is not None:
                summary.outage_s = max(summary.outage_s, event.at - start)
        elif event.result == "FAIL":
            summary.failed += 1
            summary.reasons[event.detail] += 1
            summary.first_failure = summary.first_failure or event.at
            summary.last_failure = event.at
            run_start.setdefault(event.target, event.at)
    for target, start in run_start.items():  # not over within the window
        summary = result[target]
        summary.outage_s = max(summary.outage_s, last_at[target] - start)
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rainctl.lab.traffic")
    commands = parser.add_subparsers(dest="command", required=True)
    http = commands.add_parser("http", help="a new HTTP request to each target every interval")
    echo = commands.add_parser("echo", help="one long-lived TCP echo connection")
    for command in (http, echo):
        command.add_argument("--output", type=Path, required=True)
        command.add_argument("--interval", type=float, default=INTERVAL_S)
        command.add_argument("--timeout", type=float, default=TIMEOUT_S)
    http.add_argument("--path", default="/")
    http.add_argument("targets", nargs="+")
    echo.add_argument("--connections", type=int, default=1)
    echo.add_argument("target")
    args = parser.parse_args(argv)
    if args.command == "http":
        asyncio.run(run_http(args.targets, args.output, args.interval, args.timeout, args.path))
    else:
        if not 1 <= args.connections <= 10_000:
            parser.error(f"--connections: {args.connections} is not 1..10000")
        asyncio.run(
            run_echo(args.target, args.output, args.interval, args.timeout, args.connections)
        )


if __name__ == "__main__":
    main()
