"""The vendors a server proxies, built from the installed vendor plugins (entry-point group
``keybrake.vendors``), the configuration and the operator's pricing file.

The pricing file is JSON, read with decimals (never floats), one section per vendor::

    {
      "stripe": {"currencies": {"eur": {"usd_rate": "1.10"}},
                 "free_endpoints": ["POST /v1/subscriptions"]},
      "twilio": {"sms_usd_per_segment": {"1": "0.0083", "default": "0.10"},
                 "max_call_minutes": 5},
      "resend": {"usd_per_email": "0.0009"}
    }

Every section and setting is optional; what is left out keeps its default.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs
from aiohttp import web
from yarl import URL

from keybrake.server.config import ServerConfig
from keybrake.server.http.upstream import Origin
from keybrake.vendors import Vendor, installed_vendors
from keybrake.vendors._pricing import Pricer

__all__ = ["VENDORS", "PricingFileError", "ProxiedVendor", "load_pricers", "vendors_from_config"]


class PricingFileError(ValueError):
    """The pricing file or a vendor's settings are malformed; the server refuses to start."""


def _pricing_sections(config: ServerConfig, names: set[str]) -> Mapping[str, Any]:
    if not config.pricing_file:
        return {}
    try:
        data = json.loads(Path(config.pricing_file).read_text(), parse_float=Decimal)
    except (OSError, ValueError) as exc:
        raise PricingFileError(f"can't read pricing file {config.pricing_file}: {exc}") from exc
    if not isinstance(data, dict) or set(data) - names:
        raise PricingFileError(
            f"a pricing file is an object with a section per vendor, of {sorted(names)}"
        )
    return data


def load_pricers(
    config: ServerConfig, vendors: Mapping[str, Vendor[Any]] | None = None
) -> dict[str, Pricer]:
    """Each vendor's pricer, with its section of ``config.pricing_file`` if there is one.

    Raises:
        PricingFileError: an unreadable or malformed pricing file.
    """
    vendors = installed_vendors() if vendors is None else vendors
    sections = _pricing_sections(config, set(vendors))
    pricers: dict[str, Pricer] = {}
    for name, vendor in vendors.items():
        try:
            pricers[name] = vendor.make_pricer(
                sections.get(name), config.vendor_settings.get(name, {})
            )
        except (ValueError, TypeError) as exc:
            raise PricingFileError(f"{config.pricing_file}: {exc}") from exc
    return pricers


@attrs.frozen
class ProxiedVendor:
    """One vendor as this server reaches it: its plugin, where it lives, its credential and
    its pricer."""

    plugin: Vendor[Any]
    base_url: URL
    authorization: str | None = attrs.field(repr=False)
    pricer: Pricer
    #: Where requests go: scheme, host, port and path prefix of ``base_url``.
    origin: Origin = attrs.field(
        init=False,
        repr=False,
        default=attrs.Factory(lambda self: Origin.from_url(self.base_url), takes_self=True),
    )

    @property
    def name(self) -> str:
        return self.plugin.name

    @property
    def honours_idempotency(self) -> bool:
        """The vendor replays requests that repeat an ``Idempotency-Key`` (don't recount)."""
        return self.plugin.honours_idempotency


def vendors_from_config(
    config: ServerConfig, vendors: Mapping[str, Vendor[Any]] | None = None
) -> dict[str, ProxiedVendor]:
    """The vendors this server proxies, with their credentials and pricers: every installed
    vendor (one without credentials answers ``503 vendor_not_configured``).

    Raises:
        PricingFileError: the pricing file is malformed, or settings name a vendor that is
            not installed or a setting its plugin doesn't have.
    """
    vendors = installed_vendors() if vendors is None else vendors
    for name, settings in config.vendor_settings.items():
        if name not in vendors:
            raise PricingFileError(
                f"settings for vendor {name!r}, which is not installed (installed:"
                f" {sorted(vendors)})"
            )
        unknown = set(settings) - set(vendors[name].settings)
        if unknown:
            raise PricingFileError(f"{name}: unknown settings {sorted(unknown)}")
    pricers = load_pricers(config, vendors)
    out: dict[str, ProxiedVendor] = {}
    for name, vendor in vendors.items():
        settings = config.vendor_settings.get(name, {})
        base = URL(settings.get("api_base") or vendor.default_api_base)
        if (
            base.scheme not in ("http", "https")
            or not base.host
            or base.user is not None
            or base.password is not None
            or base.query_string
            or base.fragment
        ):
            # Credentials go in the vendor's own settings, never in a URL shown in logs.
            raise PricingFileError(
                f"{name}: api_base must be an http(s) URL with no user, password, query or fragment"
            )
        out[name] = ProxiedVendor(vendor, base, vendor.authorization(settings), pricers[name])
    return out


#: The application's vendors, by name (set by :func:`~keybrake.server.proxy.handler.add_routes`).
VENDORS: web.AppKey[dict[str, ProxiedVendor]] = web.AppKey("vendors", dict)
