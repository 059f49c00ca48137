"""Children that never outlive their parent."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess

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


def signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    """Signals the process group of a child started with `die_with_parent`, if any of it is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signum)


def stop_group(process: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM to the child's group, `timeout` seconds for it to finish, then SIGKILL to whatever is
    left of the group: the leader if it ignored SIGTERM, or children that outlived it."""
    if process.poll() is not None:
        return
    signal_group(process, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=timeout)
    signal_group(process, signal.SIGKILL)
    process.wait()
