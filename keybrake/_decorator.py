"""``@vault_key(...)``: a fresh vault key for every call of an async tool function."""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Awaitable, Callable
from datetime import timedelta
from decimal import Decimal
from typing import Any, TypeVar

from keybrake._vault_key import VaultKey

__all__ = ["vault_key"]

R = TypeVar("R")


def _key_parameter(fn: Callable[..., Any]) -> str:
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolved forward references: fall back to the raw annotations
        hints = dict(getattr(fn, "__annotations__", {}))
    names = [
        name
        for name, hint in hints.items()
        if name != "return" and (hint is VaultKey or hint == "VaultKey")
    ]
    if len(names) != 1:
        raise TypeError(
            f"@vault_key needs exactly one parameter of {fn.__qualname__} annotated"
            f" 'VaultKey', found {len(names)}"
        )
    return names[0]


def vault_key(
    vendor: str,
    endpoints: list[str] | tuple[str, ...],
    *,
    cap: int | str | Decimal,
    ttl: str | int | timedelta,
    label: str | None = None,
    **options: Any,
) -> Callable[[Callable[..., Awaitable[R]]], Callable[..., Awaitable[R]]]:
    """Issue a vault key for each call of the decorated ``async def`` and revoke it after.

    The parameter annotated ``VaultKey`` is filled in by the decorator and removed from the
    wrapper's ``__signature__`` and ``__annotations__``, so agent frameworks that build a
    tool schema from them never show the key to a model::

        @vault_key("stripe", ["/v1/refunds"], cap=100, ttl="2m")
        async def refund(charge_id: str, amount: int, vk: VaultKey) -> dict: ...

    Args:
        vendor, endpoints, cap, ttl: as for :class:`VaultKey`.
        label: the key's label; defaults to the function's qualified name.
        **options: any other :class:`VaultKey` keyword option (``client``, ``metadata``, ...).

    Raises:
        TypeError: the function is not ``async def``, or has no single ``VaultKey`` parameter.
    """
    # Validate the key options once, at decoration time, not on the first call.
    VaultKey(vendor, endpoints, cap, ttl, **{**options, "keepalive": False})

    def decorate(fn: Callable[..., Awaitable[R]]) -> Callable[..., Awaitable[R]]:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(
                f"@vault_key needs an 'async def' function; {fn.__qualname__} is not one"
            )
        hidden = _key_parameter(fn)
        full = inspect.signature(fn)
        visible = full.replace(parameters=[p for p in full.parameters.values() if p.name != hidden])
        key_label = label or fn.__qualname__
        # With a *args parameter, everything before it must be passed by position.
        positional_kinds: set[Any] = {inspect.Parameter.POSITIONAL_ONLY}
        if any(p.kind is p.VAR_POSITIONAL for p in full.parameters.values()):
            positional_kinds.add(inspect.Parameter.POSITIONAL_OR_KEYWORD)

        @functools.wraps(fn)
        async def wrapper(*args: Any, **kwargs: Any) -> R:
            bound = visible.bind(*args, **kwargs)
            bound.apply_defaults()
            async with VaultKey(vendor, endpoints, cap, ttl, label=key_label, **options) as vk:
                call_args: list[Any] = []
                call_kwargs: dict[str, Any] = {}
                for param in full.parameters.values():
                    if param.name == hidden:
                        if param.kind in positional_kinds:
                            call_args.append(vk)
                        else:
                            call_kwargs[hidden] = vk
                    elif param.name not in bound.arguments:
                        continue
                    elif param.kind in positional_kinds:
                        call_args.append(bound.arguments[param.name])
                    elif param.kind is param.VAR_POSITIONAL:
                        call_args.extend(bound.arguments[param.name])
                    elif param.kind is param.VAR_KEYWORD:
                        call_kwargs.update(bound.arguments[param.name])
                    else:
                        call_kwargs[param.name] = bound.arguments[param.name]
                return await fn(*call_args, **call_kwargs)

        wrapper.__signature__ = visible  # type: ignore[attr-defined]
        wrapper.__annotations__ = {
            k: v for k, v in getattr(fn, "__annotations__", {}).items() if k != hidden
        }
        del wrapper.__wrapped__  # frameworks must not find the hidden parameter through it
        return wrapper

    return decorate
