"""Resend: :mod:`.client` is the SDK's typed sub-client, :mod:`.pricing` the proxy's rules, and
:data:`VENDOR` the plugin that ties them to keybrake (entry point ``keybrake.vendors``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from keybrake.vendors._plugin import Vendor
from keybrake.vendors._pricing import Pricer

if TYPE_CHECKING:
    from keybrake._retry import RetryPolicy
    from keybrake._transport import ProxyTransport
    from keybrake.vendors.resend.client import ResendClient

__all__ = ["VENDOR"]


def _authorization(settings: Mapping[str, str]) -> str | None:
    key = settings.get("api_key")
    return f"Bearer {key}" if key else None


def _pricer(section: Any, settings: Mapping[str, str]) -> Pricer:
    from keybrake.vendors.resend.pricing import ResendPricer, ResendPricing

    return ResendPricer(None if section is None else ResendPricing.from_mapping(section))


def _client(transport: ProxyTransport, retry: RetryPolicy) -> ResendClient:
    from keybrake.vendors.resend.client import ResendClient

    return ResendClient(transport, retry=retry)


def _error_shape(status: int, code: str, message: str) -> tuple[dict[str, Any], dict[str, str]]:
    """Resend's error shape, ``{"statusCode", "name", "message"}``, beside keybrake's ``code``.

    The official ``resend`` SDK raises for the HTTP status with the body's ``message`` and
    its ``name`` as ``error_type``: a refusal such as 429 ``cap_exhausted`` becomes a
    ``resend.exceptions.ResendError`` with ``code`` 429, ``error_type`` ``"cap_exhausted"`` and
    keybrake's message (keybrake's codes are none of the names its exception table maps to a
    subclass, so never a ``RateLimitError`` to wait out).
    """
    return {"statusCode": status, "name": code}, {}


VENDOR: Vendor[ResendClient] = Vendor(
    name="resend",
    title="Resend",
    default_api_base="https://api.resend.com",
    settings={"api_base": "KEYBRAKE_RESEND_API_BASE", "api_key": "KEYBRAKE_RESEND_API_KEY"},
    authorization=_authorization,
    make_pricer=_pricer,
    make_client=_client,
    # Resend's batch mode: "permissive" skips invalid e-mails (then only the sent are counted).
    forwarded_headers=("X-Batch-Validation",),
    body_format="json",
    # Resend replays a repeated Idempotency-Key, resend-local doesn't: a replay is counted again.
    honours_idempotency=False,
    error_shape=_error_shape,
)
