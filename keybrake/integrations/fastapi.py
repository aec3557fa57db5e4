"""FastAPI and Starlette: a vault key per request, revoked after the response is sent.

::

    from typing import Annotated
    from fastapi import Depends, FastAPI
    from keybrake import VaultKey
    from keybrake.integrations.fastapi import (
        VaultKeyUnavailable, vault_key_dependency, vault_key_unavailable_handler,
    )

    payments_key = vault_key_dependency("stripe", ["/v1/payment_intents"], cap=500, ttl="5m")
    PaymentsKey = Annotated[VaultKey, Depends(payments_key)]

    app = FastAPI()
    app.add_exception_handler(VaultKeyUnavailable, vault_key_unavailable_handler)

    @app.post("/pay")
    async def pay(vk: PaymentsKey) -> dict[str, str]:
        pi = await vk.stripe.payment_intents.create(amount=2000, currency="usd")
        return {"id": pi.id}

Needs ``pip install 'keybrake[fastapi]'``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import timedelta
from decimal import Decimal
from typing import Any

from keybrake._errors import KeybrakeError
from keybrake._vault_key import VaultKey
from keybrake.integrations._extras import missing_extra
from keybrake.integrations._http import (
    DEFAULT_LABEL_HEADERS,
    UNAVAILABLE_CODE,
    open_request_key,
    unavailable_body,
)

try:
    from fastapi import HTTPException, Request
    from fastapi.responses import JSONResponse
except ImportError as exc:
    raise missing_extra("fastapi", "FastAPI", "fastapi") from exc

__all__ = [
    "DEFAULT_LABEL_HEADERS",
    "UNAVAILABLE_CODE",
    "VaultKeyUnavailable",
    "vault_key_dependency",
    "vault_key_unavailable_handler",
]

log = logging.getLogger("keybrake")


class VaultKeyUnavailable(HTTPException):
    """A request's vault key could not be issued: the route answers 503.

    With :func:`vault_key_unavailable_handler` installed the body is
    ``{"code": "vault_key_unavailable", "message": ...}``; without it, FastAPI's default
    handler nests the same object under ``"detail"``. The keybrake error is the
    ``__cause__``.

    Args:
        vendor: the vendor the key was for.
    """

    def __init__(self, vendor: str) -> None:
        self.body = unavailable_body(vendor)
        super().__init__(503, detail=self.body)


async def vault_key_unavailable_handler(request: Request, exc: Exception) -> JSONResponse:
    """Answer :class:`VaultKeyUnavailable` with ``503 {"code": ..., "message": ...}``.

    Install it with ``app.add_exception_handler(VaultKeyUnavailable,
    vault_key_unavailable_handler)``.

    Args:
        request: the request whose key could not be issued.
        exc: the :class:`VaultKeyUnavailable` raised by the dependency.
    """
    body = exc.body if isinstance(exc, VaultKeyUnavailable) else unavailable_body("vendor")
    return JSONResponse(body, status_code=503)


def _route_template(request: Request) -> str:
    route = request.scope.get("route")
    path = getattr(route, "path", None)
    return f"{request.method} {path if isinstance(path, str) else request.url.path}"


def vault_key_dependency(
    vendor: str,
    endpoints: list[str] | tuple[str, ...],
    *,
    cap: int | str | Decimal,
    ttl: str | int | timedelta,
    label: str | None = None,
    label_headers: Sequence[str] = DEFAULT_LABEL_HEADERS,
    **key_options: Any,
) -> Callable[[Request], AsyncIterator[VaultKey]]:
    """A FastAPI dependency that issues a vault key for each request that uses it.

    Use it with ``Depends(...)`` in a route's parameters, in ``APIRouter(dependencies=...)``
    or both: FastAPI caches a dependency per request, so a router-wide key and a route's
    ``Depends`` on the same dependency are one key. The key is revoked once the response
    has been sent, streaming responses and background tasks included (FastAPI runs the
    exit of a ``yield`` dependency after the response; don't use ``Depends(...,
    scope="function")`` with it, which ends the key before the response).

    The key's label is ``label`` (default: the method and route, like ``"POST /pay"``)
    followed by the values of ``label_headers`` present on the request
    (``"POST /pay x-user-id=u1 x-agent-run-id=r7"``); the same values go into its metadata.
    If the key can't be issued (keybrake down or refusing), the dependency raises
    :class:`VaultKeyUnavailable` and the route answers 503.

    Args:
        vendor: ``"stripe"`` or ``"twilio"``.
        endpoints: the endpoint patterns the key allows.
        cap: daily spend cap in USD.
        ttl: the key's time to live (keepalive extends it while the request runs).
        label: the start of the key's label.
        label_headers: request headers whose values label the key.
        **key_options: any other :class:`keybrake.VaultKey` option; pass ``client`` to share
            one :class:`keybrake.Keybrake` client (and its HTTP session) across requests.

    Raises:
        ConfigurationError: a bad key option (checked here, not on the first request).
    """
    # Validate the key options once, now, not on the first request.
    VaultKey(vendor, endpoints, cap, ttl, **{**key_options, "keepalive": False})
    metadata = dict(key_options.pop("metadata", None) or {})
    names = tuple(label_headers)

    async def issue_vault_key(request: Request) -> AsyncIterator[VaultKey]:
        try:
            key = await open_request_key(
                vendor,
                endpoints,
                cap,
                ttl,
                label=label or _route_template(request),
                headers=request.headers,
                label_headers=names,
                metadata=metadata,
                key_options=key_options,
            )
        except KeybrakeError as exc:
            raise VaultKeyUnavailable(vendor) from exc
        try:
            yield key
        finally:
            await key.aclose()

    return issue_vault_key
