"""The kernel's IPVS counters for the metrics, read by the exporter process itself.

With `--data-plane ipvs` every scrape exports the counters of every service and real server
(connections, packets, bytes). They are read here, in the exporter's process, never on the
daemon's loop: a table of 10,000 services costs the daemon nothing. One thread of its own
opens the table (`LinuxIpvsTable`: pyroute2 keeps per-thread state) and reads it whole when
a scrape has asked since its last read, at most every `max(refresh_s, read_budget x the
last read's duration)`: a large table (inside UML a real-server dump costs about 2 ms)
takes at most 1 / read_budget of a core, and a scrape never waits for a read but the
first (FIRST_READ_WAIT_S); it gets the latest. A failed read is logged, the next one
opens the table again; meanwhile the IPVS metrics are absent rather than stale.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection
from typing import Protocol

from rainctl.errors import KernelError
from rainctl.kernel.ipvs import ServiceEntry, VirtualService

REFRESH_S = 1.0
READ_BUDGET = 10
FIRST_READ_WAIT_S = 2.0

log = logging.getLogger("rainctl.metrics")


class IpvsLister(Protocol):
    """What the reader needs of an IPVS table (LinuxIpvsTable)."""

    def list_services(
        self, only: Collection[VirtualService] | None = None
    ) -> list[ServiceEntry]: ...

    def close(self) -> None: ...


class IpvsReader:
    def __init__(
        self,
        open_table: Callable[[], IpvsLister],
        *,
        refresh_s: float = REFRESH_S,
        read_budget: int = READ_BUDGET,
        first_read_wait_s: float = FIRST_READ_WAIT_S,
    ) -> None:
        self._open_table = open_table
        self._refresh_s = refresh_s
        self._read_budget = read_budget
        self._first_read_wait_s = first_read_wait_s
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._asked = threading.Event()
        self._read = threading.Event()
        self._entries: tuple[ServiceEntry, ...] | None = None

    def latest(self) -> tuple[ServiceEntry, ...] | None:
        """The last read table (None before the first read, or after a failed one)."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="rainctl-metrics-ipvs", daemon=True
                )
                self._thread.start()
        self._asked.set()
        self._read.wait(self._first_read_wait_s)
        return self._entries

    def _run(self) -> None:
        table: IpvsLister | None = None
        failing = False
        while True:
            self._asked.wait()
            self._asked.clear()
            started = time.monotonic()
            try:
                if table is None:
                    table = self._open_table()
                self._entries = tuple(table.list_services())
            except (KernelError, OSError) as exc:
                if not failing:
                    log.warning("IPVS counters not read (the metrics leave them out): %s", exc)
                failing = True
                if table is not None:
                    table.close()
                table = None
                self._entries = None
            else:
                if failing:
                    log.info("IPVS counters read again")
                failing = False
            self._read.set()
            elapsed_s = time.monotonic() - started
            time.sleep(max(self._refresh_s, self._read_budget * elapsed_s))
