"""Run Prism (npm ``@stoplight/prism-cli``) as a mock Twilio upstream on loopback.

Prism serves Twilio's official OpenAPI spec of the 2010-04-01 API, shipped in the npm package
``@twilio-alpha/mcp``. Both come from ``package.json`` at the repository root: run
``npm install`` there first.

Prism runs in mock mode with static examples (the spec's own examples, so answers are the same
on every run) and validates each request against the spec: a missing required parameter or a
malformed SID gets a 422 ``application/problem+json`` answer, a request without HTTP Basic
credentials a 401. ``--errors`` stays off on purpose: with it, Prism also checks its own answers
and returns 500 where the spec's examples do not fit its schemas (the Messages list does not).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO

__all__ = ["PRISM_BIN", "TWILIO_API_V2010_SPEC", "prism_twilio_server"]

_REPO = Path(__file__).resolve().parent.parent
PRISM_BIN = _REPO / "node_modules" / ".bin" / "prism"
TWILIO_API_V2010_SPEC = (
    _REPO
    / "node_modules"
    / "@twilio-alpha"
    / "mcp"
    / "twilio-oai"
    / "spec"
    / "json"
    / "twilio_api_v2010.json"
)

_START_TIMEOUT = 60.0
_STOP_TIMEOUT = 10.0
_START_ATTEMPTS = 3


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers(url: str) -> bool:
    """Whether an HTTP server answers at ``url`` (any status counts)."""
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True  # Prism answers 404 for "/": it is up.
    except OSError:
        return False


def _log_tail(log: IO[str], limit: int = 4000) -> str:
    log.flush()
    log.seek(0)
    return log.read()[-limit:]


def _stop(proc: subprocess.Popen[str]) -> None:
    """Stop Prism's whole process group: SIGTERM, then SIGKILL if it lingers."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # Children that outlived the leader still carry its group id.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def _start(log: IO[str]) -> tuple[subprocess.Popen[str], str] | None:
    """Start Prism on a free port; None if it exited early (say, the port was taken)."""
    port = _free_port()
    command = [
        str(PRISM_BIN),
        "mock",
        str(TWILIO_API_V2010_SPEC),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dynamic=false",
    ]
    env = {**os.environ, "FORCE_COLOR": "0", "NO_COLOR": "1"}
    return launch("Prism", command, cwd=_REPO, env=env, log=log, port=port, probe="/")


def launch(
    name: str,
    command: list[str],
    *,
    cwd: Path,
    env: dict[str, str],
    log: IO[str],
    port: int,
    probe: str,
) -> tuple[subprocess.Popen[str], str] | None:
    """Start a server in a process group of its own and wait until ``probe`` answers on
    ``port``; None if it exited early (say, the port was taken).

    Raises:
        RuntimeError: it did not answer within the start timeout (it is stopped first).
    """
    log.write(f"$ {' '.join(command)}\n")
    log.flush()
    proc = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, so _stop reaches its children
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + _START_TIMEOUT
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                _stop(proc)
                return None
            if _answers(url + probe):
                return proc, url
            time.sleep(0.2)
    except BaseException:
        _stop(proc)
        raise
    _stop(proc)
    raise RuntimeError(
        f"{name} did not answer on {url} within {_START_TIMEOUT:.0f}s; log tail:\n" + _log_tail(log)
    )


@contextlib.contextmanager
def prism_twilio_server() -> Iterator[str]:
    """Start Prism mocking Twilio's 2010-04-01 API on 127.0.0.1; yield its base URL.

    The URL has no trailing slash and no path: requests go to
    ``{url}/2010-04-01/Accounts/{AccountSid}/Messages.json`` and so on. Prism and its child
    processes are stopped on exit.

    Raises:
        RuntimeError: ``node_modules`` lacks Prism or the spec (run ``npm install`` at the
            repository root), or Prism did not start.
    """
    for path in (PRISM_BIN, TWILIO_API_V2010_SPEC):
        if not path.exists():
            raise RuntimeError(
                f"{path} is missing: run `npm install` in {_REPO} "
                "(package.json pins @stoplight/prism-cli and @twilio-alpha/mcp)"
            )
    # Output goes to an anonymous file, not a pipe nobody drains (a full pipe would block it).
    log = tempfile.TemporaryFile(mode="w+", encoding="utf-8")  # noqa: SIM115 - closed below
    try:
        started = None
        for _ in range(_START_ATTEMPTS):
            started = _start(log)
            if started is not None:
                break
        if started is None:
            raise RuntimeError(
                f"Prism exited before answering ({_START_ATTEMPTS} attempts); log tail:\n"
                + _log_tail(log)
            )
        proc, url = started
        try:
            yield url
        finally:
            _stop(proc)
    finally:
        log.close()
