"""aiohttp.web: a middleware that gives each request a vault key and revokes it after.

::

    from aiohttp import web
    from keybrake.integrations.aiohttp_web import VAULT_KEY, vault_key_middleware

    async def pay(request: web.Request) -> web.Response:
        vk = request[VAULT_KEY]
        pi = await vk.stripe.payment_intents.create(amount=2000, currency="usd")
        return web.json_response({"id": pi.id})

    payments = web.Application(
        middlewares=[vault_key_middleware("stripe", ["/v1/payment_intents"], cap=500, ttl="5m")]
    )
    payments.router.add_post("/pay", pay)
    app = web.Application()
    app.add_subapp("/payments/", payments)   # only the sub-app's routes get a key

Needs aiohttp 3.14 or later (``web.RequestKey``): ``pip install 'keybrake[aiohttp-web]'``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from keybrake._errors import KeybrakeError
from keybrake._key_spec import Cap, Duration, KeySpec
from keybrake._vault_key import KeyOptions, VaultKey, resolve_spec
from keybrake.integrations._extras import missing_extra
from keybrake.integrations._http import (
    DEFAULT_LABEL_HEADERS,
    UNAVAILABLE_CODE,
    open_request_key,
    unavailable_body,
)

try:
    from aiohttp import web
    from aiohttp.typedefs import Handler, Middleware

    web.RequestKey  # noqa: B018 - aiohttp 3.14 and later
except (ImportError, AttributeError) as exc:
    raise missing_extra("aiohttp_web", "aiohttp 3.14 or later", "aiohttp-web") from exc

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "DEFAULT_LABEL_HEADERS",
    "UNAVAILABLE_CODE",
    "VAULT_KEY",
    "vault_key_middleware",
]

log = logging.getLogger("keybrake")

#: Where :func:`vault_key_middleware` puts a request's key: ``request[VAULT_KEY]``.
VAULT_KEY: web.RequestKey[VaultKey] = web.RequestKey("vault_key", VaultKey)


def _route_template(request: web.Request) -> str:
    resource = request.match_info.route.resource
    path = resource.canonical if resource is not None else request.path
    return f"{request.method} {path}"


def vault_key_middleware(
    vendor: KeySpec | str,
    endpoints: list[str] | tuple[str, ...] | None = None,
    *,
    cap: Cap | None = None,
    ttl: Duration | None = None,
    path_prefix: str = "/",
    label: str | None = None,
    label_headers: Sequence[str] = DEFAULT_LABEL_HEADERS,
    request_key: web.RequestKey[VaultKey] = VAULT_KEY,
    **key_options: Unpack[KeyOptions],
) -> Middleware:
    """An aiohttp.web middleware that issues a vault key for each request it handles.

    Requests whose path starts with ``path_prefix`` get a key in ``request[request_key]``
    (:data:`VAULT_KEY` by default); others pass through untouched. Put it in a sub-app's
    ``middlewares`` to scope keys to that sub-app; give nested scopes their own
    ``web.RequestKey`` so that one key doesn't hide the other.

    The key is revoked when the handler is done: after a ``web.StreamResponse`` (SSE and
    other streams written by the handler) has been written to its end, which the
    middleware makes sure of before revoking; a ``web.Response`` body is complete by then.

    The key's label is ``label`` (default: the method and route, like ``"POST /pay"``)
    followed by the values of ``label_headers`` present on the request; the same values go
    into its metadata. If the key can't be issued (keybrake down or refusing), the request
    is answered ``503 {"code": "vault_key_unavailable", "message": ...}`` without calling
    the handler.

    Args:
        vendor: a :class:`keybrake.KeySpec` (its ``label`` starts the key's label),
            or the vendor, followed by ``endpoints``, ``cap`` and ``ttl``: the endpoint
            patterns the key allows, its daily spend cap in USD, and its time to live
            (keepalive extends it while the request runs).
        path_prefix: only requests under this path get a key.
        label: the start of the key's label (without a spec).
        label_headers: request headers whose values label the key.
        request_key: where the key goes on the request.
        **key_options: with a vendor, any other :class:`keybrake.VaultKey` option; with a
            spec, only ``client``, ``on_lost``, ``cancel_on_loss``, ``token``, ``api_url``
            and ``proxy_url``. Pass ``client`` to share one :class:`keybrake.Keybrake`
            client (and its HTTP session) across requests.

    Raises:
        ConfigurationError: a bad key option (checked here, not on the first request).
        TypeError: an unknown option, or a spec together with the fields it holds.
    """
    key_spec, run = resolve_spec(
        vendor, endpoints, cap=cap, ttl=ttl, label=label, options=key_options
    )
    names = tuple(label_headers)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith(path_prefix) or request.match_info.http_exception:
            return await handler(request)  # not ours, or no route (404, 405): no key
        try:
            key = await open_request_key(
                key_spec,
                run,
                label=key_spec.label or _route_template(request),
                headers=request.headers,
                label_headers=names,
            )
        except KeybrakeError:
            return web.json_response(unavailable_body(key_spec.vendor), status=503)
        try:
            request[request_key] = key
            response = await handler(request)
            if response.prepared:  # a stream the handler wrote: finish it while the key lives
                await response.write_eof()
            return response
        finally:
            await key.aclose()

    return middleware
