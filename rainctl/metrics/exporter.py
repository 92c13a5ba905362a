"""The metrics endpoint: a process of its own that serves `/metrics`, supervised by the daemon.

Why a process: the HTTP server, the exposition format and the IPVS netlink reads are Python
work, and in the daemon's process they would share its interpreter lock with the ring's
loop (the health checkers taught that: rainctl.health.worker). So:

* the daemon binds the listening TCP socket itself at start (`open_listener`): a port in use
  or an address that is not this machine's stops the start with one line, before anything
  is sent. The socket stays the daemon's for its whole life and is handed to every exporter
  it starts (a restart loses the port to nobody; scrapes wait in the backlog meanwhile).
  The daemon never accepts on it.
* `python -m rainctl.metrics.exporter --listen-fd N --control-socket PATH --daemon-pid PID`
  serves HTTP on that socket (prometheus_client's WSGI application, a thread per
  connection) at nice HELPER_NICE, and ends with the daemon: at the end of its stdin (the
  daemon stopping it, or gone) or by PR_SET_PDEATHSIG (rainctl.children).
* Per scrape it asks the daemon's control socket for `metrics` (rainctl.daemon.metrics) and
  turns the answer into metric families (rainctl.metrics.collector). An answer serves every
  scrape of the next ANSWER_REUSE_S, so however hard the endpoint is scraped the daemon
  answers at most one question a second. The daemon's process metrics (CPU, memory, file
  descriptors, start time) are read from /proc/<daemon pid> (prometheus_client's
  ProcessCollector), not this process's. With `--data-plane ipvs` the IPVS counters are
  read here over netlink (rainctl.metrics.ipvs).

`MetricsExporter` is the daemon's side: it starts the process, starts another RESTART_S
after one dies, and stops it at exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, ProcessCollector, make_wsgi_app

from rainctl.children import die_with_parent, step_aside
from rainctl.daemon.control import ControlError, JsonObject, request
from rainctl.errors import RainctlError
from rainctl.logs import LOG_FORMAT
from rainctl.metrics.collector import RainctlCollector
from rainctl.metrics.ipvs import IpvsLister, IpvsReader

ANSWER_REUSE_S = 1.0
ANSWER_TIMEOUT_S = 3.0
"""The daemon may wait up to 1 s for its health worker's snapshot before it answers."""
REQUEST_TIMEOUT_S = 10.0
"""A scrape connection that sends nothing for this long is closed."""
BACKLOG = 64
RESTART_S = 1.0
STOP_TIMEOUT_S = 3.0

log = logging.getLogger("rainctl.metrics")


class MetricsError(RainctlError):
    """The metrics endpoint cannot listen where it was told to."""


# ---- the daemon's side -----------------------------------------------------------------


def open_listener(listen: str, source: str) -> socket.socket:
    """A listening TCP socket on `listen` (canonical "host:port", IPv6 in brackets);
    MetricsError naming `source` (the option or the config key) if it cannot be bound."""
    host, _, port = listen.rpartition(":")
    family = socket.AF_INET6 if host.startswith("[") else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        # A restarted daemon binds again while the last one's scrapes are in TIME_WAIT.
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host.strip("[]"), int(port)))
        listener.listen(BACKLOG)
    except OSError as exc:
        listener.close()
        reason = exc.strerror or str(exc)
        if exc.errno == errno.EADDRNOTAVAIL:
            reason += " (not an address of this machine)"
        raise MetricsError(f"{source} {listen}: cannot listen: {reason}") from exc
    return listener


class MetricsExporter:
    """The daemon's handle on its exporter process (see the module docstring)."""

    def __init__(self, listener: socket.socket, control_socket: Path, daemon_pid: int) -> None:
        self._listener = listener
        self._control_socket = control_socket
        self._daemon_pid = daemon_pid
        self._process: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.restarts = 0

    def start(self) -> None:
        host, port = self._listener.getsockname()[:2]
        shown = f"[{host}]:{port}" if self._listener.family == socket.AF_INET6 else f"{host}:{port}"
        log.info("metrics endpoint: http://%s/metrics", shown)
        self._task = asyncio.get_running_loop().create_task(self._run())

    def status(self) -> JsonObject:
        return {
            "pid": None if self._process is None else self._process.pid,
            "restarts": self.restarts,
        }

    async def _run(self) -> None:
        while True:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "rainctl.metrics.exporter",
                "--listen-fd", str(self._listener.fileno()),
                "--control-socket", str(self._control_socket),
                "--daemon-pid", str(self._daemon_pid),
                stdin=asyncio.subprocess.PIPE, pass_fds=(self._listener.fileno(),),
            )  # fmt: skip
            code = await self._process.wait()
            if self._stopping:
                return
            log.warning(
                "metrics exporter %d exited (status %s); starting another in %.0f s",
                self._process.pid,
                code,
                RESTART_S,
            )
            self.restarts += 1
            await asyncio.sleep(RESTART_S)

    async def stop(self) -> None:
        """End the exporter (its stdin closed; killed if it lingers). The listener stays
        open: it is its opener's to close."""
        self._stopping = True
        process = self._process
        if process is not None and process.returncode is None:
            if process.stdin is not None:
                process.stdin.close()
            try:
                await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


# ---- the exporter process --------------------------------------------------------------


class DaemonAnswers:
    """The daemon's `metrics` answer, asked at most once per `reuse_s` (a failure too: a
    daemon that does not answer is not asked again by every scrape)."""

    def __init__(self, ask: Callable[[], JsonObject], reuse_s: float = ANSWER_REUSE_S) -> None:
        self._ask = ask
        self._reuse_s = reuse_s
        self._lock = threading.Lock()
        self._asked_at: float | None = None
        self._answer: JsonObject | None = None

    def latest(self) -> JsonObject | None:
        with self._lock:
            now = time.monotonic()
            if self._asked_at is not None and now - self._asked_at < self._reuse_s:
                return self._answer
            self._asked_at = now
            try:
                self._answer = self._ask()
            except ControlError as exc:
                log.warning("metrics exporter: the daemon did not answer: %s", exc)
                self._answer = None
            return self._answer


class _QuietHandler(WSGIRequestHandler):
    timeout = REQUEST_TIMEOUT_S

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged (one every few seconds, forever)."""


class _InheritedSocketServer(ThreadingMixIn, WSGIServer):
    """A WSGI server on a socket that is already bound and listening (the daemon's)."""

    daemon_threads = True

    def __init__(self, listener: socket.socket, application: Any) -> None:
        self.address_family = listener.family
        super().__init__(listener.getsockname()[:2], _QuietHandler, bind_and_activate=False)
        self.socket.close()
        self.socket = listener
        host, port = listener.getsockname()[:2]
        # What server_bind would set, without its reverse DNS lookup of the host.
        self.server_name, self.server_port = str(host), int(port)
        self.setup_environ()
        self.set_app(application)


def _open_ipvs_table() -> IpvsLister:
    # Imported here: pyroute2 is only loaded when the data plane is ipvs.
    from rainctl.kernel.ipvs import LinuxIpvsTable  # noqa: PLC0415

    return LinuxIpvsTable()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rainctl.metrics.exporter")
    parser.add_argument("--listen-fd", type=int, required=True)
    parser.add_argument("--control-socket", type=Path, required=True)
    parser.add_argument("--daemon-pid", type=int, required=True)
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    die_with_parent()
    step_aside()
    daemon_pid: int = arguments.daemon_pid
    control_socket: Path = arguments.control_socket
    answers = DaemonAnswers(lambda: request(control_socket, "metrics", timeout_s=ANSWER_TIMEOUT_S))
    registry = CollectorRegistry()
    registry.register(RainctlCollector(answers.latest, IpvsReader(_open_ipvs_table).latest))
    ProcessCollector(pid=lambda: daemon_pid, registry=registry)
    listener = socket.socket(fileno=arguments.listen_fd)
    server = _InheritedSocketServer(listener, make_wsgi_app(registry))
    threading.Thread(target=server.serve_forever, name="rainctl-metrics-http", daemon=True).start()
    # The daemon never writes: the end of stdin is its way of saying stop (or it is gone).
    # The server's threads are daemon threads: returning ends them, a scrape in flight too.
    while sys.stdin.buffer.read(4096):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
