"""Real servers and workers as subprocesses on loopback, stopped however a test ends.

The Django and Celery tests run what a deployment runs: ``keybrake serve``, uvicorn,
gunicorn and ``celery worker``, each a process of its own, logging to a file in the test's
temporary folder (shown when it fails to start).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import attrs

from keybrake.server.app import generate_admin_token

ROOT = Path(__file__).parent.parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without ``KEYBRAKE_*``, ``DJANGO_*`` and ``CELERY_*``, plus ``extra``;
    the repository is on ``PYTHONPATH`` so ``tests.…`` modules import."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("KEYBRAKE_", "DJANGO_", "CELERY_"))
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Stop ``proc`` and the processes of its group (a worker's children), for sure."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(15)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # what is left of the group
    proc.wait(15)


@contextlib.contextmanager
def running(
    command: Sequence[str],
    *,
    env: Mapping[str, str],
    log: Path,
    ready: Callable[[], bool],
    cwd: Path = ROOT,
    timeout: float = 30.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command`` in a process group of its own until the block ends.

    Waits until ``ready()`` is true; fails with the end of ``log`` if the process exits or
    takes longer than ``timeout``.
    """
    with log.open("wb") as out:
        proc = subprocess.Popen(
            list(command), env=dict(env), cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"{command[0]} did not start (exit {proc.poll()}):\n"
                    + log.read_text(errors="replace")[-3000:]
                )
            time.sleep(0.05)
        yield proc
    finally:
        stop(proc)


def answers(url: str) -> Callable[[], bool]:
    """A ``ready`` check: ``url`` answers HTTP (any status)."""

    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return True
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False

    return check


@attrs.frozen
class KeybrakeProcess:
    url: str
    admin_token: str


@contextlib.contextmanager
def keybrake_server(folder: Path, stripe_url: str) -> Iterator[KeybrakeProcess]:
    """``keybrake serve`` with localstripe as Stripe, on a free loopback port."""
    port = free_port()
    token = generate_admin_token()
    env = clean_env(
        KEYBRAKE_ADMIN_TOKEN=token,
        KEYBRAKE_STRIPE_SECRET_KEY="sk_test_keybrake",
        KEYBRAKE_STRIPE_API_BASE=stripe_url,
    )
    command = [
        sys.executable, "-m", "keybrake.cli", "serve", "--host", "127.0.0.1",
        "--port", str(port), "--database", f"sqlite:///{folder / 'keybrake.db'}",
        "--log-level", "warning",
    ]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with running(command, env=env, log=folder / "keybrake.log", ready=answers(f"{url}/healthz")):
        yield KeybrakeProcess(url, token)
