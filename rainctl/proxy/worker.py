"""Proxy worker processes: one listener each on the same address (SO_REUSEPORT).

`serve(settings)` runs one worker in the running loop until SIGTERM or SIGINT: it stops
accepting, gives in-flight responses `shutdown_grace_ms`, logs its counters and returns.
SIGUSR1 logs the counters (one JSON line) without stopping.

`run_workers(settings, workers)` is what `rainctl proxy` runs: one worker in this process
for `workers == 1`, otherwise `workers` processes of `python -m rainctl.proxy.worker
--settings JSON` (the form the daemon will start too), each its own listener in the
kernel's SO_REUSEPORT group, so the kernel spreads connections over them. A worker prints
`{"ready": port}` or `{"error": message}` as its first stdout line; the supervisor forwards
SIGTERM / SIGINT / SIGUSR1, starts a worker that died unasked again after RESTART_S, and
returns once every worker has exited. A worker dies with its parent (PR_SET_PDEATHSIG, as
SIGTERM: it still finishes its transfers).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import logging
import signal
import socket
import sys
from collections.abc import Callable

from rainctl.children import die_with_parent
from rainctl.errors import OptionError, RainctlError
from rainctl.logs import LOG_FORMAT
from rainctl.proxy.server import ProxyServer
from rainctl.proxy.settings import ProxyCounters, ProxySettings, from_json

log = logging.getLogger("rainctl.proxy")

READY_TIMEOUT_S = 10.0
RESTART_S = 1.0


def _listen_error(settings: ProxySettings, error: OSError) -> OptionError:
    reason = error.strerror or str(error)
    if error.errno == errno.EADDRINUSE:
        reason = "the port is in use"
    return OptionError(f"--listen: cannot listen on {settings.listen}: {reason}")


def log_counters(counters: ProxyCounters, event: str) -> None:
    log.info("%s %s", event, json.dumps(counters.document(), sort_keys=True))


async def serve(
    settings: ProxySettings, on_ready: Callable[[int], None] | None = None
) -> ProxyCounters:
    """Run one worker until SIGTERM / SIGINT; its counters at the end."""
    loop = asyncio.get_running_loop()
    server = ProxyServer(settings)
    try:
        await server.start()
    except OSError as error:
        raise _listen_error(settings, error) from error
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, log_counters, server.counters, "counters")
    try:
        log.info(
            "proxy listening on %s (port %d), back-ends %s, balance %s",
            settings.listen,
            server.port,
            " ".join(str(backend) for backend in settings.backends),
            settings.balance,
        )
        if on_ready is not None:
            on_ready(server.port)
        await stop.wait()
        log.info("stopping: no new connections, in-flight responses finish")
        await server.stop()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            loop.remove_signal_handler(signum)
    log_counters(server.counters, "exit counters")
    return server.counters


def check_listen(settings: ProxySettings) -> None:
    """Bind (without listening) as the workers will, so that a bad or busy address is
    reported once, before any worker starts."""
    family = socket.AF_INET6 if ":" in settings.listen.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((settings.listen.host, settings.listen.port))
        except OSError as error:
            raise _listen_error(settings, error) from error


# ---- the supervisor --------------------------------------------------------------------------


async def _start_worker(settings: ProxySettings) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "rainctl.proxy.worker",
        "--settings",
        settings.to_json(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            line = await process.stdout.readline()
    except TimeoutError:
        line = b""
    try:
        message = json.loads(line) if line else {"error": "the worker did not start"}
    except ValueError:
        message = {"error": f"the worker said {line!r}"}
    if "ready" not in message:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise OptionError(str(message.get("error", "the worker did not start")))
    return process


async def _supervise(settings: ProxySettings, workers: int) -> None:
    loop = asyncio.get_running_loop()
    processes: list[asyncio.subprocess.Process] = []
    stopping = asyncio.Event()

    def forward(signum: int) -> None:
        if signum != signal.SIGUSR1:
            stopping.set()
        for process in processes:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        loop.add_signal_handler(signum, forward, signum)
    try:
        for _ in range(workers):
            processes.append(await _start_worker(settings))
        log.info("%d proxy workers on %s", workers, settings.listen)
        while not stopping.is_set():
            await _replace_dead_worker(settings, processes, stopping)
    finally:
        forward(signal.SIGTERM)
        for process in processes:
            await process.wait()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            loop.remove_signal_handler(signum)


async def _replace_dead_worker(
    settings: ProxySettings, processes: list[asyncio.subprocess.Process], stopping: asyncio.Event
) -> None:
    """Wait until a worker exits unasked (start another) or the supervisor is stopping."""
    waits = {asyncio.ensure_future(process.wait()): process for process in processes}
    stop_wait = asyncio.ensure_future(stopping.wait())
    done, pending = await asyncio.wait([*waits, stop_wait], return_when=asyncio.FIRST_COMPLETED)
    for future in pending:
        future.cancel()
    if stopping.is_set():
        return
    for future, process in waits.items():
        if future in done:
            log.error(
                "proxy worker %d exited with %s; starting another", process.pid, future.result()
            )
            processes.remove(process)
            await asyncio.sleep(RESTART_S)
            processes.append(await _start_worker(settings))


def run_workers(settings: ProxySettings, workers: int) -> None:
    """Run the proxy until SIGTERM (RainctlError when it cannot start)."""
    if workers == 1:
        asyncio.run(serve(settings))
        return
    check_listen(settings)
    asyncio.run(_supervise(settings, workers))


# ---- python -m rainctl.proxy.worker --------------------------------------------------------


def _say(message: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rainctl.proxy.worker")
    parser.add_argument("--settings", required=True, help="ProxySettings as JSON")
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    die_with_parent(signal.SIGTERM)
    try:
        settings = from_json(arguments.settings)
        asyncio.run(serve(settings, on_ready=lambda port: _say({"ready": port})))
    except RainctlError as error:
        _say({"error": str(error)})
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
