"""A local stack whose cloud sandboxes run unisolated (--trusted-sandboxes, no bubblewrap) says so on
every page of the console."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import Console, running_console, screenshot, sign_up_in_browser


@pytest.fixture(scope="module")
def console(console_build: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    env = {"AGENTSERVER_BWRAP": str(tmp_path_factory.mktemp("nobwrap") / "bwrap"),
           "AGENTSERVER_TRUSTED_SANDBOXES": "1"}
    with running_console(console_build, tmp_path_factory.mktemp("stack"), env=env) as started:
        yield started


def test_the_console_warns_that_sandboxes_run_without_isolation(page: Page, console: Console) -> None:
    sign_up_in_browser(page, "trusting")
    banner = page.get_by_role("alert")
    expect(banner).to_contain_text("without isolation")
    expect(banner).to_contain_text("--trusted-sandboxes")
    screenshot(page, "sandboxes-unisolated-warning")
    page.get_by_role("link", name="Tokens").click()
    expect(page.get_by_role("alert")).to_contain_text("without isolation")
