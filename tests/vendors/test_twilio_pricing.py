"""Twilio pricing rules: segments, destinations, calls, late prices."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import parse_qsl, urlencode

import attrs
import phonenumbers
import pytest
from hypothesis import given
from hypothesis import strategies as st

from keybrake._common import normalise_path
from keybrake.vendors._pricing import PriceReport, PricingRefusal, Quote, VendorRequest
from keybrake.vendors.twilio import pricing as twilio_pricing
from keybrake.vendors.twilio._nanp import US_CA_AREA_CODES
from keybrake.vendors.twilio._spec import ARRAY_PARAMETERS
from keybrake.vendors.twilio.pricing import TwilioPricer, TwilioPricing, sms_segments
from tests.services import require

ACCOUNT = "AC" + "1" * 32
MESSAGES = f"/2010-04-01/Accounts/{'AC' + 'f' * 32}/Messages.json"
CALLS = MESSAGES.replace("Messages", "Calls")


@pytest.mark.parametrize(
    ("body", "segments"),
    [
        ("", 1),
        ("a" * 160, 1),
        ("a" * 161, 2),
        ("a" * 306, 2),
        ("a" * 307, 3),
        ("{" * 80, 1),  # extended GSM-7 characters count twice
        ("{" * 81, 2),
        ("é" * 160, 1),  # in the GSM-7 basic set
        ("ж" * 70, 1),  # UCS-2
        ("ж" * 71, 2),
        ("ж" * 134, 2),
        ("ж" * 135, 3),
        ("👍" * 35, 1),  # an emoji is two UTF-16 units
        ("👍" * 36, 2),
    ],
)
def test_sms_segments(body: str, segments: int) -> None:
    assert sms_segments(body) == segments


def request(path: str, form: list[tuple[str, str]], method: str = "POST") -> VendorRequest:
    return VendorRequest(
        method,
        normalise_path(path),
        "",
        "application/x-www-form-urlencoded",
        urlencode(form).encode(),
    )


async def no_lookup(path: str) -> Mapping[str, Any] | None:
    raise AssertionError(path)


async def quote(form: list[tuple[str, str]], path: str = MESSAGES, **settings: Any) -> Quote:
    pricer = TwilioPricer(TwilioPricing.from_mapping(settings), account_sid=ACCOUNT)
    return await pricer.quote(request(path, form), no_lookup)


@pytest.mark.parametrize(
    ("form", "micros"),
    [
        ([("To", "+15005550006"), ("Body", "hi")], 8_300),
        ([("To", "+15005550006"), ("Body", "ж" * 71)], 16_600),
        ([("To", "+447700900000"), ("Body", "hi")], 52_400),
        ([("To", "+819012345678"), ("Body", "hi")], 200_000),  # the default entry
        (
            [("To", "+15005550006"), ("MediaUrl", "https://x/1.png"), ("MediaUrl", "https://x/2")],
            22_000,
        ),
        ([("To", "+15005550006"), ("ContentSid", "HX" + "0" * 32)], 24 * 8_300),
    ],
)
async def test_messages(form: list[tuple[str, str]], micros: int) -> None:
    assert (await quote(form)).micros == micros


async def test_longest_prefix_wins_and_no_default_refuses() -> None:
    prices: Any = {"sms_usd_per_segment": {"1": "0.01", "1876": "0.09"}}
    assert (await quote([("To", "+18761234567")], **prices)).micros == 90_000
    assert (await quote([("To", "+12125550000")], **prices)).micros == 10_000
    with pytest.raises(PricingRefusal) as refused:
        await quote([("To", "+447700900000")], **prices)
    assert (refused.value.status, refused.value.code) == (403, "unpriced_endpoint")


async def test_calls_are_cut_to_the_maximum() -> None:
    result = await quote([("To", "+15005550006"), ("TimeLimit", "99999")], CALLS)
    assert result.micros == 10 * 14_000
    assert result.body is not None
    assert dict(parse_qsl(result.body.decode()))["TimeLimit"] == "600"
    shorter = await quote([("To", "+15005550006"), ("TimeLimit", "61")], CALLS)
    assert shorter.micros == 2 * 14_000
    assert shorter.body is not None
    assert dict(parse_qsl(shorter.body.decode()))["TimeLimit"] == "61"
    unset = await quote([("To", "+15005550006")], CALLS, max_call_minutes=3)
    assert unset.micros == 3 * 14_000


async def test_the_account_in_the_path_is_replaced() -> None:
    result = await quote([("To", "+15005550006")])
    assert result.segments == ("2010-04-01", "Accounts", ACCOUNT, "Messages.json")
    pricer = TwilioPricer(account_sid=ACCOUNT)
    fetch = await pricer.quote(request(CALLS.replace(".json", "/CA1.json"), [], "GET"), no_lookup)
    assert fetch.segments == ("2010-04-01", "Accounts", ACCOUNT, "Calls", "CA1.json")


async def test_the_account_is_pinned_however_accounts_is_spelt() -> None:
    other = MESSAGES.replace("Accounts", "accounts")
    result = await quote([("To", "+15005550006")], other)
    assert result.segments == ("2010-04-01", "Accounts", ACCOUNT, "Messages.json")
    assert result.micros == 8_300


@pytest.mark.parametrize(
    ("path", "form"),
    [
        (MESSAGES.replace("Messages.json", "IncomingPhoneNumbers.json"), [("PhoneNumber", "+1")]),
        (MESSAGES.replace("Messages.json", "Queues.json"), [("FriendlyName", "q")]),
    ],
)
async def test_other_posts_are_unpriced(path: str, form: list[tuple[str, str]]) -> None:
    with pytest.raises(PricingRefusal) as refused:
        await quote(form, path)
    assert refused.value.code == "unpriced_endpoint"


async def test_marked_free_by_the_operator() -> None:
    path = MESSAGES.replace("Messages.json", "Queues.json")
    result = await quote(
        [("FriendlyName", "q")], path, free_endpoints=["POST /2010-04-01/Accounts/*/Queues.json"]
    )
    assert result.micros == 0


def test_late_prices_are_reported() -> None:
    pricer = TwilioPricer(account_sid=ACCOUNT)
    fetch = request(MESSAGES.replace(".json", "/SM1.json"), [], "GET")
    assert pricer.reports(fetch, b'{"sid": "SM1", "price": "-0.00790", "price_unit": "USD"}') == [
        PriceReport("SM1", 7_900)
    ]
    page = b'{"messages": [{"sid": "SM1", "price": null}, {"sid": "SM2", "price": "-0.02"}]}'
    assert pricer.reports(fetch, page) == [PriceReport("SM2", 20_000)]
    assert pricer.reports(fetch, b'{"sid": "SM3", "price": "-1", "price_unit": "EUR"}') == []
    assert pricer.reports(fetch, b"not json") == []


def test_outcome_keeps_the_estimate_until_twilio_knows() -> None:
    pricer = TwilioPricer(account_sid=ACCOUNT)
    create = request(MESSAGES, [("To", "+1")])
    unknown = pricer.outcome(create, Quote(8_300), b'{"sid": "SM1", "price": null}')
    assert (unknown.micros, unknown.final, unknown.object_id) == (8_300, False, "SM1")
    known = pricer.outcome(create, Quote(8_300), b'{"sid": "SM1", "price": "-0.0075"}')
    assert (known.micros, known.final) == (7_500, True)


@pytest.mark.parametrize(
    "settings",
    [
        {"max_call_minutes": 0},
        {"max_call_minutes": "5"},
        {"sms_usd_per_segment": {"1": "cheap"}},
        {"sms_usd_per_segment": ["1"]},
        {"voice": {}},
    ],
)
def test_malformed_settings(settings: dict[str, Any]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        TwilioPricing.from_mapping(settings)


@pytest.mark.parametrize("sid", ["CA1.json", "CA1", "ca1.json"])
async def test_a_call_update_cannot_lift_the_time_limit(sid: str) -> None:
    looked_up: list[str] = []

    async def the_call(path: str) -> Mapping[str, Any] | None:
        looked_up.append(path)
        return {"sid": "CA1", "to": "+447700900000", "status": "in-progress"}

    pricer = TwilioPricer(account_sid=ACCOUNT)
    update = MESSAGES.replace("Messages.json", f"Calls/{sid}")
    form = [("TimeLimit", "99999"), ("Twiml", "<Response/>")]
    result = await pricer.quote(request(update, form), the_call)
    # Cut to ten minutes, and those ten reserved again for the call's own leg to the UK: a
    # call placed with TimeLimit=60 had one of them reserved.
    assert result.micros == 10 * 17_000
    assert looked_up == [f"/2010-04-01/Accounts/{ACCOUNT}/Calls/{sid.partition('.')[0]}.json"]
    assert result.body is not None
    assert dict(parse_qsl(result.body.decode()))["TimeLimit"] == "600"
    shorter = await pricer.quote(request(update, [("TimeLimit", "61")]), the_call)
    assert shorter.micros == 2 * 17_000
    hang_up = await quote([("Status", "completed")], update)  # no look-up: nothing runs longer
    assert (hang_up.micros, hang_up.body) == (0, None)


async def test_a_new_time_limit_for_a_call_twilio_doesnt_show_is_refused() -> None:
    async def nothing(path: str) -> Mapping[str, Any] | None:
        return None

    update = MESSAGES.replace("Messages.json", "Calls/CA1.json")
    with pytest.raises(PricingRefusal) as refused:
        await TwilioPricer(account_sid=ACCOUNT).quote(
            request(update, [("TimeLimit", "60")]), nothing
        )
    assert (refused.value.status, refused.value.code) == (400, "bad_request")


async def test_a_free_channel_price_is_honoured() -> None:
    prices: Any = {"sms_usd_per_segment": {"whatsapp:": "0", "default": "0.5"}}
    assert (await quote([("To", "whatsapp:+15005550006")], **prices)).micros == 0


# Credentials: never proxied, whatever the method and the key's allowed endpoints.

ACCOUNT_PATH = f"/2010-04-01/Accounts/{'AC' + 'f' * 32}"
SPEC_DIR = Path(__file__).parents[2] / "node_modules/@twilio-alpha/mcp/twilio-oai/spec/json"


async def refusal(path: str, method: str, form: list[tuple[str, str]] | None = None) -> Any:
    pricer = TwilioPricer(account_sid=ACCOUNT)
    with pytest.raises(PricingRefusal) as refused:
        await pricer.quote(request(path, form or [], method), no_lookup)
    return refused.value


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE", "HEAD"])
@pytest.mark.parametrize(
    "path",
    [
        "/2010-04-01/Accounts.json",
        "/2010-04-01/Accounts",
        "/2010-04-01/accounts.JSON",
        f"{ACCOUNT_PATH}.json",
        ACCOUNT_PATH,
        ACCOUNT_PATH.replace("Accounts", "ACCOUNTS"),
        f"{ACCOUNT_PATH}/Keys.json",
        f"{ACCOUNT_PATH}/Keys/SK1.json",
        f"{ACCOUNT_PATH}/KEYS.json",
        f"{ACCOUNT_PATH}/keys",
        f"{ACCOUNT_PATH}/Keys.xml",
        f"{ACCOUNT_PATH}/Keys;v=1",
        f"{ACCOUNT_PATH}/%4Beys.json",
        f"{ACCOUNT_PATH}/SigningKeys.json",
        f"{ACCOUNT_PATH}/SigningKeys/SK1.json",
        f"{ACCOUNT_PATH}/Tokens.json",
        f"{ACCOUNT_PATH}/SIP/CredentialLists.json",
        f"{ACCOUNT_PATH}/SIP/CredentialLists/CL1/Credentials/CR1.json",
        f"{ACCOUNT_PATH}/SIP/Domains/SD1/Auth/Calls/CredentialListMappings.json",
        f"{ACCOUNT_PATH}/SIP/Domains/SD1/IpAccessControlListMappings.json",
        f"{ACCOUNT_PATH}/SIP/IpAccessControlLists/AL1/IpAddresses.json",
        f"{ACCOUNT_PATH}/ConnectApps/CN1.json",
    ],
)
async def test_credential_resources_are_never_proxied(path: str, method: str) -> None:
    refused = await refusal(path, method, [("FriendlyName", "x")] if method == "POST" else [])
    assert (refused.status, refused.code) == (403, "endpoint_not_allowed")
    assert "credential resources are never proxied" in refused.message


@pytest.mark.parametrize(
    "path",
    [
        "/2010-04-01",
        "/2010-04-01.json",
        "/2008-08-01/Accounts/AC1/SMS/Messages.json",
        "/2010-04-01/Foo/AC1/Messages.json",
        "/v2/Services",
        "/Accounts/AC1/Messages.json",
    ],
)
async def test_paths_outside_an_account_are_refused(path: str) -> None:
    refused = await refusal(path, "GET")
    assert (refused.status, refused.code) == (403, "endpoint_not_allowed")


def _spec(name: str) -> Any:
    require("node")  # node_modules: `npm install`
    return json.loads((SPEC_DIR / name).read_text(encoding="utf-8"))


def _properties(spec: Any, schema: Any) -> set[str]:
    """Property names of a schema and of the objects its arrays hold."""
    if "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rpartition("/")[2]]
    names = set(schema.get("properties", {}))
    for prop in schema.get("properties", {}).values():
        names |= _properties(spec, prop["items"]) if "$ref" in prop.get("items", {}) else set()
    return names


#: A field of an answer that holds a secret or a credential.
SECRET = re.compile(r"auth_token|secret|password|credential", re.IGNORECASE)
#: A form field that makes a credential (``SipAuthPassword`` only authenticates a call).
MAKES_SECRET = frozenset({"Password", "CredentialListSid"})


def credential_paths() -> list[tuple[str, str]]:
    """Every (method, path) of the v2010 spec whose answer or form holds a secret."""
    spec = _spec("twilio_api_v2010.json")
    found = []
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method not in ("get", "post", "delete"):
                continue
            fields: set[str] = set()
            for answer in op.get("responses", {}).values():
                schema = answer.get("content", {}).get("application/json", {}).get("schema")
                fields |= _properties(spec, schema) if schema else set()
            form: set[str] = set()
            for content in op.get("requestBody", {}).get("content", {}).values():
                form |= set(content.get("schema", {}).get("properties", {}))
            if any(SECRET.search(f) for f in fields) or form & MAKES_SECRET:
                found.append((method.upper(), path))
    return found


@pytest.mark.node
def test_the_spec_lists_the_credential_resources_we_know() -> None:
    paths = {path.partition("/Accounts")[2] for _, path in credential_paths()}
    assert {
        ".json",
        "/{Sid}.json",
        "/{AccountSid}/Keys.json",
        "/{AccountSid}/SigningKeys.json",
        "/{AccountSid}/Tokens.json",
        "/{AccountSid}/SIP/CredentialLists/{CredentialListSid}/Credentials.json",
        "/{AccountSid}/SIP/Domains/{DomainSid}/CredentialListMappings.json",
    } <= paths


@pytest.mark.node
async def test_every_credential_resource_of_the_spec_is_refused() -> None:
    for method, template in credential_paths():
        path = re.sub(r"\{[A-Za-z]+\}", "XX1", template)
        refused = await refusal(path, method, [("FriendlyName", "x")])
        assert (refused.status, refused.code) == (403, "endpoint_not_allowed"), (method, path)
    # The children of a credential resource are refused too, as is the account's every path
    # whose response holds a secret. Resources without one are still proxied:
    pricer = TwilioPricer(account_sid=ACCOUNT)
    for path in ("Messages.json", "SIP/Domains.json", "IncomingPhoneNumbers.json", "Balance.json"):
        fetched = await pricer.quote(request(f"{ACCOUNT_PATH}/{path}", [], "GET"), no_lookup)
        assert fetched.micros == 0


async def test_post_parameters_in_the_query_are_refused() -> None:
    pricer = TwilioPricer(account_sid=ACCOUNT)
    smuggled = VendorRequest(
        "POST",
        normalise_path(MESSAGES),
        "To=%2B18765551234",
        "application/x-www-form-urlencoded",
        urlencode([("To", "+15005550006"), ("Body", "hi")]).encode(),
    )
    with pytest.raises(PricingRefusal) as refused:
        await pricer.quote(smuggled, no_lookup)
    assert (refused.value.status, refused.value.code) == (400, "bad_request")
    listing = attrs.evolve(smuggled, method="GET", body=b"", query="PageSize=2")
    assert (await pricer.quote(listing, no_lookup)).micros == 0


# Messages that may be MMS.


@pytest.mark.parametrize(
    ("form", "micros"),
    [
        ([("SendAsMms", "true")], 22_000),
        ([("SendAsMms", "True")], 22_000),
        ([("SendAsMms", "1")], 22_000),  # whatever Twilio reads as true
        ([("SendAsMms", "false")], 8_300),
        # Twilio may still send media as an SMS (with a link): the dearer of the two.
        ([("Body", "ж" * 400), ("MediaUrl", "https://x/1.png")], 7 * 8_300),
        ([("Body", "ж" * 400), ("SendAsMms", "true")], 6 * 8_300),
    ],
)
async def test_a_message_that_may_be_an_mms(form: list[tuple[str, str]], micros: int) -> None:
    assert (await quote([("To", "+15005550006"), *form])).micros == micros


# +1 outside the US and Canada.


@pytest.mark.parametrize(
    ("to", "micros"),
    [
        ("+12125550000", 8_300),  # New York
        ("+14165550000", 8_300),  # Toronto
        ("+18005550000", 8_300),  # toll free
        ("+18765551234", 200_000),  # Jamaica: the default, never the "1" price
        ("+18095551234", 200_000),  # Dominican Republic
        ("+12845551234", 200_000),  # British Virgin Islands
        ("+17875551234", 200_000),  # Puerto Rico
        ("+19005551234", 200_000),  # premium rate
        ("+1", 200_000),
        ("+1 (876) 555-1234", 200_000),
        ("whatsapp:+18765551234", 200_000),
        ("4412345678", 200_000),  # not international: Twilio reads it in the sender's country
        ("18765551234", 200_000),
    ],
)
async def test_nanp_outside_the_us_and_canada(to: str, micros: int) -> None:
    assert (await quote([("To", to), ("Body", "hi")])).micros == micros


async def test_a_caribbean_number_takes_only_its_own_prefix() -> None:
    prices: Any = {"call_usd_per_minute": {"1": "0.01", "18": "0.02", "1876": "0.30"}}
    to_jamaica = await quote([("To", "+18765551234")], CALLS, **prices)
    assert to_jamaica.micros == 10 * 300_000
    with pytest.raises(PricingRefusal) as refused:  # "18" is not the Dominican Republic's
        await quote([("To", "+18095551234")], CALLS, **prices)
    assert refused.value.code == "unpriced_endpoint"
    to_toll_free = await quote([("To", "+18005551234")], CALLS, **prices)
    assert to_toll_free.micros == 10 * 20_000


#: Area codes that phonenumbers puts in the US or Canada and _nanp leaves out on purpose.
LEFT_OUT = frozenset({"900"})  # premium rate


def nanp_area_codes(region: str) -> set[str]:
    """Every area code some valid number of ``region`` has, by phonenumbers' metadata."""
    metadata = phonenumbers.PhoneMetadata.metadata_for_region(region)
    assert metadata is not None
    kinds = [
        "fixed_line",
        "mobile",
        "toll_free",
        "premium_rate",
        "shared_cost",
        "personal_number",
        "voip",
        "pager",
        "uan",
        "voicemail",
    ]
    patterns = [getattr(metadata, kind) for kind in kinds]
    valid = re.compile(
        "|".join(f"(?:{p.national_number_pattern})" for p in patterns if p is not None)
    )
    return {
        str(npa)
        for npa in range(200, 1000)
        if any(
            valid.fullmatch(f"{npa}{nxx}{line}")
            for nxx in range(200, 1000)
            for line in ("0000", "1234", "5678", "9999")
        )
    }


def test_the_us_and_canadian_area_codes_match_phonenumbers() -> None:
    us_ca = nanp_area_codes("US") | nanp_area_codes("CA")
    assert us_ca >= US_CA_AREA_CODES
    assert us_ca - US_CA_AREA_CODES == LEFT_OUT
    for region in phonenumbers.COUNTRY_CODE_TO_REGION_CODE[1]:
        if region in ("US", "CA"):
            continue
        metadata = phonenumbers.PhoneMetadata.metadata_for_region(region)
        assert metadata is not None
        assert metadata.leading_digits, region
        theirs = re.compile(f"(?:{metadata.leading_digits})")
        for npa in US_CA_AREA_CODES:
            # 8001 is the Dominican Republic's, but no NANP exchange starts with 0 or 1.
            clash = [d for d in "23456789" if theirs.match(f"{npa}{d}000000")]
            assert not clash, (region, npa)
    assert {"787", "939", "671", "340", "684", "670", "876", "809"}.isdisjoint(US_CA_AREA_CODES)


# Inline TwiML that dials.


def dial(*nouns: str) -> str:
    return f"<Response><Say>connecting</Say><Dial>{''.join(nouns)}</Dial></Response>"


@pytest.mark.parametrize(
    ("twiml", "micros"),
    [
        ("<Response><Say>hi</Say><Pause/><Hangup/></Response>", 10 * 14_000),
        (dial("+447700900000"), 10 * (14_000 + 17_000)),
        (dial("<Number>+18765551234</Number>"), 10 * (14_000 + 600_000)),
        (dial("<Number>+12125550000</Number>", "<Number> +447700900000 </Number>"), 450_000),
        ("<Response><dial>+447700900000</dial><Dial>+447700900001</Dial></Response>", 480_000),
        (
            '<Response><Gather input="dtmf"><Say><prosody rate="slow">press</prosody></Say>'
            "</Gather></Response>",
            10 * 14_000,
        ),
    ],
)
async def test_inline_twiml_dials_are_priced(twiml: str, micros: int) -> None:
    result = await quote([("To", "+15005550006"), ("Twiml", twiml)], CALLS)
    assert result.micros == micros
    update = await quote([("Twiml", twiml)], CALLS.replace(".json", "/CA1.json"))
    assert update.micros == micros - 10 * 14_000


@pytest.mark.parametrize(
    ("twiml", "status"),
    [
        (dial("<Sip>sip:alice@example.com</Sip>"), 403),
        (dial("<Client>alice</Client>"), 403),
        (dial("<Conference>room</Conference>"), 403),
        (dial("<Queue>support</Queue>"), 403),
        (dial("<Number>+12125550000</Number>", "<Sip>sip:a@b</Sip>"), 403),
        ("<Response><Enqueue>support</Enqueue></Response>", 403),
        ("<Response><Refer><Sip>sip:a@b</Sip></Refer></Response>", 403),
        ("<Response><Connect><Stream url='wss://x'/></Connect></Response>", 403),
        ("<Response><Sms>hi</Sms></Response>", 403),
        ("<Response><Gather><Dial>+18765551234</Dial></Gather></Response>", 403),
        ("<Response><Say><Dial>+18765551234</Dial></Say></Response>", 403),
        ('<Response xmlns:t="x"><t:Dial><t:Sip>sip:a@b</t:Sip></t:Dial></Response>', 403),
        ("<Response><Dial></Dial></Response>", 400),
        ("<Response><Dial><Number/></Dial></Response>", 400),
        ("<Response><Dial>", 400),
        ("not xml", 400),
        ("<Dial>+18765551234</Dial>", 400),
        (
            '<?xml version="1.0"?><!DOCTYPE r [<!ENTITY n "+18765551234">]>'
            "<Response><Dial>&n;</Dial></Response>",
            400,
        ),
        ('<!DOCTYPE Response SYSTEM "http://x/t.dtd"><Response/>', 400),
    ],
)
async def test_inline_twiml_we_cannot_price_is_refused(twiml: str, status: int) -> None:
    for form, path in (
        ([("To", "+15005550006"), ("Twiml", twiml)], CALLS),
        ([("Twiml", twiml)], CALLS.replace(".json", "/CA1.json")),
    ):
        with pytest.raises(PricingRefusal) as refused:
            await quote(form, path)
        code = "unpriced_endpoint" if status == 403 else "bad_request"
        assert (refused.value.status, refused.value.code) == (status, code)


def test_a_call_that_dials_keeps_its_estimate() -> None:
    pricer = TwilioPricer(account_sid=ACCOUNT)
    answer = b'{"sid": "CA1", "price": null}'
    dials = request(CALLS, [("To", "+15005550006"), ("Twiml", dial("+447700900000"))])
    outcome = pricer.outcome(dials, Quote(310_000), answer)
    assert (outcome.micros, outcome.final) == (310_000, True)
    plain = request(CALLS, [("To", "+15005550006"), ("Url", "https://x/t.xml")])
    assert pricer.outcome(plain, Quote(140_000), answer).final is False
    update = request(CALLS.replace(".json", "/CA1.json"), [("Status", "completed")])
    done = pricer.outcome(update, Quote(0), b'{"sid": "CA1", "price": "-0.14"}')
    assert (done.micros, done.final) == (0, True)  # the call's price is the call's, not this


# TwiML fetched from a URL: only from the operator's own.

TRUSTED = "https://voice.example.com/twiml/"
APP = "AP" + "a" * 32


@pytest.mark.parametrize(
    "url",
    [
        TRUSTED,
        TRUSTED + "outbound.xml",
        TRUSTED + "outbound?campaign=7",
        "HTTPS://Voice.Example.com/twiml/outbound.xml",
        "https://voice.example.com:443/twiml/outbound.xml",  # the scheme's own port
        "https://voice.example.com:/twiml/outbound.xml",
        "https://voice.example.com/twiml/a%20b.xml",
    ],
)
async def test_a_call_may_fetch_the_operators_twiml(url: str) -> None:
    for name in ("Url", "FallbackUrl"):
        create = [("To", "+15005550006"), (name, url)]
        assert (await quote(create, CALLS, twiml_urls=[TRUSTED])).micros == 10 * 14_000
        update = await quote(
            [(name, url)], CALLS.replace(".json", "/CA1.json"), twiml_urls=[TRUSTED]
        )
        assert update.micros == 0
    twiml = f"<Response><Gather action='{url}'><Say>hi</Say></Gather></Response>"
    assert await quote([("To", "+15005550006"), ("Twiml", twiml)], CALLS, twiml_urls=[TRUSTED])
    apps = {"twiml_applications": [APP]}
    assert await quote([("To", "+15005550006"), ("ApplicationSid", APP)], CALLS, **apps)


@pytest.mark.parametrize(
    "url",
    [
        "https://attacker.example/dial-premium.xml",
        "https://voice.example.com/other/",
        "https://voice.example.com/twiml",  # the folder itself, not below it
        "https://voice.example.com/twimlx/a.xml",
        "http://voice.example.com/twiml/a.xml",  # another scheme
        "https://voice.example.com:8443/twiml/a.xml",  # another port
        "https://voice.example.com.attacker.example/twiml/a.xml",
        "https://voice.example.com@attacker.example/twiml/a.xml",
        "https://attacker.example\\@voice.example.com/twiml/a.xml",
        "https://voice.example.com/twiml/../evil.xml",
        "https://voice.example.com/twiml/%2E%2E/evil.xml",
        # What a server may decode or cut into a dot segment, to climb out of the folder.
        "https://voice.example.com/twiml/..%2fother.xml",
        "https://voice.example.com/twiml/%2e%2e%2Fother.xml",
        "https://voice.example.com/twiml/..;/other.xml",
        "https://voice.example.com/twiml/%2e%2e%5cother.xml",
        "https://voice.example.com/twiml/.%2E/other.xml",
        "https://voice.example.com/twiml/a b.xml",
        "https://vöice.example.com/twiml/a.xml",
        "/twiml/a.xml",
        "",
    ],
)
async def test_a_call_that_fetches_other_twiml_is_refused(url: str) -> None:
    twimls = [
        f"<Response><Redirect>{url}</Redirect></Response>",
        f"<Response><Gather action='{url}'><Say>hi</Say></Gather></Response>",
        f"<Response><Record ACTION='{url}'/></Response>",
        f"<Response><Dial action='{url}'>+15005550006</Dial></Response>",
        f"<Response><Dial><Number url='{url}'>+15005550006</Number></Dial></Response>",
        f"<Response><Dial referUrl='{url}'>+15005550006</Dial></Response>",
        f'<Response xmlns:t="x"><Dial t:action="{url}">+15005550006</Dial></Response>',
    ]
    forms = [[("Url", url)], [("FallbackUrl", url)], *([("Twiml", t)] for t in twimls)]
    for form in forms:
        for path, extra in (
            (CALLS, [("To", "+15005550006")]),
            (CALLS.replace(".json", "/CA1.json"), []),
        ):
            with pytest.raises(PricingRefusal) as refused:
                await quote(extra + form, path, twiml_urls=[TRUSTED])
            assert (refused.value.status, refused.value.code) == (403, "unpriced_endpoint")


async def test_a_url_is_trimmed_as_xml_trims_only_in_twiml() -> None:
    padded = f"\n  {TRUSTED}a.xml\n"
    twiml = f"<Response>\n  <Redirect>{padded}</Redirect>\n</Response>"
    assert await quote([("To", "+15005550006"), ("Twiml", twiml)], CALLS, twiml_urls=[TRUSTED])
    for url in (padded, f"{TRUSTED}a.xml\x00", f"\x01{TRUSTED}a.xml"):
        with pytest.raises(PricingRefusal):
            await quote([("To", "+15005550006"), ("Url", url)], CALLS, twiml_urls=[TRUSTED])
    control = f"<Response><Redirect>&#x1;{TRUSTED}a.xml</Redirect></Response>"
    with pytest.raises(PricingRefusal):
        await quote([("To", "+15005550006"), ("Twiml", control)], CALLS, twiml_urls=[TRUSTED])


@pytest.mark.parametrize(
    "twiml",
    [
        # Another reader may fold a dotless i into "action".
        "<Response><Gather act\u0131on='https://attacker.example/x'/></Response>",
        # A parser drops a comment or instruction and joins the text around it.
        f"<Response><Redirect>{TRUSTED}<!-- -->a.xml</Redirect></Response>",
        f"<Response><Redirect>{TRUSTED}<?x y?>a.xml</Redirect></Response>",
        "<Response><!-- a comment --></Response>",
        # A declared encoding a str doesn't have.
        "<?xml version='1.0' encoding='UTF-16'?><Response/>",
        '<?xml version="1.0" encoding="ISO-8859-1"?><Response/>',
    ],
)
async def test_twiml_another_reader_may_read_otherwise_is_refused(twiml: str) -> None:
    with pytest.raises(PricingRefusal) as refused:
        await quote([("To", "+15005550006"), ("Twiml", twiml)], CALLS, twiml_urls=[TRUSTED])
    assert (refused.value.status, refused.value.code) == (400, "bad_request")
    utf8 = "<?xml version='1.0' encoding='utf-8'?><Response/>"
    assert await quote([("To", "+15005550006"), ("Twiml", utf8)], CALLS)


async def test_a_free_call_update_still_may_not_run_other_twiml() -> None:
    free = {"free_endpoints": ["POST /2010-04-01/Accounts/*/Calls/*"], "twiml_urls": [TRUSTED]}
    update = CALLS.replace(".json", "/CA1.json")
    assert (await quote([("Status", "completed")], update, **free)).micros == 0
    with pytest.raises(PricingRefusal) as refused:
        await quote([("Url", "https://attacker.example/x")], update, **free)
    assert refused.value.code == "unpriced_endpoint"


async def test_with_no_twiml_urls_a_call_runs_inline_twiml_only() -> None:
    with pytest.raises(PricingRefusal, match=r"twilio\.twiml_urls"):
        await quote([("To", "+15005550006"), ("Url", TRUSTED)], CALLS)
    with pytest.raises(PricingRefusal, match=r"twilio\.twiml_applications"):
        await quote([("To", "+15005550006"), ("ApplicationSid", APP)], CALLS)
    status_callbacks = (
        "<Response><Dial action='' >+15005550006</Dial></Response>",
        "<Response><Record recordingStatusCallback='https://x/cb'/></Response>",
    )
    with pytest.raises(PricingRefusal):
        await quote([("To", "+15005550006"), ("Twiml", status_callbacks[0])], CALLS)
    # A callback's answer is not run: it needs no trust.
    await quote([("To", "+15005550006"), ("Twiml", status_callbacks[1])], CALLS)
    await quote([("To", "+15005550006"), ("StatusCallback", "https://x/cb")], CALLS)


@pytest.mark.parametrize("name", ["url", "URL", "fallbackurl", "applicationsid"])
async def test_a_twiml_source_spelt_in_another_case_is_refused(name: str) -> None:
    with pytest.raises(PricingRefusal) as refused:
        await quote([("To", "+15005550006"), (name, TRUSTED)], CALLS, twiml_urls=[TRUSTED])
    assert (refused.value.status, refused.value.code) == (400, "bad_request")


@pytest.mark.parametrize(
    "settings",
    [
        {"twiml_urls": "https://voice.example.com/"},
        {"twiml_urls": ["https://voice.example.com/twiml"]},
        {"twiml_urls": ["https://voice.example.com/twiml/?x=1"]},
        {"twiml_urls": ["https://user@voice.example.com/"]},
        {"twiml_urls": ["ftp://voice.example.com/"]},
        {"twiml_urls": ["/twiml/"]},
        {"twiml_applications": ["AP123"]},
        {"twiml_applications": "AP" + "a" * 32},
    ],
)
def test_twiml_trust_settings_are_checked(settings: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"twilio\.twiml_"):
        TwilioPricing.from_mapping(settings)


# Parameters that repeat.


@pytest.mark.parametrize(
    ("path", "form"),
    [
        (
            CALLS,
            [
                ("To", "+15005550006"),
                ("Url", "https://x/t.xml"),
                ("RecordingStatusCallbackEvent", "in-progress"),
                ("RecordingStatusCallbackEvent", "completed"),
                ("StatusCallbackEvent", "initiated"),
                ("StatusCallbackEvent", "answered"),
            ],
        ),
        (
            MESSAGES,
            [
                ("To", "+15005550006"),
                ("Body", "hi"),
                ("PersistentAction", "mailto:a@example.com"),
                ("PersistentAction", "geo:37.78,-122.39"),
            ],
        ),
    ],
)
async def test_array_parameters_of_the_spec_may_repeat(
    path: str, form: list[tuple[str, str]]
) -> None:
    await quote(form, path, twiml_urls=["https://x/"])


@pytest.mark.parametrize(
    ("path", "form"),
    [
        (MESSAGES, [("To", "+15005550006"), ("To", "+18765551234")]),
        (
            MESSAGES,
            [("To", "+15005550006"), ("StatusCallbackEvent", "a"), ("StatusCallbackEvent", "b")],
        ),
        (CALLS, [("To", "+15005550006"), ("MediaUrl", "a"), ("MediaUrl", "b")]),
        (CALLS, [("To", "+15005550006"), ("Twiml", "<Response/>"), ("Twiml", dial("+1"))]),
    ],
)
async def test_scalar_parameters_may_not_repeat(path: str, form: list[tuple[str, str]]) -> None:
    with pytest.raises(PricingRefusal) as refused:
        await quote(form, path)
    assert (refused.value.status, refused.value.code) == (400, "bad_request")


@pytest.mark.node
def test_the_array_parameters_are_the_specs() -> None:
    spec = _spec("twilio_api_v2010.json")
    arrays = {}
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if not isinstance(op, dict) or "responses" not in op:
                continue  # the path's own "parameters", "servers", ...
            form = op.get("requestBody", {}).get("content", {})
            schema = form.get("application/x-www-form-urlencoded", {}).get("schema", {})
            names = {k for k, v in schema.get("properties", {}).items() if v.get("type") == "array"}
            assert method == "post" or not names
            if names:
                arrays[path] = frozenset(names)
    assert arrays == ARRAY_PARAMETERS


@pytest.mark.parametrize(
    ("body", "segments"),
    [
        ("]" * 153, 3),  # an escape pair is never split: 76 a part, not 76.5
        ("\u20ac" * 229, 4),
        ("\U0001f600" * 67, 3),  # nor a surrogate pair
        ("\U0001f600" * 100, 4),
        (("a" + "\u0301" * 33) * 47, 47),  # nor a grapheme cluster
        ("\U0001f44d\U0001f3fd" * 33, 3),  # a skin-toned emoji is 4 units that stay together
        # Clusters of 34 units, one to a part, whatever makes them one: Hangul jamo, Thai
        # sara am (a spacing mark), Arabic prepended signs, half-width voiced marks.
        (("\u1100" * 32 + "\u1161" + "\u11a8") * 47, 47),
        (("\u0e01" + "\u0e33" * 33) * 47, 47),
        (("\u0600" * 33 + "\u0661") * 47, 47),
        (("\uff76" + "\uff9e" * 33) * 47, 47),
        ("a" * 306, 2),
        ("a" * 307, 3),
    ],
)
def test_segments_are_packed_as_twilio_packs_them(body: str, segments: int) -> None:
    assert sms_segments(body) == segments


@given(
    st.lists(
        st.sampled_from(["a", "\u0301" * 33, "\u1100" * 20, "\u1161", "\u0e33", "ж", "\U0001f44d"]),
        max_size=120,
    ).map("".join)
)
def test_without_grapheme_clusters_segments_are_bounded_from_above(body: str) -> None:
    exact = sms_segments(body)
    with mock.patch.object(twilio_pricing, "_GRAPHEMES", None):
        bound = sms_segments(body)
    assert bound >= exact
    units = len(body.encode("utf-16-le")) // 2
    assert bound == 1 or bound <= 2 * -(-units // 67) + 1


def test_without_grapheme_clusters_a_crafted_body_is_not_undercounted() -> None:
    body = ("\u1100" * 32 + "\u1161" + "\u11a8") * 47  # 47 clusters of 34 units
    with mock.patch.object(twilio_pricing, "_GRAPHEMES", None):
        assert sms_segments(body) >= 47
        assert sms_segments("ж" * 70) == 1


@pytest.mark.parametrize(
    "body",
    [
        b"To=%2B15005550006&From=%2B15005550001&Url=https%3A%2F%2Fx&timelimit=99999",
        b"to=%2B447700900123&To=%2B15005550006&From=%2B15005550001&Url=https%3A%2F%2Fx",
        b"To=%2B15005550006&From=%2B15005550001&Twiml=%3CResponse%2F%3E&TWIML=x",
    ],
)
async def test_a_parameter_in_another_letter_case_is_refused(body: bytes) -> None:
    pricer = TwilioPricer(account_sid=ACCOUNT)
    request = VendorRequest(
        "POST", normalise_path(CALLS), "", "application/x-www-form-urlencoded", body
    )
    with pytest.raises(PricingRefusal) as refused:
        await pricer.quote(request, no_lookup)
    assert refused.value.code == "bad_request"


@pytest.mark.parametrize(
    "to",
    [
        "+\u0664\u0664\u0667\u0660" + "12345678",  # Arabic-Indic digits: +4470..., read as +1...
        "+\uff14\uff14" + "7700900000",  # full-width digits
        "+1500555\u00a00006",  # a no-break space
    ],
)
async def test_an_address_in_other_digits_is_refused(to: str) -> None:
    for form, path in (
        ([("To", to), ("Body", "hi")], MESSAGES),
        ([("To", to), ("Twiml", "<Response/>")], CALLS),
        ([("To", "+15005550006"), ("Twiml", dial(to))], CALLS),
    ):
        with pytest.raises(PricingRefusal) as refused:
            await quote(form, path)
        assert (refused.value.status, refused.value.code) == (400, "bad_request")


async def test_a_message_twilio_would_rewrite_is_refused() -> None:
    # Shortened links are rewritten after pricing, and may lengthen the body.
    with pytest.raises(PricingRefusal) as refused:
        await quote([("To", "+15005550006"), ("Body", "see x.test"), ("ShortenUrls", "true")])
    assert refused.value.code == "unpriced_endpoint"
    plain = [("To", "+15005550006"), ("Body", "hi"), ("ShortenUrls", "false")]
    assert (await quote(plain)).micros == 8_300
    with pytest.raises(PricingRefusal):
        await quote([("To", "+15005550006"), ("Body", "hi"), ("shortenurls", "true")])


@pytest.mark.parametrize(
    "resource", ["Messages/.json", "Calls/.json", "Messages/a%20b.json", "Calls/a-b.json"]
)
async def test_an_update_names_a_sid(resource: str) -> None:
    path = MESSAGES.replace("Messages.json", resource)
    with pytest.raises(PricingRefusal) as refused:
        await quote([("To", "+15005550006"), ("Body", "hi")], path)
    assert (refused.value.status, refused.value.code) == (400, "bad_request")
    sid = "SM" + "0" * 32
    assert await quote([("Status", "canceled")], MESSAGES.replace(".json", f"/{sid}.json"))
