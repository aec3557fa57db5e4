#!/usr/bin/env python3
"""The floor under goal 1: what an enforcing proxy must add to a bare pass-through.

Issue 17's first goal asks keybrake, with its whole policy, for 0.9 of a bare aiohttp
pass-through's throughput at 32 connections, and for an added median latency at 1
connection at most 1.3 times the bare proxy's. A proxy's one thread is saturated at 32
connections, so its throughput is the inverse of its CPU time per request (user and system:
the kernel's work of receiving and sending counts as much as Python's); at 1 connection its
added latency is that same work done in series. So goal 1 leaves the policy about
``bare / 0.9 - bare`` of CPU time per request at 32 connections and ``0.3 * bare`` at 1.
This script measures both sides of that sum, in CPU time per request:

- **The serving layers,** driven by wrk (POST with a form body, as ``proxy_wrk.py``), CPU
  time read from ``/proc`` before and after each run: the bare aiohttp pass-through (the
  goal's baseline), the same pass-through as an ASGI app on uvicorn with httptools (the
  other serving layer the issue names), and keybrake with its full policy, for comparison.
- **The least any enforcing proxy adds,** each part measured alone in a loop of plain
  Python, with none of keybrake's code (``time.process_time``, after a warm-up): read the
  form body strictly (``urllib.parse``'s strict ``parse_qsl`` and ``urlencode``, to price it
  and forward exactly what was read), hash the token to look its key up, make a reservation
  durable before forwarding (a conditional ``UPDATE`` of the day's spend and an ``INSERT``)
  and settle it after, and write one audit row, in SQLite (WAL, ``synchronous=NORMAL``, as
  keybrake's store). At 1 connection each request has its transactions to itself; at 32
  connections 32 requests share each ``BEGIN`` and ``COMMIT``.

Everything runs in ``--rounds`` interleaved rounds and each figure is the median. It
prints the figures, the budget goal 1 leaves the policy on each serving layer, the share of
it the floor takes, and the best a proxy doing only the floor could reach.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from proxy_overhead import BODY, free_port, process, wait_for
from proxy_wrk import (
    GOAL_ADDED_P50_1,
    GOAL_THROUGHPUT_32,
    OVERHEAD,
    PATH,
    issue_key,
    keybrake_serving,
    upstream_serving,
    wrk,
)

HERE = Path(__file__).resolve()
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
#: The parts of the floor, in the order printed.
PARTS = ("form", "token", "reservation", "audit")
LABELS = {
    "form": "strict form read (parse_qsl + urlencode)",
    "token": "token hash (sha256)",
    "reservation": "reserve + settle (SQLite)",
    "audit": "audit row (SQLite)",
}
#: The proxies measured, and their labels.
PROXIES = {
    "aiohttp": "bare pass-through, aiohttp (the baseline)",
    "uvicorn": "bare pass-through, uvicorn + httptools",
    "keybrake": "keybrake, full policy (SQLite)",
}
#: Connections at which the goals are read; requests in one transaction at the second.
CONNECTIONS = (1, 32)
SCHEMA = """
CREATE TABLE spend (key TEXT, day TEXT, micros INTEGER NOT NULL, PRIMARY KEY (key, day));
CREATE TABLE reservations (id INTEGER PRIMARY KEY, key TEXT, micros INTEGER, final INTEGER);
CREATE TABLE audit (id INTEGER PRIMARY KEY, at REAL, key TEXT, method TEXT, path TEXT,
                    decision TEXT, status INTEGER, micros INTEGER);
INSERT INTO spend VALUES ('key', 'day', 0);
"""


def run_part(part: str, iterations: int, batch: int, folder: str) -> None:
    """Print the CPU time in µs per request of one part of the floor, in plain Python.

    A tenth of ``iterations`` first, as a warm-up, then ``iterations`` timed.
    """
    conn = sqlite3.connect(os.path.join(folder, "floor.db"), isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(SCHEMA)
    loop(conn, part, max(batch, iterations // 10), batch)
    started = time.process_time()
    loop(conn, part, iterations, batch)
    print((time.process_time() - started) / iterations * 1e6)
    conn.close()


def loop(conn: sqlite3.Connection, part: str, iterations: int, batch: int) -> None:
    body, token = BODY, b"kb_live_" + b"x" * 40
    done = 0
    while done < iterations:
        count = min(batch, iterations - done)
        if part == "form":
            for _ in range(count):
                fields = urllib.parse.parse_qsl(body, keep_blank_values=True, strict_parsing=True)
                urllib.parse.urlencode(fields)
        elif part == "token":
            for _ in range(count):
                hashlib.sha256(token).hexdigest()
        elif part == "reservation":
            conn.execute("BEGIN IMMEDIATE")
            ids = []
            for _ in range(count):
                conn.execute(
                    "UPDATE spend SET micros = micros + ? WHERE key = ? AND day = ?"
                    " AND micros + ? <= ?",
                    (1_000, "key", "day", 1_000, 10**15),
                )
                ids.append(
                    conn.execute(
                        "INSERT INTO reservations (key, micros) VALUES (?, ?)", ("key", 1_000)
                    ).lastrowid
                )
            conn.execute("COMMIT")
            conn.execute("BEGIN IMMEDIATE")
            for row in ids:
                conn.execute("UPDATE reservations SET final = micros WHERE id = ?", (row,))
            conn.execute("COMMIT")
        elif part == "audit":
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT INTO audit (at, key, method, path, decision, status, micros)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(0.0, "key", "POST", PATH, "allowed", 200, 1_000)] * count,
            )
            conn.execute("COMMIT")
        done += count


def part_cpu(part: str, iterations: int, batch: int, folder: Path) -> float:
    """CPU µs per request of ``part``, in a process of its own."""
    run_dir = tempfile.mkdtemp(dir=folder)
    out = subprocess.run(
        [
            sys.executable, str(HERE), "--part", part, "--iterations", str(iterations),
            "--batch", str(batch), "--folder", run_dir,
        ],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return float(out.stdout)


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of every thread of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proxy_cpu(
    pid: int, url: str, token: str, connections: int, duration: int, folder: Path
) -> float:
    """CPU µs per request of the proxy ``pid`` over one wrk run."""
    before = cpu_seconds(pid)
    result = wrk(url, token, connections=connections, duration=duration, script_dir=str(folder))
    return (cpu_seconds(pid) - before) / (result["rps"] * duration) * 1e6


def run_uvicorn_bare(port: int, upstream: str) -> None:
    """The bare pass-through of ``proxy_overhead.py`` as an ASGI app on uvicorn + httptools."""
    import aiohttp
    import uvicorn

    session: list[aiohttp.ClientSession] = []

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    session.append(aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)))
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await session[0].close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        content_type = next((v for k, v in scope["headers"] if k == b"content-type"), b"")
        path = scope["raw_path"].decode("latin-1")[len("/stripe") :]
        headers = {
            "Content-Type": content_type.decode("latin-1"),
            "Authorization": "Bearer sk_test_bench",
        }
        async with session[0].request(
            scope["method"], upstream + path, data=body, headers=headers
        ) as response:
            payload = await response.read()
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status,
                    "headers": [
                        (b"content-type", response.content_type.encode("latin-1")),
                        (b"content-length", str(len(payload)).encode("latin-1")),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": payload})

    uvicorn.run(
        app, host="127.0.0.1", port=port, loop="uvloop", http="httptools",
        access_log=False, log_level="warning", lifespan="on",
    )  # fmt: skip


@contextlib.contextmanager
def proxies(folder: Path) -> Iterator[dict[str, tuple[int, str, str]]]:
    """The three proxies on one upstream: each name's pid, URL and token."""
    with contextlib.ExitStack() as stack:
        upstream = stack.enter_context(upstream_serving(free_port(), "uvloop"))
        ports = {name: free_port() for name in PROXIES}
        bare = str(ports["aiohttp"])
        aiohttp_proc = stack.enter_context(
            process(str(OVERHEAD), "--role", "bare", "--port", bare, "--url", upstream,
                    "--loop", "uvloop")
        )  # fmt: skip
        uvicorn = str(ports["uvicorn"])
        uvicorn_proc = stack.enter_context(
            process(str(HERE), "--uvicorn-bare", uvicorn, "--url", upstream)
        )
        database = f"sqlite:///{folder / 'keybrake.db'}"
        keybrake = stack.enter_context(
            keybrake_serving(ports["keybrake"], database, upstream, "uvloop")
        )
        for name in ("aiohttp", "uvicorn"):
            wait_for(f"http://127.0.0.1:{ports[name]}/stripe/")
        token = issue_key(f"http://127.0.0.1:{ports['keybrake']}")
        yield {
            name: (proc.pid, f"http://127.0.0.1:{ports[name]}/stripe{PATH}", key)
            for name, proc, key in (
                ("aiohttp", aiohttp_proc, "x"),
                ("uvicorn", uvicorn_proc, "x"),
                ("keybrake", keybrake, token),
            )
        }


def main(duration: int, rounds: int, iterations: int) -> None:
    if shutil.which("wrk") is None:
        raise SystemExit("proxy_floor.py needs wrk (apt-get install wrk)")
    served: dict[tuple[str, int], list[float]] = {}
    parts: dict[tuple[str, int], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        with proxies(folder) as running:
            for _pid, url, token in running.values():  # warm-up
                wrk(url, token, connections=CONNECTIONS[-1], duration=1, script_dir=tmp)
            for _ in range(rounds):
                for conns in CONNECTIONS:
                    for name, (pid, url, token) in running.items():
                        figure = proxy_cpu(pid, url, token, conns, duration, folder)
                        served.setdefault((name, conns), []).append(figure)
        for _ in range(rounds):
            for conns in CONNECTIONS:
                for part in PARTS:
                    figure = part_cpu(part, iterations, conns, folder)
                    parts.setdefault((part, conns), []).append(figure)
    cpu = {k: statistics.median(v) for k, v in served.items()}
    floor_parts = {k: statistics.median(v) for k, v in parts.items()}
    report(duration, rounds, iterations, cpu, floor_parts)


def report(
    duration: int,
    rounds: int,
    iterations: int,
    cpu: dict[tuple[str, int], float],
    parts: dict[tuple[str, int], float],
) -> None:
    one, many = CONNECTIONS
    print(
        f"CPU time (user + system) per request in µs, POST {PATH} with a form body"
        f" ({BODY!r}), median of {rounds} interleaved rounds; proxies driven by wrk for"
        f" {duration} s per run, floor parts {iterations} requests in a loop"
    )
    print(f"{'':<44}{f'{one} conn':>10}{f'{many} conns':>10}")
    for name, label in PROXIES.items():
        print(f"{label:<44}{cpu[name, one]:>10.1f}{cpu[name, many]:>10.1f}")
    print()
    for part in PARTS:
        print(f"{LABELS[part]:<44}{parts[part, one]:>10.1f}{parts[part, many]:>10.1f}")
    floor = {conns: sum(parts[part, conns] for part in PARTS) for conns in CONNECTIONS}
    label = "floor: the least an enforcing proxy adds"
    print(f"{label:<44}{floor[one]:>10.1f}{floor[many]:>10.1f}")
    policy = {conns: cpu["keybrake", conns] - cpu["aiohttp", conns] for conns in CONNECTIONS}
    label = "keybrake's policy: keybrake - bare aiohttp"
    print(f"{label:<44}{policy[one]:>10.1f}{policy[many]:>10.1f}")
    print()
    for name in ("aiohttp", "uvicorn"):
        budget = cpu["aiohttp", many] / GOAL_THROUGHPUT_32 - cpu[name, many]
        best = cpu["aiohttp", many] / (cpu[name, many] + floor[many])
        print(
            f"on {name}, throughput at {many} connections: goal 1 leaves the policy"
            f" {budget:.0f} µs per request, the floor takes {floor[many] / budget:.2f} of"
            f" it; at the floor, throughput / bare aiohttp {best:.2f} at most"
            f" (goal >= {GOAL_THROUGHPUT_32})"
        )
        budget = cpu["aiohttp", one] * GOAL_ADDED_P50_1 - cpu[name, one]
        least = (cpu[name, one] + floor[one]) / cpu["aiohttp", one]
        print(
            f"on {name}, added latency at {one} connection: goal 1 leaves the policy"
            f" {budget:.0f} µs per request, the floor takes {floor[one] / budget:.2f} of"
            f" it; at the floor, added work / bare aiohttp's {least:.2f} at least"
            f" (goal <= {GOAL_ADDED_P50_1})"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds of wrk per figure")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument(
        "--iterations", type=int, default=20_000, help="requests of a floor part's loop"
    )
    parser.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--uvicorn-bare", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parsed = parser.parse_args()
    if parsed.part:
        run_part(parsed.part, parsed.iterations, parsed.batch, parsed.folder)
    elif parsed.uvicorn_bare:
        run_uvicorn_bare(parsed.uvicorn_bare, parsed.url)
    else:
        main(parsed.duration, parsed.rounds, parsed.iterations)
