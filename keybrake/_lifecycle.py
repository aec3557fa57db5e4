"""What [`VaultKey`][keybrake.VaultKey] and [`Budget`][keybrake.Budget] share: something issued
when an ``async with`` block is entered, kept alive while it runs and revoked however it ends.

Revocation runs however the block ends (normally, by exception, cancellation, timeout or
``KeyboardInterrupt``). It is shielded from further cancellation, bounded by
:data:`REVOKE_TIMEOUT`, never hides the block's own exception, and re-raises a
cancellation. A cancellation while issuing lets the issuance finish (bounded), then revokes
what it made.
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from collections.abc import Awaitable
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

from keybrake._client import Keybrake
from keybrake._errors import ConfigurationError, IssuanceError, KeybrakeError

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["KEEPALIVE_FRACTION", "REVOKE_TIMEOUT", "Held", "run_to_the_end"]

log = logging.getLogger("keybrake")

#: Seconds that revocation on exit may take, retries included, before we rely on the TTL.
REVOKE_TIMEOUT = 10.0
#: Keepalive refreshes at about this fraction of the TTL (like Vault's lifetime watcher).
KEEPALIVE_FRACTION = 2 / 3

T = TypeVar("T")


class _Issued(Protocol):
    @property
    def id(self) -> str: ...


IssuedT = TypeVar("IssuedT", bound=_Issued)


async def run_to_the_end(work: Awaitable[T]) -> T:
    """Run cleanup to its end even if we are cancelled (again) meanwhile.

    The work runs in its own task, awaited through ``asyncio.shield``; a cancellation
    that arrives meanwhile is held until the work is done (it is bounded by timeouts of its
    own), then re-raised.
    """
    task = asyncio.ensure_future(work)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                raise
            cancelled = True
            continue
        except BaseException:
            if cancelled:
                raise asyncio.CancelledError from None
            raise
        break
    if cancelled:
        raise asyncio.CancelledError
    return result


class Held(Generic[IssuedT]):
    """The lifecycle of something issued for one ``async with`` block (a key, a budget).

    A subclass says how to issue (:meth:`_issue`), revoke (:meth:`_send_revoke`) and, if it
    wants, keep alive (:meth:`_keep_alive`); this class does the rest, the same way for all.
    """

    #: What it is, in messages: ``"VaultKey"``, ``"Budget"``; and in log lines.
    _kind: ClassVar[str]
    _noun: ClassVar[str]

    def _init_lifecycle(
        self,
        client: Keybrake | None,
        *,
        token: str | None,
        api_url: str | None,
        proxy_url: str | None,
    ) -> None:
        if client is None:
            client = Keybrake(token, api_url=api_url, proxy_url=proxy_url)
            self._owns_client = True
        else:
            self._owns_client = False
        self._client = client
        self._state = "unopened"
        self._issued: IssuedT | None = None
        self._keepalive_task: asyncio.Task[None] | None = None
        self._owner_task: asyncio.Task[Any] | None = None

    # -- what a subclass says ---------------------------------------------------------------

    async def _issue(self) -> IssuedT:
        raise NotImplementedError

    async def _send_revoke(self, issued: IssuedT) -> object:
        raise NotImplementedError

    def _opened(self, issued: IssuedT) -> None:
        """Called once issued, before keepalive starts."""

    def _wants_keepalive(self) -> bool:
        return False

    async def _keep_alive(self) -> None:
        """Runs in a task while the block runs; cancelled on exit."""

    async def _closing(self) -> None:
        """Called after revoking, before the client is closed (never raises)."""

    # -- the lifecycle -------------------------------------------------------------------------

    def _require_issued(self) -> IssuedT:
        if self._issued is None:
            raise ConfigurationError(f"the {self._noun} is not issued yet; use 'async with'")
        return self._issued

    @property
    def client(self) -> Keybrake:
        """The admin client that issues and revokes it."""
        return self._client

    async def __aenter__(self) -> Self:
        if self._state != "unopened":
            raise ConfigurationError(
                f"a {self._kind} can be entered only once (it is {self._state})"
            )
        self._state = "opening"
        issue = asyncio.ensure_future(self._issue())
        try:
            issued = self._issued = await asyncio.shield(issue)
        except BaseException as exc:
            self._state = "closed"
            try:
                if isinstance(exc, asyncio.CancelledError):
                    # The server may make it anyway: let the issuance finish (bounded),
                    # then revoke what it made, so nothing outlives a cancelled block.
                    await run_to_the_end(self._abandon(issue))
            finally:
                if self._owns_client:
                    await self._client.close()
            raise
        self._opened(issued)
        self._state = "open"
        self._owner_task = asyncio.current_task()
        if self._wants_keepalive():
            self._keepalive_task = asyncio.create_task(
                self._keep_alive(), name=f"keybrake-keepalive-{issued.id}"
            )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop keepalive and revoke. Closing twice is a no-op.

        If revocation can't be done within ``REVOKE_TIMEOUT``, a warning is logged
        (without any token) and the TTL ends it.
        """
        if self._state in ("closed", "unopened"):
            self._state = "closed"
            return
        self._state = "closed"
        await run_to_the_end(self._finish())

    async def _abandon(self, issue: asyncio.Future[IssuedT]) -> None:
        if issue.cancelled():
            return
        try:
            self._issued = await asyncio.wait_for(issue, REVOKE_TIMEOUT)
        except (KeybrakeError, asyncio.TimeoutError):
            return  # nothing was made, or we can't know: its TTL ends it
        await self._revoke()

    async def _finish(self) -> None:
        task, self._keepalive_task = self._keepalive_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        try:
            await self._revoke()
        finally:
            await self._closing()
            if self._owns_client:
                await self._client.close()

    async def _revoke(self) -> None:
        issued = self._issued
        assert issued is not None
        what = self._noun
        try:
            await asyncio.wait_for(self._send_revoke(issued), REVOKE_TIMEOUT)
        except IssuanceError as exc:
            if exc.status == 404:  # gone already: nothing left to revoke
                return
            log.warning("could not revoke %s %s: %s; its TTL will end it", what, issued.id, exc)
        except (KeybrakeError, asyncio.TimeoutError) as exc:
            log.warning(
                "could not revoke %s %s (%s); its TTL will end it",
                what,
                issued.id,
                exc or type(exc).__name__,
            )

    def __del__(self, _warn: Any = warnings.warn) -> None:
        if getattr(self, "_state", None) == "open":
            _warn(
                f"{self!r} was garbage collected without exit; it stays usable until its TTL",
                ResourceWarning,
                source=self,
            )
