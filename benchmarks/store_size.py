"""Whether a big store slows the proxy down: its p50 on a full store against an empty one.

One run makes two SQLite stores in a temporary directory, each created by ``keybrake serve``
(so its schema is the server's own): one left empty, the other seeded directly, in SQL, with
``--keys`` keys (1 million) and ``--audit-rows`` audit entries (10 million), written within
the last hour so that no retention pass deletes them. Then it serves both at once, issues one
key on each through the API, and drives each in turn with wrk at 1 connection (the priced
``POST /v1/payment_intents`` of ``proxy_wrk.py``), ``--rounds`` interleaved rounds, medians.
The goal (issue 17): the full store's p50 at most 1.1x the empty store's.

The seeded store takes about 2.5 GB of disk for the defaults; it is deleted at the end.

    python benchmarks/store_size.py [--keys 1000000] [--audit-rows 10000000] [--duration 5]
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from proxy_overhead import free_port, loop_name
from proxy_wrk import PATH, issue_key, keybrake_serving, upstream_serving, wrk

from keybrake.server.api.tokens import DEFAULT_TENANT

#: The goal of issue 17.
GOAL_P50 = 1.1

#: ``n`` keys of the default tenant, each a Stripe key with an allowlist, made by SQLite
#: itself (a recursive CTE: no Python per row).
SEED_KEYS = """
WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < :count)
INSERT INTO keys (id, tenant, token_hash, vendor, label, allowed_endpoints, cap_micros,
                  created_at, expires_at, max_expires_at, revoked_at, metadata, stripe_account)
SELECT printf('vk_seed%017x', x), :tenant, printf('%064x', x), 'stripe', 'seeded-' || x,
       '["POST /v1/payment_intents", "GET /v1/customers/*"]', 10000000,
       :now, :now + 86400000000, :now + 86400000000,
       CASE WHEN x % 10 = 0 THEN :now ELSE NULL END, '{}', NULL
FROM n
"""
#: ``n`` audit entries spread over the seeded keys, the newest ``now``.
SEED_AUDIT = """
WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < :count)
INSERT INTO audit (at, tenant, key_id, label, vendor, method, path, decision, status,
                   reserved, settled, upstream_ms, vendor_request_id)
SELECT :now - (:count - x) * 300, :tenant, printf('vk_seed%017x', 1 + x % :keys),
       'seeded', 'stripe', 'POST', '/v1/payment_intents', 'allowed', 200,
       1000000, 1000000, 12.5, 'req_' || x
FROM n
"""


def create(database: Path, upstream: str, loop: str) -> None:
    """An empty store, made by ``keybrake serve`` itself."""
    with keybrake_serving(free_port(), f"sqlite:///{database}", upstream, loop):
        pass


def seed(database: Path, keys: int, audit_rows: int) -> float:
    """Fill ``database`` (no server on it); the seconds it took."""
    started = time.perf_counter()
    now = time.time_ns() // 1000
    conn = sqlite3.connect(database, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("PRAGMA cache_size = -262144")  # 256 MiB
        conn.execute("BEGIN")
        conn.execute(SEED_KEYS, {"count": keys, "tenant": DEFAULT_TENANT, "now": now})
        # 300 us apart: 10 million entries span under an hour, well inside any retention.
        conn.execute(
            SEED_AUDIT,
            {"count": audit_rows, "tenant": DEFAULT_TENANT, "now": now, "keys": max(keys, 1)},
        )
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("ANALYZE")
    finally:
        conn.close()
    return time.perf_counter() - started


def size_of(database: Path) -> int:
    return sum(p.stat().st_size for p in database.parent.glob(database.name + "*"))


def main(keys: int, audit_rows: int, duration: int, rounds: int, loop: str) -> None:
    if shutil.which("wrk") is None:
        raise SystemExit("store_size.py needs wrk on the PATH (apt-get install wrk)")
    with (
        tempfile.TemporaryDirectory() as tmp,
        upstream_serving(free_port(), loop) as upstream,
    ):
        empty, full = Path(tmp) / "empty.db", Path(tmp) / "full.db"
        create(empty, upstream, loop)
        create(full, upstream, loop)
        seconds = seed(full, keys, audit_rows)
        megabytes = size_of(full) / 1e6
        ports = {"empty": free_port(), "full": free_port()}
        with contextlib.ExitStack() as stack:
            targets = {}
            for name, database in (("empty", empty), ("full", full)):
                stack.enter_context(
                    keybrake_serving(ports[name], f"sqlite:///{database}", upstream, loop)
                )
                url = f"http://127.0.0.1:{ports[name]}"
                targets[name] = (f"{url}/stripe{PATH}", issue_key(url))
            for url, token in targets.values():  # warm-up
                wrk(url, token, connections=1, duration=1, script_dir=tmp)
            runs: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
            for _ in range(rounds):
                for name, (url, token) in targets.items():
                    runs[name].append(
                        wrk(url, token, connections=1, duration=duration, script_dir=tmp)
                    )

    print(
        f"wrk, 1 connection, POST {PATH} with a form body, {duration} s per run, "
        f"event loop: {loop_name(loop)}, median of {rounds} interleaved "
        f"round{'s' if rounds > 1 else ''}"
    )
    print(
        f"full store: {keys:,} keys and {audit_rows:,} audit entries, seeded in "
        f"{seconds:.0f} s, {megabytes:,.0f} MB"
    )
    print(f"{'store':<7}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>9}")
    medians = {}
    for name, each in runs.items():
        medians[name] = {f: statistics.median(r[f] for r in each) for f in each[0]}
        m = medians[name]
        print(f"{name:<7}{m['p50']:>9.3f}{m['p99']:>9.3f}{m['rps']:>9.0f}")
    ratio = medians["full"]["p50"] / medians["empty"]["p50"]
    rounds_ratio = ", ".join(
        f"{f['p50'] / e['p50']:.2f}" for e, f in zip(runs["empty"], runs["full"], strict=True)
    )
    print()
    print(f"p50 full/empty, round by round: {rounds_ratio}")
    met = "met" if ratio <= GOAL_P50 else "NOT met"
    print(f"goal: p50 full/empty {ratio:.2f} (goal <= {GOAL_P50}): {met}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--audit-rows", type=int, default=10_000_000)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians)")
    parser.add_argument(
        "--loop",
        default="auto",
        choices=["auto", "asyncio", "uvloop"],
        help="event loop of every server (auto: uvloop if installed)",
    )
    args = parser.parse_args()
    try:
        main(args.keys, args.audit_rows, args.duration, args.rounds, args.loop)
    except subprocess.CalledProcessError as exc:
        sys.exit(f"{exc.cmd[0]} failed: {exc.stderr}")
