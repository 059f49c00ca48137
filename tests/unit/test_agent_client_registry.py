"""The registry of saved registrations: private, atomic, locked, several per machine."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
from pathlib import Path

import pytest

from agent_client.agent_runner import AlreadyServed, exclusive_service
from agent_client.registry import Registration, Registry, RegistryError, agentserver_home


def registration(directory: str = "/work/a", workspace: str = "ws-1", sandbox: str = "sb-1") -> Registration:
    return Registration(server="http://localhost:8080", workspace_id=workspace, sandbox_id=sandbox, name="laptop",
                        agent_type="opencode", directory=directory, tunnel_url="ws://localhost:8080/ws",
                        llm_base_url="http://localhost:8080/llm", tunnel_token="ast_secret_tunnel",
                        proxy_token="asp_secret_proxy", auto_start=True)


def test_the_home_folder_follows_agentserver_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTSERVER_HOME", str(tmp_path / "home"))
    assert agentserver_home() == tmp_path / "home"
    assert Registry().path == tmp_path / "home" / "registry.json"


def test_a_saved_registration_is_private_and_reads_back(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "home")
    saved = registration()
    assert registry.save(saved) is None
    # The file holds tokens: only the user may read it, in a folder only the user may list
    assert stat.S_IMODE(registry.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(registry.home.stat().st_mode) == 0o700
    assert registry.registrations() == [saved]
    assert json.loads(registry.path.read_text())["version"] == 1


def test_tokens_never_show_in_a_repr() -> None:
    shown = repr(registration())
    assert "ast_secret_tunnel" not in shown and "asp_secret_proxy" not in shown


def test_registrations_are_keyed_by_directory_and_workspace(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    registry.save(registration("/work/a", "ws-1", "sb-1"))
    registry.save(registration("/work/a", "ws-2", "sb-2"))
    registry.save(registration("/work/b", "ws-1", "sb-3"))
    # The same directory and workspace again replaces the earlier one
    replaced = registry.save(registration("/work/a", "ws-1", "sb-4"))
    assert replaced is not None and replaced.sandbox_id == "sb-1"
    assert sorted(item.sandbox_id for item in registry.registrations()) == ["sb-2", "sb-3", "sb-4"]


def test_remove_forgets_a_workspace_or_one_directory_of_it(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    for directory, workspace, sandbox in (("/a", "ws-1", "sb-1"), ("/b", "ws-1", "sb-2"), ("/a", "ws-2", "sb-3")):
        registry.save(registration(directory, workspace, sandbox))
    assert [item.sandbox_id for item in registry.remove("ws-1", "/b")] == ["sb-2"]
    assert registry.remove("ws-9") == []
    assert [item.sandbox_id for item in registry.remove("ws-1")] == ["sb-1"]
    assert [item.sandbox_id for item in registry.registrations()] == ["sb-3"]
    assert stat.S_IMODE(registry.path.stat().st_mode) == 0o600


def test_a_failed_write_leaves_the_previous_file_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    registry = Registry(tmp_path)
    registry.save(registration(sandbox="sb-1"))
    before = registry.path.read_bytes()

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError):
        registry.save(registration(directory="/elsewhere", sandbox="sb-2"))
    # The rename never happened: the old file is intact and no temporary file is left behind
    assert registry.path.read_bytes() == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["registry.json", "registry.lock"]


def _save_many(home: str, worker: int) -> None:
    registry = Registry(Path(home))
    for index in range(15):
        registry.save(registration(f"/work/{worker}/{index}", "ws-1", f"sb-{worker}-{index}"))


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    # Four processes each add 15 registrations at the same time; the lock serializes the
    # read-modify-write cycles, so all 60 survive
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_save_many, args=(str(tmp_path), worker)) for worker in range(4)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(30)
        assert process.exitcode == 0
    assert len(Registry(tmp_path).registrations()) == 60


def test_a_corrupt_registry_is_reported_not_overwritten(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    registry.home.mkdir(exist_ok=True)
    registry.path.write_text("{not json")
    with pytest.raises(RegistryError, match="not a readable registry"):
        registry.registrations()
    with pytest.raises(RegistryError):
        registry.save(registration())
    assert registry.path.read_text() == "{not json"


def test_unknown_keys_from_a_newer_client_are_ignored(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    registry.save(registration())
    document = json.loads(registry.path.read_text())
    document["registrations"][0]["gpu"] = "none"
    registry.path.write_text(json.dumps(document))
    assert registry.registrations()[0].sandbox_id == "sb-1"


def test_one_registration_is_served_by_one_process_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Two clients serving one sandbox would replace each other's tunnel forever
    monkeypatch.setenv("AGENTSERVER_HOME", str(tmp_path))
    with exclusive_service(registration()):
        with pytest.raises(AlreadyServed, match=f"process {os.getpid()}"), exclusive_service(registration()):
            pass
        with exclusive_service(registration(sandbox="sb-other")):
            pass
    with exclusive_service(registration()):
        pass
