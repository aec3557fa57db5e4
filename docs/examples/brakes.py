"""Brakes: which one stops which failure of an agent run.

Needs a running server and two environment variables:

    KEYBRAKE_URL=http://127.0.0.1:8787   # the server (issuance API and proxy)
    KEYBRAKE_TOKEN=kb_admin_...           # the master token `keybrake serve` printed
"""

import asyncio

from keybrake import Budget, BudgetExhausted, RateLimited, UsesExhausted, VaultKey


async def loop_of_free_calls() -> None:
    """A stuck loop of free calls spends nothing: the cap can't stop it; these brakes do."""
    async with VaultKey(
        "stripe", ["/v1/customers", "/v1/customers/*"], cap=0, ttl="5m", rate_limit="5/m"
    ) as vk:
        customer = await vk.stripe.customers.create(email="agent@example.com")
        calls = 1
        try:
            while True:  # the agent keeps looking the same customer up
                await vk.stripe.customers.retrieve(customer.id)
                calls += 1
        except RateLimited as exc:
            print(f"rate limited after {calls} calls; retry in {exc.retry_after:g}s")

    async with VaultKey("stripe", ["/v1/customers/*"], cap=0, ttl="5m", max_requests=3) as vk:
        try:
            for _ in range(10):
                await vk.stripe.customers.retrieve(customer.id)
        except UsesExhausted as exc:
            print(f"uses exhausted: the key made its {exc.max_requests} requests")


async def one_budget_for_a_run() -> None:
    """A run with several keys spends one budget, not the sum of their caps."""
    # Two keys (of any vendors: here both Stripe), each capped at $25, in one $30 budget.
    async with (
        Budget(cap=30, ttl="10m", label="run-42") as run,
        VaultKey("stripe", ["/v1/payment_intents"], cap=25, ttl="5m", budget=run) as a,
        VaultKey("stripe", ["/v1/payment_intents"], cap=25, ttl="5m", budget=run) as b,
    ):
        await a.stripe.payment_intents.create(amount=2000, currency="usd")
        try:
            # Within key b's own $25 cap, but not within what is left of the run's $30.
            await b.stripe.payment_intents.create(amount=2000, currency="usd")
        except BudgetExhausted as exc:
            print(
                f"refused: ${exc.attempted_usd} would pass budget"
                f" ${exc.budget_daily_usd_cap} (spent ${exc.budget_spent_today_usd})"
            )
    # Leaving the block revoked the budget and every key drawing from it.
    print(f"{run.id} revoked")


async def main() -> None:
    await loop_of_free_calls()
    await one_budget_for_a_run()


if __name__ == "__main__":
    asyncio.run(main())
