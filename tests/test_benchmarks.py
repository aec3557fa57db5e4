"""The benchmark scripts run and print their tables (their figures are for docs/, not tests)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.pg import PG_URL
from tests.services import require

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def run(script: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_proxy_overhead_prints_its_table() -> None:
    out = run("proxy_overhead.py", "--requests", "64", "--rounds", "1")
    assert "added p50 kb/bare" in out
    assert "throughput kb/bare" in out
    rows = [line.split() for line in out.splitlines()]
    paths = {(row[0], row[1]) for row in rows if len(row) == 7}
    assert {("1", "keybrake"), ("32", "keybrake"), ("1", "bare"), ("32", "bare")} <= paths
    assert "async with VaultKey (issue + revoke)" in out


def test_vault_key_roundtrip_prints_its_figures() -> None:
    out = run("vault_key_roundtrip.py", "--n", "30")
    assert "GET /healthz (baseline)" in out
    assert "async with VaultKey (issue+revoke)" in out
    assert "goal: async with VaultKey p50" in out


@pytest.mark.tools
def test_proxy_wrk_prints_its_table_and_goals() -> None:
    require("tools")
    out = run("proxy_wrk.py", "--duration", "1", "--rounds", "1", "--warmup", "0")
    rows = [line.split() for line in out.splitlines()]
    paths = {(row[0], row[1]) for row in rows if len(row) == 7}
    assert {("1", "direct"), ("1", "bare"), ("1", "keybrake"), ("32", "keybrake")} <= paths
    assert "added p50 kb/bare" in out
    assert "goal: throughput kb/bare at 32 connections" in out
    assert "goal: added p50 kb/bare at 1 connection" in out


@pytest.mark.tools
def test_store_size_prints_its_figures_and_goal() -> None:
    require("tools")
    out = run(
        "store_size.py",
        *("--keys", "1000", "--audit-rows", "5000", "--duration", "1", "--rounds", "1"),
    )
    assert "full store: 1,000 keys and 5,000 audit entries" in out
    stores = {line.split()[0] for line in out.splitlines() if line.split()[:1]}
    assert {"empty", "full"} <= stores
    assert "goal: p50 full/empty" in out


@pytest.mark.postgres
@pytest.mark.tools
def test_hot_key_replicas_prints_its_figures_and_goal() -> None:
    require("postgres")
    require("tools")
    out = run(
        "hot_key_replicas.py",
        *("--database", PG_URL, "--replicas", "2", "--keys", "4"),
        *("--connections", "4", "--duration", "1", "--rounds", "1"),
    )
    assert "one hot key" in out
    assert "spread over 4 keys" in out
    assert "goal: throughput hot/spread" in out


@pytest.mark.tools
def test_proxy_instructions_prints_its_counts() -> None:
    require("tools")
    out = run("proxy_instructions.py", "--duration", "2", "--warmup", "0", "--connections", "32")
    [row] = [line.split() for line in out.splitlines() if line.split()[:1] == ["32"]]
    bare, keybrake, ratio = map(float, row[1:])
    assert bare > 0
    assert keybrake > 0
    assert ratio == pytest.approx(keybrake / bare, abs=0.01)
    assert "throughput kb/bare the CPU allows at 32 connections" in out


@pytest.mark.tools
def test_proxy_floor_prints_its_parts_and_budgets() -> None:
    require("tools")
    out = run("proxy_floor.py", "--duration", "1", "--rounds", "1", "--iterations", "500")
    rows = {line[:44].strip(): line[44:].split() for line in out.splitlines()}
    parts = [
        "strict form read (parse_qsl + urlencode)",
        "token hash (sha256)",
        "reserve + settle (SQLite)",
        "audit row (SQLite)",
    ]
    for column in (0, 1):
        figures = [float(rows[part][column]) for part in parts]
        assert all(figure > 0 for figure in figures)
        floor = float(rows["floor: the least an enforcing proxy adds"][column])
        assert floor == pytest.approx(sum(figures), abs=0.2)
        for proxy in (
            "bare pass-through, aiohttp (the baseline)",
            "bare pass-through, uvicorn + httptools",
            "keybrake, full policy (SQLite)",
        ):
            assert float(rows[proxy][column]) > 0
    assert "on aiohttp, throughput at 32 connections: goal 1 leaves the policy" in out
    assert "on uvicorn, added latency at 1 connection: goal 1 leaves the policy" in out
