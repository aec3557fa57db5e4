"""arq: a vault key issued inside each job, on the worker.

Needs `pip install 'keybrake[arq]'`, Redis (REDIS_URL, default redis://127.0.0.1:6379), a
running keybrake server, and KEYBRAKE_URL and KEYBRAKE_TOKEN (see the quickstart) in the
worker's environment. In production, run the worker with `arq arq_worker.WorkerSettings`;
here `main()` enqueues one job and runs a worker until the queue is empty.
"""

import asyncio
import os
import uuid
from typing import Any

from arq import create_pool
from arq.connections import RedisSettings
from arq.worker import create_worker

from keybrake.integrations.arq import job_vault_key, keybrake_shutdown, keybrake_startup


async def charge(ctx: dict[str, Any], customer: str, amount: int) -> str:
    # The job gets plain data from the queue and issues its own key when it runs.
    async with job_vault_key(
        ctx, "stripe", ["/v1/payment_intents"], cap=50, ttl="2m", metadata={"customer": customer}
    ) as vk:
        pi = await vk.stripe.payment_intents.create(amount=amount, currency="usd")
        return pi.id
    # Here the key is revoked, whether the job succeeded, failed or was cancelled.


class WorkerSettings:
    functions = [charge]  # noqa: RUF012
    on_startup = keybrake_startup  # one keybrake client for the worker's jobs
    on_shutdown = keybrake_shutdown
    redis_settings = RedisSettings.from_dsn(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379"))
    queue_name = f"keybrake-example-{uuid.uuid4().hex[:8]}"  # a queue of its own


async def main() -> None:
    redis = await create_pool(WorkerSettings.redis_settings)
    job = await redis.enqueue_job("charge", "cus_42", 2000, _queue_name=WorkerSettings.queue_name)
    assert job is not None

    worker = create_worker(WorkerSettings, burst=True, handle_signals=False, poll_delay=0.05)
    await worker.main()
    await worker.close()
    print(f"job charged {await job.result(timeout=10)}")
    await redis.aclose()


if __name__ == "__main__":
    asyncio.run(main())
