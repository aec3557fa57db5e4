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
    from fastapi import HTTPException, Request
    from fastapi.responses import JSONResponse
except ImportError as exc:
    raise missing_extra("fastapi", "FastAPI", "fastapi") from exc

if TYPE_CHECKING:
    from typing_extensions import Unpack

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
    vendor: KeySpec | str,
    endpoints: list[str] | tuple[str, ...] | None = None,
    *,
    cap: Cap | None = None,
    ttl: Duration | None = None,
    label: str | None = None,
    label_headers: Sequence[str] = DEFAULT_LABEL_HEADERS,
    **key_options: Unpack[KeyOptions],
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
        vendor: a :class:`keybrake.KeySpec` (its ``label`` starts the key's label),
            or the vendor, followed by ``endpoints``, ``cap`` and ``ttl``: the endpoint
            patterns the key allows, its daily spend cap in USD, and its time to live
            (keepalive extends it while the request runs).
        label: the start of the key's label (without a spec).
        label_headers: request headers whose values label the key.
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

    async def issue_vault_key(request: Request) -> AsyncIterator[VaultKey]:
        try:
            key = await open_request_key(
                key_spec,
                run,
                label=key_spec.label or _route_template(request),
                headers=request.headers,
                label_headers=names,
            )
        except KeybrakeError as exc:
            raise VaultKeyUnavailable(key_spec.vendor) from exc
        try:
            yield key
        finally:
            await key.aclose()

    return issue_vault_key
