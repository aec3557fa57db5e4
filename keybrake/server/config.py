"""Server settings: explicit argument > environment > default, read when built, never at import."""

from __future__ import annotations

import os
from collections.abc import Mapping

import attrs

from keybrake.vendors import installed_vendors

__all__ = [
    "AUDIT_MODES",
    "DEFAULT_AUDIT",
    "DEFAULT_DATABASE_URL",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_MAX_BODY_SIZE",
    "DEFAULT_MAX_LIFETIME_SECONDS",
    "DEFAULT_RETENTION_DAYS",
    "DEFAULT_UPSTREAM_TIMEOUT",
    "ServerConfig",
]

DEFAULT_DATABASE_URL = "sqlite:///keybrake.db"
#: Seconds to wait for a vendor's answer before giving up with 504.
DEFAULT_UPSTREAM_TIMEOUT = 30.0
#: Seconds a connection may wait for a whole request head (after it opens, and after each
#: answer) before it is closed: also how long an idle keep-alive connection is kept.
DEFAULT_IDLE_TIMEOUT = 75.0
#: Largest request body the proxy or API reads, in bytes.
DEFAULT_MAX_BODY_SIZE = 1024 * 1024
#: Hard age limit of a key when the issuer gives no ``max_lifetime``.
DEFAULT_MAX_LIFETIME_SECONDS = 24 * 3600
#: Days audit entries, finished reservations and spend rows are kept (0: kept forever).
DEFAULT_RETENTION_DAYS = 30
#: ``batched``: an answer never waits for its audit entry; ``durable``: it waits for its commit.
AUDIT_MODES = ("batched", "durable")
DEFAULT_AUDIT = "batched"


def _days(value: object) -> int:
    """A whole number of days, 0 (keep everything) or from 1 to 36500.

    Raises:
        ValueError: anything else.
    """
    try:
        days = int(str(value).strip())
    except ValueError:
        days = -1
    if not 0 <= days <= 36500:
        raise ValueError(
            f"retention_days must be a whole number of days from 1 to 36500, or 0 to keep"
            f" everything (got {value!r})"
        )
    return days


def _audit_mode(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in AUDIT_MODES:
        raise ValueError(f"audit must be 'batched' or 'durable' (got {value!r})")


def _positive_seconds(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0 < value <= 3600:
        raise ValueError(f"{attribute.name} must be more than 0 and at most 3600 seconds")


def _optional_token(
    instance: object, attribute: attrs.Attribute[str | None], value: str | None
) -> None:
    if value is not None and (
        not value or not value.isascii() or not value.isprintable() or " " in value
    ):
        raise ValueError(
            f"{attribute.name} must be visible ASCII characters without spaces (a bearer token)"
        )


def _secret_repr(value: str | None) -> str:
    return "None" if value is None else "'***'"


def _settings_repr(value: Mapping[str, Mapping[str, str]]) -> str:
    """Each vendor's settings with every value but ``api_base`` hidden."""
    shown = {
        vendor: {k: v if k == "api_base" else "***" for k, v in settings.items()}
        for vendor, settings in value.items()
    }
    return repr(shown)


def _frozen_settings(value: Mapping[str, Mapping[str, str]]) -> Mapping[str, Mapping[str, str]]:
    return {str(vendor): dict(settings) for vendor, settings in value.items()}


@attrs.frozen(kw_only=True)
class ServerConfig:
    """Everything ``keybrake serve`` needs. ``repr()`` never shows a secret."""

    database_url: str = DEFAULT_DATABASE_URL
    admin_token: str | None = attrs.field(default=None, repr=_secret_repr)
    #: Each vendor's settings by vendor name, then setting name (``api_base`` and the
    #: credentials its plugin declares, e.g. ``{"stripe": {"secret_key": "sk_..."}}``).
    vendor_settings: Mapping[str, Mapping[str, str]] = attrs.field(
        factory=dict, converter=_frozen_settings, repr=_settings_repr
    )
    pricing_file: str | None = None
    #: Seconds a vendor may take to answer in full before the proxy answers 504.
    upstream_timeout: float = attrs.field(
        default=DEFAULT_UPSTREAM_TIMEOUT, converter=float, validator=_positive_seconds
    )
    #: Seconds a connection may wait for a whole request head, after it opens and after each
    #: answer (an idle keep-alive connection is closed then too). Behind a load balancer,
    #: make it longer than the balancer keeps an idle connection to a server.
    idle_timeout: float = attrs.field(
        default=DEFAULT_IDLE_TIMEOUT, converter=float, validator=_positive_seconds
    )
    max_body_size: int = DEFAULT_MAX_BODY_SIZE
    #: Audit entries, finished reservations and spend rows older than this many days are
    #: deleted in the background; 0 keeps everything.
    retention_days: int = attrs.field(default=DEFAULT_RETENTION_DAYS, converter=_days)
    #: ``batched`` or ``durable`` (a proxy answer waits for its audit entry's commit).
    audit: str = attrs.field(default=DEFAULT_AUDIT, validator=_audit_mode)
    #: The bearer token ``/metrics`` asks for; ``None`` leaves it open to anyone.
    metrics_token: str | None = attrs.field(
        default=None, repr=_secret_repr, validator=_optional_token
    )

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: object
    ) -> ServerConfig:
        """Build from ``KEYBRAKE_*`` variables; keyword overrides that are not None win.

        Each installed vendor's settings come from the variables its plugin names
        (``KEYBRAKE_STRIPE_SECRET_KEY``, ``KEYBRAKE_RESEND_API_BASE``, ...).
        """
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for field, var in (
            ("database_url", "KEYBRAKE_DATABASE_URL"),
            ("admin_token", "KEYBRAKE_ADMIN_TOKEN"),
            ("pricing_file", "KEYBRAKE_PRICING_FILE"),
            ("metrics_token", "KEYBRAKE_METRICS_TOKEN"),
        ):
            if env.get(var):
                values[field] = env[var]
        vendor_settings: dict[str, dict[str, str]] = {}
        for name, vendor in installed_vendors().items():
            found = {k: env[var] for k, var in vendor.settings.items() if env.get(var)}
            if found:
                vendor_settings[name] = found
        values["vendor_settings"] = vendor_settings
        if env.get("KEYBRAKE_UPSTREAM_TIMEOUT"):
            values["upstream_timeout"] = env["KEYBRAKE_UPSTREAM_TIMEOUT"]
        if env.get("KEYBRAKE_IDLE_TIMEOUT"):
            values["idle_timeout"] = env["KEYBRAKE_IDLE_TIMEOUT"]
        if env.get("KEYBRAKE_RETENTION_DAYS"):
            values["retention_days"] = env["KEYBRAKE_RETENTION_DAYS"]
        if env.get("KEYBRAKE_AUDIT"):
            values["audit"] = env["KEYBRAKE_AUDIT"]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]
