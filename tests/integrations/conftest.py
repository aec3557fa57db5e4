"""What the integration tests share: a keybrake that is down, waiting for revocation."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from keybrake import Keybrake, KeyInfo, RetryPolicy
from tests.conftest import RunningServer

EXAMPLES = Path(__file__).parent.parent.parent / "docs" / "integrations" / "examples"

#: Nothing listens there: issuance fails at once.
DEAD_URL = "http://127.0.0.1:9"


@pytest.fixture
async def dead_kb() -> AsyncIterator[Keybrake]:
    """A client of a keybrake that is down, with retries off so that failing is quick."""
    async with Keybrake(
        "kb_admin_x", api_url=DEAD_URL, proxy_url=DEAD_URL, retry=RetryPolicy.off()
    ) as client:
        yield client


async def wait_until_revoked(kb: Keybrake, key_id: str, timeout: float = 5.0) -> KeyInfo:
    """The key, once the server says it is revoked (revocation may trail a response)."""

    async def poll() -> KeyInfo:
        while True:
            info = await kb.get_key(key_id)
            if info.status == "revoked":
                return info
            await asyncio.sleep(0.02)

    return await asyncio.wait_for(poll(), timeout)


async def keys_issued(kb: Keybrake) -> list[KeyInfo]:
    return [info async for info in kb.list_keys()]


async def run_example(
    server: RunningServer, name: str, *, warnings: tuple[str, ...] = (), **env: str
) -> str:
    """Run ``docs/integrations/examples/<name>`` against ``server``; its standard output."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("KEYBRAKE_")}
    full_env.update(KEYBRAKE_URL=server.url, KEYBRAKE_TOKEN=server.admin_token, **env)
    options = ["-W", "error"]
    for spec in warnings:
        options += ["-W", spec]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *options,
        str(EXAMPLES / name),
        env=full_env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return out.decode()
