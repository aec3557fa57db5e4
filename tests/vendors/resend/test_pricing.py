"""Resend pricing rules: recipients times the price, and everything refused before it is sent."""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keybrake._common import normalise_path
from keybrake.vendors._pricing import Outcome, PricingRefusal, Quote, VendorRequest
from keybrake.vendors.resend import VENDOR
from keybrake.vendors.resend.pricing import (
    MAX_BATCH,
    RECIPIENT_HEADERS,
    ResendPricer,
    ResendPricing,
)

EMAIL: dict[str, Any] = {
    "from": "Acme <hi@acme.test>",
    "to": ["a@x.test"],
    "subject": "Hello",
    "html": "<p>hi</p>",
}
PER_EMAIL = 900  # the default 0.0009 USD, in micro-dollars


def request(
    path: str,
    body: Any = None,
    *,
    method: str = "POST",
    query: str = "",
    raw: bytes | None = None,
) -> VendorRequest:
    if raw is None:
        raw = b"" if body is None else json.dumps(body).encode()
    return VendorRequest(method, normalise_path(path), query, "application/json", raw)


async def no_lookup(path: str) -> Mapping[str, Any] | None:
    raise AssertionError(path)


async def quote(
    body: Any = None, path: str = "/emails", *, pricer: ResendPricer | None = None, **kw: Any
) -> Quote:
    return await (pricer or ResendPricer()).quote(request(path, body, **kw), no_lookup)


async def refusal(body: Any = None, path: str = "/emails", **kw: Any) -> PricingRefusal:
    with pytest.raises(PricingRefusal) as caught:
        await quote(body, path, **kw)
    return caught.value


def email(**fields: Any) -> dict[str, Any]:
    return {**EMAIL, **fields}


@pytest.mark.parametrize(
    ("fields", "count"),
    [
        ({}, 1),
        ({"to": "a@x.test"}, 1),  # one address as a string
        ({"to": ["a@x.test", "b@x.test"]}, 2),
        ({"to": ["a@x.test", "a@x.test"]}, 2),  # a repeated address counts each time
        ({"cc": "c@x.test"}, 2),
        ({"cc": ["c@x.test", "d@x.test"], "bcc": ["e@x.test"]}, 4),
        ({"cc": [], "bcc": None}, 1),  # nobody more
        ({"to": "a@x.test, b@x.test"}, 2),  # one string naming two: never under-counted
        ({"to": "Doe, John <j@x.test>"}, 1),  # a comma in a name is one address
        ({"to": "a\uff20x.test, b@x.test"}, 2),  # a full-width @ is an @ after NFKC
        ({"to": "undisclosed"}, 1),  # no @ at all still counts once
        ({"to": [f"u{i}@x.test" for i in range(50)], "bcc": ["z@x.test"] * 10}, 60),
    ],
)
async def test_each_recipient_is_priced(fields: dict[str, Any], count: int) -> None:
    assert (await quote(email(**fields))).micros == count * PER_EMAIL


async def test_the_price_is_rounded_up_to_micro_dollars() -> None:
    pricer = ResendPricer(ResendPricing.from_mapping({"usd_per_email": "0.0000001"}))
    assert (await quote(email(to=["a@x.test", "b@x.test"]), pricer=pricer)).micros == 1
    pricer = ResendPricer(ResendPricing.from_mapping({"usd_per_email": "0.0000015"}))
    assert (await quote(email(to=["a@x.test"] * 3), pricer=pricer)).micros == 5  # 4.5 → 5


async def test_the_pricing_file_sets_the_price() -> None:
    pricer = VENDOR.make_pricer({"usd_per_email": "0.01"}, {})
    assert isinstance(pricer, ResendPricer)
    assert pricer.settings.usd_per_email == Decimal("0.01")
    assert (await quote(email(cc=["c@x.test"]), pricer=pricer)).micros == 20_000
    default = VENDOR.make_pricer(None, {})
    assert isinstance(default, ResendPricer)
    assert default.settings == ResendPricing()


@pytest.mark.parametrize(
    "section",
    [
        {"usd_per_mail": "0.01"},  # unknown setting
        {"usd_per_email": "-0.01"},
        {"usd_per_email": "cheap"},
        {"usd_per_email": 0.01},  # a float is not a decimal
        {"free_endpoints": "POST /broadcasts/*/send"},  # not a list
        {"free_endpoints": ["POST /emails/**/x"]},
        ["usd_per_email"],
    ],
)
def test_a_malformed_pricing_section_is_refused(section: Any) -> None:
    with pytest.raises(ValueError, match="resend"):
        VENDOR.make_pricer(section, {})


async def test_free_endpoints_from_the_pricing_file() -> None:
    pricer = ResendPricer(ResendPricing.from_mapping({"free_endpoints": ["POST /audiences"]}))
    assert (await quote({"name": "x"}, "/audiences", pricer=pricer)).micros == 0
    with pytest.raises(PricingRefusal):
        await quote({"name": "x"}, "/segments", pricer=pricer)


async def test_free_endpoints_never_open_a_credential() -> None:
    pricer = ResendPricer(ResendPricing.from_mapping({"free_endpoints": ["/api-keys/**"]}))
    with pytest.raises(PricingRefusal) as caught:
        await quote({"name": "x"}, "/api-keys", pricer=pricer)
    assert caught.value.code == "endpoint_not_allowed"


async def test_a_batch_is_the_sum_of_its_emails() -> None:
    batch = [email(), email(to=["a@x.test", "b@x.test"], cc="c@x.test"), email(bcc=["d@x.test"])]
    assert (await quote(batch, "/emails/batch")).micros == (1 + 3 + 2) * PER_EMAIL
    full = [email()] * MAX_BATCH
    assert (await quote(full, "/emails/batch")).micros == MAX_BATCH * PER_EMAIL


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([EMAIL] * (MAX_BATCH + 1), "at most 100"),
        ([], "JSON array"),
        (EMAIL, "JSON array"),  # one e-mail where a batch belongs
        ([EMAIL, "a@x.test"], "e-mail 1 of the batch"),
        ([EMAIL, email(react="<Email/>")], "e-mail 1 of the batch: fields"),
        ([email(headers={"Bcc": "z@x.test"})], "e-mail 0 of the batch: header 'Bcc'"),
    ],
)
async def test_a_malformed_batch_is_refused(body: Any, message: str) -> None:
    refused = await refusal(body, "/emails/batch")
    assert (refused.status, refused.code) == (400, "bad_request")
    assert message in refused.message


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (email(react="<Email/>"), "['react']"),  # the Node SDK's, never the API's
        (email(recipients=["z@x.test"]), "['recipients']"),
        (email(To=["z@x.test"]), "['To']"),  # a field name in another case is another field
        ({k: v for k, v in EMAIL.items() if k != "to"}, "'to'"),
        (email(to=[]), "'to'"),
        (email(to=None), "'to'"),
        (email(to=""), "'to'"),
        (email(to=" "), "'to'"),
        (email(to=["a@x.test", ""]), "'to'"),
        (email(to=["a@x.test", 7]), "'to'"),
        (email(to={"email": "a@x.test"}), "'to'"),
        (email(to=[["a@x.test"]]), "'to'"),
        (email(cc=[None]), "'cc'"),
        (email(bcc=7), "'bcc'"),
        (email(bcc={"a@x.test": 1}), "'bcc'"),
        (email(headers=["X-A: 1"]), "'headers'"),
        (email(headers={"X-A": 1}), "'X-A'"),
        (email(headers={"X-A": "1\r\nBcc: z@x.test"}), "line break"),
        (email(headers={"X-A": "1\nBcc: z@x.test"}), "line break"),
        (email(headers={"X-A": "1\u2028Bcc: z@x.test"}), "line break"),
        (email(headers={"X-A": "1\x00"}), "control"),
        # Fields that become header lines: a line break could add one, with recipients.
        (email(subject="hi\r\nBcc: z@x.test"), "'subject'"),
        (email(**{"from": "A <a@x.test>\nBcc: z@x.test"}), "'from'"),
        (email(reply_to=["r@x.test", "s@x.test\r\nBcc: z@x.test"]), "'reply_to'"),
        (email(reply_to="r@x.test\u2028Cc: z@x.test"), "'reply_to'"),
        (email(attachments=[{"filename": "a\r\nBcc: z@x.test", "content": "aGk="}]), "filename"),
        (email(tags=[{"name": "a", "value": "b\nc"}]), "tags.value"),
        (email(headers={"Bcc ": "z@x.test"}), "field name"),
        (email(headers={"X-A:": "1"}), "field name"),
        (email(headers={"": "1"}), "field name"),
        (email(headers={"B\u0441c": "z@x.test"}), "field name"),  # a Cyrillic letter es
        (email(attachments=[{"filename": "a.txt", "content": "aGk=", "to": "z@x.test"}]), "to"),
        (email(attachments={"filename": "a.txt"}), "'attachments'"),
        (email(attachments=["a.txt"]), "'attachments'"),
        (email(tags=[{"name": "a", "value": "b", "recipients": "z@x.test"}]), "recipients"),
        (email(template={"id": "t", "to": "z@x.test"}), "'template'"),
        (email(template="t"), "'template'"),
        ("a@x.test", "JSON object"),
        ([EMAIL], "JSON object"),  # a batch where one e-mail belongs
        (None, "JSON object"),
    ],
)
async def test_a_malformed_email_is_refused(body: Any, message: str) -> None:
    refused = await refusal(body)
    assert (refused.status, refused.code) == (400, "bad_request")
    assert message in refused.message


@pytest.mark.parametrize(
    "name",
    [
        *sorted(RECIPIENT_HEADERS),
        *("To", "CC", "bCc", "Resent-To", "RESENT-BCC", "Apparently-To"),
        *("Disposition-Notification-To", "Return-Receipt-To"),  # draw receipts back
    ],
)
async def test_a_header_naming_recipients_is_refused(name: str) -> None:
    refused = await refusal(email(headers={"X-Entity-Ref-ID": "1", name: "z@x.test"}))
    assert (refused.status, refused.code) == (400, "bad_request")
    assert "names recipients" in refused.message


async def test_every_documented_field_is_taken() -> None:
    full = email(
        cc="c@x.test",
        bcc=["d@x.test"],
        text="hi",
        reply_to=["r@x.test", "s@x.test"],
        headers={"X-Entity-Ref-ID": "123", "List-Unsubscribe": "<https://x.test/u>\t"},
        attachments=[
            {"filename": "a.txt", "content": "aGk=", "content_type": "text/plain"},
            {"path": "https://x.test/b.png", "filename": "b.png", "content_id": "b"},
            {"path": "https://x.test/c.png", "inline_content_id": "c"},
        ],
        tags=[{"name": "category", "value": "welcome"}],
        scheduled_at="in 1 min",
        template={"id": "welcome", "variables": {"NAME": "Ann", "N": 1}},
        topic_id="t_1",
    )
    # reply_to is where answers go, not who is sent to.
    assert (await quote(full)).micros == 3 * PER_EMAIL


async def test_a_query_on_a_write_is_refused() -> None:
    refused = await refusal(email(), query="to=z@x.test")
    assert (refused.status, refused.code) == (400, "bad_request")
    refused = await refusal({"scheduled_at": "in 1 min"}, "/emails/e1", method="PATCH", query="x=1")
    assert (refused.status, refused.code) == (400, "bad_request")


async def test_a_body_that_is_not_strict_json_is_refused() -> None:
    body = b'{"from": "hi@acme.test", "to": "a@x.test", "to": ["b@x.test", "c@x.test"]}'
    refused = await refusal(raw=body)
    assert (refused.status, refused.code) == (400, "bad_request")
    assert "repeated" in refused.message
    form = VendorRequest("POST", ("emails",), "", "application/x-www-form-urlencoded", b"to=a")
    with pytest.raises(PricingRefusal) as caught:
        await ResendPricer().quote(form, no_lookup)
    assert caught.value.status == 400


@pytest.mark.parametrize(
    "path",
    [
        "/broadcasts/b1/send",
        "/broadcasts",  # a create may send at once ("send": true)
        "/broadcasts/b1/duplicate",
        "/Broadcasts/b1/send",
    ],
)
async def test_a_broadcast_is_unpriced(path: str) -> None:
    refused = await refusal({"send": True, "segment_id": "s1"}, path)
    assert (refused.status, refused.code) == (403, "unpriced_endpoint")
    assert "audience" in refused.message


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PATCH", "/broadcasts/b1"),  # could point a scheduled broadcast at a larger segment
        ("DELETE", "/broadcasts/b1"),
        ("POST", "/contacts"),  # can start an automation that mails the contact
        ("PATCH", "/contacts/c1"),
        ("DELETE", "/contacts/c1"),
        ("POST", "/audiences/a1/contacts"),
        ("POST", "/audiences"),
        ("POST", "/contacts/c1/segments/s1"),
        ("PATCH", "/contacts/c1/topics"),
        ("POST", "/segments"),
        ("PATCH", "/topics/t1"),
        ("POST", "/contact-properties"),
        ("POST", "/automations"),
        ("POST", "/automations/a1/stop"),
        ("POST", "/events/send"),
        ("POST", "/events"),
        ("POST", "/inboxes/i1/drafts/d1/send"),
        ("PATCH", "/inboxes/i1/agent"),
        ("POST", "/suppressions"),
        ("DELETE", "/suppressions/a@x.test"),
        # Fail closed: writes keybrake has no rule for.
        ("POST", "/emails/e1"),
        ("PUT", "/emails"),
        ("DELETE", "/emails/e1"),
        ("POST", "/emails.json"),
        ("POST", "/emails;batch"),
        ("POST", "/v2/emails"),
        ("POST", "/emails/receiving/e1/forward"),
        ("POST", "/domains/claim"),
        ("OPTIONS", "/emails"),
        ("POST", "/something-new"),
    ],
)
async def test_writes_without_a_rule_are_unpriced(method: str, path: str) -> None:
    refused = await refusal({"name": "x"}, path, method=method)
    assert (refused.status, refused.code) == (403, "unpriced_endpoint")


@pytest.mark.parametrize(
    "path",
    ["/api-keys", "/api-keys/k1", "/API-KEYS", "/api-keys;x", "/oauth/grants", "/webhooks/w1"],
)
@pytest.mark.parametrize("method", ["GET", "POST", "PATCH", "DELETE"])
async def test_credentials_are_never_proxied(method: str, path: str) -> None:
    refused = await refusal({"name": "x"}, path, method=method)
    assert (refused.status, refused.code) == (403, "endpoint_not_allowed")


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("PATCH", "/emails/e1", {"scheduled_at": "2030-01-01T00:00:00Z"}),
        ("PATCH", "/emails/e1", {"id": "e1", "scheduled_at": "in 1 hour"}),  # the Python SDK's
        ("POST", "/emails/e1/cancel", {}),
        ("POST", "/emails/e1/cancel", None),
        ("POST", "/emails/e1/share", {"expires_in": "1h"}),
        ("POST", "/templates", {"name": "welcome", "html": "<p>hi</p>"}),
        ("PATCH", "/templates/t1", {"subject": "Hi"}),
        ("POST", "/templates/t1/publish", {}),
        ("POST", "/templates/t1/duplicate", {}),
        ("DELETE", "/templates/t1", None),
    ],
)
async def test_writes_that_send_nothing_are_free(method: str, path: str, body: Any) -> None:
    assert (await quote(body, path, method=method)).micros == 0


@pytest.mark.parametrize(
    "body", [{"scheduled_at": "in 1 min", "to": ["z@x.test"]}, {"bcc": "z@x.test"}, ["x"]]
)
async def test_a_reschedule_may_only_move_the_time(body: Any) -> None:
    refused = await refusal(body, "/emails/e1", method="PATCH")
    assert (refused.status, refused.code) == (400, "bad_request")


@pytest.mark.parametrize(
    "path", ["/emails", "/emails/e1", "/emails/batch", "/broadcasts", "/contacts", "/domains"]
)
@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_reads_are_free(method: str, path: str) -> None:
    assert (await quote(None, path, method=method, query="limit=10")).micros == 0


def outcome(path: str, body: Any, answer: Any, micros: int) -> Outcome:
    return ResendPricer().outcome(request(path, body), Quote(micros), json.dumps(answer).encode())


def test_a_send_settles_at_its_quote_with_its_id() -> None:
    assert outcome("/emails", EMAIL, {"id": "e1"}, 900) == Outcome(900, object_id="e1")
    assert ResendPricer().reports(request("/emails/e1", method="GET"), b'{"id": "e1"}') == []


def test_a_permissive_batch_settles_at_what_was_sent() -> None:
    batch = [email(), email(cc=["c@x.test"]), email(to=["a@x.test", "b@x.test", "c@x.test"])]
    quoted = 6 * PER_EMAIL
    refused_second = {
        "data": [{"id": "e1"}, {"id": "e3"}],
        "errors": [{"index": 1, "message": "x"}],
    }
    assert outcome("/emails/batch", batch, refused_second, quoted) == Outcome(4 * PER_EMAIL)
    all_sent = {"data": [{"id": "e1"}, {"id": "e2"}, {"id": "e3"}], "errors": []}
    assert outcome("/emails/batch", batch, all_sent, quoted) == Outcome(quoted)
    assert outcome("/emails/batch", batch, {"data": all_sent["data"]}, quoted) == Outcome(quoted)


@pytest.mark.parametrize(
    "answer",
    [
        {"data": [{"id": "e1"}], "errors": [{"index": 1}]},  # e-mail 2 is not accounted for
        # Three sent and one refused, of three.
        {"data": [{"id": "e1"}, {"id": "e2"}, {"id": "e3"}], "errors": [{"index": 2}]},
        {"data": [{"id": "e1"}, {"id": "e2"}], "errors": [{"index": 7}]},
        {"data": [{"id": "e1"}, {"id": "e2"}], "errors": [{"index": True}]},
        {"data": [{"id": "e1"}, {"id": "e2"}], "errors": [{"index": "1"}]},
        {"data": [{"id": "e1"}, {"id": "e2"}], "errors": ["1"]},
        {"data": "e1", "errors": [{"index": 1}]},
    ],
)
def test_a_batch_answer_that_does_not_add_up_keeps_the_quote(answer: Any) -> None:
    batch = [email(), email(cc=["c@x.test"]), email()]
    assert outcome("/emails/batch", batch, answer, 4 * PER_EMAIL) == Outcome(4 * PER_EMAIL)


_address = st.text(min_size=1).filter(lambda s: s.strip() != "")
_field = st.one_of(_address, st.lists(_address, max_size=5))


@given(to=_field, cc=st.one_of(st.none(), _field), bcc=st.one_of(st.none(), _field))
async def test_the_quote_is_never_below_the_listed_recipients(
    to: str | list[str], cc: str | list[str] | None, bcc: str | list[str] | None
) -> None:
    listed = sum(
        (1 if isinstance(value, str) else len(value))
        for value in (to, cc, bcc)
        if value is not None
    )
    body = email(to=to, cc=cc, bcc=bcc)
    if to == [] or (isinstance(to, str) and not to.strip()):
        with pytest.raises(PricingRefusal):  # nobody to send to: refused, never priced at 0
            await quote(body)
        return
    quoted = await quote(body)
    assert quoted.micros >= listed * PER_EMAIL


# What an attacker's review found, each refused now.


@pytest.mark.parametrize("path", ["/logs", "/logs/1f7c", "/LOGS", "/logs;x"])
async def test_logs_replay_secrets_so_they_are_never_read(path: str) -> None:
    caught = await refusal(path=path, method="GET")
    assert (caught.status, caught.code) == (403, "endpoint_not_allowed")


@pytest.mark.parametrize("path", ["/audit-trail", "/receiving", "/unknown/1"])
async def test_a_read_of_a_resource_keybrake_doesnt_know_is_refused(path: str) -> None:
    caught = await refusal(path=path, method="GET")
    assert (caught.status, caught.code) == (403, "endpoint_not_allowed")


@pytest.mark.parametrize("path", ["/emails", "/emails/1f7c", "/domains", "/templates/t1"])
async def test_reads_of_known_resources_are_free(path: str) -> None:
    assert (await quote(path=path, method="GET")).micros == 0


@pytest.mark.parametrize("path", ["/%20api-keys", "/%20webhooks", "/~logs", "/%20emails"])
async def test_a_first_segment_a_router_could_trim_is_refused(path: str) -> None:
    caught = await refusal(path=path, method="GET")
    assert (caught.status, caught.code) == (403, "endpoint_not_allowed")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/emails/batch%3F/cancel", [EMAIL]),  # a batch body on a free path
        ("/emails/batch%3F/cancel", None),  # an id that decodes into another path
        ("/emails/a%23b/share", None),
        ("/emails/1f7c/cancel", {"to": ["a@x.test"]}),
        ("/emails/1f7c/share", {"expires_in": 3600, "bcc": "b@x.test"}),
        ("/templates", {"name": "x", "to": "a@x.test"}),
        ("/templates", [EMAIL]),
    ],
)
async def test_free_writes_carry_plain_ids_and_their_own_fields_only(path: str, body: Any) -> None:
    caught = await refusal(body, path)
    assert caught.status in (400, 403)


async def test_free_writes_with_their_own_fields_stay_free() -> None:
    assert (await quote({"expires_in": 3600}, "/emails/1f7c-9_a/share")).micros == 0
    assert (await quote(None, "/emails/1f7c/cancel")).micros == 0
    assert (await quote({"name": "x"}, "/templates")).micros == 0


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        # Set up to receive, a domain has anyone's mail to it counted against the quota.
        ("POST", "/domains", {"name": "in.x.test", "capabilities": {"receiving": "enabled"}}),
        ("POST", "/domains", {"name": "acme.test"}),
        ("PATCH", "/domains/d1", {"capabilities": {"receiving": "enabled"}}),
        ("PATCH", "/domains/d1", {"open_tracking": True}),
        ("POST", "/domains/d1/verify", {}),
        ("DELETE", "/domains/d1", None),
    ],
)
async def test_domain_writes_are_unpriced(method: str, path: str, body: Any) -> None:
    caught = await refusal(body, path, method=method)
    assert (caught.status, caught.code) == (403, "unpriced_endpoint")


async def test_more_addresses_in_a_field_than_resend_takes_is_refused() -> None:
    many = [f"u{i}@x.test" for i in range(51)]
    for field in ("to", "cc", "bcc"):
        caught = await refusal(email(**{field: many}))
        assert (caught.status, caught.code) == (400, "bad_request")
    assert (await quote(email(to=many[:50]))).micros == 50 * PER_EMAIL
