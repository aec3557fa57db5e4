"""The exceptions keybrake raises.

All of them derive from [`KeybrakeError`][keybrake.KeybrakeError]:

```text
KeybrakeError
├── ConfigurationError           missing token, bad URL, bad argument
├── IssuanceError                the issuance API refused a call (4xx)
├── KeybrakeUnavailable          API or proxy unreachable after retries, or upstream down
│   └── KeybrakeTimeout          ... because it was too slow (also a TimeoutError)
├── ProxyRefused                 the proxy refused a vendor call on policy grounds
│   ├── SpendCapExceeded         429 cap_exhausted
│   │   └── BudgetExhausted      429 budget_exhausted (the run budget's cap)
│   ├── RateLimited              429 rate_limited (with retry_after)
│   ├── UsesExhausted            429 uses_exhausted
│   ├── EndpointNotAllowed       403 endpoint_not_allowed
│   └── InvalidVaultKey          401 invalid_key
│       ├── VaultKeyExpired      401 key_expired
│       └── VaultKeyRevoked      401 key_revoked
└── VendorError                  the vendor's own 4xx/5xx, with its fields
    ├── StripeError
    └── TwilioError
```

``cap_exhausted``, ``budget_exhausted``, ``rate_limited`` and ``uses_exhausted`` are final
answers: the SDK never retries them on its own (see [`RetryPolicy`][keybrake.RetryPolicy]
for waiting out ``rate_limited`` once, if you opt in).
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any, ClassVar

__all__ = [
    "FINAL_CODES",
    "BudgetExhausted",
    "ConfigurationError",
    "EndpointNotAllowed",
    "InvalidVaultKey",
    "IssuanceError",
    "KeybrakeError",
    "KeybrakeTimeout",
    "KeybrakeUnavailable",
    "ProxyRefused",
    "RateLimited",
    "SpendCapExceeded",
    "StripeError",
    "TwilioError",
    "UsesExhausted",
    "VaultKeyExpired",
    "VaultKeyRevoked",
    "VendorError",
]


class KeybrakeError(Exception):
    """Root of every keybrake exception.

    Attributes:
        message: what happened, for humans.
        status: the HTTP status, when an HTTP answer caused this.
        code: keybrake's machine-readable error code (``cap_exhausted``, ...), if any.
        request_id: the request id the server or vendor gave, if any.
        body: the decoded JSON error body, if any.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.request_id = request_id
        self.body: Mapping[str, Any] = body or {}
        #: Seconds the server asked us to wait before retrying (``Retry-After``), if any.
        self.retry_after: float | None = None
        #: Whether retrying may help, when the answer said so (``Stripe-Should-Retry``);
        #: None leaves it to the status and code.
        self.retryable: bool | None = None

    def __str__(self) -> str:
        parts = [self.message]
        if self.code:
            parts.append(f"code={self.code}")
        if self.status:
            parts.append(f"status={self.status}")
        if self.request_id:
            parts.append(f"request_id={self.request_id}")
        return parts[0] if len(parts) == 1 else f"{parts[0]} ({', '.join(parts[1:])})"

    @staticmethod
    def from_response(
        status: int,
        body: Mapping[str, Any],
        *,
        request_id: str | None = None,
        source: str = "api",
    ) -> KeybrakeError:
        """Build the right exception for a keybrake error answer.

        The mapping from ``code`` to class is ``_BY_CODE``; other codes fall back by
        status: 5xx is [`KeybrakeUnavailable`][keybrake.KeybrakeUnavailable], other answers are
        [`IssuanceError`][keybrake.IssuanceError] from the issuance API (``source="api"``) and
        [`ProxyRefused`][keybrake.ProxyRefused] from the proxy (``source="proxy"``).
        """
        code = body.get("code") if isinstance(body.get("code"), str) else None
        message = body.get("message")
        if not isinstance(message, str):
            message = f"keybrake answered HTTP {status}"
        cls = _BY_CODE.get(code or "")
        if cls is None:
            if status >= 500:
                cls = KeybrakeTimeout if status == 504 else KeybrakeUnavailable
            elif source == "proxy":
                cls = ProxyRefused
            else:
                cls = IssuanceError
        return cls(message, status=status, code=code, request_id=request_id, body=body)


class ConfigurationError(KeybrakeError, ValueError):
    """keybrake is not configured well enough to act (no ``KEYBRAKE_TOKEN``, a bad argument)."""


class IssuanceError(KeybrakeError):
    """The issuance API refused a call (bad request, unknown key, conflict, ...)."""


class KeybrakeUnavailable(KeybrakeError):
    """The issuance API or proxy could not be reached after retries, or the vendor is down."""


class KeybrakeTimeout(KeybrakeUnavailable, TimeoutError):
    """Like [`KeybrakeUnavailable`][keybrake.KeybrakeUnavailable], because something took too long.

    Also a ``TimeoutError``.
    """


class ProxyRefused(KeybrakeError):
    """The proxy refused a vendor call by policy; nothing was sent to the vendor."""


class SpendCapExceeded(ProxyRefused):
    """The call would have taken the key's spend past its daily cap (429 ``cap_exhausted``)."""

    @property
    def daily_usd_cap(self) -> Decimal | None:
        return _decimal(self.body.get("daily_usd_cap"))

    @property
    def spent_today_usd(self) -> Decimal | None:
        return _decimal(self.body.get("spent_today_usd"))

    @property
    def attempted_usd(self) -> Decimal | None:
        return _decimal(self.body.get("attempted_usd"))


class BudgetExhausted(SpendCapExceeded):
    """The call would have taken the key's run budget past its daily cap (429
    ``budget_exhausted``): a spend cap too, shared by every key of the budget, so
    ``except SpendCapExceeded`` catches both."""

    @property
    def budget(self) -> str | None:
        """The budget's id, ``bud_...``."""
        return _str(self.body.get("budget"))

    @property
    def budget_daily_usd_cap(self) -> Decimal | None:
        return _decimal(self.body.get("budget_daily_usd_cap"))

    @property
    def budget_spent_today_usd(self) -> Decimal | None:
        return _decimal(self.body.get("budget_spent_today_usd"))


class RateLimited(ProxyRefused):
    """The key is over its rate limit (429 ``rate_limited``); nothing was forwarded, and the
    request does not count as a use.

    ``retry_after`` (seconds, from ``Retry-After``) says when the oldest request in the
    window leaves it. Final: the SDK does not retry it unless asked to
    (``RetryPolicy(wait_rate_limited=True)``).
    """

    @property
    def rate_limit(self) -> str | None:
        """The key's rate limit as given, ``"10/m"``."""
        return _str(self.body.get("rate_limit"))


class UsesExhausted(ProxyRefused):
    """The key has made its ``max_requests`` forwarded requests (429 ``uses_exhausted``)."""

    @property
    def max_requests(self) -> int | None:
        value = self.body.get("max_requests")
        return value if isinstance(value, int) else None


class EndpointNotAllowed(ProxyRefused):
    """The method and path are outside the key's allowlist (403 ``endpoint_not_allowed``)."""

    @property
    def attempted(self) -> str | None:
        value = self.body.get("attempted")
        return value if isinstance(value, str) else None

    @property
    def allowed_endpoints(self) -> list[str]:
        value = self.body.get("allowed_endpoints")
        return [str(v) for v in value] if isinstance(value, list) else []


class InvalidVaultKey(ProxyRefused):
    """No such vault key (401 ``invalid_key``); base of the expired and revoked cases."""


class VaultKeyExpired(InvalidVaultKey):
    """The vault key is past its expiry (401 ``key_expired``)."""


class VaultKeyRevoked(InvalidVaultKey):
    """The vault key was revoked (401 ``key_revoked``)."""


class VendorError(KeybrakeError):
    """The vendor itself answered with an error; ``vendor_fields`` holds its own fields."""

    vendor: ClassVar[str] = ""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
        body: Mapping[str, Any] | None = None,
        vendor_fields: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message, status=status, code=code, request_id=request_id, body=body)
        self.vendor_fields: Mapping[str, Any] = vendor_fields or {}


class StripeError(VendorError):
    """Stripe answered with an error (``type``, ``code``, ``decline_code``, ``param``)."""

    vendor = "stripe"

    @property
    def type(self) -> str | None:
        return _str(self.vendor_fields.get("type"))

    @property
    def decline_code(self) -> str | None:
        return _str(self.vendor_fields.get("decline_code"))

    @property
    def param(self) -> str | None:
        return _str(self.vendor_fields.get("param"))


class TwilioError(VendorError):
    """Twilio answered with an error (``code``, ``more_info``)."""

    vendor = "twilio"

    @property
    def more_info(self) -> str | None:
        return _str(self.vendor_fields.get("more_info"))


_BY_CODE: dict[str, type[KeybrakeError]] = {
    "cap_exhausted": SpendCapExceeded,
    "budget_exhausted": BudgetExhausted,
    "rate_limited": RateLimited,
    "uses_exhausted": UsesExhausted,
    "endpoint_not_allowed": EndpointNotAllowed,
    "invalid_key": InvalidVaultKey,
    "key_expired": VaultKeyExpired,
    "key_revoked": VaultKeyRevoked,
    "vendor_mismatch": ProxyRefused,
    "unpriced_endpoint": ProxyRefused,
    "upstream_unavailable": KeybrakeUnavailable,
    "upstream_timeout": KeybrakeTimeout,
    "store_unavailable": KeybrakeUnavailable,
}


#: The proxy's answers no retry can change by itself: the SDK never retries them.
FINAL_CODES = frozenset({"cap_exhausted", "budget_exhausted", "rate_limited", "uses_exhausted"})


def _decimal(value: Any) -> Decimal | None:
    return Decimal(value) if isinstance(value, str) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None
