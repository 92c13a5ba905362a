"""The node's HTTP proxy workers for `mode = "http"` services, supervised by the daemon.

The proxy is data path: it must never run in the ring's process (a saturated proxy would
delay the token). So the daemon starts `workers` processes of `python -m
rainctl.proxy.service_worker` (one per core by default; SCHED_RESET_ON_FORK gives them
normal scheduling even when the daemon is real-time) and only tells them, as JSON lines,
which services to serve with which back-ends (rainctl.proxy.service_worker). The set
is made by `proxy_settings` from the config's proxied services as the ring's verdicts and
operator drains leave them (`rainctl.core.backends.proxy_backends`): every node proxies to
the same real servers. A worker that dies is started again after RESTART_S with the current
set; its counters so far are kept. Workers start with the first proxied service (a node
without one runs none) and stay until the daemon stops; an empty set closes their
listeners.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from rainctl.config.services import ProxyOptions
from rainctl.core.backends import proxy_backends
from rainctl.core.dataplane import ServiceSpec
from rainctl.proxy.service_worker import CounterDocument, add_counters
from rainctl.proxy.settings import Balance, Endpoint, ProxySettings

RESTART_S = 1.0
STOP_TIMEOUT_S = 15.0
"""The workers' own shutdown grace (10 s by default) plus a margin."""
LINE_BYTES_MAX = 16 * 1024 * 1024

log = logging.getLogger("rainctl.proxies")

JsonObject = dict[str, Any]


def proxy_settings(
    services: Sequence[ServiceSpec], options: Mapping[tuple[str, int], ProxyOptions]
) -> tuple[ProxySettings, ...]:
    """What the workers serve: one listener per proxied service of `services` (as
    `with_verdicts` made them), with the service's `proxy` options."""
    result = []
    for service in services:
        if not service.proxied:
            continue
        chosen = options.get((service.vip, service.port), ProxyOptions())
        result.append(
            ProxySettings(
                listen=Endpoint(service.vip, service.port),
                backends=tuple(Endpoint(*backend) for backend in proxy_backends(service)),
                balance=Balance(chosen.balance),
                stall_timeout_ms=chosen.stall_timeout_ms,
                resumes_max=chosen.resumes_max,
                free_bind=True,
            )
        )
    return tuple(result)


class _Worker:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.counters: dict[str, CounterDocument] = {}
        self.refused: dict[str, str] = {}
        self.listening: set[str] = set()


class ProxyFleet:
    """The daemon's handle on its proxy workers (see the module docstring)."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._wanted: tuple[ProxySettings, ...] = ()
        self._running: list[_Worker] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._exited: dict[str, CounterDocument] = {}
        """Counters of workers that exited, per service."""
        self._stopping = False
        self.restarts = 0

    def want(self, settings: tuple[ProxySettings, ...]) -> None:
        """Serve `settings` from now on (workers are started by the first non-empty set)."""
        if settings == self._wanted:
            return
        self._wanted = settings
        if self._stopping:
            return
        if settings and not self._running and not self._tasks:
            for _ in range(self.workers):
                self._start_task()
            return
        for worker in self._running:
            self._send(worker)

    def _start_task(self) -> None:
        task = asyncio.get_running_loop().create_task(self._run_one())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_one(self) -> None:
        """One worker from start to exit; a worker that exits unasked is replaced."""
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "rainctl.proxy.service_worker",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=LINE_BYTES_MAX,
        )  # fmt: skip
        worker = _Worker(process)
        self._running.append(worker)
        self._send(worker)
        try:
            await self._read(worker)
            code = await process.wait()
        finally:
            self._running.remove(worker)
            for key, document in worker.counters.items():
                self._exited[key] = add_counters(self._exited.get(key, {}), document)
        if self._stopping:
            return
        log.warning("proxy worker %d exited (status %s); starting another", process.pid, code)
        self.restarts += 1
        await asyncio.sleep(RESTART_S)
        if not self._stopping:
            self._start_task()

    def _send(self, worker: _Worker) -> None:
        stdin = worker.process.stdin
        if stdin is None or stdin.is_closing():
            return
        document = {"services": [json.loads(settings.to_json()) for settings in self._wanted]}
        stdin.write(json.dumps(document, separators=(",", ":")).encode() + b"\n")

    async def _read(self, worker: _Worker) -> None:
        stdout = worker.process.stdout
        assert stdout is not None
        while line := await stdout.readline():
            message = json.loads(line)
            if "counters" in message:
                worker.counters = message["counters"]
            elif "listening" in message:
                worker.listening = set(message["listening"])
            elif "refused" in message:
                worker.refused = message["refused"]
                log.error(
                    "proxy worker %d could not listen: %s", worker.process.pid, worker.refused
                )
            elif message.get("ready"):
                log.info("proxy worker %d ready", worker.process.pid)

    def status(self) -> JsonObject | None:
        """Per service (VIP:PORT) the back-ends, how many workers listen for it, and the
        counters summed over the workers, present and past; None when the node proxies
        nothing and never did."""
        if not self._wanted and not self._running and not self._exited:
            return None
        totals: dict[str, CounterDocument] = {key: dict(doc) for key, doc in self._exited.items()}
        for worker in self._running:
            for key, document in worker.counters.items():
                totals[key] = add_counters(totals.get(key, {}), document)
        refused = {key: why for worker in self._running for key, why in worker.refused.items()}
        return {
            "workers": [worker.process.pid for worker in self._running],
            "restarts": self.restarts,
            "services": [
                {
                    "listen": str(settings.listen),
                    "backends": [str(backend) for backend in settings.backends],
                    "listening_workers": sum(
                        1 for worker in self._running if str(settings.listen) in worker.listening
                    ),
                    "refused_listen": refused.get(str(settings.listen)),
                    "counters": totals.get(str(settings.listen), {}),
                }
                for settings in self._wanted
            ],
        }

    async def stop(self) -> None:
        """End the workers: their stdin is closed, they finish in-flight responses and exit
        (killed if they linger)."""
        self._stopping = True
        for worker in self._running:
            if worker.process.stdin is not None:
                worker.process.stdin.close()
        for worker in list(self._running):
            try:
                await asyncio.wait_for(worker.process.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.kill()
        if self._tasks:
            await asyncio.wait(set(self._tasks))
