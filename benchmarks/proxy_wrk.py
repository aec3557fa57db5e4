"""The keybrake proxy against a bare aiohttp pass-through, under wrk.

One run starts, each in its own process, on 127.0.0.1: the upstream and the bare aiohttp
pass-through of ``proxy_overhead.py`` (its ``--role upstream`` and ``--role bare``), and
``keybrake serve`` with a SQLite store in a temporary directory and its full policy (key
look-up, allowlist, pricing, atomic reservation, settlement, audit). It issues one key, then
drives the upstream directly, the bare proxy and keybrake with wrk (the Debian ``wrk``: a load
generator in C, so that its own cost does not hide the proxies' latency), sending the priced
``POST /v1/payment_intents`` with the form body ``amount=100&currency=usd``, at 1 connection
and at 32.

Direct, bare and keybrake take turns for ``--rounds`` rounds (each figure printed is the
median over the rounds), so that drift on shared cores hits all three alike. The goals
(issue 17): at 32 connections keybrake's throughput at least 0.9x the bare proxy's; at 1
connection keybrake's added median latency (over calling the upstream directly) at most 1.3x
the bare proxy's.

    python benchmarks/proxy_wrk.py [--duration 5] [--rounds 3] [--loop auto]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from proxy_overhead import BODY, free_port, issue_bench_key, loop_name, process, wait_for

HERE = Path(__file__).resolve()
OVERHEAD = HERE.with_name("proxy_overhead.py")
ADMIN_TOKEN = "kb_admin_benchmark"
PATH = "/v1/payment_intents"
#: The goals of issue 17.
GOAL_THROUGHPUT_32 = 0.9
GOAL_ADDED_P50_1 = 1.3

#: wrk's script: the priced POST, and one line of JSON with the figures at the end.
WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = "{body}"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = "Bearer {token}"

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'KEYBRAKE_WRK {{"requests": %d, "duration_us": %d, "errors": %d, "non2xx": %d,'
    .. ' "p50_us": %.1f, "p99_us": %.1f}}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout,
    e.status, latency:percentile(50), latency:percentile(99)))
end
"""


def wrk(
    url: str, token: str, *, connections: int, duration: int, script_dir: str
) -> dict[str, float]:
    """One wrk run: ``p50``/``p99`` in ms and ``rps``.

    Raises:
        RuntimeError: a request failed or was answered with anything but a 2xx.
    """
    script = Path(script_dir) / f"post-{abs(hash(token))}.lua"
    if not script.exists():
        script.write_text(WRK_SCRIPT.format(body=BODY, token=token))
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{duration}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = next((x for x in out.splitlines() if x.startswith("KEYBRAKE_WRK ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no figures:\n{out}")
    result = json.loads(line.removeprefix("KEYBRAKE_WRK "))
    if result["errors"] or result["non2xx"] or not result["requests"]:
        raise RuntimeError(f"not every request to {url} succeeded: {result}")
    return {
        "p50": result["p50_us"] / 1000,
        "p99": result["p99_us"] / 1000,
        "rps": result["requests"] / (result["duration_us"] / 1e6),
    }


def keybrake_env(upstream: str) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("KEYBRAKE_")},
        "KEYBRAKE_ADMIN_TOKEN": ADMIN_TOKEN,
        "KEYBRAKE_STRIPE_SECRET_KEY": "sk_test_bench",
        "KEYBRAKE_STRIPE_API_BASE": upstream,
    }


@contextlib.contextmanager
def keybrake_serving(
    port: int, database: str, upstream: str, loop: str
) -> Iterator[subprocess.Popen[str]]:
    """``keybrake serve`` on ``port``, stopped on exit."""
    with process(
        "-m",
        "keybrake.cli",
        "serve",
        "--port",
        str(port),
        "--database",
        database,
        "--log-level",
        "warning",
        "--loop",
        loop,
        env=keybrake_env(upstream),
    ) as proc:
        wait_for(f"http://127.0.0.1:{port}/healthz")
        yield proc


@contextlib.contextmanager
def upstream_serving(port: int, loop: str) -> Iterator[str]:
    with process(str(OVERHEAD), "--role", "upstream", "--port", str(port), "--loop", loop):
        url = f"http://127.0.0.1:{port}"
        wait_for(url)
        yield url


def issue_key(keybrake_url: str) -> str:
    token, _ = asyncio.run(issue_bench_key(keybrake_url, ADMIN_TOKEN, round_trips=0))
    return token


def median_run(runs: list[dict[str, float]]) -> dict[str, float]:
    """Each figure's median over the rounds."""
    return {name: statistics.median(r[name] for r in runs) for name in runs[0]}


def verdict(ratio: float, goal: float, *, at_least: bool) -> str:
    met = ratio >= goal if at_least else ratio <= goal
    return f"{ratio:.2f} (goal {'>=' if at_least else '<='} {goal}): {'met' if met else 'NOT met'}"


def main(duration: int, rounds: int, warmup: int, loop: str) -> None:
    if shutil.which("wrk") is None:
        raise SystemExit("proxy_wrk.py needs wrk on the PATH (apt-get install wrk)")
    upstream_port, bare_port, kb_port = free_port(), free_port(), free_port()
    with (
        tempfile.TemporaryDirectory() as tmp,
        upstream_serving(upstream_port, loop) as upstream,
        process(
            str(OVERHEAD),
            "--role",
            "bare",
            "--port",
            str(bare_port),
            "--url",
            upstream,
            "--loop",
            loop,
        ),
        keybrake_serving(kb_port, f"sqlite:///{Path(tmp) / 'bench.db'}", upstream, loop),
    ):
        wait_for(f"http://127.0.0.1:{bare_port}/stripe/")
        keybrake_url = f"http://127.0.0.1:{kb_port}"
        token = issue_key(keybrake_url)
        targets = {
            "direct": (f"{upstream}{PATH}", "x"),
            "bare": (f"http://127.0.0.1:{bare_port}/stripe{PATH}", "x"),
            "keybrake": (f"{keybrake_url}/stripe{PATH}", token),
        }
        if warmup:
            for url, auth in targets.values():
                wrk(url, auth, connections=32, duration=warmup, script_dir=tmp)
        runs: dict[tuple[int, str], list[dict[str, float]]] = {}
        for connections in (1, 32):
            # Interleaved rounds: drift on the shared cores hits all three alike.
            for _ in range(rounds):
                for name, (url, auth) in targets.items():
                    runs.setdefault((connections, name), []).append(
                        wrk(url, auth, connections=connections, duration=duration, script_dir=tmp)
                    )

    print(
        f"wrk, POST {PATH} with a form body, {duration} s per run, "
        f"event loop: {loop_name(loop)} (every server), store: sqlite, "
        f"median of {rounds} interleaved round{'s' if rounds > 1 else ''}"
    )
    print(
        f"{'conns':>5} {'path':<10}{'p50 ms':>9}{'p99 ms':>9}{'+p50 ms':>9}{'+p99 ms':>9}"
        f"{'req/s':>9}"
    )
    medians = {where: median_run(r) for where, r in runs.items()}
    ratios: dict[int, tuple[float, float]] = {}
    for connections in (1, 32):
        direct = medians[connections, "direct"]
        for name in targets:
            r = medians[connections, name]
            print(
                f"{connections:>5} {name:<10}{r['p50']:>9.3f}{r['p99']:>9.3f}"
                f"{r['p50'] - direct['p50']:>9.3f}{r['p99'] - direct['p99']:>9.3f}"
                f"{r['rps']:>9.0f}"
            )
        bare, kb = medians[connections, "bare"], medians[connections, "keybrake"]
        added = (kb["p50"] - direct["p50"]) / max(bare["p50"] - direct["p50"], 1e-9)
        ratios[connections] = (added, kb["rps"] / bare["rps"])
    print()
    print(f"{'conns':>5}{'added p50 kb/bare':>19}{'throughput kb/bare':>20}")
    for connections, (added, throughput) in ratios.items():
        print(f"{connections:>5}{added:>19.2f}{throughput:>20.2f}")
    if rounds > 1:
        print()
        for connections in (1, 32):
            each = [
                k["rps"] / b["rps"]
                for b, k in zip(
                    runs[connections, "bare"], runs[connections, "keybrake"], strict=True
                )
            ]
            print(
                f"throughput kb/bare at {connections} connection{'s' if connections > 1 else ''},"
                f" round by round: {', '.join(f'{r:.2f}' for r in each)}"
            )
    print()
    print(
        "goal: throughput kb/bare at 32 connections "
        + verdict(ratios[32][1], GOAL_THROUGHPUT_32, at_least=True)
    )
    print(
        "goal: added p50 kb/bare at 1 connection "
        + verdict(ratios[1][0], GOAL_ADDED_P50_1, at_least=False)
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians)")
    parser.add_argument(
        "--warmup", type=int, default=2, help="seconds of load on each path before measuring"
    )
    parser.add_argument(
        "--loop",
        default="auto",
        choices=["auto", "asyncio", "uvloop"],
        help="event loop of every server, keybrake's included (auto: uvloop if installed)",
    )
    args = parser.parse_args()
    try:
        main(args.duration, args.rounds, args.warmup, args.loop)
    except subprocess.CalledProcessError as exc:
        sys.exit(f"{exc.cmd[0]} failed: {exc.stderr}")
