"""The ``keybrake`` command, run as a user runs it."""

from __future__ import annotations

import gc
import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

from keybrake.cli import GC_THRESHOLD, _tune_gc


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_serve_prints_a_new_master_token_once(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYBRAKE_")}
    command = [
        sys.executable,
        "-m",
        "keybrake.cli",
        "serve",
        "--port",
        str(port),
        "--database",
        f"sqlite:///{tmp_path / 'kb.db'}",
    ]

    def start() -> tuple[subprocess.Popen[str], str]:
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
        )
        assert proc.stdout is not None
        lines = []
        while True:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("keybrake serving on"):
                break
        return proc, "".join(lines)

    proc, output = start()
    try:
        assert f"http://127.0.0.1:{port}" in output
        token = next(
            part.split("=", 1)[1].strip()
            for part in output.split()
            if part.startswith("KEYBRAKE_TOKEN=")
        )
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/keys",
            data=b'{"vendor": "stripe", "allowed_endpoints": ["/v1/x"],'
            b' "daily_usd_cap": 1, "expires_in": 60}',
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 201
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        assert proc.stdout is not None
        proc.stdout.close()
    assert token.encode() not in (tmp_path / "kb.db").read_bytes()

    # A second start finds a token already there and prints none.
    proc, output = start()
    try:
        assert "KEYBRAKE_TOKEN=" not in output
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        assert proc.stdout is not None
        proc.stdout.close()


def test_demo_tells_the_whole_story() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "keybrake.cli", "demo"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "REFUSED 429 cap_exhausted" in out
    assert "REFUSED 403 endpoint_not_allowed" in out
    assert "is now revoked" in out
    assert "REFUSED 401 key_revoked" in out
    assert "vault_key_" not in out  # the token is never printed


def test_serve_refuses_a_malformed_pricing_file(tmp_path: Path) -> None:
    pricing = tmp_path / "pricing.json"
    pricing.write_text('{"stripe": {"currencies": {"eur": "1.1"}}}')
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "keybrake.cli",
            "serve",
            "--port",
            str(free_port()),
            "--database",
            f"sqlite:///{tmp_path / 'kb.db'}",
            "--pricing",
            str(pricing),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "stripe.currencies.eur" in result.stderr


def test_serve_refuses_a_database_of_another_schema_version(tmp_path: Path) -> None:
    import sqlite3

    with sqlite3.connect(tmp_path / "old.db") as conn:
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO schema_version VALUES (1)")
    conn.close()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "keybrake.cli",
            "serve",
            "--port",
            str(free_port()),
            "--database",
            f"sqlite:///{tmp_path / 'old.db'}",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "schema version 1" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_freezes_what_it_started_with_and_collects_less_often() -> None:
    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        _tune_gc()
        assert gc.get_threshold() == (GC_THRESHOLD, 10, 10)
        assert gc.get_freeze_count() > 0
        gc.set_threshold(0, 10, 10)  # switched off by the operator: it stays off
        _tune_gc()
        assert gc.get_threshold() == (0, 10, 10)
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
