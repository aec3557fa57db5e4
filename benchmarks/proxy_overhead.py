"""What the keybrake proxy adds to a vendor call, against a bare pass-through proxy.

One run starts, each in its own process, all on 127.0.0.1:

- a fast local upstream that answers ``POST /v1/payment_intents`` with a small JSON body;
- a bare aiohttp pass-through proxy (no policy, no store);
- ``keybrake serve`` (SQLite, full policy: key lookup, allowlist, pricing, atomic reservation,
  settlement, audit log);
- a load generator, also a separate process, that sends the same priced POST through each.

It prints p50/p99 latency added over calling the upstream directly, at 1 and 32 connections,
throughput, and the ratios keybrake/bare; then the round trip of ``async with VaultKey``
(issue + revoke). Targets: added latency within 1.3x of the bare proxy's, throughput at least
0.75x of it. Direct, bare and keybrake take turns for ``--rounds`` rounds and each figure is
the median over them. Every process runs on the same event loop (``--loop``; uvloop when
installed). Both proxies serve on aiohttp's web server; the bare one forwards with aiohttp's
client, as anyone would write one.

    python benchmarks/proxy_overhead.py [--requests 2000] [--rounds 3] [--loop auto]
        [--store sqlite|postgresql://...] [--audit batched|durable]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
from aiohttp import web

HERE = Path(__file__).resolve()
BODY = "amount=100&currency=usd"
INTENT = {"id": "pi_bench", "object": "payment_intent", "amount": 100, "currency": "usd"}


def new_loop(choice: str) -> asyncio.AbstractEventLoop:
    """The event loop every role runs on, so that all of them run on the same stack."""
    if choice == "asyncio":
        return asyncio.new_event_loop()
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def loop_name(choice: str) -> str:
    loop = new_loop(choice)
    try:
        return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
    finally:
        loop.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- the roles, each run in its own process ---------------------------------------------------


def run_upstream(port: int, loop: str) -> None:
    payload = json.dumps(INTENT).encode()

    async def intent(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=payload, content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", intent)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, loop=new_loop(loop))


def run_bare_proxy(port: int, upstream: str, loop: str) -> None:
    """Forward everything under /stripe/ to the upstream: what any reverse proxy does."""

    async def lifecycle(app: web.Application) -> object:
        app[SESSION] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        yield
        await app[SESSION].close()

    async def forward(request: web.Request) -> web.Response:
        body = await request.read()
        headers = {
            "Content-Type": request.headers.get("Content-Type", ""),
            "Authorization": "Bearer sk_test_bench",
        }
        path = request.raw_path[len("/stripe") :]
        async with request.app[SESSION].request(
            request.method, upstream + path, data=body, headers=headers
        ) as response:
            payload = await response.read()
            return web.Response(
                status=response.status,
                body=payload,
                content_type=response.content_type,
            )

    app = web.Application()
    app.cleanup_ctx.append(lifecycle)  # type: ignore[arg-type]
    app.router.add_route("*", "/stripe/{tail:.*}", forward)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, loop=new_loop(loop))


#: The event loop every process runs on (``--loop``).
LOOP = "auto"
#: keybrake's audit mode (``--audit``): ``batched``, or ``durable`` (answers wait for it).
AUDIT = "batched"

SESSION: web.AppKey[aiohttp.ClientSession] = web.AppKey("session", aiohttp.ClientSession)


def run_load(urls: list[str], token: str, connections: int, requests: int, loop: str) -> None:
    """Send ``requests`` priced POSTs over ``connections`` connections, spread over ``urls``;
    print JSON results."""

    async def main() -> None:
        headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/x-www-form-urlencoded",
        }
        latencies: list[float] = []
        statuses: dict[int, int] = {}
        connector = aiohttp.TCPConnector(limit=connections)
        async with aiohttp.ClientSession(connector=connector) as http:

            async def worker(index: int, count: int, record: bool) -> None:
                url = urls[index % len(urls)]
                for _ in range(count):
                    started = time.perf_counter()
                    async with http.post(url, data=BODY, headers=headers) as response:
                        await response.read()
                    if record:
                        latencies.append(time.perf_counter() - started)
                        statuses[response.status] = statuses.get(response.status, 0) + 1

            warmup = max(connections * 5, 50)
            await asyncio.gather(
                *(worker(i, warmup // connections, False) for i in range(connections))
            )
            started = time.perf_counter()
            per = requests // connections
            await asyncio.gather(*(worker(i, per, True) for i in range(connections)))
            elapsed = time.perf_counter() - started
        print(json.dumps({"latencies": latencies, "elapsed": elapsed, "statuses": statuses}))

    event_loop = new_loop(loop)
    try:
        event_loop.run_until_complete(main())
    finally:
        event_loop.close()


# -- the orchestra --------------------------------------------------------------------------


@contextlib.contextmanager
def process(*args: str, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def wait_for(url: str, *, timeout: float = 30.0, attempt: float = 1.0) -> None:
    """Wait until ``url`` answers at all, for ``timeout`` seconds, ``attempt`` per try."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=attempt).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def load(url: str, token: str, connections: int, requests: int) -> dict[str, float]:
    """Run the load generator in its own process; ``url`` may list several, comma-separated."""
    out = subprocess.run(
        [
            sys.executable,
            str(HERE),
            "--role",
            "load",
            "--url",
            url,
            "--token",
            token,
            "--connections",
            str(connections),
            "--requests",
            str(requests),
            "--loop",
            LOOP,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result = json.loads(out)
    ordered = sorted(result["latencies"])
    ok = result["statuses"].get("200", 0)
    if ok != len(ordered):
        raise RuntimeError(f"not every request succeeded: {result['statuses']}")
    return {
        "p50": statistics.median(ordered) * 1000,
        "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
        "rps": len(ordered) / result["elapsed"],
    }


def median_run(runs: list[dict[str, float]]) -> dict[str, float]:
    """Each figure's median over the rounds."""
    return {name: statistics.median(r[name] for r in runs) for name in runs[0]}


async def issue_bench_key(
    url: str, admin: str, *, round_trips: int = 220
) -> tuple[str, list[float]]:
    from keybrake import Keybrake, VaultKey

    async with Keybrake(admin, api_url=url, proxy_url=url) as kb:
        issued = await kb.issue_key(
            "stripe", ["POST /v1/payment_intents"], cap=10_000_000, ttl="2h"
        )
        times = []
        for _ in range(round_trips):
            started = time.perf_counter()
            async with VaultKey("stripe", ["/v1/payment_intents"], cap=1, ttl="1m", client=kb):
                pass
            times.append((time.perf_counter() - started) * 1000)
    return issued.token, times[20:]


def orchestrate(requests: int, store: str, rounds: int) -> None:
    upstream_port, bare_port, kb_port = free_port(), free_port(), free_port()
    upstream = f"http://127.0.0.1:{upstream_port}"
    admin = "kb_admin_benchmark"
    with tempfile.TemporaryDirectory() as tmp:
        database = f"sqlite:///{Path(tmp) / 'bench.db'}" if store == "sqlite" else store
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("KEYBRAKE_")},
            "KEYBRAKE_ADMIN_TOKEN": admin,
            "KEYBRAKE_STRIPE_SECRET_KEY": "sk_test_bench",
            "KEYBRAKE_STRIPE_API_BASE": upstream,
        }
        with (
            process(str(HERE), "--role", "upstream", "--port", str(upstream_port), "--loop", LOOP),
            process(
                str(HERE),
                "--role",
                "bare",
                "--port",
                str(bare_port),
                "--url",
                upstream,
                "--loop",
                LOOP,
            ),
            process(
                "-m",
                "keybrake.cli",
                "serve",
                "--port",
                str(kb_port),
                "--database",
                database,
                "--log-level",
                "warning",
                "--loop",
                LOOP,
                "--audit",
                AUDIT,
                env=env,
            ),
        ):
            for url in (
                upstream,
                f"http://127.0.0.1:{bare_port}/stripe/",
                f"http://127.0.0.1:{kb_port}/healthz",
            ):
                wait_for(url)
            keybrake_url = f"http://127.0.0.1:{kb_port}"
            token, round_trips = asyncio.run(issue_bench_key(keybrake_url, admin))
            rows = []
            spreads = []
            for connections in (1, 32):
                n = requests  # as many at 1 connection: its p99 rests on 20 samples, not 5
                runs: dict[str, list[dict[str, float]]] = {"direct": [], "bare": [], "kb": []}
                # Interleaved rounds: drift on the shared cores hits all three alike.
                for _ in range(rounds):
                    runs["direct"].append(
                        load(f"{upstream}/v1/payment_intents", "x", connections, n)
                    )
                    runs["bare"].append(
                        load(
                            f"http://127.0.0.1:{bare_port}/stripe/v1/payment_intents",
                            "x",
                            connections,
                            n,
                        )
                    )
                    runs["kb"].append(
                        load(f"{keybrake_url}/stripe/v1/payment_intents", token, connections, n)
                    )
                direct, bare, kb = (median_run(runs[name]) for name in ("direct", "bare", "kb"))
                rows.append((connections, direct, bare, kb))
                spreads.append(
                    (
                        connections,
                        [
                            k["rps"] / b["rps"]
                            for b, k in zip(runs["bare"], runs["kb"], strict=True)
                        ],
                    )
                )

    print(
        f"store: {'sqlite' if store == 'sqlite' else store.partition(':')[0]}, "
        f"{requests} requests at 1 and at 32 connections, "
        f"event loop: {loop_name(LOOP)} (every process), audit: {AUDIT}, "
        f"median of {rounds} interleaved round{'s' if rounds > 1 else ''}"
    )
    print(
        f"{'conns':>5} {'path':<10}{'p50 ms':>9}{'p99 ms':>9}{'+p50 ms':>9}{'+p99 ms':>9}"
        f"{'req/s':>9}"
    )
    for connections, direct, bare, kb in rows:
        for name, r in (("direct", direct), ("bare", bare), ("keybrake", kb)):
            added50 = r["p50"] - direct["p50"]
            added99 = r["p99"] - direct["p99"]
            print(
                f"{connections:>5} {name:<10}{r['p50']:>9.3f}{r['p99']:>9.3f}"
                f"{added50:>9.3f}{added99:>9.3f}{r['rps']:>9.0f}"
            )
    print()
    print(
        f"{'conns':>5} {'added p50 kb/bare':>19}{'added p99 kb/bare':>19}{'throughput kb/bare':>20}"
    )
    for connections, direct, bare, kb in rows:
        ratio50 = (kb["p50"] - direct["p50"]) / max(bare["p50"] - direct["p50"], 1e-9)
        ratio99 = (kb["p99"] - direct["p99"]) / max(bare["p99"] - direct["p99"], 1e-9)
        print(f"{connections:>5} {ratio50:>19.2f}{ratio99:>19.2f}{kb['rps'] / bare['rps']:>20.2f}")
    if rounds > 1:
        print()
        for connections, ratios in spreads:
            print(
                f"throughput kb/bare at {connections} connection{'s' if connections > 1 else ''},"
                f" round by round: {', '.join(f'{r:.2f}' for r in ratios)}"
            )
    ordered = sorted(round_trips)
    print()
    print(
        f"async with VaultKey (issue + revoke): p50 {statistics.median(ordered):.2f} ms, "
        f"p99 {ordered[int(len(ordered) * 0.99) - 1]:.2f} ms (n={len(ordered)})"
    )


def scaling(requests: int, database: str, counts: list[int]) -> None:
    """keybrake on PostgreSQL with 1, 2, 4 ... replicas sharing it, under 32 connections."""
    import secrets

    from keybrake.server.stores.postgres.store import PostgresStore

    schema = "kb_bench_" + secrets.token_hex(4)
    url = f"{database}{'&' if '?' in database else '?'}schema={schema}"

    async def migrate(drop: bool) -> None:
        store = PostgresStore(url)
        await store.open(check_schema=False)
        try:
            if drop:
                await store._run(lambda c: c.execute(f'DROP SCHEMA "{schema}" CASCADE'))
            else:
                await store.migrate()
        finally:
            await store.close()

    asyncio.run(migrate(drop=False))
    upstream_port = free_port()
    upstream = f"http://127.0.0.1:{upstream_port}"
    admin = "kb_admin_benchmark"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("KEYBRAKE_")},
        "KEYBRAKE_ADMIN_TOKEN": admin,
        "KEYBRAKE_STRIPE_SECRET_KEY": "sk_test_bench",
        "KEYBRAKE_STRIPE_API_BASE": upstream,
        "KEYBRAKE_DATABASE_URL": url,
    }
    rows = []
    try:
        with process(str(HERE), "--role", "upstream", "--port", str(upstream_port), "--loop", LOOP):
            wait_for(upstream)
            for count in counts:
                ports = [free_port() for _ in range(count)]
                with contextlib.ExitStack() as stack:
                    for port in ports:
                        stack.enter_context(
                            process(
                                "-m",
                                "keybrake.cli",
                                "serve",
                                "--port",
                                str(port),
                                "--log-level",
                                "warning",
                                "--loop",
                                LOOP,
                                "--audit",
                                AUDIT,
                                env=env,
                            )
                        )
                    for port in ports:
                        wait_for(f"http://127.0.0.1:{port}/healthz")
                    first = f"http://127.0.0.1:{ports[0]}"
                    token, _ = asyncio.run(issue_bench_key(first, admin, round_trips=0))
                    targets = ",".join(
                        f"http://127.0.0.1:{port}/stripe/v1/payment_intents" for port in ports
                    )
                    rows.append((count, load(targets, token, 32, requests)))
    finally:
        asyncio.run(migrate(drop=True))
    print(
        f"store: postgresql, {requests} priced requests at 32 connections, spread evenly, "
        f"event loop: {loop_name(LOOP)} (every process), audit: {AUDIT}"
    )
    print(f"{'replicas':>8}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>9}")
    for count, r in rows:
        print(f"{count:>8}{r['p50']:>9.3f}{r['p99']:>9.3f}{r['rps']:>9.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--role", choices=["main", "upstream", "bare", "load"], default="main")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--url", default="")
    parser.add_argument("--token", default="")
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument(
        "--store",
        default="sqlite",
        help="sqlite (against a bare proxy), or a postgresql:// URL (replica scaling)",
    )
    parser.add_argument("--replicas", default="1,2,4", help="with PostgreSQL: replica counts")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="interleaved rounds of direct, bare and keybrake; figures are their medians",
    )
    parser.add_argument(
        "--loop",
        default="auto",
        choices=["auto", "asyncio", "uvloop"],
        help="event loop of every process, keybrake's included (auto: uvloop if installed)",
    )
    parser.add_argument(
        "--audit",
        default="batched",
        choices=["batched", "durable"],
        help="keybrake's audit mode (keybrake serve --audit)",
    )
    args = parser.parse_args()
    global LOOP, AUDIT
    LOOP = args.loop
    AUDIT = args.audit
    if args.role == "upstream":
        run_upstream(args.port, args.loop)
    elif args.role == "bare":
        run_bare_proxy(args.port, args.url, args.loop)
    elif args.role == "load":
        run_load(args.url.split(","), args.token, args.connections, args.requests, args.loop)
    elif args.store.startswith("postgresql://"):
        scaling(args.requests, args.store, [int(n) for n in args.replicas.split(",")])
    else:
        orchestrate(args.requests, args.store, args.rounds)


if __name__ == "__main__":
    main()
