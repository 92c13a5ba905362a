"""rainctl.metrics.exporter and rainctl.metrics.ipvs: the listener the daemon binds, the
answers shared between scrapes, the IPVS reader's thread, and the exporter process serving
a fake daemon's answer on an inherited socket."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Collection, Iterator
from pathlib import Path

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rainctl.daemon.control import ControlError, ControlRequest, ControlServer, JsonObject
from rainctl.errors import KernelError
from rainctl.kernel.ipvs import ServiceEntry, VirtualService
from rainctl.metrics.exporter import DaemonAnswers, MetricsError, open_listener
from rainctl.metrics.ipvs import IpvsReader
from tests.unit.test_metrics_collector import full_answer, ipvs_entries


def test_listeners_are_bound_and_listening() -> None:
    for listen in ("127.0.0.1:0", "[::1]:0"):
        with (
            open_listener(listen, "--metrics") as listener,
            socket.create_connection(listener.getsockname()[:2], timeout=1),
        ):
            pass


def test_a_taken_port_is_one_line_naming_the_source() -> None:
    with open_listener("127.0.0.1:0", "--metrics") as taken:
        port = taken.getsockname()[1]
        with pytest.raises(MetricsError) as caught:
            open_listener(f"127.0.0.1:{port}", "metrics.listen")
    assert str(caught.value) == (
        f"metrics.listen 127.0.0.1:{port}: cannot listen: Address already in use"
    )


def test_answers_are_shared_for_a_second_failures_too() -> None:
    asked: list[int] = []

    def ask() -> JsonObject:
        asked.append(1)
        if len(asked) == 2:
            raise ControlError("cannot reach the daemon")
        return {"n": len(asked)}

    answers = DaemonAnswers(ask, reuse_s=0.2)
    assert answers.latest() == {"n": 1}
    assert answers.latest() == {"n": 1}
    time.sleep(0.25)
    assert answers.latest() is None
    assert answers.latest() is None
    assert len(asked) == 2
    time.sleep(0.25)
    assert answers.latest() == {"n": 3}


class FakeTable:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.closed = 0
        self.reads = 0

    def list_services(self, only: Collection[VirtualService] | None = None) -> list[ServiceEntry]:
        self.reads += 1
        if self.failures:
            self.failures -= 1
            raise KernelError("ipvs dump: EPERM")
        return ipvs_entries()

    def close(self) -> None:
        self.closed += 1


def test_the_ipvs_reader_reads_when_asked_and_recovers_from_failures() -> None:
    table = FakeTable(failures=1)
    opened: list[FakeTable] = []

    def open_table() -> FakeTable:
        opened.append(table)
        return table

    reader = IpvsReader(open_table, refresh_s=0.05, first_read_wait_s=2.0)
    assert reader.latest() is None  # the first read failed: absent, not stale
    assert table.closed == 1
    deadline = time.monotonic() + 5
    entries = None
    while entries is None and time.monotonic() < deadline:
        time.sleep(0.06)
        entries = reader.latest()
    assert entries is not None
    assert len(entries) == 2
    assert len(opened) == 2  # opened again after the failure
    time.sleep(0.3)  # the last ask may still be owed a read
    reads = table.reads
    time.sleep(0.3)  # nobody asks: nothing is read
    assert table.reads == reads


@contextlib.contextmanager
def fake_daemon(socket_path: Path) -> Iterator[None]:
    """A control socket answering `metrics` with the full synthetic answer (data plane none,
    so the exporter reads no IPVS)."""
    loop = asyncio.new_event_loop()
    answer = {**full_answer(), "data_plane": "none"}

    def handler(request: ControlRequest) -> JsonObject:
        assert request.command == "metrics"
        return answer

    server = loop.run_until_complete(ControlServer.start(socket_path, handler))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        server.close()
        loop.close()


def test_the_exporter_serves_the_answer_and_the_daemons_process_metrics(tmp_path: Path) -> None:
    socket_path = tmp_path / "control.sock"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    with fake_daemon(socket_path), open_listener("127.0.0.1:0", "--metrics") as listener:
        exporter = subprocess.Popen(
            [sys.executable, "-m", "rainctl.metrics.exporter",
             "--listen-fd", str(listener.fileno()), "--control-socket", str(socket_path),
             "--daemon-pid", str(sleeper.pid)],
            stdin=subprocess.PIPE, pass_fds=(listener.fileno(),),
        )  # fmt: skip
        try:
            port = listener.getsockname()[1]
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
                text = reply.read().decode()
            parsed = {family.name: family for family in text_string_to_metric_families(text)}
            assert parsed["rainctl_ring_members"].samples[0].value == 2
            assert "rainctl_ipvs_service_bytes" not in parsed
            start = parsed["process_start_time_seconds"].samples[0].value
            assert start == pytest.approx(psutil.Process(sleeper.pid).create_time(), abs=0.02)
            assert exporter.stdin is not None
            exporter.stdin.close()
            assert exporter.wait(timeout=5) == 0
        finally:
            if exporter.poll() is None:
                exporter.kill()
                exporter.wait()
            sleeper.kill()
            sleeper.wait()
    assert os.path.exists(socket_path) is False
