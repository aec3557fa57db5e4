"""Django: the middleware in a real project, served by uvicorn (ASGI) and gunicorn (WSGI).

Each server is a subprocess pointed at a ``keybrake serve`` subprocess (localstripe as
Stripe), started once for the module; the tests ask keybrake's API what became of each
request's key.
"""

from __future__ import annotations

import http.client
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpResponse
from django.test import override_settings

from keybrake.integrations.django import VaultKeyMiddleware
from keybrake.sync import Keybrake
from tests.integrations.processes import (
    BIN,
    KeybrakeProcess,
    answers,
    clean_env,
    free_port,
    keybrake_server,
    running,
)

SETTINGS = "tests.integrations.django_project.settings"
PROJECT = "tests.integrations.django_project"
SERVERS = ["uvicorn", "gunicorn"]
LABELS = {"X-User-Id": "alice", "X-Agent-Run-Id": "run-42"}


@attrs.frozen
class Site:
    """The test project, served by ``server`` (uvicorn or gunicorn)."""

    server: str
    url: str
    markers: Path

    def request(
        self, method: str, path: str, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        connection = http.client.HTTPConnection(urlsplit(self.url).netloc, timeout=30)
        try:
            connection.request(method, path, headers=headers or {})
            response = connection.getresponse()
            body = response.read()
            if response.getheader("Content-Type") == "application/json":
                return response.status, json.loads(body)
            return response.status, body.decode()
        finally:
            connection.close()

    def open_stream(self, path: str) -> tuple[http.client.HTTPConnection, Any]:
        connection = http.client.HTTPConnection(urlsplit(self.url).netloc, timeout=30)
        connection.request("GET", path)
        response = connection.getresponse()
        assert response.status == 200
        return connection, response


@pytest.fixture(scope="module")
def keybrake(
    tmp_path_factory: pytest.TempPathFactory, localstripe_url: str
) -> Iterator[KeybrakeProcess]:
    with keybrake_server(tmp_path_factory.mktemp("keybrake"), localstripe_url) as process:
        yield process


def serve(server: str, folder: Path, keybrake_url: str, token: str) -> Any:
    """Serve the project with ``server``, its keybrake at ``keybrake_url``."""
    port = free_port()
    markers = folder / "markers"
    markers.mkdir()
    env = clean_env(
        DJANGO_SETTINGS_MODULE=SETTINGS,
        KEYBRAKE_URL=keybrake_url,
        KEYBRAKE_TOKEN=token,
        MARKERS=str(markers),
    )
    if server == "uvicorn":
        command = [
            str(BIN / "uvicorn"), f"{PROJECT}.asgi:application", "--host", "127.0.0.1",
            "--port", str(port), "--lifespan", "off", "--log-level", "warning",
        ]  # fmt: skip
    else:  # two forked workers: the sync facade's loop and session are per process
        command = [
            str(BIN / "gunicorn"), f"{PROJECT}.wsgi:application", "--bind",
            f"127.0.0.1:{port}", "--workers", "2", "--log-level", "warning",
        ]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    process = running(command, env=env, log=folder / f"{server}.log", ready=answers(url))
    return process, Site(server, url, markers)


@pytest.fixture(scope="module", params=SERVERS)
def site(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    keybrake: KeybrakeProcess,
) -> Iterator[Site]:
    process, the_site = serve(
        request.param, tmp_path_factory.mktemp(request.param), keybrake.url, keybrake.admin_token
    )
    with process:
        yield the_site


@pytest.fixture(scope="module", params=SERVERS)
def dead_site(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    """The project with keybrake down: nothing listens at its URL."""
    dead = f"http://127.0.0.1:{free_port()}"
    process, the_site = serve(
        request.param, tmp_path_factory.mktemp(f"dead-{request.param}"), dead, "kb_admin_x"
    )
    with process:
        yield the_site


@pytest.fixture
def kb(keybrake: KeybrakeProcess) -> Iterator[Keybrake]:
    with Keybrake(keybrake.admin_token, api_url=keybrake.url, proxy_url=keybrake.url) as client:
        yield client


def wait_for_status(kb: Keybrake, key_id: str, status: str, timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        info = kb.get_key(key_id)
        if info.status == status or time.monotonic() > deadline:
            assert info.status == status, f"{key_id} is {info.status}, not {status}"
            return info
        time.sleep(0.02)


def key_ids(kb: Keybrake) -> set[str]:
    return {info.id for info in kb.list_keys()}


@pytest.mark.parametrize(
    ("path", "kind"), [("/tools/pay", "keybrake.sync"), ("/tools/apay", "async")]
)
def test_a_view_gets_a_labelled_key_revoked_after_the_response(
    site: Site, kb: Keybrake, path: str, kind: str
) -> None:
    status, body = site.request("GET", f"{path}?amount=2000", LABELS)
    assert status == 200, body
    assert body["kind"] == kind  # sync view: keybrake.sync.VaultKey; async: keybrake.VaultKey
    assert body["id"].startswith("pi_")
    info = wait_for_status(kb, body["key"], "revoked")
    assert info.label == f"GET {path} x-user-id=alice x-agent-run-id=run-42"
    assert info.metadata == {"x-user-id": "alice", "x-agent-run-id": "run-42"}
    assert info.spent_today_usd == 20  # the call went through the proxy with this key
    assert info.allowed_endpoints == ("/v1/payment_intents", "/v1/payment_intents/*")


def test_the_longest_prefix_wins(site: Site, kb: Keybrake) -> None:
    status, body = site.request("GET", "/tools/special/pay?amount=500", {"X-User-Id": "bob"})
    assert status == 200, body
    info = wait_for_status(kb, body["key"], "revoked")
    assert info.label == "special x-user-id=bob"
    assert info.metadata == {"x-user-id": "bob", "team": "payments"}
    assert info.allowed_endpoints == ("POST /v1/payment_intents",)
    assert info.daily_usd_cap == 7


def test_outside_every_prefix_there_is_no_key(site: Site, kb: Keybrake) -> None:
    before = key_ids(kb)
    assert site.request("GET", "/health") == (200, {"has_key": False})
    assert site.request("GET", "/tools/nowhere")[0] == 404  # under a prefix, but no view
    assert key_ids(kb) == before


def streaming_path(site: Site, go: str) -> str:
    """The stream that reaches the client chunk by chunk on this server.

    Django buffers a sync iterator under ASGI and an async one under WSGI (both read to
    the end before the first byte is sent), so only the other kind streams.
    """
    view = "astream" if site.server == "uvicorn" else "stream"
    return f"/tools/{view}?go={go}"


def test_a_stream_keeps_its_key_until_the_last_chunk(site: Site, kb: Keybrake) -> None:
    connection, response = site.open_stream(streaming_path(site, "go-half"))
    try:
        key_id = response.readline().decode().strip()
        assert response.readline() == b"-\n"  # the stream is under way
        assert kb.get_key(key_id).status == "active"
        (site.markers / "go-half").touch()
        last = response.read().decode().split()[-1]
    finally:
        connection.close()
    assert last.startswith("pi_")  # made with the key after the first chunks were sent
    info = wait_for_status(kb, key_id, "revoked")
    assert info.spent_today_usd == 3


def test_a_client_leaving_mid_stream_revokes_the_key(site: Site, kb: Keybrake) -> None:
    connection, response = site.open_stream(streaming_path(site, "go-never"))
    key_id = response.readline().decode().strip()
    assert kb.get_key(key_id).status == "active"
    response.close()  # the socket closes with its last user
    connection.close()
    # Well before the stream would end on its own (views.STREAM_WAIT):
    wait_for_status(kb, key_id, "revoked", timeout=5.0)


@pytest.mark.parametrize("view", ["stream", "astream"])
def test_a_buffered_stream_is_revoked_after_it_ends(site: Site, kb: Keybrake, view: str) -> None:
    (site.markers / f"go-{view}").touch()
    connection, response = site.open_stream(f"/tools/{view}?go=go-{view}")
    try:
        lines = response.read().decode().split()
    finally:
        connection.close()
    assert lines[-1].startswith("pi_")
    wait_for_status(kb, lines[0], "revoked")


@pytest.mark.parametrize("path", ["/tools/pay", "/tools/apay"])
def test_issuance_failing_answers_503_without_calling_the_view(dead_site: Site, path: str) -> None:
    status, body = dead_site.request("GET", f"{path}?amount=100")
    assert status == 503
    assert body == {
        "code": "vault_key_unavailable",
        "message": "a stripe vault key for this request could not be issued; try again later",
    }
    assert not (dead_site.markers / path.rsplit("/", 1)[1]).exists()  # the view never ran
    assert dead_site.request("GET", "/health") == (200, {"has_key": False})


@pytest.fixture
def configure(monkeypatch: pytest.MonkeyPatch) -> Callable[..., VaultKeyMiddleware]:
    """Make the middleware as Django does at startup, with these settings."""
    if not settings.configured:
        settings.configure(ROOT_URLCONF=f"{PROJECT}.urls")
    for name in [n for n in os.environ if n.startswith("KEYBRAKE_")]:
        monkeypatch.delenv(name)

    def make(**overrides: Any) -> VaultKeyMiddleware:
        with override_settings(**{"KEYBRAKE_TOKEN": "kb_admin_x", **overrides}):
            return VaultKeyMiddleware(lambda request: HttpResponse())

    return make


GOOD = {"path_prefix": "/a/", "vendor": "stripe", "endpoints": ["/v1/refunds"], "cap": 5, "ttl": 60}


@pytest.mark.parametrize(
    ("entries", "error"),
    [
        ({"path_prefix": "/a/"}, r"must be a list of dicts"),
        (["/a/"], r"KEYBRAKE_VAULT_KEYS\[0\] must be a dict"),
        ([{k: v for k, v in GOOD.items() if k != "ttl"}], r"\[0\]: missing ttl"),
        ([GOOD, {**GOOD, "path_prefix": "/b/", "capp": 5}], r"\[1\]: unknown capp"),
        ([{**GOOD, "endpoints": ["no-slash"]}], r"\[0\]: endpoints: .*no-slash"),
        ([{**GOOD, "cap": 1.5}], r"\[0\]: cap"),
        ([{**GOOD, "path_prefix": "a/"}], r"path_prefix must start with '/'"),
        ([GOOD, GOOD], r"path_prefix /a/ given twice"),
        ([{**GOOD, "label_headers": "X-User-Id"}], r"label_headers must be a list"),
    ],
)
def test_a_bad_entry_fails_at_startup(
    configure: Callable[..., VaultKeyMiddleware], entries: object, error: str
) -> None:
    with pytest.raises(ImproperlyConfigured, match=error):
        configure(KEYBRAKE_VAULT_KEYS=entries)


def test_no_master_token_fails_at_startup(configure: Callable[..., VaultKeyMiddleware]) -> None:
    with pytest.raises(ImproperlyConfigured, match="needs a master token"):
        configure(KEYBRAKE_VAULT_KEYS=[GOOD], KEYBRAKE_TOKEN=None)
    with pytest.raises(ImproperlyConfigured, match="api_url"):
        configure(KEYBRAKE_VAULT_KEYS=[GOOD], KEYBRAKE_URL="ftp://x")


def test_settings_win_over_the_environment(
    configure: Callable[..., VaultKeyMiddleware], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEYBRAKE_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("KEYBRAKE_TOKEN", "kb_admin_env")
    middleware = configure(
        KEYBRAKE_VAULT_KEYS=[GOOD, {**GOOD, "path_prefix": "/a/b/"}],
        KEYBRAKE_URL="http://127.0.0.1:2",
    )
    assert repr(middleware) == "<VaultKeyMiddleware /a/b/, /a/>"  # longest prefix first
    config = middleware.sync_client.config
    assert (config.token, config.api_url, config.proxy_url) == (
        "kb_admin_x",
        "http://127.0.0.1:2",
        "http://127.0.0.1:2",
    )
