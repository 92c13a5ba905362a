"""The garbage-collector pause watch: every collection timed while installed, long ones
logged and counted."""

from __future__ import annotations

import gc
import logging
from collections import Counter

import pytest

from rainctl.daemon.gc_pauses import GcPauseWatch


def test_collections_are_counted_and_timed_while_installed() -> None:
    counters: Counter[str] = Counter()
    watch = GcPauseWatch(counters, log_ms=10_000)
    watch.install()
    try:
        gc.collect(0)
        gc.collect(2)
    finally:
        watch.uninstall()
    during = counters["gc_collections"]
    gc.collect(2)
    assert during >= 2
    assert counters["gc_collections"] == during  # nothing counted once uninstalled
    assert counters["gc_pause_us"] >= 0
    assert counters["gc_long_pauses"] == 0


def test_a_long_collection_is_logged_with_its_generation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    counters: Counter[str] = Counter()
    watch = GcPauseWatch(counters, log_ms=0)
    watch.install()
    watch.install()  # once only
    try:
        for _ in range(100):
            cycle: list[object] = []
            cycle.append(cycle)
        with caplog.at_level(logging.WARNING, logger="rainctl.daemon"):
            collected = gc.collect(2)
    finally:
        watch.uninstall()
    assert collected > 0
    lines = [record.getMessage() for record in caplog.records]
    full = [line for line in lines if "generation 2" in line]
    assert len(full) == 1, lines
    assert "every thread waiting" in full[0]
    assert f"({collected} objects collected;" in full[0]
    assert counters["gc_long_pauses"] == counters["gc_collections"] >= 1
    assert watch._on_collection not in gc.callbacks
