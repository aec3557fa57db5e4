"""The sync facade's event loop: one per process, on a daemon thread, started on first use.

Blocking code hands coroutines of the async core to this loop and waits for their outcome;
the loop also runs what outlives a call (keepalive). It is never the caller's loop, so a
caller may block in any thread, ``asyncio.to_thread`` workers included, except this loop's
own thread (that would deadlock, and raises instead).

A fork copies the loop but not its thread: the child forgets the parent's loop and
sessions (:func:`_forget_after_fork`) and starts its own on first use.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from typing import Any, TypeVar

from keybrake._errors import ConfigurationError

__all__ = ["CANCEL_TIMEOUT", "Portal", "get_portal"]

T = TypeVar("T")

#: Seconds a call interrupted by ``KeyboardInterrupt`` gets to clean up (issuance running to
#: its end, then revocation, each bounded by ``REVOKE_TIMEOUT``) before the interrupt goes on.
CANCEL_TIMEOUT = 25.0
#: Seconds the loop gets at interpreter exit to revoke open keys and close sessions.
SHUTDOWN_TIMEOUT = 15.0


class Portal:
    """An event loop running forever on a daemon thread, and the way into it."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        #: What must be closed on the loop at interpreter exit, each mapped to the coroutine
        #: function that closes it: open keys first (they revoke through clients), then
        #: clients (their HTTP sessions).
        self.open_keys: dict[Any, Callable[[], Awaitable[object]]] = {}
        self.clients: weakref.WeakKeyDictionary[Any, Callable[[], Awaitable[object]]] = (
            weakref.WeakKeyDictionary()
        )
        self._closed = False
        started = threading.Event()
        self.thread = threading.Thread(
            target=self._run, args=(started,), name="keybrake-sync-loop", daemon=True
        )
        self.thread.start()
        started.wait()

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(started.set)
        self.loop.run_forever()

    def __repr__(self) -> str:
        return f"<Portal pid={self.pid} thread={self.thread.name}>"

    def in_loop_thread(self) -> bool:
        return threading.get_ident() == self.thread.ident

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and block until it is done; return or raise its outcome.

        An exception raised in the waiting thread meanwhile (``KeyboardInterrupt``) cancels
        the coroutine, waits up to ``CANCEL_TIMEOUT`` for its cleanup (a cancelled
        issuance revokes the key it made), then goes on.

        Raises:
            ConfigurationError: called from the loop's own thread (an ``on_lost`` callback,
                say), which would wait for itself forever; or after the loop shut down.
        """
        if self.in_loop_thread():
            coro.close()
            raise ConfigurationError(
                "keybrake.sync can't be used from its own event loop thread (in an on_lost"
                " callback, say): that would wait for itself forever; use the async API there"
            )
        done = threading.Event()
        tasks: list[asyncio.Task[T]] = []

        def start() -> None:
            task = self.loop.create_task(coro)
            task.add_done_callback(lambda _: done.set())
            tasks.append(task)

        try:
            self.loop.call_soon_threadsafe(start)
        except RuntimeError:  # the loop is closed: the interpreter is exiting
            coro.close()
            raise ConfigurationError("keybrake.sync's event loop has shut down") from None
        try:
            done.wait()
        except BaseException:  # KeyboardInterrupt, or another exception sent to this thread
            self.loop.call_soon_threadsafe(lambda: tasks[0].cancel())
            done.wait(CANCEL_TIMEOUT)
            raise
        return tasks[0].result()

    def iterate(self, iterator: AsyncIterator[T]) -> Iterator[T]:
        """Iterate ``iterator`` on the loop, one step per ``next()``; closed when we are."""
        try:
            while True:
                step = self.call(_next(iterator))
                if step is _END:
                    return
                yield step
        finally:
            aclose: Callable[[], Coroutine[Any, Any, object]] | None = getattr(
                iterator, "aclose", None
            )
            if aclose is not None:
                if self.in_loop_thread():  # collected on the loop's thread: close it there
                    self.loop.create_task(aclose())
                elif not self._closed:
                    self.call(aclose())

    def shutdown(self) -> None:
        """Close what is still open (revoking open keys), then stop and close the loop."""
        if self._closed or self.pid != os.getpid():
            return
        self._closed = True
        keys, clients = list(self.open_keys.values()), list(self.clients.values())
        self.open_keys.clear()
        self.clients.clear()

        async def close_all() -> None:
            await asyncio.gather(*(close() for close in keys), return_exceptions=True)
            await asyncio.gather(*(close() for close in clients), return_exceptions=True)

        future = asyncio.run_coroutine_threadsafe(close_all(), self.loop)
        try:
            future.result(SHUTDOWN_TIMEOUT)
        except Exception:
            future.cancel()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(SHUTDOWN_TIMEOUT)
        if not self.thread.is_alive():
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()


_END: Any = object()


async def _next(iterator: AsyncIterator[T]) -> T:
    try:
        return await iterator.__anext__()
    except StopAsyncIteration:
        return _END  # type: ignore[no-any-return]


_lock = threading.Lock()
_portal: Portal | None = None
#: What a fork left behind in this process: the parent's loop and sessions, which belong to
#: a thread that doesn't exist here. Kept, never used: closing them would talk on the
#: parent's connections, and collecting them would warn about what they hold.
_inherited: list[object] = []


def get_portal() -> Portal:
    """This process's portal, started on first use (and again in a forked child)."""
    global _portal
    portal = _portal
    if portal is not None:
        return portal
    with _lock:
        if _portal is None:
            _portal = Portal()
        return _portal


def forked_away(obj: object) -> None:
    """Keep ``obj`` (made in a parent process before a fork) alive, unused, for good."""
    _inherited.append(obj)


def _forget_after_fork() -> None:
    global _portal, _lock
    _lock = threading.Lock()  # another thread may have held it at the fork
    if _portal is not None:
        forked_away(_portal)
        _portal = None


def _shutdown() -> None:
    if _portal is not None:
        _portal.shutdown()


os.register_at_fork(after_in_child=_forget_after_fork)
atexit.register(_shutdown)
