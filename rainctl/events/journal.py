"""The node's event journal: a bounded, numbered buffer of timeline events, each also
written to the daemon's log as one structured line.

Every event gets the next sequence number and the wall-clock time (ms since the epoch; the
timeline itself has no clock). The newest `capacity` events are kept (4,096 by default: a
day of an eventful cluster; the log keeps everything). `rainctl events` asks for the events
after a sequence number (`--follow` asks again with the last one it printed, waiting up to
`wait_s` for new ones), or since a time. Counters survive the buffer: how many events of
each kind, and VIP moves by VIP and reason (the metrics read them).

Log line: `event seq=12 kind=vip-moved msg="VIP ... (failover)" vip=198.18.0.100 from=2
to=3 reason=failover`,
logfmt (values with spaces, quotes or `=` in double quotes), logger `rainctl.events`: one
line per event that journald, grep and log shippers parse alike.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from rainctl.events.timeline import FieldValue, TimelineEvent

CAPACITY = 4096
ANSWER_EVENTS_MAX = 1000
"""Most events one answer carries (a follower asks again for the rest)."""

log = logging.getLogger("rainctl.events")


@dataclass(frozen=True, slots=True)
class JournalEntry:
    seq: int
    time_ms: int
    """Wall clock, ms since the epoch."""
    event: TimelineEvent

    def document(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "time_ms": self.time_ms,
            "kind": self.event.kind,
            "message": self.event.message,
            "fields": dict(self.event.fields),
        }


class EventJournal:
    def __init__(
        self,
        capacity: int = CAPACITY,
        wall_clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self._entries: deque[JournalEntry] = deque(maxlen=capacity)
        self._wall_clock_ms = wall_clock_ms
        self.last_seq = 0
        self.kinds: Counter[str] = Counter()
        self.vip_moves: Counter[tuple[str, str]] = Counter()
        """(VIP, reason) -> moves seen in the ring's VIP table."""
        self._arrived = asyncio.Event()

    def record(self, events: Iterable[TimelineEvent]) -> None:
        for event in events:
            self.last_seq += 1
            entry = JournalEntry(self.last_seq, self._wall_clock_ms(), event)
            self._entries.append(entry)
            self.kinds[event.kind] += 1
            if event.kind == "vip-moved":
                self.vip_moves[(str(event.fields["vip"]), str(event.fields["reason"]))] += 1
            level = logging.WARNING if event.kind in _WARNING_KINDS else logging.INFO
            log.log(
                level,
                "event seq=%d kind=%s msg=%s%s",
                entry.seq,
                event.kind,
                _logfmt_value(event.message),
                _logfmt(event),
            )
            self._arrived.set()

    def after(self, seq: int, *, since_ms: int | None = None) -> list[JournalEntry]:
        """The kept entries numbered above `seq` (and not older than `since_ms`), oldest
        first, at most ANSWER_EVENTS_MAX."""
        found = [
            entry
            for entry in self._entries
            if entry.seq > seq and (since_ms is None or entry.time_ms >= since_ms)
        ]
        return found[:ANSWER_EVENTS_MAX]

    async def wait_after(self, seq: int, timeout_s: float) -> None:
        """Return once an entry numbered above `seq` exists, or after `timeout_s`."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self.last_seq <= seq:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return

    @property
    def oldest_seq(self) -> int:
        """The first entry still kept (last_seq + 1 when none is)."""
        return self._entries[0].seq if self._entries else self.last_seq + 1

    def counts(self) -> dict[str, Any]:
        """For the status document (and the metrics that read it)."""
        return {
            "last_seq": self.last_seq,
            "kinds": dict(sorted(self.kinds.items())),
            "vip_moves": [
                {"vip": vip, "reason": reason, "count": count}
                for (vip, reason), count in sorted(self.vip_moves.items())
            ],
        }


_WARNING_KINDS = frozenset({"exclusion", "911", "regenerate", "late"})


def _logfmt(event: TimelineEvent) -> str:
    return "".join(f" {name}={_logfmt_value(value)}" for name, value in event.fields.items())


def _logfmt_value(value: FieldValue) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
    if not text or any(character in text for character in ' "=\\') or not text.isprintable():
        return json.dumps(text)
    return text
