"""rainctl.lab.xstate_guard: only the xstate regset requests are refused, and with EIO; the
filter and the guest environment come only where the host's regset is not UML's size."""

from __future__ import annotations

import subprocess
import sys

from rainctl.lab.xstate_guard import (
    GUEST_ENVIRONMENT,
    UML_XSTATE_BYTES,
    guard_needed,
    main,
    xstate_regset_bytes,
)

# Run under the guard: ptrace(PTRACE_GETREGSET/SETREGSET, our own PID, NOTE, iov). Our own
# PID is not a tracee, so a request that reaches the kernel fails with ESRCH; one the filter
# refuses fails with EIO.
_PROBE = """
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
buffer = ctypes.create_string_buffer(4096)
iov = (ctypes.c_void_p * 2)(ctypes.cast(buffer, ctypes.c_void_p), 4096)
def errno_of(request, note):
    ctypes.set_errno(0)
    libc.ptrace(ctypes.c_long(request), os.getpid(), ctypes.c_void_p(note), iov)
    return errno.errorcode[ctypes.get_errno()]
print(errno_of(0x4204, 0x202), errno_of(0x4205, 0x202), errno_of(0x4204, 1), errno_of(0x4205, 2))
import sys
print(*sys.argv[1:])
"""


def test_guard_refuses_only_the_xstate_regset() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "rainctl.lab.xstate_guard", "--always", sys.executable, "-c",
         _PROBE],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )  # fmt: skip
    errnos, arguments = result.stdout.splitlines()
    assert errnos.split() == ["EIO", "EIO", "ESRCH", "ESRCH"]
    # The guest's environment rides on the kernel's command line, after the given arguments.
    assert arguments.split() == list(GUEST_ENVIRONMENT)
    assert "legacy FP registers, guest off AVX" in result.stderr


def test_without_the_guard_the_kernel_answers() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True, timeout=30
    )
    assert result.stdout.split() == ["ESRCH"] * 4


def test_the_host_regset_is_read_from_a_traced_child() -> None:
    # x86-64 has XSAVE on every CPU this project meets: at least the legacy area and header.
    size = xstate_regset_bytes()
    assert size is not None
    assert size >= 576
    assert size % 8 == 0


def test_the_guard_applies_only_where_umls_buffer_does_not_fit() -> None:
    assert not guard_needed(UML_XSTATE_BYTES)
    assert not guard_needed(None)  # no xstate regset: UML uses the legacy pair by itself
    assert guard_needed(576)  # no AVX: the host refuses UML's 832-byte set too
    assert guard_needed(2432)  # AVX-512 (seen: AMD EPYC)
    assert guard_needed(11008)  # AMX


def test_guard_needs_a_command_and_reports_a_missing_one() -> None:
    assert main([]) == 2
    assert main(["--always"]) == 2
    result = subprocess.run(
        [sys.executable, "-m", "rainctl.lab.xstate_guard", "/nonexistent/kernel"],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        "rainctl.lab.xstate_guard: /nonexistent/kernel: No such file or directory"
    )
