"""The back-ends one worker proxies to: balance, passive failure memory, idle connections.

`BackendPool.set_backends` replaces the list at any time (the daemon will hand the healthy
real servers of a service this way); idle connections to back-ends no longer listed are
closed. A back-end that failed recently is tried after the others for `failure_hold_ms`
(but still tried when nothing else is left), so one dead server costs each request at most
one failed attempt while the health checks catch up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field

from rainctl.proxy.settings import Balance, Endpoint


@dataclass(slots=True, eq=False)
class Upstream:
    """One open connection to a back-end."""

    backend: Endpoint
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    reused: bool = False
    idle_since_s: float = 0.0

    def close(self) -> None:
        self.writer.transport.abort()


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
            if upstream.reader.at_eof() or now_s - upstream.idle_since_s > self._idle_timeout_s:
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
        state.idle.append(upstream)

    def close_idle(self) -> None:
        for state in self._states.values():
            for upstream in state.idle:
                upstream.close()
            state.idle.clear()
