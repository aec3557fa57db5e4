"""Examples in the docs run, against a real server."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from tests.conftest import RunningServer

DOCS = Path(__file__).parent.parent / "docs"


async def test_quickstart_example_runs(server: RunningServer) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYBRAKE_")}
    env.update(KEYBRAKE_URL=server.url, KEYBRAKE_TOKEN=server.admin_token)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-W",
        "error",
        str(DOCS / "examples" / "quickstart.py"),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    text = out.decode()
    assert "created pi_" in text
    assert "refused: $50.00 would pass the $50.00 cap" in text
    assert "refused: GET /v1/customers is not allowed" in text
    assert text.strip().endswith("revoked")


async def test_brakes_example_runs(server: RunningServer) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYBRAKE_")}
    env.update(KEYBRAKE_URL=server.url, KEYBRAKE_TOKEN=server.admin_token)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-W",
        "error",
        str(DOCS / "examples" / "brakes.py"),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert lines[0] == "rate limited after 5 calls; retry in 60s"
    assert lines[1] == "uses exhausted: the key made its 3 requests"
    assert lines[2] == "refused: $20.00 would pass budget $30.00 (spent $20.00)"
    assert lines[3].startswith("bud_")
    assert lines[3].endswith(" revoked")
