"""Start a user-mode-linux kernel so that it boots on hosts with a large XSAVE area.

Debian 12's UML kernel (6.1) saves and restores its guests' floating-point registers with
`ptrace(PTRACE_SETREGSET, NT_X86_XSTATE)` and a buffer sized at build time (legacy area plus
AVX, UML_XSTATE_BYTES = 832). The host kernel accepts that regset only at its full size; on a
CPU with AVX-512 or AMX (or PKRU) the area is larger, every set fails with EFAULT ("ptrace
set fp regs failed, errno = 14") and the guest's init dies at its first instruction.

UML falls back to the legacy `PTRACE_GETFPREGS`/`SETFPREGS` pair (x87 and SSE state) when
its boot-time probe `PTRACE_GETREGSET(NT_X86_XSTATE)` fails. On such a host (the regset, read
here from a traced child, is not 832 bytes) this wrapper makes that probe, and only that
request, fail: it installs a seccomp filter that answers EIO to
`ptrace(PTRACE_GETREGSET|PTRACE_SETREGSET, pid, NT_X86_XSTATE, ...)` and allows every other
system call, then execs the kernel. The guests' own system calls never reach the filter:
UML traps them with PTRACE_SYSEMU, which the host handles before seccomp.

The legacy pair does not keep the guests' AVX state intact, so with the filter the wrapper
also appends GUEST_ENVIRONMENT to the kernel's command line: the kernel hands parameters it
does not know to init as environment variables, so the guest's PID 1 and everything it
starts run with glibc's and OpenSSL's AVX code paths off, from their first instruction. On a
host whose regset is 832 bytes UML's own path keeps every register; the wrapper then
changes nothing (the filter there would only lose the AVX state: a CI host's init shell
dropped a word of its script with it).

Usage: python -m rainctl.lab.xstate_guard [--always] KERNEL [ARGUMENT...]
(--always: apply the filter whatever the host; for tests.)
"""

from __future__ import annotations

import ctypes
import os
import signal
import struct
import sys

_AUDIT_ARCH_X86_64 = 0xC000003E
_NR_PTRACE_X86_64 = 101
_PTRACE_GETREGSET = 0x4204
_PTRACE_SETREGSET = 0x4205
_PTRACE_TRACEME = 0
_NT_X86_XSTATE = 0x202
_EIO = 5

UML_XSTATE_BYTES = 832
"""sizeof(struct _xstate) in Debian 12's UML kernel: the legacy area, the header, AVX."""
_PROBE_BUFFER_BYTES = 1 << 16
"""Larger than any XSAVE area: the kernel writes the regset's real size back to the iovec."""

GUEST_ENVIRONMENT = (
    "GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX,-AVX2,-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,"
    "-AVX512CD,-FMA,-AVX_Fast_Unaligned_Load",
    "OPENSSL_ia32cap=~0x1000000000000000:~0xFFFF0020",
)
"""glibc's string and memory functions pick SSE variants; OpenSSL sees no AVX (CPUID 1 ECX
bit 28) and none of AVX2/AVX-512 (CPUID 7 EBX). Kernel parameters, so init's environment."""

_BPF_LD_W_ABS = 0x20
_BPF_JEQ_K = 0x15
_BPF_RET_K = 0x06
_SECCOMP_RET_ALLOW = 0x7FFF0000
_SECCOMP_RET_ERRNO = 0x00050000
# struct seccomp_data: nr (u32), arch (u32), instruction_pointer (u64), args[6] (u64 each);
# the low halves of args[0] and args[2] sit at these offsets on little-endian x86-64.
_OFFSET_NR = 0
_OFFSET_ARCH = 4
_OFFSET_ARG0 = 16
_OFFSET_ARG2 = 32

_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2


def _statement(code: int, value: int) -> bytes:
    return struct.pack("HBBI", code, 0, 0, value)


def _jump(value: int, if_true: int, if_false: int) -> bytes:
    return struct.pack("HBBI", _BPF_JEQ_K, if_true, if_false, value)


def filter_program() -> bytes:
    """The classic-BPF program: EIO for the xstate regset requests, allow the rest."""
    instructions = [
        _statement(_BPF_LD_W_ABS, _OFFSET_ARCH),  # 0
        _jump(_AUDIT_ARCH_X86_64, 0, 7),  # 1: other ABI -> allow
        _statement(_BPF_LD_W_ABS, _OFFSET_NR),  # 2
        _jump(_NR_PTRACE_X86_64, 0, 5),  # 3: not ptrace -> allow
        _statement(_BPF_LD_W_ABS, _OFFSET_ARG0),  # 4
        _jump(_PTRACE_GETREGSET, 1, 0),  # 5: -> 7
        _jump(_PTRACE_SETREGSET, 0, 2),  # 6: neither -> allow
        _statement(_BPF_LD_W_ABS, _OFFSET_ARG2),  # 7
        _jump(_NT_X86_XSTATE, 1, 0),  # 8: xstate -> refuse
        _statement(_BPF_RET_K, _SECCOMP_RET_ALLOW),  # 9
        _statement(_BPF_RET_K, _SECCOMP_RET_ERRNO | _EIO),  # 10
    ]
    return b"".join(instructions)


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


def install_filter() -> None:
    """Install the filter on this process (inherited by what it execs and forks)."""
    libc = ctypes.CDLL(None, use_errno=True)
    program = filter_program()
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    if libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")


class _Iovec(ctypes.Structure):
    _fields_ = (("base", ctypes.c_void_p), ("len", ctypes.c_size_t))


def xstate_regset_bytes() -> int | None:
    """The size of this host's NT_X86_XSTATE regset as a tracer reads it (None: no such
    regset, so UML uses the legacy pair by itself)."""
    libc = ctypes.CDLL(None, use_errno=True)
    child = os.fork()
    if child == 0:  # pragma: no cover - the traced child stops here until it is killed
        libc.ptrace(ctypes.c_long(_PTRACE_TRACEME), 0, None, None)
        os.kill(os.getpid(), signal.SIGSTOP)
        os._exit(0)
    try:
        _, status = os.waitpid(child, os.WUNTRACED)
        if not os.WIFSTOPPED(status):
            return None
        buffer = ctypes.create_string_buffer(_PROBE_BUFFER_BYTES)
        iov = _Iovec(ctypes.cast(buffer, ctypes.c_void_p), _PROBE_BUFFER_BYTES)
        request = ctypes.c_long(_PTRACE_GETREGSET)
        if libc.ptrace(request, child, ctypes.c_void_p(_NT_X86_XSTATE), ctypes.byref(iov)) != 0:
            return None
        return int(iov.len)
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)


def guard_needed(regset_bytes: int | None) -> bool:
    """UML's xstate path works only when the host's regset is exactly its buffer's size."""
    return regset_bytes is not None and regset_bytes != UML_XSTATE_BYTES


def main(argv: list[str]) -> int:
    always = argv[:1] == ["--always"]
    command = argv[1:] if always else argv
    if not command:
        print(
            "usage: python -m rainctl.lab.xstate_guard [--always] KERNEL [ARGUMENT...]",
            file=sys.stderr,
        )
        return 2
    try:
        regset_bytes = xstate_regset_bytes()
        if always or guard_needed(regset_bytes):
            install_filter()
            command = [*command, *GUEST_ENVIRONMENT]
            print(
                f"rainctl.lab.xstate_guard: host xstate regset {regset_bytes} bytes, UML's"
                f" {UML_XSTATE_BYTES}: legacy FP registers, guest off AVX",
                file=sys.stderr,
            )
        os.execvp(command[0], command)  # noqa: S606 - this wrapper exists to exec its argv
    except OSError as exc:
        print(f"rainctl.lab.xstate_guard: {command[0]}: {exc.strerror or exc}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
