"""``KeySpec``: what a vault key may do, checked once, when it is written down.

``VaultKey``, ``@vault_key``, ``Keybrake.issue_key`` and every integration take a spec or
build one from their arguments, so a bad cap, TTL or endpoint pattern raises
[`ConfigurationError`][keybrake.ConfigurationError] where the key is defined (usually at
import), never on the first call.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from decimal import Decimal
from typing import Any

import attrs

from keybrake._common import (
    EndpointPattern,
    label_problem,
    metadata_problem,
    parse_duration,
    parse_rate,
    to_micros,
)
from keybrake._errors import ConfigurationError
from keybrake.vendors import get_vendor

__all__ = ["Cap", "Duration", "KeySpec", "cap_string", "duration_seconds"]

#: A USD amount as the SDK takes it: ``500``, ``"12.50"`` or ``Decimal("12.50")``.
Cap = int | str | Decimal
#: A duration as the SDK takes it: ``"30s"``, ``"5m"``, ``"2h"``, seconds or a ``timedelta``.
Duration = str | int | timedelta


def duration_seconds(value: Duration, name: str) -> int:
    """Validate a TTL-like argument and give it as whole seconds.

    Raises:
        ConfigurationError: not a positive duration.
    """
    try:
        delta = parse_duration(value)
    except ValueError as exc:
        raise ConfigurationError(f"{name}: {exc}") from None
    return max(1, int(delta.total_seconds()))


def cap_string(cap: Cap) -> str:
    """Validate a USD cap and give it as the decimal string the API takes.

    Raises:
        ConfigurationError: not a non-negative USD amount (floats are refused).
    """
    try:
        to_micros(cap)
    except ValueError as exc:
        raise ConfigurationError(f"cap: {exc}") from None
    return str(cap)


def _vendor(value: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(f"vendor must be a non-empty string, not {value!r}")
    return value


def _endpoints(value: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigurationError(f"endpoints must be a non-empty list of patterns, not {value!r}")
    for pattern in value:
        try:
            EndpointPattern.parse(pattern)
        except ValueError as exc:
            raise ConfigurationError(f"endpoints: {exc}") from None
    return tuple(value)


def _cap(value: Cap) -> Decimal:
    return Decimal(cap_string(value))


def _ttl(value: Duration) -> timedelta:
    return timedelta(seconds=duration_seconds(value, "ttl"))


def _max_lifetime(value: Duration | None) -> timedelta | None:
    if value is None:
        return None
    return timedelta(seconds=duration_seconds(value, "max_lifetime"))


def _metadata(value: Mapping[str, str] | None) -> Mapping[str, str]:
    """Metadata the issuance API will take (what the server checks, checked here first).

    Raises:
        ConfigurationError: anything else.
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ConfigurationError(f"metadata must map strings to strings, not {value!r}")
    problem = metadata_problem(value)
    if problem is not None:
        raise ConfigurationError(problem)
    return dict(value)


def _check_label(instance: KeySpec, attribute: Any, value: str | None) -> None:
    if value is not None and not isinstance(value, str):
        raise ConfigurationError(f"label must be a string, not {value!r}")
    problem = None if value is None else label_problem(value)
    if problem is not None:
        raise ConfigurationError(problem)


def _check_keepalive(instance: KeySpec, attribute: Any, value: bool) -> None:
    if not isinstance(value, bool):
        raise ConfigurationError(f"keepalive must be True or False, not {value!r}")


def _check_stripe_account(instance: KeySpec, attribute: Any, value: str | None) -> None:
    if value is None:
        return
    # The account a key is pinned to, for a vendor with accounts (Stripe's).
    plugin = get_vendor(instance.vendor)
    accounts = None if plugin is None else plugin.account_pattern
    if plugin is None or accounts is None:
        raise ConfigurationError(
            f"stripe_account is for Stripe keys only, not {instance.vendor} keys"
        )
    if not isinstance(value, str) or not accounts.fullmatch(value):
        raise ConfigurationError(
            f"stripe_account must be a {plugin.title} account id ({accounts.pattern}),"
            f" not {value!r}"
        )


def _check_rate_limit(instance: KeySpec, attribute: Any, value: str | None) -> None:
    if value is None:
        return
    try:
        parse_rate(value)
    except ValueError as exc:
        raise ConfigurationError(f"rate_limit: {exc}") from None


def _check_max_requests(instance: KeySpec, attribute: Any, value: int | None) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ConfigurationError(f"max_requests must be a positive integer, not {value!r}")


def _budget_id(value: object) -> str | None:
    """A budget's id, from the id itself or from anything with one (a ``Budget``).

    Raises:
        ConfigurationError: neither, or a ``Budget`` not open yet.
    """
    if value is None:
        return None
    budget_id = value if isinstance(value, str) else getattr(type(value), "id", None)
    if budget_id is not None and not isinstance(value, str):
        budget_id = value.id  # type: ignore[attr-defined]  # a Budget not open yet raises
    if not isinstance(budget_id, str) or not budget_id:
        raise ConfigurationError(f"budget must be a Budget or a budget id, not {value!r}")
    return budget_id


@attrs.frozen
class KeySpec:
    """What a vault key may do: vendor, endpoints, cap, TTL and the key's other options.

    ```python
    refunds = KeySpec("stripe", ["POST /v1/refunds"], cap=100, ttl="2m", label="refunds")

    async with VaultKey.from_spec(refunds) as vk: ...

    @vault_key(refunds)
    async def refund(charge_id: str, vk: VaultKey) -> str: ...
    ```

    Every value is checked (and normalised) here, once: a spec that exists is one the SDK
    can issue. The server still has the last word on what it accepts (a TTL of at most 30
    days, at most 50 metadata pairs, ...).

    Args:
        vendor: ``"stripe"``, ``"twilio"`` or another installed vendor's name.
        endpoints: a non-empty list of endpoint patterns (``"[METHOD ]/path"``, ``*``,
            trailing ``/**``); kept as a tuple.
        cap: daily spend cap in USD (int, decimal string or ``Decimal``; never a float);
            kept as a ``Decimal``.
        ttl: time to live (``"30s"``, ``"5m"``, ``"2h"``, seconds or a ``timedelta``); kept as
            a ``timedelta`` of whole seconds.
        label: a name for the key; ``None`` lets whoever issues it choose (the function's
            name for ``@vault_key``, the route for web integrations).
        keepalive: whether a [`VaultKey`][keybrake.VaultKey] refreshes the key while it is open.
        max_lifetime: a hard age limit the server enforces; not shorter than ``ttl``.
        metadata: string pairs stored with the key.
        stripe_account: Stripe keys only: the connected account (``"acct_..."``) every
            request acts on.
        rate_limit: at most N forwarded requests in any window of a second, a minute or an
            hour: ``"10/s"``, ``"100/m"``, ``"1000/h"`` (free requests included).
        max_requests: at most so many forwarded requests over the key's life.
        budget: a run budget the key draws from: an open [`Budget`][keybrake.Budget] or its
            id (``"bud_..."``); kept as the id.

    Raises:
        ConfigurationError: a value that is not one of the above.
    """

    vendor: str = attrs.field(converter=_vendor)
    endpoints: tuple[str, ...] = attrs.field(converter=_endpoints)
    cap: Decimal = attrs.field(converter=_cap)
    ttl: timedelta = attrs.field(converter=_ttl)
    label: str | None = attrs.field(default=None, kw_only=True, validator=_check_label)
    keepalive: bool = attrs.field(default=True, kw_only=True, validator=_check_keepalive)
    max_lifetime: timedelta | None = attrs.field(
        default=None, kw_only=True, converter=_max_lifetime
    )
    metadata: Mapping[str, str] = attrs.field(
        factory=dict, kw_only=True, converter=_metadata, hash=False
    )
    stripe_account: str | None = attrs.field(
        default=None, kw_only=True, validator=_check_stripe_account
    )
    rate_limit: str | None = attrs.field(default=None, kw_only=True, validator=_check_rate_limit)
    max_requests: int | None = attrs.field(
        default=None, kw_only=True, validator=_check_max_requests
    )
    budget: str | None = attrs.field(default=None, kw_only=True, converter=_budget_id)

    def __attrs_post_init__(self) -> None:
        if self.max_lifetime is not None and self.max_lifetime < self.ttl:
            raise ConfigurationError(
                f"max_lifetime ({self.max_lifetime}) must not be shorter than ttl ({self.ttl})"
            )

    @property
    def ttl_seconds(self) -> int:
        """``ttl`` in whole seconds, as the API takes it."""
        return int(self.ttl.total_seconds())
