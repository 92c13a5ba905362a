"""The daemon's proxy worker: one process serving every `mode = "http"` service of a node.

`python -m rainctl.proxy.service_worker` talks JSON lines, like the health worker. On
stdin, from the daemon, `{"services": [settings, ...]}`: the whole set of services the node
serves now, each a `ProxySettings` document (`ProxySettings.to_json`), its back-ends
included. The worker makes its listeners match the set:

- a service whose settings differ only in their back-ends keeps its listener and its
  connections and gets the new back-ends (`BackendPool.set_backends`): that is how health
  verdicts and operator drains reach the proxy, at every change, without a restart;
- a service whose other settings changed is stopped (in-flight responses get their
  `shutdown_grace_ms`, in the background) and started again with the new ones;
- a service no longer listed is stopped the same way, a new one started.

Every worker of the node listens on the same VIP:port (SO_REUSEPORT: the kernel spreads
connections over them) with IP_FREEBIND, since a VIP is on this node's interfaces only
while the node holds it or keeps it on its dummy device.

On stdout, to the daemon: `{"ready": true}` once the first set is applied, after every
set `{"listening": ["VIP:PORT", ...]}` (the services it now accepts connections for) and
`{"refused": {"VIP:PORT": reason}}` for a listener that could not start, and every
COUNTERS_S `{"counters": {"VIP:PORT": {...}}}`: each service's counters since the worker
started (a restarted listener's are carried over). The end of stdin (the daemon stopped,
however) stops every listener gracefully and ends the worker; so does the death of its
parent (PR_SET_PDEATHSIG, as SIGTERM).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import signal
import sys
from typing import Any

from rainctl.children import die_with_parent
from rainctl.logs import LOG_FORMAT
from rainctl.proxy.server import ProxyServer
from rainctl.proxy.settings import ProxySettings, from_json

COUNTERS_S = 1.0
LINE_BYTES_MAX = 16 * 1024 * 1024

log = logging.getLogger("rainctl.proxy")

CounterDocument = dict[str, Any]


def add_counters(first: CounterDocument, second: CounterDocument) -> CounterDocument:
    """The sum of two `ProxyCounters.document()`s (refusals summed per reason)."""
    total: CounterDocument = {}
    for name in first.keys() | second.keys():
        if name == "refused":
            refused: dict[str, int] = dict(first.get(name, {}))
            for reason, count in second.get(name, {}).items():
                refused[reason] = refused.get(reason, 0) + count
            total[name] = dict(sorted(refused.items()))
        else:
            total[name] = first.get(name, 0) + second.get(name, 0)
    return total


def _same_but_backends(first: ProxySettings, second: ProxySettings) -> bool:
    return dataclasses.replace(first, backends=second.backends) == second


class ServiceWorker:
    """The listeners of one worker process and their counters (see the module docstring)."""

    def __init__(self) -> None:
        self.servers: dict[str, ProxyServer] = {}
        self._carried: dict[str, CounterDocument] = {}
        """Counters of listeners stopped since the worker started, per service."""
        self._stopping: set[asyncio.Task[None]] = set()

    async def apply(self, wanted: list[ProxySettings]) -> dict[str, str]:
        """Make the listeners match `wanted`; the services that could not start, with why."""
        by_key = {str(settings.listen): settings for settings in wanted}
        for key, server in list(self.servers.items()):
            settings = by_key.get(key)
            if settings is not None and _same_but_backends(server.settings, settings):
                if server.settings.backends != settings.backends:
                    server.pool.set_backends(settings.backends)
                    server.settings = settings
                continue
            self._retire(key, server)
        refused: dict[str, str] = {}
        for key, settings in by_key.items():
            if key in self.servers:
                continue
            server = ProxyServer(settings)
            try:
                await server.start()
            except OSError as error:
                refused[key] = error.strerror or str(error)
                continue
            self.servers[key] = server
            log.info(
                "proxy for %s listening, back-ends %s",
                key,
                " ".join(str(backend) for backend in settings.backends),
            )
        return refused

    def _retire(self, key: str, server: ProxyServer) -> None:
        """Stop a listener in the background; its counters are carried over at once (what
        its in-flight responses add while they finish is not counted)."""
        del self.servers[key]
        self._carried[key] = add_counters(self._carried.get(key, {}), server.counters.document())
        task = asyncio.get_running_loop().create_task(server.stop())
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    def counters(self) -> dict[str, CounterDocument]:
        documents = {key: dict(document) for key, document in self._carried.items()}
        for key, server in self.servers.items():
            documents[key] = add_counters(documents.get(key, {}), server.counters.document())
        return documents

    async def close(self) -> None:
        for key, server in list(self.servers.items()):
            self._retire(key, server)
        if self._stopping:
            await asyncio.wait(set(self._stopping))


def _say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message, separators=(",", ":")) + "\n")
    sys.stdout.flush()


async def _report(worker: ServiceWorker) -> None:
    while True:
        await asyncio.sleep(COUNTERS_S)
        _say({"counters": worker.counters()})


async def _serve() -> None:
    worker = ServiceWorker()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=LINE_BYTES_MAX)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    stopped = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stopped.set)
    reporting = loop.create_task(_report(worker))
    ready = False
    try:
        while not stopped.is_set():
            reading = loop.create_task(reader.readline())
            stopping = loop.create_task(stopped.wait())
            await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if not reading.done():
                reading.cancel()
                break
            line = reading.result()
            if not line:
                break
            message = json.loads(line)
            wanted = [from_json(json.dumps(settings)) for settings in message["services"]]
            refused = await worker.apply(wanted)
            if refused:
                log.error("proxy listeners refused: %s", refused)
                _say({"refused": refused})
            _say({"listening": sorted(worker.servers)})
            if not ready:
                ready = True
                _say({"ready": True})
    finally:
        reporting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reporting
        await worker.close()
        _say({"counters": worker.counters()})


def main() -> int:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    die_with_parent(signal.SIGTERM)
    asyncio.run(_serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
