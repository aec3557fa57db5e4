"""keybrake: short-lived, scoped, spend-capped vault keys for AI agents.

``async with VaultKey("stripe", [...], cap=500, ttl="5m") as vk:`` issues a key, keeps it
alive and revokes it on exit; ``vk.stripe`` calls Stripe through the enforcing proxy.
"""

from keybrake._budget import Budget
from keybrake._client import Keybrake
from keybrake._config import DEFAULT_API_URL, DEFAULT_PROXY_URL, DEFAULT_TIMEOUT
from keybrake._decorator import vault_key
from keybrake._errors import (
    BudgetExhausted,
    ConfigurationError,
    EndpointNotAllowed,
    InvalidVaultKey,
    IssuanceError,
    KeybrakeError,
    KeybrakeTimeout,
    KeybrakeUnavailable,
    ProxyRefused,
    RateLimited,
    SpendCapExceeded,
    StripeError,
    TwilioError,
    UsesExhausted,
    VaultKeyExpired,
    VaultKeyRevoked,
    VendorError,
)
from keybrake._key_spec import KeySpec
from keybrake._models import (
    AuditRecord,
    BudgetInfo,
    IssuedKey,
    KeyInfo,
    Lease,
    Revocation,
    UsageRecord,
)
from keybrake._retry import RetryPolicy
from keybrake._vault_key import VaultKey
from keybrake._version import __version__

__all__ = [
    "AuditRecord",
    "Budget",
    "BudgetExhausted",
    "BudgetInfo",
    "ConfigurationError",
    "DEFAULT_API_URL",
    "DEFAULT_PROXY_URL",
    "DEFAULT_TIMEOUT",
    "EndpointNotAllowed",
    "InvalidVaultKey",
    "IssuanceError",
    "IssuedKey",
    "KeyInfo",
    "KeySpec",
    "Keybrake",
    "KeybrakeError",
    "KeybrakeTimeout",
    "KeybrakeUnavailable",
    "Lease",
    "ProxyRefused",
    "RateLimited",
    "RetryPolicy",
    "Revocation",
    "SpendCapExceeded",
    "StripeError",
    "TwilioError",
    "UsageRecord",
    "UsesExhausted",
    "VaultKey",
    "VaultKeyExpired",
    "VaultKeyRevoked",
    "VendorError",
    "__version__",
    "vault_key",
]
