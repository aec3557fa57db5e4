"""``keybrake keys``: list, show and revoke vault keys from a terminal, through the SDK client.

Every answer is read through :class:`~keybrake.Keybrake` (``KEYBRAKE_URL``, ``KEYBRAKE_TOKEN``);
every failure is one line on standard error and exit status 2. Labels and metadata are chosen
by agents, so what is printed of them has its control characters escaped: a label can't move
the operator's cursor or recolour their terminal.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, TextIO

import attrs

from keybrake._client import Keybrake
from keybrake._common import format_usd, to_micros
from keybrake._errors import ConfigurationError, IssuanceError, KeybrakeError
from keybrake._models import AuditRecord, KeyInfo
from keybrake._retry import RetryPolicy

__all__ = ["AUDIT_SHOWN", "CLI_RETRY", "KeyFilters", "run_keys"]

#: An operator waits for an answer: fewer, shorter retries than the SDK's default.
CLI_RETRY = RetryPolicy(attempts=3, deadline=10.0)
#: Audit entries ``keys show`` prints, newest first.
AUDIT_SHOWN = 10
#: Widest label a table shows; longer ones end in "…".
LABEL_WIDTH = 32
STATUSES = ("active", "expired", "revoked", "all")


class CommandError(Exception):
    """A failure the command reports as one line on standard error, exit status 2."""


@attrs.frozen(kw_only=True)
class KeyFilters:
    """The filters of ``keys revoke``, ANDed, as :meth:`Keybrake.revoke_keys` takes them."""

    label_prefix: str | None = None
    metadata: Mapping[str, str] | None = None
    vendor: str | None = None
    all: bool = False

    def given(self) -> bool:
        return bool(self.label_prefix or self.metadata or self.vendor or self.all)

    def match(self, key: KeyInfo) -> bool:
        """Whether the server would revoke this key (if active): the same rules, to show
        the operator which keys a revocation is about to take."""
        if self.label_prefix is not None and not key.label.startswith(self.label_prefix):
            return False
        if self.metadata and any(key.metadata.get(k) != v for k, v in self.metadata.items()):
            return False
        return self.vendor is None or key.vendor == self.vendor


def run_keys(args: argparse.Namespace, *, stdin: TextIO | None = None) -> int:
    """Run ``keybrake keys <action>``; 0 on success, 2 (one line on stderr) otherwise."""
    action: Callable[[Keybrake, argparse.Namespace, TextIO], Awaitable[None]] = {
        "list": _list,
        "show": _show,
        "revoke": _revoke,
    }[args.action]

    async def run() -> None:
        async with Keybrake(retry=CLI_RETRY) as kb:
            if kb.config.token is None:
                raise CommandError("no master token: set KEYBRAKE_TOKEN")
            await action(kb, args, stdin or sys.stdin)

    try:
        asyncio.run(run())
    except (CommandError, KeybrakeError) as exc:
        print(f"keybrake keys {args.action}: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    return 0


# -- list -----------------------------------------------------------------------------------


async def _list(kb: Keybrake, args: argparse.Namespace, stdin: TextIO) -> None:
    status = None if args.status == "all" else args.status
    keys = [
        key
        async for key in kb.list_keys(status=status)
        if args.label_prefix is None or key.label.startswith(args.label_prefix)
    ]
    spent = await _spent_today(kb)
    if args.json:
        _print_json([{**key.raw, "spent_today_usd": _usd(spent.get(key.id))} for key in keys])
        return
    if not keys:
        print("(no keys)")
        return
    now = datetime.now(timezone.utc)
    _print_table(
        ["ID", "LABEL", "VENDOR", "STATUS", "SPENT TODAY / CAP", "EXPIRES IN", "USER", "RUN"],
        [
            [
                key.id,
                _label(key.label),
                key.vendor,
                key.status,
                f"{_usd(spent.get(key.id))} / {_usd(key.daily_usd_cap)}",
                _expires_in(key, now),
                _safe(key.metadata.get("user", "-")),
                _safe(key.metadata.get("run", "-")),
            ]
            for key in keys
        ],
    )


async def _spent_today(kb: Keybrake) -> dict[str, Decimal]:
    """What each key spent today (UTC), settled: one listing for every key."""
    today = datetime.now(timezone.utc).date().isoformat()
    return {row.key_id: row.spent_usd async for row in kb.usage(day=today)}


# -- show -----------------------------------------------------------------------------------


async def _show(kb: Keybrake, args: argparse.Namespace, stdin: TextIO) -> None:
    try:
        key = await kb.get_key(args.key_id)
    except IssuanceError as exc:
        if exc.code == "key_not_found":
            raise CommandError(f"no key {args.key_id!r}") from None
        raise
    entries: list[AuditRecord] = []
    async for entry in kb.audit(key_id=key.id, page_size=AUDIT_SHOWN):
        entries.append(entry)
        if len(entries) >= AUDIT_SHOWN:
            break
    if args.json:
        _print_json({"key": dict(key.raw), "audit": [dict(e.raw) for e in entries]})
        return
    now = datetime.now(timezone.utc)
    rows = [
        ("id", key.id),
        ("label", _safe(key.label)),
        ("vendor", key.vendor),
        ("status", key.status),
        (
            "spent today",
            f"{_usd(key.spent_today_usd)} of {_usd(key.daily_usd_cap)} USD"
            f" (reserved {_usd(key.reserved_today_usd)})",
        ),
        ("expires", _when(key.expires_at) + _in(key, now)),
        ("max expires", _when(key.max_expires_at)),
        ("created", _when(key.created_at)),
        ("revoked", "-" if key.revoked_at is None else _when(key.revoked_at)),
        ("endpoints", ", ".join(_safe(p) for p in key.allowed_endpoints)),
        ("metadata", ", ".join(f"{_safe(k)}={_safe(v)}" for k, v in key.metadata.items()) or "-"),
    ]
    if key.stripe_account:
        rows.append(("stripe account", _safe(key.stripe_account)))
    for name, value in rows:
        print(f"{name:<15}{value}")
    print(f"\nRecent audit entries (newest first, at most {AUDIT_SHOWN}):")
    if not entries:
        print("(no audit entries)")
        return
    _print_table(
        ["TIME (UTC)", "DECISION", "METHOD", "STATUS", "SETTLED", "PATH"],
        [
            [
                f"{e.at.astimezone(timezone.utc):%Y-%m-%d %H:%M:%S}",
                _safe(e.decision),
                _safe(e.method),
                str(e.status),
                _usd(e.settled_usd),
                _safe(e.path),
            ]
            for e in entries
        ],
    )


# -- revoke ---------------------------------------------------------------------------------


def filters_from(args: argparse.Namespace) -> KeyFilters:
    """The filters given on the command line.

    Raises:
        CommandError: a ``--metadata`` that is not ``key=value``.
    """
    metadata: dict[str, str] = {}
    for pair in args.metadata or ():
        name, sep, value = pair.partition("=")
        if not sep:
            raise CommandError(f"--metadata takes key=value, not {pair!r}")
        metadata[name] = value
    return KeyFilters(
        label_prefix=args.label_prefix,
        metadata=metadata or None,
        vendor=args.vendor,
        all=args.all,
    )


async def _revoke(kb: Keybrake, args: argparse.Namespace, stdin: TextIO) -> None:
    filters = filters_from(args)
    if args.key_ids and filters.given():
        raise CommandError("give key ids or filters (--label-prefix, --metadata, ...), not both")
    if args.key_ids:
        await _revoke_ids(kb, args.key_ids)
    elif filters.given():
        await _revoke_matching(kb, filters, confirm=not args.yes, stdin=stdin)
    else:
        raise CommandError(
            "name the keys: key ids, or --label-prefix, --metadata k=v, --vendor or --all"
        )


async def _revoke_ids(kb: Keybrake, key_ids: Sequence[str]) -> None:
    """Revoke each key; an unknown id doesn't stop the others, and fails the command."""
    unknown = []
    for key_id in key_ids:
        try:
            revocation = await kb.revoke_key(key_id)
        except IssuanceError as exc:
            if exc.code != "key_not_found":
                raise
            unknown.append(key_id)
            continue
        print(f"Revoked {revocation.id} (at {_when(revocation.revoked_at)})")
    if unknown:
        others = " (the others were revoked)" if len(unknown) < len(key_ids) else ""
        raise CommandError(f"no key {', '.join(map(repr, unknown))}{others}")


async def _revoke_matching(
    kb: Keybrake, filters: KeyFilters, *, confirm: bool, stdin: TextIO
) -> None:
    if confirm:
        matching = [key async for key in kb.list_keys(status="active") if filters.match(key)]
        if not matching:
            print("No active key matches; nothing was revoked.")
            return
        _print_table(
            ["ID", "LABEL", "VENDOR", "USER", "RUN"],
            [
                [
                    key.id,
                    _label(key.label),
                    key.vendor,
                    _safe(key.metadata.get("user", "-")),
                    _safe(key.metadata.get("run", "-")),
                ]
                for key in matching
            ],
        )
        print(f"Revoke {_keys(len(matching))}? [y/N] ", end="", flush=True)
        answer = stdin.readline()
        if not answer:
            print()
        if answer.strip().lower() not in ("y", "yes"):
            raise CommandError("not confirmed; nothing was revoked")
    try:
        ids = await kb.revoke_keys(
            label_prefix=filters.label_prefix,
            metadata=filters.metadata,
            vendor=filters.vendor,
            all=filters.all,
        )
    except ConfigurationError as exc:  # pragma: no cover - filters.given() was checked
        raise CommandError(str(exc)) from None
    print(f"Revoked {_keys(len(ids))}" + (":" if ids else "."))
    for key_id in ids:
        print(f"  {key_id}")


# -- output ---------------------------------------------------------------------------------


def _keys(n: int) -> str:
    return f"{n} key" if n == 1 else f"{n} keys"


def _safe(text: str) -> str:
    """``text`` with every character that is not printable escaped (``\\x1b``, ``\\n``)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _label(label: str) -> str:
    label = _safe(label) or "-"
    return label if len(label) <= LABEL_WIDTH else label[: LABEL_WIDTH - 1] + "…"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _usd(amount: Decimal | None) -> str:
    return format_usd(to_micros(amount if amount is not None else Decimal(0)))


def _when(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _expires_in(key: KeyInfo, now: datetime) -> str:
    """Time left before an active key expires; "-" for a key that is not active."""
    left = key.expires_at - now
    if key.status != "active" or left <= timedelta(0):
        return "-"
    return _duration(left)


def _in(key: KeyInfo, now: datetime) -> str:
    left = _expires_in(key, now)
    return "" if left == "-" else f" (in {left})"


def _duration(left: timedelta) -> str:
    seconds = int(left.total_seconds())
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02}m"
    if minutes:
        return f"{minutes}m {seconds:02}s"
    return f"{seconds}s"


def _print_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    rows = [list(row) for row in rows]
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    for row in (header, *rows):
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))  # ASCII: nothing a terminal would act on
