"""Twilio: :mod:`.client` is the SDK's typed sub-client, :mod:`.pricing` the proxy's rules, and
:data:`VENDOR` the plugin that ties them to keybrake (entry point ``keybrake.vendors``)."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from keybrake.vendors._plugin import Vendor
from keybrake.vendors._pricing import Pricer

if TYPE_CHECKING:
    from keybrake._retry import RetryPolicy
    from keybrake._transport import ProxyTransport
    from keybrake.vendors.twilio.client import TwilioClient

__all__ = ["VENDOR"]


def _authorization(settings: Mapping[str, str]) -> str | None:
    sid, token = settings.get("account_sid"), settings.get("auth_token")
    if not (sid and token):
        return None
    return "Basic " + base64.b64encode(f"{sid}:{token}".encode()).decode()


def _pricer(section: Any, settings: Mapping[str, str]) -> Pricer:
    from keybrake.vendors.twilio.pricing import TwilioPricer, TwilioPricing

    pricing = None if section is None else TwilioPricing.from_mapping(section)
    return TwilioPricer(pricing, account_sid=settings.get("account_sid"))


def _client(transport: ProxyTransport, retry: RetryPolicy) -> TwilioClient:
    from keybrake.vendors.twilio.client import TwilioClient

    return TwilioClient(transport, retry=retry)


def _error_shape(status: int, code: str, message: str) -> tuple[dict[str, Any], dict[str, str]]:
    """Twilio's error shape: its SDK reads ``status``, ``message`` and ``code``."""
    return {"status": status}, {}


VENDOR: Vendor[TwilioClient] = Vendor(
    name="twilio",
    title="Twilio",
    default_api_base="https://api.twilio.com",
    settings={
        "api_base": "KEYBRAKE_TWILIO_API_BASE",
        "account_sid": "KEYBRAKE_TWILIO_ACCOUNT_SID",
        "auth_token": "KEYBRAKE_TWILIO_AUTH_TOKEN",
    },
    authorization=_authorization,
    make_pricer=_pricer,
    make_client=_client,
    forwarded_headers=("X-Twilio-Client",),
    request_id_headers=("Twilio-Request-Id",),
    error_shape=_error_shape,
)
