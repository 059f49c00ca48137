"""Browser tests: Debian's Chromium, headless, driven by Playwright against a real `agentserver up` that
serves the built console. Screenshots of every page land in artifacts/screenshots/ (README, "Console")."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, expect, sync_playwright

from tests.identity_support import PASSWORD, stack_admin, unique_email
from tests.support import ROOT, RunningStack

CHROMIUM = Path("/usr/bin/chromium")
CONSOLE_DIR = ROOT / "web" / "dist"
SCREENSHOTS = ROOT / "artifacts" / "screenshots"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}

expect.set_options(timeout=15_000)


@dataclass(frozen=True)
class Account:
    email: str
    password: str
    name: str


@dataclass(frozen=True)
class Console:
    """A stack serving the console, and the admin account registered first on it."""

    stack: RunningStack
    admin: Account

    @property
    def url(self) -> str:
        # The address `agentserver up` prints; its sandboxes live on <id>.localhost of the same port.
        return f"http://localhost:{self.stack.port}"


def new_account(base_url: str, label: str) -> Account:
    """An account made through the API (people the test's user works with)."""
    account = Account(unique_email(label), PASSWORD, label.title())
    answer = httpx.post(f"{base_url}/api/auth/register",
                        json={"email": account.email, "password": account.password, "name": account.name})
    assert answer.status_code == 201, answer.text
    return account


@pytest.fixture(scope="session")
def console_build() -> Path:
    """The built console: `make web` rebuilds it when a source is newer (and is a no-op otherwise)."""
    subprocess.run(["make", "-s", "web"], cwd=ROOT, check=True, timeout=600)
    assert (CONSOLE_DIR / "index.html").is_file()
    return CONSOLE_DIR


@contextmanager
def running_console(console_dir: Path, state_dir: Path, env: dict[str, str] | None = None) -> Iterator[Console]:
    """`agentserver up` serving the built console, with its admin registered (with the setup token)."""
    running = RunningStack(state_dir=state_dir, in_memory=True, env=env,
                           extra_args=["--console-dir", str(console_dir), "--queue-visibility-timeout", "1"]).start()
    try:
        # The admin is made here, with the setup token, so that every test knows who that is.
        _, admin = stack_admin(running.base_url)
        yield Console(running, Account(admin["email"], PASSWORD, admin["name"]))
    finally:
        running.stop()


@pytest.fixture(scope="module")
def console(console_build: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    with running_console(console_build, tmp_path_factory.mktemp("stack")) as started:
        yield started


@pytest.fixture(scope="session")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="session")
def chromium(playwright: Playwright) -> Iterator[Browser]:
    assert CHROMIUM.exists(), "the browser tests need Debian's Chromium: `make test-browser` installs it"
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
    yield browser
    browser.close()


@pytest.fixture
def context(chromium: Browser, console: Console) -> Iterator[BrowserContext]:
    context = chromium.new_context(base_url=console.url, viewport=DESKTOP)
    yield context
    context.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()


def screenshot(page: Page, name: str) -> None:
    """Saves the whole page as artifacts/screenshots/<name>.png."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def sign_up_in_browser(page: Page, label: str) -> Account:
    account = Account(unique_email(label), PASSWORD, label.title())
    page.goto("/sign-up")
    page.get_by_label("Name").fill(account.name)
    page.get_by_label("Email").fill(account.email)
    page.get_by_label("Password").fill(account.password)
    page.get_by_role("button", name="Sign up").click()
    expect(page.get_by_role("heading", name="Sandboxes")).to_be_visible()
    return account


def sign_in_in_browser(page: Page, account: Account, path: str = "/sign-in") -> None:
    page.goto(path)
    page.get_by_label("Email").fill(account.email)
    page.get_by_label("Password").fill(account.password)
    page.get_by_role("button", name="Sign in").click()


def current_workspace_id(page: Page) -> str:
    parts = page.url.split("/w/", 1)
    assert len(parts) == 2, page.url
    return parts[1].split("/", 1)[0].split("?", 1)[0]
