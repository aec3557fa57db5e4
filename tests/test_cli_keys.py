"""``keybrake keys``, run as an operator runs it (a subprocess, ``KEYBRAKE_URL`` and
``KEYBRAKE_TOKEN`` in its environment) against a real server on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sqlite3
import sys
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import attrs
import pytest

from keybrake import IssuedKey, Keybrake
from tests.conftest import SEED_ENDPOINTS, RunningServer
from tests.test_cli import free_port
from tests.test_cli_operations import clean_env, create_token, serving


@attrs.frozen
class Ran:
    code: int
    out: str
    err: str


async def keybrake_keys(
    server: RunningServer | None,
    *args: str,
    answer: str | None = None,
    url: str | None = None,
    token: str | None = None,
) -> Ran:
    """``keybrake keys ARGS`` in a subprocess, without blocking the server's event loop;
    ``answer`` is what the operator types (nothing: standard input is closed)."""
    if server is not None:
        url, token = server.url, server.admin_token
    env = clean_env()
    if url is not None:
        env["KEYBRAKE_URL"] = url
    if token is not None:
        env["KEYBRAKE_TOKEN"] = token
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "keybrake.cli",
        "keys",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(
        proc.communicate(b"" if answer is None else answer.encode()), timeout=60
    )
    assert proc.returncode is not None
    return Ran(proc.returncode, out.decode(), err.decode())


def assert_fails(ran: Ran, *words: str) -> None:
    """Exit status 2, one line on standard error saying ``words``, nothing on standard output."""
    assert ran.code == 2, ran
    assert ran.err.endswith("\n")
    assert ran.err.count("\n") == 1, ran.err
    assert "Traceback" not in ran.err
    for word in words:
        assert word in ran.err, ran.err


async def issue(kb: Keybrake, label: str, **metadata: str) -> IssuedKey:
    return await kb.issue_key(
        "stripe", SEED_ENDPOINTS, cap=500, ttl="5m", label=label, metadata=metadata
    )


async def pay(url: str, token: str, cents: int = 250) -> tuple[int, str | None]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{url}/stripe/v1/payment_intents",
            data={"amount": str(cents), "currency": "usd"},
            headers={"Authorization": f"Bearer {token}"},
        ) as response,
    ):
        body = await response.json(content_type=None)
        return response.status, body.get("code") if isinstance(body, dict) else None


async def audited(kb: Keybrake, key_id: str) -> None:
    """Wait for the key's audit entries, written shortly after each request."""
    for _ in range(100):
        if [r async for r in kb.audit(key_id=key_id)]:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("no audit entry was written")


def row_of(table: str, key_id: str) -> str:
    rows = [line for line in table.splitlines() if line.startswith(key_id)]
    assert len(rows) == 1, table
    return rows[0]


# -- list -----------------------------------------------------------------------------------


async def test_list_shows_a_readable_table_of_active_keys(
    server: RunningServer, kb: Keybrake
) -> None:
    spender = await issue(kb, "run-42-spender", user="ann", run="42")
    idle = await issue(kb, "run-42-idle", run="42")
    gone = await issue(kb, "run-41")
    assert (await pay(server.url, spender.token))[0] == 200
    await kb.revoke_key(gone.id)

    ran = await keybrake_keys(server, "list")
    assert (ran.code, ran.err) == (0, "")
    header = ran.out.splitlines()[0].split()
    assert header[:4] == ["ID", "LABEL", "VENDOR", "STATUS"]
    assert "USER" in header
    assert "RUN" in header
    row = row_of(ran.out, spender.id)
    assert row.split()[1:4] == ["run-42-spender", "stripe", "active"]
    assert "2.50 / 500.00" in row
    assert re.search(r"\b[45]m \d\ds\b", row), row  # expires in (a 5 minute key)
    assert row.split()[-2:] == ["ann", "42"]
    assert "0.00 / 500.00" in row_of(ran.out, idle.id)
    assert row_of(ran.out, idle.id).split()[-2:] == ["-", "42"]
    assert gone.id not in ran.out  # active keys by default

    ran = await keybrake_keys(server, "list", "--status", "all")
    assert row_of(ran.out, gone.id).split()[1:4] == ["run-41", "stripe", "revoked"]
    ran = await keybrake_keys(server, "list", "--status", "revoked")
    assert gone.id in ran.out
    assert spender.id not in ran.out
    ran = await keybrake_keys(server, "list", "--label-prefix", "run-42-s", "--status", "all")
    assert spender.id in ran.out
    assert idle.id not in ran.out
    assert gone.id not in ran.out


async def test_list_as_json(server: RunningServer, kb: Keybrake) -> None:
    key = await issue(kb, "run-7", user="bob")
    assert (await pay(server.url, key.token, 1234))[0] == 200
    ran = await keybrake_keys(server, "list", "--json")
    assert ran.code == 0
    listed = json.loads(ran.out)
    assert [k["id"] for k in listed] == [key.id]
    assert listed[0]["spent_today_usd"] == "12.34"
    assert listed[0]["daily_usd_cap"] == "500.00"
    assert listed[0]["metadata"] == {"user": "bob"}
    assert "token" not in listed[0]
    ran = await keybrake_keys(server, "list", "--json", "--label-prefix", "nothing")
    assert json.loads(ran.out) == []


async def test_what_an_agent_put_in_a_label_cannot_drive_the_terminal(
    server: RunningServer, kb: Keybrake
) -> None:
    # The API refuses such a label and metadata now; a key stored before it did is still
    # shown safely, so it is written into the store directly.
    key = await issue(kb, "clean", user="clean")
    label = "evil\x1b[2J\x1b]0;pwned\x07\r\nID"
    with contextlib.closing(sqlite3.connect(server.db_path)) as db, db:
        db.execute(
            "UPDATE keys SET label = ?, metadata = ? WHERE id = ?",
            (label, json.dumps({"user": "\x1b[31mred"}), key.id),
        )
    for args in (("list",), ("show", key.id)):
        ran = await keybrake_keys(server, *args)
        assert ran.code == 0
        assert "\x1b" not in ran.out
        assert "\r" not in ran.out
        assert "\x07" not in ran.out
        assert "evil\\x1b[2J" in ran.out
    ran = await keybrake_keys(server, "show", key.id, "--json")
    assert "\x1b" not in ran.out
    assert json.loads(ran.out)["key"]["label"] == label


# -- show -----------------------------------------------------------------------------------


async def test_show_gives_the_key_and_its_recent_audit_entries(
    server: RunningServer, kb: Keybrake
) -> None:
    key = await issue(kb, "run-9", user="ann", run="9")
    assert (await pay(server.url, key.token))[0] == 200
    await audited(kb, key.id)

    ran = await keybrake_keys(server, "show", key.id)
    assert (ran.code, ran.err) == (0, "")
    assert re.search(rf"^id +{key.id}$", ran.out, re.MULTILINE)
    assert re.search(r"^label +run-9$", ran.out, re.MULTILINE)
    assert re.search(r"^spent today +2\.50 of 500\.00 USD", ran.out, re.MULTILINE)
    assert re.search(r"^metadata +user=ann, run=9$", ran.out, re.MULTILINE)
    assert re.search(
        r"^expires +\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(in [45]m \d\ds\)$", ran.out, re.MULTILINE
    )
    audit = ran.out.split("Recent audit entries", 1)[1]
    assert re.search(r"allowed +POST +200 +2\.50 +/v1/payment_intents", audit), audit

    ran = await keybrake_keys(server, "show", key.id, "--json")
    shown = json.loads(ran.out)
    assert shown["key"]["id"] == key.id
    assert shown["key"]["spent_today_usd"] == "2.50"
    assert [(e["decision"], e["path"]) for e in shown["audit"]] == [
        ("allowed", "/v1/payment_intents")
    ]


async def test_show_of_an_unknown_key_fails_in_one_line(server: RunningServer) -> None:
    ran = await keybrake_keys(server, "show", "vk_nope")
    assert_fails(ran, "keybrake keys show", "no key 'vk_nope'")
    assert ran.out == ""


# -- revoke ---------------------------------------------------------------------------------


async def test_revoke_by_id_and_the_proxy_refuses_those_keys(
    server: RunningServer, kb: Keybrake
) -> None:
    a, b, kept = [await issue(kb, f"k{i}") for i in range(3)]
    ran = await keybrake_keys(server, "revoke", a.id, b.id)
    assert (ran.code, ran.err) == (0, "")
    assert f"Revoked {a.id}" in ran.out
    assert f"Revoked {b.id}" in ran.out
    for key in (a, b):
        assert await pay(server.url, key.token) == (401, "key_revoked")
    assert (await pay(server.url, kept.token))[0] == 200


async def test_revoke_by_id_with_an_unknown_id_revokes_the_others_and_fails(
    server: RunningServer, kb: Keybrake
) -> None:
    key = await issue(kb, "k")
    ran = await keybrake_keys(server, "revoke", "vk_nope", key.id)
    assert_fails(ran, "no key 'vk_nope'", "the others were revoked")
    assert f"Revoked {key.id}" in ran.out
    assert (await kb.get_key(key.id)).status == "revoked"


async def test_a_filtered_revoke_lists_the_keys_and_asks_first(
    server: RunningServer, kb: Keybrake
) -> None:
    run = [await issue(kb, f"run-42-{i}", run="42") for i in range(2)]
    other = await issue(kb, "run-43", run="43")

    for answer in ("n\n", "\n", None, "maybe\n"):
        ran = await keybrake_keys(server, "revoke", "--label-prefix", "run-42", answer=answer)
        assert_fails(ran, "not confirmed", "nothing was revoked")
        assert "Revoke 2 keys? [y/N]" in ran.out
        for key in run:
            assert key.id in ran.out  # which keys, before asking
        assert other.id not in ran.out
    assert {k.status async for k in kb.list_keys()} == {"active"}

    ran = await keybrake_keys(server, "revoke", "--label-prefix", "run-42", answer="y\n")
    assert (ran.code, ran.err) == (0, "")
    assert "Revoke 2 keys? [y/N]" in ran.out
    assert "Revoked 2 keys:" in ran.out
    for key in run:
        assert await pay(server.url, key.token) == (401, "key_revoked")
    assert (await kb.get_key(other.id)).status == "active"

    ran = await keybrake_keys(server, "revoke", "--label-prefix", "run-42", answer="y\n")
    assert (ran.code, ran.out.strip()) == (0, "No active key matches; nothing was revoked.")


async def test_yes_revokes_without_asking_and_filters_are_anded(
    server: RunningServer, kb: Keybrake
) -> None:
    target = await issue(kb, "job", user="ann", run="1")
    same_run = await issue(kb, "job", user="bob", run="1")
    same_user = await issue(kb, "job", user="ann", run="2")
    ran = await keybrake_keys(
        server, "revoke", "--metadata", "user=ann", "--metadata", "run=1", "--yes"
    )
    assert (ran.code, ran.err) == (0, "")
    assert "[y/N]" not in ran.out
    assert ran.out.split() == ["Revoked", "1", "key:", target.id]
    assert (await kb.get_key(same_run.id)).status == "active"
    assert (await kb.get_key(same_user.id)).status == "active"

    ran = await keybrake_keys(server, "revoke", "--vendor", "twilio", "--all", "-y")
    assert (ran.code, ran.out.strip()) == (0, "Revoked 0 keys.")
    ran = await keybrake_keys(server, "revoke", "--all", "--yes")
    assert ran.code == 0
    assert sorted(ran.out.split()[3:]) == sorted([same_run.id, same_user.id])


async def test_a_filtered_revoke_touches_only_the_callers_tenant(
    server: RunningServer, kb: Keybrake
) -> None:
    from tests.server.test_bulk_revoke import tenant_token

    theirs = await tenant_token(server, "team-b")
    mine = await issue(kb, "run")
    ran = await keybrake_keys(None, "revoke", "--all", answer="y\n", token=theirs, url=server.url)
    assert ran.code == 0
    assert ran.out.strip() == "No active key matches; nothing was revoked."
    ran = await keybrake_keys(None, "list", token=theirs, url=server.url)
    assert (ran.code, ran.out.strip()) == (0, "(no keys)")
    assert (await kb.get_key(mine.id)).status == "active"


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("revoke",), ("name the keys",)),
        (("revoke", "vk_1", "--all"), ("not both",)),
        (("revoke", "--metadata", "run"), ("key=value",)),
        (("revoke", "--label-prefix", ""), ("name the keys",)),
        (("revoke", "--vendor", "paypal", "--yes"), ("vendor", "400")),
        (("list", "--status", "gone"), ("invalid choice",)),
        (("list", "--bogus"), ("unrecognized arguments",)),
        (("show",), ("required",)),
        ((), ("required",)),
    ],
)
async def test_bad_arguments_fail_in_one_line_and_revoke_nothing(
    server: RunningServer, kb: Keybrake, args: tuple[str, ...], words: tuple[str, ...]
) -> None:
    key = await issue(kb, "k")
    assert_fails(await keybrake_keys(server, *args, answer="y\n"), *words)
    assert (await kb.get_key(key.id)).status == "active"


async def test_a_wrong_token_fails_in_one_line(server: RunningServer) -> None:
    for args in (("list",), ("show", "vk_1"), ("revoke", "vk_1"), ("revoke", "--all", "-y")):
        ran = await keybrake_keys(None, *args, url=server.url, token="kb_admin_wrong")
        assert_fails(ran, "status=401")


async def test_no_token_fails_in_one_line(server: RunningServer) -> None:
    assert_fails(await keybrake_keys(None, "list", url=server.url), "KEYBRAKE_TOKEN")


async def test_an_unreachable_server_fails_in_one_line() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    ran = await keybrake_keys(None, "revoke", "--all", "--yes", url=url, token="kb_admin_x")
    assert_fails(ran, "can't reach keybrake")


# -- serve --metrics-token ------------------------------------------------------------------


def metrics_status(url: str, token: str | None) -> int:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    request = urllib.request.Request(url + "/metrics", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code


def test_serve_takes_a_metrics_token_from_its_option_or_the_environment(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'kb.db'}"
    create_token(database, "default")
    with serving(database, "--metrics-token", "from-option") as url:
        assert metrics_status(url, None) == 401
        assert metrics_status(url, "from-option") == 200
    with serving(database, KEYBRAKE_METRICS_TOKEN="from-env") as url:
        assert metrics_status(url, "from-option") == 401
        assert metrics_status(url, "from-env") == 200
    with serving(database) as url:
        assert metrics_status(url, None) == 200
