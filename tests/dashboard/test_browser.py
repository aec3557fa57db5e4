"""The dashboard in Chromium, against a running server: what an operator on call does."""

from __future__ import annotations

import re
from pathlib import Path

from playwright.async_api import Page, Request, expect

from tests.dashboard.conftest import DashboardServer, screenshot, sign_in


async def test_a_wrong_master_token_is_refused(page: Page, dash: DashboardServer) -> None:
    await page.goto(f"{dash.url}/dashboard")
    await page.get_by_label("Master token").fill("kb_admin_not-a-token")
    async with page.expect_response(f"{dash.url}/dashboard/sign-in") as answer:
        await page.get_by_role("button", name="Sign in").click()
    assert (await answer.value).status == 401
    await expect(page.get_by_role("alert")).to_contain_text("That master token is not valid")
    assert await page.context.cookies() == []
    # Nothing of the tenant is shown.
    await expect(page.locator("table.keys")).to_have_count(0)


async def test_signed_in_the_tenant_sees_its_keys_and_no_other(
    page: Page, dash: DashboardServer, tmp_path: Path
) -> None:
    spent = await dash.issue(
        "support-bot run-41", cap=50, metadata={"user": "u-ana", "run": "run-41"}
    )
    await dash.issue("support-bot run-42", metadata={"x-user-id": "u-bo", "x-agent-run-id": "r-42"})
    await dash.issue("nightly-refunds", cap=100)
    theirs = await dash.issue("acme-secret-run", token=dash.other_token)
    assert await dash.proxy_code(spent.token) == (200, None)  # $1.00 through localstripe

    await sign_in(page, dash)
    row = page.locator(f"#key-{spent.id}")
    await expect(row.locator("td.label")).to_have_text("support-bot run-41")
    await expect(row).to_contain_text("stripe")
    await expect(row.locator(".status")).to_have_text("active")
    await expect(row.locator("td.spend")).to_contain_text("$1.00 / $50.00")
    await expect(row.locator("meter")).to_have_attribute("value", "1000000")
    await expect(row.locator("td.expires")).to_contain_text(re.compile(r"^\d+m \d+s left$"))
    await expect(row.locator("td.user")).to_have_text("u-ana")
    await expect(row.locator("td.run")).to_have_text("run-41")
    await expect(row.get_by_role("button", name="Revoke")).to_be_visible()
    # The integrations' metadata names count as user and run too.
    other_row = page.locator("tr.key", has_text="support-bot run-42")
    await expect(other_row.locator("td.user")).to_have_text("u-bo")
    await expect(other_row.locator("td.run")).to_have_text("r-42")
    # Its recent requests, from the audit log.
    await page.locator(f"#audit-{spent.id} summary").click()
    audit = page.locator(f"#audit-{spent.id} table")
    await expect(audit).to_contain_text("POST /v1/payment_intents")
    await expect(audit).to_contain_text("$1.00")
    # The chart: today's spend per vendor.
    await expect(page.locator("svg.chart")).to_contain_text("stripe $1.00")
    # The other tenant's key is nowhere.
    assert theirs.id not in await page.content()
    await expect(page.get_by_text("acme-secret-run")).to_have_count(0)
    await expect(page.locator("tr.key")).to_have_count(3)
    await screenshot(page, tmp_path, "dashboard.png")


async def test_revoke_one_key_and_the_proxy_refuses_it(page: Page, dash: DashboardServer) -> None:
    doomed = await dash.issue("runaway-agent")
    kept = await dash.issue("well-behaved-agent")
    await sign_in(page, dash)

    await page.locator(f"#key-{doomed.id}").get_by_role("button", name="Revoke").click()

    await expect(page.get_by_role("status")).to_contain_text(f"Revoked {doomed.id}")
    await expect(page.locator(f"#key-{doomed.id} .status")).to_have_text("revoked")
    await expect(page.locator(f"#key-{doomed.id}").get_by_role("button")).to_have_count(0)
    await expect(page.locator(f"#key-{kept.id} .status")).to_have_text("active")
    assert await dash.proxy_code(doomed.token) == (401, "key_revoked")
    assert await dash.proxy_code(kept.token) == (200, None)


async def test_revoke_all_matching_a_label_prefix_after_confirming(
    page: Page, dash: DashboardServer, tmp_path: Path
) -> None:
    loop_a = await dash.issue("run-7 step-1", metadata={"run": "run-7"})
    loop_b = await dash.issue("run-7 step-2", metadata={"run": "run-7"})
    other = await dash.issue("run-8 step-1")
    theirs = await dash.issue("run-7 elsewhere", token=dash.other_token)
    await sign_in(page, dash)

    await page.get_by_label("Label prefix").fill("run-7")
    await page.get_by_role("button", name="Revoke all matching").click()

    # The confirmation lists what will go, and nothing has gone yet.
    await expect(page.locator("p.count")).to_contain_text("2 active keys have a label starting")
    listed = page.locator("section.confirm table")
    await expect(listed).to_contain_text(loop_a.id)
    await expect(listed).to_contain_text(loop_b.id)
    await expect(listed).not_to_contain_text(other.id)
    assert await dash.status(loop_a.id) == "active"
    await screenshot(page, tmp_path, "revoke-all-confirm.png")

    await page.get_by_role("button", name="Yes, revoke them").click()

    await expect(page.get_by_role("status")).to_contain_text(
        "Revoked 2 keys whose label starts with 'run-7'"
    )
    for key in (loop_a, loop_b):
        await expect(page.locator(f"#key-{key.id} .status")).to_have_text("revoked")
        assert await dash.proxy_code(key.token) == (401, "key_revoked")
    assert await dash.proxy_code(other.token) == (200, None)
    assert await dash.status(theirs.id, token=dash.other_token) == "active"


async def test_cancelling_the_confirmation_revokes_nothing(
    page: Page, dash: DashboardServer
) -> None:
    key = await dash.issue("run-9 step-1")
    await sign_in(page, dash)
    await page.get_by_label("Label prefix").fill("run-9")
    await page.get_by_role("button", name="Revoke all matching").click()
    await page.get_by_role("link", name="Cancel").click()
    await expect(page.locator(f"#key-{key.id} .status")).to_have_text("active")
    assert await dash.status(key.id) == "active"


async def test_a_label_is_shown_as_text_never_run_as_html(
    page: Page, dash: DashboardServer
) -> None:
    label = '<script>window.pwned = 1</script><img src="/x" onerror="window.pwned = 2">"\'&'
    key = await dash.issue(label, metadata={"user": "<b>eve</b>", "run": '"><svg onload=1>'})
    await sign_in(page, dash)
    row = page.locator(f"#key-{key.id}")
    await expect(row.locator("td.label")).to_have_text(label)
    await expect(row.locator("td.user")).to_have_text("<b>eve</b>")
    await expect(row.locator("td.run")).to_have_text('"><svg onload=1>')
    assert await row.locator("script, img, b, svg").count() == 0
    # Also on the confirmation page, where the prefix is shown back.
    await page.get_by_label("Label prefix").fill("<script>")
    await page.get_by_role("button", name="Revoke all matching").click()
    await expect(page.locator("section.confirm code").first).to_have_text("<script>")
    assert await page.locator("section.confirm script").count() == 0
    assert await page.evaluate("window.pwned") is None


async def test_nothing_is_loaded_from_outside_the_server(page: Page, dash: DashboardServer) -> None:
    await dash.issue('<img src="http://example.invalid/pixel.png">')
    dash.dashboard.refresh_ms = 200
    requests: list[Request] = []

    def record(request: Request) -> None:
        requests.append(request)

    page.on("request", record)
    await sign_in(page, dash)
    async with page.expect_response(re.compile(r"/dashboard/live")):
        pass  # the page refreshes itself, through the server
    await page.locator("tr.key").get_by_role("button", name="Revoke").click()
    await expect(page.locator(".status")).to_have_text("revoked")
    assert requests
    assert [r.url for r in requests if not r.url.startswith(dash.url + "/")] == []
    kinds = {r.resource_type for r in requests}
    assert {"document", "stylesheet", "script", "fetch"} <= kinds


async def test_the_page_refreshes_on_its_own(page: Page, dash: DashboardServer) -> None:
    dash.dashboard.refresh_ms = 200
    first = await dash.issue("started-before-the-page")
    assert await dash.proxy_code(first.token) == (200, None)
    await sign_in(page, dash)
    await page.locator(f"#audit-{first.id} summary").click()
    await expect(page.locator("tr.key")).to_have_count(1)
    key = await dash.issue("started-after-the-page")
    await expect(page.locator(f"#key-{key.id} td.label")).to_have_text("started-after-the-page")
    # What the operator opened stays open.
    await expect(page.locator(f"#audit-{first.id}")).to_have_attribute("open", "")


async def test_an_expired_session_goes_back_to_sign_in(page: Page, dash: DashboardServer) -> None:
    key = await dash.issue("still-running")
    await sign_in(page, dash)
    sessions = dash.dashboard.sessions
    sessions.clock = lambda: 2e10  # long after 12 hours
    await page.locator(f"#key-{key.id}").get_by_role("button", name="Revoke").click()
    await expect(page.get_by_role("alert")).to_contain_text("Your session expired")
    await expect(page.get_by_role("alert")).to_contain_text("Nothing was changed")
    await expect(page.get_by_label("Master token")).to_be_visible()
    assert await dash.status(key.id) == "active"


async def test_an_open_page_whose_session_expires_shows_sign_in(
    page: Page, dash: DashboardServer
) -> None:
    dash.dashboard.refresh_ms = 200
    await sign_in(page, dash)
    dash.dashboard.sessions.clock = lambda: 2e10
    await expect(page.get_by_role("alert")).to_contain_text("Your session expired")
    await expect(page.get_by_label("Master token")).to_be_visible()


async def test_sign_out(page: Page, dash: DashboardServer) -> None:
    await sign_in(page, dash)
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_role("status")).to_have_text("You are signed out.")
    assert len(dash.dashboard.sessions) == 0
    await page.goto(f"{dash.url}/dashboard")
    await expect(page.get_by_label("Master token")).to_be_visible()
