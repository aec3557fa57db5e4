"""Run localstripe (a Stripe API imitation, PyPI ``localstripe``) on loopback, keeping nothing.

localstripe binds every interface and pickles its state to ``/tmp/localstripe.pickle`` when
run as its own command. Here it runs in a child process that binds 127.0.0.1 on a free port
and whose store never touches the disk. Used by ``keybrake demo`` and the tests.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
from collections.abc import Iterator

__all__ = ["localstripe_server"]

_CHILD = """
import socket, sys
import localstripe.resources as resources
resources.Store.dump_to_disk = lambda self: None
resources.Store.try_load_from_disk = lambda self: None
from aiohttp import web
from localstripe.server import app
sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
sock.bind(("127.0.0.1", 0))
print(sock.getsockname()[1], flush=True)
web.run_app(app, sock=sock, print=None, access_log=None, handle_signals=True)
"""


@contextlib.contextmanager
def localstripe_server() -> Iterator[str]:
    """Start localstripe on 127.0.0.1 and yield its base URL; stop it on exit.

    Raises:
        RuntimeError: localstripe is not installed or did not start.
    """
    # stderr goes to an anonymous file, not a pipe nobody drains (a full pipe would block it).
    errors = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen(
        [sys.executable, "-W", "ignore", "-c", _CHILD],
        stdout=subprocess.PIPE,
        stderr=errors,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if not line.isdigit():
            proc.kill()
            proc.wait(timeout=10)
            errors.seek(0)
            raise RuntimeError(
                "localstripe did not start (pip install 'keybrake[demo]'):\n"
                + errors.read()[-2000:]
            )
        yield f"http://127.0.0.1:{line}"
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        errors.close()
