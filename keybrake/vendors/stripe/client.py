"""``vk.stripe``: a typed Stripe client that talks to Stripe through the keybrake proxy."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

import attrs

from keybrake._errors import StripeError
from keybrake._transport import ProxyTransport

__all__ = ["PaymentIntent", "PaymentIntents", "StripeClient", "encode_form"]


def _flatten(prefix: str, value: Any, out: list[tuple[str, str]]) -> None:
    if value is None:
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            _flatten(f"{prefix}[{key}]" if prefix else str(key), item, out)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _flatten(f"{prefix}[{index}]", item, out)
    elif isinstance(value, bool):
        out.append((prefix, "true" if value else "false"))
    else:
        out.append((prefix, str(value)))


def encode_form(params: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Stripe's form encoding, as stripe-python does it.

    Nested dicts become ``a[b]=...``, lists ``a[0]=...``, booleans ``true``/``false``, and
    ``None`` values are left out.
    """
    out: list[tuple[str, str]] = []
    _flatten("", params, out)
    return out


def _created(raw: Mapping[str, Any]) -> datetime | None:
    value = raw.get("created")
    return datetime.fromtimestamp(value, tz=timezone.utc) if isinstance(value, int) else None


@attrs.frozen(kw_only=True)
class PaymentIntent:
    """A Stripe PaymentIntent. Money is in the currency's minor units, as Stripe gives it.

    ``raw`` holds the whole JSON object, including fields not modelled here.
    """

    id: str
    amount: int
    currency: str
    status: str
    customer: str | None = None
    created: datetime | None = None
    raw: Mapping[str, Any] = attrs.field(factory=dict, repr=False, eq=False)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> PaymentIntent:
        customer = raw.get("customer")
        return cls(
            id=str(raw["id"]),
            amount=int(raw["amount"]),
            currency=str(raw["currency"]),
            status=str(raw.get("status", "")),
            customer=customer if isinstance(customer, str) else None,
            created=_created(raw),
            raw=dict(raw),
        )


class StripeClient:
    """Stripe through the proxy. Resources are attributes; :meth:`request` reaches the rest."""

    def __init__(self, transport: ProxyTransport) -> None:
        self._transport = transport
        self.payment_intents = PaymentIntents(self)

    def __repr__(self) -> str:
        return f"StripeClient({self._transport.base_url!r})"

    async def request(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Call any Stripe endpoint (``path`` like ``"/v1/customers"``) and return its JSON.

        ``POST`` requests carry an ``Idempotency-Key`` (a new one unless given).

        Raises:
            StripeError: Stripe answered with an error.
            ProxyRefused: the proxy refused the call (cap, endpoint, key state).
            KeybrakeUnavailable: the proxy or Stripe could not be reached.
        """
        method = method.upper()
        form = encode_form(params or {})
        headers: dict[str, str] = {}
        if method == "POST":
            headers["Idempotency-Key"] = idempotency_key or f"kb-{uuid.uuid4()}"
        response = await self._transport.send(
            method,
            path,
            query=form if method in ("GET", "DELETE") else None,
            form=form if method == "POST" else None,
            headers=headers,
        )
        try:
            data = json.loads(response.body)
        except ValueError:
            data = None
        if response.status >= 400 or not isinstance(data, dict):
            error = data.get("error") if isinstance(data, dict) else None
            fields: Mapping[str, Any] = error if isinstance(error, dict) else {}
            message = fields.get("message") or f"Stripe answered HTTP {response.status}"
            code = fields.get("code")
            raise StripeError(
                str(message),
                status=response.status,
                code=code if isinstance(code, str) else None,
                request_id=response.headers.get("Request-Id"),
                body=data if isinstance(data, dict) else {},
                vendor_fields=fields,
            )
        return data


class PaymentIntents:
    """``vk.stripe.payment_intents``."""

    def __init__(self, client: StripeClient) -> None:
        self._client = client

    async def create(
        self,
        *,
        amount: int,
        currency: str,
        idempotency_key: str | None = None,
        **params: Any,
    ) -> PaymentIntent:
        """Create a PaymentIntent; ``amount`` is in the currency's minor units (cents).

        The proxy reserves the amount (in USD) against the key's daily cap before Stripe
        sees the request.

        Raises:
            SpendCapExceeded: the amount would take the key past its cap.
            StripeError: Stripe refused the request.
        """
        data = await self._client.request(
            "POST",
            "/v1/payment_intents",
            {"amount": amount, "currency": currency, **params},
            idempotency_key=idempotency_key,
        )
        return PaymentIntent.from_json(data)

    async def retrieve(self, intent_id: str) -> PaymentIntent:
        """Fetch one PaymentIntent."""
        data = await self._client.request("GET", f"/v1/payment_intents/{quote(intent_id, safe='')}")
        return PaymentIntent.from_json(data)
