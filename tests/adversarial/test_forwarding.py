"""Class 1: what is forwarded is what was decided.

The adversary holds a vault key, has read the proxy's source, and sends requests that two
readers could take two ways. Each is refused before anything is reserved or forwarded, or
reaches the vendor exactly as it was priced.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
from urllib.parse import parse_qsl, quote

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keybrake._common import format_usd
from keybrake.server.http import deadlines
from tests.adversarial.rawhttp import RawAnswer, first_answer, send
from tests.recorder import Proxy, Recorder

FORM = "application/x-www-form-urlencoded"
CREATE = "/stripe/v1/payment_intents"


async def post(
    proxy: Proxy,
    token: str,
    body: bytes,
    *headers: tuple[str, str] | tuple[bytes, bytes],
    target: str = CREATE,
    content_type: str | None = FORM,
) -> RawAnswer:
    sent: list[tuple[str, str] | tuple[bytes, bytes]] = [("Authorization", f"Bearer {token}")]
    if content_type is not None:
        sent.append(("Content-Type", content_type))
    return await send(proxy.url, "POST", target, [*sent, *headers], body)


def refused(answer: RawAnswer, code: str = "bad_request", status: int = 400) -> bool:
    return answer.status == status and answer.json()["code"] == code


async def test_a_second_idempotency_key_does_not_make_a_priced_request_a_free_replay(
    proxy: Proxy, recorder: Recorder
) -> None:
    key = await proxy.issue(daily_usd_cap=15)
    body = b"amount=1000&currency=usd"
    first = await post(proxy, key["token"], body, ("Idempotency-Key", "run-1"))
    assert first.status == 200
    # The same key again, plus another in other letters: one reader takes the first (a
    # replay, free), another the second (a new charge).
    for second in ("Idempotency-Key", "idempotency-key", "IDEMPOTENCY-KEY"):
        answer = await post(
            proxy,
            key["token"],
            body,
            ("Idempotency-Key", "run-1"),
            (second, "run-2"),
        )
        assert refused(answer)
    assert len(recorder.requests) == 1
    assert (await proxy.key(key["id"]))["spent_today_usd"] == "10.00"


async def test_headers_that_matter_are_sent_once(proxy: Proxy, recorder: Recorder) -> None:
    key = await proxy.issue()
    body = b"amount=100&currency=usd"
    # Content-Type and Authorization are sent once by post() already.
    for repeated in (
        [("content-type", FORM)],
        [("Authorization", f"Bearer {key['token']}")],
        [("Stripe-Version", "2024-06-20"), ("stripe-version", "2020-08-27")],
        [("User-Agent", "a"), ("User-Agent", "b")],
        [("X-Stripe-Client-User-Agent", "{}"), ("x-stripe-client-user-agent", "{}")],
    ):
        answer = await post(proxy, key["token"], body, *repeated)
        assert refused(answer), repeated
    assert recorder.requests == []


async def test_header_bytes_outside_visible_ascii_are_refused_and_nothing_stays_reserved(
    proxy: Proxy, recorder: Recorder
) -> None:
    key = await proxy.issue()
    for value in ("agent-\u00e9".encode(), b"agent\x01", "agent\u2028".encode()):
        answer = await post(proxy, key["token"], b"amount=100&currency=usd", (b"User-Agent", value))
        # aiohttp's parser refuses some heads before the proxy sees them: JSON all the same.
        assert refused(answer)
    view = await proxy.key(key["id"])
    assert (view["spent_today_usd"], view["reserved_today_usd"]) == ("0.00", "0.00")
    assert recorder.requests == []


async def test_a_body_another_reader_would_take_another_way_is_refused(
    proxy: Proxy, recorder: Recorder
) -> None:
    key = await proxy.issue()
    for body, content_type in (
        (b'{"amount": 100000, "currency": "usd", "x=": 1}', FORM),  # JSON-looking form
        (b'  ["amount=1"]', FORM),
        (b"amount=100&currency=usd", "application/json"),
        (b"amount=100&currency=usd", f"{FORM}; charset=latin-1"),
        (b"amount=100&currency=usd", "text/plain"),
        (b"amount=100&currency=usd", None),
        (b"amount=100&currency=usd&amount=999999", FORM),  # a repeat the pricer can't trust
        (b"amount=100&currency=usd&%61mount=999999", FORM),  # the same name, escaped
        (b"amount=100&currency=usd&amount%20=999999", FORM),  # a name a reader may trim
        (b"amount=100&currency=usd;amount=999999", FORM),  # ';' is no separator here
        (b"amount=100&&currency=usd", FORM),
        (b"amount=\xff&currency=usd", FORM),
    ):
        answer = await post(proxy, key["token"], body, content_type=content_type)
        assert answer.status == 400, (body, content_type)
    assert recorder.requests == []
    assert (await proxy.key(key["id"]))["reserved_today_usd"] == "0.00"


async def test_a_get_with_a_body_is_refused(proxy: Proxy, recorder: Recorder) -> None:
    key = await proxy.issue()
    answer = await send(
        proxy.url,
        "GET",
        "/stripe/v1/payment_intents",
        [("Authorization", f"Bearer {key['token']}"), ("Content-Type", FORM)],
        b"amount=1",
    )
    assert refused(answer)
    assert recorder.requests == []


async def test_a_replay_is_free_only_when_it_is_the_same_request(
    proxy: Proxy, recorder: Recorder
) -> None:
    key = await proxy.issue(daily_usd_cap=100)
    token = key["token"]
    assert (await post(proxy, token, b"amount=1000&currency=usd", ("Idempotency-Key", "k"))).status
    # The same request again: Stripe answers with the first result, counted once.
    await post(proxy, token, b"amount=1000&currency=usd", ("Idempotency-Key", "k"))
    assert (await proxy.key(key["id"]))["spent_today_usd"] == "10.00"
    # Another amount under the same key is another request: priced (Stripe refuses it, and
    # a refusal gives the reservation back; this recorder accepts it, so it counts).
    await post(proxy, token, b"amount=5000&currency=usd", ("Idempotency-Key", "k"))
    assert (await proxy.key(key["id"]))["spent_today_usd"] == "60.00"
    # So is another path under the same key.
    await post(
        proxy,
        token,
        b"amount=1000&currency=usd",
        ("Idempotency-Key", "k"),
        target="/stripe/v1/charges",
    )
    assert (await proxy.key(key["id"]))["spent_today_usd"] == "70.00"


async def test_requests_with_nobodys_key_are_counted_not_written(
    proxy: Proxy, recorder: Recorder
) -> None:
    for n in range(30):
        answer = await post(proxy, f"vault_key_unknown{n}", b"amount=1&currency=usd")
        assert refused(answer, "invalid_key", 401)
    answer = await send(proxy.url, "GET", "/nosuchvendor/x", [])
    assert answer.status == 404
    async with proxy.client() as kb:
        assert [entry async for entry in kb.audit()] == []
    async with aiohttp.ClientSession() as http, http.get(f"{proxy.url}/metrics") as response:
        metrics = await response.text()
    assert 'keybrake_proxy_requests_total{vendor="stripe",decision="invalid_key"} 30\n' in metrics


# -- the property: what reaches the vendor is what was priced ---------------------------------

_NAMES = st.sampled_from(["description", "metadata[a]", "metadata[b c]", "receipt_email"])
_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], max_codepoint=0x2FFF), max_size=12
)


def _spell(text: str, plus: bool, escape_all: bool) -> str:
    """One of the many ways to write ``text`` in a form."""
    if escape_all:
        return "".join(f"%{b:02X}" for b in text.encode())
    spelled = quote(text, safe="")
    return spelled.replace("%20", "+") if plus else spelled


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    amount=st.integers(min_value=1, max_value=10_000),
    currency=st.sampled_from(["usd", "eur", "jpy"]),
    extra=st.lists(st.tuples(_NAMES, _TEXT), max_size=4, unique_by=lambda p: p[0]),
    plus=st.booleans(),
    escape_all=st.booleans(),
    charset=st.booleans(),
)
async def test_what_reaches_the_vendor_is_what_was_priced(
    proxy: Proxy,
    recorder: Recorder,
    amount: int,
    currency: str,
    extra: list[tuple[str, str]],
    plus: bool,
    escape_all: bool,
    charset: bool,
) -> None:
    recorder.requests.clear()
    recorder.raw_headers.clear()
    recorder.answer = {"id": "pi_x"}  # no amount: the spend settles at the bound
    key = await proxy.issue(daily_usd_cap=1_000_000)
    pairs = [("amount", str(amount)), ("currency", currency), *extra]
    body = "&".join(
        f"{_spell(k, plus, escape_all)}={_spell(v, plus, escape_all)}" for k, v in pairs
    )
    content_type = FORM + ("; charset=UTF-8" if charset else "")
    answer = await post(proxy, key["token"], body.encode(), content_type=content_type)
    assert answer.status == 200
    [(method, target, _, received)] = recorder.requests
    assert (method, target) == ("POST", "/v1/payment_intents")
    # The vendor reads the same pairs the pricer read...
    assert parse_qsl(received.decode("ascii"), keep_blank_values=True) == pairs
    [raw] = recorder.raw_headers
    content_types = [v for k, v in raw if k.lower() == b"content-type"]
    assert content_types == [FORM.encode()]
    # ...and what was counted is that amount at its rate, rounded up.
    rate = {"usd": (1, 100), "eur": (120, 10_000), "jpy": (8, 1000)}[currency]
    micros = -(-amount * rate[0] * 1_000_000 // rate[1])
    view = await proxy.key(key["id"])
    assert view["spent_today_usd"] == format_usd(micros)


async def test_a_compressed_or_unreadable_body_is_refused(proxy: Proxy, recorder: Recorder) -> None:
    key = await proxy.issue()
    for encoding, body in (
        ("gzip", b"amount=100&currency=usd"),  # says gzip, isn't
        ("gzip", gzip.compress(b"amount=100&currency=usd")),
        ("deflate", b"amount=100&currency=usd"),
    ):
        answer = await post(proxy, key["token"], body, ("Content-Encoding", encoding))
        assert refused(answer), encoding
    assert recorder.requests == []


async def test_a_body_that_never_arrives_is_a_408(
    proxy: Proxy, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(deadlines, "BODY_TIMEOUT", 0.2)
    key = await proxy.issue()
    answer = await first_answer(
        proxy.url,
        f"POST /stripe/v1/payment_intents HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {key['token']}\r\nContent-Type: {FORM}\r\n"
        "Content-Length: 100\r\n\r\namount=1".encode(),
    )
    assert answer.startswith(b"HTTP/1.1 408")
    assert b'"request_timeout"' in answer
    assert recorder.requests == []


async def test_a_client_gone_before_its_body_arrived_is_audited_as_such(
    proxy: Proxy, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    key = await proxy.issue()
    host, port = proxy.url.removeprefix("http://").split(":")
    _, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        f"POST /stripe/v1/payment_intents HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {key['token']}\r\nContent-Type: {FORM}\r\n"
        "Content-Length: 100\r\n\r\namount=1".encode()
    )
    await writer.drain()
    await asyncio.sleep(0.2)  # the head is read, the key found, the body awaited
    writer.close()
    await writer.wait_closed()
    entries = await proxy.audit_entries()
    assert [(entry.decision, entry.status) for entry in entries] == [("client_closed", 499)]
    assert recorder.requests == []
    # Nobody to answer, nothing gone wrong: no traceback at ERROR (aiohttp logs one).
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_audit_rows_keep_a_short_path(proxy: Proxy, recorder: Recorder) -> None:
    key = await proxy.issue()
    long_path = "/stripe/v1/" + "a" * 1900
    answer = await send(proxy.url, "GET", long_path, [("Authorization", f"Bearer {key['token']}")])
    assert answer.status == 200
    entries = await proxy.audit_entries()
    assert [entry.decision for entry in entries] == ["allowed"]
    assert len(entries[0].path) == 256


async def test_a_replay_must_carry_the_same_headers(proxy: Proxy, recorder: Recorder) -> None:
    key = await proxy.issue(daily_usd_cap=100)
    body = b"amount=1000&currency=usd"
    for version in ("2024-06-20", "2024-06-20", "1999-01-01"):
        answer = await post(
            proxy, key["token"], body, ("Idempotency-Key", "k"), ("Stripe-Version", version)
        )
        assert answer.status == 200
    # The second is the first again; the third asks Stripe another way: priced.
    assert (await proxy.key(key["id"]))["spent_today_usd"] == "20.00"


async def test_parameter_names_a_lenient_reader_could_fold_are_refused(
    proxy: Proxy, recorder: Recorder
) -> None:
    key = await proxy.issue()
    for name in (b"amount]", b"[amount]", b"amount[", b"am%20ount"):
        answer = await post(proxy, key["token"], b"amount=1&currency=usd&" + name + b"=99999")
        assert refused(answer), name
    assert recorder.requests == []
