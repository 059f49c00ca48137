"""Local bundling without Docker, checked without running pip: the command it builds and the files it copies."""

from __future__ import annotations

import stat
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from infra_cdk import bundling, constants


class RecordingPip:
    """Stands in for subprocess.run: records the command and plays pip's part (or fails like it)."""

    def __init__(self, returncode: int = 0) -> None:
        self.returncode = returncode
        self.commands: list[list[str]] = []

    def __call__(self, command: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        self.commands.append(command)
        target = Path(command[command.index("--target") + 1])
        (target / "bin").mkdir(parents=True)
        (target / "bin" / "fastapi").write_text("#!/some/local/python\n")
        return subprocess.CompletedProcess(command, self.returncode, stdout="", stderr="ResolutionImpossible")


def _option_values(command: list[str], option: str) -> list[str]:
    return [command[i + 1] for i, part in enumerate(command) if part == option]


def test_the_runtime_requirements_are_pyprojects_dependencies() -> None:
    # Given pyproject.toml / When the layer's requirements are read
    with constants.PYPROJECT.open("rb") as file:
        declared = tomllib.load(file)["project"]["dependencies"]
    # Then they are exactly [project].dependencies
    assert bundling.runtime_requirements() == declared


def test_the_layer_bundler_asks_pip_for_lambda_wheels_pinned_by_the_constraints(tmp_path: Path) -> None:
    # Given the layer bundler for arm64 and a pip that only records its command
    pip = RecordingPip()
    bundler = bundling.PipLayerBundling(["fastapi>=0.110"], [constants.LAYERS_PACKAGE], architecture="arm64", run=pip)
    # When it bundles
    assert bundler.try_bundle(str(tmp_path)) is True
    # Then pip installs into the layer's python/ folder, pinned by constraints.txt, binary wheels only
    (command,) = pip.commands
    assert command[1:4] == ["-m", "pip", "install"]
    assert _option_values(command, "--target") == [str(tmp_path / "python")]
    assert _option_values(command, "--constraint") == [str(constants.CONSTRAINTS)]
    assert "--only-binary=:all:" in command
    assert _option_values(command, "--python-version") == ["3.11"]
    assert _option_values(command, "--implementation") == ["cp"]
    # And for Lambda's platform: aarch64 wheels for glibc up to Amazon Linux 2's 2.26, nothing newer
    platforms = _option_values(command, "--platform")
    assert "manylinux2014_aarch64" in platforms and "manylinux_2_26_aarch64" in platforms
    assert all(platform.endswith("_aarch64") for platform in platforms)
    assert "manylinux_2_28_aarch64" not in platforms
    assert command[-1] == "fastapi>=0.110"


def test_the_layer_bundler_adds_the_shared_package_and_drops_console_scripts(tmp_path: Path) -> None:
    # Given the layer bundler / When it bundles
    bundling.PipLayerBundling([], [constants.LAYERS_PACKAGE], architecture="x86_64", run=RecordingPip()).try_bundle(
        str(tmp_path)
    )
    site = tmp_path / "python"
    # Then `layers` sits where Lambda puts layers on sys.path, without caches or this machine's scripts
    assert (site / "layers" / "shared" / "topology.py").is_file()
    assert not list(site.rglob("__pycache__"))
    assert not (site / "bin").exists()


def test_a_pip_failure_stops_the_synth_instead_of_falling_back_to_docker(tmp_path: Path) -> None:
    # Given pip failing / When the layer bundler runs / Then it raises with pip's message (False would mean Docker)
    bundler = bundling.PipLayerBundling([], [], architecture="arm64", run=RecordingPip(returncode=1))
    with pytest.raises(RuntimeError, match="ResolutionImpossible"):
        bundler.try_bundle(str(tmp_path))


def test_the_code_bundler_copies_the_package_and_an_executable_launcher(tmp_path: Path) -> None:
    # Given the functions package and the web adapter's launcher
    bundler = bundling.CopySourceBundling([constants.FUNCTIONS_PACKAGE], [constants.LAUNCHER_SCRIPT])
    # When it bundles
    assert bundler.try_bundle(str(tmp_path)) is True
    # Then handlers keep their dotted path (functions.<...>) and the launcher can be executed
    assert (tmp_path / "functions" / "__init__.py").is_file()
    assert not list(tmp_path.rglob("*.pyc"))
    launcher = tmp_path / constants.LAUNCHER_SCRIPT.name
    assert launcher.stat().st_mode & stat.S_IXUSR


def test_the_asset_fingerprint_follows_the_sources_and_the_requirements(tmp_path: Path) -> None:
    # Given a package folder
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "module.py").write_text("x = 1\n")
    first = bundling.fingerprint([package], ["fastapi==1"])
    # When nothing changes but a cache, the fingerprint stays
    (package / "__pycache__").mkdir()
    (package / "__pycache__" / "module.cpython-311.pyc").write_bytes(b"cache")
    assert bundling.fingerprint([package], ["fastapi==1"]) == first
    # When a requirement or a source changes, it moves
    assert bundling.fingerprint([package], ["fastapi==2"]) != first
    (package / "module.py").write_text("x = 2\n")
    assert bundling.fingerprint([package], ["fastapi==1"]) != first


def test_the_launcher_starts_uvicorn_on_the_adapter_port() -> None:
    # Given the launcher script / Then it execs uvicorn on the app and port the function's environment names
    script = constants.LAUNCHER_SCRIPT.read_text()
    assert script.startswith("#!/bin/bash")
    assert 'python -m uvicorn "${AGENTSERVER_ASGI_APP' in script
    assert '--port "${AWS_LWA_PORT:-8080}"' in script
