"""``keybrake tokens`` and ``keybrake audit``, run as an operator runs them, against a real
``keybrake serve`` on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from keybrake import EndpointNotAllowed, Keybrake, SpendCapExceeded, StripeError, VaultKey
from tests.conftest import SEED_ENDPOINTS
from tests.test_cli import free_port


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYBRAKE_")}
    env.update(extra)
    return env


def keybrake(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "keybrake.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=clean_env() if env is None else env,
    )


def create_token(database: str, tenant: str) -> tuple[str, str, str]:
    """Run ``keybrake tokens create``; give ``(token id, token, everything it printed)``."""
    result = keybrake("tokens", "--database", database, "create", "--tenant", tenant)
    assert result.returncode == 0, result.stderr
    token_id = re.search(r"\b(tok_[0-9a-f]+)\b", result.stdout)
    token = re.search(r"KEYBRAKE_TOKEN=(kb_admin_\S+)", result.stdout)
    assert token_id is not None
    assert token is not None
    return token_id.group(1), token.group(1), result.stdout


@contextmanager
def serving(database: str, *options: str, **env: str) -> Iterator[str]:
    """``keybrake serve`` in a subprocess on a free loopback port; yield its URL."""
    with serving_process(database, *options, **env) as (url, _):
        yield url


@contextmanager
def serving_process(
    database: str, *options: str, **env: str
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """As :func:`serving`, yielding the process too."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "keybrake.cli",
            "serve",
            "--port",
            str(port),
            "--database",
            database,
            "--log-level",
            "warning",
            *options,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=clean_env(**env),
    )
    assert proc.stdout is not None
    try:
        printed = []
        for line in proc.stdout:
            printed.append(line)
            if line.startswith("keybrake serving on"):
                break
        assert any(line.startswith("keybrake serving on") for line in printed), printed
        # Tokens already exist in the database, so the server makes and prints none.
        assert "KEYBRAKE_TOKEN=" not in "".join(printed)
        yield f"http://127.0.0.1:{port}", proc
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        proc.stdout.close()


def api_status(url: str, token: str, path: str = "/v1/keys") -> int:
    request = urllib.request.Request(url + path, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code


def test_tokens_are_shown_once_listed_by_id_and_revoked(tmp_path: Path) -> None:
    db = tmp_path / "kb.db"
    database = f"sqlite:///{db}"
    token_id, token, printed = create_token(database, "team-a")
    assert printed.count(token) == 1
    assert f"KEYBRAKE_TOKEN={token}" in printed
    assert f"Created {token_id} for tenant 'team-a'" in printed

    listed = keybrake("tokens", "--database", database, "list")
    assert listed.returncode == 0, listed.stderr
    [row] = [line for line in listed.stdout.splitlines() if line.startswith(token_id)]
    assert row.split()[1] == "team-a"
    assert row.rstrip().endswith("active")
    assert "kb_admin_" not in listed.stdout

    revoked = keybrake("tokens", "--database", database, "revoke", token_id)
    assert (revoked.returncode, revoked.stdout.strip()) == (0, f"Revoked {token_id}.")
    listed = keybrake("tokens", "--database", database, "list")
    [row] = [line for line in listed.stdout.splitlines() if line.startswith(token_id)]
    assert " revoked " in row

    unknown = keybrake("tokens", "--database", database, "revoke", "tok_0000000000000000")
    assert unknown.returncode == 1
    assert "no token 'tok_0000000000000000'" in unknown.stderr

    # Only the token's hash was stored.
    assert token.encode() not in b"".join(p.read_bytes() for p in tmp_path.glob("kb.db*"))


def test_tokens_read_the_database_from_the_environment(tmp_path: Path) -> None:
    env = clean_env(KEYBRAKE_DATABASE_URL=f"sqlite:///{tmp_path / 'env.db'}")
    created = keybrake("tokens", "create", "--tenant", "team-env", env=env)
    assert created.returncode == 0, created.stderr
    listed = keybrake("tokens", "list", env=env)
    assert "team-env" in listed.stdout
    assert (tmp_path / "env.db").exists()


def test_a_malformed_tenant_name_is_refused(tmp_path: Path) -> None:
    result = keybrake(
        "tokens", "--database", f"sqlite:///{tmp_path / 'kb.db'}", "create", "--tenant", "a b"
    )
    assert result.returncode == 2
    assert "not a tenant name" in result.stderr


def test_database_after_the_action(tmp_path: Path) -> None:
    result = keybrake(
        "tokens", "create", "--tenant", "team-a", "--database", f"sqlite:///{tmp_path / 'kb.db'}"
    )
    assert result.returncode == 0, result.stderr


def test_created_tokens_work_against_a_running_server_until_revoked(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'kb.db'}"
    a_id, a_token, _ = create_token(database, "team-a")
    _, b_token, _ = create_token(database, "team-b")

    with serving(database) as url:
        assert api_status(url, a_token) == 200
        assert api_status(url, "kb_admin_not-a-token") == 401

        # A key belongs to the tenant whose token issued it; the other tenant gets 404.
        body = json.dumps(
            {
                "vendor": "stripe",
                "allowed_endpoints": ["/v1/x"],
                "daily_usd_cap": 1,
                "expires_in": 60,
            }
        ).encode()
        request = urllib.request.Request(
            f"{url}/v1/keys",
            data=body,
            headers={"Authorization": f"Bearer {a_token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            key_id = json.loads(response.read())["id"]
        assert api_status(url, a_token, f"/v1/keys/{key_id}") == 200
        assert api_status(url, b_token, f"/v1/keys/{key_id}") == 404

        # Revoked from the command line while the server runs: refused from the next call.
        revoked = keybrake("tokens", "--database", database, "revoke", a_id)
        assert revoked.returncode == 0, revoked.stderr
        assert api_status(url, a_token) == 401
        assert api_status(url, b_token) == 200


def test_audit_command_shows_decisions_and_never_a_token(
    tmp_path: Path, localstripe_url: str
) -> None:
    database = f"sqlite:///{tmp_path / 'kb.db'}"
    _, admin, _ = create_token(database, "team-a")
    with serving(
        database,
        KEYBRAKE_STRIPE_SECRET_KEY="sk_test_keybrake_cli",
        KEYBRAKE_STRIPE_API_BASE=localstripe_url,
    ) as url:

        async def agent_run() -> tuple[str, str]:
            async with (
                Keybrake(admin, api_url=url, proxy_url=url) as kb,
                VaultKey(
                    "stripe", SEED_ENDPOINTS, cap="20", ttl="5m", client=kb, label="cli-audit"
                ) as vk,
            ):
                await vk.stripe.payment_intents.create(amount=1500, currency="usd")
                with pytest.raises(SpendCapExceeded):
                    await vk.stripe.payment_intents.create(amount=1000, currency="usd")
                with pytest.raises(EndpointNotAllowed):
                    await vk.stripe.request("GET", "/v1/customers")
                # A token pasted into a path is forwarded (Stripe answers 404) and audited
                # redacted.
                with pytest.raises(StripeError):
                    await vk.stripe.request("GET", f"/v1/payment_intents/{vk.token}")
                return vk.id, vk.token

        key_id, vault_token = asyncio.run(agent_run())
        env = clean_env(KEYBRAKE_URL=url, KEYBRAKE_TOKEN=admin)

        out = ""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the writer stores entries within ~0.2 s
            result = keybrake("audit", env=env)
            assert result.returncode == 0, result.stderr
            out = result.stdout
            if len(out.splitlines()) == 5:  # the header and all four entries
                break
            time.sleep(0.2)

        lines = out.splitlines()
        assert lines[0].split()[:3] == ["time", "(UTC)", "key"]
        decisions = [line.split()[4] for line in lines[1:]]
        assert decisions == ["allowed", "endpoint_not_allowed", "cap_exhausted", "allowed"]
        assert "/v1/payment_intents/vault_key_***" in lines[1]
        assert " 404 " in lines[1]
        allowed = lines[4]
        assert key_id in allowed
        assert "cli-audit" in allowed
        assert "POST" in allowed
        assert "/v1/payment_intents" in allowed
        assert " 15.00 " in allowed
        assert admin not in out
        assert vault_token not in out
        assert re.findall(r"(?:vault_key_|kb_admin_)(?!\*\*\*)", out) == []

        only = keybrake("audit", "--decision", "cap_exhausted", env=env)
        assert [line.split()[4] for line in only.stdout.splitlines()[1:]] == ["cap_exhausted"]
        by_key = keybrake("audit", "--key-id", key_id, "--limit", "1", env=env)
        assert len(by_key.stdout.splitlines()) == 2

        # Without a master token the command says so and exits 2.
        missing = keybrake("audit", env=clean_env(KEYBRAKE_URL=url))
        assert missing.returncode == 2
        assert "master token" in missing.stderr


def test_a_second_server_on_the_same_sqlite_file_refuses_to_start(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'keybrake.db'}"
    _, token, _ = create_token(database, "default")
    with serving(database) as url:
        second = keybrake("serve", "--port", str(free_port()), "--database", database)
        assert second.returncode == 2
        assert "another keybrake server is using" in second.stderr
        assert api_status(url, token) == 200  # the first one goes on serving
    with serving(database) as url:  # and once it has stopped, the file is free again
        assert api_status(url, token) == 200


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/<pid>/maps")
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_serve_runs_on_either_event_loop(tmp_path: Path, loop: str) -> None:
    database = f"sqlite:///{tmp_path / 'keybrake.db'}"
    _, token, _ = create_token(database, "default")
    with serving_process(database, "--loop", loop) as (url, proc):
        assert api_status(url, token) == 200
        # uvloop is a compiled module: mapped into the server's memory only when it runs.
        uvloop_loaded = "uvloop" in Path(f"/proc/{proc.pid}/maps").read_text()
        assert uvloop_loaded is (loop == "uvloop")
