"""Quickstart: one agent run with its own vault key.

Needs a running server and two environment variables:

    KEYBRAKE_URL=http://127.0.0.1:8787   # the server (issuance API and proxy)
    KEYBRAKE_TOKEN=kb_admin_...           # the master token `keybrake serve` printed
"""

import asyncio

from keybrake import EndpointNotAllowed, SpendCapExceeded, VaultKey


async def main() -> None:
    async with VaultKey(
        "stripe",
        ["/v1/payment_intents", "/v1/payment_intents/*"],
        cap=50,  # USD per day
        ttl="5m",
        label="quickstart",
    ) as vk:
        pi = await vk.stripe.payment_intents.create(amount=2000, currency="usd")
        print(f"created {pi.id}: {pi.amount} {pi.currency} ({pi.status})")

        try:
            await vk.stripe.payment_intents.create(amount=5000, currency="usd")
        except SpendCapExceeded as exc:
            print(f"refused: ${exc.attempted_usd} would pass the ${exc.daily_usd_cap} cap")

        try:
            await vk.stripe.request("GET", "/v1/customers")
        except EndpointNotAllowed as exc:
            print(f"refused: {exc.attempted} is not allowed")
    # Leaving the block revoked the key, whatever happened inside it.
    print(f"{vk.id} revoked")


if __name__ == "__main__":
    asyncio.run(main())
