"""aiohttp.web: a vault key for each request of a sub-app, revoked when it is done.

Needs `pip install 'keybrake[aiohttp-web]'`, a running keybrake server and KEYBRAKE_URL and
KEYBRAKE_TOKEN (see the quickstart). Serve it with
`python -m aiohttp.web -H 127.0.0.1 -P 8080 aiohttp_app:create_app` from this folder.
"""

from aiohttp import web

from keybrake import Keybrake
from keybrake.integrations.aiohttp_web import VAULT_KEY, vault_key_middleware


async def pay(request: web.Request) -> web.Response:
    vk = request[VAULT_KEY]  # typed: a VaultKey
    pi = await vk.stripe.payment_intents.create(amount=int(request.query["amount"]), currency="usd")
    return web.json_response({"payment_intent": pi.id, "status": pi.status})


async def pay_events(request: web.Request) -> web.StreamResponse:
    vk = request[VAULT_KEY]
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(b"event: creating\ndata: {}\n\n")
    # Still valid here: the key is revoked once the whole stream has been written.
    pi = await vk.stripe.payment_intents.create(amount=int(request.query["amount"]), currency="usd")
    await response.write(f"event: created\ndata: {pi.id}\n\n".encode())
    return response


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})  # outside the sub-app: no key


def create_app() -> web.Application:
    kb = Keybrake()  # one keybrake client (one HTTP session) for every request's key

    async def close_keybrake(app: web.Application) -> None:
        await kb.close()

    payments = web.Application(
        middlewares=[
            # Labelled from X-User-Id and X-Agent-Run-Id; 503 vault_key_unavailable if
            # keybrake is down.
            vault_key_middleware(
                "stripe",
                ["/v1/payment_intents", "/v1/payment_intents/*"],
                cap=500,
                ttl="5m",
                client=kb,
            )
        ]
    )
    payments.router.add_post("/pay", pay)
    payments.router.add_post("/events", pay_events)

    app = web.Application()
    app.add_subapp("/payments/", payments)
    app.router.add_get("/health", health)
    app.on_cleanup.append(close_keybrake)
    return app
