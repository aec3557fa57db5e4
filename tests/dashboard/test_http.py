"""The dashboard's refusals, over plain HTTP: what a forged request gets, and that it changes
nothing."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from http.cookies import SimpleCookie

import aiohttp
import attrs
import pytest
from yarl import URL

from keybrake.server._keys import STORE
from keybrake.server.dashboard.routes import COOKIE, SECURITY_HEADERS
from keybrake.server.http import deadlines
from keybrake.server.util import now_micros
from tests.adversarial.rawhttp import first_answer
from tests.dashboard.conftest import DashboardServer

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


class Operator:
    """A signed-in browser, as plain HTTP: its session cookie and CSRF token."""

    def __init__(self, http: aiohttp.ClientSession, server: DashboardServer) -> None:
        self.http = http
        self.server = server
        self.csrf = ""

    async def sign_in(self, token: str | None = None) -> None:
        async with self.http.post(
            f"{self.server.url}/dashboard/sign-in",
            data={"token": token or self.server.admin_token},
            allow_redirects=False,
        ) as response:
            assert response.status == 303, await response.text()
        self.csrf = _CSRF.findall(await self.page())[0]

    async def page(self, path: str = "/dashboard") -> str:
        async with self.http.get(self.server.url + path) as response:
            return await response.text()

    async def post(self, path: str, data: dict[str, str], **headers: str) -> tuple[int, str]:
        async with self.http.post(
            self.server.url + path, data=data, headers=headers, allow_redirects=False
        ) as response:
            return response.status, await response.text()


@pytest.fixture
async def operator(dash: DashboardServer) -> AsyncIterator[Operator]:
    # The cookie jar must send cookies to an IP address (127.0.0.1).
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        yield Operator(http, dash)


async def test_the_session_cookie_is_httponly_strict_and_holds_no_token(
    dash: DashboardServer,
) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{dash.url}/dashboard/sign-in",
            data={"token": dash.admin_token},
            allow_redirects=False,
        ) as response,
    ):
        assert response.status == 303
        assert response.headers["Location"] == "/dashboard"
        header = response.headers["Set-Cookie"]
    cookie = SimpleCookie(header)[COOKIE]
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Strict"
    assert cookie["path"] == "/dashboard"
    assert not cookie["secure"]  # plain http on loopback
    assert dash.admin_token not in header
    assert len(cookie.value) >= 40
    # The server keeps only a hash of the session id.
    assert cookie.value not in repr(dash.dashboard.sessions.__dict__)


async def test_the_cookie_is_secure_behind_https(dash: DashboardServer) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{dash.url}/dashboard/sign-in",
            data={"token": dash.admin_token},
            headers={"X-Forwarded-Proto": "https"},
            allow_redirects=False,
        ) as response,
    ):
        assert SimpleCookie(response.headers["Set-Cookie"])[COOKIE]["secure"] is True


async def test_a_wrong_token_gets_401_and_no_cookie(dash: DashboardServer) -> None:
    async with aiohttp.ClientSession() as http:
        for token in ("kb_admin_wrong", "", "é" * 10, "x" * 10_000):
            async with http.post(
                f"{dash.url}/dashboard/sign-in", data={"token": token}, allow_redirects=False
            ) as response:
                assert response.status == 401
                assert "That master token is not valid" in await response.text()
                assert "Set-Cookie" not in response.headers


@pytest.mark.parametrize("csrf", [None, "", "forged-token"])
async def test_a_change_without_the_sessions_csrf_token_is_refused(
    dash: DashboardServer, operator: Operator, csrf: str | None
) -> None:
    key = await dash.issue("run-1 agent")
    await operator.sign_in()
    extra = {} if csrf is None else {"csrf": csrf}
    for path, data in [
        ("/dashboard/revoke", {"key_id": key.id}),
        ("/dashboard/revoke-matching", {"prefix": "run-1"}),
        ("/dashboard/sign-out", {}),
    ]:
        status, text = await operator.post(path, {**data, **extra})
        assert status == 403, path
        assert "CSRF token is missing or does not match" in text
        assert "Nothing was changed" in text
    assert await dash.status(key.id) == "active"
    assert "Sign out" in await operator.page()  # still signed in
    # With the token, the same request works.
    status, _ = await operator.post("/dashboard/revoke", {"key_id": key.id, "csrf": operator.csrf})
    assert status == 303
    assert await dash.status(key.id) == "revoked"


async def test_another_sessions_csrf_token_is_refused(
    dash: DashboardServer, operator: Operator
) -> None:
    key = await dash.issue("run-1 agent")
    await operator.sign_in()
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        other = Operator(http, dash)
        await other.sign_in()
        status, _ = await operator.post("/dashboard/revoke", {"key_id": key.id, "csrf": other.csrf})
    assert status == 403
    assert await dash.status(key.id) == "active"


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site", "Origin": "null"},
    ],
)
async def test_a_change_from_another_site_is_refused(
    dash: DashboardServer, operator: Operator, headers: dict[str, str]
) -> None:
    key = await dash.issue("run-1 agent")
    await operator.sign_in()
    status, text = await operator.post(
        "/dashboard/revoke", {"key_id": key.id, "csrf": operator.csrf}, **headers
    )
    assert status == 403
    assert "came from another site" in text
    assert await dash.status(key.id) == "active"
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{dash.url}/dashboard/sign-in",
            data={"token": dash.admin_token},
            headers=headers,
            allow_redirects=False,
        ) as response,
    ):
        assert response.status == 403
        assert "Set-Cookie" not in response.headers


async def test_a_change_without_a_session_is_refused(
    dash: DashboardServer, operator: Operator
) -> None:
    key = await dash.issue("run-1 agent")
    status, text = await operator.post("/dashboard/revoke", {"key_id": key.id, "csrf": "x"})
    assert status == 401
    assert "You are not signed in" in text
    assert await dash.status(key.id) == "active"


async def test_an_expired_session_changes_nothing(
    dash: DashboardServer, operator: Operator
) -> None:
    key = await dash.issue("run-1 agent")
    await operator.sign_in()
    started = now_micros() / 1e6
    dash.dashboard.sessions.clock = lambda: started + 12 * 3600 + 1
    status, text = await operator.post(
        "/dashboard/revoke", {"key_id": key.id, "csrf": operator.csrf}
    )
    assert status == 401
    assert "Your session expired" in text
    assert await dash.status(key.id) == "active"
    # Gone for good, even if the clock were to go back.
    dash.dashboard.sessions.clock = lambda: started
    assert "Master token" in await operator.page()


async def test_a_session_lasts_12_hours(dash: DashboardServer, operator: Operator) -> None:
    await operator.sign_in()
    started = now_micros() / 1e6
    dash.dashboard.sessions.clock = lambda: started + 12 * 3600 - 60
    assert "Sign out" in await operator.page()


async def test_a_revoked_master_token_ends_its_sessions(
    dash: DashboardServer, operator: Operator
) -> None:
    store = dash.app[STORE]
    await operator.sign_in(dash.other_token)
    assert "Sign out" in await operator.page()
    for token in await store.list_admin_tokens():
        if token.tenant == "acme":
            await store.revoke_admin_token(token.id, now_micros())
    page = await operator.page()
    assert "no longer accepted" in page
    assert "Master token" in page


async def test_another_tenants_key_cant_be_revoked(
    dash: DashboardServer, operator: Operator
) -> None:
    theirs = await dash.issue("run-1 agent", token=dash.other_token)
    await operator.sign_in()  # tenant "default"
    assert theirs.id not in await operator.page()
    status, text = await operator.post(
        "/dashboard/revoke", {"key_id": theirs.id, "csrf": operator.csrf}
    )
    assert status == 404
    assert "Nothing was changed" in text
    status, _ = await operator.post(
        "/dashboard/revoke-matching", {"prefix": "run-1", "csrf": operator.csrf}
    )
    assert status == 303
    assert "Revoked 0 keys" in await operator.page()
    assert await dash.status(theirs.id, token=dash.other_token) == "active"
    confirm = await operator.page("/dashboard/revoke-matching?prefix=run-1")
    assert theirs.id not in confirm
    assert "No active key has a label starting with" in confirm


async def test_each_tenant_sees_its_own_keys(dash: DashboardServer, operator: Operator) -> None:
    ours = await dash.issue("run-1 ours")
    theirs = await dash.issue("run-1 theirs", token=dash.other_token)
    await operator.sign_in(dash.other_token)
    page = await operator.page()
    assert "Tenant <strong>acme</strong>" in page
    assert theirs.id in page
    assert ours.id not in page
    assert ours.id not in await operator.page("/dashboard/live")
    assert ours.id not in await operator.page("/dashboard/revoke-matching?prefix=run-1")


async def test_sign_out_ends_the_session_on_the_server(
    dash: DashboardServer, operator: Operator
) -> None:
    await operator.sign_in()
    session_id = operator.http.cookie_jar.filter_cookies(URL(f"{dash.url}/dashboard"))[COOKIE].value
    status, _ = await operator.post("/dashboard/sign-out", {"csrf": operator.csrf})
    assert status == 200
    # The old cookie, sent again by someone who kept it, opens nothing.
    async with (
        aiohttp.ClientSession(cookies={COOKIE: session_id}) as http,
        http.get(f"{dash.url}/dashboard") as response,
    ):
        text = await response.text()
    assert "Your session has ended" in text
    assert "Sign out" not in text


@pytest.mark.parametrize(
    "path",
    [
        "/dashboard",
        "/dashboard/live",
        "/dashboard/revoke-matching?prefix=a",
        "/dashboard/static/dashboard.js",
        "/dashboard/static/dashboard.css",
        "/dashboard/no-such-page",
        "/dashboard/",
    ],
)
async def test_every_answer_carries_the_security_headers(
    dash: DashboardServer, operator: Operator, path: str
) -> None:
    await operator.sign_in()
    async with operator.http.get(dash.url + path) as response:
        for name, value in SECURITY_HEADERS.items():
            assert response.headers.get(name) == value, name
    csp = SECURITY_HEADERS["Content-Security-Policy"]
    assert "default-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp
    assert SECURITY_HEADERS["Cache-Control"] == "no-store"


async def test_the_pages_have_no_inline_script_or_style(
    dash: DashboardServer, operator: Operator
) -> None:
    await dash.issue("run-1 agent", metadata={"user": "u1"})
    await operator.sign_in()
    for path in ("/dashboard", "/dashboard/revoke-matching?prefix=run"):
        page = await operator.page(path)
        assert re.findall(r"<script(?![^>]*\bsrc=)", page) == []
        assert " style=" not in page
        assert "<style" not in page
        assert re.findall(r"(?:src|href)=\"(?!/)", page) == []


# What an attacker's review found.


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ({"Content-Type": "application/x-www-form-urlencoded; charset=foo"}, b"token=x"),
        ({"Content-Type": "application/x-www-form-urlencoded; charset=utf-16"}, b"token=x"),
        ({"Content-Type": "multipart/form-data"}, b"--x\r\n"),
        ({"Content-Type": "multipart/form-data; boundary=x"}, b"garbage"),
        (
            {"Content-Type": "application/x-www-form-urlencoded", "Content-Encoding": "gzip"},
            b"not gzip",
        ),
        ({"Content-Type": "application/x-www-form-urlencoded"}, b"token=%ff"),
        ({"Content-Type": "application/x-www-form-urlencoded"}, b"token=a%00b"),
    ],
)
async def test_a_form_that_cant_be_read_one_way_is_a_400(
    dash: DashboardServer, headers: dict[str, str], body: bytes
) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{dash.url}/dashboard/sign-in", data=body, headers=headers) as response,
    ):
        assert response.status == 400
        assert "could not be read" in await response.text()


@pytest.mark.parametrize(
    "cookie", ["keybrake_dashboard=\xff\xfe", "keybrake_dashboard=short", "keybrake_dashboard="]
)
async def test_a_malformed_session_cookie_is_no_session(dash: DashboardServer, cookie: str) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{dash.url}/dashboard", headers={"Cookie": cookie.encode().decode("latin-1")}
        ) as response,
    ):
        assert response.status == 200
        assert "Master token" in await response.text()


async def test_two_session_cookies_are_no_session(
    dash: DashboardServer, operator: Operator
) -> None:
    await operator.sign_in()
    cookie = operator.http.cookie_jar.filter_cookies(URL(dash.url + "/dashboard"))[COOKIE].value
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{dash.url}/dashboard",
            headers={"Cookie": f"{COOKIE}={cookie}; {COOKIE}={'A' * 43}"},
        ) as response,
    ):
        text = await response.text()
    assert "two of them" in text
    assert "Master token" in text


@pytest.mark.parametrize("query", ["?after=%00", "?prefix=%00", "?prefix=%ED%A0%80"])
async def test_filters_no_store_could_hold_are_ignored(
    dash: DashboardServer, operator: Operator, query: str
) -> None:
    await operator.sign_in()
    async with operator.http.get(f"{dash.url}/dashboard{query}") as response:
        assert response.status == 200
    async with operator.http.get(f"{dash.url}/dashboard/revoke-matching{query}") as response:
        assert response.status == 200


async def test_sec_fetch_site_none_is_not_this_origin(
    dash: DashboardServer, operator: Operator
) -> None:
    await operator.sign_in()
    key = await dash.issue("run-none")
    status, _ = await operator.post(
        "/dashboard/revoke",
        {"csrf": operator.csrf, "key_id": key.id},
        **{"Sec-Fetch-Site": "none", "Origin": "null"},
    )
    assert status == 403
    assert await dash.status(key.id) == "active"


async def test_a_run_behind_thousands_of_newer_keys_is_still_found_and_revoked(
    dash: DashboardServer, operator: Operator
) -> None:
    """The label filter is the store's: 5,001 newer decoys don't hide a run from it."""
    await operator.sign_in()
    run = [await dash.issue(f"evil-run-{n}") for n in range(3)]
    store = dash.app[STORE]
    now = now_micros()
    template = await store.get_key("default", run[0].id)
    assert template is not None
    for n in range(5_001):
        await store.insert_key(
            attrs.evolve(
                template,
                id=f"vk_decoy{n:019d}",
                token_hash=f"{n:064x}",
                label=f"decoy-{n}",
                created_at=now + n + 1,
            ),
            idempotency=None,
        )
    page = await operator.page("/dashboard?prefix=evil-")
    assert all(key.id in page for key in run)
    confirm = await operator.page("/dashboard/revoke-matching?prefix=evil-")
    assert "Yes, revoke them" in confirm
    status, _ = await operator.post(
        "/dashboard/revoke-matching", {"csrf": operator.csrf, "prefix": "evil-"}
    )
    assert status == 303
    assert [await dash.status(key.id) for key in run] == ["revoked"] * 3


async def test_a_key_shows_the_budget_it_draws_from(
    dash: DashboardServer, operator: Operator
) -> None:
    await operator.sign_in()
    async with dash.client() as kb:
        budget = await kb.create_budget(cap=5, ttl="10m", label="run-9")
    key = await dash.issue("run-9-refunds", budget=budget.id)
    page = await operator.page("/dashboard")
    assert key.id in page
    assert f"Draws from budget <code>{budget.id}</code>" in page


def _sign_in_head(length: int) -> bytes:
    return (
        b"POST /dashboard/sign-in HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: %d\r\n\r\n" % length
    )


async def test_a_sign_in_form_that_never_arrives_is_a_408(
    dash: DashboardServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No credential is needed to reach the sign-in form: its body has a deadline too."""
    monkeypatch.setattr(deadlines, "BODY_TIMEOUT", 0.3)
    answer = await first_answer(dash.url, _sign_in_head(100), b"token=")
    assert answer.startswith(b"HTTP/1.1 408")
    assert b'"request_timeout"' in answer


async def test_a_sign_in_form_in_two_packets_is_read_whole(dash: DashboardServer) -> None:
    body = f"token={dash.admin_token}".encode()
    half = len(body) // 2
    answer = await first_answer(dash.url, _sign_in_head(len(body)), body[:half], body[half:])
    assert answer.startswith(b"HTTP/1.1 303"), answer[:200]


async def test_a_sign_in_form_without_a_length_is_refused_before_it_is_read(
    dash: DashboardServer,
) -> None:
    """A chunked body says no length: reading it first would let anyone, signed in or not,
    make the server buffer up to the proxy's body limit."""
    answer = await first_answer(
        dash.url,
        b"POST /dashboard/sign-in HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n10000\r\n" + b"a" * 1000,
    )
    assert answer.startswith(b"HTTP/1.1 400")
