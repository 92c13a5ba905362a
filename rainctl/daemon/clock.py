"""The daemon's clock: the one module of rainctl that reads the time.

The core works in `Instant`s, integer milliseconds on the local monotonic clock. Keeping the
single clock read here means every other module gets time handed to it, as the core does,
and a test can substitute any `Clock`.
"""

from __future__ import annotations

import time
from typing import Protocol

from rainctl.core.types import Instant


class Clock(Protocol):
    def now_ms(self) -> Instant: ...


class MonotonicClock:
    """`time.monotonic_ns()` in whole milliseconds (never goes back, ignores wall-clock jumps)."""

    def now_ms(self) -> Instant:
        return time.monotonic_ns() // 1_000_000
