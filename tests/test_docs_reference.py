"""Every public name has its place in the API reference."""

from __future__ import annotations

from pathlib import Path

import keybrake
from keybrake.vendors.stripe import client as stripe_client
from keybrake.vendors.twilio import client as twilio_client

REFERENCE = (Path(__file__).parent.parent / "docs" / "sdk.md").read_text()


def test_every_public_name_is_documented() -> None:
    names = [n for n in keybrake.__all__ if n != "__version__"]
    names += [n for n in stripe_client.__all__ if n != "encode_form"]
    names += list(twilio_client.__all__)
    missing = [name for name in names if f"`{name}" not in REFERENCE]
    assert missing == []
