"""The pieces of local sandbox isolation that need no running stack: which bubblewrap arguments a
sandbox gets, which ports its bridge opens, which host names the gateway answers."""

from __future__ import annotations

from pathlib import Path

from embedded.gateway import allowed_host, host_name
from embedded.sandbox_bridge import loopback_ports
from embedded.sandbox_isolation import SANDBOX_GATEWAY_SOCKET, Isolation, bwrap_command, detect, runtime_paths

ALLOWED = ("localhost", "127.0.0.1", "[::1]", "devbox.example.test")


def test_the_state_dir_is_hidden_before_the_sandbox_folder_is_mounted_back(tmp_path: Path) -> None:
    state = tmp_path / "state"
    folder = state / "sandboxes" / "sb-1"
    command = bwrap_command(Isolation("bubblewrap", bwrap="/usr/bin/bwrap"), folder=folder,
                            writable=["workspace", "home"], state_dir=state, gateway_socket=tmp_path / "gw.sock",
                            shared=[Path("/opt/project")], command=["python", "-m", "embedded.sandbox_bridge"])
    hide = command.index("--tmpfs", command.index(str(state)) - 1)
    assert command[hide + 1] == str(state)
    binds = [command[i + 1:i + 3] for i, part in enumerate(command) if part == "--bind"]
    assert binds == [[str(folder / "workspace")] * 2, [str(folder / "home")] * 2]
    assert command.index("--bind") > hide
    # The folder itself (the stack's log and marker) is not the sandbox's
    mounted = [command[i + 1] for i, part in enumerate(command) if part in ("--bind", "--ro-bind", "--ro-bind-try")]
    assert str(folder) not in mounted and str(folder / "logs") not in command
    assert command[command.index(str(tmp_path / "gw.sock")) + 1] == SANDBOX_GATEWAY_SOCKET
    for flag in ("--unshare-user", "--unshare-pid", "--unshare-net", "--die-with-parent"):
        assert flag in command
    assert command[command.index("--cap-drop") + 1] == "ALL"
    # Nothing of /etc beyond the listed files, and nothing of the home folder
    assert "/etc" not in command and str(Path.home()) not in command
    assert command[-3:] == ["python", "-m", "embedded.sandbox_bridge"]


def test_shared_runtime_paths_are_real_and_not_nested(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "sub").mkdir(parents=True)
    shared = tmp_path / "shared_modules"
    shared.mkdir()
    (project / "node_modules").symlink_to(shared)
    paths = runtime_paths("/usr/bin/python3", project, [project / "node_modules" / ".bin" / "tool"])
    assert project in paths and shared in paths
    assert not [path for path in paths if path.is_symlink()]
    assert all(not a.is_relative_to(b) for a in paths for b in paths if a != b)


def test_without_bwrap_sandboxes_are_refused_or_trusted_by_choice(tmp_path: Path) -> None:
    missing = str(tmp_path / "bwrap")
    refused = detect(missing, trusted=False)
    assert refused.mode == "unavailable" and "--trusted-sandboxes" in refused.refusal()
    assert detect(missing, trusted=True).mode == "trusted"
    assert detect(None, trusted=False).reason == "bwrap was not found on PATH"


def test_the_bridge_listens_on_the_ports_of_the_agents_loopback_urls() -> None:
    environ = {"AGENTSERVER_SERVER_URL": "http://localhost:8080", "AGENTSERVER_TUNNEL_URL": "ws://127.0.0.1:8080/ws",
               "AGENTSERVER_LLM_BASE_URL": "http://localhost:9090/llm"}
    assert loopback_ports(environ) == [8080, 9090]
    assert loopback_ports({"AGENTSERVER_SERVER_URL": "https://agents.example.com"}) == []


def test_host_names_without_ports_and_which_are_answered() -> None:
    assert host_name("LOCALHOST:8080") == "localhost"
    assert host_name("[::1]:8080") == "[::1]"
    assert host_name("::1") == "::1"
    for host in ("localhost", "localhost.:8080", "127.0.0.1:1", "[::1]:2", "devbox.example.test",
                 "sb-1.localhost:8080", "a.b.localhost"):
        assert allowed_host(host, ALLOWED), host
    for host in ("", "evil.example", "localhost.evil.example", "127.0.0.1.nip.io", ".localhost", "localhost:80@evil",
                 "devbox.example.test.evil.example"):
        assert not allowed_host(host, ALLOWED), host


def test_a_link_planted_in_the_workspace_shares_nothing_into_the_sandbox(tmp_path: Path) -> None:
    """The workspace is the sandbox's to write: an `opencode` link there pointing at a host folder
    must not make the next start bind that folder in."""
    from embedded.sandbox_processes import LocalSandboxBackend

    secret = tmp_path / "operator" / ".aws"
    secret.mkdir(parents=True)
    (secret / "credentials").write_text("[default]\n")
    (secret / "credentials").chmod(0o700)  # the sandbox cannot chmod the target; a link to any executable will do
    backend = LocalSandboxBackend(tmp_path / "state" / "sandboxes", isolation=Isolation("bubblewrap", bwrap="bwrap"),
                                  gateway_socket=tmp_path / "gw.sock", state_dir=tmp_path / "state")
    folder = backend.folder("sb-planted")
    planted = folder / "workspace" / "node_modules" / ".bin"
    planted.mkdir(parents=True)
    (planted / "opencode").symlink_to(secret / "credentials")
    command = backend._command(folder)
    assert not [part for part in command if str(tmp_path / "operator") in part]
