"""What every helper process of the daemon does first: die with its parent.

The daemon's helpers (health checkers, proxy workers, the configuration worker) are
children that must not outlive it, however it ends (SIGKILL included): the kernel sends
them `signum` when their parent exits (prctl PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import ctypes
import signal

_PR_SET_PDEATHSIG = 1


def die_with_parent(signum: signal.Signals = signal.SIGKILL) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)
