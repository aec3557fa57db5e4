"""PydanticAI: tool functions that issue a vault key per call, which the model never sees.

::

    from pydantic_ai import Agent
    from keybrake import VaultKey
    from keybrake.integrations.pydantic_ai import vault_key

    agent = Agent(model)

    @agent.tool_plain
    @vault_key("stripe", ["/v1/payment_intents"], cap=50, ttl="2m")
    async def create_payment(amount: int, currency: str, vk: VaultKey) -> str:
        "Create a payment intent of `amount` cents."
        return (await vk.stripe.payment_intents.create(amount=amount, currency=currency)).id

It also works under ``@agent.tool`` (a first ``RunContext`` parameter stays first), in
``Agent(tools=[...])`` and in ``Tool(...)``. Needs ``pip install 'keybrake[pydantic-ai]'``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

import keybrake._decorator
from keybrake._errors import KeybrakeError
from keybrake._key_spec import Cap, Duration, KeySpec
from keybrake._vault_key import KeyOptions
from keybrake.integrations._extras import missing_extra
from keybrake.integrations._tools import model_message, report_key_errors

try:
    from pydantic_ai import ToolFailed
except ImportError as exc:
    raise missing_extra("pydantic_ai", "PydanticAI", "pydantic-ai") from exc

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["vault_key"]

R = TypeVar("R")


def _tool_failed(exc: KeybrakeError) -> ToolFailed:
    return ToolFailed(model_message(exc))


def vault_key(
    vendor: KeySpec | str,
    endpoints: list[str] | tuple[str, ...] | None = None,
    *,
    cap: Cap | None = None,
    ttl: Duration | None = None,
    label: str | None = None,
    **key_options: Unpack[KeyOptions],
) -> Callable[[Callable[..., Awaitable[R]]], Callable[..., Coroutine[Any, Any, R]]]:
    """:func:`keybrake.vault_key` for PydanticAI tools: keybrake's errors become ``ToolFailed``.

    The parameter annotated ``VaultKey`` is hidden from the signature and type hints
    PydanticAI builds the tool schema from, and filled in for each call; the key is
    revoked when the call returns. When keybrake refuses or is down, the tool raises
    ``pydantic_ai.ToolFailed`` with a message that says why: the model sees it and the
    run goes on, without spending the tool's retries.

    Args:
        vendor: a :class:`keybrake.KeySpec`, or the vendor, followed by ``endpoints``,
            ``cap`` and ``ttl``, as for :func:`keybrake.vault_key`.
        label: the key's label; defaults to the function's qualified name.
        **key_options: with a vendor, any other :class:`keybrake.VaultKey` option
            (``client``, ``metadata``, ...); with a spec, only ``client``, ``on_lost``,
            ``cancel_on_loss``, ``token``, ``api_url`` and ``proxy_url``.

    Raises:
        ConfigurationError: a bad key option (checked here, not on the first call).
        TypeError: an unknown option, or a spec together with the fields it holds; the
            function is not ``async def`` or has no single ``VaultKey`` parameter.
    """
    with_key = keybrake._decorator.vault_key(
        vendor, endpoints, cap=cap, ttl=ttl, label=label, **key_options
    )

    def decorate(fn: Callable[..., Awaitable[R]]) -> Callable[..., Coroutine[Any, Any, R]]:
        return report_key_errors(with_key(fn), _tool_failed)

    return decorate
