"""Loading the operator's pricing file and building each vendor's pricer.

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

import json
from decimal import Decimal
from pathlib import Path

from keybrake.server.config import ServerConfig
from keybrake.vendors._pricing import Pricer
from keybrake.vendors.stripe.pricing import StripePricer, StripePricing
from keybrake.vendors.twilio.pricing import TwilioPricer, TwilioPricing

__all__ = ["PricingFileError", "load_pricers"]


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
