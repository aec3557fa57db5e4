"""Vendors are plugins: each package exports one [`Vendor`][keybrake.vendors.Vendor] through the
entry-point group ``keybrake.vendors``, keybrake's own Stripe, Twilio and Resend included.

A vendor package keeps its typed SDK client and its pricing rules side by side. The pricing
modules are used by the server and import nothing from the SDK; the client modules are used
by the SDK and import nothing from the server.
"""

from keybrake.vendors._plugin import COMMON_FORWARDED_HEADERS, ErrorShape, Scope, Vendor
from keybrake.vendors._pricing import (
    FREE,
    Counted,
    Lookup,
    Outcome,
    Pricer,
    PriceReport,
    PricingRefusal,
    Quote,
    VendorRequest,
    decimal_setting,
    parse_form,
    parse_json,
    usd_to_micros,
)
from keybrake.vendors._registry import GROUP, VendorLoadError, get_vendor, installed_vendors

__all__ = [
    "COMMON_FORWARDED_HEADERS",
    "FREE",
    "GROUP",
    "Counted",
    "ErrorShape",
    "Lookup",
    "Outcome",
    "PriceReport",
    "Pricer",
    "PricingRefusal",
    "Quote",
    "Scope",
    "Vendor",
    "VendorLoadError",
    "VendorRequest",
    "decimal_setting",
    "get_vendor",
    "installed_vendors",
    "parse_form",
    "parse_json",
    "usd_to_micros",
]
