"""How long ``async with VaultKey(...)`` (issue + revoke) takes against a local server.

Runs the server in-process on loopback with a SQLite store in a temporary directory, and
times the full issue+revoke round trip beside its baseline measured in the same run against
the same server: a bare ``GET /healthz`` (one HTTP round trip that touches the store). The
two alternate, one of each per iteration, so that drift on shared cores hits both alike. It
prints p50, p99 and mean of each, their ratio, and the goal of issue 17: ``async with
VaultKey`` p50 at most 2 ms.

    python benchmarks/vault_key_roundtrip.py [--n 300] [--loop auto]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
from proxy_overhead import loop_name, new_loop

from keybrake import Keybrake, VaultKey
from keybrake.server import ServerConfig, running_server
from keybrake.server.app import generate_admin_token

#: The goal of issue 17, in ms.
GOAL_P50_MS = 2.0
WARMUP = 20


async def timed(fn: Callable[[], Awaitable[None]]) -> float:
    start = time.perf_counter()
    await fn()
    return (time.perf_counter() - start) * 1000


def summary(samples: list[float]) -> tuple[float, float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return statistics.median(ordered), p99, statistics.mean(ordered)


async def measure(n: int) -> tuple[list[float], list[float]]:
    token = generate_admin_token()
    with tempfile.TemporaryDirectory() as tmp:
        config = ServerConfig(
            database_url=f"sqlite:///{Path(tmp) / 'bench.db'}",
            admin_token=token,
            vendor_settings={
                "stripe": {"secret_key": "sk_test_bench", "api_base": "http://127.0.0.1:9"}
            },
        )
        async with (
            running_server(config) as url,
            Keybrake(token, api_url=url, proxy_url=url) as kb,
            aiohttp.ClientSession() as http,
        ):

            async def healthz() -> None:
                async with http.get(f"{url}/healthz") as response:
                    await response.read()

            async def vault_key() -> None:
                async with VaultKey("stripe", ["/v1/payment_intents"], cap=10, ttl="1m", client=kb):
                    pass

            base: list[float] = []
            full: list[float] = []
            for i in range(WARMUP + n):  # the first ones warm connections and caches up
                b, f = await timed(healthz), await timed(vault_key)
                if i >= WARMUP:
                    base.append(b)
                    full.append(f)
    return base, full


def main(n: int, loop: str) -> None:
    event_loop = new_loop(loop)
    try:
        base, full = event_loop.run_until_complete(measure(n))
    finally:
        event_loop.close()
    print(f"server and client in one process on {loop_name(loop)}, sqlite, n={n}, interleaved")
    print(f"{'operation':<34}{'p50 ms':>10}{'p99 ms':>10}{'mean ms':>10}")
    rows = (
        ("GET /healthz (baseline)", summary(base)),
        ("async with VaultKey (issue+revoke)", summary(full)),
    )
    for label, (p50, p99, mean) in rows:
        print(f"{label:<34}{p50:>10.2f}{p99:>10.2f}{mean:>10.2f}")
    healthz_p50, vault_key_p50 = rows[0][1][0], rows[1][1][0]
    print(f"ratio p50 VaultKey/baseline: {vault_key_p50 / healthz_p50:.2f}")
    met = "met" if vault_key_p50 <= GOAL_P50_MS else "NOT met"
    print(f"goal: async with VaultKey p50 {vault_key_p50:.2f} ms (goal <= {GOAL_P50_MS} ms): {met}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument(
        "--loop",
        default="auto",
        choices=["auto", "asyncio", "uvloop"],
        help="the event loop (auto: uvloop if installed)",
    )
    args = parser.parse_args()
    main(args.n, args.loop)
