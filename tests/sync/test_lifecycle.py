"""keybrake.sync.VaultKey: issued on enter, used through its clients, revoked however the
block ends (KeyboardInterrupt and a real SIGINT included), kept alive, retried."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from keybrake import KeybrakeError, VaultKeyRevoked
from keybrake.sync import Keybrake, VaultKey
from keybrake.vendors.stripe.client import PaymentIntent
from tests.conftest import SEED_ENDPOINTS, RunningServer
from tests.faults import fault_proxy
from tests.sync.conftest import QUICK_RETRY, Background


class Boom(Exception):
    pass


def interrupt_main_thread_in(seconds: float) -> threading.Timer:
    """Send SIGINT to the main thread (where Python raises KeyboardInterrupt) in a while."""
    timer = threading.Timer(
        seconds, signal.pthread_kill, (threading.main_thread().ident, signal.SIGINT)
    )
    timer.start()
    return timer


def statuses(kb: Keybrake) -> list[str]:
    return [key.status for key in kb.list_keys()]


def test_issued_used_and_revoked_on_exit(sync_kb: Keybrake) -> None:
    with VaultKey("stripe", SEED_ENDPOINTS, cap=50, ttl="1m", client=sync_kb) as vk:
        assert vk.id.startswith("vk_")
        assert sync_kb.get_key(vk.id).status == "active"
        pi = vk.stripe.payment_intents.create(amount=2000, currency="usd")
        assert isinstance(pi, PaymentIntent)
        assert pi.amount == 2000
        assert vk.stripe.payment_intents.retrieve(pi.id).id == pi.id
        assert pi.id in [intent.id for intent in vk.stripe.payment_intents.list()]
    assert sync_kb.get_key(vk.id).status == "revoked"


def test_a_key_that_owns_its_client(sync_server: RunningServer, sync_kb: Keybrake) -> None:
    with VaultKey(
        "stripe",
        SEED_ENDPOINTS,
        cap=5,
        ttl="1m",
        token=sync_server.admin_token,
        api_url=sync_server.url,
        proxy_url=sync_server.url,
    ) as vk:
        vk.stripe.payment_intents.create(amount=100, currency="usd")
    assert sync_kb.get_key(vk.id).status == "revoked"


def test_revoked_when_the_block_raises(sync_kb: Keybrake) -> None:
    with (
        pytest.raises(Boom),
        VaultKey("stripe", SEED_ENDPOINTS, cap=5, ttl="1m", client=sync_kb) as vk,
    ):
        raise Boom
    assert sync_kb.get_key(vk.id).status == "revoked"


def test_revoked_when_the_block_raises_keyboard_interrupt(sync_kb: Keybrake) -> None:
    with (
        pytest.raises(KeyboardInterrupt),
        VaultKey("stripe", SEED_ENDPOINTS, cap=5, ttl="1m", client=sync_kb) as vk,
    ):
        raise KeyboardInterrupt
    assert sync_kb.get_key(vk.id).status == "revoked"


def test_revoked_on_a_real_sigint_in_the_block(sync_kb: Keybrake) -> None:
    with (
        pytest.raises(KeyboardInterrupt),
        VaultKey("stripe", SEED_ENDPOINTS, cap=5, ttl="1m", client=sync_kb) as vk,
    ):
        signal.raise_signal(signal.SIGINT)
        pytest.fail("SIGINT did not interrupt the block")
    assert sync_kb.get_key(vk.id).status == "revoked"


def test_sigint_while_a_call_waits_revokes_on_exit(sync_kb: Keybrake) -> None:
    """A SIGINT that arrives while vk.stripe waits for the proxy ends the block; exit revokes."""
    with (
        pytest.raises(KeyboardInterrupt),
        VaultKey("stripe", SEED_ENDPOINTS, cap=5, ttl="1m", client=sync_kb) as vk,
    ):
        timer = interrupt_main_thread_in(0.2)
        try:
            while True:  # calls until the interrupt lands in one of them
                vk.stripe.payment_intents.create(amount=1, currency="usd")
        finally:
            timer.cancel()
    assert sync_kb.get_key(vk.id).status == "revoked"


def test_sigint_during_issuance_revokes_the_key_the_server_made(
    sync_server: RunningServer, sync_kb: Keybrake, background: Background
) -> None:
    proxy = background.enter(fault_proxy(sync_server.url))
    proxy.faults = ["delay:1.0"]  # the server gets the request after a second and acts
    entered = False
    with Keybrake(
        sync_server.admin_token, api_url=proxy.url, proxy_url=sync_server.url, retry=QUICK_RETRY
    ) as slow:
        timer = interrupt_main_thread_in(0.3)
        started = time.monotonic()
        with (
            pytest.raises(KeyboardInterrupt),
            VaultKey("stripe", SEED_ENDPOINTS, cap=5, ttl="1m", client=slow),
        ):
            entered = True
        timer.join()
    assert not entered
    assert time.monotonic() - started >= 1.0  # it waited for the issuance to end, then revoked
    assert statuses(sync_kb) == ["revoked"]


# -- keepalive -----------------------------------------------------------------------------------


def test_a_2s_key_stays_usable_through_a_5s_block(sync_kb: Keybrake) -> None:
    with VaultKey("stripe", SEED_ENDPOINTS, cap=5, ttl=2, client=sync_kb) as vk:
        first_expiry = vk.expires_at
        for _ in range(5):
            time.sleep(1)  # blocking: keepalive runs on keybrake's own loop meanwhile
            vk.stripe.payment_intents.create(amount=50, currency="usd")
        assert vk.lost is None
        assert vk.expires_at > first_expiry
    assert sync_kb.get_key(vk.id).status == "revoked"


def test_without_keepalive_a_2s_key_expires(sync_kb: Keybrake) -> None:
    """The counterpart of the test above: it is keepalive that keeps the key usable."""
    with VaultKey("stripe", SEED_ENDPOINTS, cap=5, ttl=2, keepalive=False, client=sync_kb) as vk:
        time.sleep(2.5)
        with pytest.raises(KeybrakeError, match="expired"):
            vk.stripe.payment_intents.create(amount=50, currency="usd")


def test_a_revoked_key_is_detected(sync_kb: Keybrake) -> None:
    lost: list[KeybrakeError] = []
    with VaultKey(
        "stripe", SEED_ENDPOINTS, cap=5, ttl=1, client=sync_kb, on_lost=lost.append
    ) as vk:
        sync_kb.revoke_key(vk.id)
        time.sleep(1.2)  # the next keepalive refresh finds out
        assert [type(error) for error in lost] == [VaultKeyRevoked]
        assert vk.lost is lost[0]
        with pytest.raises(VaultKeyRevoked):
            vk.stripe.payment_intents.create(amount=50, currency="usd")


# -- retries -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "faults", [["drop", "reset"], ["lost"], ["status:503", "status:502"], ["delay:0.3"]]
)
def test_issuance_survives_faults_with_exactly_one_key(
    sync_server: RunningServer, sync_kb: Keybrake, background: Background, faults: list[str]
) -> None:
    proxy = background.enter(fault_proxy(sync_server.url))
    proxy.faults = list(faults)
    with (
        Keybrake(
            sync_server.admin_token, api_url=proxy.url, proxy_url=sync_server.url, retry=QUICK_RETRY
        ) as kb,
        VaultKey("stripe", SEED_ENDPOINTS, cap=5, ttl="1m", client=kb) as vk,
    ):
        vk.stripe.payment_intents.create(amount=100, currency="usd")
    issues = [line for line, _ in proxy.seen if line.startswith("POST /v1/keys ")]
    assert len(issues) == len(faults) + 1 - faults.count("delay:0.3")
    assert [key.id for key in sync_kb.list_keys()] == [vk.id]
    assert statuses(sync_kb) == ["revoked"]


def test_proxy_calls_are_retried(
    sync_server: RunningServer, sync_kb: Keybrake, background: Background
) -> None:
    proxy = background.enter(fault_proxy(sync_server.url))
    with (
        Keybrake(
            sync_server.admin_token, api_url=sync_server.url, proxy_url=proxy.url, retry=QUICK_RETRY
        ) as kb,
        VaultKey("stripe", SEED_ENDPOINTS, cap=5, ttl="1m", client=kb) as vk,
    ):
        proxy.faults = ["status:503", "reset"]
        pi = vk.stripe.payment_intents.create(amount=100, currency="usd")
    assert pi.id.startswith("pi_")
    creates = [line for line, _ in proxy.seen if line.startswith("POST /stripe/v1/payment_")]
    assert len(creates) == 3
