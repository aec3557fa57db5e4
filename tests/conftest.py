"""Real servers on loopback: localstripe as the Stripe upstream and the keybrake server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Generator, Iterator, Mapping
from pathlib import Path

import attrs
import pytest

from keybrake import Keybrake, RetryPolicy
from keybrake._localstripe import localstripe_server
from keybrake.server import ServerConfig, running_server
from keybrake.server.app import generate_admin_token
from keybrake.server.stores.base import Store
from keybrake.server.stores.postgres.store import PostgresStore
from keybrake.server.stores.sqlite.store import SQLiteStore
from tests import services
from tests.pg import migrated_schema
from tests.prism import prism_twilio_server

pytest_plugins = ["tests.recorder"]


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test that uses a service's fixture (``twilio_server`` uses ``prism_url``)."""
    for item in items:
        for fixture in getattr(item, "fixturenames", ()):
            marker = services.FIXTURE_MARKERS.get(fixture)
            if marker is not None and item.get_closest_marker(marker) is None:
                item.add_marker(marker)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    """Let :func:`tests.services.require` see which test is running."""
    services.current = item
    try:
        return (yield)
    finally:
        services.current = None


SEED_ENDPOINTS = ["/v1/payment_intents", "/v1/payment_intents/*"]


TWILIO_ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
TWILIO_AUTH_TOKEN = "twilio-real-auth-token"


@pytest.fixture(scope="session")
def localstripe_url() -> Iterator[str]:
    with localstripe_server() as url:
        yield url


@pytest.fixture(scope="session")
def prism_url() -> Iterator[str]:
    with prism_twilio_server() as url:
        yield url


@attrs.frozen
class RunningServer:
    url: str
    admin_token: str
    db_path: Path
    config: ServerConfig

    def client(self, *, retry: RetryPolicy | None = None) -> Keybrake:
        return Keybrake(self.admin_token, api_url=self.url, proxy_url=self.url, retry=retry)


#: Where the tests' calls fetch their TwiML: the operator's own, which the Twilio pricer
#: trusts once a pricing file says so (``twilio.twiml_urls``).
TWIML_URLS = ["https://example.com/", "http://example.com/"]


def twiml_pricing_file(folder: Path) -> str:
    """A pricing file in ``folder`` that trusts :data:`TWIML_URLS`."""
    path = folder / "pricing-twiml.json"
    path.write_text(json.dumps({"twilio": {"twiml_urls": TWIML_URLS}}))
    return str(path)


def make_config(
    db_path: Path,
    stripe_url: str,
    *,
    vendors: Mapping[str, Mapping[str, str]] | None = None,
    **overrides: object,
) -> ServerConfig:
    """A test server's configuration: Stripe at ``stripe_url``, Twilio's test credentials,
    and ``vendors``' settings merged over those (``{"twilio": {"api_base": url}}``)."""
    settings: dict[str, dict[str, str]] = {
        "stripe": {"secret_key": "sk_test_keybrake", "api_base": stripe_url},
        "twilio": {"account_sid": TWILIO_ACCOUNT_SID, "auth_token": TWILIO_AUTH_TOKEN},
    }
    for name, more in (vendors or {}).items():
        settings[name] = {**settings.get(name, {}), **more}
    values: dict[str, object] = {
        "database_url": f"sqlite:///{db_path}",
        "admin_token": generate_admin_token(),
        "vendor_settings": settings,
        **overrides,
    }
    return ServerConfig(**values)  # type: ignore[arg-type]


@pytest.fixture
async def server(tmp_path: Path, localstripe_url: str) -> AsyncIterator[RunningServer]:
    db_path = tmp_path / "keybrake.db"
    config = make_config(db_path, localstripe_url)
    async with running_server(config) as url:
        assert config.admin_token is not None
        yield RunningServer(url, config.admin_token, db_path, config)


@pytest.fixture
async def twilio_server(tmp_path: Path, prism_url: str) -> AsyncIterator[RunningServer]:
    """A keybrake server whose Twilio upstream is Prism serving Twilio's own spec."""
    db_path = tmp_path / "keybrake-twilio.db"  # its own file: one server per SQLite file
    config = make_config(
        db_path,
        "http://127.0.0.1:9",
        vendors={"twilio": {"api_base": prism_url}},
        pricing_file=twiml_pricing_file(tmp_path),
    )
    async with running_server(config) as url:
        assert config.admin_token is not None
        yield RunningServer(url, config.admin_token, db_path, config)


@pytest.fixture
async def kb(server: RunningServer) -> AsyncIterator[Keybrake]:
    async with server.client(retry=RetryPolicy(attempts=3, initial_wait=0.01)) as client:
        yield client


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """Each store, open, on a database of its own: SQLite in a file, PostgreSQL in a schema."""
    if request.param == "sqlite":
        the_store: Store = SQLiteStore(tmp_path / "kb.db")
        await the_store.open()
        yield the_store
        await the_store.close()
    else:
        async with migrated_schema() as url:
            # Rate limits on the tests' clock (a serving store times them by the database's).
            the_store = PostgresStore(url, database_clock=False)
            await the_store.open()
            yield the_store
            await the_store.close()
