"""The contract tier fails (never skips) without root, with a message saying why."""

from __future__ import annotations

import os

import pytest

from tests.contract import netlab


def test_without_root_the_linux_side_fails_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(pytest.fail.Exception, match="need root"):
        netlab.require_root()
