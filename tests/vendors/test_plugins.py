"""Vendors are plugins: a package outside keybrake adds a vendor through the entry-point group
``keybrake.vendors`` alone, and the server proxies it, prices it and the SDK calls it.

The package here is written into ``tmp_path`` with its own ``.dist-info`` (as pip would
install it), so nothing in keybrake's tree names it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from keybrake import ProxyRefused, VaultKey
from keybrake.server import running_server
from keybrake.vendors import Vendor, VendorLoadError, get_vendor, installed_vendors
from tests.adversarial.rawhttp import send
from tests.conftest import make_config
from tests.recorder import Recorder

ECHO = '''
"""A third-party vendor: POST /things costs $0.01 per thing; GET /things/{id} is free."""
from decimal import Decimal

from keybrake.vendors import (
    FREE, Outcome, PricingRefusal, Quote, Vendor, parse_json, usd_to_micros,
)


class EchoPricer:
    name = "echo"

    def __init__(self, section, settings):
        self.price = Decimal((section or {}).get("usd_per_thing", "0.01"))

    async def quote(self, request, lookup, counted=None):
        if request.method == "GET":
            return FREE
        if (request.method, request.segments) != ("POST", ("things",)):
            raise PricingRefusal(403, "unpriced_endpoint", "echo prices POST /things only")
        body = parse_json(request)
        if not isinstance(body, dict) or set(body) != {"count"}:
            raise PricingRefusal(400, "bad_request", "send {count: n}")
        return Quote(usd_to_micros(self.price * int(body["count"])))

    def outcome(self, request, quote, body):
        return Outcome(quote.micros)

    def reports(self, request, body):
        return []


class EchoClient:
    def __init__(self, transport, retry):
        self.transport = transport

    async def things(self, count):
        answer = await self.transport.send("POST", "/things", json={"count": count})
        return answer.status


VENDOR = Vendor(
    name="echo",
    title="Echo",
    default_api_base="https://echo.invalid",
    settings={"api_base": "KEYBRAKE_ECHO_API_BASE", "token": "KEYBRAKE_ECHO_TOKEN"},
    authorization=lambda s: f"Token {s['token']}" if s.get("token") else None,
    make_pricer=EchoPricer,
    make_client=EchoClient,
    forwarded_headers=("X-Echo-Version",),
    body_format="json",
    error_shape=lambda status, code, message: ({"echo_error": code}, {"Echo-Retry": "no"}),
)
NOT_A_VENDOR = object()
'''


def _install(site: Path, module: str, entry_points: str) -> None:
    """Write ``module`` and a ``.dist-info`` whose entry points are ``entry_points``."""
    (site / "echo_vendor.py").write_text(textwrap.dedent(module))
    info = site / "echo_vendor-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: echo-vendor\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[keybrake.vendors]\n{entry_points}\n")


@pytest.fixture
def plugin_site(tmp_path: Path) -> Iterator[Path]:
    """A site directory on ``sys.path`` for this test only, the vendor cache reset around it."""
    site = tmp_path / "site"
    site.mkdir()
    sys.path.insert(0, str(site))
    installed_vendors.cache_clear()
    try:
        yield site
    finally:
        sys.path.remove(str(site))
        sys.modules.pop("echo_vendor", None)
        installed_vendors.cache_clear()


def test_keybrakes_own_vendors_are_registered_as_plugins() -> None:
    vendors = installed_vendors()
    assert {"stripe", "twilio"} <= set(vendors)
    for name, vendor in vendors.items():
        assert isinstance(vendor, Vendor)
        assert vendor.name == name


async def test_a_vendor_from_outside_keybrake_is_proxied_priced_and_called(
    plugin_site: Path, tmp_path: Path, recorder: Recorder
) -> None:
    _install(plugin_site, ECHO, "echo = echo_vendor:VENDOR")
    echo = get_vendor("echo")
    assert echo is not None
    config = make_config(
        tmp_path / "kb.db",
        "http://127.0.0.1:9",
        vendors={"echo": {"api_base": recorder.url + "/api", "token": "echo_secret"}},
    )
    assert "echo_secret" not in repr(config)
    async with running_server(config) as url:
        assert config.admin_token is not None
        async with VaultKey(
            "echo",
            ["POST /things"],
            cap="0.05",
            ttl="1m",
            token=config.admin_token,
            api_url=url,
            proxy_url=url,
        ) as vk:
            assert await vk.vendor_client(echo).things(3) == 200
            # The same client by the vendor's name: found at run time, so a type checker
            # doesn't know it (vendor_client is the typed way).
            assert await vk.echo.things(2) == 200  # type: ignore[attr-defined]
            with pytest.raises(ProxyRefused) as refused:
                await vk.vendor_client(echo).things(1)  # $0.06 > $0.05
            assert refused.value.code == "cap_exhausted"
            assert (await vk.client.get_key(vk.id)).spent_today_usd == Decimal("0.05")

            # The vendor's error shape is on keybrake's refusals; its header rules hold.
            auth = {"Authorization": f"Bearer {vk.token}", "Content-Type": "application/json"}
            repeated = await send(
                url, "POST", "/echo/things", [*auth.items()], b'{"count": 1, "count": 0}'
            )
            assert repeated.status == 400
            assert b"\r\nEcho-Retry: no\r\n" in repeated.head
            assert repeated.json()["echo_error"] == "bad_request"
            twice = [*auth.items(), ("X-Echo-Version", "1"), ("x-echo-version", "2")]
            answer = await send(url, "POST", "/echo/things", twice, b'{"count": 0}')
            assert answer.status == 400

    sent = [(m, p, json.loads(b), h) for m, p, h, b in recorder.requests]
    assert [(m, p, b) for m, p, b, _ in sent] == [
        ("POST", "/api/things", {"count": 3}),
        ("POST", "/api/things", {"count": 2}),
    ]
    assert all(h["Authorization"] == "Token echo_secret" for *_, h in sent)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("echo = echo_vendor:NOT_A_VENDOR", "is not a keybrake Vendor"),
        ("other = echo_vendor:VENDOR", "registered as 'other' but is named 'echo'"),
        ("echo = echo_vendor:MISSING", "can't be loaded"),
        ("echo = no_such_module:VENDOR", "can't be loaded"),
    ],
)
def test_a_broken_plugin_is_an_error_not_a_missing_vendor(
    plugin_site: Path, entry: str, message: str
) -> None:
    _install(plugin_site, ECHO, entry)
    with pytest.raises(VendorLoadError, match=message):
        installed_vendors()


def test_keybrake_serve_refuses_to_start_with_a_broken_plugin(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    _install(site, ECHO, "echo = echo_vendor:NOT_A_VENDOR")
    result = subprocess.run(
        [sys.executable, "-m", "keybrake.cli", "serve", "--database", f"sqlite:///{tmp_path}/k.db"],
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "keybrake serve: vendor plugin 'echo' (echo_vendor:NOT_A_VENDOR) is not a keybrake Vendor"
    ]


def test_settings_for_a_vendor_that_is_not_installed_stop_the_server(tmp_path: Path) -> None:
    from keybrake.server.proxy.vendors import PricingFileError, vendors_from_config

    config = make_config(tmp_path / "kb.db", "http://127.0.0.1:9", vendors={"nope": {}})
    with pytest.raises(PricingFileError, match="'nope', which is not installed"):
        vendors_from_config(config)
    typo: dict[str, Any] = {"stripe": {"secret_kee": "sk_test"}}
    with pytest.raises(PricingFileError, match="unknown settings"):
        vendors_from_config(make_config(tmp_path / "kb.db", "http://127.0.0.1:9", vendors=typo))


@pytest.mark.parametrize(
    "base",
    [
        "https://user:pass@api.stripe.com",
        "https://api.stripe.com?key=sk_live",
        "https://api.stripe.com#x",
        "ftp://api.stripe.com",
        "api.stripe.com",
    ],
)
def test_an_api_base_that_could_carry_a_secret_stops_the_server(tmp_path: Path, base: str) -> None:
    from keybrake.server.proxy.vendors import PricingFileError, vendors_from_config

    config = make_config(tmp_path / "kb.db", base)
    with pytest.raises(PricingFileError, match="api_base"):
        vendors_from_config(config)
