"""The operator's pricing file: read at start, malformed ones refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from keybrake.server import ServerConfig
from keybrake.server.proxy.vendors import PricingFileError, load_pricers
from keybrake.vendors.stripe.pricing import StripePricer


def test_pricing_file_overrides_defaults(tmp_path: Path) -> None:
    path = tmp_path / "pricing.json"
    path.write_text('{"stripe": {"currencies": {"eur": {"usd_rate": 1.1}}}}')
    pricers = load_pricers(ServerConfig(pricing_file=str(path)))
    stripe = pricers["stripe"]
    assert isinstance(stripe, StripePricer)
    assert stripe.to_usd_micros(100, "eur") == 1_100_000  # the JSON number read as a decimal


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"paypal": {}}',
        '{"stripe": {"currencies": {"eur": "x"}}}',
        '{"twilio": {"max_call_minutes": -1}}',
    ],
)
def test_malformed_pricing_files_are_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "pricing.json"
    path.write_text(text)
    with pytest.raises(PricingFileError):
        load_pricers(ServerConfig(pricing_file=str(path)))


def test_missing_pricing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PricingFileError, match="can't read"):
        load_pricers(ServerConfig(pricing_file=str(tmp_path / "nope.json")))
