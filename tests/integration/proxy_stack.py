"""Loopback processes for the proxy's integration tests and benchmark: origins
(rainctl.testing.origin) and `rainctl proxy`, each started with the interpreter running the
tests, recorded, and ended by PID (`Stack.close`); and a plain HTTP client that tells a
complete body from a broken one."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

START_TIMEOUT_S = 10.0
PAST_S = 1_700_000_000
"""Files' mtime: far enough before the responses' Date for Last-Modified to be strong."""


def write_content(path: Path, size: int, seed: bytes) -> bytes:
    """`size` pseudo-random bytes (a wrong splice cannot match by accident) into `path`."""
    content = hashlib.shake_256(seed).digest(size)
    path.write_bytes(content)
    os.utime(path, (PAST_S, PAST_S))
    return content


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Running:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def counters(self) -> dict[str, Any]:
        """The last counters line the proxy logged (at exit, or on SIGUSR1)."""
        assert self.log_path is not None
        lines = re.findall(r"counters (\{.*\})", self.log_path.read_text())
        assert lines, self.log_path.read_text()
        document: dict[str, Any] = json.loads(lines[-1])
        return document

    def stop(self, timeout_s: float = 15.0) -> int:
        """SIGTERM, and the exit status."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout_s)


@dataclass
class Stack:
    directory: Path
    running: list[Running] = field(default_factory=list)

    def origin(self, file: Path, *options: str) -> Running:
        process = subprocess.Popen(
            [sys.executable, "-m", "rainctl.testing.origin", "--file", str(file), *options],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        running = Running(process, 0)
        self.running.append(running)
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], START_TIMEOUT_S)
        assert ready, "the origin did not start"
        running.port = json.loads(process.stdout.readline())["port"]
        return running

    def proxy(self, backends: list[str], *options: str, workers: int = 1) -> Running:
        port = free_tcp_port()
        log_path = self.directory / f"proxy-{port}.log"
        command = [sys.executable, "-m", "rainctl", "proxy", "--listen", f"127.0.0.1:{port}"]
        for backend in backends:
            command += ["--backend", backend]
        command += ["--workers", str(workers), *options]
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command, stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL
            )
        running = Running(process, port, log_path)
        self.running.append(running)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if f"{workers} proxy workers on" in log_path.read_text() or (
                workers == 1 and "proxy listening" in log_path.read_text()
            ):
                return running
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "the proxy did not start"
            time.sleep(0.02)

    def close(self) -> None:
        for running in self.running:
            if running.process.poll() is None:
                running.process.kill()
            running.process.wait(timeout=10)
            if running.process.stdout is not None:
                running.process.stdout.close()


@dataclass
class Fetched:
    status: int
    body: bytes
    complete: bool
    elapsed_s: float


def fetch(
    port: int,
    method: str = "GET",
    path: str = "/file",
    connection: http.client.HTTPConnection | None = None,
    timeout_s: float = 30.0,
    host: str = "127.0.0.1",
) -> Fetched:
    """One request; a body cut short (before its length or last chunk) is incomplete."""
    own = connection is None
    connection = connection or http.client.HTTPConnection(host, port, timeout=timeout_s)
    started = time.monotonic()
    try:
        connection.request(method, path)
        response = connection.getresponse()
        try:
            body, complete = response.read(), True
        except http.client.IncompleteRead as broken:
            body, complete = broken.partial, False
        return Fetched(response.status, body, complete, time.monotonic() - started)
    finally:
        if own:
            connection.close()
