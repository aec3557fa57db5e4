"""A blocking face for any async vendor client, so the sync facade needs no code per vendor.

``Blocking(client, portal)`` forwards attribute access to ``client``: a coroutine method
becomes a blocking one (run on the portal's loop), a method returning an async iterator
returns a plain iterator, and a sub-object with async methods (``payment_intents``,
``messages``) is wrapped the same way. Everything else (models, strings) is returned as is.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any, Generic, TypeVar

from keybrake._portal import Portal

__all__ = ["Blocking"]

C = TypeVar("C", covariant=True)


class Blocking(Generic[C]):
    """``client``'s methods and resources, blocking.

    ``Blocking[StripeClient]`` says which client is inside; a type checker sees its
    attributes as ``Any`` (``keybrake.sync.VaultKey.stripe`` and ``.twilio`` are typed).
    """

    __slots__ = ("_portal", "_target")

    def __init__(self, target: C, portal: Portal) -> None:
        self._target = target
        self._portal = portal

    def __repr__(self) -> str:
        return f"<blocking {self._target!r}>"

    def __dir__(self) -> list[str]:
        return [name for name in dir(self._target) if not name.startswith("_")]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return _blocking(getattr(self._target, name), self._portal)


def _blocking(value: Any, portal: Portal) -> Any:
    if _has_async_api(type(value)):
        return Blocking(value, portal)
    if callable(value) and not isinstance(value, type):
        return _blocking_callable(value, portal)
    return value


def _blocking_callable(fn: Callable[..., Any], portal: Portal) -> Callable[..., Any]:
    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        result = fn(*args, **kwargs)  # makes a coroutine or async iterator; runs nothing yet
        if inspect.iscoroutine(result):
            return portal.call(result)
        if isinstance(result, AsyncIterator):
            return portal.iterate(result)
        return _blocking(result, portal)

    return call


_ASYNC_API: dict[type, bool] = {}


def _has_async_api(cls: type) -> bool:
    known = _ASYNC_API.get(cls)
    if known is None:
        known = _ASYNC_API[cls] = _find_async_api(cls)
    return known


def _find_async_api(cls: type) -> bool:
    """Whether ``cls`` has a public ``async def`` method: a client or one of its resources."""
    if cls.__module__ == "builtins":
        return False
    for name in dir(cls):
        if name.startswith("_"):
            continue
        attr = inspect.getattr_static(cls, name, None)
        if isinstance(attr, (staticmethod, classmethod)):
            continue
        if inspect.iscoroutinefunction(attr) or inspect.isasyncgenfunction(attr):
            return True
    return False
