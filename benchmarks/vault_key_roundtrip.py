"""How long ``async with VaultKey(...)`` (issue + revoke) takes against a local server.

Prints latency percentiles for the full issue+revoke round trip and, as the baseline measured
in the same process against the same server, a bare ``GET /healthz`` (one HTTP round trip
that touches the store), plus the ratio between them.

    python benchmarks/vault_key_roundtrip.py [--n 300]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from keybrake import Keybrake, VaultKey
from keybrake.server import ServerConfig, running_server
from keybrake.server.app import generate_admin_token


async def measure(n: int, fn: Callable[[], Awaitable[None]]) -> list[float]:
    for _ in range(min(20, n)):  # warm up connections and caches
        await fn()
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        await fn()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def summary(samples: list[float]) -> tuple[float, float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return statistics.median(ordered), p99, statistics.mean(ordered)


async def main(n: int) -> None:
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

            base = summary(await measure(n, healthz))
            full = summary(await measure(n, vault_key))
    print(f"{'operation':<34}{'p50 ms':>10}{'p99 ms':>10}{'mean ms':>10}")
    for label, (p50, p99, mean) in (
        ("GET /healthz (baseline)", base),
        ("async with VaultKey (issue+revoke)", full),
    ):
        print(f"{label:<34}{p50:>10.2f}{p99:>10.2f}{mean:>10.2f}")
    print(f"ratio p50 VaultKey/baseline: {full[0] / base[0]:.2f}  (n={n})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=300)
    asyncio.run(main(parser.parse_args().n))
