"""TCP connect probes, every one of a worker's in flight through one epoll set.

Why not a coroutine per probe: a thousand servers checked twice a second each made the
asyncio machinery of one probe (a task for `wait_for`, `sock_connect`'s writer callbacks
and future, the sleeping loop's timer) cost about 80 us of Python, 11 % of a core for the
1,333 probes a second of one node; here a probe is a handful of C calls (socket, connect,
register; getsockopt, close: the close also leaves the epoll set) and costs a tenth of
that. The event loop does not watch the set: while connects are in flight it is read
every POLL_S, and the deadlines are checked at the same wake-up, so the wake-ups (a
system call and a clock read each, and inside UML a clock read can be a system call too)
do not grow with the probe rate. A result's latency is therefore known to POLL_S.

A probe: a non-blocking `connect`; the answer is SO_ERROR once the socket is writable
("connected", "refused", the errno's text) or "timeout" when `timeout_ms` passes first.
The socket is closed with SO_LINGER 0 (a RST, as HAProxy's checks do) so that thousands of
probes a second leave no TIME_WAIT sockets behind. `done` is always called later from the
loop, never from inside `start`.
"""

from __future__ import annotations

import asyncio
import errno
import heapq
import itertools
import os
import select
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

from rainctl.health.results import ProbeResult

_NO_LINGER = struct.pack("ii", 1, 0)
POLL_S = 0.005
"""While connects are in flight, the epoll set is read (and deadlines checked) this often:
one wake-up for every connect that finished meanwhile, instead of one per connect."""

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
    """Loop time when the probe was due."""
    done: ProbeDone


class TcpProber:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._epoll = select.epoll()
        self._pending: dict[int, _Connect] = {}
        self._deadlines: list[tuple[float, int, int, _Connect]] = []
        """(deadline, order, descriptor, connect): stale once the connect has finished."""
        self._order = itertools.count()
        self._tick: asyncio.TimerHandle | None = None

    def start(self, address: str, port: int, timeout_ms: int, done: ProbeDone, now: float) -> None:
        """Begin one connect to `address`:`port`, due at loop time `now` (the caller's, so
        that a batch of probes reads the clock once); `done` gets its result."""
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        try:
            sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        except OSError as error:
            detail = connect_detail(error.errno or errno.EINVAL)
            self._loop.call_soon(done, ProbeResult(False, 0, detail))
            return
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _NO_LINGER)
            code = sock.connect_ex((address, port))
        except OSError as error:
            code = error.errno or errno.EINVAL
        if code != errno.EINPROGRESS:
            # Loopback and local refusals finish inside connect() itself.
            sock.close()
            self._loop.call_soon(done, ProbeResult(code == 0, 0, connect_detail(code)))
            return
        descriptor = sock.fileno()
        connect = _Connect(sock, now, done)
        self._pending[descriptor] = connect
        deadline = now + timeout_ms / 1000
        heapq.heappush(self._deadlines, (deadline, next(self._order), descriptor, connect))
        self._epoll.register(descriptor, select.EPOLLOUT | select.EPOLLONESHOT)
        if self._tick is None:
            self._tick = self._loop.call_at(now + POLL_S, self._poll)

    def in_flight(self) -> int:
        return len(self._pending)

    def close(self) -> None:
        """Abandon every connect in flight (their `done` is not called) and the epoll set."""
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None
        for pending in self._pending.values():
            pending.sock.close()
        self._pending.clear()
        self._deadlines.clear()
        self._epoll.close()

    def _poll(self) -> None:
        self._tick = None
        now = self._loop.time()
        for descriptor, _events in self._epoll.poll(0):
            pending = self._pending.pop(descriptor, None)
            if pending is None:
                continue
            code = pending.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            # Closing the socket also takes it out of the epoll set.
            pending.sock.close()
            pending.done(ProbeResult(code == 0, _ms(now - pending.started), connect_detail(code)))
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            _deadline, _order, descriptor, connect = heapq.heappop(deadlines)
            if self._pending.get(descriptor) is not connect:
                continue  # finished already
            del self._pending[descriptor]
            connect.sock.close()
            connect.done(ProbeResult(False, _ms(now - connect.started), "timeout"))
        if self._pending and self._tick is None:
            self._tick = self._loop.call_at(now + POLL_S, self._poll)
        elif not self._pending:
            self._deadlines.clear()


def _ms(seconds: float) -> int:
    return int(seconds * 1000)
