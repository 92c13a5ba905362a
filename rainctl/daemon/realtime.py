"""Keep the ring's timing out of reach of the rest of the machine (GOALS.md F3).

A daemon that a CPU hog or a page fault delays misses its hop and token-loss deadlines and
gets excluded although it is alive: the classic false failover (corosync raised its token
timeout for exactly this). Like keepalived's `vrrp_rt_priority` and `vrrp_no_swap`, the
daemon can run with a real-time round-robin priority (`SCHED_RR`: it preempts every normal
process, and the kernel's RT throttling still leaves 5 % of each second to the rest) and
with its memory locked (`mlockall`: no page fault on the token path). The priority is
that of the thread that asks for it, the main thread, where the ring's loop runs; with
`SCHED_RESET_ON_FORK` every thread and process started after it (the reconciler's and
executors' threads, the configuration and health workers, the proxies) begins at normal
scheduling, so a busy helper yields to the ring at once instead of taking turns with it
for a round-robin time slice (Linux applies the reset to threads as to processes).
Locked memory is the whole process's. `gc.freeze()` after start-up (service.py) keeps
full collections short. The priority does not reach the interpreter's lock: a helper
thread running Python delays the woken ring thread by up to CPython's switch interval (5
ms). A 0.5 ms interval was tried and left alone: it lets busy helpers take the lock from
the ring's thread as quickly, and in the UML lab it brought false exclusions
(docs/benchmarks.md, "On the host, with the ring's rotation").

Locked memory is resident memory, every page of it: a thread's stack (8 MiB by glibc's
default) becomes 8 MiB of RAM once locked, and the daemon runs several threads (executors,
child watchers, netlink): 125 MB resident instead of 64 in a lab guest. With
`--lock-memory` the daemon therefore starts its threads with LOCKED_THREAD_STACK_BYTES
stacks (`size_thread_stacks_for_locking`, before the first thread): on the host a process
with 8 threads locked 81 MB at the default size and 25 MB at 1 MiB.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import threading

from rainctl.errors import RainctlError

MCL_CURRENT = 1
MCL_FUTURE = 2
PRIORITY_MIN = 1
PRIORITY_MAX = 99
LOCKED_THREAD_STACK_BYTES = 1 << 20
"""Ample for what the daemon's threads run (netlink calls, file writes, unpickling a
validated document), whose C code does not recurse deeply."""

log = logging.getLogger("rainctl.daemon")


class RealtimeError(RainctlError):
    """Real-time scheduling or memory locking was asked for and refused by the kernel."""


def size_thread_stacks_for_locking() -> None:
    """Threads started from now on get LOCKED_THREAD_STACK_BYTES stacks (module docstring);
    call it before the first thread when memory will be locked."""
    threading.stack_size(LOCKED_THREAD_STACK_BYTES)


def apply_realtime(priority: int, *, lock_memory: bool) -> None:
    """SCHED_RR at `priority` (0: leave the scheduling alone) and, with `lock_memory`,
    every current and future page of the process locked in memory."""
    if priority:
        if not PRIORITY_MIN <= priority <= PRIORITY_MAX:
            raise RealtimeError(
                f"--realtime-priority: {priority} is not {PRIORITY_MIN}..{PRIORITY_MAX} "
                "(or 0 for none)"
            )
        try:
            # RESET_ON_FORK: the processes the daemon starts (health checks, proxy workers)
            # begin at normal scheduling; a busy worker at the ring's real-time priority
            # would take turns with the ring instead of yielding to it.
            policy = os.SCHED_RR | os.SCHED_RESET_ON_FORK
            os.sched_setscheduler(0, policy, os.sched_param(priority))
        except OSError as exc:
            raise RealtimeError(
                f"--realtime-priority {priority}: SCHED_RR refused ({exc.strerror}); needs "
                "root or CAP_SYS_NICE (and an RT budget in a cgroup)"
            ) from exc
    if lock_memory:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.mlockall(MCL_CURRENT | MCL_FUTURE) != 0:
            code = ctypes.get_errno()
            raise RealtimeError(
                f"--lock-memory: mlockall refused ({os.strerror(code)}); needs root or "
                f"CAP_IPC_LOCK and a large enough RLIMIT_MEMLOCK"
                + (" (the limit is too low)" if code == errno.ENOMEM else "")
            )
    if priority or lock_memory:
        log.info(
            "real-time: SCHED_RR priority %d, memory locked: %s",
            priority,
            "yes" if lock_memory else "no",
        )
