"""The ``keybrake`` command: ``serve`` runs the server, ``demo`` shows a whole agent run."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from keybrake.server.app import create_app
    from keybrake.server.config import ServerConfig

    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    from keybrake.server.pricing import PricingFileError

    config = ServerConfig.from_env(database_url=args.database, pricing_file=args.pricing)

    def announce(token: str) -> None:
        print(
            "No master token was configured, so one was created. It is shown only once:\n\n"
            f"    KEYBRAKE_TOKEN={token}\n",
            flush=True,
        )

    try:
        app = create_app(config, on_new_admin_token=announce)
    except (PricingFileError, ValueError) as exc:
        print(f"keybrake serve: {exc}", file=sys.stderr)
        return 2
    where = f"http://{args.host}:{args.port}"
    web.run_app(
        app,
        host=args.host,
        port=args.port,
        access_log=None,
        print=lambda _: print(f"keybrake serving on {where} ({_store_name(config)})", flush=True),
    )
    return 0


def _store_name(config: object) -> str:
    url = str(getattr(config, "database_url", ""))
    return url if url.startswith("sqlite:") else url.partition(":")[0]


def _demo(args: argparse.Namespace) -> int:
    from keybrake._demo import run_demo

    return run_demo()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="keybrake", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the issuance API and the proxy")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    serve.add_argument("--port", type=int, default=8787, help="port to bind (8787)")
    serve.add_argument(
        "--database",
        default=None,
        help="sqlite:///path (else KEYBRAKE_DATABASE_URL, else sqlite:///keybrake.db)",
    )
    serve.add_argument(
        "--pricing",
        default=None,
        help="JSON file overriding prices (else KEYBRAKE_PRICING_FILE); see docs/vendors",
    )
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    serve.set_defaults(run=_serve)

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
