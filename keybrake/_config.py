"""SDK settings: explicit argument > environment > default, read in constructors only."""

from __future__ import annotations

import os
from collections.abc import Mapping

import attrs

from keybrake._errors import ConfigurationError

__all__ = [
    "DEFAULT_API_URL",
    "DEFAULT_PROXY_URL",
    "DEFAULT_TIMEOUT",
    "ClientConfig",
]

DEFAULT_API_URL = "https://api.keybrake.com"
DEFAULT_PROXY_URL = "https://proxy.keybrake.com"
#: Seconds one HTTP call to the issuance API or proxy may take.
DEFAULT_TIMEOUT = 30.0


def _redacted(value: str | None) -> str:
    return "None" if value is None else "'***'"


def _base_url(value: str, name: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ConfigurationError(f"{name} must be an http(s) URL, got {value!r}")
    return value.rstrip("/")


@attrs.frozen(kw_only=True)
class ClientConfig:
    """Where the issuance API and proxy are, and the master token. ``repr()`` hides the token."""

    token: str | None = attrs.field(repr=_redacted)
    api_url: str
    proxy_url: str
    timeout: float = DEFAULT_TIMEOUT

    @classmethod
    def resolve(
        cls,
        *,
        token: str | None = None,
        api_url: str | None = None,
        proxy_url: str | None = None,
        timeout: float | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> ClientConfig:
        """Resolve each setting: the argument, else ``KEYBRAKE_*``, else the default.

        ``KEYBRAKE_API_URL`` and ``KEYBRAKE_PROXY_URL`` win over ``KEYBRAKE_URL``, which sets
        both for a self-hosted server.

        Raises:
            ConfigurationError: a URL that is not http(s).
        """
        env = os.environ if environ is None else environ
        shared = env.get("KEYBRAKE_URL") or None
        api = api_url or env.get("KEYBRAKE_API_URL") or shared or DEFAULT_API_URL
        proxy = proxy_url or env.get("KEYBRAKE_PROXY_URL") or shared or DEFAULT_PROXY_URL
        return cls(
            token=token or env.get("KEYBRAKE_TOKEN") or None,
            api_url=_base_url(api, "api_url"),
            proxy_url=_base_url(proxy, "proxy_url"),
            timeout=DEFAULT_TIMEOUT if timeout is None else timeout,
        )
