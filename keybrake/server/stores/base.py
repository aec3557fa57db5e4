"""What both stores share: the records, the ledger operations and the ``Store`` protocol."""

from __future__ import annotations

import enum
import json
import logging
from collections.abc import Mapping
from typing import Any, Protocol, TypeVar

import attrs

__all__ = [
    "PRUNE_CHUNK",
    "AdminToken",
    "AuditEntry",
    "AdmitOp",
    "AuditOp",
    "BudgetInactive",
    "BudgetRecord",
    "CorrectPriceOp",
    "FinishOp",
    "IdempotencyConflict",
    "IdempotentIssue",
    "KEY_INSERT_COLUMNS",
    "KeyRecord",
    "LedgerEntry",
    "LedgerOp",
    "PruneResult",
    "Reservation",
    "ReserveOp",
    "ReserveResult",
    "Settlement",
    "SpendState",
    "Store",
    "StoreUnavailable",
    "UsageRow",
    "audit_row",
    "check_revoke_filters",
    "key_row",
    "like_prefix",
]

#: Rows one pruning transaction looks at, at most.
PRUNE_CHUNK = 1000

T = TypeVar("T")

log = logging.getLogger("keybrake.store")


class StoreUnavailable(Exception):
    """The store can't be reached or failed; callers must fail closed."""


class BudgetInactive(Exception):
    """A key was to draw from a budget that is revoked or expired (or not the tenant's)."""


class IdempotencyConflict(Exception):
    """Another issuance with the same ``Idempotency-Key`` got there first."""


@attrs.frozen
class KeyRecord:
    """One vault key as stored. Times are epoch microseconds (UTC)."""

    id: str
    tenant: str
    token_hash: str
    vendor: str
    label: str
    allowed_endpoints: tuple[str, ...]
    cap_micros: int
    created_at: int
    expires_at: int
    max_expires_at: int
    revoked_at: int | None = None
    metadata: dict[str, str] = attrs.field(factory=dict)
    #: The Stripe connected account every request of this key acts on (``Stripe-Account``).
    stripe_account: str | None = None
    #: At most so many forwarded requests in any window (``"N/s"``, ``"N/m"``, ``"N/h"``).
    rate_limit: str | None = None
    #: At most so many forwarded requests over the key's life.
    max_requests: int | None = None
    #: The run budget (``bud_...``) every request also reserves against.
    budget_id: str | None = None
    #: Forwarded requests so far, as of the read (never from a cache: see the stores).
    requests_used: int = 0

    @property
    def braked(self) -> bool:
        """Whether forwarding a request has to be admitted by the store (a rate limit or a
        use count): free requests of other keys never touch the store."""
        return self.rate_limit is not None or self.max_requests is not None

    def status(self, now: int) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if now >= self.expires_at:
            return "expired"
        return "active"


@attrs.frozen
class BudgetRecord:
    """A run budget: a daily cap shared by every key drawing from it."""

    id: str
    tenant: str
    label: str
    cap_micros: int
    created_at: int
    expires_at: int
    revoked_at: int | None = None

    def status(self, now: int) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if now >= self.expires_at:
            return "expired"
        return "active"


@attrs.frozen
class IdempotentIssue:
    """What an issuance with an ``Idempotency-Key`` left behind, to answer its replays."""

    key_id: str
    fingerprint: str
    sealed_token: str


@attrs.frozen
class SpendState:
    spent: int
    reserved: int
    #: Of ``spent``, what was counted at its bound because its request's outcome was lost
    #: (a crash between forwarding and settling): the vendor may have charged less.
    unconfirmed: int = 0
    #: ``RATE_LIMITED``: microseconds until the oldest request in the window leaves it.
    retry_after: int = 0
    #: ``BUDGET_EXHAUSTED``: the budget's cap, and its spent plus reserved today.
    budget_cap: int = 0
    budget_spent: int = 0


@attrs.frozen
class Reservation:
    """Money set aside for one request before it is forwarded.

    ``idem_hash`` identifies the vendor idempotency key the request carried, if any: a replay
    of a request that was not refused reserves nothing a second time.
    """

    id: str
    key_id: str
    day: str
    amount: int
    idem_hash: str | None = None
    #: The key's run budget: the amount is reserved against it too, in the same step.
    budget_id: str | None = None
    #: The key has a rate limit or a use count: the same step admits the request
    #: (see :class:`AdmitOp`).
    braked: bool = False

    @property
    def plain(self) -> bool:
        """Whether only the key's cap is at stake: no idempotency key, no budget, no
        brakes (what stores may reserve several of at once)."""
        return self.idem_hash is None and self.budget_id is None and not self.braked


class ReserveResult(enum.Enum):
    """What reserving (or admitting) gave; every result but ``RESERVED``, ``REPLAY`` and
    ``ADMITTED`` is a refusal that left nothing behind."""

    RESERVED = "reserved"
    CAP_EXHAUSTED = "cap_exhausted"
    #: The same vault key already sent this idempotency key: the vendor replays, we don't count.
    REPLAY = "replay"
    #: A free request passed the key's brakes; its use is counted.
    ADMITTED = "admitted"
    RATE_LIMITED = "rate_limited"
    USES_EXHAUSTED = "uses_exhausted"
    BUDGET_EXHAUSTED = "budget_exhausted"
    #: The key was revoked (alone or with its budget) since the proxy looked it up.
    KEY_REVOKED = "key_revoked"
    #: The key expired since the proxy looked it up.
    KEY_EXPIRED = "key_expired"


@attrs.frozen
class Settlement:
    """What a forwarded request cost. ``final`` False: an estimate until the vendor reports."""

    actual: int
    final: bool = True
    vendor_request_id: str | None = None
    object_id: str | None = None


@attrs.define(slots=True)
class ReserveOp:
    """:meth:`SQLiteStore.reserve` as one step of a batch; gives ``(ReserveResult, SpendState)``."""

    reservation: Reservation
    now: int
    replay_after: int = 0


@attrs.define(slots=True)
class AdmitOp:
    """Admit a free request of a braked key: check its use count and its rate limit and,
    if both allow it, count it, in one step; gives ``(ReserveResult, SpendState)``.

    Admission is exact: a key with ``rate_limit`` N per window W keeps the times of its last
    N forwarded requests in a ring of N slots (``key_hits``; the k-th request takes slot
    k mod N), and a request is admitted at time t only while fewer than N of them fall in
    ``(t - W, t]`` (a sliding window), that is while the slot it would take is empty or holds
    a time at or before t - W. Logged times never go backwards for a key (a request asked
    for with an earlier clock is logged at the latest time already logged, ``last_hit_at``),
    so that slot always holds the N-th latest admission, and no window of length W ever
    holds more than N. Each check reads one slot, whatever N. A key revoked or expired
    since it was looked up is refused (``KEY_REVOKED``, ``KEY_EXPIRED``).
    """

    key_id: str
    now: int


@attrs.define(slots=True)
class FinishOp:
    """Settle a pending reservation, or release it when ``settlement`` is None; gives a bool."""

    reservation_id: str
    settlement: Settlement | None
    now: int


@attrs.define(slots=True)
class CorrectPriceOp:
    """:meth:`SQLiteStore.correct_price` as one step of a batch; gives a bool."""

    object_id: str
    actual: int
    now: int


@attrs.define(slots=True)
class AuditOp:
    """Audit entries written along with a batch (already redacted); gives None."""

    entries: list[AuditEntry]


#: One step of :meth:`SQLiteStore.apply_ledger_ops`.
LedgerOp = ReserveOp | AdmitOp | FinishOp | CorrectPriceOp | AuditOp


@attrs.frozen
class AdminToken:
    """A master token as listed (never the token itself)."""

    id: str
    tenant: str
    created_at: int
    revoked_at: int | None


@attrs.frozen(kw_only=True)
class AuditEntry:
    """One proxy decision. ``id`` is given by the store when written."""

    at: int
    tenant: str | None
    key_id: str | None
    label: str | None
    vendor: str | None
    method: str
    path: str
    decision: str
    status: int
    reserved: int = 0
    settled: int = 0
    upstream_ms: float | None = None
    vendor_request_id: str | None = None
    id: int | None = None


def key_row(key: KeyRecord) -> tuple[Any, ...]:
    """A key's column values, in the order both stores insert them."""
    return (
        key.id,
        key.tenant,
        key.token_hash,
        key.vendor,
        key.label,
        json.dumps(list(key.allowed_endpoints)),
        key.cap_micros,
        key.created_at,
        key.expires_at,
        key.max_expires_at,
        key.revoked_at,
        json.dumps(key.metadata),
        key.stripe_account,
        key.rate_limit,
        key.max_requests,
        key.budget_id,
    )


def like_prefix(prefix: str) -> str:
    """A ``LIKE ... ESCAPE '\\'`` pattern matching the strings that start with ``prefix``:
    ``%``, ``_`` and ``\\`` in ``prefix`` stand for themselves."""
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


def check_revoke_filters(
    *, label_prefix: str | None, metadata: Mapping[str, str] | None, vendor: str | None, all: bool
) -> None:
    """Refuse a bulk revocation that names no filter, or a filter that matches everything
    without saying ``all`` (an empty prefix, empty metadata).

    Raises:
        ValueError: no filter, or an empty one.
    """
    if label_prefix is None and metadata is None and vendor is None and not all:
        raise ValueError("name at least one filter: label_prefix, metadata, vendor or all")
    if label_prefix == "":
        raise ValueError("label_prefix is empty: use all=True to revoke every key")
    if metadata is not None and not metadata:
        raise ValueError("metadata is empty: use all=True to revoke every key")


#: The columns of :func:`key_row`, in its order.
KEY_INSERT_COLUMNS = (
    "id, tenant, token_hash, vendor, label, allowed_endpoints, cap_micros, created_at,"
    " expires_at, max_expires_at, revoked_at, metadata, stripe_account, rate_limit,"
    " max_requests, budget_id"
)


def audit_row(e: AuditEntry) -> tuple[Any, ...]:
    """An audit entry's column values, in the order both stores insert them."""
    return (
        e.at,
        e.tenant,
        e.key_id,
        e.label,
        e.vendor,
        e.method,
        e.path,
        e.decision,
        e.status,
        e.reserved,
        e.settled,
        e.upstream_ms,
        e.vendor_request_id,
    )


@attrs.frozen
class UsageRow:
    key_id: str
    label: str
    day: str
    spent: int
    reserved: int
    cap: int
    unconfirmed: int = 0
    budget_id: str | None = None


@attrs.frozen
class LedgerEntry:
    id: str
    key_id: str
    day: str
    amount: int
    state: str
    settled_amount: int | None
    final: bool
    object_id: str | None


@attrs.frozen
class PruneResult:
    """What :meth:`Store.prune` deleted: rows of each table."""

    audit_entries: int = 0
    reservations: int = 0
    #: Keys' and budgets' spend rows.
    spend_rows: int = 0


class Store(Protocol):
    """What the server needs from persistence. All amounts are micro-dollars."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> None: ...

    async def add_admin_token(
        self, token_id: str, token_hash: str, tenant: str, now: int
    ) -> None: ...

    async def list_admin_tokens(self) -> list[AdminToken]: ...

    async def revoke_admin_token(self, token_id: str, now: int) -> bool: ...

    async def count_admin_tokens(self) -> int: ...

    async def tenant_for_admin_token(self, token_hash: str) -> str | None: ...

    async def write_audit(self, entries: list[AuditEntry]) -> None: ...

    async def list_audit(
        self,
        tenant: str,
        *,
        key_id: str | None,
        decision: str | None,
        limit: int,
        starting_after: int | None,
    ) -> list[AuditEntry]: ...

    async def usage(
        self,
        tenant: str,
        *,
        key_id: str | None,
        day: str | None,
        limit: int,
        starting_after: tuple[str, str] | None,
    ) -> list[UsageRow]: ...

    async def count_active_keys(self, now: int) -> int: ...

    async def insert_key(
        self, key: KeyRecord, *, idempotency: tuple[str, IdempotentIssue] | None = None
    ) -> None: ...

    async def find_idempotent_issue(
        self, tenant: str, idem_hash: str
    ) -> IdempotentIssue | None: ...

    async def get_key(self, tenant: str, key_id: str) -> KeyRecord | None: ...

    async def get_key_by_token_hash(self, token_hash: str) -> KeyRecord | None: ...

    async def revoke_key(self, tenant: str, key_id: str, now: int) -> KeyRecord | None: ...

    async def list_keys(
        self,
        tenant: str,
        *,
        status: str | None,
        limit: int,
        starting_after: str | None,
        now: int,
        label_prefix: str | None = None,
    ) -> list[KeyRecord]:
        """A tenant's keys, newest first, after the key ``starting_after`` (a cursor); only
        those whose label starts with ``label_prefix`` (exactly, as :meth:`revoke_keys`
        matches it) when one is given."""
        ...

    async def revoke_keys(
        self,
        tenant: str,
        now: int,
        *,
        label_prefix: str | None = None,
        metadata: Mapping[str, str] | None = None,
        vendor: str | None = None,
        all: bool = False,
    ) -> list[str]:
        """Revoke, at ``now``, every active key of ``tenant`` that matches all the filters
        given; return their ids (sorted).

        A key matches when its label starts with ``label_prefix`` (exactly: case counts, and
        ``%`` or ``_`` are plain characters), its metadata holds every pair of ``metadata``
        with exactly that value, and its vendor is ``vendor``. ``all=True`` alone matches
        every active key. Active: not revoked, and ``expires_at`` after ``now``.

        One statement: a key whose issuance commits after the statement began is never
        matched (it stays active), and one committed before is revoked; none is left half
        done. A key revoked meanwhile by another caller is not returned twice.

        Raises:
            ValueError: no filter given, or an empty ``label_prefix`` or ``metadata``.
            StoreUnavailable: the store failed (nothing was revoked).
        """
        ...

    async def extend_key(
        self, tenant: str, key_id: str, now: int, new_expires_at: int
    ) -> KeyRecord | None: ...

    async def spend(self, key_id: str, day: str) -> SpendState: ...

    async def admit(self, key_id: str, now: int) -> tuple[ReserveResult, SpendState]:
        """Admit a free request of a braked key (see :class:`AdmitOp`), atomically."""
        ...

    async def insert_budget(self, budget: BudgetRecord) -> None: ...

    async def get_budget(self, tenant: str, budget_id: str) -> BudgetRecord | None: ...

    async def budget_spend(self, budget_id: str, day: str) -> SpendState: ...

    async def revoke_budget(self, tenant: str, budget_id: str, now: int) -> BudgetRecord | None:
        """Revoke a budget and every key drawing from it, in one transaction."""
        ...

    async def unconfirmed(self, day: str) -> int:
        """Spend of ``day`` counted at its bound because its outcome was lost, in total."""
        ...

    async def counted(self, key_id: str, object_id: str, day: str) -> int:
        """What ``key_id`` counted for vendor object ``object_id`` on UTC ``day``, released
        reservations left out, in micro-dollars. (Only the day's: an object staged one day
        and acted on the next counts against the next day's cap too.)"""
        ...

    async def reserve(
        self, reservation: Reservation, now: int, *, replay_after: int = 0
    ) -> tuple[ReserveResult, SpendState]:
        """Reserve against the key's cap and, with ``budget_id``, its budget's; with
        ``braked``, admit the request too (:class:`AdmitOp`): all in one atomic step, and
        nothing of it happens unless all of it does."""
        ...

    async def settle(self, reservation_id: str, settlement: Settlement, now: int) -> bool: ...

    async def release(self, reservation_id: str, now: int) -> bool: ...

    async def correct_price(self, object_id: str, actual: int, now: int) -> bool: ...

    async def ledger(self, key_id: str) -> list[LedgerEntry]: ...

    async def prune(self, before: int) -> PruneResult:
        """Delete what is older than ``before`` (epoch microseconds): audit entries, finished
        (settled or released) reservations, and spend rows of the UTC days before
        ``before``'s on which no money is still reserved, and the rate-limit hits of keys
        revoked or expired before ``before``. Pending reservations and keys stay.
        In short transactions: the store serves requests meanwhile.
        """
        ...
