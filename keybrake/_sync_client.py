"""``keybrake.sync.Keybrake``: the admin client, blocking, over the async one."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING

from keybrake import _client
from keybrake._config import ClientConfig
from keybrake._key_spec import Cap, Duration, KeySpec
from keybrake._models import (
    AuditRecord,
    BudgetInfo,
    IssuedKey,
    KeyInfo,
    Lease,
    Revocation,
    UsageRecord,
)
from keybrake._portal import forked_away, get_portal
from keybrake._retry import RetryPolicy

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["Keybrake"]


class Keybrake:
    """The admin client of the issuance API, blocking: [`keybrake.Keybrake`][keybrake.Keybrake]
    run on keybrake.sync's own event loop.

    ```python
    with keybrake.sync.Keybrake() as kb:
        kb.get_key("vk_...").status
    ```

    Its HTTP session lives on that loop and is closed by [`close()`][keybrake.sync.Keybrake.close]
    (or ``with``), and at the latest when the interpreter exits. After a fork the child
    gets a session of its own on first use.

    Args:
        token: the master token (else ``KEYBRAKE_TOKEN``).
        api_url: the issuance API (else ``KEYBRAKE_API_URL``, ``KEYBRAKE_URL``, the default).
        proxy_url: the proxy (else ``KEYBRAKE_PROXY_URL``, ``KEYBRAKE_URL``, the default).
        timeout: seconds for one HTTP call.
        retry: how calls are retried (also by the vault keys that share this client);
            ``RetryPolicy.off()`` disables retries.
    """

    def __init__(
        self,
        token: str | None = None,
        *,
        api_url: str | None = None,
        proxy_url: str | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self._core = _client.Keybrake(
            token, api_url=api_url, proxy_url=proxy_url, timeout=timeout, retry=retry
        )
        self._pid = os.getpid()
        self._closed = False

    def __repr__(self) -> str:
        config = self._core.config
        return f"keybrake.sync.Keybrake(api_url={config.api_url!r}, proxy_url={config.proxy_url!r})"

    @property
    def config(self) -> ClientConfig:
        """The resolved settings (URLs, token, timeout)."""
        return self._core.config

    @property
    def retry(self) -> RetryPolicy:
        """How calls are retried."""
        return self._core.retry

    def core(self) -> _client.Keybrake:
        """The async client underneath, for this process, registered to be closed at exit.

        A fork leaves the parent's session behind: the child gets a new async client with
        the same settings (:mod:`keybrake._portal`).
        """
        if self._pid != os.getpid():
            forked_away(self._core)
            config = self._core.config
            self._core = _client.Keybrake(
                config.token,
                api_url=config.api_url,
                proxy_url=config.proxy_url,
                timeout=config.timeout,
                retry=self._core.retry,
            )
            self._pid = os.getpid()
        if not self._closed:
            get_portal().clients[self] = self._core.close
        return self._core

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP session. Closing twice is a no-op."""
        get_portal().call(self._aclose())

    async def _aclose(self) -> None:
        """Close the HTTP session, from keybrake.sync's own loop (where it lives)."""
        core = self.core()
        self._closed = True
        get_portal().clients.pop(self, None)
        await core.close()

    def issue_key(
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
        idempotency_key: str | None = None,
    ) -> IssuedKey:
        """Issue a vault key, as [`keybrake.Keybrake.issue_key()`][keybrake.Keybrake.issue_key].

        Nothing revokes it: that is what [`VaultKey`][keybrake.sync.VaultKey] is for.
        """
        return get_portal().call(
            self.core().issue_key(
                vendor,
                endpoints,
                cap=cap,
                ttl=ttl,
                label=label,
                max_lifetime=max_lifetime,
                metadata=metadata,
                stripe_account=stripe_account,
                idempotency_key=idempotency_key,
            )
        )

    def get_key(self, key_id: str) -> KeyInfo:
        """Describe a key: status and spend today.

        Raises:
            IssuanceError: no such key in this tenant (404 ``key_not_found``).
        """
        return get_portal().call(self.core().get_key(key_id))

    def list_keys(self, *, status: str | None = None, page_size: int = 100) -> Iterator[KeyInfo]:
        """Every key of this tenant (newest first), fetched page by page as you iterate."""
        return get_portal().iterate(self.core().list_keys(status=status, page_size=page_size))

    def audit(
        self,
        *,
        key_id: str | None = None,
        decision: str | None = None,
        page_size: int = 100,
    ) -> Iterator[AuditRecord]:
        """The proxy's decisions for this tenant's keys, newest first."""
        return get_portal().iterate(
            self.core().audit(key_id=key_id, decision=decision, page_size=page_size)
        )

    def usage(
        self, *, key_id: str | None = None, day: str | None = None, page_size: int = 100
    ) -> Iterator[UsageRecord]:
        """Spend per key and UTC day, newest day first."""
        return get_portal().iterate(self.core().usage(key_id=key_id, day=day, page_size=page_size))

    def refresh_key(self, key_id: str, *, expires_in: Duration) -> Lease:
        """Extend a key to now + ``expires_in``, never past its ``max_expires_at``.

        Raises:
            VaultKeyRevoked: the key is revoked.
            VaultKeyExpired: the key has expired.
        """
        return get_portal().call(self.core().refresh_key(key_id, expires_in=expires_in))

    def revoke_key(self, key_id: str) -> Revocation:
        """Revoke a key; takes effect on the proxy's very next request. Idempotent."""
        return get_portal().call(self.core().revoke_key(key_id))

    def revoke_keys(
        self,
        *,
        label_prefix: str | None = None,
        metadata: Mapping[str, str] | None = None,
        vendor: str | None = None,
        all: bool = False,
    ) -> list[str]:
        """Revoke every active key of the tenant matching all the filters given; their ids.
        See [`keybrake.Keybrake.revoke_keys`][keybrake.Keybrake.revoke_keys]."""
        return get_portal().call(
            self.core().revoke_keys(
                label_prefix=label_prefix, metadata=metadata, vendor=vendor, all=all
            )
        )

    def create_budget(self, *, cap: Cap, ttl: Duration, label: str | None = None) -> BudgetInfo:
        """Make a run budget; prefer [`keybrake.sync.Budget`][keybrake.sync.Budget], which
        revokes it on exit."""
        return get_portal().call(self.core().create_budget(cap=cap, ttl=ttl, label=label))

    def get_budget(self, budget_id: str) -> BudgetInfo:
        """A budget and what it spent today."""
        return get_portal().call(self.core().get_budget(budget_id))

    def revoke_budget(self, budget_id: str) -> Revocation:
        """Revoke a budget and every key drawing from it. Idempotent."""
        return get_portal().call(self.core().revoke_budget(budget_id))
