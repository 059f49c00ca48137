"""How the embedded stack keeps a local cloud sandbox away from everything else on the machine.

A sandbox runs code the user's agent chose (and whatever a prompt talked it into), so it must not
inherit the stack's privileges. With bubblewrap each one gets its own user, PID, network, IPC and
UTS namespaces and a filesystem of its own: the system's programs and the project's code read-only,
a few files of /etc, its own workspace, home and XDG folders read-write, and nothing else of the
state directory (not the stack's log and marker in its folder, no other
sandbox, no DynamoDB Local data, no endpoints.json). Its network namespace has only a loopback
interface: the emulators (moto, DynamoDB Local), the @connections listener and the internet are out
of reach. The one way out is the gateway's Unix socket, bind-mounted into the sandbox, which serves
what the public port serves (the tunnel endpoint, the LLM proxy, the API); a small forwarder in the
sandbox (embedded/sandbox_bridge.py) listens on the sandbox's own localhost:<port> so that the URLs
the agent was given work unchanged.

Without bubblewrap (or without user namespaces) a sandbox is refused, unless the operator runs the
stack with `--trusted-sandboxes`: then sandboxes run as plain child processes with the operator's
privileges, and the stack says so in its log, on its console and in /config.json.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

SANDBOX_GATEWAY_SOCKET = "/run/agentserver/gateway.sock"  # where the gateway's socket appears inside
# The parts of /etc a program needs (name resolution, users, TLS roots, time zone, loader); never all
# of it, which holds host keys and password hashes.
ETC_FILES = ("/etc/hosts", "/etc/resolv.conf", "/etc/nsswitch.conf", "/etc/passwd", "/etc/group",
             "/etc/localtime", "/etc/ssl", "/etc/ca-certificates", "/etc/alternatives", "/etc/ld.so.cache",
             "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/mime.types")
TOP_LEVEL_SYSTEM = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# Run as root, bwrap would keep every capability inside the sandbox's user namespace (enough to
# remount its read-only folders writable): drop them all, as it does for anyone else.
NAMESPACES = ("--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
              "--unshare-cgroup-try", "--cap-drop", "ALL")

Mode = Literal["bubblewrap", "trusted", "unavailable"]


@dataclass(frozen=True)
class Isolation:
    """What the stack does with local sandboxes: isolate them, run them trusted, or refuse them."""

    mode: Mode
    bwrap: str | None = None
    reason: str = ""  # why bubblewrap cannot be used (trusted and unavailable)
    options: tuple[str, ...] = ()  # what this bwrap supports beyond NAMESPACES

    def refusal(self) -> str:
        return (f"local sandboxes run isolated with bubblewrap, which is not available here ({self.reason}); "
                "install bubblewrap (`make install`, or apt-get install bubblewrap) and allow user namespaces, "
                "or start the stack with --trusted-sandboxes if you alone use this machine and its sandboxes")


def probe(bwrap: str | None) -> str | None:
    """None if bubblewrap runs a program in fresh namespaces here; otherwise why not, in one line."""
    if not bwrap:
        return "bwrap was not found on PATH"
    if not os.access(bwrap, os.X_OK):
        return f"{bwrap} is not an executable"
    try:
        result = subprocess.run([bwrap, *NAMESPACES, "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev",
                                 "true"], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"{bwrap} could not run: {error}"
    if result.returncode != 0:
        detail = (result.stderr.strip().splitlines() or [f"exit code {result.returncode}"])[-1]
        return f"{bwrap} cannot create namespaces: {detail}"
    return None


def detect(bwrap: str | None, *, trusted: bool) -> Isolation:
    problem = probe(bwrap)
    if problem is None:
        assert bwrap is not None
        return Isolation("bubblewrap", bwrap=bwrap, options=_optional_hardening(bwrap))
    return Isolation("trusted" if trusted else "unavailable", reason=problem)


def _optional_hardening(bwrap: str) -> tuple[str, ...]:
    """No nested user namespaces (bubblewrap 0.8+; older ones still lock the mounts they made)."""
    usage = subprocess.run([bwrap, "--help"], capture_output=True, text=True, timeout=30).stdout
    return ("--disable-userns",) if "--disable-userns" in usage else ()


def _package_root(path: Path) -> Path:
    """The folder to share for an executable: its npm package tree if it is in one, else its folder."""
    for parent in path.parents:
        if parent.name == "node_modules":
            return parent
    return path.parent


def runtime_paths(python: str, project_root: Path, extra_executables: Sequence[Path] = ()) -> list[Path]:
    """What the sandbox's programs are made of, shared read-only: the project (and the folders its
    top-level links point to, e.g. a shared node_modules), the Python it runs on, and opencode."""
    paths = [project_root.resolve()]
    paths += [entry.resolve() for entry in project_root.iterdir() if entry.is_symlink() and entry.resolve().is_dir()]
    paths += [Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve(), Path(os.path.realpath(python)).parent]
    paths += [_package_root(executable.resolve()) for executable in extra_executables]
    unique: list[Path] = []
    for path in paths:  # real paths only (a bind through a link fails), and none inside another
        if path.is_dir() and not any(path.is_relative_to(kept) for kept in [*unique, Path("/usr")]):
            unique = [kept for kept in unique if not kept.is_relative_to(path)] + [path]
    return unique


def bwrap_command(isolation: Isolation, *, folder: Path, writable: Sequence[str], state_dir: Path,
                  gateway_socket: Path, shared: Sequence[Path], command: Sequence[str]) -> list[str]:
    """The bubblewrap command line running `command` in the sandbox whose folder is `folder`.

    Mounts go in order: the state directory is hidden under an empty tmpfs (in case it lies inside
    a shared folder), then the `writable` subfolders of the sandbox's folder are mounted back at
    their own paths, so the paths the agent reports are the same inside and out. The folder itself
    is not: what the stack writes there (its log, sandbox.json) stays out of the sandbox's reach,
    or a link put in its place would have the stack write through it."""
    assert isolation.bwrap is not None
    arguments = [isolation.bwrap, *NAMESPACES, *isolation.options, "--die-with-parent", "--hostname", "sandbox",
                 "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--ro-bind", "/usr", "/usr"]
    for top in TOP_LEVEL_SYSTEM:
        if os.path.islink(top):
            arguments += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            arguments += ["--ro-bind", top, top]
    for name in ETC_FILES:
        arguments += ["--ro-bind-try", name, name]
    for path in shared:
        arguments += ["--ro-bind", str(path), str(path)]
    arguments += ["--tmpfs", str(state_dir)]
    for name in writable:
        arguments += ["--bind", str(folder / name), str(folder / name)]
    arguments += ["--ro-bind", str(gateway_socket), SANDBOX_GATEWAY_SOCKET,
                  "--chdir", str(folder), "--", *command]
    return arguments
