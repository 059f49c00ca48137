"""Which files the CDK deploys as the console: the Vite build when there is one, else the placeholder,
so that synthesis works offline and before `make web` (the test suite synthesizes with either)."""

from __future__ import annotations

from pathlib import Path

from infra_cdk import constants
from infra_cdk.console import console_source_dir


def test_the_built_console_is_preferred_to_the_placeholder(tmp_path: Path) -> None:
    # Given a Vite build and the placeholder
    built, placeholder = tmp_path / "dist", tmp_path / "placeholder"
    (built / "assets").mkdir(parents=True)
    (built / "index.html").write_text("<div id=root></div>")
    placeholder.mkdir()
    (placeholder / "index.html").write_text("not built yet")
    # When the deployment picks its source / Then the build wins
    assert console_source_dir((built, placeholder)) == built


def test_without_a_build_the_placeholder_is_deployed(tmp_path: Path) -> None:
    # Given no build (web/dist missing, or an empty folder left by a failed build)
    empty, placeholder = tmp_path / "dist", tmp_path / "placeholder"
    (empty / "assets").mkdir(parents=True)
    placeholder.mkdir()
    (placeholder / "index.html").write_text("not built yet")
    # Then the placeholder is deployed, and with neither there is nothing to upload from disk
    assert console_source_dir((empty, placeholder)) == placeholder
    assert console_source_dir((tmp_path / "missing", tmp_path / "also-missing")) is None


def test_the_sources_are_the_vite_build_then_the_placeholder_of_the_repository() -> None:
    root = Path(__file__).resolve().parents[2]
    assert (root / "web" / "dist", root / "web" / "placeholder") == constants.CONSOLE_SOURCES
    assert (root / "web" / "placeholder" / "index.html").is_file()
