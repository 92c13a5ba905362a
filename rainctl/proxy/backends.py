"""The back-ends one worker proxies to: balance, passive failure memory, idle connections.

`BackendPool.set_backends` replaces the list at any time (the daemon will hand the healthy
real servers of a service this way); idle connections to back-ends no longer listed are
closed. A back-end that failed recently is tried after the others for `failure_hold_ms`
(but still tried when nothing else is left), so one dead server costs each request at most
one failed attempt while the health checks catch up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

from rainctl.proxy.settings import Balance, Endpoint

FailureKind = Literal["connect", "reset", "eof", "stall", "timeout", "protocol"]


class UpstreamError(Exception):
    """A back-end failed this exchange (the kind names how)."""

    def __init__(self, kind: FailureKind, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind: FailureKind = kind


class UpstreamProtocol(asyncio.Protocol):
    """The receiving side of a connection to a back-end, without a stream buffer: each read
    goes straight to `feed` (the current response's parser), and the coroutine waiting in
    `wait` is woken. Bytes that arrive with no response expected (an idle kept connection)
    make the connection unusable. `feed` may raise: the error is kept in `failure`, reading
    stops, and the waiter sees it.

    Back-pressure: the owner pauses and resumes reading (`transport`) when the parsed body
    waits for a slow client.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.feed: Callable[[bytes], int] | None = None
        """Parses bytes; returns the parsed body bytes not yet taken (back-pressure)."""
        self.backlog_max_bytes = 262_144
        """Reading pauses while the parsed body not yet taken reaches this."""
        self.failure: UpstreamError | None = None
        self.eof = False
        """The back-end closed its side (or the connection was lost)."""
        self.lost: Exception | None = None
        self.unusable = False
        self._waiter: asyncio.Future[bool] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.feed is None:
            self.unusable = True
        elif self.failure is None:
            assert self.transport is not None
            try:
                if self.feed(data) >= self.backlog_max_bytes:
                    self.transport.pause_reading()
            except UpstreamError as error:  # the parser's verdict, handed to the waiter
                self.failure = error
                self.transport.pause_reading()
        self._wake(True)

    def eof_received(self) -> bool:
        self.eof = True
        self._wake(True)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.lost = exc
        self._wake(True)

    def _wake(self, arrived: bool) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(arrived)

    async def wait(self, timeout_s: float) -> bool:
        """Until bytes arrive or the connection ends: True; False after `timeout_s`."""
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        timer = loop.call_later(timeout_s, self._wake, False)
        try:
            return await self._waiter
        finally:
            timer.cancel()
            self._waiter = None


@dataclass(slots=True, eq=False)
class Upstream:
    """One open connection to a back-end."""

    backend: Endpoint
    transport: asyncio.Transport
    protocol: UpstreamProtocol
    reused: bool = False
    idle_since_s: float = 0.0

    def close(self) -> None:
        self.transport.abort()


@dataclass(slots=True)
class _BackendState:
    active: int = 0
    failed_at_s: float | None = None
    idle: list[Upstream] = field(default_factory=list)


class BackendPool:
    def __init__(
        self,
        backends: Iterable[Endpoint],
        balance: Balance,
        *,
        idle_max: int,
        idle_timeout_ms: int,
        failure_hold_ms: int,
    ) -> None:
        self._balance = balance
        self._idle_max = idle_max
        self._idle_timeout_s = idle_timeout_ms / 1000
        self._failure_hold_s = failure_hold_ms / 1000
        self._order: list[Endpoint] = []
        self._states: dict[Endpoint, _BackendState] = {}
        self._next = 0
        self.set_backends(backends)

    @property
    def backends(self) -> tuple[Endpoint, ...]:
        return tuple(self._order)

    def set_backends(self, backends: Iterable[Endpoint]) -> None:
        wanted = list(dict.fromkeys(backends))
        for backend in set(self._states) - set(wanted):
            for upstream in self._states.pop(backend).idle:
                upstream.close()
        for backend in wanted:
            self._states.setdefault(backend, _BackendState())
        self._order = wanted

    def candidates(self, now_s: float, exclude: Iterable[Endpoint] = ()) -> list[Endpoint]:
        """Every back-end not in `exclude`, best first: the balance's pick among those that
        have not failed recently, then the recently failed ones (oldest failure first)."""
        excluded = set(exclude)
        listed = [backend for backend in self._order if backend not in excluded]
        if not listed:
            return []
        start = self._next % len(listed)
        self._next += 1
        rotated = listed[start:] + listed[:start]
        if self._balance is Balance.LEAST_CONNECTIONS:
            # Stable sort: equal counts keep the round-robin rotation.
            rotated.sort(key=lambda backend: self._states[backend].active)
        healthy = [backend for backend in rotated if not self._recently_failed(backend, now_s)]
        failed = sorted(
            (backend for backend in rotated if self._recently_failed(backend, now_s)),
            key=lambda backend: self._states[backend].failed_at_s or 0.0,
        )
        return healthy + failed

    def _recently_failed(self, backend: Endpoint, now_s: float) -> bool:
        failed_at_s = self._states[backend].failed_at_s
        return failed_at_s is not None and now_s - failed_at_s < self._failure_hold_s

    def note_failure(self, backend: Endpoint, now_s: float) -> None:
        state = self._states.get(backend)
        if state is None:
            return
        state.failed_at_s = now_s
        # Connections kept to a back-end that just failed are likely dead too.
        for upstream in state.idle:
            upstream.close()
        state.idle.clear()

    def started(self, backend: Endpoint) -> None:
        state = self._states.get(backend)
        if state is not None:
            state.active += 1

    def finished(self, backend: Endpoint) -> None:
        state = self._states.get(backend)
        if state is not None and state.active > 0:
            state.active -= 1

    def take_idle(self, backend: Endpoint, now_s: float) -> Upstream | None:
        """A kept connection that the back-end has not closed meanwhile, newest first."""
        state = self._states.get(backend)
        while state is not None and state.idle:
            upstream = state.idle.pop()
            link = upstream.protocol
            expired = now_s - upstream.idle_since_s > self._idle_timeout_s
            if expired or link.eof or link.unusable or upstream.transport.is_closing():
                upstream.close()
                continue
            upstream.reused = True
            return upstream
        return None

    def keep_idle(self, upstream: Upstream, now_s: float) -> None:
        state = self._states.get(upstream.backend)
        if state is None or len(state.idle) >= self._idle_max:
            upstream.close()
            return
        upstream.idle_since_s = now_s
        # Read while idle (reading may have been paused for back-pressure or a splice), so
        # that a close or stray bytes from the back-end are noticed before reuse.
        if not upstream.transport.is_reading():
            upstream.transport.resume_reading()
        state.idle.append(upstream)

    def close_idle(self) -> None:
        for state in self._states.values():
            for upstream in state.idle:
                upstream.close()
            state.idle.clear()
