"""keybrake.sync from many threads at once, from asyncio.to_thread while a loop runs, and
never from its own loop's thread (that would deadlock: it raises instead)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from keybrake import ConfigurationError, KeybrakeError
from keybrake import Keybrake as AsyncKeybrake
from keybrake._portal import get_portal
from keybrake.sync import Keybrake, VaultKey
from tests.conftest import SEED_ENDPOINTS, RunningServer

THREADS = 8


def test_many_threads_each_with_a_key_at_once(sync_kb: Keybrake) -> None:
    all_open = threading.Barrier(THREADS, timeout=30)
    seen: dict[int, tuple[str, str]] = {}
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            with VaultKey("stripe", SEED_ENDPOINTS, cap=5, ttl="1m", client=sync_kb) as vk:
                all_open.wait()  # every key is open at the same time
                pi = vk.stripe.payment_intents.create(amount=100 + n, currency="usd")
                seen[n] = (vk.id, pi.id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert len({key_id for key_id, _ in seen.values()}) == THREADS
    assert {key.id: key.status for key in sync_kb.list_keys()} == {
        key_id: "revoked" for key_id, _ in seen.values()
    }


def test_threads_share_one_loop(sync_kb: Keybrake) -> None:
    loops: set[int] = set()

    def work() -> None:
        with VaultKey("stripe", SEED_ENDPOINTS, cap=1, ttl="1m", client=sync_kb):
            loops.add(id(get_portal().loop))

    threads = [threading.Thread(target=work) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(loops) == 1


async def test_from_to_thread_while_a_loop_runs(server: RunningServer) -> None:
    """The caller's thread runs a loop (here: the test's, which also serves keybrake)."""

    def tool() -> str:
        with (
            Keybrake(server.admin_token, api_url=server.url, proxy_url=server.url) as kb,
            VaultKey("stripe", SEED_ENDPOINTS, cap=5, ttl="1m", client=kb) as vk,
        ):
            vk.stripe.payment_intents.create(amount=100, currency="usd")
            return vk.id

    key_ids = await asyncio.gather(*(asyncio.to_thread(tool) for _ in range(4)))
    async with AsyncKeybrake(server.admin_token, api_url=server.url) as kb:
        assert [(await kb.get_key(key_id)).status for key_id in key_ids] == ["revoked"] * 4


def test_a_call_from_keybrakes_own_loop_thread_raises(sync_kb: Keybrake) -> None:
    """E.g. an on_lost callback calling keybrake.sync: it would wait for itself forever."""
    outcome: list[BaseException | str] = []
    done = threading.Event()

    def on_loop() -> None:
        try:
            outcome.append(sync_kb.get_key("vk_nope").status)
        except BaseException as exc:
            outcome.append(exc)
        done.set()

    get_portal().loop.call_soon_threadsafe(on_loop)
    assert done.wait(5), "keybrake.sync deadlocked on its own loop thread"
    [error] = outcome
    assert isinstance(error, ConfigurationError)
    assert "own event loop thread" in str(error)


def test_an_on_lost_callback_may_not_block_on_keybrake(sync_kb: Keybrake) -> None:
    errors: list[Exception] = []

    def on_lost(lost: KeybrakeError) -> None:
        try:
            sync_kb.get_key("vk_x")
        except ConfigurationError as exc:
            errors.append(exc)

    with VaultKey("stripe", SEED_ENDPOINTS, cap=1, ttl=1, client=sync_kb, on_lost=on_lost) as vk:
        sync_kb.revoke_key(vk.id)
        for _ in range(50):
            if errors:
                break
            threading.Event().wait(0.05)
    assert len(errors) == 1


def test_a_key_is_entered_once(sync_kb: Keybrake) -> None:
    vk = VaultKey("stripe", SEED_ENDPOINTS, cap=1, ttl="1m", client=sync_kb)
    with vk, pytest.raises(ConfigurationError, match="only once"):
        vk.open()
    assert sync_kb.get_key(vk.id).status == "revoked"
