"""The types of ``keybrake.sync.VaultKey.twilio``: :class:`~.client.TwilioClient`, blocking.

Only types: at run time ``vk.twilio`` is the async client behind keybrake.sync's generic
blocking wrapper. A test checks that these protocols list the async client's methods with
the same parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from keybrake.vendors.twilio.client import Call, Message

__all__ = ["BlockingCalls", "BlockingMessages", "BlockingTwilioClient"]


class BlockingMessages(Protocol):
    """``vk.twilio.messages``, blocking."""

    def create(self, *, to: str, from_: str | None = None, **params: Any) -> Message: ...
    def retrieve(self, sid: str) -> Message: ...
    def list(self, *, page_size: int = 50, **filters: Any) -> list[Message]: ...


class BlockingCalls(Protocol):
    """``vk.twilio.calls``, blocking."""

    def create(self, *, to: str, from_: str, **params: Any) -> Call: ...
    def retrieve(self, sid: str) -> Call: ...


class BlockingTwilioClient(Protocol):
    """``keybrake.sync.VaultKey.twilio``: Twilio through the proxy, blocking."""

    @property
    def account_sid(self) -> str: ...
    @property
    def messages(self) -> BlockingMessages: ...
    @property
    def calls(self) -> BlockingCalls: ...
    def account_path(self, resource: str) -> str: ...
    def request(
        self, method: str, path: str, params: Mapping[str, Any] | None = None
    ) -> dict[str, Any]: ...
