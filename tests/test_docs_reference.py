"""Every public name has its place in the API reference generated from the docstrings."""

from __future__ import annotations

import re
from pathlib import Path

import keybrake
import keybrake.sync
from keybrake.vendors.resend import client as resend_client
from keybrake.vendors.stripe import client as stripe_client
from keybrake.vendors.twilio import client as twilio_client

REFERENCE = Path(__file__).parent.parent / "docs" / "reference.md"


def documented(text: str) -> set[str]:
    """The objects a reference page renders: one ``::: dotted.path`` line each."""
    return set(re.findall(r"^::: *([\w.]+) *$", text, flags=re.MULTILINE))


def public_names() -> list[str]:
    names = [f"keybrake.{n}" for n in keybrake.__all__ if n != "__version__"]
    names += [f"{stripe_client.__name__}.{n}" for n in stripe_client.__all__ if n != "encode_form"]
    names += [f"{twilio_client.__name__}.{n}" for n in twilio_client.__all__]
    names += [f"{resend_client.__name__}.{n}" for n in resend_client.__all__]
    names += [f"keybrake.sync.{n}" for n in keybrake.sync.__all__]
    return names


def test_every_public_name_is_documented() -> None:
    rendered = documented(REFERENCE.read_text())
    missing = [name for name in public_names() if name not in rendered]
    assert missing == []


def test_a_name_left_out_is_found_missing() -> None:
    text = REFERENCE.read_text().replace("::: keybrake.KeySpec\n", "")
    rendered = documented(text)
    assert [name for name in public_names() if name not in rendered] == ["keybrake.KeySpec"]
