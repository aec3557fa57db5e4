"""What agent-tool integrations share: telling a model why a keybrake call failed."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from keybrake._errors import (
    EndpointNotAllowed,
    InvalidVaultKey,
    KeybrakeError,
    KeybrakeUnavailable,
    ProxyRefused,
    SpendCapExceeded,
    VendorError,
)

__all__ = ["model_message", "report_key_errors"]

log = logging.getLogger("keybrake")

R = TypeVar("R")


def model_message(exc: KeybrakeError) -> str:
    """What a model may be told about a failed tool call: enough to adapt, nothing secret.

    Policy refusals say what was refused; infrastructure failures say only that the tool is
    unavailable (no URLs, no request ids): the full error goes to the log.
    """
    if isinstance(exc, SpendCapExceeded):
        cap = exc.daily_usd_cap
        limit = f" of ${cap}" if cap is not None else ""
        return (
            f"Refused: this call would pass the tool's daily spending cap{limit}."
            " Do not retry it today."
        )
    if isinstance(exc, EndpointNotAllowed):
        return f"Refused: the tool may not call {exc.attempted or 'that endpoint'}."
    if isinstance(exc, InvalidVaultKey):
        return "The tool's access key is no longer valid; the call was not made."
    if isinstance(exc, ProxyRefused):
        return f"Refused by keybrake ({exc.code or 'policy'}); the call was not made."
    if isinstance(exc, VendorError):
        vendor = exc.vendor.capitalize() or "The vendor"
        return f"{vendor} refused the call: {exc.message}"
    if isinstance(exc, KeybrakeUnavailable):
        return "The tool is unavailable right now; try again later."
    return "The tool could not get an access key to run with; the call was not made."


def report_key_errors(
    fn: Callable[..., Awaitable[R]], convert: Callable[[KeybrakeError], Exception]
) -> Callable[..., Coroutine[Any, Any, R]]:
    """``fn`` raising ``convert(error)`` instead of each :class:`KeybrakeError`.

    The wrapper keeps ``fn``'s name, docstring, ``__signature__`` and ``__annotations__``
    (so a tool's schema is unchanged) and, like :func:`keybrake.vault_key`, has no
    ``__wrapped__``.
    """

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> R:
        try:
            return await fn(*args, **kwargs)
        except KeybrakeError as exc:
            log.warning("tool %s failed: %s", fn.__qualname__, exc)
            raise convert(exc) from exc

    del wrapper.__wrapped__
    return wrapper
