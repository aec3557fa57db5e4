"""Django: a vault key for each request under a path prefix, revoked once the response is sent.

settings.py::

    MIDDLEWARE = [..., "keybrake.integrations.django.VaultKeyMiddleware"]
    KEYBRAKE_VAULT_KEYS = [
        {"path_prefix": "/tools/", "vendor": "stripe",
         "endpoints": ["/v1/payment_intents"], "cap": 500, "ttl": "5m"},
    ]

views.py::

    def pay(request):                       # a sync view gets a keybrake.sync.VaultKey
        pi = request.vault_key.stripe.payment_intents.create(amount=2000, currency="usd")
        return JsonResponse({"id": pi.id})

    async def pay_async(request):           # an async view gets a keybrake.VaultKey
        pi = await request.vault_key.stripe.payment_intents.create(amount=2000, currency="usd")
        return JsonResponse({"id": pi.id})

Needs ``pip install 'keybrake[django]'``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any

import attrs

from keybrake._config import ClientConfig
from keybrake._errors import ConfigurationError, KeybrakeError
from keybrake._key_spec import KeySpec
from keybrake._vault_key import REVOKE_TIMEOUT, VaultKey
from keybrake.integrations._extras import missing_extra
from keybrake.integrations._http import (
    DEFAULT_LABEL_HEADERS,
    UNAVAILABLE_CODE,
    request_spec,
    unavailable_body,
)
from keybrake.sync import Keybrake as SyncKeybrake
from keybrake.sync import VaultKey as SyncVaultKey

try:
    from asgiref.sync import (
        async_to_sync,
        iscoroutinefunction,
        markcoroutinefunction,
        sync_to_async,
    )
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured
    from django.http import HttpRequest, HttpResponseBase, JsonResponse, StreamingHttpResponse
    from django.urls import Resolver404, ResolverMatch, resolve
except ImportError as exc:
    raise missing_extra("django", "Django", "django") from exc

__all__ = [
    "DEFAULT_LABEL_HEADERS",
    "SETTING",
    "SyncVaultKeyRequest",
    "UNAVAILABLE_CODE",
    "VaultKeyMiddleware",
    "VaultKeyRequest",
]

log = logging.getLogger("keybrake")

#: The Django setting that lists the path prefixes whose requests get a key.
SETTING = "KEYBRAKE_VAULT_KEYS"

_REQUIRED = ("path_prefix", "vendor", "endpoints", "cap", "ttl")
_OPTIONAL = ("label", "label_headers", "keepalive", "max_lifetime", "metadata", "stripe_account")

#: Closings started from a callback, kept referenced until they are done.
_closing: set[asyncio.Future[Any]] = set()


class VaultKeyRequest(HttpRequest):
    """For annotations only: the request of an ``async def`` view under a key's prefix."""

    vault_key: VaultKey


class SyncVaultKeyRequest(HttpRequest):
    """For annotations only: the request of a plain ``def`` view under a key's prefix."""

    vault_key: SyncVaultKey


@attrs.frozen
class _Route:
    """One entry of ``KEYBRAKE_VAULT_KEYS``, checked."""

    prefix: str
    spec: KeySpec
    label_headers: tuple[str, ...]


def _route(index: int, entry: object) -> _Route:
    where = f"{SETTING}[{index}]"
    if not isinstance(entry, Mapping):
        raise ImproperlyConfigured(f"{where} must be a dict, not {type(entry).__name__}")
    missing = [name for name in _REQUIRED if name not in entry]
    unknown = sorted(set(entry) - set(_REQUIRED) - set(_OPTIONAL))
    if missing or unknown:
        problems = [f"missing {', '.join(missing)}"] if missing else []
        problems += [f"unknown {', '.join(map(str, unknown))}"] if unknown else []
        raise ImproperlyConfigured(f"{where}: {'; '.join(problems)}")
    prefix = entry["path_prefix"]
    if not isinstance(prefix, str) or not prefix.startswith("/"):
        raise ImproperlyConfigured(f"{where}: path_prefix must start with '/', not {prefix!r}")
    label_headers = entry.get("label_headers", DEFAULT_LABEL_HEADERS)
    if isinstance(label_headers, str) or not all(isinstance(h, str) for h in label_headers):
        raise ImproperlyConfigured(f"{where}: label_headers must be a list of header names")
    options = {name: entry[name] for name in _OPTIONAL if name in entry and name != "label_headers"}
    try:
        spec = KeySpec(entry["vendor"], entry["endpoints"], entry["cap"], entry["ttl"], **options)
    except (ConfigurationError, TypeError) as exc:
        raise ImproperlyConfigured(f"{where}: {exc}") from exc
    return _Route(prefix, spec, tuple(label_headers))


def _routes() -> tuple[_Route, ...]:
    """``KEYBRAKE_VAULT_KEYS``, checked, longest prefix first."""
    entries = getattr(settings, SETTING, None)
    if not isinstance(entries, (list, tuple)):
        raise ImproperlyConfigured(f"{SETTING} must be a list of dicts, not {entries!r}")
    routes = [_route(index, entry) for index, entry in enumerate(entries)]
    prefixes = [route.prefix for route in routes]
    repeated = sorted({p for p in prefixes if prefixes.count(p) > 1})
    if repeated:
        raise ImproperlyConfigured(f"{SETTING}: path_prefix {', '.join(repeated)} given twice")
    return tuple(sorted(routes, key=lambda route: len(route.prefix), reverse=True))


@attrs.frozen
class _ClientSettings:
    """What Django's settings say of the keybrake client (``None``: the environment's)."""

    token: str | None
    api_url: str | None
    proxy_url: str | None


def _client_settings() -> _ClientSettings:
    """The keybrake client's settings: Django's ``KEYBRAKE_*`` settings over the environment.

    Raises:
        ImproperlyConfigured: a bad URL, or no master token anywhere.
    """
    shared = getattr(settings, "KEYBRAKE_URL", None)
    found = _ClientSettings(
        token=getattr(settings, "KEYBRAKE_TOKEN", None),
        api_url=getattr(settings, "KEYBRAKE_API_URL", None) or shared,
        proxy_url=getattr(settings, "KEYBRAKE_PROXY_URL", None) or shared,
    )
    try:
        config = ClientConfig.resolve(
            token=found.token, api_url=found.api_url, proxy_url=found.proxy_url
        )
    except ConfigurationError as exc:
        raise ImproperlyConfigured(f"keybrake: {exc}") from exc
    if config.token is None:
        raise ImproperlyConfigured(
            "keybrake needs a master token: set KEYBRAKE_TOKEN in the environment or in settings"
        )
    return found


def _spawn(work: Awaitable[Any]) -> None:
    """Run ``work`` on the running loop without waiting for it."""
    future = asyncio.ensure_future(work)
    _closing.add(future)
    future.add_done_callback(_closing.discard)


class _Held:
    """A request's open key, and how to close it from wherever Django closes the response.

    A ``keybrake.sync.VaultKey`` closes from any thread. A ``keybrake.VaultKey`` closes on
    the loop it was issued on (``loop``): from another thread the closer waits for it.
    Closing twice is a no-op.
    """

    def __init__(self, key: VaultKey | SyncVaultKey, loop: asyncio.AbstractEventLoop | None):
        self.key = key
        self.loop = loop

    def _on_key_loop(self) -> bool:
        try:
            return asyncio.get_running_loop() is self.loop
        except RuntimeError:
            return False

    def close(self) -> None:
        """Close, blocking until revoked; on a running loop, start closing instead."""
        key = self.key
        if isinstance(key, SyncVaultKey):
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                key.close()
            else:
                self.close_soon()
        elif self._on_key_loop():
            self.close_soon()
        else:
            assert self.loop is not None
            if not self.loop.is_closed():
                future = asyncio.run_coroutine_threadsafe(key.aclose(), self.loop)
                future.result(2 * REVOKE_TIMEOUT)

    async def aclose(self) -> None:
        """Close from a running loop, without blocking it."""
        key = self.key
        if isinstance(key, SyncVaultKey):
            await asyncio.to_thread(key.close)
        elif self._on_key_loop():
            await key.aclose()
        else:
            await asyncio.to_thread(self.close)

    def close_soon(self) -> None:
        """Start closing on the running loop, from a callback."""
        _spawn(self.aclose())

    def until_sent(self, response: HttpResponseBase) -> None:
        """Close when Django closes ``response``: once sent, after a stream's last chunk."""
        closers: list[Callable[[], object]] = response._resource_closers  # type: ignore[attr-defined]
        closers.append(self.close)  # response.close() calls them
        if isinstance(response, StreamingHttpResponse):
            content = response.streaming_content
            if isinstance(content, AsyncIterator):
                response.streaming_content = self._async_chunks(content)
            else:
                response.streaming_content = self._chunks(content)

    def _chunks(self, content: Iterable[bytes]) -> Iterator[bytes]:
        try:
            yield from content
        finally:  # the last chunk, or the stream closed early (client gone)
            self.close()

    async def _async_chunks(self, content: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        try:
            async for chunk in content:
                yield chunk
        finally:
            await self.aclose()


class VaultKeyMiddleware:
    """Give each request under a configured path prefix its own vault key.

    Configured by ``settings.KEYBRAKE_VAULT_KEYS``, a list of dicts, each with
    ``path_prefix``, ``vendor``, ``endpoints``, ``cap`` and ``ttl`` and optionally
    ``label``, ``label_headers``, ``keepalive``, ``max_lifetime``, ``metadata`` and
    ``stripe_account`` (as for :class:`keybrake.KeySpec`). A request whose path starts
    with a prefix (the longest one that matches) and that resolves to a view gets
    ``request.vault_key``: a :class:`keybrake.sync.VaultKey` for a plain ``def`` view, a
    :class:`keybrake.VaultKey` for an ``async def`` one. Other requests pass untouched.

    The key is labelled like ``"POST /tools/pay x-user-id=u1 x-agent-run-id=r7"`` (the
    method and route, or the entry's ``label``, then the ``X-User-Id`` and
    ``X-Agent-Run-Id`` values, which also go into its metadata) and revoked once the
    response has been sent: when the server closes the response, or after the last chunk
    of a ``StreamingHttpResponse`` (or when the client goes away mid-stream). If it can't
    be issued, the view is not called and the answer is ``503 {"code":
    "vault_key_unavailable", "message": ...}``.

    The master token and URLs come from Django's ``KEYBRAKE_TOKEN``, ``KEYBRAKE_URL``,
    ``KEYBRAKE_API_URL`` and ``KEYBRAKE_PROXY_URL`` settings when set, else from the
    environment variables of the same names.

    Raises:
        ImproperlyConfigured: at startup, for a bad entry or no master token.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.routes = _routes()
        self.client_settings = _client_settings()
        #: One client, one HTTP session per process, for the sync views' keys.
        client = self.client_settings
        self.sync_client = SyncKeybrake(
            client.token, api_url=client.api_url, proxy_url=client.proxy_url
        )
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def __repr__(self) -> str:
        prefixes = ", ".join(route.prefix for route in self.routes)
        return f"<VaultKeyMiddleware {prefixes}>"

    def _match(self, request: HttpRequest) -> tuple[_Route, ResolverMatch] | None:
        path = request.path_info
        for route in self.routes:
            if path.startswith(route.prefix):
                try:
                    return route, resolve(path, getattr(request, "urlconf", None))
                except Resolver404:
                    return None  # no view: Django answers 404 without a key
        return None

    def _spec(self, request: HttpRequest, route: _Route, match: ResolverMatch) -> KeySpec:
        return request_spec(
            route.spec,
            label=route.spec.label or f"{request.method} /{match.route}",
            headers=request.headers,
            label_headers=route.label_headers,
        )

    def _unavailable(self, route: _Route, exc: KeybrakeError, spec: KeySpec) -> JsonResponse:
        log.warning("no vault key for %s: %s", spec.label, exc)
        return JsonResponse(unavailable_body(route.spec.vendor), status=503)

    def _open_sync(self, spec: KeySpec) -> SyncVaultKey:
        key = SyncVaultKey.from_spec(spec, client=self.sync_client)
        key.open()
        return key

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        found = self._match(request)
        if found is None:
            return self.get_response(request)
        route, match = found
        spec = self._spec(request, route, match)
        if iscoroutinefunction(match.func):
            return async_to_sync(self._async_view_in_sync_mode)(request, route, spec)
        try:
            key = self._open_sync(spec)
        except KeybrakeError as exc:
            return self._unavailable(route, exc, spec)
        return self._respond(request, _Held(key, None))

    def _respond(self, request: HttpRequest, held: _Held) -> HttpResponseBase:
        request.vault_key = held.key  # type: ignore[attr-defined]
        try:
            response: HttpResponseBase = self.get_response(request)
        except BaseException:
            held.close()
            raise
        held.until_sent(response)
        return response

    async def _async_view_in_sync_mode(
        self, request: HttpRequest, route: _Route, spec: KeySpec
    ) -> HttpResponseBase:
        """An ``async def`` view behind a sync handler (WSGI): its key lives on this loop.

        Django runs the view on this loop (``async_to_sync`` finds it running), and the
        loop ends when this returns, so the key is revoked here, once the response is
        complete; an async stream is read to its end first, as Django would under WSGI.
        """
        try:
            key = await self._open_async(spec)
        except KeybrakeError as exc:
            return self._unavailable(route, exc, spec)
        try:
            request.vault_key = key  # type: ignore[attr-defined]
            response: HttpResponseBase = await sync_to_async(self.get_response)(request)
            if isinstance(response, StreamingHttpResponse) and response.is_async:
                response.streaming_content = [chunk async for chunk in response]
            return response
        finally:
            await key.aclose()

    async def _open_async(self, spec: KeySpec) -> VaultKey:
        client = self.client_settings
        key = VaultKey.from_spec(  # with a client of its own, on this loop
            spec, token=client.token, api_url=client.api_url, proxy_url=client.proxy_url
        )
        await key.__aenter__()
        return key

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        found = self._match(request)
        if found is None:
            response: HttpResponseBase = await self.get_response(request)
            return response
        route, match = found
        spec = self._spec(request, route, match)
        loop = asyncio.get_running_loop()
        key: VaultKey | SyncVaultKey
        try:
            if iscoroutinefunction(match.func):
                key = await self._open_async(spec)
            else:
                key = await asyncio.to_thread(self._open_sync, spec)
        except KeybrakeError as exc:
            return self._unavailable(route, exc, spec)
        held = _Held(key, loop)
        request.vault_key = key  # type: ignore[attr-defined]
        try:
            response = await self.get_response(request)
        except BaseException:
            await held.aclose()
            raise
        held.until_sent(response)
        # Under ASGI, a client that leaves while the response is sent cancels the task that
        # sends it, and Django then never closes the response: close the key then.
        task = asyncio.current_task()
        if task is not None:
            task.add_done_callback(lambda done: held.close_soon() if done.cancelled() else None)
        return response
