"""Fixtures shared by the loopback integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.proxy_stack import Stack


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """Origins and proxies of one test, every process ended by PID at its end."""
    running = Stack(tmp_path)
    try:
        yield running
    finally:
        running.close()
