"""FastAPI: a vault key for each request, revoked once the response has been sent.

Needs `pip install 'keybrake[fastapi]' uvicorn`, a running keybrake server and
KEYBRAKE_URL and KEYBRAKE_TOKEN (see the quickstart). Serve it with
`uvicorn fastapi_app:app` from this folder.
"""

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI
from fastapi.responses import StreamingResponse

from keybrake import Keybrake, VaultKey
from keybrake.integrations.fastapi import (
    VaultKeyUnavailable,
    vault_key_dependency,
    vault_key_unavailable_handler,
)

# One keybrake client (one HTTP session) for every request's key.
kb = Keybrake()


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    await kb.close()


# Each request that depends on it gets its own key, labelled from X-User-Id and
# X-Agent-Run-Id, and revoked after the response, streamed or not.
payments_key = vault_key_dependency(
    "stripe",
    ["/v1/payment_intents", "/v1/payment_intents/*"],
    cap=500,
    ttl="5m",
    client=kb,
)
PaymentsKey = Annotated[VaultKey, Depends(payments_key)]

app = FastAPI(lifespan=lifespan)
# If keybrake is down: 503 {"code": "vault_key_unavailable", "message": ...}
app.add_exception_handler(VaultKeyUnavailable, vault_key_unavailable_handler)


@app.post("/pay")
async def pay(amount: int, vk: PaymentsKey) -> dict[str, str]:
    pi = await vk.stripe.payment_intents.create(amount=amount, currency="usd")
    return {"payment_intent": pi.id, "status": pi.status}


@app.post("/pay/stream")
async def pay_stream(amount: int, vk: PaymentsKey) -> StreamingResponse:
    async def progress() -> AsyncIterator[str]:
        yield json.dumps({"step": "creating"}) + "\n"
        # Still valid here: the key is revoked only after the last chunk has been sent.
        pi = await vk.stripe.payment_intents.create(amount=amount, currency="usd")
        yield json.dumps({"step": "created", "payment_intent": pi.id}) + "\n"

    return StreamingResponse(progress(), media_type="application/x-ndjson")
