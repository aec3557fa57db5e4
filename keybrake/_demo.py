"""``keybrake demo``: one agent run through a real local server, told step by step."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from keybrake._client import Keybrake
from keybrake._errors import EndpointNotAllowed, SpendCapExceeded, VaultKeyRevoked
from keybrake._localstripe import localstripe_server
from keybrake._vault_key import VaultKey

__all__ = ["run_demo"]

CAP_USD = 50
CHARGE_CENTS = 1250


def _say(text: str = "") -> None:
    print(text, flush=True)


async def _scenario(stripe_url: str, data_dir: Path) -> int:
    from keybrake.server import ServerConfig, running_server
    from keybrake.server.app import generate_admin_token

    admin_token = generate_admin_token()
    config = ServerConfig(
        database_url=f"sqlite:///{data_dir / 'keybrake.db'}",
        admin_token=admin_token,
        vendor_settings={"stripe": {"secret_key": "sk_test_demo", "api_base": stripe_url}},
    )
    async with (
        running_server(config) as url,
        Keybrake(admin_token, api_url=url, proxy_url=url) as kb,
    ):
        _say(f"keybrake server  {url}   (SQLite in {data_dir})")
        _say(f"Stripe upstream  {stripe_url}   (localstripe)")
        _say()
        _say(f"1. The agent run asks for a vault key: Stripe payment intents only, ${CAP_USD}/day.")
        async with VaultKey(
            "stripe",
            ["/v1/payment_intents", "/v1/payment_intents/*"],
            cap=CAP_USD,
            ttl="5m",
            label="demo-agent-run",
            client=kb,
        ) as vk:
            _say(f"   issued {vk.id}, expires {vk.expires_at:%H:%M:%S} UTC  {vk!r}")
            _say()
            _say(f"2. The agent loops, charging ${CHARGE_CENTS / 100:.2f} each time...")
            attempt = 0
            while True:
                attempt += 1
                try:
                    pi = await vk.stripe.payment_intents.create(
                        amount=CHARGE_CENTS, currency="usd", metadata={"attempt": str(attempt)}
                    )
                except SpendCapExceeded as exc:
                    _say(
                        f"   #{attempt}: REFUSED 429 {exc.code}: spent ${exc.spent_today_usd}"
                        f" of ${exc.daily_usd_cap}, this one would add ${exc.attempted_usd}"
                    )
                    break
                _say(f"   #{attempt}: {pi.id}  {pi.amount / 100:.2f} {pi.currency}  {pi.status}")
                if attempt > 10:  # pragma: no cover - the cap must have stopped us by now
                    _say("   the cap did not hold!")
                    return 1
            info = await kb.get_key(vk.id)
            _say(f"   the brake held: ${info.spent_today_usd} spent of a ${info.daily_usd_cap} cap")
            _say()
            _say("3. The agent strays outside its scope and tries to list customers...")
            try:
                await vk.stripe.request("GET", "/v1/customers")
            except EndpointNotAllowed as exc:
                _say(
                    f"   REFUSED 403 {exc.code}: {exc.attempted} (allowed: {exc.allowed_endpoints})"
                )
            _say()
            _say("4. The run ends; leaving 'async with' revokes the key.")
        info = await kb.get_key(vk.id)
        _say(f"   {vk.id} is now {info.status} (revoked at {info.revoked_at:%H:%M:%S} UTC)")
        _say()
        _say("5. A leaked copy of the key is tried once more...")
        try:
            await vk.stripe.payment_intents.create(amount=100, currency="usd")
        except VaultKeyRevoked as exc:
            _say(f"   REFUSED 401 {exc.code}: {exc.message}")
        else:  # pragma: no cover
            _say("   the revoked key still worked!")
            return 1
        _say()
        _say("Done: every charge was capped, scoped and ended with the run.")
    return 0


def run_demo() -> int:
    """Start localstripe and a keybrake server on loopback, run the scenario, stop both."""
    with localstripe_server() as stripe_url, tempfile.TemporaryDirectory(prefix="keybrake-") as d:
        return asyncio.run(_scenario(stripe_url, Path(d)))
