"""Stripe: :mod:`.client` is the SDK's typed sub-client, :mod:`.pricing` the proxy's rules, and
:data:`VENDOR` the plugin that ties them to keybrake (entry point ``keybrake.vendors``)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from keybrake.vendors._plugin import Vendor
from keybrake.vendors._pricing import Pricer, PricingRefusal

if TYPE_CHECKING:
    from keybrake._retry import RetryPolicy
    from keybrake._transport import ProxyTransport
    from keybrake.vendors.stripe.client import StripeClient

__all__ = ["VENDOR"]

_SERVER_ERROR_TYPES = {500: "api_error", 502: "api_error", 503: "api_error", 504: "api_error"}


def _authorization(settings: Mapping[str, str]) -> str | None:
    key = settings.get("secret_key")
    return f"Bearer {key}" if key else None


def _pricer(section: Any, settings: Mapping[str, str]) -> Pricer:
    from keybrake.vendors.stripe.pricing import StripePricer, StripePricing

    return StripePricer(None if section is None else StripePricing.from_mapping(section))


def _client(transport: ProxyTransport, retry: RetryPolicy) -> StripeClient:
    from keybrake.vendors.stripe.client import StripeClient

    return StripeClient(transport, retry=retry)


def _error_shape(status: int, code: str, message: str) -> tuple[dict[str, Any], dict[str, str]]:
    """Stripe's error object, and ``Stripe-Should-Retry: false``: the official SDK raises a
    proper error with keybrake's code, and never retries a refusal."""
    error = {
        "type": _SERVER_ERROR_TYPES.get(status, "invalid_request_error"),
        "code": code,
        "message": message,
    }
    return {"error": error}, {"Stripe-Should-Retry": "false"}


def _scope(key_id: str, account: str | None, headers: Mapping[str, str]) -> dict[str, str]:
    """The merchant scope (CONTRACT §3): the key's connected account, and only it.

    Raises:
        PricingRefusal: 403 ``account_not_allowed`` for a request naming another account
            (or any account, for a key without one), or a ``Stripe-Context``.
    """
    if "Stripe-Context" in headers:
        raise PricingRefusal(
            403, "account_not_allowed", "Stripe-Context is not allowed through keybrake"
        )
    asked = headers.get("Stripe-Account")
    if asked is not None and asked != account:
        allowed = account or "the platform account only"
        raise PricingRefusal(
            403, "account_not_allowed", f"vault key {key_id} acts on {allowed}, not on {asked}"
        )
    return {"Stripe-Account": account} if account else {}


VENDOR: Vendor[StripeClient] = Vendor(
    name="stripe",
    title="Stripe",
    default_api_base="https://api.stripe.com",
    settings={"api_base": "KEYBRAKE_STRIPE_API_BASE", "secret_key": "KEYBRAKE_STRIPE_SECRET_KEY"},
    authorization=_authorization,
    make_pricer=_pricer,
    make_client=_client,
    forwarded_headers=("Stripe-Version", "X-Stripe-Client-User-Agent"),
    guarded_headers=("Stripe-Account", "Stripe-Context"),
    lookup_headers=("Stripe-Account",),
    request_id_headers=("Request-Id",),
    honours_idempotency=True,
    error_shape=_error_shape,
    scope=_scope,
    account_pattern=re.compile(r"acct_[A-Za-z0-9]{1,64}"),
)
