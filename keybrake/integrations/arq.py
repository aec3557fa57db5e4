"""arq: a vault key issued inside each job, never carried across the queue.

A job's arguments go through Redis (pickled), so they must never hold a key. Issue the key
in the job instead, when it runs, and let it end with the job::

    from keybrake.integrations.arq import job_vault_key, keybrake_shutdown, keybrake_startup

    async def charge(ctx, amount: int) -> str:
        async with job_vault_key(ctx, "stripe", ["/v1/payment_intents"], cap=50, ttl="2m") as vk:
            return (await vk.stripe.payment_intents.create(amount=amount, currency="usd")).id

    class WorkerSettings:
        functions = [charge]
        on_startup = keybrake_startup      # one keybrake client per worker
        on_shutdown = keybrake_shutdown

:func:`keybrake.vault_key` works on a job function too (``ctx`` stays its first
parameter). This module doesn't import arq; ``pip install 'keybrake[arq]'`` installs it.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from datetime import timedelta
from decimal import Decimal
from typing import Any

from keybrake._client import Keybrake
from keybrake._vault_key import VaultKey

__all__ = ["CLIENT", "job_vault_key", "keybrake_shutdown", "keybrake_startup"]

#: The key of the worker's shared :class:`keybrake.Keybrake` client in a job's ``ctx``.
CLIENT = "keybrake"


async def keybrake_startup(ctx: MutableMapping[str, Any]) -> None:
    """An arq ``on_startup`` hook: one :class:`keybrake.Keybrake` client for the worker.

    It reads ``KEYBRAKE_TOKEN`` and ``KEYBRAKE_URL`` (or the API and proxy URLs) from the
    worker's environment. To configure it otherwise, put your own client in
    ``ctx[CLIENT]`` in your own hook instead.

    Args:
        ctx: the worker's context.
    """
    ctx[CLIENT] = Keybrake()


async def keybrake_shutdown(ctx: MutableMapping[str, Any]) -> None:
    """An arq ``on_shutdown`` hook: close the client :func:`keybrake_startup` made.

    Args:
        ctx: the worker's context.
    """
    client = ctx.pop(CLIENT, None)
    if isinstance(client, Keybrake):
        await client.close()


def job_vault_key(
    ctx: MutableMapping[str, Any],
    vendor: str,
    endpoints: list[str] | tuple[str, ...],
    *,
    cap: int | str | Decimal,
    ttl: str | int | timedelta,
    label: str | None = None,
    **key_options: Any,
) -> VaultKey:
    """A :class:`keybrake.VaultKey` for the running job, to use as ``async with``.

    It uses the worker's client from ``ctx[CLIENT]`` when there is one (see
    :func:`keybrake_startup`), is labelled ``arq:<job id>`` unless ``label`` is given, and
    carries the job's id and try number in its metadata, so the audit log ties each call
    to a job run. A retried job gets a new key on each try.

    Args:
        ctx: the job's context, as arq passes it.
        vendor: ``"stripe"`` or ``"twilio"``.
        endpoints: the endpoint patterns the key allows.
        cap: daily spend cap in USD.
        ttl: the key's time to live (keepalive extends it while the job runs).
        label: the key's label.
        **key_options: any other :class:`keybrake.VaultKey` option.

    Raises:
        ConfigurationError: a bad key option.
    """
    job_id = str(ctx.get("job_id", ""))
    metadata = {"arq_job_id": job_id, "arq_job_try": str(ctx.get("job_try", 1))}
    metadata.update(key_options.pop("metadata", None) or {})
    client = ctx.get(CLIENT)
    if isinstance(client, Keybrake):
        key_options.setdefault("client", client)
    return VaultKey(
        vendor,
        endpoints,
        cap,
        ttl,
        label=label or f"arq:{job_id}",
        metadata=metadata,
        **key_options,
    )
