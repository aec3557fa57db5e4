"""Views that report which key they got and use it for a real Stripe call."""

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from django.conf import settings
from django.http import HttpRequest, JsonResponse, StreamingHttpResponse

from keybrake import VaultKey
from keybrake.integrations.django import SyncVaultKeyRequest, VaultKeyRequest

#: How long a stream waits for its ``go`` file, sending a heartbeat line meanwhile.
STREAM_WAIT = 10.0


def ran(name: str) -> None:
    (Path(settings.MARKERS) / name).touch()


def health(request: HttpRequest) -> JsonResponse:
    ran("health")
    return JsonResponse({"has_key": hasattr(request, "vault_key")})


def pay(request: SyncVaultKeyRequest) -> JsonResponse:
    ran("pay")
    vk = request.vault_key
    pi = vk.stripe.payment_intents.create(amount=int(request.GET["amount"]), currency="usd")
    return JsonResponse({"id": pi.id, "key": vk.id, "kind": kind(vk)})


def kind(vk: object) -> str:
    return "async" if isinstance(vk, VaultKey) else type(vk).__module__


async def apay(request: VaultKeyRequest) -> JsonResponse:
    ran("apay")
    vk = request.vault_key
    pi = await vk.stripe.payment_intents.create(amount=int(request.GET["amount"]), currency="usd")
    return JsonResponse({"id": pi.id, "key": vk.id, "kind": kind(vk)})


def checkout(request: SyncVaultKeyRequest) -> JsonResponse:
    """The docs' flow: the view pays with its key, then queues work that gets its own."""
    from tests.integrations.celery_app import charge  # the worker's tasks; needs a broker

    vk = request.vault_key
    pi = vk.stripe.payment_intents.create(amount=1000, currency="usd")
    queued = charge.delay(500)  # plain data on the queue; the task issues its own key
    return JsonResponse({"id": pi.id, "key": vk.id, "task": queued.id})


def go_file(request: HttpRequest) -> Path:
    return Path(settings.MARKERS) / request.GET["go"]


def stream(request: SyncVaultKeyRequest) -> StreamingHttpResponse:
    vk = request.vault_key
    go = go_file(request)

    def lines() -> Iterator[str]:
        yield f"{vk.id}\n"
        deadline = time.monotonic() + STREAM_WAIT
        while not go.exists() and time.monotonic() < deadline:
            yield "-\n"  # a client gone away shows here, when the server writes
            time.sleep(0.05)
        pi = vk.stripe.payment_intents.create(amount=300, currency="usd")
        yield f"{pi.id}\n"

    return StreamingHttpResponse(lines(), content_type="text/plain")


async def astream(request: VaultKeyRequest) -> StreamingHttpResponse:
    vk = request.vault_key
    go = go_file(request)

    async def lines() -> AsyncIterator[str]:
        yield f"{vk.id}\n"
        deadline = time.monotonic() + STREAM_WAIT
        while not go.exists() and time.monotonic() < deadline:
            yield "-\n"
            await asyncio.sleep(0.05)
        pi = await vk.stripe.payment_intents.create(amount=300, currency="usd")
        yield f"{pi.id}\n"

    return StreamingHttpResponse(lines(), content_type="text/plain")
