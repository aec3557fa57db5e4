"""A keybrake server with two tenants, and Debian's Chromium driven by Playwright."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import pytest
from aiohttp import web
from playwright.async_api import Browser, BrowserContext, Page, async_playwright

from keybrake import IssuedKey, Keybrake, RetryPolicy
from keybrake.server import running_server
from keybrake.server._keys import STORE
from keybrake.server.api.tokens import create_admin_token
from keybrake.server.app import create_app
from keybrake.server.dashboard import DASHBOARD, Dashboard
from tests.conftest import SEED_ENDPOINTS, make_config

#: Debian's package; Playwright can't download a browser here (.ci/run installs it).
CHROMIUM = "/usr/bin/chromium"
#: Set to a folder (docs/images) to keep the screenshots the tests take.
SCREENSHOTS_ENV = "KEYBRAKE_SCREENSHOTS"


@attrs.frozen
class DashboardServer:
    url: str
    #: The master token of tenant "default", and of a second tenant, "acme".
    admin_token: str
    other_token: str
    app: web.Application

    @property
    def dashboard(self) -> Dashboard:
        return self.app[DASHBOARD]

    def client(self, token: str | None = None) -> Keybrake:
        return Keybrake(
            token or self.admin_token,
            api_url=self.url,
            proxy_url=self.url,
            retry=RetryPolicy(attempts=1),
        )

    async def issue(
        self, label: str, *, token: str | None = None, cap: int = 5, **options: Any
    ) -> IssuedKey:
        async with self.client(token) as kb:
            return await kb.issue_key(
                "stripe", SEED_ENDPOINTS, cap=cap, ttl="10m", label=label, **options
            )

    async def status(self, key_id: str, *, token: str | None = None) -> str:
        async with self.client(token) as kb:
            return (await kb.get_key(key_id)).status

    async def proxy_code(self, token: str) -> tuple[int, str | None]:
        """What the proxy answers a key's ``POST /stripe/v1/payment_intents``: the status and
        keybrake's ``code`` (None when the request was forwarded)."""
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{self.url}/stripe/v1/payment_intents",
                data={"amount": "100", "currency": "usd"},
                headers={"Authorization": f"Bearer {token}"},
            ) as response,
        ):
            body = await response.json()
            return response.status, body.get(
                "code"
            ) if "Keybrake-Error" in response.headers else None


@pytest.fixture
async def dash(tmp_path: Path, localstripe_url: str) -> AsyncIterator[DashboardServer]:
    config = make_config(tmp_path / "keybrake.db", localstripe_url)
    app = create_app(config)
    async with running_server(config, app=app) as url:
        assert config.admin_token is not None
        _, other = await create_admin_token(app[STORE], "acme")
        yield DashboardServer(url, config.admin_token, other, app)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)")
    async with async_playwright() as playwright:
        the_browser = await playwright.chromium.launch(executable_path=CHROMIUM)
        yield the_browser
        await the_browser.close()


@pytest.fixture
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    the_context = await browser.new_context(viewport={"width": 1360, "height": 900})
    yield the_context
    await the_context.close()


@pytest.fixture
async def page(context: BrowserContext) -> Page:
    return await context.new_page()


async def sign_in(page: Page, server: DashboardServer, token: str | None = None) -> None:
    """Open the dashboard and sign in with a master token, as a person would."""
    await page.goto(f"{server.url}/dashboard")
    await page.get_by_label("Master token").fill(token or server.admin_token)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(f"{server.url}/dashboard")


async def screenshot(page: Page, tmp_path: Path, name: str) -> Path:
    """Take a screenshot; keep a copy in $KEYBRAKE_SCREENSHOTS when that is set."""
    path = tmp_path / name
    await page.screenshot(path=str(path), full_page=True)
    keep = os.environ.get(SCREENSHOTS_ENV)
    if keep:
        shutil.copyfile(path, Path(keep) / name)
    return path
