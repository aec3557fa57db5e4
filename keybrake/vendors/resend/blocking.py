"""The types of ``keybrake.sync.VaultKey.resend``: :class:`~.client.ResendClient`, blocking.

Only types: at run time ``vk.resend`` is the async client behind keybrake.sync's generic
blocking wrapper. A test checks that these protocols list the async client's methods with
the same parameters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from keybrake.vendors.resend.client import Email, SentEmail

__all__ = ["BlockingBatch", "BlockingEmails", "BlockingResendClient"]


class BlockingEmails(Protocol):
    """``vk.resend.emails``, blocking."""

    def send(
        self,
        *,
        from_: str,
        to: str | Sequence[str],
        subject: str | None = None,
        html: str | None = None,
        text: str | None = None,
        cc: str | Sequence[str] | None = None,
        bcc: str | Sequence[str] | None = None,
        reply_to: str | Sequence[str] | None = None,
        headers: Mapping[str, str] | None = None,
        attachments: Sequence[Mapping[str, Any]] | None = None,
        tags: Sequence[Mapping[str, str]] | None = None,
        scheduled_at: str | None = None,
        template: Mapping[str, Any] | None = None,
        topic_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> SentEmail: ...
    def get(self, email_id: str) -> Email: ...
    def update(self, email_id: str, *, scheduled_at: str) -> str: ...
    def cancel(self, email_id: str) -> str: ...


class BlockingBatch(Protocol):
    """``vk.resend.batch``, blocking."""

    def send(
        self, emails: Sequence[Mapping[str, Any]], *, idempotency_key: str | None = None
    ) -> list[str]: ...


class BlockingResendClient(Protocol):
    """``keybrake.sync.VaultKey.resend``: Resend through the proxy, blocking."""

    @property
    def emails(self) -> BlockingEmails: ...
    @property
    def batch(self) -> BlockingBatch: ...
    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: Sequence[tuple[str, str]] | None = None,
        idempotency_key: str | None = None,
    ) -> Any: ...
