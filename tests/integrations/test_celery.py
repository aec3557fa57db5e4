"""Celery: a key per task run, issued on a real worker, never carried by the broker.

Each worker is a ``celery worker`` subprocess (prefork with two children, or solo) on
Redis (127.0.0.1:6379) or RabbitMQ (127.0.0.1:5672), started once per module and kind,
with a Redis key prefix and queue of its own; keybrake is a ``keybrake serve`` subprocess
with localstripe as Stripe.
"""

from __future__ import annotations

import base64
import gc
import json
import socket
import time
import urllib.request
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs
import pytest
import redis
from celery import Celery
from celery.result import AsyncResult

from keybrake.sync import Keybrake
from tests.integrations.processes import (
    BIN,
    KeybrakeProcess,
    answers,
    clean_env,
    free_port,
    keybrake_server,
    running,
)
from tests.services import require

pytestmark = pytest.mark.redis  # every worker keeps its results in Redis

REDIS_URL = "redis://127.0.0.1:6379/0"
RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"
APP = "tests.integrations.celery_app"


@attrs.frozen
class Worker:
    """A running worker, and a client app that sends it tasks."""

    pool: str
    broker: str
    prefix: str
    markers: Path
    app: Celery
    env: dict[str, str]

    def send(self, name: str, *args: Any, **options: Any) -> AsyncResult[Any]:
        return self.app.send_task(
            f"{APP}.{name}", args=args, queue=f"{self.prefix}tasks", **options
        )

    def keys(self, result: AsyncResult[Any]) -> list[str]:
        """The ids of the keys the task's runs got, first run first."""
        folder = self.markers / result.id
        runs = sorted(folder.glob("*.key"), key=lambda p: int(p.stem)) if folder.exists() else []
        return [p.read_text() for p in runs]

    def wait_for_keys(self, result: AsyncResult[Any], count: int = 1) -> list[str]:
        deadline = time.monotonic() + 15
        while len(keys := self.keys(result)) < count:
            assert time.monotonic() < deadline, f"task {result.id} never got {count} key(s)"
            time.sleep(0.02)
        return keys


def rabbitmq_is_up() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=1).close()
    except OSError:
        return False
    return True


@pytest.fixture(scope="module")
def keybrake(
    tmp_path_factory: pytest.TempPathFactory, localstripe_url: str
) -> Iterator[KeybrakeProcess]:
    with keybrake_server(tmp_path_factory.mktemp("keybrake"), localstripe_url) as process:
        yield process


@pytest.fixture(
    scope="module",
    params=[
        ("prefork", "redis"),
        ("solo", "redis"),
        pytest.param(("prefork", "rabbitmq"), marks=pytest.mark.rabbitmq),
    ],
    ids=lambda p: "-".join(p),
)
def worker(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    keybrake: KeybrakeProcess,
) -> Iterator[Worker]:
    pool, broker = request.param
    require("redis")
    if broker == "rabbitmq":
        require("rabbitmq")
        if not rabbitmq_is_up():  # pragma: no cover - depends on the machine
            pytest.fail("these tests need RabbitMQ at 127.0.0.1:5672; see .ci/run")
    prefix = f"kbtest-{uuid.uuid4().hex[:12]}:"
    folder = tmp_path_factory.mktemp(f"celery-{pool}-{broker}")
    markers = folder / "markers"
    markers.mkdir()
    broker_url = RABBITMQ_URL if broker == "rabbitmq" else REDIS_URL
    env = clean_env(
        CELERY_BROKER_URL=broker_url,
        CELERY_RESULT_BACKEND=REDIS_URL,
        KB_CELERY_PREFIX=prefix,
        MARKERS=str(markers),
        KEYBRAKE_URL=keybrake.url,
        KEYBRAKE_TOKEN=keybrake.admin_token,
    )
    log = folder / "worker.log"
    command = [
        str(BIN / "celery"), "-A", APP, "worker", f"--pool={pool}", "--concurrency=2",
        "--hostname", f"{prefix}@%h", "--queues", f"{prefix}tasks", "--loglevel=info",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip
    client = Celery("keybrake_tests_client")
    client.conf.update(
        broker_url=broker_url,
        result_backend=REDIS_URL,
        broker_transport_options={"global_keyprefix": prefix},
        result_backend_transport_options={"global_keyprefix": prefix},
        broker_connection_retry_on_startup=True,
    )
    try:
        with running(command, env=env, log=log, ready=lambda: b" ready." in log.read_bytes()):
            yield Worker(pool, broker, prefix, markers, client, env)
    finally:
        # Celery's Redis backend gives its client a pool of its own, which closing the
        # client leaves open: its result listener and pool are closed here, or their sockets
        # are left to the garbage collector (a ResourceWarning in a later test). A result
        # object unsubscribes when it is collected, reconnecting if it must, and results live
        # in reference cycles: collect them while the listener is open, then leave the
        # listener nothing to reconnect with, for any result that outlives the worker.
        gc.collect()
        backend: Any = client.backend
        backend.result_consumer.stop()
        backend.result_consumer._pubsub = None
        backend.client.close()
        backend.client.connection_pool.disconnect()
        client.close()
        store = redis.Redis.from_url(REDIS_URL)
        for key in store.scan_iter(match=f"{prefix}*"):
            store.delete(key)
        store.close()


@pytest.fixture
def kb(keybrake: KeybrakeProcess) -> Iterator[Keybrake]:
    with Keybrake(keybrake.admin_token, api_url=keybrake.url, proxy_url=keybrake.url) as client:
        yield client


def outcome(result: AsyncResult[Any], timeout: float = 15.0) -> Any:
    """``result.get()``, by polling the result's key until it is there.

    Celery's own wait listens on Redis pub/sub; a CI run once hung past its 90 minutes in a
    test that waited that way. A poll has a deadline nothing can skip, and a result that is
    ready is answered from what the poll read, without pub/sub.
    """
    deadline = time.monotonic() + timeout
    while not result.ready():
        assert time.monotonic() < deadline, f"task {result.id} is still {result.state}"
        time.sleep(0.02)
    return result.get(timeout=1)


def wait_for_status(kb: Keybrake, key_id: str, *statuses: str, timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        info = kb.get_key(key_id)
        if info.status in statuses or time.monotonic() > deadline:
            assert info.status in statuses, f"{key_id} is {info.status}, not {statuses}"
            return info
        time.sleep(0.02)


def test_each_run_gets_a_fresh_key_revoked_on_success(worker: Worker, kb: Keybrake) -> None:
    first = worker.send("charge", 2000)
    second = worker.send("charge", 700)
    one, two = outcome(first), outcome(second)
    assert one["payment_intent"].startswith("pi_")
    assert one["key"] != two["key"]
    for result, spent in [(one, 20), (two, 7)]:
        info = kb.get_key(result["key"])
        assert info.status == "revoked"
        assert info.spent_today_usd == spent
        assert info.label == "charge"


def test_an_exception_revokes_the_key(worker: Worker, kb: Keybrake) -> None:
    result = worker.send("fail")
    with pytest.raises(ValueError, match="the task failed"):
        outcome(result)
    [key_id] = worker.keys(result)
    assert kb.get_key(key_id).status == "revoked"


def test_a_retry_revokes_that_runs_key_and_the_next_run_gets_another(
    worker: Worker, kb: Keybrake
) -> None:
    result = worker.send("retry_once")
    last = outcome(result)
    first_key, second_key = worker.keys(result)
    assert last == second_key != first_key
    assert kb.get_key(first_key).status == "revoked"
    assert kb.get_key(second_key).status == "revoked"


def test_task_vault_key_labels_the_key_with_the_run(worker: Worker, kb: Keybrake) -> None:
    result = worker.send("labelled", 500)
    assert outcome(result).startswith("pi_")
    [key_id] = worker.keys(result)
    info = kb.get_key(key_id)
    assert info.status == "revoked"
    assert info.label == f"celery:{result.id}"
    assert info.metadata == {
        "celery_task": f"{APP}.labelled",
        "celery_task_id": result.id,
        "celery_retries": "0",
    }


def prefork_only(worker: Worker) -> None:
    if worker.pool != "prefork":
        pytest.skip("time limits and terminate need a pool with child processes")


def test_a_soft_time_limit_revokes_the_key(worker: Worker, kb: Keybrake) -> None:
    prefork_only(worker)
    result = worker.send("soft_limited")
    [key_id] = worker.wait_for_keys(result)
    assert kb.get_key(key_id).status == "active"
    with pytest.raises(Exception, match="SoftTimeLimitExceeded"):
        outcome(result)
    assert kb.get_key(key_id).status == "revoked"


def test_a_terminated_task_revokes_its_key(worker: Worker, kb: Keybrake) -> None:
    prefork_only(worker)
    result = worker.send("hang")
    [key_id] = worker.wait_for_keys(result)
    assert kb.get_key(key_id).status == "active"
    worker.app.control.revoke(result.id, terminate=True)
    wait_for_status(kb, key_id, "revoked", timeout=10)


def test_a_hard_time_limit_leaves_the_key_to_its_ttl_at_most(worker: Worker, kb: Keybrake) -> None:
    prefork_only(worker)
    result = worker.send("hard_limited")
    [key_id] = worker.wait_for_keys(result)
    with pytest.raises(Exception, match="TimeLimitExceeded"):
        outcome(result)
    # Revoked on SIGTERM if that was quick enough, else expired by its 3 s TTL.
    wait_for_status(kb, key_id, "revoked", "expired", timeout=6)


def raw_messages(prefix: str) -> list[bytes]:
    """Every value stored under ``prefix`` in Redis: queued messages, results, the rest."""
    store: Any = redis.Redis.from_url(REDIS_URL)  # its stubs mix in the asyncio client's types
    try:
        found: list[bytes] = []
        for key in store.scan_iter(match=f"{prefix}*"):
            kind = store.type(key)
            if kind == b"list":
                found += store.lrange(key, 0, -1)
            elif kind == b"string":
                found.append(store.get(key) or b"")
            elif kind == b"hash":
                found += list(store.hgetall(key).values())
            elif kind == b"zset":
                found += [member for member, _ in store.zrange(key, 0, -1, withscores=True)]
            elif kind == b"set":
                found += list(store.smembers(key))
        return found
    finally:
        store.close()


def readable(raw: bytes) -> bytes:
    """A Redis message with its base64 body decoded, to search it as it would be read."""
    try:
        envelope = json.loads(raw)
        return raw + base64.b64decode(envelope["body"])
    except (ValueError, KeyError, TypeError):
        return raw


def test_no_secret_goes_through_the_broker(worker: Worker, kb: Keybrake, tmp_path: Path) -> None:
    if worker.broker != "redis":
        pytest.skip("Redis is where this test reads the raw messages")
    # A queue no worker reads: the message waits there as the broker holds it.
    parked = worker.app.send_task(f"{APP}.charge", args=(1234,), queue=f"{worker.prefix}parked")
    [message] = [m for m in map(readable, raw_messages(worker.prefix)) if b"1234" in m]
    assert parked.id.encode() in message
    assert b"vault_key_" not in message
    assert b"kb_admin" not in message
    assert kb.config.token is not None
    assert kb.config.token.encode() not in message

    result = worker.send("charge", 900)
    outcome(result)
    token = (worker.markers / result.id / "0.token").read_text()
    assert token.startswith("vault_key_")
    everything = b"".join(map(readable, raw_messages(worker.prefix)))
    assert result.id.encode() in everything  # the result is there, with its key id
    assert token.encode() not in everything
    assert kb.config.token.encode() not in everything


def test_a_django_view_and_the_task_it_queues_have_keys_of_their_own(
    worker: Worker, kb: Keybrake, tmp_path: Path
) -> None:
    if (worker.pool, worker.broker) != ("prefork", "redis"):
        pytest.skip("one worker is enough for the flow")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**worker.env, "DJANGO_SETTINGS_MODULE": "tests.integrations.django_project.settings"}
    command = [
        str(BIN / "uvicorn"), "tests.integrations.django_project.asgi:application",
        "--host", "127.0.0.1", "--port", str(port), "--lifespan", "off", "--log-level", "warning",
    ]  # fmt: skip
    with (
        running(command, env=env, log=tmp_path / "uvicorn.log", ready=answers(url)),
        urllib.request.urlopen(f"{url}/tools/checkout", timeout=30) as response,
    ):
        view = json.loads(response.read())
    task: dict[str, str] = outcome(AsyncResult(view["task"], app=worker.app))
    assert task["key"] != view["key"]
    view_key, task_key = kb.get_key(view["key"]), kb.get_key(task["key"])
    assert (view_key.status, task_key.status) == ("revoked", "revoked")
    assert (view_key.label, task_key.label) == ("GET /tools/checkout", "charge")
    assert (view_key.spent_today_usd, task_key.spent_today_usd) == (Decimal(10), Decimal(5))
