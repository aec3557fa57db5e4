"""LangChain: structured tools that issue a vault key per call, which the model never sees.

::

    from keybrake import VaultKey
    from keybrake.integrations.langchain import vault_key_tool

    @vault_key_tool("stripe", ["/v1/payment_intents"], cap=50, ttl="2m")
    async def create_payment(amount: int, currency: str, vk: VaultKey) -> str:
        "Create a payment intent of `amount` cents."
        return (await vk.stripe.payment_intents.create(amount=amount, currency=currency)).id

    model_with_tools = chat_model.bind_tools([create_payment])

``@tool`` over :func:`keybrake.vault_key` builds the same schema; :func:`vault_key_tool` also
turns keybrake's errors into tool messages the model can read. Needs
``pip install 'keybrake[langchain]'``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from keybrake._decorator import vault_key
from keybrake._errors import KeybrakeError
from keybrake._key_spec import Cap, Duration, KeySpec
from keybrake._vault_key import KeyOptions
from keybrake.integrations._extras import missing_extra
from keybrake.integrations._tools import model_message, report_key_errors

try:
    from langchain_core.tools import StructuredTool, ToolException
except ImportError as exc:
    raise missing_extra("langchain", "LangChain (langchain-core)", "langchain") from exc

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["vault_key_tool"]


def _tool_exception(exc: KeybrakeError) -> ToolException:
    return ToolException(model_message(exc))


def vault_key_tool(
    vendor: KeySpec | str,
    endpoints: list[str] | tuple[str, ...] | None = None,
    *,
    cap: Cap | None = None,
    ttl: Duration | None = None,
    label: str | None = None,
    name: str | None = None,
    description: str | None = None,
    parse_docstring: bool = False,
    **key_options: Unpack[KeyOptions],
) -> Callable[[Callable[..., Awaitable[Any]]], StructuredTool]:
    """Make an ``async def`` a ``StructuredTool`` that gets a fresh vault key for each call.

    The parameter annotated ``VaultKey`` is left out of ``args_schema`` and
    ``tool_call_schema`` and filled in for each call; the key is revoked when the call
    returns. When keybrake refuses or is down, the tool answers with an error
    ``ToolMessage`` (``status="error"``) that says why, instead of raising. Use it with
    ``await tool.ainvoke(...)``: the key is issued on the running event loop.

    Args:
        vendor: a :class:`keybrake.KeySpec`, or the vendor, followed by ``endpoints``,
            ``cap`` and ``ttl``, as for :func:`keybrake.vault_key`.
        label: the key's label; defaults to the function's qualified name.
        name: the tool's name; defaults to the function's name.
        description: the tool's description; defaults to the docstring.
        parse_docstring: take argument descriptions from a Google-style docstring.
        **key_options: with a vendor, any other :class:`keybrake.VaultKey` option
            (``client``, ``metadata``, ...); with a spec, only ``client``, ``on_lost``,
            ``cancel_on_loss``, ``token``, ``api_url`` and ``proxy_url``.

    Raises:
        ConfigurationError: a bad key option (checked here, not on the first call).
        TypeError: an unknown option, or a spec together with the fields it holds; the
            function is not ``async def`` or has no single ``VaultKey`` parameter.
    """
    with_key = vault_key(vendor, endpoints, cap=cap, ttl=ttl, label=label, **key_options)

    def decorate(fn: Callable[..., Awaitable[Any]]) -> StructuredTool:
        return StructuredTool.from_function(
            coroutine=report_key_errors(with_key(fn), _tool_exception),
            name=name,
            description=description,
            parse_docstring=parse_docstring,
            handle_tool_error=True,
        )

    return decorate
