"""Class 3: Twilio never hands out a credential, and prices what an adversary can hide.

The recording upstream stands in for Twilio, so each test sees exactly what reached it.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode

import pytest

from tests.adversarial.rawhttp import RawAnswer, send
from tests.adversarial.test_forwarding import FORM
from tests.conftest import TWILIO_ACCOUNT_SID
from tests.recorder import Proxy, Recorder

OTHER = "AC" + "f" * 32


async def twilio(
    proxy: Proxy, token: str, method: str, path: str, form: list[tuple[str, str]] | None = None
) -> RawAnswer:
    body = urlencode(form).encode() if form else b""
    headers = [("Authorization", f"Bearer {token}"), ("Content-Type", FORM)]
    return await send(proxy.url, method, "/twilio" + path, headers, body)


async def issue(proxy: Proxy, cap: int = 100) -> dict[str, str]:
    key = await proxy.issue(vendor="twilio", allowed_endpoints=["/**"], daily_usd_cap=cap)
    return {"id": key["id"], "token": key["token"]}


@pytest.mark.parametrize(
    "path",
    [
        f"/2010-04-01/Accounts/{OTHER}.json",  # answers with the account's auth token
        f"/2010-04-01/Accounts/{OTHER}",
        "/2010-04-01/Accounts.json",
        f"/2010-04-01/%41ccounts/{OTHER}.json",  # another spelling of the same
        f"/2010-04-01/accounts/{OTHER}.json",
        f"/2010-04-01/Accounts/{OTHER}/Keys.json",
        f"/2010-04-01/Accounts/{OTHER}/SigningKeys.json",
        f"/2010-04-01/Accounts/{OTHER}/SIP/CredentialLists.json",
        "/v1/Services",
    ],
)
async def test_credential_resources_are_never_proxied(
    proxy: Proxy, recorder: Recorder, path: str
) -> None:
    key = await issue(proxy)
    for method in ("GET", "POST", "DELETE"):
        answer = await twilio(proxy, key["token"], method, path)
        assert answer.status == 403, (method, path)
        assert answer.json()["code"] == "endpoint_not_allowed"
    assert recorder.requests == []


async def test_an_escaped_path_is_pinned_to_the_account_like_any_other(
    proxy: Proxy, recorder: Recorder
) -> None:
    key = await issue(proxy)
    answer = await twilio(proxy, key["token"], "GET", f"/2010-04-01/%41ccounts/{OTHER}/Calls.json")
    assert answer.status == 200
    [(_, target, _, _)] = recorder.requests
    assert target == f"/2010-04-01/Accounts/{TWILIO_ACCOUNT_SID}/Calls.json"


async def test_post_parameters_in_the_query_string_are_refused(
    proxy: Proxy, recorder: Recorder
) -> None:
    key = await issue(proxy)
    answer = await twilio(
        proxy,
        key["token"],
        "POST",
        f"/2010-04-01/Accounts/{OTHER}/Messages.json?SendAsMms=true",
        [("To", "+15005550006"), ("From", "+15005550001"), ("Body", "hi")],
    )
    assert (answer.status, answer.json()["code"]) == (400, "bad_request")
    assert recorder.requests == []


@pytest.mark.parametrize(
    ("form", "spent"),
    [
        # An SMS to the US is $0.0083 a segment; sent as MMS it is $0.022.
        ([("To", "+15005550006"), ("Body", "hi"), ("SendAsMms", "true")], "0.022"),
        # Jamaica shares +1 with the US, not its rates: the default price, $0.20.
        ([("To", "+18765550123"), ("Body", "hi")], "0.20"),
    ],
)
async def test_messages_are_priced_by_what_they_are(
    proxy: Proxy, recorder: Recorder, form: list[tuple[str, str]], spent: str
) -> None:
    recorder.answer = {"sid": "SM1", "status": "queued", "price": None}
    key = await issue(proxy)
    path = f"/2010-04-01/Accounts/{OTHER}/Messages.json"
    answer = await twilio(proxy, key["token"], "POST", path, [("From", "+15005550001"), *form])
    assert answer.status == 200
    assert (await proxy.key(key["id"]))["spent_today_usd"] == spent


async def test_inline_twiml_is_priced_for_the_leg_it_dials(
    proxy: Proxy, recorder: Recorder
) -> None:
    recorder.answer = {"sid": "CA1", "status": "queued", "price": None}
    key = await issue(proxy)
    twiml = "<Response><Dial><Number>+447700900123</Number></Dial></Response>"
    answer = await twilio(
        proxy,
        key["token"],
        "POST",
        f"/2010-04-01/Accounts/{OTHER}/Calls.json",
        [("To", "+15005550006"), ("From", "+15005550001"), ("Twiml", twiml)],
    )
    assert answer.status == 200
    # Ten minutes to the US at $0.014, and ten to the UK leg at $0.017.
    assert (await proxy.key(key["id"]))["spent_today_usd"] == "0.31"


async def test_array_parameters_of_twilios_spec_pass_through(
    proxy: Proxy, recorder: Recorder
) -> None:
    recorder.answer = {"sid": "CA1", "status": "queued", "price": None}
    key = await issue(proxy)
    form = [
        ("To", "+15005550006"),
        ("From", "+15005550001"),
        ("Url", "https://example.com/twiml"),
        ("RecordingStatusCallbackEvent", "in-progress"),
        ("RecordingStatusCallbackEvent", "completed"),
        ("StatusCallbackEvent", "initiated"),
        ("StatusCallbackEvent", "answered"),
    ]
    answer = await twilio(
        proxy, key["token"], "POST", f"/2010-04-01/Accounts/{OTHER}/Calls.json", form
    )
    assert answer.status == 200
    [(_, _, _, body)] = recorder.requests
    sent = parse_qsl(body.decode(), keep_blank_values=True)
    assert [v for k, v in sent if k == "RecordingStatusCallbackEvent"] == [
        "in-progress",
        "completed",
    ]


@pytest.mark.parametrize(
    "form",
    [
        [("Url", "https://attacker.example/dial-premium.xml")],
        [("Url", "https://example.com/twiml"), ("FallbackUrl", "https://attacker.example/x")],
        [("Url", "https://example.com@attacker.example/twiml")],
        [("Url", "https://example.com.attacker.example/twiml")],
        [("Url", "https://example.com/%2e%2e/twiml")],
        [("ApplicationSid", "AP" + "a" * 32)],
        [("Twiml", "<Response><Redirect>https://attacker.example/x</Redirect></Response>")],
        [("Twiml", "<Response><Gather action='https://attacker.example/x'/></Response>")],
        [
            (
                "Twiml",
                "<Response><Dial><Number url='//attacker.example/x'>+15005550006</Number>"
                "</Dial></Response>",
            )
        ],
        [("url", "https://attacker.example/x")],
    ],
)
async def test_a_call_that_would_run_someone_elses_twiml_is_refused(
    proxy: Proxy, recorder: Recorder, form: list[tuple[str, str]]
) -> None:
    # TwiML fetched from a URL may <Dial> anywhere for as long as the call lasts, and only
    # the call's own leg would be priced: only the operator's own TwiML may run.
    key = await issue(proxy)
    calls = f"/2010-04-01/Accounts/{OTHER}/Calls"
    for path, extra in ((f"{calls}.json", [("To", "+15005550006")]), (f"{calls}/CA1.json", [])):
        answer = await twilio(proxy, key["token"], "POST", path, extra + form)
        assert answer.status in (400, 403), (path, form)
        code = "bad_request" if form[0][0] == "url" else "unpriced_endpoint"
        assert answer.json()["code"] == code
    assert recorder.requests == []
    assert (await proxy.key(key["id"]))["spent_today_usd"] == "0.00"


async def test_a_call_to_the_operators_twiml_goes_through(proxy: Proxy, recorder: Recorder) -> None:
    recorder.answer = {"sid": "CA1", "status": "queued", "price": None}
    key = await issue(proxy)
    twiml = "<Response><Gather action='https://example.com/twiml/next'/></Response>"
    for form in ([("Url", "https://example.com/twiml/start")], [("Twiml", twiml)]):
        answer = await twilio(
            proxy,
            key["token"],
            "POST",
            f"/2010-04-01/Accounts/{OTHER}/Calls.json",
            [("To", "+15005550006"), ("From", "+15005550001"), *form],
        )
        assert answer.status == 200
    assert len(recorder.requests) == 2


async def test_a_call_update_pays_for_the_minutes_it_adds(proxy: Proxy, recorder: Recorder) -> None:
    # Placed with a one-minute limit, a call could be updated to run ten: those minutes are
    # reserved at the price for the call's own "to", which keybrake asks Twilio for.
    recorder.answer = {"sid": "CA1", "to": "+447700900000", "status": "in-progress", "price": None}
    key = await issue(proxy)
    path = f"/2010-04-01/Accounts/{OTHER}/Calls/CA1.json"
    answer = await twilio(proxy, key["token"], "POST", path, [("TimeLimit", "600")])
    assert answer.status == 200
    (method, looked_up, _, _), (_, updated, _, body) = recorder.requests
    assert (method, looked_up) == (
        "GET",
        f"/2010-04-01/Accounts/{TWILIO_ACCOUNT_SID}/Calls/CA1.json",
    )
    assert updated == looked_up
    assert parse_qsl(body.decode()) == [("TimeLimit", "600")]
    # Ten minutes to the UK at $0.017, kept: Twilio's price for the call is its own, not this.
    assert (await proxy.key(key["id"]))["spent_today_usd"] == "0.17"
