"""The vendors a server proxies: where each lives, its credential, and its pricer, built from
the configuration and the operator's pricing file.

The file is JSON, read with decimals (never floats)::

    {
      "stripe": {"currencies": {"eur": {"usd_rate": "1.10"}},
                 "free_endpoints": ["POST /v1/subscriptions"]},
      "twilio": {"sms_usd_per_segment": {"1": "0.0083", "default": "0.10"},
                 "max_call_minutes": 5}
    }

Every section and setting is optional; what is left out keeps its default.
"""

from __future__ import annotations

import base64
import json
from decimal import Decimal
from pathlib import Path

import attrs
from aiohttp import web
from yarl import URL

from keybrake.server.config import ServerConfig
from keybrake.server.http.upstream import Origin
from keybrake.vendors._pricing import Pricer
from keybrake.vendors.stripe.pricing import StripePricer, StripePricing
from keybrake.vendors.twilio.pricing import TwilioPricer, TwilioPricing

__all__ = ["VENDORS", "PricingFileError", "Vendor", "load_pricers", "vendors_from_config"]


class PricingFileError(ValueError):
    """The pricing file can't be read or is malformed; the server refuses to start."""


def load_pricers(config: ServerConfig) -> dict[str, Pricer]:
    """Each vendor's pricer, with the settings of ``config.pricing_file`` if there is one.

    Raises:
        PricingFileError: an unreadable or malformed pricing file.
    """
    stripe, twilio = StripePricing(), TwilioPricing()
    if config.pricing_file:
        try:
            data = json.loads(Path(config.pricing_file).read_text(), parse_float=Decimal)
        except (OSError, ValueError) as exc:
            raise PricingFileError(f"can't read pricing file {config.pricing_file}: {exc}") from exc
        if not isinstance(data, dict) or set(data) - {"stripe", "twilio"}:
            raise PricingFileError("a pricing file is an object with 'stripe' and/or 'twilio'")
        try:
            if "stripe" in data:
                stripe = StripePricing.from_mapping(data["stripe"])
            if "twilio" in data:
                twilio = TwilioPricing.from_mapping(data["twilio"])
        except (ValueError, TypeError) as exc:
            raise PricingFileError(f"{config.pricing_file}: {exc}") from exc
    return {
        "stripe": StripePricer(stripe),
        "twilio": TwilioPricer(twilio, account_sid=config.twilio_account_sid),
    }


@attrs.frozen
class Vendor:
    """How to reach one vendor and what its requests cost."""

    name: str
    base_url: URL
    authorization: str | None = attrs.field(repr=False)
    pricer: Pricer
    #: The vendor replays requests that repeat an ``Idempotency-Key`` (so we must not recount).
    honours_idempotency: bool = False
    #: ``base_url`` as text without a trailing ``/``: vendor paths are appended to it.
    base: str = attrs.field(
        init=False,
        repr=False,
        default=attrs.Factory(lambda self: str(self.base_url).rstrip("/"), takes_self=True),
    )
    #: Where requests go: scheme, host, port and path prefix of ``base_url``.
    origin: Origin = attrs.field(
        init=False,
        repr=False,
        default=attrs.Factory(lambda self: Origin.from_url(self.base_url), takes_self=True),
    )


def vendors_from_config(config: ServerConfig) -> dict[str, Vendor]:
    """The vendors this server proxies, with their credentials and pricers.

    Raises:
        PricingFileError: the operator's pricing file is malformed.
    """

    def basic(user: str, password: str) -> str:
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    pricers = load_pricers(config)
    stripe_auth = f"Bearer {config.stripe_secret_key}" if config.stripe_secret_key else None
    twilio_auth = (
        basic(config.twilio_account_sid, config.twilio_auth_token)
        if config.twilio_account_sid and config.twilio_auth_token
        else None
    )
    return {
        "stripe": Vendor(
            "stripe",
            URL(config.stripe_api_base),
            stripe_auth,
            pricers["stripe"],
            honours_idempotency=True,
        ),
        "twilio": Vendor("twilio", URL(config.twilio_api_base), twilio_auth, pricers["twilio"]),
    }


#: The application's vendors, by name (set by :func:`~keybrake.server.proxy.handler.add_routes`).
VENDORS: web.AppKey[dict[str, Vendor]] = web.AppKey("vendors", dict)
