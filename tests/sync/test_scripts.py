"""Whole scripts in a fresh interpreter: the docs' example, and a script that leaves keybrake
open on purpose; neither may leave a ResourceWarning (or any warning) behind."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from keybrake.sync import Keybrake
from tests.conftest import RunningServer

DOCS = Path(__file__).parent.parent.parent / "docs"


def run_script(path: Path, server: RunningServer) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYBRAKE_")}
    env.update(KEYBRAKE_URL=server.url, KEYBRAKE_TOKEN=server.admin_token, PYTHONDEVMODE="1")
    done = subprocess.run(
        [sys.executable, "-W", "error", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return done.stdout


def test_the_sync_example_runs(sync_server: RunningServer, sync_kb: Keybrake) -> None:
    out = run_script(DOCS / "examples" / "sync_quickstart.py", sync_server)
    assert "created pi_" in out
    assert "refused: cap_exhausted" in out
    assert " is revoked" in out
    assert "4 charges from 4 threads" in out
    assert out.strip().endswith("active keys left: 0")
    assert [key.status for key in sync_kb.list_keys(status="active")] == []


def test_what_a_script_leaves_open_is_closed_at_exit(
    sync_server: RunningServer, sync_kb: Keybrake, tmp_path: Path
) -> None:
    """A client never closed and a key never exited: exit closes and revokes, silently."""
    script = tmp_path / "leaves_open.py"
    script.write_text(
        textwrap.dedent(
            """
            import os
            from keybrake.sync import Keybrake, VaultKey

            ENDPOINTS = ["/v1/payment_intents"]
            kb = Keybrake()  # never closed
            with VaultKey("stripe", ENDPOINTS, cap=5, ttl="1m", client=kb) as vk:
                vk.stripe.payment_intents.create(amount=100, currency="usd")
            left_open = VaultKey("stripe", ENDPOINTS, cap=5, ttl="1m")
            left_open.open()  # never closed: revoked at exit
            left_open.stripe.payment_intents.create(amount=100, currency="usd")
            print(left_open.id)
            """
        )
    )
    key_id = run_script(script, sync_server).strip()
    assert sync_kb.get_key(key_id).status == "revoked"


def test_a_child_that_exits_normally_after_a_fork(
    sync_server: RunningServer, sync_kb: Keybrake, tmp_path: Path
) -> None:
    """gunicorn's workers leave through the interpreter's exit, not os._exit()."""
    script = tmp_path / "forks.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, sys
            from keybrake.sync import Keybrake, VaultKey

            ENDPOINTS = ["/v1/payment_intents"]
            kb = Keybrake()
            with VaultKey("stripe", ENDPOINTS, cap=5, ttl="1m", client=kb) as vk:
                vk.stripe.payment_intents.create(amount=100, currency="usd")
            outer = VaultKey("stripe", ENDPOINTS, cap=5, ttl="1m", client=kb)
            outer.open()  # open across the fork, keepalive running
            pid = os.fork()
            with VaultKey("stripe", ENDPOINTS, cap=5, ttl="1m", client=kb) as vk:
                vk.stripe.payment_intents.create(amount=100, currency="usd")
                print(vk.id, flush=True)
            if pid:
                _, status = os.waitpid(pid, 0)
                sys.exit(os.waitstatus_to_exitcode(status))
            """
        )
    )
    key_ids = run_script(script, sync_server).split()
    assert len(key_ids) == 2
    assert [sync_kb.get_key(key_id).status for key_id in key_ids] == ["revoked", "revoked"]
    assert [key.status for key in sync_kb.list_keys(status="active")] == []
