"""Celery: a vault key issued inside each task run, on the worker, never sent through the broker.

A task's arguments travel through the broker (Redis, RabbitMQ), where anyone who can read
the queue can read them. Enqueue plain data and issue the key when the task runs;
``@vault_key`` under ``@app.task`` does that, one fresh key per run::

    from celery import Celery
    from keybrake import sync, vault_key

    app = Celery("shop", broker="redis://127.0.0.1:6379/0")

    @app.task
    @vault_key("stripe", ["/v1/payment_intents"], cap=50, ttl="2m")
    def charge(amount: int, vk: sync.VaultKey) -> str:
        return vk.stripe.payment_intents.create(amount=amount, currency="usd").id

The key is revoked however the run ends: success, exception, ``self.retry()`` (the next run
gets a new key), a soft time limit, and a run Celery terminates (the prefork pool's
children turn SIGTERM into ``SystemExit``, so ``with`` blocks run). Only a SIGKILL (a hard
time limit whose SIGTERM exit takes longer than 0.1 s) skips it: the key then lives until
its TTL, which keepalive no longer extends.

:func:`task_vault_key` is the same key as a ``with`` block, labelled with the task's id.
Needs ``pip install 'keybrake[celery]'``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import attrs

from keybrake._key_spec import Cap, Duration, KeySpec
from keybrake._vault_key import BaseRunOptions, SpecOptions, resolve_spec
from keybrake.integrations._extras import missing_extra
from keybrake.sync import Keybrake as SyncKeybrake
from keybrake.sync import RunOptions as SyncRunOptions
from keybrake.sync import VaultKey as SyncVaultKey

try:
    from celery import Task
except ImportError as exc:
    raise missing_extra("celery", "Celery", "celery") from exc

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["TaskKeyOptions", "task_vault_key"]


class TaskKeyOptions(BaseRunOptions, SpecOptions, total=False):
    """The keyword options of :func:`task_vault_key`: a ``keybrake.sync.VaultKey``'s."""

    client: SyncKeybrake | None


def task_vault_key(
    task: Task[Any, Any],
    vendor: KeySpec | str,
    endpoints: list[str] | tuple[str, ...] | None = None,
    *,
    cap: Cap | None = None,
    ttl: Duration | None = None,
    label: str | None = None,
    **key_options: Unpack[TaskKeyOptions],
) -> SyncVaultKey:
    """A :class:`keybrake.sync.VaultKey` for the running task, to use as ``with``.

    Call it in a bound task (``@app.task(bind=True)``) with ``self``. The key is labelled
    ``celery:<task id>`` unless a label is given, and its metadata holds the task's name,
    id and retry count (``celery_task``, ``celery_task_id``, ``celery_retries``), so the
    audit log ties each vendor call to one run of one task. A retried task gets a new
    key on each run.

    Args:
        task: the running task (``self`` in a bound task).
        vendor: a :class:`keybrake.KeySpec`, or the vendor, followed by ``endpoints``,
            ``cap`` and ``ttl``.
        label: the key's label (without a spec).
        **key_options: with a vendor, any other :class:`keybrake.sync.VaultKey` option
            (``client`` is a :class:`keybrake.sync.Keybrake` to share across runs); with a
            spec, only ``client``, ``on_lost``, ``token``, ``api_url`` and ``proxy_url``.

    Raises:
        ConfigurationError: a bad key option.
        TypeError: an unknown option, or a spec together with the fields it holds.
    """
    key_spec, run = resolve_spec(
        vendor, endpoints, cap=cap, ttl=ttl, label=label, options=key_options
    )
    request = task.request
    task_id = str(request.id or "")
    run_metadata = {
        "celery_task": str(task.name),
        "celery_task_id": task_id,
        "celery_retries": str(request.retries or 0),
    }
    run_spec = attrs.evolve(
        key_spec,
        label=key_spec.label or f"celery:{task_id}",
        metadata={**run_metadata, **key_spec.metadata},
    )
    return SyncVaultKey.from_spec(run_spec, **cast(SyncRunOptions, run))
