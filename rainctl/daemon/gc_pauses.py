"""Garbage-collector pauses: how long each collection held the interpreter.

The ring's event loop shares the interpreter with the reconciler's threads, the live
configuration and the commands. A collection stops every thread of the process until it
ends, whichever thread started it, and a full one walks every tracked object the daemon
holds: with a large configuration in memory (1,000 services x 10 real servers) 20-40 ms
inside a UML guest, a pause the ring's timers do not see as lateness. This watch
times every collection through `gc.callbacks` (a clock read at its start and at its end)
and logs each one of `log_ms` or more with its generation, so an exclusion can be matched
with the excluded node's own pause. It counts into the driver's counters (status
`counters.driver`, metrics `rainctl_gc_*`): `gc_collections`, `gc_pause_us` (their time,
microseconds) and `gc_long_pauses` (those logged).

The callback runs inside the collector, in whichever thread triggered it: it only reads the
clock and updates a few numbers, and logs (rarely) after the pause is over. What it
measures is wall time: a collection during which the process was not scheduled (a busy
machine, a guest the host did not run) shows that time too; a young generation's pass walks
a few hundred objects, so a long one says exactly that.
"""

from __future__ import annotations

import gc
import logging
import time
from collections import Counter

log = logging.getLogger("rainctl.daemon")

LOG_MS_DEFAULT = 20
"""A collection this long (or longer) is logged: a fifth of a lan hop failure time."""


class GcPauseWatch:
    """Times every collection of this process while installed (module docstring)."""

    def __init__(self, counters: Counter[str], log_ms: int = LOG_MS_DEFAULT) -> None:
        self.counters = counters
        self.log_ms = log_ms
        self._started_ns: int | None = None

    def install(self) -> None:
        if self._on_collection not in gc.callbacks:
            gc.callbacks.append(self._on_collection)

    def uninstall(self) -> None:
        if self._on_collection in gc.callbacks:
            gc.callbacks.remove(self._on_collection)

    def _on_collection(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started_ns = time.perf_counter_ns()
            return
        started_ns, self._started_ns = self._started_ns, None
        if started_ns is None:  # installed mid-collection
            return
        pause_ns = time.perf_counter_ns() - started_ns
        self.counters["gc_collections"] += 1
        self.counters["gc_pause_us"] += pause_ns // 1000
        if pause_ns >= self.log_ms * 1_000_000:
            self.counters["gc_long_pauses"] += 1
            log.warning(
                "garbage collection of generation %d took %.0f ms, every thread waiting "
                "(%d objects collected; %d frozen; a young generation this slow means the "
                "process was not scheduled meanwhile)",
                info["generation"],
                pause_ns / 1e6,
                info["collected"],
                gc.get_freeze_count(),
            )
