"""keybrake from blocking code: a key for a block, a key per call, a key per thread.

Run with KEYBRAKE_URL and KEYBRAKE_TOKEN set (docs/sync.md); tests/sync runs it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from keybrake import SpendCapExceeded, vault_key
from keybrake.sync import Keybrake, VaultKey

ENDPOINTS = ["/v1/payment_intents", "/v1/payment_intents/*"]

# One client for the whole script: one HTTP session, closed by 'with'.
with Keybrake() as kb:
    # A key for one block: issued here, kept alive meanwhile, revoked at the end of the block.
    with VaultKey("stripe", ENDPOINTS, cap=50, ttl="2m", label="sync-demo", client=kb) as vk:
        pi = vk.stripe.payment_intents.create(amount=2000, currency="usd")
        print(f"created {pi.id} for {pi.amount} {pi.currency}")
        try:
            vk.stripe.payment_intents.create(amount=5000, currency="usd")
        except SpendCapExceeded as exc:
            print(f"refused: {exc.code}")
    print(f"{vk.id} is {kb.get_key(vk.id).status}")

    # A key for each call of a plain 'def' tool; the model never sees the 'vk' parameter.
    @vault_key("stripe", ENDPOINTS, cap=10, ttl="1m", client=kb)
    def charge(amount: int, vk: VaultKey) -> str:
        return vk.stripe.payment_intents.create(amount=amount, currency="usd").id

    # Threads: each call has its own key, all on keybrake's one event loop.
    with ThreadPoolExecutor(max_workers=4) as pool:
        intents = list(pool.map(charge, [100, 200, 300, 400]))
    print(f"{len(intents)} charges from 4 threads")
    active = [key.id for key in kb.list_keys(status="active")]
    print(f"active keys left: {len(active)}")
