"""OpenAI Agents SDK: tools that issue a vault key per call, which the model never sees.

::

    from agents import Agent
    from keybrake import VaultKey
    from keybrake.integrations.openai_agents import vault_key_tool

    @vault_key_tool("stripe", ["/v1/payment_intents"], cap=50, ttl="2m")
    async def create_payment(amount: int, currency: str, vk: VaultKey) -> str:
        return (await vk.stripe.payment_intents.create(amount=amount, currency=currency)).id

    agent = Agent(name="billing", tools=[create_payment])

``@function_tool`` over :func:`keybrake.vault_key` works as well; pass
``failure_error_function=tool_error_message`` to tell the model why a call was refused.
Needs ``pip install 'keybrake[openai-agents]'``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from keybrake._decorator import vault_key
from keybrake._errors import KeybrakeError
from keybrake._key_spec import Cap, Duration, KeySpec
from keybrake._vault_key import KeyOptions
from keybrake.integrations._extras import missing_extra
from keybrake.integrations._tools import model_message

try:
    from agents import FunctionTool, RunContextWrapper, default_tool_error_function, function_tool
except ImportError as exc:
    raise missing_extra("openai_agents", "the OpenAI Agents SDK", "openai-agents") from exc

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["tool_error_message", "vault_key_tool"]


def tool_error_message(ctx: RunContextWrapper[Any], error: Exception) -> str:
    """A ``failure_error_function`` that tells the model why a keybrake call failed.

    A :class:`keybrake.KeybrakeError` becomes a short message the model can act on (a cap
    or allowlist refusal, or "unavailable, try later"), without URLs or secrets; any other
    error gets the SDK's default message.

    Args:
        ctx: the run context.
        error: what the tool raised.
    """
    if isinstance(error, KeybrakeError):
        return model_message(error)
    return default_tool_error_function(ctx, error)


def vault_key_tool(
    vendor: KeySpec | str,
    endpoints: list[str] | tuple[str, ...] | None = None,
    *,
    cap: Cap | None = None,
    ttl: Duration | None = None,
    label: str | None = None,
    name: str | None = None,
    description: str | None = None,
    **key_options: Unpack[KeyOptions],
) -> Callable[[Callable[..., Awaitable[Any]]], FunctionTool]:
    """Make an ``async def`` a ``FunctionTool`` that gets a fresh vault key for each call.

    The parameter annotated ``VaultKey`` is left out of the tool's JSON schema and filled
    in for each call; the key is revoked when the call returns. A first parameter typed
    ``RunContextWrapper[...]`` receives the run context, as with ``@function_tool``. When
    keybrake refuses or is down, the model gets :func:`tool_error_message` and the run
    goes on.

    Args:
        vendor: a :class:`keybrake.KeySpec`, or the vendor, followed by ``endpoints``,
            ``cap`` and ``ttl``, as for :func:`keybrake.vault_key`.
        label: the key's label; defaults to the function's qualified name.
        name: the tool's name; defaults to the function's name.
        description: the tool's description; defaults to the docstring.
        **key_options: with a vendor, any other :class:`keybrake.VaultKey` option
            (``client``, ``metadata``, ...); with a spec, only ``client``, ``on_lost``,
            ``cancel_on_loss``, ``token``, ``api_url`` and ``proxy_url``.

    Raises:
        ConfigurationError: a bad key option (checked here, not on the first call).
        TypeError: an unknown option, or a spec together with the fields it holds; the
            function is not ``async def`` or has no single ``VaultKey`` parameter.
    """
    with_key = vault_key(vendor, endpoints, cap=cap, ttl=ttl, label=label, **key_options)

    def decorate(fn: Callable[..., Awaitable[Any]]) -> FunctionTool:
        return function_tool(
            with_key(fn),
            name_override=name,
            description_override=description,
            failure_error_function=tool_error_message,
        )

    return decorate
