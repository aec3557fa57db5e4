"""``vk.stripe``: a typed Stripe client that talks to Stripe through the keybrake proxy.

Resources mirror the official SDK's names: ``payment_intents``, ``customers``, ``charges``,
``refunds``, ``payment_methods``. Money stays in the currency's minor units (cents), as Stripe
gives it; times are aware datetimes; every model keeps the whole JSON object in ``raw``.

Each write carries one ``Idempotency-Key``, reused by every retry of that call, so a retry
after a timeout is neither executed nor counted twice.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import datetime, timezone
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import attrs

from keybrake._errors import StripeError
from keybrake._retry import RetryPolicy
from keybrake._transport import ProxyTransport

__all__ = [
    "Charge",
    "Charges",
    "Customer",
    "Customers",
    "PaymentIntent",
    "PaymentIntents",
    "PaymentMethod",
    "PaymentMethods",
    "Refund",
    "Refunds",
    "StripeClient",
    "encode_form",
]

#: Page size of auto-paginating lists.
LIST_PAGE_SIZE = 100


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


def _time(raw: Mapping[str, Any], name: str = "created") -> datetime | None:
    value = raw.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return datetime.fromtimestamp(value, tz=timezone.utc)


def _str(raw: Mapping[str, Any], name: str) -> str | None:
    value = raw.get(name)
    return value if isinstance(value, str) else None


def _id(raw: Mapping[str, Any], name: str) -> str | None:
    """An id field that may also come expanded into an object."""
    value = raw.get(name)
    if isinstance(value, Mapping):
        value = value.get("id")
    return value if isinstance(value, str) else None


def _int(raw: Mapping[str, Any], name: str) -> int | None:
    value = raw.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _metadata(raw: Mapping[str, Any]) -> dict[str, str]:
    value = raw.get("metadata")
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, Mapping) else {}


@attrs.frozen(kw_only=True)
class PaymentIntent:
    """A Stripe PaymentIntent."""

    id: str
    amount: int
    currency: str
    status: str
    customer: str | None = None
    payment_method: str | None = None
    latest_charge: str | None = None
    amount_received: int | None = None
    created: datetime | None = None
    metadata: Mapping[str, str] = attrs.field(factory=dict)
    raw: Mapping[str, Any] = attrs.field(factory=dict, repr=False, eq=False)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> PaymentIntent:
        return cls(
            id=str(raw["id"]),
            amount=int(raw["amount"]),
            currency=str(raw["currency"]),
            status=str(raw.get("status", "")),
            customer=_id(raw, "customer"),
            payment_method=_id(raw, "payment_method"),
            latest_charge=_id(raw, "latest_charge"),
            amount_received=_int(raw, "amount_received"),
            created=_time(raw),
            metadata=_metadata(raw),
            raw=dict(raw),
        )


@attrs.frozen(kw_only=True)
class Customer:
    """A Stripe Customer."""

    id: str
    email: str | None = None
    name: str | None = None
    created: datetime | None = None
    metadata: Mapping[str, str] = attrs.field(factory=dict)
    raw: Mapping[str, Any] = attrs.field(factory=dict, repr=False, eq=False)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Customer:
        return cls(
            id=str(raw["id"]),
            email=_str(raw, "email"),
            name=_str(raw, "name"),
            created=_time(raw),
            metadata=_metadata(raw),
            raw=dict(raw),
        )


@attrs.frozen(kw_only=True)
class Charge:
    """A Stripe Charge."""

    id: str
    amount: int
    currency: str
    status: str
    amount_refunded: int = 0
    paid: bool = False
    refunded: bool = False
    customer: str | None = None
    payment_intent: str | None = None
    created: datetime | None = None
    metadata: Mapping[str, str] = attrs.field(factory=dict)
    raw: Mapping[str, Any] = attrs.field(factory=dict, repr=False, eq=False)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Charge:
        return cls(
            id=str(raw["id"]),
            amount=int(raw["amount"]),
            currency=str(raw["currency"]),
            status=str(raw.get("status", "")),
            amount_refunded=_int(raw, "amount_refunded") or 0,
            paid=bool(raw.get("paid", False)),
            refunded=bool(raw.get("refunded", False)),
            customer=_id(raw, "customer"),
            payment_intent=_id(raw, "payment_intent"),
            created=_time(raw),
            metadata=_metadata(raw),
            raw=dict(raw),
        )


@attrs.frozen(kw_only=True)
class Refund:
    """A Stripe Refund."""

    id: str
    amount: int
    currency: str
    status: str
    charge: str | None = None
    payment_intent: str | None = None
    created: datetime | None = None
    metadata: Mapping[str, str] = attrs.field(factory=dict)
    raw: Mapping[str, Any] = attrs.field(factory=dict, repr=False, eq=False)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Refund:
        return cls(
            id=str(raw["id"]),
            amount=int(raw["amount"]),
            currency=str(raw["currency"]),
            status=str(raw.get("status", "")),
            charge=_id(raw, "charge"),
            payment_intent=_id(raw, "payment_intent"),
            created=_time(raw),
            metadata=_metadata(raw),
            raw=dict(raw),
        )


@attrs.frozen(kw_only=True)
class PaymentMethod:
    """A Stripe PaymentMethod (``card`` holds the card's non-sensitive details, if any)."""

    id: str
    type: str
    customer: str | None = None
    card: Mapping[str, Any] = attrs.field(factory=dict)
    created: datetime | None = None
    raw: Mapping[str, Any] = attrs.field(factory=dict, repr=False, eq=False)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> PaymentMethod:
        card = raw.get("card")
        return cls(
            id=str(raw["id"]),
            type=str(raw.get("type", "")),
            customer=_id(raw, "customer"),
            card=dict(card) if isinstance(card, Mapping) else {},
            created=_time(raw),
            raw=dict(raw),
        )


M = TypeVar("M")


def _stripe_error(status: int, headers: Mapping[str, str], data: Any) -> StripeError:
    error = data.get("error") if isinstance(data, dict) else None
    fields: Mapping[str, Any] = error if isinstance(error, dict) else {}
    message = fields.get("message") or f"Stripe answered HTTP {status}"
    code = fields.get("code")
    exc = StripeError(
        str(message),
        status=status,
        code=code if isinstance(code, str) else None,
        request_id=headers.get("Request-Id"),
        body=data if isinstance(data, dict) else {},
        vendor_fields=fields,
    )
    should_retry = headers.get("Stripe-Should-Retry")
    if should_retry is not None:
        exc.retryable = should_retry.lower() == "true"
    return exc


class StripeClient:
    """Stripe through the proxy. Resources are attributes; ``request()`` reaches the rest.

    Args:
        transport: sends requests to the proxy with the vault key.
        retry: how transient failures are retried (writes reuse one ``Idempotency-Key``).
    """

    def __init__(self, transport: ProxyTransport, *, retry: RetryPolicy | None = None) -> None:
        self._transport = transport
        self._retry = retry or RetryPolicy()
        self.payment_intents = PaymentIntents(self)
        self.customers = Customers(self)
        self.charges = Charges(self)
        self.refunds = Refunds(self)
        self.payment_methods = PaymentMethods(self)

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

        ``POST`` requests carry an ``Idempotency-Key`` (a new one unless given), the same for
        every retry of this call.

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

        async def attempt() -> dict[str, Any]:
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
                raise _stripe_error(response.status, response.headers, data)
            return data

        return await self._retry.call(attempt)

    async def _list(
        self, path: str, params: Mapping[str, Any], model: Callable[[Mapping[str, Any]], M]
    ) -> AsyncIterator[M]:
        query = {"limit": LIST_PAGE_SIZE, **params}
        while True:
            page = await self.request("GET", path, query)
            items = page.get("data")
            if not isinstance(items, list):
                return
            for item in items:
                yield model(item)
            if not page.get("has_more") or not items:
                return
            query = {**query, "starting_after": items[-1]["id"]}


class _Resource(Generic[M]):
    path: str
    model: Callable[[Mapping[str, Any]], M]

    def __init__(self, client: StripeClient) -> None:
        self._client = client

    def _object_path(self, object_id: str, action: str = "") -> str:
        return f"{self.path}/{quote(object_id, safe='')}" + (f"/{action}" if action else "")

    async def _post(self, path: str, params: Mapping[str, Any], idempotency_key: str | None) -> M:
        data = await self._client.request("POST", path, params, idempotency_key=idempotency_key)
        return self.model(data)

    async def _create(self, params: Mapping[str, Any], idempotency_key: str | None) -> M:
        return await self._post(self.path, params, idempotency_key)

    async def retrieve(self, object_id: str) -> M:
        """Fetch one object by id."""
        return self.model(await self._client.request("GET", self._object_path(object_id)))


class _ListableResource(_Resource[M]):
    def list(self, **params: Any) -> AsyncIterator[M]:
        """Every object matching ``params``, fetched page by page as you iterate:

        ```python
        async for intent in vk.stripe.payment_intents.list(customer="cus_1"):
            ...
        ```
        """
        return self._client._list(self.path, params, self.model)


class PaymentIntents(_ListableResource[PaymentIntent]):
    """``vk.stripe.payment_intents``."""

    path = "/v1/payment_intents"
    model = staticmethod(PaymentIntent.from_json)

    async def create(
        self, *, amount: int, currency: str, idempotency_key: str | None = None, **params: Any
    ) -> PaymentIntent:
        """Create a PaymentIntent; ``amount`` is in the currency's minor units (cents).

        The proxy reserves the amount (in USD) against the key's daily cap before Stripe
        sees the request.

        Raises:
            SpendCapExceeded: the amount would take the key past its cap.
            StripeError: Stripe refused the request.
        """
        return await self._create(
            {"amount": amount, "currency": currency, **params}, idempotency_key
        )

    async def update(
        self, intent_id: str, *, idempotency_key: str | None = None, **params: Any
    ) -> PaymentIntent:
        """Update a PaymentIntent (a new ``amount`` is reserved against the cap)."""
        return await self._post(self._object_path(intent_id), params, idempotency_key)

    async def confirm(
        self, intent_id: str, *, idempotency_key: str | None = None, **params: Any
    ) -> PaymentIntent:
        """Confirm a PaymentIntent (its amount was reserved when it was created)."""
        return await self._post(self._object_path(intent_id, "confirm"), params, idempotency_key)

    async def capture(
        self, intent_id: str, *, idempotency_key: str | None = None, **params: Any
    ) -> PaymentIntent:
        """Capture an authorised PaymentIntent."""
        return await self._post(self._object_path(intent_id, "capture"), params, idempotency_key)

    async def cancel(
        self, intent_id: str, *, idempotency_key: str | None = None, **params: Any
    ) -> PaymentIntent:
        """Cancel a PaymentIntent."""
        return await self._post(self._object_path(intent_id, "cancel"), params, idempotency_key)


class Customers(_ListableResource[Customer]):
    """``vk.stripe.customers``."""

    path = "/v1/customers"
    model = staticmethod(Customer.from_json)

    async def create(self, *, idempotency_key: str | None = None, **params: Any) -> Customer:
        """Create a Customer."""
        return await self._create(params, idempotency_key)

    async def update(
        self, customer_id: str, *, idempotency_key: str | None = None, **params: Any
    ) -> Customer:
        """Update a Customer."""
        return await self._post(self._object_path(customer_id), params, idempotency_key)


class Charges(_ListableResource[Charge]):
    """``vk.stripe.charges`` (read-only: create charges through payment intents)."""

    path = "/v1/charges"
    model = staticmethod(Charge.from_json)


class Refunds(_ListableResource[Refund]):
    """``vk.stripe.refunds``."""

    path = "/v1/refunds"
    model = staticmethod(Refund.from_json)

    async def create(self, *, idempotency_key: str | None = None, **params: Any) -> Refund:
        """Refund a charge or payment intent (``charge=`` or ``payment_intent=``, ``amount=``).

        Without ``amount`` the proxy reserves what is left to refund.
        """
        return await self._create(params, idempotency_key)


class PaymentMethods(_Resource[PaymentMethod]):
    """``vk.stripe.payment_methods``."""

    path = "/v1/payment_methods"
    model = staticmethod(PaymentMethod.from_json)

    async def attach(
        self,
        payment_method_id: str,
        *,
        customer: str,
        idempotency_key: str | None = None,
        **params: Any,
    ) -> PaymentMethod:
        """Attach a PaymentMethod to a Customer."""
        return await self._post(
            self._object_path(payment_method_id, "attach"),
            {"customer": customer, **params},
            idempotency_key,
        )
