"""The ``keybrake`` command: ``serve`` runs the server, ``demo`` shows a whole agent run."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import signal
import sys
from collections.abc import Sequence
from typing import NoReturn

__all__ = ["main"]


log = logging.getLogger("keybrake.server")


def _serve(args: argparse.Namespace) -> int:
    from keybrake.server.app import create_app
    from keybrake.server.config import ServerConfig
    from keybrake.server.runner import running_server

    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    # That format names no source line, thread or process, so no record looks them up (the
    # logging HOWTO's "Optimization"): at --log-level info every proxy request logs a line,
    # and this takes about a fifth of its cost.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    from keybrake.server.proxy.vendors import PricingFileError
    from keybrake.server.stores.base import StoreUnavailable
    from keybrake.vendors import VendorLoadError

    try:
        config = ServerConfig.from_env(
            database_url=args.database,
            pricing_file=args.pricing,
            upstream_timeout=args.upstream_timeout,
            idle_timeout=args.idle_timeout,
            retention_days=args.retention_days,
            audit=args.audit,
            metrics_token=args.metrics_token,
        )
    except (ValueError, VendorLoadError) as exc:
        print(f"keybrake serve: {exc}", file=sys.stderr)
        return 2

    def announce(token: str) -> None:
        print(
            "No master token was configured, so one was created. It is shown only once:\n\n"
            f"    KEYBRAKE_TOKEN={token}\n",
            flush=True,
        )

    try:
        app = create_app(config, on_new_admin_token=announce)
    except (ImportError, PricingFileError, ValueError) as exc:
        print(f"keybrake serve: {exc}", file=sys.stderr)
        return 2
    try:
        loop = _event_loop(args.loop)
    except ImportError:
        print(
            "keybrake serve: --loop uvloop needs uvloop (pip install 'keybrake[server]')",
            file=sys.stderr,
        )
        return 2

    async def serve() -> None:
        stop = _stop_on_signals()
        async with running_server(config, host=args.host, port=args.port, app=app):
            _tune_gc()
            print(
                f"keybrake serving on http://{args.host}:{args.port} ({_store_name(config)})",
                flush=True,
            )
            await stop.wait()  # until SIGINT or SIGTERM
            log.info("shutting down: requests in flight finish, queues are written")

    asyncio.set_event_loop(loop)
    task = loop.create_task(serve())
    try:
        loop.run_until_complete(task)
    except KeyboardInterrupt:
        pass
    except StoreUnavailable as exc:
        print(f"keybrake serve: {exc}", file=sys.stderr)
        return 2
    finally:
        # Stopping runs the server's clean shutdown: requests finish, queues are written.
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(task)
        loop.run_until_complete(loop.shutdown_asyncgens())
        asyncio.set_event_loop(None)
        loop.close()
    return 0


#: The cyclic garbage collector's youngest-generation threshold while serving: CPython
#: 3.13's default (700 before).
GC_THRESHOLD = 2000


def _tune_gc() -> None:
    """Set the garbage collector up for serving, once the server has started.

    What exists by then (modules, the application, the vendors) lives as long as the
    process: frozen, full collections no longer walk it. A proxy request under load leaves a
    few dozen objects in the youngest generation, so at the threshold of 700 the collector
    ran every couple of dozen requests; at :data:`GC_THRESHOLD` it runs about a third as
    often, each run still well under a millisecond. Under wrk at 32 connections this cut the
    collector's time per proxy request from about 28 to 8 microseconds (``gc.callbacks``)
    and the instructions per request by about 1.5 % (callgrind); see the Performance page.
    Only ``keybrake serve``, which owns its process, does this: an application embedding
    the server keeps its own settings.
    """
    gc.collect()
    gc.freeze()
    youngest, older, oldest = gc.get_threshold()
    if youngest:  # 0: the collector was switched off, and stays off
        gc.set_threshold(max(GC_THRESHOLD, youngest), older, oldest)


def _stop_on_signals() -> asyncio.Event:
    """An event set by the first SIGINT or SIGTERM; later ones are logged and ignored, so a
    second signal can't cut the clean shutdown short."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning(
                "%s: already shutting down; waiting for requests in flight",
                signal.Signals(signum).name,
            )
            return
        log.info("%s received", signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, on_signal, signum)
        except NotImplementedError:  # pragma: no cover - Windows
            signal.signal(signum, lambda n, _: loop.call_soon_threadsafe(on_signal, n))
    return stop


def _event_loop(choice: str) -> asyncio.AbstractEventLoop:
    """The loop ``serve`` runs on: uvloop when asked for or, with ``auto``, when installed.

    Raises:
        ImportError: ``uvloop`` was asked for and is not installed.
    """
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise
        else:
            loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
            return loop
    return asyncio.new_event_loop()


def _store_name(config: object) -> str:
    url = str(getattr(config, "database_url", ""))
    return url if url.startswith("sqlite:") else url.partition(":")[0]


def _tokens(args: argparse.Namespace) -> int:
    import asyncio

    from keybrake.server.api.tokens import create_admin_token
    from keybrake.server.config import ServerConfig
    from keybrake.server.stores import open_store
    from keybrake.server.stores.base import StoreUnavailable

    config = ServerConfig.from_env(database_url=args.database)

    async def run() -> int:
        store = open_store(config.database_url)
        await store.open()
        try:
            if args.action == "create":
                token_id, token = await create_admin_token(store, args.tenant)
                print(f"Created {token_id} for tenant {args.tenant!r}. It is shown only once:\n")
                print(f"    KEYBRAKE_TOKEN={token}\n")
            elif args.action == "list":
                print(f"{'id':<22}{'tenant':<20}{'created (UTC)':<22}status")
                for entry in await store.list_admin_tokens():
                    created = _when(entry.created_at)
                    status = "active"
                    if entry.revoked_at is not None:
                        status = f"revoked {_when(entry.revoked_at)}"
                    print(f"{entry.id:<22}{entry.tenant:<20}{created:<22}{status}")
            else:
                if not await store.revoke_admin_token(args.token_id, _now()):
                    print(f"keybrake tokens: no token {args.token_id!r}", file=sys.stderr)
                    return 1
                print(f"Revoked {args.token_id}.")
            return 0
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except (StoreUnavailable, ValueError) as exc:
        print(f"keybrake tokens: {exc}", file=sys.stderr)
        return 2


def _now() -> int:
    import time

    return time.time_ns() // 1000


def _when(micros: int) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(micros / 1e6, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _audit(args: argparse.Namespace) -> int:
    import asyncio

    from keybrake import Keybrake, KeybrakeError

    async def run() -> int:
        async with Keybrake() as kb:
            rows = []
            async for record in kb.audit(key_id=args.key_id, decision=args.decision):
                rows.append(record)
                if len(rows) >= args.limit:
                    break
        header = (
            f"{'time (UTC)':<20}{'key':<28}{'label':<16}{'decision':<22}"
            f"{'method':<7}{'status':>6}{'settled':>10}  path"
        )
        print(header)
        for r in rows:
            print(
                f"{r.at:%Y-%m-%d %H:%M:%S} {(r.key_id or '-'):<27} {(r.label or '')[:15]:<15} "
                f"{r.decision:<21} {r.method:<6} {r.status:>6} {r.settled_usd:>10}  {r.path}"
            )
        if not rows:
            print("(no audit entries)")
        return 0

    try:
        return asyncio.run(run())
    except KeybrakeError as exc:
        print(f"keybrake audit: {exc}", file=sys.stderr)
        return 2


def _migrate(args: argparse.Namespace) -> int:
    import asyncio

    from keybrake.server.config import ServerConfig
    from keybrake.server.stores.base import StoreUnavailable

    config = ServerConfig.from_env(database_url=args.database)
    if not config.database_url.startswith(("postgresql://", "postgres://")):
        print("keybrake migrate: SQLite needs no migration (its schema is made on start)")
        return 0

    async def run() -> list[int]:
        from keybrake.server.stores.postgres.store import PostgresStore

        store = PostgresStore(config.database_url)
        await store.open(check_schema=False)
        try:
            return await store.migrate()
        finally:
            await store.close()

    try:
        applied = asyncio.run(run())
    except (StoreUnavailable, ValueError) as exc:
        print(f"keybrake migrate: {exc}", file=sys.stderr)
        return 2
    if applied:
        print(f"applied schema versions {', '.join(map(str, applied))}")
    else:
        print("the schema is up to date")
    return 0


def _older_than(text: str) -> int | None:
    """``--older-than``: a whole number of days, ``30d``; None if it is not one (or is 0)."""
    import re

    match = re.fullmatch(r"\s*(\d{1,5})d\s*", text)
    days = int(match.group(1)) if match else 0
    return days if days >= 1 else None


def _prune(args: argparse.Namespace) -> int:
    import asyncio

    from keybrake.server.config import ServerConfig
    from keybrake.server.ledger.retention import cutoff
    from keybrake.server.stores import open_store
    from keybrake.server.stores.base import PruneResult, StoreUnavailable

    days = None if args.older_than is None else _older_than(args.older_than)
    if days is None:
        print(
            "keybrake prune: --older-than takes a number of days, like --older-than 30d",
            file=sys.stderr,
        )
        return 2
    before = cutoff(_now(), days)

    async def run(database_url: str) -> PruneResult:
        store = open_store(database_url)
        await store.open()
        try:
            return await store.prune(before)
        finally:
            await store.close()

    try:
        config = ServerConfig.from_env(database_url=args.database)
        result = asyncio.run(run(config.database_url))
    except (StoreUnavailable, ValueError) as exc:
        print(f"keybrake prune: {exc}", file=sys.stderr)
        return 2
    print(
        f"deleted {result.audit_entries} audit entries, {result.reservations} finished"
        f" reservations and {result.spend_rows} spend rows older than {days} days"
        f" (before {_when(before)} UTC)"
    )
    return 0


def _keys(args: argparse.Namespace) -> int:
    from keybrake._cli_keys import run_keys

    return run_keys(args)


class _Parser(argparse.ArgumentParser):
    """Bad arguments are one line on standard error (and exit status 2), never a usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see '{self.prog} --help')\n")


def _add_keys(commands: argparse._SubParsersAction[_Parser]) -> None:
    from keybrake._cli_keys import STATUSES

    keys = commands.add_parser(
        "keys", help="list, show and revoke vault keys (KEYBRAKE_URL, KEYBRAKE_TOKEN)"
    )
    actions = keys.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="a table of keys")
    listing.add_argument("--status", choices=STATUSES, default="active", help="which keys (active)")
    listing.add_argument(
        "--label-prefix", default=None, metavar="P", help="only keys whose label starts with P"
    )
    listing.add_argument("--json", action="store_true", help="JSON instead of a table")
    show = actions.add_parser("show", help="one key, with its recent audit entries")
    show.add_argument("key_id", metavar="ID")
    show.add_argument("--json", action="store_true", help="JSON instead of text")
    revoke = actions.add_parser(
        "revoke",
        help="revoke keys by id, or every active key matching all the filters given",
        description="Revoke keys by id, or every active key matching ALL the filters given"
        " (asking first, unless --yes).",
    )
    revoke.add_argument("key_ids", nargs="*", metavar="ID")
    revoke.add_argument(
        "--label-prefix", default=None, metavar="P", help="keys whose label starts with P"
    )
    revoke.add_argument(
        "--metadata",
        action="append",
        metavar="K=V",
        help="keys whose metadata has K=V (repeatable: every pair must hold)",
    )
    revoke.add_argument("--vendor", default=None, help="keys of this vendor")
    revoke.add_argument("--all", action="store_true", help="every active key of the tenant")
    revoke.add_argument("-y", "--yes", action="store_true", help="don't ask for confirmation")
    keys.set_defaults(run=_keys)


def _demo(args: argparse.Namespace) -> int:
    from keybrake._demo import run_demo

    return run_demo()


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(prog="keybrake", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the issuance API and the proxy")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    serve.add_argument("--port", type=int, default=8787, help="port to bind (8787)")
    serve.add_argument(
        "--database",
        default=None,
        help="sqlite:///path or postgresql://... (else KEYBRAKE_DATABASE_URL, else"
        " sqlite:///keybrake.db)",
    )
    serve.add_argument(
        "--pricing",
        default=None,
        help="JSON file overriding prices (else KEYBRAKE_PRICING_FILE); see docs/vendors",
    )
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    serve.add_argument(
        "--upstream-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="how long a vendor may take to answer before 504 upstream_timeout"
        " (else KEYBRAKE_UPSTREAM_TIMEOUT, else 30)",
    )
    serve.add_argument(
        "--idle-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="how long a connection may wait for a whole request head, after it opens and"
        " after each answer, before it is closed (else KEYBRAKE_IDLE_TIMEOUT, else 75)",
    )
    serve.add_argument(
        "--loop",
        default="auto",
        choices=["auto", "asyncio", "uvloop"],
        help="event loop: uvloop when installed (the 'server' extra), else asyncio (auto)",
    )
    serve.add_argument(
        "--retention-days",
        type=int,
        default=None,
        metavar="N",
        help="delete audit entries, finished reservations and spend rows older than N days"
        " in the background; 0 keeps everything (else KEYBRAKE_RETENTION_DAYS, else 30)",
    )
    serve.add_argument(
        "--audit",
        default=None,
        choices=["batched", "durable"],
        help="durable: a proxy answer waits for its audit entry's commit, 503 audit_unavailable"
        " if it can't be written (else KEYBRAKE_AUDIT, else batched)",
    )
    serve.add_argument(
        "--metrics-token",
        default=None,
        metavar="TOKEN",
        help="/metrics then asks for 'Authorization: Bearer TOKEN' (else"
        " KEYBRAKE_METRICS_TOKEN, else /metrics is open)",
    )
    serve.set_defaults(run=_serve)

    prune = commands.add_parser(
        "prune", help="delete audit entries, finished reservations and spend rows, once"
    )
    prune.add_argument("--older-than", default=None, metavar="DAYS", help="e.g. 30d")
    prune.add_argument(
        "--database",
        default=None,
        help="sqlite:///path or postgresql://... (else KEYBRAKE_DATABASE_URL)",
    )
    prune.set_defaults(run=_prune)

    migrate = commands.add_parser("migrate", help="create or upgrade the PostgreSQL schema")
    migrate.add_argument(
        "--database", default=None, help="postgresql://... (else KEYBRAKE_DATABASE_URL)"
    )
    migrate.set_defaults(run=_migrate)

    tokens = commands.add_parser("tokens", help="manage master tokens (one tenant each)")
    database = _Parser(add_help=False)
    database.add_argument(
        "--database",
        default=argparse.SUPPRESS,
        help="sqlite:///path or postgresql://... (else KEYBRAKE_DATABASE_URL)",
    )
    tokens.add_argument("--database", default=None, help=argparse.SUPPRESS)
    token_actions = tokens.add_subparsers(dest="action", required=True)
    create = token_actions.add_parser(
        "create", help="make a token; it is shown once", parents=[database]
    )
    create.add_argument("--tenant", default="default", help="the team it belongs to")
    token_actions.add_parser(
        "list", help="list tokens (ids and tenants, never the tokens)", parents=[database]
    )
    revoke = token_actions.add_parser("revoke", help="revoke a token by id", parents=[database])
    revoke.add_argument("token_id")
    tokens.set_defaults(run=_tokens)

    audit = commands.add_parser(
        "audit", help="show the proxy's decisions (KEYBRAKE_TOKEN, KEYBRAKE_URL)"
    )
    audit.add_argument("--key-id", default=None)
    audit.add_argument("--decision", default=None, help="allowed, cap_exhausted, ...")
    audit.add_argument("--limit", type=int, default=50)
    audit.set_defaults(run=_audit)

    _add_keys(commands)

    demo = commands.add_parser(
        "demo", help="run an agent-style scenario against a local server and localstripe"
    )
    demo.set_defaults(run=_demo)

    args = parser.parse_args(argv)
    try:
        result: int = args.run(args)
    except KeyboardInterrupt:
        return 130
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
