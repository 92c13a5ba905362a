"""The token rotation histogram: every rotation this node observes, in fixed buckets.

A rotation is the time between this node's last two acceptances of the token of one ring
(`RingMachine.rotation_ms`, set when the token is accepted). The driver calls `observe`
after every step with the machine's acceptance time and rotation; a changed acceptance
time whose rotation is exactly the time since the previous acceptance is one new rotation
(the first token of a new ring leaves the rotation as it was, and is not one). Cost per
step: two comparisons; per rotation: one bisection of a tuple and three integer additions.
Nothing is allocated but the integers themselves, so the token path does not notice it.

The buckets are fixed (both timer profiles' round times and their multiples, up to 5 s),
so a histogram_quantile over a live change of `round_ms` stays meaningful.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

BUCKET_BOUNDS_MS = (
    10, 25, 40, 50, 55, 60, 70, 80, 90, 100, 105, 110, 120, 130, 150, 175, 200, 250, 300, 400,
    500, 750, 1000, 2000, 5000,
)  # fmt: skip
"""Upper bounds (inclusive, like Prometheus' `le`); a last bucket takes the rest (+Inf)."""


class RotationHistogram:
    def __init__(self) -> None:
        self._accepted_at: int | None = None
        self._counts = [0] * (len(BUCKET_BOUNDS_MS) + 1)
        self.count = 0
        self.sum_ms = 0

    def observe(self, accepted_at: int | None, rotation_ms: int | None) -> None:
        """After a step: the machine's `token_accepted_at` and `rotation_ms`."""
        if accepted_at == self._accepted_at:
            return
        previous, self._accepted_at = self._accepted_at, accepted_at
        if previous is None or accepted_at is None or rotation_ms != accepted_at - previous:
            return
        self._counts[bisect_left(BUCKET_BOUNDS_MS, rotation_ms)] += 1
        self.count += 1
        self.sum_ms += rotation_ms

    def document(self) -> dict[str, Any]:
        """For the `metrics` answer: per-bucket (not cumulative) counts, the last one +Inf."""
        return {
            "bounds_ms": list(BUCKET_BOUNDS_MS),
            "counts": list(self._counts),
            "count": self.count,
            "sum_ms": self.sum_ms,
        }
