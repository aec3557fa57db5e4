"""Sync tests run on the main thread, as blocking code does; the keybrake server runs on a
thread of its own (the async fixtures' loop is not running while a plain ``def`` test runs)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from keybrake import RetryPolicy
from keybrake.server import ServerConfig, running_server
from keybrake.sync import Keybrake
from tests.conftest import RunningServer, make_config

#: Retries that give up quickly, for tests that fault the server.
QUICK_RETRY = RetryPolicy(attempts=3, initial_wait=0.01)


class ThreadedServer:
    """The keybrake server on a loop in a thread of its own, until :meth:`stop`."""

    def __init__(self, config: ServerConfig, *, port: int = 0) -> None:
        self.config = config
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        started: Future[str] = Future()
        self._thread = threading.Thread(
            target=self._loop.run_until_complete,
            args=(self._serve(started, port),),
            name="keybrake-test-server",
        )
        self._thread.start()
        self.url = started.result(30)

    async def _serve(self, started: Future[str], port: int) -> None:
        self._stop = asyncio.Event()
        try:
            async with running_server(self.config, port=port) as url:
                started.set_result(url)
                await self._stop.wait()
        except BaseException as exc:
            if not started.done():
                started.set_exception(exc)
            raise

    def run(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` on the server's loop (to fault it, say)."""
        self._loop.call_soon_threadsafe(fn)

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        self._loop.close()


@pytest.fixture
def sync_server(tmp_path: Path, localstripe_url: str) -> Iterator[RunningServer]:
    db_path = tmp_path / "keybrake.db"
    config = make_config(db_path, localstripe_url)
    server = ThreadedServer(config)
    try:
        assert config.admin_token is not None
        yield RunningServer(server.url, config.admin_token, db_path, config)
    finally:
        server.stop()


@pytest.fixture
def sync_kb(sync_server: RunningServer) -> Iterator[Keybrake]:
    with Keybrake(
        sync_server.admin_token,
        api_url=sync_server.url,
        proxy_url=sync_server.url,
        retry=QUICK_RETRY,
    ) as kb:
        yield kb
