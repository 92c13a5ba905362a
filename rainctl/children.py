"""What the daemon's helper processes do first: die with their parent, step aside.

The daemon's helpers (health checkers, proxy workers, the configuration worker) are
children that must not outlive it, however it ends (SIGKILL included): the kernel sends
them `signum` when their parent exits (prctl PR_SET_PDEATHSIG). The background ones (checks,
configuration) also run at `nice` HELPER_NICE, so on a busy core the ring's loop wins.
"""

from __future__ import annotations

import ctypes
import os
import signal

_PR_SET_PDEATHSIG = 1
HELPER_NICE = 10


def die_with_parent(signum: signal.Signals = signal.SIGKILL) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)


def step_aside() -> None:
    """Run at HELPER_NICE: the daemon's ring loop goes first on a busy core."""
    os.nice(HELPER_NICE)
