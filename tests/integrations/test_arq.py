"""arq: the key is issued inside the job, on the worker, never put on the queue.

Uses the machine's Redis at 127.0.0.1:6379, with a queue of its own per test.
"""

from __future__ import annotations

import uuid
import warnings
from collections.abc import AsyncIterator, Sequence
from typing import Any

import attrs
import pytest
from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from arq.constants import job_key_prefix
from arq.jobs import Job
from arq.typing import StartupShutdown
from arq.worker import Worker, func

from keybrake import Keybrake, KeybrakeUnavailable, VaultKey, vault_key
from keybrake.integrations.arq import CLIENT, job_vault_key, keybrake_shutdown, keybrake_startup
from tests.conftest import SEED_ENDPOINTS, RunningServer
from tests.integrations.conftest import keys_issued, run_example
from tests.services import require

pytestmark = pytest.mark.redis

REDIS_URL = "redis://127.0.0.1:6379/0"
#: arq's Worker.close() calls redis-py's deprecated close() (arq 0.28 with redis-py 5).
ARQ_CLOSE_WARNING = "ignore:Call to deprecated close:DeprecationWarning"


@attrs.frozen
class Queue:
    pool: ArqRedis
    name: str

    async def enqueue(self, function: str, *args: Any) -> Job:
        job = await self.pool.enqueue_job(function, *args, _queue_name=self.name)
        assert job is not None
        return job

    async def work(
        self,
        functions: Sequence[Any],
        *,
        on_startup: StartupShutdown | None = None,
        on_shutdown: StartupShutdown | None = None,
    ) -> Worker:
        """Run a worker until the queue is empty (arq's burst mode)."""
        worker = Worker(
            functions=list(functions),
            redis_settings=RedisSettings.from_dsn(REDIS_URL),
            queue_name=self.name,
            burst=True,
            handle_signals=False,
            poll_delay=0.01,
            keep_result=30,
            max_tries=1,
            on_startup=on_startup,
            on_shutdown=on_shutdown,
        )
        try:
            await worker.main()
        finally:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "Call to deprecated close", DeprecationWarning)
                await worker.close()
        return worker


@pytest.fixture
async def queue() -> AsyncIterator[Queue]:
    require("redis")
    try:
        pool = await create_pool(RedisSettings.from_dsn(REDIS_URL), retry=0)
    except Exception as exc:  # pragma: no cover - depends on the machine
        pytest.fail(f"these tests need Redis at {REDIS_URL} ({exc}); see .ci/run")
    yield Queue(pool, f"keybrake-test:{uuid.uuid4().hex}")
    await pool.aclose()


async def charge(ctx: dict[str, Any], amount: int) -> dict[str, str]:
    async with job_vault_key(ctx, "stripe", SEED_ENDPOINTS, cap=50, ttl="1m") as vk:
        pi = await vk.stripe.payment_intents.create(amount=amount, currency="usd")
        return {"payment_intent": pi.id, "key": vk.id}


async def test_the_job_issues_its_key_on_the_worker(
    queue: Queue, server: RunningServer, kb: Keybrake, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEYBRAKE_URL", server.url)
    monkeypatch.setenv("KEYBRAKE_TOKEN", server.admin_token)
    job = await queue.enqueue("charge", 2000)

    # On the queue: the function's name and its arguments, and no key at all.
    queued = await queue.pool.get(job_key_prefix + job.job_id)
    assert queued is not None
    assert b"vault_key_" not in queued
    assert b"vk_" not in queued
    assert await keys_issued(kb) == []

    worker = await queue.work([charge], on_startup=keybrake_startup, on_shutdown=keybrake_shutdown)
    result = await job.result(timeout=5, poll_delay=0.01)

    assert worker.jobs_complete == 1
    assert result["payment_intent"].startswith("pi_")
    info = await kb.get_key(result["key"])
    assert info.status == "revoked"
    assert info.label == f"arq:{job.job_id}"
    assert info.metadata == {"arq_job_id": job.job_id, "arq_job_try": "1"}
    assert CLIENT not in worker.ctx  # keybrake_shutdown closed and dropped the client


async def test_vault_key_decorates_a_job_function(queue: Queue, kb: Keybrake) -> None:
    @vault_key("stripe", SEED_ENDPOINTS, cap=50, ttl="1m", client=kb, label="refunds-job")
    async def charge_decorated(ctx: dict[str, Any], amount: int, vk: VaultKey) -> str:
        pi = await vk.stripe.payment_intents.create(amount=amount, currency="usd")
        return f"{pi.id} in job {ctx['job_id']}"

    job = await queue.enqueue("charge_decorated", 700)
    await queue.work([func(charge_decorated, name="charge_decorated")])

    assert (await job.result(timeout=5, poll_delay=0.01)).endswith(f"in job {job.job_id}")
    [key] = await keys_issued(kb)
    assert key.label == "refunds-job"
    assert key.status == "revoked"


async def test_issuance_down_fails_the_job_not_the_worker(
    queue: Queue, dead_kb: Keybrake, kb: Keybrake
) -> None:
    async def dead_client(ctx: dict[Any, Any]) -> None:
        ctx[CLIENT] = dead_kb

    async def ping(ctx: dict[str, Any]) -> str:
        return "pong"

    failing = await queue.enqueue("charge", 2000)
    after = await queue.enqueue("ping")
    worker = await queue.work([charge, func(ping, name="ping")], on_startup=dead_client)

    with pytest.raises(KeybrakeUnavailable, match="can't reach keybrake"):
        await failing.result(timeout=5, poll_delay=0.01)
    assert await after.result(timeout=5, poll_delay=0.01) == "pong"
    assert (worker.jobs_failed, worker.jobs_complete) == (1, 1)
    assert await keys_issued(kb) == []


async def test_the_docs_example_runs(server: RunningServer, kb: Keybrake) -> None:
    out = await run_example(
        server, "arq_worker.py", warnings=(ARQ_CLOSE_WARNING,), REDIS_URL=REDIS_URL
    )
    assert "job charged pi_" in out
    [key] = await keys_issued(kb)
    assert key.status == "revoked"
    assert key.label.startswith("arq:")
