"""PostgreSQL for the tests: a schema of its own per test on the machine's server, and a
private throw-away cluster for tests that stop and start the database.

A test that uses them carries the ``postgres`` marker, else they fail it (tests/services.py).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import attrs

from keybrake.server.stores.postgres.store import PostgresStore
from tests.services import require

__all__ = ["PG_URL", "PrivatePostgres", "migrated_schema", "private_postgres"]

#: The machine's PostgreSQL (trust auth on loopback).
PG_URL = os.environ.get("KEYBRAKE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


@contextlib.asynccontextmanager
async def migrated_schema(base_url: str = PG_URL) -> AsyncIterator[str]:
    """A fresh schema with keybrake's tables; yields the store URL; drops it after."""
    require("postgres")
    schema = "kb_test_" + secrets.token_hex(6)
    url = f"{base_url}?schema={schema}"
    store = PostgresStore(url)
    await store.open(check_schema=False)
    try:
        await store.migrate()
    finally:
        await store.close()
    try:
        yield url
    finally:
        conn = await asyncpg.connect(base_url)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()


def _bin(name: str) -> str:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    if not found:
        raise RuntimeError(f"PostgreSQL's {name} is not installed")
    return str(found[-1])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _as_postgres(*command: str) -> list[str]:
    """Run as the ``postgres`` user when we are root (PostgreSQL refuses to run as root)."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return list(command)


@attrs.define
class PrivatePostgres:
    """A PostgreSQL cluster of the test's own, on 127.0.0.1, that can be stopped and started."""

    data: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        subprocess.run(
            _as_postgres(
                _bin("pg_ctl"),
                "-D",
                str(self.data),
                "-w",
                "-l",
                str(self.data / "log"),
                "-o",
                f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off",
                "start",
            ),
            check=True,
            capture_output=True,
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the cluster: ``fast`` (clean) or ``immediate`` (as a crash: no checkpoint)."""
        subprocess.run(
            _as_postgres(_bin("pg_ctl"), "-D", str(self.data), "-w", "-m", mode, "stop"),
            check=False,
            capture_output=True,
        )


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    require("postgres")
    root = Path(tempfile.mkdtemp(prefix="kb-pg-"))
    data = root / "data"
    try:
        if os.geteuid() == 0:
            shutil.chown(root, "postgres", "postgres")
        subprocess.run(
            _as_postgres(
                _bin("initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync"
            ),
            check=True,
            capture_output=True,
        )
        cluster = PrivatePostgres(data, _free_port())
        cluster.start()
        try:
            yield cluster
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
