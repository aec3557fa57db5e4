"""keybrake.sync across a fork (Celery's prefork pool, gunicorn): a key used in the parent
before forking, in the child after, each process with its own loop and HTTP session."""

from __future__ import annotations

import gc
import multiprocessing
import os
import warnings
from multiprocessing.connection import Connection
from typing import Any

import pytest

from keybrake import ConfigurationError
from keybrake._portal import get_portal
from keybrake.sync import Keybrake, VaultKey
from tests.conftest import SEED_ENDPOINTS

pytestmark = pytest.mark.filterwarnings(
    # Python 3.12+ warns about any fork of a process with threads; forking is the point here.
    "ignore:This process .* is multi-threaded:DeprecationWarning"
)


def child_work(kb: Keybrake, parent_key: VaultKey, conn: Connection) -> None:
    """In the child: issue and use a key through the inherited client, and report."""
    report: dict[str, Any] = {"pid": os.getpid()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            report["loop"] = id(get_portal().loop)
            with VaultKey("stripe", SEED_ENDPOINTS, cap=5, ttl="1m", client=kb) as vk:
                report["key"] = vk.id
                report["pi"] = vk.stripe.payment_intents.create(amount=300, currency="usd").id
            try:
                parent_key.stripe.payment_intents.create(amount=1, currency="usd")
            except ConfigurationError as exc:
                report["parent_key"] = str(exc)
            parent_key.close()  # a no-op here: the key is the parent's
            kb.close()
            gc.collect()
        except BaseException as exc:
            report["error"] = repr(exc)
    report["warnings"] = [str(w.message) for w in caught]
    conn.send(report)
    conn.close()


def test_a_key_in_the_parent_before_the_fork_and_in_the_child_after(sync_kb: Keybrake) -> None:
    with VaultKey("stripe", SEED_ENDPOINTS, cap=5, ttl=2, client=sync_kb) as before:
        before.stripe.payment_intents.create(amount=100, currency="usd")
    parent_loop = id(get_portal().loop)

    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    with VaultKey("stripe", SEED_ENDPOINTS, cap=5, ttl=2, client=sync_kb) as open_across:
        child = ctx.Process(target=child_work, args=(sync_kb, open_across, send))
        child.start()
        send.close()
        try:
            assert receive.poll(20), "the child did not report"
            report = receive.recv()
            child.join(20)
            assert child.exitcode == 0
        finally:
            if child.is_alive():
                child.kill()
                child.join()
        # The parent's loop, session and open key are untouched by the child.
        open_across.stripe.payment_intents.create(amount=100, currency="usd")

    assert "error" not in report, report["error"]
    assert report["pid"] != os.getpid()
    assert report["loop"] != parent_loop
    assert report["pi"].startswith("pi_")
    assert "before a fork" in report["parent_key"]
    assert report["warnings"] == []
    statuses = {key.id: key.status for key in sync_kb.list_keys()}
    assert statuses == {
        before.id: "revoked",
        open_across.id: "revoked",  # by the parent, when its block ended
        report["key"]: "revoked",  # by the child
    }


def test_a_bare_os_fork(sync_kb: Keybrake) -> None:
    with VaultKey("stripe", SEED_ENDPOINTS, cap=5, ttl="1m", client=sync_kb) as vk:
        vk.stripe.payment_intents.create(amount=100, currency="usd")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report one line, then leave without running the parent's cleanup
        code = 1
        try:
            with VaultKey("stripe", SEED_ENDPOINTS, cap=5, ttl="1m", client=sync_kb) as vk:
                vk.stripe.payment_intents.create(amount=100, currency="usd")
                os.write(write, vk.id.encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    child_key = os.read(read, 100).decode()
    os.close(read)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert sync_kb.get_key(child_key).status == "revoked"
    with VaultKey("stripe", SEED_ENDPOINTS, cap=5, ttl="1m", client=sync_kb) as vk:
        vk.stripe.payment_intents.create(amount=100, currency="usd")
