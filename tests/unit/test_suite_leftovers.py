"""The suite-wide leftover check (tests/conftest.py) fails a run that leaves a process
behind, names it, and ends it; a clean run passes. Runs pytest in a subprocess on a tiny
test file with a copy of that conftest."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CONFTEST = Path(__file__).parents[1] / "conftest.py"


def _suite(pytester: pytest.Pytester, body: str) -> pytest.RunResult:
    shutil.copy(CONFTEST, pytester.path / "conftest.py")
    pytester.makepyfile(test_inner=body)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-o", "addopts=")


def test_a_leaked_process_fails_the_run_and_is_ended(pytester: pytest.Pytester) -> None:
    result = _suite(
        pytester,
        """
import subprocess
from pathlib import Path

def test_leaks(tmp_path):
    child = subprocess.Popen(["sleep", "300"], start_new_session=True)
    Path("leaked.pid").write_text(str(child.pid))
""",
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*left behind by the tests*", "pid *: sleep 300*"])
    pid = int((pytester.path / "leaked.pid").read_text())
    stat = Path(f"/proc/{pid}/stat")
    assert not stat.exists() or stat.read_text().rpartition(")")[2].split()[0] == "Z"


def test_a_clean_run_passes(pytester: pytest.Pytester) -> None:
    result = _suite(pytester, "def test_nothing():\n    assert True\n")
    assert result.ret == pytest.ExitCode.OK
    assert "left behind" not in result.stdout.str()
