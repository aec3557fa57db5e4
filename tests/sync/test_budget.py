"""keybrake.sync.Budget: one cap for a whole run's keys, revoked with them on exit."""

from __future__ import annotations

import pytest

from keybrake import BudgetExhausted
from keybrake.sync import Budget, Keybrake, VaultKey
from tests.conftest import SEED_ENDPOINTS


def test_keys_in_a_budget_stop_at_the_budget_and_leave_with_it(sync_kb: Keybrake) -> None:
    with Budget(cap="5.00", ttl="5m", label="run-7", client=sync_kb) as run:
        with (
            VaultKey("stripe", SEED_ENDPOINTS, cap=4, ttl="1m", budget=run, client=sync_kb) as a,
            VaultKey("stripe", SEED_ENDPOINTS, cap=4, ttl="1m", budget=run, client=sync_kb) as b,
        ):
            a.stripe.payment_intents.create(amount=300, currency="usd")  # $3.00
            with pytest.raises(BudgetExhausted):
                b.stripe.payment_intents.create(amount=300, currency="usd")  # $6.00 > $5.00
            b.stripe.payment_intents.create(amount=200, currency="usd")  # exactly $5.00
            assert sync_kb.get_budget(run.id).spent_today_usd == 5
            keys = (a.id, b.id)
        assert [sync_kb.get_key(k).status for k in keys] == ["revoked", "revoked"]
        budget_id = run.id
    assert sync_kb.get_budget(budget_id).revoked_at is not None


def test_a_budget_left_by_keyboard_interrupt_is_revoked_with_its_keys(sync_kb: Keybrake) -> None:
    seen: dict[str, str] = {}
    key: VaultKey | None = None
    with pytest.raises(KeyboardInterrupt), Budget(cap=5, ttl="5m", client=sync_kb) as run:
        seen["budget"] = run.id
        key = VaultKey("stripe", SEED_ENDPOINTS, cap=1, ttl="1m", budget=run, client=sync_kb)
        key.open()  # left open: revoking the budget revokes it too
        seen["key"] = key.id
        raise KeyboardInterrupt
    assert sync_kb.get_budget(seen["budget"]).revoked_at is not None
    assert sync_kb.get_key(seen["key"]).status == "revoked"
    assert key is not None
    key.close()


def test_a_budget_checks_its_arguments_when_made() -> None:
    with pytest.raises(Exception, match="cap"):
        Budget(cap=-1, ttl="5m", token="kb_admin_x")
    with pytest.raises(Exception, match="ttl"):
        Budget(cap=1, ttl="never", token="kb_admin_x")
    with pytest.raises(TypeError, match=r"keybrake\.sync\.Keybrake"):
        Budget(cap=1, ttl="5m", client=object())  # type: ignore[arg-type]
