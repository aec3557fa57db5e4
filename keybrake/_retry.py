"""One small retry policy, built on tenacity, with an explicit notion of what is retryable."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiohttp
import attrs
import tenacity

from keybrake._errors import (
    FINAL_CODES,
    KeybrakeError,
    KeybrakeTimeout,
    KeybrakeUnavailable,
    RateLimited,
    VendorError,
)

__all__ = ["DEFAULT_RETRY", "RetryPolicy", "is_retryable"]

T = TypeVar("T")


def is_retryable(exc: BaseException) -> bool:
    """Connection errors, timeouts, 5xx and 429 are transient, except keybrake's final
    answers (``cap_exhausted``, ``budget_exhausted``, ``rate_limited``, ``uses_exhausted``).

    An error whose answer said whether to retry (``exc.retryable``) is taken at its word.
    """
    if isinstance(exc, KeybrakeError) and exc.code in FINAL_CODES:
        return False
    if isinstance(
        exc, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError)
    ):
        return True
    if isinstance(exc, KeybrakeError) and exc.retryable is not None:
        return exc.retryable
    if isinstance(exc, KeybrakeUnavailable):
        return True
    if isinstance(exc, KeybrakeError) and exc.status is not None:
        return exc.status == 429 or exc.status >= 500
    return False


def retry_after(exc: BaseException) -> float | None:
    return exc.retry_after if isinstance(exc, KeybrakeError) else None


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """How calls are retried: the issuance API's, and reads and idempotent writes through
    the proxy (``vk.stripe``, reads of ``vk.twilio``).

    Exponential backoff with full jitter between ``initial_wait`` and ``max_wait`` seconds,
    at most ``attempts`` tries within ``deadline`` seconds; a server's ``Retry-After`` is
    honoured up to ``max_retry_after`` seconds. ``RetryPolicy.off()`` tries once.

    A key's rate limit (``rate_limited``) is a final answer. With ``wait_rate_limited=True``
    a call refused for it waits out the ``Retry-After`` once (if it is at most
    ``max_retry_after`` seconds) and tries once more; a second refusal raises
    [`RateLimited`][keybrake.RateLimited].
    """

    attempts: int = 6
    deadline: float = 30.0
    initial_wait: float = 0.1
    max_wait: float = 5.0
    max_retry_after: float = 10.0
    wait_rate_limited: bool = False

    @classmethod
    def off(cls) -> RetryPolicy:
        return cls(attempts=1)

    def _wait(self, state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        hinted = retry_after(exc) if exc is not None else None
        if hinted is not None:
            return min(max(hinted, 0.0), self.max_retry_after)
        ceiling = min(self.max_wait, self.initial_wait * 2 ** (state.attempt_number - 1))
        return random.uniform(0, ceiling)

    async def call(
        self,
        fn: Callable[[], Awaitable[T]],
        *,
        retryable: Callable[[BaseException], bool] = is_retryable,
    ) -> T:
        """Run ``fn`` until it succeeds, fails for good, or the policy is exhausted.

        Raises:
            KeybrakeUnavailable: retries ran out on a transient failure of keybrake (the last
                one is the ``__cause__``); a vendor's own error, and any error that is not
                transient, passes through unchanged.
        """
        try:
            return await self._call(fn, retryable)
        except RateLimited as exc:
            wait = exc.retry_after
            if not self.wait_rate_limited or wait is None or wait > self.max_retry_after:
                raise
            await asyncio.sleep(max(wait, 0.0))
        return await self._call(fn, retryable)

    async def _call(
        self, fn: Callable[[], Awaitable[T]], retryable: Callable[[BaseException], bool]
    ) -> T:
        retrying = tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(self.attempts)
            | tenacity.stop_after_delay(self.deadline),
            wait=self._wait,
            retry=tenacity.retry_if_exception(retryable),
            reraise=True,
        )
        try:
            return await retrying(fn)
        except (KeybrakeUnavailable, VendorError):
            raise
        except KeybrakeError as exc:
            if is_retryable(exc):  # e.g. still rate limited after every attempt
                raise KeybrakeUnavailable(
                    f"keybrake still refuses after retries: {exc}",
                    status=exc.status,
                    code=exc.code,
                    request_id=exc.request_id,
                    body=exc.body,
                ) from exc
            raise
        except asyncio.TimeoutError as exc:
            raise KeybrakeTimeout("keybrake did not answer in time") from exc
        except aiohttp.ClientError as exc:
            raise KeybrakeUnavailable(f"can't reach keybrake: {exc}") from exc


DEFAULT_RETRY = RetryPolicy()
