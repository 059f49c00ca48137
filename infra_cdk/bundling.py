"""Asset bundling on the host, so `cdk synth` needs neither Docker nor anything but pip.

CDK calls `try_bundle` before it would fall back to Docker; these bundlers always do the work (or
raise), so the Docker image named in the bundling options is never pulled. The context key
`aws:cdk:bundling-stacks` set to `[]` skips bundling altogether, which the infra tests use.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import jsii
from aws_cdk import AssetHashType, BundlingOptions, DockerImage, ILocalBundling
from aws_cdk import aws_lambda as lambda_

from infra_cdk import constants

_IGNORED_DIRS = {"__pycache__", ".mypy_cache", ".pytest_cache"}
_IGNORED_SUFFIXES = {".pyc", ".pyo"}
_IGNORED = shutil.ignore_patterns(*_IGNORED_DIRS, *(f"*{suffix}" for suffix in _IGNORED_SUFFIXES))
# Named only because BundlingOptions requires an image; local bundling never falls back to it.
_UNUSED_DOCKER_IMAGE = DockerImage.from_registry("agentserver/local-bundling-only")

Runner = Callable[..., subprocess.CompletedProcess[str]]


def runtime_requirements(pyproject: Path = constants.PYPROJECT) -> list[str]:
    """The `[project].dependencies` of pyproject.toml: what the Lambda functions import at run time."""
    with pyproject.open("rb") as file:
        return list(tomllib.load(file)["project"]["dependencies"])


def lambda_platform_tags(architecture: str) -> list[str]:
    """The manylinux tags whose wheels load in Lambda's python3.11 runtime on `architecture`."""
    machine = constants.PIP_MACHINES[architecture]
    glibc_tags = [f"manylinux_2_{minor}_{machine}" for minor in range(17, constants.LAMBDA_GLIBC_MINOR + 1)]
    return [f"manylinux2014_{machine}", *glibc_tags]


def copy_package(source: Path, destination: Path) -> None:
    shutil.copytree(source, destination, ignore=_IGNORED, dirs_exist_ok=True)


def _source_files(path: Path) -> Iterable[Path]:
    if path.is_file():
        yield path
        return
    for file in sorted(path.rglob("*")):
        parts = file.relative_to(path).parts
        if file.is_file() and not _IGNORED_DIRS.intersection(parts) and file.suffix not in _IGNORED_SUFFIXES:
            yield file


def fingerprint(paths: Iterable[Path], extra: Iterable[str] = ()) -> str:
    """A hash of the files under `paths` and of `extra` strings: the asset's identity.

    A custom hash keeps CDK from fingerprinting a whole source tree, and makes the layer's identity
    include what pip will install, which its source folder does not show.
    """
    digest = hashlib.sha256()
    for root in paths:
        for file in _source_files(root):
            digest.update(str(file.relative_to(root.parent)).encode())
            digest.update(file.read_bytes())
    for item in extra:
        digest.update(item.encode())
    return digest.hexdigest()


@jsii.implements(ILocalBundling)
class PipLayerBundling:
    """Builds the layer: the pinned runtime dependencies, as wheels for the Lambda platform, plus our packages."""

    def __init__(
        self,
        requirements: Sequence[str],
        packages: Sequence[Path],
        *,
        architecture: str,
        constraints: Path = constants.CONSTRAINTS,
        run: Runner = subprocess.run,
    ) -> None:
        self.requirements = list(requirements)
        self.packages = list(packages)
        self.platforms = lambda_platform_tags(architecture)
        self.constraints = constraints
        self._run = run

    def pip_command(self, site_dir: Path) -> list[str]:
        return [
            sys.executable, "-m", "pip", "install",
            "--target", str(site_dir),
            "--constraint", str(self.constraints),
            # Wheels for Lambda's OS, CPU and Python, whatever machine runs the synth.
            *(option for platform in self.platforms for option in ("--platform", platform)),
            "--implementation", "cp",
            "--python-version", constants.PYTHON_VERSION,
            "--only-binary=:all:",
            "--no-compile",
            "--disable-pip-version-check",
            "--no-color",
            "--quiet",
            *self.requirements,
        ]  # fmt: skip

    def try_bundle(self, output_dir: str, *, image: DockerImage | None = None, **_options: Any) -> bool:
        site_dir = Path(output_dir) / constants.LAMBDA_LAYER_SITE_DIR
        result = self._run(self.pip_command(site_dir), capture_output=True, text=True, check=False)
        if result.returncode != 0:
            # Raise rather than return False: False would make CDK try Docker, which we never want.
            raise RuntimeError(f"pip could not build the Lambda layer:\n{result.stdout}\n{result.stderr}")
        # Console scripts point at this machine's interpreter; nothing in Lambda runs them.
        shutil.rmtree(site_dir / "bin", ignore_errors=True)
        for package in self.packages:
            copy_package(package, site_dir / package.name)
        return True


@jsii.implements(ILocalBundling)
class CopySourceBundling:
    """Copies Python packages (and executable helper scripts) into the asset, keeping package names."""

    def __init__(self, packages: Sequence[Path], scripts: Sequence[Path] = ()) -> None:
        self.packages = list(packages)
        self.scripts = list(scripts)

    def try_bundle(self, output_dir: str, *, image: DockerImage | None = None, **_options: Any) -> bool:
        output = Path(output_dir)
        for package in self.packages:
            copy_package(package, output / package.name)
        for script in self.scripts:
            target = output / script.name
            shutil.copyfile(script, target)
            target.chmod(0o755)  # the web adapter executes the handler file; CDK's zip keeps the mode
        return True


def layer_code(requirements: Sequence[str], packages: Sequence[Path], architecture: str) -> lambda_.Code:
    bundler = PipLayerBundling(requirements, packages, architecture=architecture)
    constraints = constants.CONSTRAINTS.read_text()
    return lambda_.Code.from_asset(
        str(packages[0]),
        asset_hash_type=AssetHashType.CUSTOM,
        asset_hash=fingerprint(packages, [*requirements, constraints, architecture, constants.PYTHON_VERSION]),
        bundling=BundlingOptions(image=_UNUSED_DOCKER_IMAGE, local=bundler),
    )


def source_code(packages: Sequence[Path], scripts: Sequence[Path] = ()) -> lambda_.Code:
    bundler = CopySourceBundling(packages, scripts)
    return lambda_.Code.from_asset(
        str(packages[0]),
        asset_hash_type=AssetHashType.CUSTOM,
        asset_hash=fingerprint([*packages, *scripts]),
        bundling=BundlingOptions(image=_UNUSED_DOCKER_IMAGE, local=bundler),
    )
