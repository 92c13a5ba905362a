"""The run tag: part of the name of every network namespace the tests create, so the
suite's leftover check (tests/conftest.py) can tell this run's namespaces from those of
another run on the same machine."""

from __future__ import annotations

import os
import re

RUN_TAG = str(os.getpid() % 100_000)
"""Per pytest process; short enough for interface names built from lab prefixes."""


def is_this_runs(namespace: str) -> bool:
    """`namespace` carries this run's tag as a whole number (e.g. "rlr12432-sw")."""
    return re.search(rf"(?<![0-9]){RUN_TAG}(?![0-9])", namespace) is not None
