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
from typing import TYPE_CHECKING, Any

import attrs

from keybrake._client import Keybrake
from keybrake._key_spec import Cap, Duration, KeySpec
from keybrake._vault_key import KeyOptions, VaultKey, resolve_spec

if TYPE_CHECKING:
    from typing_extensions import Unpack

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
    vendor: KeySpec | str,
    endpoints: list[str] | tuple[str, ...] | None = None,
    *,
    cap: Cap | None = None,
    ttl: Duration | None = None,
    label: str | None = None,
    **key_options: Unpack[KeyOptions],
) -> VaultKey:
    """A :class:`keybrake.VaultKey` for the running job, to use as ``async with``.

    It uses the worker's client from ``ctx[CLIENT]`` when there is one (see
    :func:`keybrake_startup`), is labelled ``arq:<job id>`` unless a label is given, and
    carries the job's id and try number in its metadata, so the audit log ties each call
    to a job run. A retried job gets a new key on each try.

    Args:
        ctx: the job's context, as arq passes it.
        vendor: a :class:`keybrake.KeySpec`, or the vendor, followed by ``endpoints``,
            ``cap`` and ``ttl``: the endpoint patterns the key allows, its daily spend cap
            in USD and its time to live (keepalive extends it while the job runs).
        label: the key's label (without a spec).
        **key_options: with a vendor, any other :class:`keybrake.VaultKey` option; with a
            spec, only ``client``, ``on_lost``, ``cancel_on_loss``, ``token``, ``api_url``
            and ``proxy_url``.

    Raises:
        ConfigurationError: a bad key option.
        TypeError: an unknown option, or a spec together with the fields it holds.
    """
    client = ctx.get(CLIENT)
    if "client" not in key_options and isinstance(client, Keybrake):
        key_options["client"] = client
    key_spec, run = resolve_spec(
        vendor, endpoints, cap=cap, ttl=ttl, label=label, options=key_options
    )
    job_id = str(ctx.get("job_id", ""))
    job_metadata = {"arq_job_id": job_id, "arq_job_try": str(ctx.get("job_try", 1))}
    job_spec = attrs.evolve(
        key_spec,
        label=key_spec.label or f"arq:{job_id}",
        metadata={**job_metadata, **key_spec.metadata},
    )
    return VaultKey.from_spec(job_spec, **run)
