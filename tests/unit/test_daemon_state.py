"""Incarnation persistence: +1 per start, durable, refuses a corrupt file."""

from __future__ import annotations

from pathlib import Path

import pytest

from rainctl.core.types import U32_MAX
from rainctl.daemon.state import StateError, incarnation_path, next_incarnation, write_atomically


def test_first_start_is_incarnation_1_and_each_start_adds_one(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    assert [next_incarnation(state_dir, 3) for _ in range(3)] == [1, 2, 3]
    assert incarnation_path(state_dir, 3).read_text() == "3\n"
    assert (state_dir.stat().st_mode & 0o777) == 0o700


def test_nodes_sharing_a_state_dir_count_separately(tmp_path: Path) -> None:
    assert next_incarnation(tmp_path, 1) == 1
    assert next_incarnation(tmp_path, 2) == 1
    assert next_incarnation(tmp_path, 1) == 2


@pytest.mark.parametrize("content", ["", "abc\n", "-4\n", "1.5\n"])
def test_a_corrupt_file_is_an_error_not_a_restart_from_1(tmp_path: Path, content: str) -> None:
    incarnation_path(tmp_path, 1).write_text(content)
    with pytest.raises(StateError, match="expected a non-negative integer"):
        next_incarnation(tmp_path, 1)


def test_the_incarnation_cannot_outgrow_its_wire_field(tmp_path: Path) -> None:
    incarnation_path(tmp_path, 1).write_text(f"{U32_MAX}\n")
    with pytest.raises(StateError, match="cannot grow"):
        next_incarnation(tmp_path, 1)


def test_an_unusable_state_dir_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StateError, match="file/state"):
        next_incarnation(blocker / "state", 1)


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "value"
    write_atomically(path, b"one")
    write_atomically(path, b"two")
    assert path.read_bytes() == b"two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["value"]
    assert (path.stat().st_mode & 0o777) == 0o600
