"""One hot key across PostgreSQL replicas, against the same load spread over many keys.

One run makes a schema of its own on a PostgreSQL server (``--database``, by default the
machine's, trust auth on loopback), starts ``--replicas`` (4) ``keybrake serve`` processes
on it and the upstream of ``proxy_overhead.py``, all on 127.0.0.1, and issues ``--keys``
(64) keys. Then wrk drives every replica at once (one wrk process per replica, ``--connections``
32 in all, the priced ``POST /v1/payment_intents`` of ``proxy_wrk.py``), in turns: every
request on one key (hot), then each request on the next of the keys (spread). The turns
alternate for ``--rounds`` rounds; each figure is the median. The goal (issue 17): hot
throughput at least 0.8x spread. The schema is dropped at the end.

    python benchmarks/hot_key_replicas.py [--database postgresql://postgres@127.0.0.1:5432/test]
        [--replicas 4] [--keys 64] [--duration 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from proxy_overhead import BODY, free_port, loop_name, process, wait_for
from proxy_wrk import ADMIN_TOKEN, PATH, keybrake_env, upstream_serving

#: The goal of issue 17.
GOAL = 0.8
DEFAULT_DATABASE = "postgresql://postgres@127.0.0.1:5432/test"

#: wrk's script: the priced POST, each request with the next of the tokens.
WRK_SCRIPT = """
local tokens = {{{tokens}}}
local i = 0

request = function()
  i = i + 1
  return wrk.format("POST", nil, {{
    ["Content-Type"] = "application/x-www-form-urlencoded",
    ["Authorization"] = "Bearer " .. tokens[(i % #tokens) + 1],
  }}, "{body}")
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'KEYBRAKE_WRK {{"requests": %d, "duration_us": %d, "errors": %d, "non2xx": %d,'
    .. ' "p50_us": %.1f}}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout,
    e.status, latency:percentile(50)))
end
"""


def schema_url(database: str, schema: str) -> str:
    return f"{database}{'&' if '?' in database else '?'}schema={schema}"


async def make_schema(database: str, schema: str, *, drop: bool) -> None:
    from keybrake.server.stores.postgres.store import PostgresStore

    store = PostgresStore(schema_url(database, schema))
    await store.open(check_schema=False)
    try:
        if drop:
            await store._run(lambda c: c.execute(f'DROP SCHEMA "{schema}" CASCADE'))
        else:
            await store.migrate()
    finally:
        await store.close()


async def issue_keys(url: str, count: int) -> list[str]:
    from keybrake import Keybrake

    async with Keybrake(ADMIN_TOKEN, api_url=url, proxy_url=url) as kb:
        issued = [
            await kb.issue_key("stripe", ["POST /v1/payment_intents"], cap=10_000_000, ttl="2h")
            for _ in range(count)
        ]
    return [key.token for key in issued]


def load(urls: list[str], script: Path, connections: int, duration: int) -> dict[str, float]:
    """wrk on every replica at once, ``connections`` spread over them; the sum and p50."""
    per = max(1, connections // len(urls))
    procs = [
        subprocess.Popen(
            ["wrk", "-t1", f"-c{per}", f"-d{duration}s", "--timeout", "10s", "-s", str(script), u],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for u in urls
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate()
        line = next((x for x in out.splitlines() if x.startswith("KEYBRAKE_WRK ")), None)
        if proc.returncode or line is None:
            raise RuntimeError(f"wrk failed: {err or out}")
        result = json.loads(line.removeprefix("KEYBRAKE_WRK "))
        if result["errors"] or result["non2xx"] or not result["requests"]:
            raise RuntimeError(f"not every request succeeded: {result}")
        results.append(result)
    return {
        "rps": sum(r["requests"] / (r["duration_us"] / 1e6) for r in results),
        "p50": statistics.median(r["p50_us"] for r in results) / 1000,
    }


def main(
    database: str, replicas: int, keys: int, connections: int, duration: int, rounds: int
) -> None:
    if shutil.which("wrk") is None:
        raise SystemExit("hot_key_replicas.py needs wrk on the PATH (apt-get install wrk)")
    loop = "auto"
    schema = "kb_bench_" + secrets.token_hex(4)
    asyncio.run(make_schema(database, schema, drop=False))
    runs: dict[str, list[dict[str, float]]] = {"hot": [], "spread": []}
    try:
        with (
            tempfile.TemporaryDirectory() as tmp,
            upstream_serving(free_port(), loop) as upstream,
            contextlib.ExitStack() as stack,
        ):
            env = {**keybrake_env(upstream), "KEYBRAKE_DATABASE_URL": schema_url(database, schema)}
            ports = [free_port() for _ in range(replicas)]
            for port in ports:
                stack.enter_context(
                    process(
                        "-m", "keybrake.cli", "serve", "--port", str(port),
                        "--log-level", "warning", "--loop", loop, env=env,
                    )
                )  # fmt: skip
            for port in ports:
                wait_for(f"http://127.0.0.1:{port}/healthz")
            tokens = asyncio.run(issue_keys(f"http://127.0.0.1:{ports[0]}", keys))
            urls = [f"http://127.0.0.1:{port}/stripe{PATH}" for port in ports]
            scripts = {}
            for name, chosen in (("hot", tokens[:1]), ("spread", tokens)):
                scripts[name] = Path(tmp) / f"{name}.lua"
                quoted = ", ".join(f'"{t}"' for t in chosen)
                scripts[name].write_text(WRK_SCRIPT.format(tokens=quoted, body=BODY))
            load(urls, scripts["spread"], connections, 1)  # warm-up
            for _ in range(rounds):
                for name in ("hot", "spread"):
                    runs[name].append(load(urls, scripts[name], connections, duration))
    finally:
        asyncio.run(make_schema(database, schema, drop=True))

    print(
        f"postgresql, {replicas} replicas, {connections} connections spread evenly over them, "
        f"wrk, {duration} s per run, event loop: {loop_name(loop)}, "
        f"median of {rounds} interleaved round{'s' if rounds > 1 else ''}"
    )
    print(f"{'load':<22}{'p50 ms':>9}{'req/s':>9}")
    medians = {}
    for name, label in (("hot", "one hot key"), ("spread", f"spread over {keys} keys")):
        medians[name] = {f: statistics.median(r[f] for r in runs[name]) for f in runs[name][0]}
        print(f"{label:<22}{medians[name]['p50']:>9.3f}{medians[name]['rps']:>9.0f}")
    each = ", ".join(
        f"{h['rps'] / s['rps']:.2f}" for h, s in zip(runs["hot"], runs["spread"], strict=True)
    )
    ratio = medians["hot"]["rps"] / medians["spread"]["rps"]
    print()
    print(f"throughput hot/spread, round by round: {each}")
    met = "met" if ratio >= GOAL else "NOT met"
    print(f"goal: throughput hot/spread {ratio:.2f} (goal >= {GOAL}): {met}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", default=DEFAULT_DATABASE)
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--keys", type=int, default=64, help="keys the spread load uses")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians)")
    args = parser.parse_args()
    try:
        main(args.database, args.replicas, args.keys, args.connections, args.duration, args.rounds)
    except subprocess.CalledProcessError as exc:
        sys.exit(f"{exc.cmd[0]} failed: {exc.stderr}")
