"""Validating configuration documents off the daemon's interpreter (live configuration).

Why a process for large documents: parsing (rtoml) and validating (pydantic-core) run in
compiled code that holds the interpreter lock for the whole call; in a thread of the daemon,
a 10,000-service document (1.5 MB) kept the ring's event loop from running long enough, in
a UML guest, for the ring to exclude the node (docs/benchmarks.md, "S4": "ran 522 ms past its
deadline" in the daemons' logs of the first 10,000-service run).
A process of its own shares no lock with the ring. Small documents (up to
INLINE_BYTES_MAX, a few services) are validated in a thread: their stall is a few
milliseconds, and a process would add its start-up to every small push.

`python -m rainctl.daemon.config_worker` is started at the first large document and ends
after IDLE_S without work (its stdin closed), so a node that never sees a large document
carries no second interpreter (the UML guests have 192 MB); it dies with the daemon
(PR_SET_PDEATHSIG) and runs at a lower priority (rainctl.children). Requests and answers
are pickles behind an 8-byte length, on its stdin and stdout; the answer is unpickled in a
thread. It keeps a `WorkerMemory`: a `ConfigRereader` (unchanged `[[services]]` tables are
not validated again) and the documents it read last, by digest.

What crosses the pipes is kept small, because inside a UML guest moving a document through
a pipe cost more than validating it (docs/benchmarks.md, S1 live: 135-233 ms of "transfers"
for a 1 % change of a 727 KB document, against 59-181 ms of validation): the pipes are made
large enough for a whole document (F_SETPIPE_SZ), so it crosses in one write; the running
document goes by digest when the worker still keeps it (each answer says which documents it
keeps; one it forgot is asked for again with the text); the answer leaves the document's
text out (the daemon has it).

Services the document did not change do not cross the process boundary: the worker sends
their position in the running version instead (its re-reader gives an unchanged entry the
very `ServiceSpec` of the running read), and the daemon puts the running version's own
objects there, which the IPVS reconciler skips by identity (rainctl.daemon.dataplane).
Pickling 11,000 slotted dataclasses each way cost more than validating a 1 % change of a
1,000 x 10 table (`dataclasses`' per-object state functions). The changed ones come as
new objects; one equal to the running service of the same (vip, port, protocol) is
replaced by it (`intern_services`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import logging
import pickle
import resource
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from rainctl.children import die_with_parent, step_aside
from rainctl.config.live import NodeContext, Prepared, document_digest, prepare_document
from rainctl.config.reread import ConfigRead, ConfigRereader
from rainctl.core.dataplane import ServiceSpec
from rainctl.errors import ConfigError, RainctlError

INLINE_BYTES_MAX = 64 * 1024
IDLE_S = 300.0
SERVICES_PER_CHUNK = 200
PIPE_BYTES = 4 << 20
"""Each pipe's capacity (the kernel's default is 64 KiB); capped by fs.pipe-max-size unless
the daemon runs as root."""
_F_SETPIPE_SZ = 1031
_LENGTH_BYTES = 8

log = logging.getLogger("rainctl.config")

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
ALLOCATOR_SETTINGS = (
    (_M_TRIM_THRESHOLD, 1 << 30),
    (_M_MMAP_THRESHOLD, 32 << 20),
    (_M_TOP_PAD, 16 << 20),
)
"""glibc malloc parameters of the worker: never give the heap back (1 GiB trim threshold),
serve blocks up to 32 MiB (glibc's largest mmap threshold) from the heap rather than from
mmaps of their own, grow the heap 16 MiB at a time."""


@dataclass(frozen=True, slots=True)
class PrepareRequest:
    text: str
    source: str
    running_text: str
    context: NodeContext


@dataclass(frozen=True, slots=True)
class _Wire:
    """A request as it crosses the pipe: the running document by digest, its text only when
    the worker may not keep it."""

    text: str
    source: str
    running_digest: bytes
    running_text: str | None
    context: NodeContext


@dataclass(frozen=True, slots=True)
class WorkerCost:
    """What one request cost the worker process."""

    worker_ms: float
    page_faults: int


class WorkerMemory:
    """What validation keeps between requests: the re-reader, and the documents it validated
    last by digest (the next request's running document is usually the one validated for
    the previous request). One per worker process."""

    KEPT = 2

    def __init__(self) -> None:
        self.reader = ConfigRereader()
        self._known: dict[bytes, ConfigRead] = {}

    def running_read(self, text: str, digest: bytes | None = None) -> ConfigRead:
        digest = document_digest(text) if digest is None else digest
        read = self._known.get(digest)
        if read is None:
            read = self.reader.read_text(text, "the running version")
            self.remember(digest, read)
        return read

    def known(self, digest: bytes) -> ConfigRead | None:
        return self._known.get(digest)

    def kept(self) -> tuple[bytes, ...]:
        """The digests of the documents it keeps."""
        return tuple(self._known)

    def remember(self, digest: bytes, read: ConfigRead) -> None:
        self._known[digest] = read
        while len(self._known) > self.KEPT:
            del self._known[next(iter(self._known))]


def prepare_request(
    request: PrepareRequest, memory: WorkerMemory
) -> tuple[Prepared, tuple[ServiceSpec, ...]]:
    """Validate `request.text` for this node against the running document (the worker);
    also the running document's services as this process read them."""
    return _prepare_against(request, memory.running_read(request.running_text), memory)


def _prepare_against(
    request: PrepareRequest | _Wire, running: ConfigRead, memory: WorkerMemory
) -> tuple[Prepared, tuple[ServiceSpec, ...]]:
    prepared = prepare_document(
        request.text,
        request.source,
        reader=memory.reader,
        running=running.config,
        context=request.context,
    )
    memory.remember(prepared.digest, ConfigRead(prepared.config, prepared.services))
    return prepared, running.services


ServiceOrPosition = ServiceSpec | int
"""A service the worker sends whole, or the position of the running service it is."""


def _portable(prepared: Prepared, running: tuple[ServiceSpec, ...]) -> tuple[Prepared, list[bytes]]:
    """What the worker sends back: the services (each a new `ServiceSpec`, or its position
    in `running` when it is the running read's very object) as pickles of
    SERVICES_PER_CHUNK each (the daemon unpickles them one by one, so its event loop gets
    its turn between them) and, for a large document, the configuration without its
    `[[services]]` (the daemon does not read them there; re-creating 10,000 models would
    hold its interpreter lock)."""
    position = {id(service): index for index, service in enumerate(running)}
    items: list[ServiceOrPosition] = [position.get(id(s), s) for s in prepared.services]
    chunks = [
        pickle.dumps(items[start : start + SERVICES_PER_CHUNK], pickle.HIGHEST_PROTOCOL)
        for start in range(0, len(items), SERVICES_PER_CHUNK)
    ]
    config = prepared.config
    if len(prepared.text) > INLINE_BYTES_MAX:
        config = config.model_copy(update={"services": ()})
    return replace(prepared, text="", config=config, services=()), chunks


def _services_from(
    chunks: list[bytes], running: tuple[ServiceSpec, ...]
) -> tuple[ServiceSpec, ...]:
    items: list[ServiceOrPosition] = []
    for chunk in chunks:
        items += pickle.loads(chunk)  # noqa: S301 - from our own worker
    if any(isinstance(item, int) and not 0 <= item < len(running) for item in items):
        raise ConfigError("the configuration worker answered for another running version")
    services = [running[item] if isinstance(item, int) else item for item in items]
    return intern_services(tuple(services), running)


def intern_services(
    services: tuple[ServiceSpec, ...], running: tuple[ServiceSpec, ...]
) -> tuple[ServiceSpec, ...]:
    """`services` with every one equal to the running service of the same (vip, port,
    protocol) replaced by that very object (compared only where they are not the same)."""
    by_key = {(service.vip, service.port, service.protocol): service for service in running}
    result = []
    for service in services:
        same_key = by_key.get((service.vip, service.port, service.protocol))
        result.append(same_key if same_key is not None and same_key == service else service)
    return tuple(result)


class ConfigWorker:
    """Validates documents: large ones in the worker process, small ones in a thread."""

    def __init__(self) -> None:
        self._reader = ConfigRereader()
        self._process: asyncio.subprocess.Process | None = None
        self._turn = asyncio.Lock()
        self._idle: asyncio.TimerHandle | None = None
        self._ending: set[asyncio.Task[None]] = set()
        self._kept: tuple[bytes, ...] = ()
        """The documents the running worker process keeps (its last answer said so)."""

    async def prepare(self, request: PrepareRequest, running: Prepared) -> Prepared:
        if max(len(request.text), len(running.text)) <= INLINE_BYTES_MAX:
            return await asyncio.to_thread(
                prepare_document,
                request.text,
                request.source,
                reader=self._reader,
                running=running.config,
                context=request.context,
            )
        started = time.monotonic()
        async with self._turn:
            queued_s = time.monotonic() - started
            if self._idle is not None:
                self._idle.cancel()
            try:
                kind, value, cost = await self._ask(request)
            finally:
                self._idle = asyncio.get_running_loop().call_later(IDLE_S, self._stop_idle)
        answered_s = time.monotonic() - started
        if kind != "ok" or not isinstance(value, tuple):
            raise ConfigError(str(value))
        prepared, chunks = value
        assert isinstance(prepared, Prepared)
        services = await asyncio.to_thread(_services_from, chunks, running.services)
        # Where a large document's time goes (docs/benchmarks.md, S1 live): the worker's own
        # validation, and around it the queue, the pipes and the pickles.
        log.info(
            "configuration worker: %s (%d bytes) validated in %d ms: %d ms queued, %d ms in "
            "the worker (%d page faults), %d ms in transfers, %d ms taking the services back",
            request.source,
            len(request.text),
            (time.monotonic() - started) * 1000,
            queued_s * 1000,
            cost.worker_ms,
            cost.page_faults,
            max(answered_s - queued_s - cost.worker_ms / 1000, 0.0) * 1000,
            (time.monotonic() - started - answered_s) * 1000,
        )
        return replace(prepared, text=request.text, services=services)

    async def _ask(self, request: PrepareRequest) -> tuple[str, object, WorkerCost]:
        """The worker's answer: ("ok", (prepared, chunks)) or ("error", message), and what
        it cost the worker. The running document goes by digest when the worker keeps it;
        asked for it (it forgot), the request is sent again with the text."""
        process = self._process
        if process is None or process.returncode is not None:
            self._kept = ()
            process = self._process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "rainctl.daemon.config_worker",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
        running_digest = document_digest(request.running_text)
        by_digest = running_digest in self._kept
        while True:
            wire = _Wire(
                request.text,
                request.source,
                running_digest,
                None if by_digest else request.running_text,
                request.context,
            )
            kind, value, cost, self._kept = await self._exchange(process, wire)
            if kind != "unknown":
                return kind, value, cost
            by_digest = False

    async def _exchange(
        self, process: asyncio.subprocess.Process, wire: _Wire
    ) -> tuple[str, object, WorkerCost, tuple[bytes, ...]]:
        assert process.stdin is not None
        assert process.stdout is not None
        data = await asyncio.to_thread(pickle.dumps, wire, pickle.HIGHEST_PROTOCOL)
        try:
            process.stdin.write(len(data).to_bytes(_LENGTH_BYTES, "big") + data)
            await process.stdin.drain()
            length = int.from_bytes(await process.stdout.readexactly(_LENGTH_BYTES), "big")
            answer = await process.stdout.readexactly(length)
        except (OSError, asyncio.IncompleteReadError) as exc:
            self._process = None
            raise ConfigError(f"the configuration worker ended ({exc}); try again") from exc
        kind, value, (worker_ms, faults), kept = await asyncio.to_thread(pickle.loads, answer)
        return str(kind), value, WorkerCost(float(worker_ms), int(faults)), tuple(kept)

    def _stop_idle(self) -> None:
        self._idle = None
        process, self._process = self._process, None
        if process is not None:
            task = asyncio.get_running_loop().create_task(_end(process, kill=False))
            self._ending.add(task)
            task.add_done_callback(self._ending.discard)

    async def close(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        process, self._process = self._process, None
        if process is not None:
            await _end(process, kill=True)
        for task in list(self._ending):
            await task


async def _end(process: asyncio.subprocess.Process, *, kill: bool) -> None:
    """End the worker: its input closed (it exits), or killed; waited for."""
    if kill and process.returncode is None:
        process.kill()
    elif process.stdin is not None:
        process.stdin.close()
    await process.wait()


def keep_freed_memory() -> bool:
    """Make the worker keep the memory it frees (ALLOCATOR_SETTINGS); False when the C
    library is not glibc or refused a setting.

    Why: validating a document allocates and frees tens of megabytes; with glibc's default
    thresholds the freed memory goes back to the kernel and the next request faults every
    page in again, until glibc's dynamic threshold has grown. Inside a UML guest a page
    fault is a trip through the host (ptrace): a 1 % change of a 1,000 x 10 document then
    took up to 1.1 s, with about 5,000 page faults, against at most 240 ms with these
    settings (docs/benchmarks.md, "The configuration worker's memory"). A fresh worker (one
    starts after IDLE_S without work, which also bounds what it keeps) is the case.
    """
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    return all(mallopt(parameter, value) == 1 for parameter, value in ALLOCATOR_SETTINGS)


def page_faults() -> int:
    """This process's page faults so far (minor and major)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_minflt + usage.ru_majflt


def widen_pipes(*descriptors: int) -> None:
    """Give these pipes PIPE_BYTES of capacity, or as much as fs.pipe-max-size allows."""
    for descriptor in descriptors:
        try:
            fcntl.fcntl(descriptor, _F_SETPIPE_SZ, PIPE_BYTES)
        except OSError:
            with contextlib.suppress(OSError, ValueError):
                allowed = int(Path("/proc/sys/fs/pipe-max-size").read_text(encoding="ascii"))
                fcntl.fcntl(descriptor, _F_SETPIPE_SZ, min(allowed, PIPE_BYTES))


def answer(wire: _Wire, memory: WorkerMemory) -> tuple[str, object]:
    """One request's answer: ("ok", what `_portable` makes), ("error", the one-line
    reason), or ("unknown", None) when the running document came by a digest this worker
    no longer keeps."""
    if wire.running_text is None:
        running = memory.known(wire.running_digest)
        if running is None:
            return "unknown", None
    else:
        running = memory.running_read(wire.running_text, wire.running_digest)
    try:
        return "ok", _portable(*_prepare_against(wire, running, memory))
    except RainctlError as exc:
        return "error", str(exc)


def main() -> None:
    """The worker process: answer requests until its stdin ends."""
    die_with_parent()
    step_aside()
    keep_freed_memory()
    widen_pipes(0, 1)
    memory = WorkerMemory()
    requests, answers = sys.stdin.buffer, sys.stdout.buffer
    while True:
        header = requests.read(_LENGTH_BYTES)
        if len(header) < _LENGTH_BYTES:
            return
        wire = pickle.loads(requests.read(int.from_bytes(header, "big")))  # noqa: S301 - from the daemon, our parent
        started, faults = time.monotonic(), page_faults()
        kind, value = answer(wire, memory)
        cost = ((time.monotonic() - started) * 1000, page_faults() - faults)
        data = pickle.dumps((kind, value, cost, memory.kept()), pickle.HIGHEST_PROTOCOL)
        answers.write(len(data).to_bytes(_LENGTH_BYTES, "big") + data)
        answers.flush()


if __name__ == "__main__":
    main()
