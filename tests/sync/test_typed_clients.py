"""The typed faces of vk.stripe and vk.twilio list exactly the async clients' methods.

At run time the sync clients are the async ones behind one generic wrapper; these protocols
only tell a type checker what that wrapper shows. They must not drift from the clients.
"""

from __future__ import annotations

import inspect
from typing import Any

import aiohttp
import pytest

from keybrake._transport import ProxyTransport
from keybrake.vendors.resend import blocking as resend_blocking
from keybrake.vendors.resend.client import ResendClient
from keybrake.vendors.stripe import blocking as stripe_blocking
from keybrake.vendors.stripe.client import StripeClient
from keybrake.vendors.twilio import blocking as twilio_blocking
from keybrake.vendors.twilio.client import TwilioClient


def no_session() -> aiohttp.ClientSession:
    raise AssertionError("nothing is sent here")


def transport() -> ProxyTransport:
    return ProxyTransport(
        vendor="x", proxy_url="http://127.0.0.1:9", session=no_session, token=lambda: ""
    )


def public(obj: Any) -> set[str]:
    """Public methods and instance attributes; class-level plumbing (``path``) left out."""
    names = {name for name in dir(obj) if not name.startswith("_")}
    if isinstance(obj, type):
        return names
    return {
        name
        for name in names
        if inspect.isfunction(inspect.getattr_static(type(obj), name, None)) or name in vars(obj)
    }


def parameters(fn: Any) -> list[tuple[str, Any, Any, Any]]:
    sig = inspect.signature(fn)
    return [(p.name, p.kind, p.default, p.annotation) for p in sig.parameters.values()]


def same_face(protocol: type, target: object) -> None:
    assert public(protocol) == public(target), protocol.__name__
    for name in public(target):
        value = getattr(target, name)
        face = inspect.getattr_static(protocol, name)
        if isinstance(face, property):
            sub = face.fget.__annotations__["return"]
            if isinstance(value, str):
                assert sub == "str"
            else:
                modules = (stripe_blocking, twilio_blocking, resend_blocking)
                same_face(next(getattr(m, sub) for m in modules if hasattr(m, sub)), value)
        else:
            assert inspect.ismethod(value), name
            assert parameters(getattr(protocol, name))[1:] == parameters(value), (
                f"{protocol.__name__}.{name}"
            )


@pytest.mark.parametrize(
    ("protocol", "client"),
    [
        (stripe_blocking.BlockingStripeClient, StripeClient(transport())),
        (twilio_blocking.BlockingTwilioClient, TwilioClient(transport())),
        (resend_blocking.BlockingResendClient, ResendClient(transport())),
    ],
    ids=["stripe", "twilio", "resend"],
)
def test_the_typed_face_matches_the_async_client(protocol: type, client: object) -> None:
    same_face(protocol, client)


def test_a_drifted_face_is_caught() -> None:
    class Drifted(stripe_blocking.BlockingCustomers):
        def create(self, *, idempotency_key: str | None = None) -> Any: ...  # type: ignore[override]

    with pytest.raises(AssertionError):
        same_face(Drifted, StripeClient(transport()).customers)
