"""The one reading of a proxy request, piece by piece."""

from __future__ import annotations

import pytest

from keybrake.server.proxy.shaping import (
    FORM,
    BadRequest,
    HeaderRules,
    canonical_form,
    canonical_json,
    canonical_query,
    check_headers,
    fingerprint,
    forwarded_headers,
)
from keybrake.vendors import PricingRefusal, VendorRequest, parse_json
from keybrake.vendors.stripe import VENDOR as STRIPE

RULES = HeaderRules.for_vendor(STRIPE)


@pytest.mark.parametrize(
    ("body", "sent"),
    [
        (b"amount=100&currency=usd", b"amount=100&currency=usd"),
        (b"description=a+b%2Bc", b"description=a%20b%2Bc"),
        # An escape a strict reader would choke on reaches the vendor as the literal text
        # the pricer read.
        (b"metadata[x]=%zz", b"metadata[x]=%25zz"),
        (b"%61mount=1", b"amount=1"),
        (b"a=", b"a="),
    ],
)
def test_forms_are_sent_as_the_pairs_read(body: bytes, sent: bytes) -> None:
    assert canonical_form(FORM, body) == sent
    assert canonical_form(FORM + "; charset=utf-8", body) == sent


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        (FORM, b'{"amount": 1, "x": "=1"}'),
        (FORM, b'  ["a=1"]'),
        (FORM, b'"a=1"'),
        ("application/json", b"a=1"),
        (FORM + "; charset=latin-1", b"a=1"),
        (FORM + "; boundary=x", b"a=1"),
        ("", b"a=1"),
        (FORM, b"a=1&&b=2"),
        (FORM, b"a"),
        (FORM, b"a=\xff"),
        (FORM, b"=1"),
        (FORM, b"a%20=1"),
        (FORM, b"a%00b=1"),
    ],
)
def test_bodies_another_reader_could_take_another_way_are_refused(
    content_type: str, body: bytes
) -> None:
    with pytest.raises(BadRequest):
        canonical_form(content_type, body)


def test_queries_are_read_strictly() -> None:
    assert canonical_query("") == ""
    assert canonical_query("limit=3&expand[]=data.customer") == "limit=3&expand[]=data.customer"
    with pytest.raises(BadRequest):
        canonical_query("a=1&&b")


@pytest.mark.parametrize(
    "headers",
    [
        [(b"Idempotency-Key", b"a"), (b"idempotency-key", b"b")],
        [(b"Stripe-Account", b"acct_1"), (b"STRIPE-ACCOUNT", b"acct_1")],
        [(b"User-Agent", "caf\u00e9".encode())],
        [(b"X-Other", b"a\x7fb")],
        [(b"X-\xc3\xa9", b"a")],
    ],
)
def test_headers_read_two_ways_are_refused(headers: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(BadRequest):
        check_headers(headers, RULES.single)


def test_other_headers_may_repeat() -> None:
    check_headers([(b"X-Trace", b"a"), (b"x-trace", b"b"), (b"Accept", b"a\tb c")], RULES.single)


def test_forwarded_headers_are_the_listed_ones_and_the_credential_wins() -> None:
    sent = forwarded_headers(
        {"user-agent": "ua", "Cookie": "c", "Authorization": "Bearer vault_key_x"},
        RULES.forwarded,
        authorization="Bearer sk_real",
        extra={"Stripe-Account": "acct_1"},
    )
    assert sent == [
        ("User-Agent", "ua"),
        ("Stripe-Account", "acct_1"),
        ("Authorization", "Bearer sk_real"),
    ]


def test_a_fingerprint_tells_every_part_apart() -> None:
    base = fingerprint("POST", "/v1/a", "", b"x=1")
    assert base != fingerprint("POST", "/v1/a", "x=1", b"")
    assert base != fingerprint("POST", "/v1/ax", "", b"=1")
    assert base == fingerprint("POST", "/v1/a", "", b"x=1")


JSON = "application/json"


def test_a_json_body_is_re_encoded_from_its_one_reading() -> None:
    sent = canonical_json(JSON, b'{ "to" : ["a@x.io"],\n "subject": "h\\u00e9" }')
    assert sent == b'{"to":["a@x.io"],"subject":"h\\u00e9"}'
    assert canonical_json("application/json; charset=UTF-8", b"[1, 2.5]") == b"[1,2.5]"
    assert canonical_json(JSON, b"") == b""


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        (JSON, b'{"to": "a@x.io", "to": "b@x.io"}'),  # which "to" counts depends on the reader
        (JSON, b'{"a": {"b": 1, "b": 2}}'),
        (JSON, b'{"n": NaN}'),
        (JSON, b'{"n": -Infinity}'),
        (JSON, b'{"n": 1e400}'),  # a float reader sees infinity
        (JSON, b'{"n": 1' + b"0" * 400 + b"}"),  # exact here, Infinity to JavaScript
        (JSON, b'{"n": 9007199254740993}'),  # 2**53 + 1: JavaScript reads 2**53
        (JSON, b'{"n": ' + b"9" * 100_000 + b"}"),  # quadratic to convert: refused by length
        (JSON, b'{"\\ud800": 1, "\\udfff": 2}'),  # two keys here, maybe one upstream
        (JSON, b'{"to": "a@x.io\\udc00"}'),
        (JSON, b'{"to": "a@x.io"'),
        (JSON, b'{"to": "\xff"}'),
        (JSON, b"[" * 40 + b"]" * 40),
        (JSON, b"[" * 100_000),
        ("application/json; charset=latin-1", b"{}"),
        ("text/plain", b"{}"),
        (FORM, b"{}"),
        ("", b"{}"),
    ],
)
def test_json_read_two_ways_is_refused(content_type: str, body: bytes) -> None:
    with pytest.raises(BadRequest):
        canonical_json(content_type, body)


@pytest.mark.parametrize(
    "body",
    [
        b'{"__proto__": {"bcc": ["c@x.io"]}}',
        b'{"template": {"variables": {"__proto__": {"bcc": "c@x.io"}}}}',
        b'{"headers": {"constructor": "x"}}',
        b'[{"prototype": 1}]',
    ],
)
def test_keys_a_javascript_reader_takes_for_its_machinery_are_refused(body: bytes) -> None:
    with pytest.raises(BadRequest):
        canonical_json(JSON, body)


@pytest.mark.parametrize(
    "body",
    [
        b'{"to": "a@x.io", "to": "b@x.io"}',
        b'{"n": NaN}',
        b'{"n": 1e400}',
        b"[" * 40 + b"]" * 40,
        b"[" * 100_000,
        b'{"headers": {"__proto__": "x"}}',
        b'{"n": 9007199254740993}',
        b'["\\ud800"]',
    ],
)
def test_pricers_read_json_as_strictly_as_the_proxy(body: bytes) -> None:
    # A pricer called on a body the proxy didn't shape (a plugin's own tests, a tool) reads
    # it with the same rules: one reading, never a second, laxer one.
    request = VendorRequest("POST", ("emails",), "", JSON, body)
    with pytest.raises(PricingRefusal) as refused:
        parse_json(request)
    assert refused.value.code == "bad_request"


def test_json_that_every_reader_reads_alike_is_kept() -> None:
    body = b'{"n": 9007199254740991, "m": -9007199254740991, "s": "\\ud83d\\ude00"}'
    assert canonical_json(JSON, body) == (
        b'{"n":9007199254740991,"m":-9007199254740991,"s":"\\ud83d\\ude00"}'
    )
