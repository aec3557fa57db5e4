"""``keybrake migrate`` and ``serve`` on PostgreSQL, run as a user runs them."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

import asyncpg
import pytest

from tests.pg import PG_URL
from tests.test_cli import free_port


def keybrake(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYBRAKE_")}
    return subprocess.run(
        [sys.executable, "-m", "keybrake.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


@pytest.mark.postgres
async def test_migrate_then_serve() -> None:
    schema = "kb_cli_" + secrets.token_hex(4)
    url = f"{PG_URL}?schema={schema}"
    try:
        refused = keybrake("serve", "--port", str(free_port()), "--database", url)
        assert refused.returncode == 2
        assert "keybrake migrate" in refused.stderr
        first = keybrake("migrate", "--database", url)
        assert first.returncode == 0, first.stderr
        assert "applied schema versions 1" in first.stdout
        again = keybrake("migrate", "--database", url)
        assert "up to date" in again.stdout
        made = keybrake("tokens", "create", "--tenant", "ops", "--database", url)
        assert made.returncode == 0, made.stderr
        assert "KEYBRAKE_TOKEN=kb_admin_" in made.stdout
    finally:
        conn = await asyncpg.connect(PG_URL)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()


def test_migrate_refuses_an_unreachable_database() -> None:
    result = keybrake("migrate", "--database", "postgresql://postgres@127.0.0.1:9/none")
    assert result.returncode == 2
    assert "PostgreSQL" in result.stderr
    assert "Traceback" not in result.stderr
