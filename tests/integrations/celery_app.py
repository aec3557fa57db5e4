"""The Celery app of tests/integrations/test_celery.py, run by real ``celery worker`` processes.

Configured from the environment: ``CELERY_BROKER_URL``, ``CELERY_RESULT_BACKEND``,
``KB_CELERY_PREFIX`` (the Redis key prefix and queue name of one test run) and ``MARKERS``
(a folder where tasks note the keys they got, so tests can ask keybrake about them).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from celery import Celery, Task

from keybrake import vault_key
from keybrake.integrations.celery import task_vault_key
from keybrake.sync import VaultKey

ENDPOINTS = ["/v1/payment_intents", "/v1/payment_intents/*"]
PREFIX = os.environ.get("KB_CELERY_PREFIX", "keybrake-test:")

app = Celery("keybrake_tests")
app.conf.update(
    broker_url=os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0"),
    result_backend=os.environ.get("CELERY_RESULT_BACKEND", "redis://127.0.0.1:6379/0"),
    broker_transport_options={"global_keyprefix": PREFIX},
    result_backend_transport_options={"global_keyprefix": PREFIX},
    task_default_queue=f"{PREFIX}tasks",
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)

# The annotations stay strings here (celery's Task can't be subscripted at run time), so
# the key's parameter is annotated with the bare name ``VaultKey``, which @vault_key reads.


def note(task: Task[Any, Any], vk: VaultKey) -> None:
    """Tell the test which key this run got (and, for the broker check, its token)."""
    folder = Path(os.environ["MARKERS"]) / str(task.request.id)
    folder.mkdir(exist_ok=True)
    # The test polls for ``*.key``: it must never see one half written (an empty key id
    # asks keybrake for ``/v1/keys/``). The token goes first, so a key's token is there too.
    publish(folder / f"{task.request.retries}.token", vk.token)
    publish(folder / f"{task.request.retries}.key", vk.id)


def publish(path: Path, text: str) -> None:
    """Write ``path`` whole or not at all, as a reader polling for it sees it."""
    part = path.with_name(f"{path.name}.part")
    part.write_text(text)
    os.replace(part, path)


@app.task(bind=True)
@vault_key("stripe", ENDPOINTS, cap=50, ttl="1m")
def charge(self: Task[Any, Any], amount: int, vk: VaultKey) -> dict[str, str]:
    note(self, vk)
    pi = vk.stripe.payment_intents.create(amount=amount, currency="usd")
    return {"payment_intent": pi.id, "key": vk.id}


@app.task(bind=True)
@vault_key("stripe", ENDPOINTS, cap=50, ttl="1m")
def fail(self: Task[Any, Any], vk: VaultKey) -> None:
    note(self, vk)
    raise ValueError("the task failed")


@app.task(bind=True, max_retries=1)
@vault_key("stripe", ENDPOINTS, cap=50, ttl="1m")
def retry_once(self: Task[Any, Any], vk: VaultKey) -> str:
    note(self, vk)
    if self.request.retries == 0:
        raise self.retry(countdown=0)
    return vk.id


@app.task(bind=True)
def labelled(self: Task[Any, Any], amount: int) -> str:
    with task_vault_key(self, "stripe", ENDPOINTS, cap=50, ttl="1m") as vk:
        note(self, vk)
        return vk.stripe.payment_intents.create(amount=amount, currency="usd").id


@app.task(bind=True, soft_time_limit=1)
@vault_key("stripe", ENDPOINTS, cap=50, ttl="1m")
def soft_limited(self: Task[Any, Any], vk: VaultKey) -> None:
    note(self, vk)
    time.sleep(30)


@app.task(bind=True)
@vault_key("stripe", ENDPOINTS, cap=50, ttl="1m")
def hang(self: Task[Any, Any], vk: VaultKey) -> None:
    note(self, vk)
    time.sleep(30)


@app.task(bind=True, time_limit=1)
@vault_key("stripe", ENDPOINTS, cap=50, ttl="3s", keepalive=False)
def hard_limited(self: Task[Any, Any], vk: VaultKey) -> None:
    note(self, vk)
    time.sleep(30)
