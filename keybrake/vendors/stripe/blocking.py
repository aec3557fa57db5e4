"""The types of ``keybrake.sync.VaultKey.stripe``: :class:`~.client.StripeClient`, blocking.

Only types: at run time ``vk.stripe`` is the async client behind keybrake.sync's generic
blocking wrapper, so every method below is the async one, run to its end. A test checks
that these protocols list the async client's methods with the same parameters.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from keybrake.vendors.stripe.client import (
    Charge,
    Customer,
    PaymentIntent,
    PaymentMethod,
    Refund,
)

__all__ = [
    "BlockingCharges",
    "BlockingCustomers",
    "BlockingPaymentIntents",
    "BlockingPaymentMethods",
    "BlockingRefunds",
    "BlockingStripeClient",
]


class BlockingPaymentIntents(Protocol):
    """``vk.stripe.payment_intents``, blocking."""

    def create(
        self, *, amount: int, currency: str, idempotency_key: str | None = None, **params: Any
    ) -> PaymentIntent: ...
    def update(
        self, intent_id: str, *, idempotency_key: str | None = None, **params: Any
    ) -> PaymentIntent: ...
    def confirm(
        self, intent_id: str, *, idempotency_key: str | None = None, **params: Any
    ) -> PaymentIntent: ...
    def capture(
        self, intent_id: str, *, idempotency_key: str | None = None, **params: Any
    ) -> PaymentIntent: ...
    def cancel(
        self, intent_id: str, *, idempotency_key: str | None = None, **params: Any
    ) -> PaymentIntent: ...
    def retrieve(self, object_id: str) -> PaymentIntent: ...
    def list(self, **params: Any) -> Iterator[PaymentIntent]: ...


class BlockingCustomers(Protocol):
    """``vk.stripe.customers``, blocking."""

    def create(self, *, idempotency_key: str | None = None, **params: Any) -> Customer: ...
    def update(
        self, customer_id: str, *, idempotency_key: str | None = None, **params: Any
    ) -> Customer: ...
    def retrieve(self, object_id: str) -> Customer: ...
    def list(self, **params: Any) -> Iterator[Customer]: ...


class BlockingCharges(Protocol):
    """``vk.stripe.charges``, blocking."""

    def retrieve(self, object_id: str) -> Charge: ...
    def list(self, **params: Any) -> Iterator[Charge]: ...


class BlockingRefunds(Protocol):
    """``vk.stripe.refunds``, blocking."""

    def create(self, *, idempotency_key: str | None = None, **params: Any) -> Refund: ...
    def retrieve(self, object_id: str) -> Refund: ...
    def list(self, **params: Any) -> Iterator[Refund]: ...


class BlockingPaymentMethods(Protocol):
    """``vk.stripe.payment_methods``, blocking."""

    def attach(
        self,
        payment_method_id: str,
        *,
        customer: str,
        idempotency_key: str | None = None,
        **params: Any,
    ) -> PaymentMethod: ...
    def retrieve(self, object_id: str) -> PaymentMethod: ...


class BlockingStripeClient(Protocol):
    """``keybrake.sync.VaultKey.stripe``: Stripe through the proxy, blocking."""

    @property
    def payment_intents(self) -> BlockingPaymentIntents: ...
    @property
    def customers(self) -> BlockingCustomers: ...
    @property
    def charges(self) -> BlockingCharges: ...
    @property
    def refunds(self) -> BlockingRefunds: ...
    @property
    def payment_methods(self) -> BlockingPaymentMethods: ...
    def request(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]: ...
