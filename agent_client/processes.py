"""Children that never outlive their parent."""

from __future__ import annotations

import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Runs in the child before exec: its own session (so its whole group can be signalled), and on
    Linux SIGTERM when the parent dies, even by SIGKILL (prctl). Elsewhere only the session."""
    os.setsid()
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:  # not Linux (macOS has no PDEATHSIG): the parent's own stop() still ends the group
        pass
