"""``@vault_key(...)``: a fresh vault key for every call of an async tool function."""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

from keybrake._key_spec import Cap, Duration, KeySpec
from keybrake._vault_key import KeyOptions, VaultKey, resolve_spec

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["vault_key"]

R = TypeVar("R")


def _type_hints(fn: Callable[..., Any]) -> dict[str, Any]:
    """The function's annotations, resolved in its own module where that is possible.

    The wrapper has no ``__wrapped__`` (frameworks must not find the hidden parameter through
    it), so ``typing.get_type_hints(wrapper)`` would look names up in *this* module: string
    annotations (``from __future__ import annotations``) are therefore resolved here, once.
    """
    try:
        return typing.get_type_hints(fn, include_extras=True)
    except Exception:  # unresolved forward references: fall back to the raw annotations
        return dict(getattr(fn, "__annotations__", {}))


def _is_vault_key(hint: Any) -> bool:
    if typing.get_origin(hint) is typing.Annotated:
        hint = typing.get_args(hint)[0]
    return hint is VaultKey or hint == "VaultKey"


def _key_parameter(fn: Callable[..., Any], hints: dict[str, Any]) -> str:
    names = [name for name, hint in hints.items() if name != "return" and _is_vault_key(hint)]
    if len(names) != 1:
        raise TypeError(
            f"@vault_key needs exactly one parameter of {fn.__qualname__} annotated"
            f" 'VaultKey', found {len(names)}"
        )
    return names[0]


def _signature(fn: Callable[..., Any]) -> inspect.Signature:
    """``fn``'s signature, its string annotations evaluated in ``fn``'s module if they can be."""
    try:
        return inspect.signature(fn, eval_str=True)
    except Exception:  # unresolved forward references: keep them as strings
        return inspect.signature(fn)


def vault_key(
    vendor: KeySpec | str,
    endpoints: list[str] | tuple[str, ...] | None = None,
    *,
    cap: Cap | None = None,
    ttl: Duration | None = None,
    label: str | None = None,
    **options: Unpack[KeyOptions],
) -> Callable[[Callable[..., Awaitable[R]]], Callable[..., Coroutine[Any, Any, R]]]:
    """Issue a vault key for each call of the decorated ``async def`` and revoke it after.

    The parameter annotated ``VaultKey`` is filled in by the decorator and removed from the
    wrapper's ``__signature__`` and ``__annotations__``, so agent frameworks that build a
    tool schema from them never show the key to a model:

    ```python
    @vault_key("stripe", ["/v1/refunds"], cap=100, ttl="2m")
    async def refund(charge_id: str, amount: int, vk: VaultKey) -> dict: ...

    REFUNDS = KeySpec("stripe", ["/v1/refunds"], cap=100, ttl="2m")

    @vault_key(REFUNDS, client=kb)
    async def refund_again(charge_id: str, vk: VaultKey) -> dict: ...
    ```

    Every other parameter stays as it is, in its place: a framework's context parameter
    (``RunContextWrapper``, ``RunContext``, an arq ``ctx``) stays first. The wrapper's
    annotations are resolved in the function's module when it is decorated (string
    annotations included), so frameworks that read type hints see real types.

    Args:
        vendor: a [`KeySpec`][keybrake.KeySpec], or the vendor followed by ``endpoints``,
            ``cap`` and ``ttl`` (as for [`VaultKey`][keybrake.VaultKey]).
        label: the key's label; defaults to the function's qualified name.
        **options: with a vendor, any other [`VaultKey`][keybrake.VaultKey] keyword option
            (``metadata``, ``max_lifetime``, ``client``, ...); with a spec, only ``client``,
            ``on_lost``, ``cancel_on_loss``, ``token``, ``api_url`` and ``proxy_url``.

    Raises:
        ConfigurationError: a bad key option, here rather than on the first call.
        TypeError: the function is not ``async def``, or has no single ``VaultKey`` parameter;
            an unknown option, or a spec together with the fields it holds.
    """
    key_spec, run = resolve_spec(vendor, endpoints, cap=cap, ttl=ttl, label=label, options=options)

    def decorate(fn: Callable[..., Awaitable[R]]) -> Callable[..., Coroutine[Any, Any, R]]:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(
                f"@vault_key needs an 'async def' function; {fn.__qualname__} is not one"
            )
        hints = _type_hints(fn)
        hidden = _key_parameter(fn, hints)
        full = _signature(fn)
        visible = full.replace(parameters=[p for p in full.parameters.values() if p.name != hidden])
        fn_spec = key_spec if key_spec.label else attrs.evolve(key_spec, label=fn.__qualname__)
        # With a *args parameter, everything before it must be passed by position.
        positional_kinds: set[Any] = {inspect.Parameter.POSITIONAL_ONLY}
        if any(p.kind is p.VAR_POSITIONAL for p in full.parameters.values()):
            positional_kinds.add(inspect.Parameter.POSITIONAL_OR_KEYWORD)

        @functools.wraps(fn)
        async def wrapper(*args: Any, **kwargs: Any) -> R:
            bound = visible.bind(*args, **kwargs)
            bound.apply_defaults()
            async with VaultKey.from_spec(fn_spec, **run) as vk:
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
        wrapper.__annotations__ = {k: v for k, v in hints.items() if k != hidden}
        del wrapper.__wrapped__  # frameworks must not find the hidden parameter through it
        return wrapper

    return decorate
