"""What the dashboard shows, read from the store: keys, their spend and audit, spend per day."""

from __future__ import annotations

from datetime import timedelta

import attrs

from keybrake.server.stores.base import AuditEntry, KeyRecord, Store
from keybrake.server.util import to_datetime, utc_day

__all__ = [
    "AUDIT_PER_KEY",
    "CHART_DAYS",
    "KEYS_PER_PAGE",
    "MAX_CONFIRM",
    "KeyPage",
    "KeyView",
    "SpendChart",
    "VendorCache",
    "active_matching",
    "key_page",
    "spend_chart",
    "user_and_run",
]

#: Keys one page lists.
KEYS_PER_PAGE = 50
#: Audit entries shown under each key.
AUDIT_PER_KEY = 5
#: UTC days the spend chart covers, today included.
CHART_DAYS = 14
#: Keys a revoke-all-matching confirmation lists at most (all matching keys are revoked).
MAX_CONFIRM = 200
#: Rows read from the store at a time.
_BATCH = 100
#: Spend rows the chart reads at most.
_MAX_USAGE_ROWS = 20_000

#: Metadata names holding the user and the run of a key: ours first, then those the web
#: integrations set from request headers, then the arq job.
USER_KEYS = ("user", "x-user-id")
RUN_KEYS = ("run", "x-agent-run-id", "arq_job_id")


def user_and_run(metadata: dict[str, str]) -> tuple[str, str]:
    """The user and the run a key's metadata names ("" where it names none)."""
    user = next((metadata[k] for k in USER_KEYS if metadata.get(k)), "")
    run = next((metadata[k] for k in RUN_KEYS if metadata.get(k)), "")
    return user, run


@attrs.frozen
class KeyView:
    key: KeyRecord
    status: str
    #: Today's settled spend, and what requests in flight have reserved (micro-dollars).
    spent_today: int
    reserved_today: int
    audit: list[AuditEntry]


@attrs.frozen
class KeyPage:
    keys: list[KeyView]
    #: The id to continue after, when there are more keys.
    next_after: str | None


async def _keys(
    store: Store,
    tenant: str,
    *,
    status: str | None,
    prefix: str,
    after: str | None,
    now: int,
    want: int,
) -> tuple[list[KeyRecord], bool]:
    """Up to ``want`` keys, newest first, whose label starts with ``prefix`` (the store
    matches it, as exactly as a bulk revoke does); and whether there are more."""
    keys = await store.list_keys(
        tenant,
        status=status,
        limit=want + 1,
        starting_after=after,
        now=now,
        label_prefix=prefix or None,
    )
    return keys[:want], len(keys) > want


async def key_page(
    store: Store,
    tenant: str,
    *,
    status: str | None,
    prefix: str,
    after: str | None,
    now: int,
) -> KeyPage:
    """One page of the tenant's keys with today's spend and recent audit entries."""
    keys, more = await _keys(
        store, tenant, status=status, prefix=prefix, after=after, now=now, want=KEYS_PER_PAGE
    )
    today = utc_day(now)
    views = []
    for key in keys:
        spend = await store.spend(key.id, today)
        audit = await store.list_audit(
            tenant, key_id=key.id, decision=None, limit=AUDIT_PER_KEY, starting_after=None
        )
        views.append(KeyView(key, key.status(now), spend.spent, spend.reserved, audit))
    return KeyPage(views, keys[-1].id if more and keys else None)


async def active_matching(
    store: Store, tenant: str, prefix: str, *, now: int
) -> tuple[list[KeyRecord], bool]:
    """The tenant's active keys whose label starts with ``prefix`` (up to
    :data:`MAX_CONFIRM`), and whether there are more."""
    return await _keys(
        store, tenant, status="active", prefix=prefix, after=None, now=now, want=MAX_CONFIRM
    )


class VendorCache:
    """The vendor of each key seen (a key's vendor never changes), for the spend chart."""

    def __init__(self, limit: int = 100_000) -> None:
        self.limit = limit
        self._vendors: dict[tuple[str, str], str] = {}

    async def vendor(self, store: Store, tenant: str, key_id: str) -> str:
        known = self._vendors.get((tenant, key_id))
        if known is not None:
            return known
        key = await store.get_key(tenant, key_id)
        vendor = key.vendor if key is not None else "unknown"
        if len(self._vendors) >= self.limit:
            self._vendors.clear()
        self._vendors[(tenant, key_id)] = vendor
        return vendor


@attrs.frozen
class SpendChart:
    #: The UTC days shown, oldest first.
    days: list[str]
    #: Micro-dollars spent per (day, vendor).
    spent: dict[tuple[str, str], int]
    #: Whether the store held more rows than were read (the oldest days may be short).
    truncated: bool

    @property
    def vendors(self) -> list[str]:
        return sorted({vendor for _, vendor in self.spent})

    def day_total(self, day: str) -> int:
        return sum(v for (d, _), v in self.spent.items() if d == day)

    def vendor_total(self, vendor: str) -> int:
        return sum(v for (_, name), v in self.spent.items() if name == vendor)


async def spend_chart(store: Store, tenant: str, vendors: VendorCache, *, now: int) -> SpendChart:
    """The tenant's spend per UTC day and per vendor over the last :data:`CHART_DAYS` days."""
    today = to_datetime(now).date()
    days = [(today - timedelta(days=n)).isoformat() for n in range(CHART_DAYS - 1, -1, -1)]
    spent: dict[tuple[str, str], int] = {}
    after: tuple[str, str] | None = None
    read = 0
    while True:
        rows = await store.usage(tenant, key_id=None, day=None, limit=_BATCH, starting_after=after)
        for row in rows:
            if row.day < days[0]:
                return SpendChart(days, spent, truncated=False)
            if row.spent:
                vendor = await vendors.vendor(store, tenant, row.key_id)
                spent[(row.day, vendor)] = spent.get((row.day, vendor), 0) + row.spent
        read += len(rows)
        if len(rows) < _BATCH:
            return SpendChart(days, spent, truncated=False)
        if read >= _MAX_USAGE_ROWS:
            return SpendChart(days, spent, truncated=True)
        after = (rows[-1].day, rows[-1].key_id)
