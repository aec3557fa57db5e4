"""The issuance API under odd input: every query value, body and header is a 4xx with a
``code`` (``400 bad_request`` naming the ``param`` where there is one), never a 500."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from yarl import URL

from keybrake.server import running_server
from tests.adversarial.rawhttp import send
from tests.conftest import RunningServer, make_config
from tests.pg import migrated_schema
from tests.server.test_seed_flow import SEED_BODY


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def any_server(
    request: pytest.FixtureRequest, tmp_path: Path, localstripe_url: str
) -> AsyncIterator[RunningServer]:
    """A keybrake server on each store: PostgreSQL text can't hold what SQLite takes (NUL)."""
    async with contextlib.AsyncExitStack() as stack:
        db_path = tmp_path / "keybrake.db"
        if request.param == "sqlite":
            url = f"sqlite:///{db_path}"
        else:
            url = await stack.enter_async_context(migrated_schema())
        config = make_config(db_path, localstripe_url, database_url=url)
        async with running_server(config) as base_url:
            assert config.admin_token is not None
            yield RunningServer(base_url, config.admin_token, db_path, config)


async def call(
    server: RunningServer,
    method: str,
    target: str | URL,
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    """One request; ``target`` as a string is sent already encoded, byte for byte."""
    url = target if isinstance(target, URL) else URL(server.url + target, encoded=True)
    auth = {"Authorization": f"Bearer {server.admin_token}", **(headers or {})}
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, url, data=body, headers=auth) as response,
    ):
        assert response.content_type == "application/json"
        data: dict[str, Any] = await response.json()
        return response.status, data


@pytest.mark.parametrize(
    ("target", "param"),
    [
        ("/v1/keys?limit=abc", "limit"),
        ("/v1/keys?limit=-1", "limit"),
        ("/v1/keys?limit=1e9", "limit"),
        ("/v1/keys?limit=0", "limit"),
        ("/v1/keys?limit=%C2%B2", "limit"),  # "²" is a digit to str.isdigit, not to int()
        ("/v1/keys?limit=" + "9" * 5000, "limit"),  # more digits than int() reads
        ("/v1/keys?limit=1&limit=2", "limit"),
        ("/v1/keys?status=x", "status"),
        ("/v1/keys?status=active&status=revoked", "status"),
        ("/v1/keys?starting_after=" + "a" * 5000, "starting_after"),
        ("/v1/audit?limit=%C2%B2", "limit"),
        ("/v1/audit?starting_after=%C2%B2", "starting_after"),
        ("/v1/audit?starting_after=99999999999999999999", "starting_after"),  # past int64
        ("/v1/audit?starting_after=-3", "starting_after"),
        ("/v1/audit?key_id=a&key_id=b", "key_id"),
        ("/v1/audit?decision=%1B%5B2J", "decision"),
        ("/v1/usage?day=2026-01-01%0A", "day"),
        ("/v1/usage?day=%D9%A2%D9%A0%D9%A2%D9%A6-01-01", "day"),  # Arabic-Indic digits
        ("/v1/usage?day=2026-13-45", "day"),
        ("/v1/usage?starting_after=2026-01-01:", "starting_after"),
        ("/v1/usage?starting_after=x:vk_1", "starting_after"),
        ("/v1/usage?limit=500", "limit"),
    ],
)
async def test_an_odd_query_value_is_a_400_naming_its_param(
    server: RunningServer, target: str, param: str
) -> None:
    status, body = await call(server, "GET", target)
    assert (status, body["code"], body.get("param")) == (400, "bad_request", param)


@pytest.mark.parametrize(
    ("target", "param"),
    [
        ("/v1/keys?starting_after=vk_%00", "starting_after"),
        ("/v1/audit?key_id=vk_%00", "key_id"),
        ("/v1/usage?key_id=%00", "key_id"),
        ("/v1/usage?starting_after=2026-01-01:vk_%00", "starting_after"),
    ],
)
async def test_a_nul_in_a_query_value_is_a_400_on_every_store(
    any_server: RunningServer, target: str, param: str
) -> None:
    status, body = await call(any_server, "GET", target)
    assert (status, body["code"], body.get("param")) == (400, "bad_request", param)


async def test_ordinary_queries_still_answer(server: RunningServer) -> None:
    for target in (
        "/v1/keys?limit=100&status=active&starting_after=",
        "/v1/audit?limit=1&starting_after=&key_id=&decision=",
        "/v1/audit?starting_after=9223372036854775807",
        "/v1/usage?day=2026-02-28&starting_after=2026-02-28:vk_1&key_id=vk_1",
    ):
        status, body = await call(server, "GET", target)
        assert (status, body["data"]) == (200, [])


def with_nested(json_object: str, depth: int) -> str:
    """A JSON object's text with a field ``nested``: arrays ``depth`` deep (json.dumps can't)."""
    nested = '"nested": ' + "[" * depth + "]" * depth
    return "{" + nested + ("}" if json_object == "{}" else ", " + json_object[1:])


DEEP = 100_000
DEEP_BODIES = {
    "a deep array": b"[" * DEEP + b"]" * DEEP,
    "a deep array, never closed": b"[" * DEEP,
    "deep metadata": b'{"metadata": ' + b'{"a": ' * DEEP + b"1" + b"}" * (DEEP + 1),
    # Under json's own recursion limit, deep enough to trouble whatever walks the result.
    "an unknown field 900 deep": with_nested(json.dumps(SEED_BODY), 900).encode(),
}


@pytest.mark.parametrize("case", DEEP_BODIES)
async def test_deeply_nested_json_is_a_400(server: RunningServer, case: str) -> None:
    key_id = await issued_key(server)
    for target in ("/v1/keys", f"/v1/keys/{key_id}/refresh"):
        status, body = await call(server, "POST", target, body=DEEP_BODIES[case])
        assert (status, body["code"]) == (400, "bad_request")


async def issued_key(server: RunningServer) -> str:
    status, body = await call(server, "POST", "/v1/keys", body=json.dumps(SEED_BODY).encode())
    assert status == 201
    return str(body["id"])


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"expires_in": 10**30}, "expires_in"),  # past what a timedelta holds
        ({"expires_in": "99999999999999d"}, "expires_in"),
        ({"max_lifetime": 10**30}, "max_lifetime"),
    ],
)
async def test_odd_field_values_are_a_400(
    server: RunningServer, change: dict[str, Any], param: str | None
) -> None:
    raw = json.dumps({**SEED_BODY, **change}).encode()
    status, body = await call(server, "POST", "/v1/keys", body=raw)
    assert (status, body["code"], body.get("param")) == (400, "bad_request", param)
    if "expires_in" in change:
        key_id = await issued_key(server)
        refresh = json.dumps(change).encode()
        status, body = await call(server, "POST", f"/v1/keys/{key_id}/refresh", body=refresh)
        assert (status, body["code"], body.get("param")) == (400, "bad_request", param)


@pytest.mark.parametrize("change", [{"label": "run\x0042"}, {"metadata": {"run": "4\x002"}}])
async def test_a_nul_in_a_body_string_is_a_400_on_every_store(
    any_server: RunningServer, change: dict[str, Any]
) -> None:
    raw = json.dumps({**SEED_BODY, **change}).encode()
    status, body = await call(any_server, "POST", "/v1/keys", body=raw)
    assert (status, body["code"]) == (400, "bad_request")


async def test_header_bytes_that_are_not_ascii_are_refused_not_a_500(
    server: RunningServer,
) -> None:
    body = json.dumps(SEED_BODY).encode()
    answer = await send(
        server.url,
        "POST",
        "/v1/keys",
        [
            (b"Authorization", f"Bearer {server.admin_token}".encode()),
            (b"Content-Type", b"application/json"),
            (b"Idempotency-Key", b"run-\xff"),
        ],
        body,
    )
    assert (answer.status, answer.json()["code"]) == (400, "bad_request")
    answer = await send(server.url, "GET", "/v1/keys", [(b"Authorization", b"Bearer kb_\xff")])
    assert (answer.status, answer.json()["code"]) == (401, "unauthorized")


@pytest.mark.parametrize(("method", "suffix"), [("GET", ""), ("DELETE", ""), ("POST", "/refresh")])
async def test_a_key_id_no_key_can_have_is_a_404_on_every_store(
    any_server: RunningServer, method: str, suffix: str
) -> None:
    for key_id in ("vk_%00", "vk_" + "a" * 5000):
        status, body = await call(
            any_server, method, f"/v1/keys/{key_id}{suffix}", body=b'{"expires_in": "5m"}'
        )
        assert (status, body["code"]) == (404, "key_not_found")
        assert len(body["message"]) < 300  # the id is not echoed whole


# --- fuzzing: whatever comes, a 4xx with a code or a success, never a 5xx

QUERY_PARAMS = {
    "/v1/keys": ["limit", "status", "starting_after"],
    "/v1/audit": ["limit", "starting_after", "key_id", "decision"],
    "/v1/usage": ["limit", "day", "starting_after", "key_id"],
}
ODD_VALUES = ["", "0", "-1", "1e9", "²", "٣", "9" * 40, "2026-02-30", "2026-01-01:", "\x00"]
query_values = st.one_of(
    st.text(max_size=30),
    st.integers().map(str),
    st.sampled_from(ODD_VALUES),
)
FUZZ = settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def assert_answer(status: int, body: dict[str, Any]) -> None:
    assert status < 500, body
    if status >= 400:
        assert isinstance(body.get("code"), str), body


@FUZZ
@given(
    path=st.sampled_from(sorted(QUERY_PARAMS)),
    pairs=st.lists(
        st.tuples(
            st.sampled_from(sorted({n for ns in QUERY_PARAMS.values() for n in ns})),
            query_values,
        ),
        max_size=5,
    ),
)
@example(path="/v1/keys", pairs=[("limit", "²")])
@example(path="/v1/audit", pairs=[("starting_after", "9" * 40)])
async def test_fuzzed_queries_never_answer_a_5xx(
    server: RunningServer, path: str, pairs: list[tuple[str, str]]
) -> None:
    url = URL(server.url).with_path(path).with_query(pairs)
    assert_answer(*await call(server, "GET", url))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
FIELDS = [*SEED_BODY, "max_lifetime", "metadata", "stripe_account", "label"]


@FUZZ
@given(
    changes=st.dictionaries(st.sampled_from(FIELDS), json_values | st.text(), max_size=4),
    dropped=st.sets(st.sampled_from(sorted(SEED_BODY)), max_size=2),
    depth=st.integers(min_value=0, max_value=2000),
)
@example(changes={"expires_in": 10**20}, dropped=set(), depth=0)
@example(changes={}, dropped=set(), depth=900)
async def test_fuzzed_bodies_never_answer_a_5xx(
    server: RunningServer, changes: dict[str, Any], dropped: set[str], depth: int
) -> None:
    data = {k: v for k, v in {**SEED_BODY, **changes}.items() if k not in dropped}
    raw = with_nested(json.dumps(data), depth).encode()
    status, body = await call(server, "POST", "/v1/keys", body=raw)
    assert_answer(status, body)
    if status == 201:
        refresh = json.dumps({"expires_in": changes.get("expires_in", "1m")}).encode()
        assert_answer(*await call(server, "POST", f"/v1/keys/{body['id']}/refresh", body=refresh))


@FUZZ
@given(
    opening=st.sampled_from([b"[", b"{", b'{"a":', b'["\\"', b"[1,"]),
    depth=st.integers(min_value=0, max_value=5000),
    rest=st.binary(max_size=64) | st.text(max_size=64).map(str.encode),
)
@example(opening=b"[", depth=5000, rest=b"")
async def test_fuzzed_bytes_as_a_body_never_answer_a_5xx(
    server: RunningServer, opening: bytes, depth: int, rest: bytes
) -> None:
    assert_answer(*await call(server, "POST", "/v1/keys", body=opening * depth + rest))
