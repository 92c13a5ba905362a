"""When each assigned server is probed next: one heap and one event-loop timer for all.

A sleeping task per server (the first design) cost a task wake-up, a future and a timer
per probe; with a thousand servers the loop's own bookkeeping was most of the worker's
CPU. Here `at(key, delay_s)` records the due time (a key has at most one), `drop(key)`
forgets it, and one timer, armed for the earliest due time, calls `on_due(key, now)` for
every key due by then (`now`: the loop time of that wake-up, read once), gathering those
due within COALESCE_S of each other into one wake-up.
Heap entries that no longer match a key's due time (dropped or moved) are skipped when
they surface.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable

from rainctl.core.health import ServerKey

COALESCE_S = 0.005
"""Probes due this close together start in one wake-up (at most this much early)."""


class ProbeSchedule:
    def __init__(self, loop: asyncio.AbstractEventLoop, on_due: Callable[[ServerKey, float], None]):
        self._loop = loop
        self._on_due = on_due
        self._due: dict[ServerKey, float] = {}
        self._heap: list[tuple[float, int, ServerKey]] = []
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None

    def at(self, key: ServerKey, delay_s: float, now: float | None = None) -> None:
        """Probe `key` `delay_s` after `now` (the loop's time; read when not given),
        replacing any earlier due time of it."""
        when = (self._loop.time() if now is None else now) + delay_s
        self._due[key] = when
        heapq.heappush(self._heap, (when, next(self._order), key))
        if self._timer is None or when < self._timer.when():
            self._arm()

    def drop(self, key: ServerKey) -> None:
        self._due.pop(key, None)

    def __len__(self) -> int:
        return len(self._due)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._due.clear()
        self._heap.clear()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._heap and self._due.get(self._heap[0][2]) != self._heap[0][0]:
            heapq.heappop(self._heap)
        if self._heap:
            self._timer = self._loop.call_at(self._heap[0][0], self._fire)

    def _fire(self) -> None:
        self._timer = None
        now = self._loop.time()
        horizon = now + COALESCE_S
        heap = self._heap
        while heap and heap[0][0] <= horizon:
            when, _order, key = heapq.heappop(heap)
            if self._due.get(key) == when:
                del self._due[key]
                self._on_due(key, now)
        if self._timer is None:
            self._arm()
