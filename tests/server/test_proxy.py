"""The proxy refuses what it must, before anything reaches the vendor."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import aiohttp
import pytest

from keybrake import Keybrake
from keybrake.server import running_server
from tests.conftest import make_config
from tests.recorder import Proxy, Recorder, raw_request


@pytest.mark.parametrize(
    "path",
    [
        "/stripe//v1/payment_intents",
        "/stripe/v1/payment_intents/",
        "/stripe/v1/payment_intents/..",
        "/stripe/v1/./payment_intents",
        "/stripe/v1/payment_intents/%2e%2e",
        "/stripe/v1/payment_intents/%2E",
        "/stripe/v1/payment_intents/a%2Fb",
        "/stripe/v1/payment_intents/a%5Cb",
        "/stripe/v1/payment_intents/a\\b",
        "/stripe/v1/payment_intents/a%00b",
        "/stripe/v1/payment_intents/a%0Ab",
        "/stripe/v1/payment_intents/a%zz",
        "/stripe/v1/payment_intents/a%",
    ],
)
async def test_unsafe_paths_are_400_and_not_forwarded(
    proxy: Proxy, recorder: Recorder, path: str
) -> None:
    key = await proxy.issue()
    status, body = await raw_request(proxy.url, "GET", path, token=key["token"])
    assert status == 400
    assert body["code"] == "bad_request"
    assert body["error"]["code"] == "bad_request"
    assert recorder.requests == []


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"amount=abc&currency=usd", "bad_request"),
        (b"amount=-5&currency=usd", "bad_request"),
        (b"amount=0&currency=usd", "bad_request"),
        (b"amount=1.5&currency=usd", "bad_request"),
        (b"amount=%EF%BC%91&currency=usd", "bad_request"),  # a full-width digit one
        (b"amount=1&amount=99999&currency=usd", "bad_request"),
        (b"currency=usd", "bad_request"),
        (b"amount=100", "unsupported_currency"),
        (b"amount=100&currency=xyz", "unsupported_currency"),
        (b"\xff\xfe", "bad_request"),
        (b"a=1&&&=", "bad_request"),
    ],
)
async def test_malformed_priced_bodies_are_400_and_not_forwarded(
    proxy: Proxy, recorder: Recorder, body: bytes, code: str
) -> None:
    key = await proxy.issue()
    status, answer = await raw_request(
        proxy.url, "POST", "/stripe/v1/payment_intents", token=key["token"], body=body
    )
    assert (status, answer["code"]) == (400, code)
    assert recorder.requests == []
    assert await proxy.spend(key["id"]) == "0.00"


async def test_json_body_to_stripe_is_400(proxy: Proxy, recorder: Recorder) -> None:
    key = await proxy.issue()
    status, answer = await raw_request(
        proxy.url,
        "POST",
        "/stripe/v1/payment_intents",
        token=key["token"],
        body=b'{"amount": 100, "currency": "usd"}',
        content_type="application/json",
    )
    assert (status, answer["code"]) == (400, "bad_request")
    assert recorder.requests == []


async def test_huge_body_is_413_and_not_forwarded(proxy: Proxy, recorder: Recorder) -> None:
    key = await proxy.issue()
    body = b"amount=100&currency=usd&metadata[x]=" + b"a" * 10_000
    status, answer = await raw_request(
        proxy.url, "POST", "/stripe/v1/payment_intents", token=key["token"], body=body
    )
    assert (status, answer["code"]) == (413, "body_too_large")
    assert recorder.requests == []


async def test_wrong_vendor_is_403(proxy: Proxy, recorder: Recorder) -> None:
    key = await proxy.issue(vendor="twilio")
    status, answer = await raw_request(proxy.url, "GET", "/stripe/v1/charges", token=key["token"])
    assert (status, answer["code"]) == (403, "vendor_mismatch")
    status, answer = await raw_request(proxy.url, "GET", "/paypal/v1/x", token=key["token"])
    assert (status, answer["code"]) == (404, "unknown_vendor")
    assert recorder.requests == []


async def test_unpriced_money_moving_post_is_403(proxy: Proxy, recorder: Recorder) -> None:
    key = await proxy.issue()
    status, answer = await raw_request(
        proxy.url, "POST", "/stripe/v1/subscriptions", token=key["token"], body=b"customer=cus_1"
    )
    assert (status, answer["code"]) == (403, "unpriced_endpoint")
    assert recorder.requests == []


async def test_method_in_pattern_is_enforced(proxy: Proxy, recorder: Recorder) -> None:
    key = await proxy.issue(allowed_endpoints=["GET /v1/payment_intents/*"])
    status, _ = await raw_request(
        proxy.url, "GET", "/stripe/v1/payment_intents/pi_1", token=key["token"]
    )
    assert status == 200
    status, answer = await raw_request(
        proxy.url, "POST", "/stripe/v1/payment_intents/pi_1", token=key["token"], body=b""
    )
    assert (status, answer["code"]) == (403, "endpoint_not_allowed")
    assert len(recorder.requests) == 1


async def test_vendor_gets_the_real_secret_not_the_vault_key(
    proxy: Proxy, recorder: Recorder
) -> None:
    key = await proxy.issue()
    status, _ = await raw_request(
        proxy.url,
        "POST",
        "/stripe/v1/payment_intents?",
        token=key["token"],
        body=b"amount=100&currency=usd",
    )
    assert status == 200
    [(method, path, headers, body)] = recorder.requests
    assert (method, path, body) == ("POST", "/v1/payment_intents", b"amount=100&currency=usd")
    assert headers["Authorization"] == "Bearer sk_test_keybrake"
    assert key["token"] not in str(headers)


async def test_concurrent_requests_never_pass_the_cap(proxy: Proxy, recorder: Recorder) -> None:
    key = await proxy.issue(daily_usd_cap="10")
    auth = {"Authorization": f"Bearer {key['token']}"}

    async def one(http: aiohttp.ClientSession) -> int:
        async with http.post(
            f"{proxy.url}/stripe/v1/payment_intents",
            data={"amount": "100", "currency": "usd"},
            headers=auth,
        ) as response:
            await response.read()
            return response.status

    async with aiohttp.ClientSession() as http:
        statuses = await asyncio.gather(*(one(http) for _ in range(100)))
    assert statuses.count(200) == 10
    assert statuses.count(429) == 90
    assert len(recorder.requests) == 10
    assert await proxy.spend(key["id"]) == "10.00"


async def test_unreachable_upstream_is_502_and_releases_the_reservation(
    tmp_path: Path,
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    config = make_config(tmp_path / "kb.db", f"http://127.0.0.1:{closed_port}")
    async with running_server(config) as url:
        assert config.admin_token is not None
        server = Proxy(url, config.admin_token)
        key = await server.issue(daily_usd_cap="1")
        status, answer = await raw_request(
            url,
            "POST",
            "/stripe/v1/payment_intents",
            token=key["token"],
            body=b"amount=100&currency=usd",
        )
        assert (status, answer["code"]) == (502, "upstream_unavailable")
        assert answer["error"]["type"] == "api_error"
        assert await server.spend(key["id"]) == "0.00"


async def test_vendor_cookies_are_neither_kept_nor_passed_on(
    tmp_path: Path, recorder: Recorder
) -> None:
    # By host name: a cookie jar would keep nothing from a bare IP address anyway.
    upstream = recorder.url.replace("127.0.0.1", "localhost")
    recorder.cookie = "session=secret-of-key-a; Path=/"
    config = make_config(tmp_path / "kb.db", upstream)
    async with running_server(config) as url:
        assert config.admin_token is not None
        admin = {"Authorization": f"Bearer {config.admin_token}"}
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
            for _ in range(2):
                async with http.post(
                    f"{url}/v1/keys",
                    json={
                        "vendor": "stripe",
                        "allowed_endpoints": ["/v1/**"],
                        "daily_usd_cap": 1,
                        "expires_in": "1m",
                    },
                    headers=admin,
                ) as issued:
                    token = (await issued.json())["token"]
                async with http.get(
                    f"{url}/stripe/v1/customers", headers={"Authorization": f"Bearer {token}"}
                ) as response:
                    assert response.status == 200
                    assert "Set-Cookie" not in response.headers
    assert [r[2].get("Cookie") for r in recorder.requests] == [None, None]


async def test_a_vendor_base_url_keeps_its_path(tmp_path: Path, recorder: Recorder) -> None:
    config = make_config(tmp_path / "kb.db", recorder.url + "/gateway/stripe/")
    async with running_server(config) as url:
        assert config.admin_token is not None
        async with Keybrake(config.admin_token, api_url=url, proxy_url=url) as kb:
            issued = await kb.issue_key("stripe", ["/v1/**"], cap=1, ttl="1m")
        async with (
            aiohttp.ClientSession() as http,
            http.get(
                f"{url}/stripe/v1/customers?limit=3",
                headers={"Authorization": f"Bearer {issued.token}"},
            ) as response,
        ):
            assert response.status == 200
    assert [r[1] for r in recorder.requests] == ["/gateway/stripe/v1/customers?limit=3"]
