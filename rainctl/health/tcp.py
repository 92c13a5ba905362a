"""TCP connect probes, every one of a worker's in flight through one epoll set.

Why not a coroutine per probe: a thousand servers checked twice a second each made the
asyncio machinery of one probe (a task for `wait_for`, `sock_connect`'s writer callbacks
and future, the sleeping loop's timer) cost about 80 us of Python, 11 % of a core for the
1,333 probes a second of one node; here a probe is a handful of C calls (socket, connect,
register; getsockopt, close) and costs a tenth of that. The epoll set's own descriptor is
the one thing the event loop watches: it is readable whenever some connect has finished.

A probe: a non-blocking `connect`; the answer is SO_ERROR once the socket is writable
("connected", "refused", the errno's text) or "timeout" when `timeout_ms` passes first.
The socket is closed with SO_LINGER 0 (a RST, as HAProxy's checks do) so that thousands of
probes a second leave no TIME_WAIT sockets behind. `done` is always called later from the
loop, never from inside `start`.
"""

from __future__ import annotations

import asyncio
import errno
import os
import select
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from rainctl.health.results import ProbeResult, since_ms

_NO_LINGER = struct.pack("ii", 1, 0)

ProbeDone = Callable[[ProbeResult], None]


def connect_detail(code: int) -> str:
    """The result text of a connect's errno: "connected", "refused", else the errno's text."""
    if code == 0:
        return "connected"
    if code == errno.ECONNREFUSED:
        return "refused"
    return os.strerror(code).lower()


@dataclass(slots=True)
class _Connect:
    sock: socket.socket
    started: float
    timer: asyncio.TimerHandle
    done: ProbeDone


class TcpProber:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._epoll = select.epoll()
        self._pending: dict[int, _Connect] = {}
        loop.add_reader(self._epoll.fileno(), self._ready)

    def start(self, address: str, port: int, timeout_ms: int, done: ProbeDone) -> None:
        """Begin one connect to `address`:`port`; `done` gets its result."""
        started = time.monotonic()
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        try:
            sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        except OSError as error:
            self._loop.call_soon(done, ProbeResult(False, 0, connect_detail(error.errno or 0)))
            return
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _NO_LINGER)
            code = sock.connect_ex((address, port))
        except OSError as error:
            code = error.errno or errno.EINVAL
        if code != errno.EINPROGRESS:
            # Loopback and local refusals finish inside connect() itself.
            sock.close()
            result = ProbeResult(code == 0, since_ms(started), connect_detail(code))
            self._loop.call_soon(done, result)
            return
        descriptor = sock.fileno()
        timer = self._loop.call_later(timeout_ms / 1000, self._expire, descriptor)
        self._pending[descriptor] = _Connect(sock, started, timer, done)
        self._epoll.register(descriptor, select.EPOLLOUT | select.EPOLLONESHOT)

    def in_flight(self) -> int:
        return len(self._pending)

    def close(self) -> None:
        """Abandon every connect in flight (their `done` is not called) and the epoll set."""
        self._loop.remove_reader(self._epoll.fileno())
        for pending in self._pending.values():
            pending.timer.cancel()
            pending.sock.close()
        self._pending.clear()
        self._epoll.close()

    def _ready(self) -> None:
        for descriptor, _events in self._epoll.poll(0):
            pending = self._pending.pop(descriptor, None)
            if pending is None:
                continue
            pending.timer.cancel()
            code = pending.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            self._finish(descriptor, pending)
            pending.done(ProbeResult(code == 0, since_ms(pending.started), connect_detail(code)))

    def _expire(self, descriptor: int) -> None:
        pending = self._pending.pop(descriptor, None)
        if pending is None:
            return
        self._finish(descriptor, pending)
        pending.done(ProbeResult(False, since_ms(pending.started), "timeout"))

    def _finish(self, descriptor: int, pending: _Connect) -> None:
        self._epoll.unregister(descriptor)
        pending.sock.close()
