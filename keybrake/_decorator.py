"""``@vault_key(...)``: a fresh vault key for every call of a tool function, async or not."""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast, overload

import attrs

from keybrake._client import Keybrake
from keybrake._errors import ConfigurationError
from keybrake._key_spec import Cap, Duration, KeySpec
from keybrake._sync_client import Keybrake as SyncKeybrake
from keybrake._vault_key import BaseRunOptions, SpecOptions, VaultKey, resolve_spec
from keybrake.sync import RunOptions as SyncRunOptions
from keybrake.sync import VaultKey as SyncVaultKey

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["VaultKeyOptions", "vault_key"]

R = TypeVar("R")


class VaultKeyOptions(BaseRunOptions, SpecOptions, total=False):
    """The keyword options of ``@vault_key(...)``: a ``VaultKey``'s, with a ``client`` of the
    kind the function needs (``keybrake.Keybrake`` for ``async def``,
    ``keybrake.sync.Keybrake`` for ``def``)."""

    client: Keybrake | SyncKeybrake | None


class KeyDecorator(Protocol):
    """What ``@vault_key(...)`` returns: it wraps ``async def`` and ``def`` functions alike."""

    @overload
    def __call__(
        self, fn: Callable[..., Coroutine[Any, Any, R]], /
    ) -> Callable[..., Coroutine[Any, Any, R]]: ...

    @overload
    def __call__(self, fn: Callable[..., R], /) -> Callable[..., R]: ...


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


#: How an annotation left as text (the function's hints can't all be resolved) names a key.
_KEY_NAMES: dict[str, type[VaultKey] | type[SyncVaultKey] | str] = {
    "VaultKey": "VaultKey",  # either: the function's kind decides
    "keybrake.VaultKey": VaultKey,
    "sync.VaultKey": SyncVaultKey,
    "keybrake.sync.VaultKey": SyncVaultKey,
}


def _key_class(hint: Any) -> type[VaultKey] | type[SyncVaultKey] | str | None:
    """Which ``VaultKey`` ``hint`` names (``"VaultKey"`` if unresolved), or None."""
    if typing.get_origin(hint) is typing.Annotated:
        hint = typing.get_args(hint)[0]
    if hint is VaultKey or hint is SyncVaultKey:
        return hint
    return _KEY_NAMES.get(hint.strip()) if isinstance(hint, str) else None


def _key_parameter(fn: Callable[..., Any], hints: dict[str, Any], *, blocking: bool) -> str:
    found = {
        name: _key_class(hint)
        for name, hint in hints.items()
        if name != "return" and _key_class(hint) is not None
    }
    if len(found) != 1:
        raise TypeError(
            f"@vault_key needs exactly one parameter of {fn.__qualname__} annotated"
            f" 'VaultKey', found {len(found)}"
        )
    [(name, cls)] = found.items()
    if blocking and cls is VaultKey:
        raise TypeError(
            f"{fn.__qualname__} is a plain 'def': its key is a keybrake.sync.VaultKey;"
            " annotate the parameter so (or make the function 'async def')"
        )
    if not blocking and cls is SyncVaultKey:
        raise TypeError(
            f"{fn.__qualname__} is 'async def': its key is a keybrake.VaultKey, not a"
            " keybrake.sync.VaultKey"
        )
    return name


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
    **options: Unpack[VaultKeyOptions],
) -> KeyDecorator:
    """Issue a vault key for each call of the decorated function and revoke it after.

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

    A plain ``def`` gets a [`keybrake.sync.VaultKey`][keybrake.sync.VaultKey] (annotate
    the parameter with that class) and its ``client``, if given, is a
    [`keybrake.sync.Keybrake`][keybrake.sync.Keybrake]:

    ```python
    from keybrake import sync

    @vault_key("stripe", ["/v1/refunds"], cap=100, ttl="2m")
    def refund(charge_id: str, amount: int, vk: sync.VaultKey) -> dict: ...
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
        TypeError: no single ``VaultKey`` parameter, or one of the other facade's kind (or
            a ``client`` of the other kind); an unknown option, or a spec together with the
            fields it holds.
    """
    key_spec, run = resolve_spec(vendor, endpoints, cap=cap, ttl=ttl, label=label, options=options)

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        blocking = not inspect.iscoroutinefunction(fn)
        _check_client(fn, run.get("client"), blocking=blocking)
        if blocking and run.get("cancel_on_loss"):
            raise ConfigurationError(
                f"cancel_on_loss needs 'async def'; {fn.__qualname__} is a plain 'def'"
            )
        hints = _type_hints(fn)
        hidden = _key_parameter(fn, hints, blocking=blocking)
        full = _signature(fn)
        visible = full.replace(parameters=[p for p in full.parameters.values() if p.name != hidden])
        fn_spec = key_spec if key_spec.label else attrs.evolve(key_spec, label=fn.__qualname__)
        # With a *args parameter, everything before it must be passed by position.
        positional_kinds: set[Any] = {inspect.Parameter.POSITIONAL_ONLY}
        if any(p.kind is p.VAR_POSITIONAL for p in full.parameters.values()):
            positional_kinds.add(inspect.Parameter.POSITIONAL_OR_KEYWORD)

        def arguments(
            args: tuple[Any, ...], kwargs: dict[str, Any], vk: object
        ) -> tuple[list[Any], dict[str, Any]]:
            bound = visible.bind(*args, **kwargs)
            bound.apply_defaults()
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
            return call_args, call_kwargs

        wrapper: Callable[..., Any]
        if blocking:

            @functools.wraps(fn)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                visible.bind(*args, **kwargs)  # a bad call fails before a key is issued
                with SyncVaultKey.from_spec(fn_spec, **cast(SyncRunOptions, run)) as vk:
                    call_args, call_kwargs = arguments(args, kwargs, vk)
                    return fn(*call_args, **call_kwargs)

        else:

            @functools.wraps(fn)
            async def wrapper(*args: Any, **kwargs: Any) -> Any:
                visible.bind(*args, **kwargs)  # a bad call fails before a key is issued
                async with VaultKey.from_spec(fn_spec, **run) as vk:
                    call_args, call_kwargs = arguments(args, kwargs, vk)
                    return await fn(*call_args, **call_kwargs)

        wrapper.__signature__ = visible  # type: ignore[attr-defined]
        wrapper.__annotations__ = {k: v for k, v in hints.items() if k != hidden}
        del wrapper.__wrapped__  # type: ignore[attr-defined]  # frameworks must not find the hidden parameter
        return wrapper

    return cast(KeyDecorator, decorate)


def _check_client(fn: Callable[..., Any], client: object, *, blocking: bool) -> None:
    expected: type = SyncKeybrake if blocking else Keybrake
    if client is not None and not isinstance(client, expected):
        kind, name = ("a plain 'def'", "sync.Keybrake") if blocking else ("'async def'", "Keybrake")
        raise TypeError(f"{fn.__qualname__} is {kind}: its client must be a keybrake.{name}")
