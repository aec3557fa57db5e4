"""A vendor as one object: what the server needs to proxy it and the SDK needs to call it.

Each vendor package exports a :class:`Vendor` and registers it in the entry-point group
``keybrake.vendors`` (CONTRACT §3); keybrake's own vendors are registered the same way::

    [project.entry-points."keybrake.vendors"]
    resend = "keybrake.vendors.resend:VENDOR"

The object is cheap to import: it names its pricer and its typed client through factories,
so the SDK never loads pricing rules and the server never loads a client it doesn't serve.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

import attrs

from keybrake.vendors._pricing import Pricer

if TYPE_CHECKING:
    from keybrake._retry import RetryPolicy
    from keybrake._transport import ProxyTransport

__all__ = ["ErrorShape", "Scope", "Vendor", "keybrake_error_shape"]

ClientT = TypeVar("ClientT", covariant=True)

#: The vendor's own error shape, added to keybrake's JSON error (``code``, ``message``) so
#: the vendor's official SDK reads a refusal as an error: ``(status, code, message)`` →
#: (extra body fields, extra headers).
ErrorShape = Callable[[int, str, str], tuple[Mapping[str, Any], Mapping[str, str]]]

#: A key's account pinning (Stripe's ``Stripe-Account``): ``(key id, the key's account, the
#: request's headers)`` → the headers to forward that act on that account. It raises
#: :class:`~keybrake.vendors._pricing.PricingRefusal` for a request naming another account.
Scope = Callable[[str, "str | None", Mapping[str, str]], Mapping[str, str]]

#: Headers every vendor forwards, as the client sent them (one value each).
COMMON_FORWARDED_HEADERS = ("Accept", "Accept-Language", "Idempotency-Key", "User-Agent")

#: A vendor name is a path segment of the proxy; these are taken by the server itself.
_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
RESERVED_NAMES = frozenset({"v1", "dashboard", "metrics", "healthz", "openapi.json", "docs"})


def keybrake_error_shape(
    status: int, code: str, message: str
) -> tuple[dict[str, Any], dict[str, str]]:
    """Nothing beyond keybrake's own ``code`` and ``message``."""
    return {}, {}


def _check_name(instance: Vendor[Any], attribute: attrs.Attribute[str], value: str) -> None:
    if not _NAME.fullmatch(value) or value in RESERVED_NAMES:
        raise ValueError(
            f"a vendor name is lower-case letters, digits, '-' and '_', up to 32, and not one"
            f" of {sorted(RESERVED_NAMES)}; got {value!r}"
        )


@attrs.frozen(kw_only=True)
class Vendor(Generic[ClientT]):
    """Everything keybrake knows about one vendor.

    Attributes:
        name: the proxy path segment (``/{name}/...``) and a key's ``vendor``.
        title: the vendor's name in messages (``"Stripe"``).
        default_api_base: where the vendor's API lives (``https://api.stripe.com``).
        settings: the server's settings for this vendor, each with its environment variable;
            ``api_base`` is the base URL, the others are credentials
            (``{"api_base": "KEYBRAKE_STRIPE_API_BASE", "secret_key": ...}``), which are never
            shown: every setting but ``api_base`` is hidden in ``repr``.
        authorization: the upstream ``Authorization`` header from the settings, or None if
            the credentials are not all there (the proxy then answers 503).
        make_pricer: the pricer, from the vendor's section of the operator's pricing file
            (None if it has none) and the settings. Raises ValueError for a bad section.
        make_client: the SDK's typed client (``vk.{name}``), over a transport to the proxy.
        forwarded_headers: request headers passed on beside :data:`COMMON_FORWARDED_HEADERS`.
        guarded_headers: more request headers the policy reads, so they may come once only.
        lookup_headers: forwarded headers that pricing look-ups at the vendor carry too.
        request_id_headers: response headers holding the vendor's request id.
        body_format: ``"form"`` (``application/x-www-form-urlencoded``) or ``"json"``.
        honours_idempotency: the vendor replays a request that repeats an
            ``Idempotency-Key`` with the same body, without acting again.
        error_shape: the vendor's own error fields on keybrake's refusals.
        scope: the key's account pinning, if the vendor has accounts (Stripe).
        account_pattern: what a pinned account id looks like, if ``scope`` is set.
    """

    name: str = attrs.field(validator=_check_name)
    title: str
    default_api_base: str
    settings: Mapping[str, str]
    authorization: Callable[[Mapping[str, str]], str | None]
    make_pricer: Callable[[Any, Mapping[str, str]], Pricer]
    make_client: Callable[[ProxyTransport, RetryPolicy], ClientT]
    forwarded_headers: tuple[str, ...] = ()
    guarded_headers: tuple[str, ...] = ()
    lookup_headers: tuple[str, ...] = ()
    request_id_headers: tuple[str, ...] = ()
    body_format: Literal["form", "json"] = "form"
    honours_idempotency: bool = False
    error_shape: ErrorShape = keybrake_error_shape
    scope: Scope | None = None
    account_pattern: re.Pattern[str] | None = None

    def __repr__(self) -> str:
        return f"<Vendor {self.name}>"

    @property
    def all_forwarded_headers(self) -> tuple[str, ...]:
        """Every request header passed on to this vendor."""
        return COMMON_FORWARDED_HEADERS + self.forwarded_headers
