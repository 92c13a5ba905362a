"""The configuration worker (rainctl.daemon.config_worker): large documents validated in a
process of their own, with the same result as in the daemon; small ones in a thread."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rainctl.config.live import NodeContext, Prepared, document_digest
from rainctl.daemon.config_worker import (
    INLINE_BYTES_MAX,
    PIPE_BYTES,
    ConfigWorker,
    PrepareRequest,
    WorkerCost,
    WorkerMemory,
    _portable,
    _services_from,
    _Wire,
    answer,
    prepare_request,
    widen_pipes,
)
from rainctl.errors import ConfigError
from tests.unit.test_config import document

CONTEXT = NodeContext(2, front_interface_fixed=False)
F_GETPIPE_SZ = 1032


def services(count: int, *, weight: int = 1) -> str:
    return "".join(
        f'\n[[services]]\nvip = "198.18.0.100"\nport = {20000 + index}\n'
        f'health = {{ kind = "none" }}\n'
        f'real_servers = [{{ address = "198.18.1.11", weight = {weight if index == 7 else 1} }}]\n'
        for index in range(count)
    )


def running(text: str) -> Prepared:
    return prepare_request(PrepareRequest(text, "running", text, CONTEXT), WorkerMemory())[0]


def test_a_large_document_is_validated_in_the_worker_like_in_the_daemon(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="rainctl.config")
    base = running(document())
    large = document() + services(600)
    assert len(large) > INLINE_BYTES_MAX
    changed = document() + services(600, weight=3)

    async def main() -> tuple[Prepared, Prepared, int | None]:
        worker = ConfigWorker()
        try:
            first = await worker.prepare(PrepareRequest(large, "a", base.text, CONTEXT), base)
            second = await worker.prepare(PrepareRequest(changed, "b", large, CONTEXT), first)
            process = worker._process
            return first, second, None if process is None else process.pid
        finally:
            await worker.close()

    first, second, pid = asyncio.run(main())
    assert pid is not None
    deadline = time.monotonic() + 5.0  # killed by close(), reaped by asyncio's watcher
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not Path(f"/proc/{pid}").exists()
    reference, _ = prepare_request(PrepareRequest(large, "a", base.text, CONTEXT), WorkerMemory())
    assert first.services == reference.services
    assert first.spec == reference.spec
    assert first.changes == {"services": [f"+ tcp 198.18.0.100:{20000 + i}" for i in range(600)]}
    assert first.config.services == ()  # left in the worker: `services` carries them
    # Unchanged services come back as the running version's very objects.
    assert all(
        new is old
        for index, (new, old) in enumerate(zip(second.services, first.services, strict=True))
        if index != 7
    )
    assert second.services[7] != first.services[7]
    assert second.changes == {"services": ["~ tcp 198.18.0.100:20007: real_servers"]}
    # Each request says where its time went.
    timings = [r.getMessage() for r in caplog.records if "configuration worker" in r.getMessage()]
    assert [message.split(" (")[0] for message in timings] == [
        "configuration worker: a",
        "configuration worker: b",
    ]
    assert all("page faults" in message and "in transfers" in message for message in timings)


def test_the_worker_keeps_the_memory_it_frees() -> None:
    # In a process of its own: the settings are the C library's, for the whole process.
    code = "from rainctl.daemon.config_worker import keep_freed_memory as k; print(k())"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "True"  # glibc (Debian) accepted every setting


def test_refusals_come_back_as_one_line() -> None:
    base = running(document())
    broken = document(cluster='[cluster]\nname = "edge-a"\nid = 43\n') + services(600)

    async def main() -> None:
        worker = ConfigWorker()
        try:
            with pytest.raises(ConfigError, match=r"^pushed: cluster\.id: 42 -> 43 cannot change"):
                await worker.prepare(PrepareRequest(broken, "pushed", base.text, CONTEXT), base)
            small = document(extra="[timers]\nround_ms = 50\n")
            prepared = await worker.prepare(
                PrepareRequest(small, "small", base.text, CONTEXT), base
            )
            assert prepared.changes == {"timers": ["round_ms: (unset) -> 50"]}
        finally:
            await worker.close()

    asyncio.run(main())


def test_unchanged_services_cross_as_their_running_positions() -> None:
    memory = WorkerMemory()
    large = document() + services(600)
    changed = document() + services(600, weight=3)
    second, worker_running = prepare_request(PrepareRequest(changed, "b", large, CONTEXT), memory)
    _, chunks = _portable(second, worker_running)
    items = [item for chunk in chunks for item in pickle.loads(chunk)]
    # Only the changed service is sent whole; the others are positions in the running read.
    assert [index for index, item in enumerate(items) if not isinstance(item, int)] == [7]
    # The daemon's own running objects come back in their places (the daemon read the same
    # running text itself: equal services, different objects than the worker's).
    daemon_running = running(large).services
    rebuilt = _services_from(chunks, daemon_running)
    assert rebuilt == second.services
    assert all(rebuilt[i] is daemon_running[i] for i in range(len(rebuilt)) if i != 7)
    with pytest.raises(ConfigError, match="another running version"):
        _services_from(chunks, daemon_running[:5])


def test_the_running_document_crosses_by_digest_once_the_worker_keeps_it() -> None:
    """Inside UML moving a document through a pipe cost more than validating it: the running
    document goes as its digest when the worker keeps it, the answer leaves the text out."""
    base = running(document())
    large = document() + services(600)
    changed = document() + services(600, weight=3)
    sent: list[_Wire] = []

    async def main() -> tuple[Prepared, Prepared, Prepared]:
        worker = ConfigWorker()
        exchange = worker._exchange

        async def recorded(
            process: asyncio.subprocess.Process, wire: _Wire
        ) -> tuple[str, object, WorkerCost, tuple[bytes, ...]]:
            sent.append(wire)
            return await exchange(process, wire)

        worker._exchange = recorded  # type: ignore[method-assign]
        try:
            first = await worker.prepare(PrepareRequest(large, "a", base.text, CONTEXT), base)
            second = await worker.prepare(PrepareRequest(changed, "b", large, CONTEXT), first)
            # A document the worker no longer keeps (it keeps the last two): the daemon,
            # told otherwise here, sends the digest and is asked for the text.
            worker._kept = (document_digest(base.text),)
            third = await worker.prepare(PrepareRequest(large, "c", base.text, CONTEXT), base)
            return first, second, third
        finally:
            await worker.close()

    first, second, third = asyncio.run(main())
    assert [wire.running_text is None for wire in sent] == [False, True, True, False]
    assert [wire.source for wire in sent] == ["a", "b", "c", "c"]
    assert (first.text, second.text, third.text) == (large, changed, large)
    assert second.changes == {"services": ["~ tcp 198.18.0.100:20007: real_servers"]}
    assert third.services == first.services


def test_a_digest_the_worker_does_not_keep_is_asked_for() -> None:
    memory = WorkerMemory()
    wire = _Wire(document(), "x", document_digest("another"), None, CONTEXT)
    assert answer(wire, memory) == ("unknown", None)


def test_the_worker_widens_its_pipes() -> None:
    reading, writing = os.pipe()
    try:
        widen_pipes(reading)
        assert fcntl.fcntl(reading, F_GETPIPE_SZ) >= min(PIPE_BYTES, _pipe_max_bytes())
    finally:
        os.close(reading)
        os.close(writing)


def _pipe_max_bytes() -> int:
    return int(Path("/proc/sys/fs/pipe-max-size").read_text(encoding="ascii"))
