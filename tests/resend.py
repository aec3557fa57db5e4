"""Run resend-local (npm ``resend-local``) as a mock Resend upstream on loopback.

resend-local is a Next.js app in standalone form: ``dist/app/server.js`` serves Resend's REST
API (a Hono app behind a catch-all route: ``POST /emails``, ``POST /emails/batch``,
``GET /emails/{id}``, the domains and API-key endpoints; audiences, contacts, broadcasts,
``PATCH /emails/{id}`` and ``POST /emails/{id}/cancel`` answer 501) and a dashboard under
``/dashboard``. It keeps its state in SQLite through libsql. It comes from ``package.json`` at
the repository root: run ``npm install`` there first.

Its command, ``resend-local [--port N]`` (``dist/starter.js``), is not used here: it takes no
host, and it runs ``server.js`` with ``DATABASE_URL=file:resend-local.sqlite`` relative to
``dist/app``, i.e. one database inside ``node_modules`` shared by every run. This helper runs
``node dist/app/server.js`` itself, with what that script reads from the environment:

* ``HOSTNAME=127.0.0.1``: Next's standalone server binds ``process.env.HOSTNAME``, else
  ``0.0.0.0`` (and a container's exported ``HOSTNAME`` would be its name); set explicitly.
* ``PORT``: a free port.
* ``DATABASE_URL=file:<absolute path>``: a copy of the package's empty database (the app runs
  no migrations; the shipped ``resend-local.sqlite`` carries the schema) in a directory of the
  caller's (a test's ``tmp_path``) or a private temporary one removed on exit.

Any ``Authorization: Bearer re_...`` is accepted (the key is not looked up); none gives 401
``missing_api_key``, one without the ``re_`` prefix 401 ``invalid_api_key``. Errors are
``{"statusCode": ..., "message": ..., "type": ...}`` (the real API names the kind ``name``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from tests.prism import _free_port, _log_tail, _stop, launch
from tests.services import require

__all__ = ["RESEND_LOCAL_APP", "resend_local_server"]

_REPO = Path(__file__).resolve().parent.parent
RESEND_LOCAL_APP = _REPO / "node_modules" / "resend-local" / "dist" / "app"
_SERVER_JS = RESEND_LOCAL_APP / "server.js"
_EMPTY_DATABASE = RESEND_LOCAL_APP / "resend-local.sqlite"

_START_TIMEOUT = 60.0
_START_ATTEMPTS = 3


def _start(log: IO[str], node: str, database: Path) -> tuple[subprocess.Popen[str], str] | None:
    """Start resend-local on a free port; None if it exited early (say, the port was taken)."""
    port = _free_port()
    command = [node, str(_SERVER_JS)]
    env = {
        **os.environ,
        "HOSTNAME": "127.0.0.1",
        "PORT": str(port),
        "DATABASE_URL": f"file:{database}",
        "NEXT_TELEMETRY_DISABLED": "1",
        "FORCE_COLOR": "0",
        "NO_COLOR": "1",
    }
    log.write(f"HOSTNAME=127.0.0.1 PORT={port} DATABASE_URL=file:{database}\n")
    # The API answers 401 without a key: a cheap probe, unlike "/" (a redirect to the
    # server-rendered dashboard). server.js chdirs to its own directory anyway.
    return launch(
        "resend-local",
        command,
        cwd=RESEND_LOCAL_APP,
        env=env,
        log=log,
        port=port,
        probe="/emails",
    )


@contextlib.contextmanager
def resend_local_server(state_dir: Path | None = None) -> Iterator[str]:
    """Start resend-local on 127.0.0.1 and a free port; yield its base URL.

    The URL has no trailing slash and no path: requests go to ``{url}/emails`` and so on, with
    ``Authorization: Bearer re_<anything>``. Its database is ``state_dir/resend-local.sqlite``
    (``state_dir`` must exist; a test passes its ``tmp_path``), else a file in a private
    temporary directory removed on exit. The server's process group is stopped on exit.

    Raises:
        RuntimeError: ``node`` is not on PATH, ``node_modules`` lacks resend-local (run
            ``npm install`` at the repository root), or the server did not start.
    """
    require("node")
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("`node` is not on PATH: resend-local needs Node.js")
    for path in (_SERVER_JS, _EMPTY_DATABASE):
        if not path.exists():
            raise RuntimeError(
                f"{path} is missing: run `npm install` in {_REPO} (package.json pins resend-local)"
            )
    with contextlib.ExitStack() as stack:
        if state_dir is None:
            state_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="resend-")))
        database = state_dir.resolve() / "resend-local.sqlite"
        # Output goes to an anonymous file, not a pipe nobody drains (a full pipe would block).
        log = stack.enter_context(tempfile.TemporaryFile(mode="w+", encoding="utf-8"))
        started = None
        for _ in range(_START_ATTEMPTS):
            shutil.copyfile(_EMPTY_DATABASE, database)  # afresh: a failed start may have written
            started = _start(log, node, database)
            if started is not None:
                break
        if started is None:
            raise RuntimeError(
                f"resend-local exited before answering ({_START_ATTEMPTS} attempts); log tail:\n"
                + _log_tail(log)
            )
        proc, url = started
        try:
            yield url
        finally:
            _stop(proc)
