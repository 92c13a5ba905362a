"""What one probe answers (every kind of check): `ProbeResult`."""

from __future__ import annotations

import time
from dataclasses import dataclass

from rainctl.core.health import HealthState


@dataclass(frozen=True, slots=True)
class ProbeResult:
    passed: bool
    latency_ms: int
    detail: str
    """A short reason for the status and the log ("connected", "refused", "timeout", ...)."""
    declared: HealthState | None = None
    """An agent's declared state (up, drain, down for "down"/"maint"/"stopped"/"fail")."""
    weight_permille: int | None = None
    """An agent's "NN%"."""


def since_ms(started: float) -> int:
    """Milliseconds since `started` (a `time.monotonic()` reading)."""
    return int((time.monotonic() - started) * 1000)
