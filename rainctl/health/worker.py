"""The health checkers as a process of their own, supervised by the daemon.

Why a process: the checks are Python work, and a thread would share the daemon's
interpreter lock with the ring's loop; in the lab a monitor thread checking 16 back-ends
made ring members miss their hop deadlines (false exclusions) although it added no
measurable CPU. The worker runs at `nice` HELPER_NICE (rainctl.children), so on a busy core the
ring wins.

`python -m rainctl.health.worker --config FILE --node ID` reads the config itself (the
targets: rainctl.health.targets, `TargetReader`: a reload reads only the `[[services]]`
blocks that changed) and talks JSON lines. On stdin, from the daemon:
`{"ring": [epoch, creator, incarnation], "members": [...]}`, `{"verdicts": [[key, state,
weight], ...]}`, `{"reload": "FILE"}` (read the configuration, now in FILE; a bad file is
logged and the running checks stay) and `{"snapshot": true}`. On stdout, to the daemon:
`{"catalogue": [[key, weight], ...]}` (at start and after a reload that changed it), `{"observed":
{"ring": [...], "opinions": [...]}}` and, answering a request, `{"snapshot": ...}`. The end
of stdin (the daemon exited, however it died) ends the worker; so does the death of its
parent (PR_SET_PDEATHSIG).

`HealthWorker` is the daemon's side: it starts the process, sends the ring's changes, turns
its lines into `HealthObserved` for the ring, asks for a snapshot for `rainctl backends`;
a worker that dies is started again after RESTART_S.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rainctl.children import die_with_parent, step_aside
from rainctl.core.events import HealthObserved
from rainctl.core.health import CatalogueEntry, HealthState, ServerOpinion
from rainctl.core.types import NodeId, RingId
from rainctl.errors import RainctlError
from rainctl.health.monitor import HealthMonitor, MonitorSnapshot, ServerCheck
from rainctl.health.targets import TargetReader

SNAPSHOT_TIMEOUT_S = 1.0
"""`rainctl backends` waits this long for the worker's answer, then shows the last one."""
RESTART_S = 1.0
STOP_TIMEOUT_S = 3.0
LINE_BYTES_MAX = 64 * 1024 * 1024

log = logging.getLogger("rainctl.health")


# ---- the wire form -----------------------------------------------------------------------


def _ring_value(ring: RingId) -> list[int]:
    return [ring.epoch, ring.creator, ring.creator_incarnation]


def _opinions_value(opinions: tuple[ServerOpinion, ...]) -> list[list[int]]:
    return [[o.key, int(o.state), o.weight] for o in opinions]


def _opinions_from(value: list[list[int]]) -> tuple[ServerOpinion, ...]:
    return tuple(ServerOpinion(key, HealthState(state), weight) for key, state, weight in value)


def _snapshot_value(snapshot: MonitorSnapshot) -> dict[str, Any]:
    return {
        "ring": None if snapshot.ring is None else _ring_value(snapshot.ring),
        "members": list(snapshot.members),
        "checking": [
            [key, int(c.state), c.since, c.detail, c.latency_ms, c.checks, c.weight, c.counted]
            for key, c in snapshot.checking.items()
        ],
    }


def _snapshot_from(value: dict[str, Any]) -> MonitorSnapshot:
    ring = None if value["ring"] is None else RingId(*value["ring"])
    checking = {
        key: ServerCheck(HealthState(state), since, detail, latency, checks, weight, counted)
        for key, state, since, detail, latency, checks, weight, counted in value["checking"]
    }
    return MonitorSnapshot(ring, tuple(value["members"]), checking)


# ---- the worker process ----------------------------------------------------------------


class _Worker:
    def __init__(self, config: Path, node_id: NodeId) -> None:
        self.config = config
        self.node_id = node_id
        self.reader = TargetReader()
        loaded, targets = self.reader.read(config)
        self.monitor = HealthMonitor(
            node_id, targets, loaded.health.checkers_per_server, self._observed
        )
        self._catalogue = self.monitor.catalogue()
        self._send({"catalogue": [[e.key, e.configured_weight] for e in self._catalogue]})

    def _send(self, message: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(message, separators=(",", ":")) + "\n")
        sys.stdout.flush()

    def _observed(self, observed: HealthObserved) -> None:
        if observed.catalogue != self._catalogue:
            self._catalogue = observed.catalogue
            self._send({"catalogue": [[e.key, e.configured_weight] for e in observed.catalogue]})
        ring = _ring_value(observed.counted_for)
        self._send({"observed": {"ring": ring, "opinions": _opinions_value(observed.opinions)}})

    def handle(self, message: dict[str, Any]) -> None:
        if "ring" in message:
            self.monitor.set_ring(RingId(*message["ring"]), tuple(message["members"]))
        elif "verdicts" in message:
            self.monitor.set_verdicts(_opinions_from(message["verdicts"]))
        elif message.get("reload"):
            try:
                config = Path(message["reload"])
                loaded, targets = self.reader.read(config)
                self.config = config
                self.monitor.per_server = loaded.health.checkers_per_server
                self.monitor.set_targets(targets)
            except RainctlError as exc:
                log.error("health worker: reload refused, the running checks stay: %s", exc)  # noqa: TRY400
        elif message.get("snapshot"):
            self._send({"snapshot": _snapshot_value(self.monitor.snapshot())})


async def _serve(config: Path, node_id: NodeId) -> None:
    worker = _Worker(config, node_id)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=LINE_BYTES_MAX)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while line := await reader.readline():
            worker.handle(json.loads(line))
    finally:
        await worker.monitor.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rainctl.health.worker")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--node", type=int, required=True)
    arguments = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    die_with_parent()
    step_aside()
    try:
        asyncio.run(_serve(arguments.config, arguments.node))
    except RainctlError as exc:
        log.error("health worker: %s", exc)  # noqa: TRY400
        return 2
    except BrokenPipeError:
        # The daemon is gone (its end of the pipe closed): nobody to tell, nothing to check
        # for. Quietly, and so that the interpreter's last flush does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 0


# ---- the daemon's side ---------------------------------------------------------------------


class HealthWorker:
    """The daemon's handle on its health worker process (see the module docstring)."""

    def __init__(
        self, config: Path, node_id: NodeId, on_observed: Callable[[HealthObserved], None]
    ) -> None:
        self.config = config
        self.node_id = node_id
        self.on_observed = on_observed
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._catalogue: tuple[CatalogueEntry, ...] = ()
        self._snapshot = MonitorSnapshot(None, (), {})
        self._snapshot_waiters: list[asyncio.Future[None]] = []
        self._ring: dict[str, Any] | None = None
        self._verdicts: list[list[int]] = []
        self._stopping = False
        self._spawning: asyncio.Task[None] | None = None
        self.restarts = 0

    async def start(self, *, needed: bool) -> None:
        """Start the worker if the config has a server to check; otherwise it is started by
        the first reload that adds one (a node without checks runs no worker at all)."""
        if needed:
            await self._spawn()

    async def _spawn(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "rainctl.health.worker",
            "--config", str(self.config), "--node", str(self.node_id),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=LINE_BYTES_MAX,
        )  # fmt: skip
        self._reader = asyncio.get_running_loop().create_task(self._read(self._process))
        if self._ring is not None:
            self._write(self._ring)
        if self._verdicts:
            self._write({"verdicts": self._verdicts})

    def set_ring(self, ring: RingId, members: tuple[NodeId, ...]) -> None:
        self._ring = {"ring": _ring_value(ring), "members": sorted(members)}
        self._write(self._ring)

    def set_verdicts(self, verdicts: tuple[ServerOpinion, ...]) -> None:
        self._verdicts = _opinions_value(verdicts)
        self._write({"verdicts": self._verdicts})

    def reload(self, config: Path, *, needed: bool) -> None:
        """The configuration changed (now in file `config`): the worker reads it (or
        starts, when it was not needed before and is now)."""
        self.config = config
        if self._process is not None:
            self._write({"reload": str(config)})
        elif needed and self._spawning is None:
            self._spawning = asyncio.get_running_loop().create_task(self._spawn())

    def snapshot(self) -> MonitorSnapshot:
        """The last snapshot the worker sent."""
        return self._snapshot

    async def fresh_snapshot(self) -> MonitorSnapshot:
        """Ask the worker for its table; the last one if it does not answer in time."""
        if self._process is None:
            return self._snapshot
        waiter = asyncio.get_running_loop().create_future()
        self._snapshot_waiters.append(waiter)
        self._write({"snapshot": True})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(waiter), SNAPSHOT_TIMEOUT_S)
        return self._snapshot

    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def _write(self, message: dict[str, Any]) -> None:
        process = self._process
        if process is None or process.stdin is None or process.stdin.is_closing():
            return
        process.stdin.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        while line := await process.stdout.readline():
            message = json.loads(line)
            if "catalogue" in message:
                self._catalogue = tuple(CatalogueEntry(k, w) for k, w in message["catalogue"])
            elif "observed" in message:
                observed = message["observed"]
                self.on_observed(
                    HealthObserved(
                        self._catalogue,
                        _opinions_from(observed["opinions"]),
                        RingId(*observed["ring"]),
                    )
                )
            elif "snapshot" in message:
                self._snapshot = _snapshot_from(message["snapshot"])
                waiters, self._snapshot_waiters = self._snapshot_waiters, []
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(None)
        code = await process.wait()
        if self._stopping:
            return
        log.warning(
            "health worker exited (status %s); starting it again in %.0f s", code, RESTART_S
        )
        self.restarts += 1
        await asyncio.sleep(RESTART_S)
        if not self._stopping:
            await self._spawn()

    async def stop(self) -> None:
        """End the worker: close its stdin (it exits at end of input), kill it if it lingers."""
        self._stopping = True
        if self._spawning is not None:
            await self._spawning
        process = self._process
        if process is None:
            return
        if process.stdin is not None:
            process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            process.kill()
            await process.wait()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


if __name__ == "__main__":
    sys.exit(main())
