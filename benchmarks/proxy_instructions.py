#!/usr/bin/env python3
"""Instructions per proxied request: keybrake against a bare aiohttp pass-through, by callgrind.

The wall-clock figures of ``proxy_wrk.py`` move by a third from one round to the next on a
shared machine; the instructions a proxy executes per request don't. This benchmark runs
each proxy in turn under ``valgrind --tool=callgrind`` (the same upstream, the same wrk
load, POST with a form body as in ``proxy_wrk.py``), counts instructions only while wrk
drives it (instrumentation switched on after a warm-up), and prints instructions per
request and the ratio keybrake/bare.

At 32 connections each proxy's one thread is saturated, so its throughput is the inverse of
its work per request: bare/keybrake instructions is the throughput ratio the CPU allows, the
figure to read beside ``proxy_wrk.py``'s throughput goal (0.9). At 1 connection the work is
done in series, so it bounds the added latency too. Under callgrind everything runs about
fifty times slower, so the figures are counts, never times.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from proxy_overhead import BODY, free_port, wait_for
from proxy_wrk import OVERHEAD, PATH, issue_key, keybrake_env, upstream_serving, wrk

#: Seconds a proxy under callgrind may take to start answering.
START_TIMEOUT = 240.0


@contextlib.contextmanager
def under_callgrind(
    args: list[str], out: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """``python args`` under callgrind, instrumentation off until switched on."""
    proc = subprocess.Popen(
        [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={out}",
            sys.executable,
            *args,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def prime(url: str, token: str, requests: int = 20) -> None:
    """Send ``requests`` of wrk's requests one at a time, each waited for: the first ones
    through a proxy under callgrind take seconds, longer than a short wrk run."""
    for _ in range(requests):
        request = urllib.request.Request(
            url,
            data=BODY.encode(),
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "Authorization": f"Bearer {token}",
            },
        )
        with urllib.request.urlopen(request, timeout=60) as answer:
            answer.read()


def callgrind_control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], check=True, capture_output=True)


def instructions(out: Path) -> int:
    """Instructions counted in every dump callgrind wrote for ``out``."""
    total = 0
    for dump in out.parent.glob(out.name + "*"):
        counted = 0
        with dump.open(errors="replace") as lines:
            for line in lines:
                if line.startswith(("totals:", "summary:")):
                    counted = max(counted, int(line.split()[1]))
        total += counted
    return total


def per_request(
    proc: subprocess.Popen[bytes], out: Path, url: str, token: str, *, connections: int,
    duration: int, warmup: int, script_dir: str,
) -> float:  # fmt: skip
    """Instructions per request of ``proc`` over one wrk run at ``connections``."""
    prime(url, token)
    if warmup:
        wrk(url, token, connections=connections, duration=warmup, script_dir=script_dir)
    for old in out.parent.glob(out.name + "*"):
        old.unlink()
    callgrind_control("--zero", str(proc.pid))
    callgrind_control("--instr=on", str(proc.pid))
    result = wrk(url, token, connections=connections, duration=duration, script_dir=script_dir)
    callgrind_control("--instr=off", str(proc.pid))
    callgrind_control("--dump", str(proc.pid))
    requests = result["rps"] * duration
    return instructions(out) / requests


def main(duration: int, warmup: int, connections: list[int]) -> None:
    for tool in ("wrk", "valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            raise SystemExit(f"proxy_instructions.py needs {tool} (apt-get install wrk valgrind)")
    figures: dict[tuple[str, int], float] = {}
    with tempfile.TemporaryDirectory() as tmp, upstream_serving(free_port(), "uvloop") as upstream:
        folder = Path(tmp)
        bare_port = free_port()
        bare_out = folder / "bare.callgrind"
        bare_args = [str(OVERHEAD), "--role", "bare", "--port", str(bare_port), "--url", upstream]
        with under_callgrind([*bare_args, "--loop", "uvloop"], bare_out) as bare:
            wait_for(f"http://127.0.0.1:{bare_port}/stripe/", timeout=START_TIMEOUT, attempt=10)
            for conns in connections:
                figures["bare", conns] = per_request(
                    bare, bare_out, f"http://127.0.0.1:{bare_port}/stripe{PATH}", "x",
                    connections=conns, duration=duration, warmup=warmup, script_dir=tmp,
                )  # fmt: skip
        kb_port = free_port()
        kb_out = folder / "keybrake.callgrind"
        kb_args = [
            "-m", "keybrake.cli", "serve", "--port", str(kb_port),
            "--database", f"sqlite:///{folder / 'bench.db'}",
            "--log-level", "warning", "--loop", "uvloop",
        ]  # fmt: skip
        with under_callgrind(kb_args, kb_out, env=keybrake_env(upstream)) as keybrake:
            url = f"http://127.0.0.1:{kb_port}"
            wait_for(f"{url}/healthz", timeout=START_TIMEOUT, attempt=10)
            token = issue_key(url)
            for conns in connections:
                figures["keybrake", conns] = per_request(
                    keybrake, kb_out, f"{url}/stripe{PATH}", token,
                    connections=conns, duration=duration, warmup=warmup, script_dir=tmp,
                )  # fmt: skip

    print(
        f"callgrind, POST {PATH} with a form body driven by wrk, {duration} s per run "
        "(instructions counted only while wrk runs), event loop: uvloop, store: sqlite"
    )
    print(f"{'conns':>5}{'bare M instr/req':>18}{'keybrake M instr/req':>22}{'kb/bare':>9}")
    for conns in connections:
        bare_per, kb_per = figures["bare", conns], figures["keybrake", conns]
        print(f"{conns:>5}{bare_per / 1e6:>18.3f}{kb_per / 1e6:>22.3f}{kb_per / bare_per:>9.2f}")
    if 32 in connections:
        bound = figures["bare", 32] / figures["keybrake", 32]
        print()
        print(
            f"throughput kb/bare the CPU allows at 32 connections: {bound:.2f}"
            " (proxy_wrk.py's goal: >= 0.9)"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds of wrk per figure")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of wrk before counting")
    parser.add_argument(
        "--connections", type=int, nargs="+", default=[1, 32], help="wrk's connections"
    )
    parsed = parser.parse_args()
    main(parsed.duration, parsed.warmup, parsed.connections)
