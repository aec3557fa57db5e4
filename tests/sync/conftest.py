"""Sync tests run on the main thread, as blocking code does (a SIGINT lands there); the
keybrake server and other async peers run on a loop in a thread of the tests' own."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import TypeVar

import pytest

from keybrake import RetryPolicy
from keybrake.server import running_server
from keybrake.sync import Keybrake
from tests.conftest import RunningServer, make_config

T = TypeVar("T")

#: Retries that give up quickly.
QUICK_RETRY = RetryPolicy(attempts=3, initial_wait=0.01)


class Background:
    """An event loop on a thread that keeps async context managers open until closed."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._stack = contextlib.AsyncExitStack()
        self._thread = threading.Thread(target=self.loop.run_forever, name="test-background")
        self._thread.start()

    def enter(self, manager: AbstractAsyncContextManager[T]) -> T:
        """Enter ``manager`` on the loop; it is exited by :meth:`close`."""
        future = asyncio.run_coroutine_threadsafe(self._enter(manager), self.loop)
        return future.result(60)

    async def _enter(self, manager: AbstractAsyncContextManager[T]) -> T:
        return await self._stack.enter_async_context(manager)

    def close(self) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self._stack.aclose(), self.loop).result(60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(60)
            self.loop.close()


@pytest.fixture
def background() -> Iterator[Background]:
    bg = Background()
    try:
        yield bg
    finally:
        bg.close()


@pytest.fixture
def sync_server(tmp_path: Path, localstripe_url: str, background: Background) -> RunningServer:
    db_path = tmp_path / "keybrake.db"
    config = make_config(db_path, localstripe_url)
    url = background.enter(running_server(config))
    assert config.admin_token is not None
    return RunningServer(url, config.admin_token, db_path, config)


@pytest.fixture
def sync_kb(sync_server: RunningServer) -> Iterator[Keybrake]:
    with Keybrake(
        sync_server.admin_token,
        api_url=sync_server.url,
        proxy_url=sync_server.url,
        retry=QUICK_RETRY,
    ) as kb:
        yield kb
