"""The official ``twilio`` SDK, held to the keybrake proxy.

``twilio.rest.Client`` talks to many hosts: ``api.twilio.com`` (messages, calls, ...), which
``vk.twilio_client()`` rebases onto the proxy, but also ``verify.twilio.com``,
``lookups.twilio.com``, ``messaging.twilio.com`` and a dozen more, and an edge or a region
(``TWILIO_EDGE``, ``Client(edge=...)``) rewrites even the proxy's host. Each of those requests
would carry the vault token (the client's password) to a host that isn't keybrake's. The HTTP
client made here refuses, before anything is sent, every URL that is not below the proxy's
``/twilio/`` prefix.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from keybrake._errors import ConfigurationError, EndpointNotAllowed

if TYPE_CHECKING:
    from twilio.http.http_client import TwilioHttpClient

__all__ = ["proxy_only_http_client"]


def proxy_only_http_client(proxy_base: str, **options: Any) -> TwilioHttpClient:
    """A ``TwilioHttpClient`` that sends requests only to ``{proxy_base}/twilio/...``.

    Args:
        proxy_base: the proxy's base URL (``https://proxy.keybrake.com``).
        **options: passed to ``TwilioHttpClient`` (``timeout``, ``max_retries``, ...).

    Raises:
        ConfigurationError: the ``twilio`` package is missing.
    """
    try:
        from twilio.http.http_client import TwilioHttpClient
    except ImportError:
        raise ConfigurationError(
            "the official Twilio SDK is missing: pip install 'keybrake[twilio]'"
        ) from None
    prefix = f"{proxy_base.rstrip('/')}/twilio/"

    class ProxyOnlyHttpClient(TwilioHttpClient):  # type: ignore[misc]  # twilio is untyped
        """Refuses, before sending, a URL outside ``{proxy_base}/twilio/``."""

        def request(
            self,
            method: str,
            url: str,
            params: dict[str, object] | None = None,
            data: dict[str, object] | None = None,
            headers: dict[str, str] | None = None,
            auth: tuple[str, str] | None = None,
            timeout: float | None = None,
            allow_redirects: bool = False,
        ) -> Any:
            """Send a request to the proxy; never follow a redirect elsewhere.

            Raises:
                EndpointNotAllowed: the URL is not the proxy's; nothing was sent.
            """
            if not url.startswith(prefix):
                parts = urlsplit(url)
                attempted = f"{method.upper()} {parts.scheme}://{parts.netloc}{parts.path}"
                raise EndpointNotAllowed(
                    f"{attempted} is not keybrake's Twilio proxy ({prefix}): only Twilio's"
                    " api.twilio.com resources go through it, and this client sends the vault"
                    " key nowhere else",
                    code="endpoint_not_allowed",
                    body={"attempted": attempted},
                )
            return super().request(
                method,
                url,
                params=params,
                data=data,
                headers=headers,
                auth=auth,
                timeout=timeout,
                allow_redirects=False,
            )

    return ProxyOnlyHttpClient(**options)
