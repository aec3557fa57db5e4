"""``Keybrake``: the admin client of the issuance API, owner of one HTTP session."""

from __future__ import annotations

import contextlib
import json
import uuid
import warnings
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

import aiohttp

from keybrake._config import ClientConfig
from keybrake._errors import ConfigurationError, KeybrakeError, KeybrakeUnavailable
from keybrake._key_spec import Cap, Duration, KeySpec, cap_string, duration_seconds
from keybrake._models import (
    AuditRecord,
    BudgetInfo,
    IssuedKey,
    KeyInfo,
    Lease,
    Revocation,
    UsageRecord,
)
from keybrake._retry import DEFAULT_RETRY, RetryPolicy

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["Keybrake", "decode_error"]

USER_AGENT = "keybrake-python"


def decode_error(
    status: int, headers: Mapping[str, str], body: bytes, *, source: str = "api"
) -> KeybrakeError:
    """Turn one of keybrake's own error answers (API or ``source="proxy"``) into its exception."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        data = {"message": f"HTTP {status}: {body[:200].decode('utf-8', 'replace')}"}
    exc = KeybrakeError.from_response(
        status,
        data,
        request_id=headers.get("Request-Id") or headers.get("X-Request-Id"),
        source=source,
    )
    retry_after = headers.get("Retry-After")
    if retry_after is not None:
        with contextlib.suppress(ValueError):
            exc.retry_after = float(retry_after)
    return exc


class Keybrake:
    """Admin client of the issuance API.

    One ``aiohttp.ClientSession``, created lazily inside the running loop and closed by
    [`close()`][keybrake.Keybrake.close] (or ``async with``). Pass ``session`` to use one you
    own instead; it is then never closed here.

    Args:
        token: the master token (else ``KEYBRAKE_TOKEN``).
        api_url: the issuance API (else ``KEYBRAKE_API_URL``, ``KEYBRAKE_URL``, the default).
        proxy_url: the proxy (else ``KEYBRAKE_PROXY_URL``, ``KEYBRAKE_URL``, the default).
        timeout: seconds for one HTTP call.
        retry: how calls are retried (also by the vault keys that share this client);
            ``RetryPolicy.off()`` disables retries.
        session: an ``aiohttp.ClientSession`` to borrow.
    """

    def __init__(
        self,
        token: str | None = None,
        *,
        api_url: str | None = None,
        proxy_url: str | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.config = ClientConfig.resolve(
            token=token, api_url=api_url, proxy_url=proxy_url, timeout=timeout
        )
        self.retry = retry if retry is not None else DEFAULT_RETRY
        self._session = session
        self._owns_session = session is None
        self._closed = False

    def __repr__(self) -> str:
        return f"Keybrake(api_url={self.config.api_url!r}, proxy_url={self.config.proxy_url!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session if this client created it. Closing twice is a no-op."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None and self._owns_session:
            await session.close()

    def __del__(self, _warn: Any = warnings.warn) -> None:
        session = getattr(self, "_session", None)
        if session is not None and self._owns_session and not session.closed:
            _warn(f"unclosed {self!r}; use 'async with Keybrake()'", ResourceWarning, source=self)

    def http(self) -> aiohttp.ClientSession:
        """The shared HTTP session (created on first use, inside the running loop)."""
        if self._closed:
            raise ConfigurationError("this Keybrake client is closed")
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.config.timeout),
                headers={"User-Agent": USER_AGENT},
            )
        return self._session

    async def _api(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        token = self.config.token
        if token is None:
            raise ConfigurationError("no master token: pass token=... or set KEYBRAKE_TOKEN")
        url = self.config.api_url + path
        all_headers = {"Authorization": f"Bearer {token}", **(headers or {})}

        async def attempt() -> dict[str, Any]:
            async with self.http().request(method, url, json=body, headers=all_headers) as response:
                payload = await response.read()
                if response.status >= 400:
                    raise decode_error(response.status, response.headers, payload)
                try:
                    data = json.loads(payload)
                except ValueError:
                    raise KeybrakeUnavailable(
                        f"keybrake answered {response.status} with a body that is not JSON",
                        status=response.status,
                    ) from None
                if not isinstance(data, dict):
                    raise KeybrakeUnavailable("keybrake answered with unexpected JSON")
                return data

        return await self.retry.call(attempt)

    async def issue_key(
        self,
        vendor: KeySpec | str,
        endpoints: list[str] | tuple[str, ...] | None = None,
        *,
        cap: Cap | None = None,
        ttl: Duration | None = None,
        label: str | None = None,
        max_lifetime: Duration | None = None,
        metadata: Mapping[str, str] | None = None,
        stripe_account: str | None = None,
        rate_limit: str | None = None,
        max_requests: int | None = None,
        budget: object = None,
        idempotency_key: str | None = None,
    ) -> IssuedKey:
        """Issue a vault key. Retried on transient failures without ever making two keys.

        ``issue_key(spec)`` issues the key a [`KeySpec`][keybrake.KeySpec] describes (its
        ``keepalive`` is not used: keeping a key alive is what ``VaultKey`` does);
        ``issue_key(vendor, endpoints, cap=..., ttl=..., ...)`` builds that spec from the
        arguments.

        Args:
            vendor: a [`KeySpec`][keybrake.KeySpec], or the vendor's name (``"stripe"``,
                ``"twilio"``) followed by the other fields, as for
                [`VaultKey`][keybrake.VaultKey].
            endpoints: the allowlist of endpoint patterns.
            cap: the daily spend cap in USD.
            ttl: time to live.
            label: a name for the key.
            max_lifetime: a hard age limit; not shorter than ``ttl``.
            metadata: string pairs stored with the key.
            stripe_account: pins a Stripe key to one connected account
                (``Stripe-Account``).
            rate_limit: at most N forwarded requests in any window (``"10/m"``).
            max_requests: at most so many forwarded requests over the key's life.
            budget: a run budget to draw from (a [`Budget`][keybrake.Budget] or its id).
            idempotency_key: the ``Idempotency-Key`` sent, and reused by every retry; a new
                random one when omitted.

        Returns:
            The new key, with its token: the API shows it only in this answer.

        Raises:
            ConfigurationError: no master token, or a bad argument (see
                [`KeySpec`][keybrake.KeySpec]).
            IssuanceError: the API refused (bad request, ...).
            KeybrakeUnavailable: the API could not be reached within the retry policy.
            TypeError: a spec together with the fields it holds, or neither.
        """
        if isinstance(vendor, KeySpec):
            fields: dict[str, object] = {
                "endpoints": endpoints,
                "cap": cap,
                "ttl": ttl,
                "label": label,
                "max_lifetime": max_lifetime,
                "metadata": metadata,
                "stripe_account": stripe_account,
                "rate_limit": rate_limit,
                "max_requests": max_requests,
                "budget": budget,
            }
            given = [name for name, value in fields.items() if value is not None]
            if given:
                raise TypeError(f"with a KeySpec, give {', '.join(given)} in the spec")
            spec = vendor
        elif endpoints is None or cap is None or ttl is None:
            raise TypeError("give a KeySpec, or a vendor with endpoints, cap and ttl")
        else:
            spec = KeySpec(
                vendor,
                endpoints,
                cap,
                ttl,
                label=label,
                max_lifetime=max_lifetime,
                metadata=metadata,
                stripe_account=stripe_account,
                rate_limit=rate_limit,
                max_requests=max_requests,
                budget=budget,
            )
        body: dict[str, Any] = {
            "vendor": spec.vendor,
            "allowed_endpoints": list(spec.endpoints),
            "daily_usd_cap": str(spec.cap),
            "expires_in": spec.ttl_seconds,
            "label": spec.label or "",
        }
        if spec.max_lifetime is not None:
            body["max_lifetime"] = int(spec.max_lifetime.total_seconds())
        if spec.metadata:
            body["metadata"] = dict(spec.metadata)
        if spec.stripe_account is not None:
            body["stripe_account"] = spec.stripe_account
        for name in ("rate_limit", "max_requests", "budget"):
            value = getattr(spec, name)
            if value is not None:
                body[name] = value
        headers = {"Idempotency-Key": idempotency_key or f"kb-{uuid.uuid4()}"}
        data = await self._api("POST", "/v1/keys", body=body, headers=headers)
        return IssuedKey.from_json(data)

    async def get_key(self, key_id: str) -> KeyInfo:
        """Describe a key: status and spend today.

        Args:
            key_id: the key's id, ``vk_...``.

        Raises:
            IssuanceError: no such key in this tenant (404 ``key_not_found``).
        """
        return KeyInfo.from_json(await self._api("GET", f"/v1/keys/{_quote(key_id)}"))

    async def _pages(
        self, path: str, filters: Mapping[str, str | None], page_size: int
    ) -> AsyncIterator[dict[str, Any]]:
        """Every item of a cursor-paginated listing, fetched page by page."""
        query = {k: v for k, v in filters.items() if v is not None}
        query["limit"] = str(page_size)
        while True:
            page = await self._api("GET", f"{path}?{urlencode(query)}")
            data = page.get("data")
            if not isinstance(data, list):
                return
            for item in data:
                yield item
            if not page.get("has_more") or not data:
                return
            query["starting_after"] = str(data[-1]["id"])

    async def list_keys(
        self, *, status: str | None = None, page_size: int = 100
    ) -> AsyncIterator[KeyInfo]:
        """Every key of this tenant (newest first), optionally only ``active``, ``expired``
        or ``revoked`` ones, fetched page by page as you iterate:

        ```python
        async for key in kb.list_keys(status="active"):
            ...
        ```

        Listed keys have no ``spent_today_usd``; [`get_key()`][keybrake.Keybrake.get_key] has
        it.

        Args:
            status: only ``"active"``, ``"expired"`` or ``"revoked"`` keys; all when ``None``.
            page_size: keys per request, 1 to 100.

        Raises:
            IssuanceError: a bad ``status`` or ``page_size`` (``400 bad_request``), raised
                from the iteration step that fetches the page.
        """
        async for item in self._pages("/v1/keys", {"status": status}, page_size):
            yield KeyInfo.from_json(item)

    async def audit(
        self,
        *,
        key_id: str | None = None,
        decision: str | None = None,
        page_size: int = 100,
    ) -> AsyncIterator[AuditRecord]:
        """The proxy's decisions for this tenant's keys, newest first:

        ```python
        async for record in kb.audit(key_id=vk.id):
            print(record.at, record.decision, record.method, record.path)
        ```

        Entries are written shortly after each request (normally within a fifth of a
        second), so a request just answered may not be listed yet.

        Args:
            key_id: only this key's entries.
            decision: only entries with this decision: ``"allowed"`` or a refusal code
                such as ``"cap_exhausted"``.
            page_size: entries per request, 1 to 100.
        """
        filters = {"key_id": key_id, "decision": decision}
        async for item in self._pages("/v1/audit", filters, page_size):
            yield AuditRecord.from_json(item)

    async def usage(
        self, *, key_id: str | None = None, day: str | None = None, page_size: int = 100
    ) -> AsyncIterator[UsageRecord]:
        """Spend per key and UTC day, newest day first.

        A key has a row for a day only once a request of that day reserved money.

        Args:
            key_id: only this key.
            day: only this UTC day, written ``"2026-11-27"``.
            page_size: rows per request, 1 to 100.
        """
        async for item in self._pages("/v1/usage", {"key_id": key_id, "day": day}, page_size):
            yield UsageRecord.from_json(item)

    async def refresh_key(self, key_id: str, *, expires_in: Duration) -> Lease:
        """Extend a key to now + ``expires_in``, never past its ``max_expires_at``.

        Args:
            key_id: the key's id, ``vk_...``.
            expires_in: a duration, like ``ttl``.

        Raises:
            VaultKeyRevoked: the key is revoked (status 409, code ``key_revoked``).
            VaultKeyExpired: the key has expired (status 409, code ``key_expired``).
            IssuanceError: no such key (404).
        """
        body = {"expires_in": duration_seconds(expires_in, "expires_in")}
        return Lease.from_json(
            await self._api("POST", f"/v1/keys/{_quote(key_id)}/refresh", body=body)
        )

    async def create_budget(
        self, *, cap: Cap, ttl: Duration, label: str | None = None
    ) -> BudgetInfo:
        """Create a run budget: a daily cap shared by every key issued with ``budget=``.

        [`Budget`][keybrake.Budget] does this on enter and revokes it on exit.

        Args:
            cap: the shared daily cap in USD (int, decimal string or ``Decimal``).
            ttl: how long the budget lives; its keys live no longer.
            label: a name for the budget.

        Raises:
            ConfigurationError: a bad cap or ttl, or no master token.
            IssuanceError: the API refused.
        """
        body = {
            "daily_usd_cap": cap_string(cap),
            "expires_in": duration_seconds(ttl, "ttl"),
            "label": label or "",
        }
        return BudgetInfo.from_json(await self._api("POST", "/v1/budgets", body=body))

    async def get_budget(self, budget_id: str) -> BudgetInfo:
        """Describe a budget, with its spend today.

        Raises:
            IssuanceError: no such budget in this tenant (404 ``budget_not_found``).
        """
        return BudgetInfo.from_json(await self._api("GET", f"/v1/budgets/{_quote(budget_id)}"))

    async def revoke_budget(self, budget_id: str) -> Revocation:
        """Revoke a budget and every key drawing from it. Idempotent.

        Raises:
            IssuanceError: no such budget (404).
        """
        return Revocation.from_json(await self._api("DELETE", f"/v1/budgets/{_quote(budget_id)}"))

    async def revoke_key(self, key_id: str) -> Revocation:
        """Revoke a key; takes effect on the proxy's very next request. Idempotent.

        Revoking twice answers the first ``revoked_at``.

        Args:
            key_id: the key's id, ``vk_...``.

        Raises:
            IssuanceError: no such key (404).
        """
        return Revocation.from_json(await self._api("DELETE", f"/v1/keys/{_quote(key_id)}"))

    async def revoke_keys(
        self,
        *,
        label_prefix: str | None = None,
        metadata: Mapping[str, str] | None = None,
        vendor: str | None = None,
        all: bool = False,
    ) -> list[str]:
        """Revoke, in one step, every active key of this tenant that matches all the filters
        given; each is refused by the proxy from its next request on. Stops a runaway run:

        ```python
        revoked = await kb.revoke_keys(metadata={"run": "run-42"})
        ```

        A key issued while the call runs is never half revoked: either the call revokes it,
        or it stays active and a second call revokes it (see
        [Stopping a runaway run](operations.md#stopping-a-runaway-run)).

        Retried on transient failures, like every call; revoking again revokes nothing
        twice. If an answer was lost and the call retried, the ids are those the retry
        revoked: the keys of the lost attempt are revoked all the same.

        Args:
            label_prefix: keys whose label starts with this (case counts; ``%`` and ``_``
                are plain characters).
            metadata: keys whose metadata holds every one of these pairs, exactly.
            vendor: keys of this vendor (``"stripe"``, ``"twilio"``).
            all: every active key of the tenant, when no other filter narrows it.

        Returns:
            The ids of the keys this call revoked, sorted; empty when none matched.

        Raises:
            ConfigurationError: no filter given (nothing is sent), or no master token.
            IssuanceError: the API refused (an empty or malformed filter: ``400
                bad_request``, with ``param``; an unknown master token: 401).
            KeybrakeUnavailable: the API could not be reached within the retry policy.
        """
        body: dict[str, Any] = {}
        if label_prefix is not None:
            body["label_prefix"] = label_prefix
        if metadata is not None:
            body["metadata"] = dict(metadata)
        if vendor is not None:
            body["vendor"] = vendor
        if all:
            body["all"] = True
        if not body:
            raise ConfigurationError(
                "name at least one filter: label_prefix, metadata, vendor, or all=True"
            )
        data = await self._api("POST", "/v1/keys/revoke", body=body)
        ids = data.get("ids")
        if not isinstance(ids, list):
            raise KeybrakeUnavailable("keybrake answered a bulk revocation without its ids")
        return [str(key_id) for key_id in ids]


def _quote(key_id: str) -> str:
    return quote(key_id, safe="")
