"""The issuance API: ``/v1/keys`` and friends, behind a master token."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
from datetime import timedelta
from decimal import Decimal
from typing import Any

from aiohttp import web

from keybrake._common import (
    MAX_LABEL,
    MAX_METADATA,
    EndpointPattern,
    format_time,
    format_usd,
    label_problem,
    metadata_problem,
    parse_duration,
    parse_rate,
    to_micros,
)
from keybrake.server._keys import (
    AUDIT,
    CONFIGURED_ADMIN_HASH,
    LEDGER,
    METRICS,
    METRICS_TOKEN_HASH,
    STORE,
)
from keybrake.server.api.input import (
    MAX_QUERY_VALUE,
    BadRequest,
    is_day,
    is_whole_number,
    query,
    query_int,
    read_json_object,
)
from keybrake.server.api.openapi import openapi_document
from keybrake.server.api.tokens import DEFAULT_TENANT, tenant_of
from keybrake.server.config import DEFAULT_MAX_LIFETIME_SECONDS
from keybrake.server.http.errors import error_body, error_response
from keybrake.server.stores.base import (
    AuditEntry,
    BudgetInactive,
    BudgetRecord,
    IdempotencyConflict,
    IdempotentIssue,
    KeyRecord,
    Store,
    StoreUnavailable,
)
from keybrake.server.util import hash_token, now_micros, to_datetime, utc_day
from keybrake.vendors import installed_vendors

__all__ = [
    "CONFIGURED_ADMIN_HASH",
    "DEFAULT_TENANT",
    "STORE",
    "BadRequest",
    "Unauthorized",
    "add_routes",
    "key_json",
]


log = logging.getLogger("keybrake.server")

MAX_ENDPOINTS = 100
#: Longest ``expires_in`` or ``max_lifetime`` a key may ask for.
MAX_LIFETIME = timedelta(days=30)
TOKEN_PREFIX = "vault_key_"
#: Largest audit entry id a cursor may name (a signed 64-bit integer, as stored).
MAX_AUDIT_ID = 2**63 - 1
#: Largest ``max_requests`` a key may have.
MAX_REQUESTS = 10**12


def key_json(key: KeyRecord, now: int, *, spent: int | None = None) -> dict[str, Any]:
    """The public view of a key (never its token or token hash)."""
    data: dict[str, Any] = {
        "id": key.id,
        "object": "vault_key",
        "vendor": key.vendor,
        "label": key.label,
        "allowed_endpoints": list(key.allowed_endpoints),
        "daily_usd_cap": format_usd(key.cap_micros),
        "created_at": format_time(to_datetime(key.created_at)),
        "expires_at": format_time(to_datetime(key.expires_at)),
        "max_expires_at": format_time(to_datetime(key.max_expires_at)),
        "revoked_at": None if key.revoked_at is None else format_time(to_datetime(key.revoked_at)),
        "status": key.status(now),
        "metadata": dict(key.metadata),
        "stripe_account": key.stripe_account,
        "rate_limit": key.rate_limit,
        "max_requests": key.max_requests,
        "budget": key.budget_id,
    }
    if spent is not None:
        data["spent_today_usd"] = format_usd(spent)
    return data


def budget_json(budget: BudgetRecord, now: int, *, spent: int | None = None) -> dict[str, Any]:
    """The public view of a run budget."""
    data: dict[str, Any] = {
        "id": budget.id,
        "object": "budget",
        "label": budget.label,
        "daily_usd_cap": format_usd(budget.cap_micros),
        "created_at": format_time(to_datetime(budget.created_at)),
        "expires_at": format_time(to_datetime(budget.expires_at)),
        "revoked_at": None
        if budget.revoked_at is None
        else format_time(to_datetime(budget.revoked_at)),
        "status": budget.status(now),
    }
    if spent is not None:
        data["spent_today_usd"] = format_usd(spent)
    return data


def _store(request: web.Request) -> Store:
    store: Store = request.app[STORE]
    return store


class Unauthorized(Exception):
    """No master token, or one this server doesn't know."""


async def _tenant(request: web.Request) -> str:
    """Authenticate the master token and give its tenant.

    Raises:
        Unauthorized: missing or unknown token.
    """
    token = _bearer(request)
    if token is None:
        raise Unauthorized
    tenant = await tenant_of(_store(request), request.app[CONFIGURED_ADMIN_HASH], hash_token(token))
    if tenant is None:
        raise Unauthorized
    return tenant


def _limit(request: web.Request) -> int:
    return query_int(request, "limit", default=10, low=1, high=100)


def _duration(data: dict[str, Any], name: str) -> timedelta:
    value = data.get(name)
    if value is None:
        raise BadRequest(f"'{name}' is required", param=name)
    if isinstance(value, Decimal):
        raise BadRequest(f"'{name}' must be a duration like '5m' or whole seconds", param=name)
    try:
        result = parse_duration(value)
    except OverflowError:  # more days than a timedelta holds
        raise BadRequest(f"'{name}' may be at most {MAX_LIFETIME.days} days", param=name) from None
    except ValueError as exc:
        raise BadRequest(str(exc), param=name) from None
    if result > MAX_LIFETIME:
        raise BadRequest(f"'{name}' may be at most {MAX_LIFETIME.days} days", param=name)
    return result


def _check_metadata(metadata: Any) -> None:
    """Raises:
    BadRequest: not what :func:`~keybrake._common.metadata_problem` accepts.
    """
    problem = metadata_problem(metadata)
    if problem is not None:
        raise BadRequest(f"'metadata': {problem}", param="metadata")


def _label(data: dict[str, Any]) -> str:
    label = data.get("label", "")
    problem = label_problem(label)
    if problem is not None:
        raise BadRequest(f"'label': {problem}", param="label")
    assert isinstance(label, str)
    return label


def _cap(data: dict[str, Any]) -> int:
    cap = data.get("daily_usd_cap")
    if isinstance(cap, (float, bool)) or cap is None:
        raise BadRequest("'daily_usd_cap' must be a USD amount", param="daily_usd_cap")
    try:
        return to_micros(cap)
    except (ValueError, ArithmeticError) as exc:  # decimal.InvalidOperation is the latter
        raise BadRequest(str(exc), param="daily_usd_cap") from None


def _brakes(data: dict[str, Any]) -> dict[str, Any]:
    """``rate_limit``, ``max_requests`` and ``budget`` of an issuance (CONTRACT §3)."""
    rate_limit = data.get("rate_limit")
    if rate_limit is not None:
        try:
            parse_rate(rate_limit)
        except ValueError as exc:
            raise BadRequest(str(exc), param="rate_limit") from None
    max_requests = data.get("max_requests")
    if max_requests is not None and (
        not isinstance(max_requests, int)
        or isinstance(max_requests, bool)
        or not 1 <= max_requests <= MAX_REQUESTS
    ):
        raise BadRequest(
            f"'max_requests' must be a whole number from 1 to {MAX_REQUESTS}",
            param="max_requests",
        )
    budget = data.get("budget")
    if budget is not None and (not isinstance(budget, str) or not _can_be_id(budget)):
        raise BadRequest("'budget' must be a budget id ('bud_...')", param="budget")
    return {"rate_limit": rate_limit, "max_requests": max_requests, "budget_id": budget}


def _parse_issue(data: dict[str, Any]) -> dict[str, Any]:
    vendor = data.get("vendor")
    vendors = installed_vendors()
    if not isinstance(vendor, str) or vendor not in vendors:
        raise BadRequest(f"'vendor' must be one of {', '.join(vendors)}", param="vendor")
    label = _label(data)
    endpoints = data.get("allowed_endpoints")
    if not isinstance(endpoints, list) or not endpoints or len(endpoints) > MAX_ENDPOINTS:
        raise BadRequest(
            f"'allowed_endpoints' must be a list of 1 to {MAX_ENDPOINTS} patterns",
            param="allowed_endpoints",
        )
    for pattern in endpoints:
        try:
            EndpointPattern.parse(pattern)
        except ValueError as exc:
            raise BadRequest(str(exc), param="allowed_endpoints") from None
    cap_micros = _cap(data)
    expires_in = _duration(data, "expires_in")
    if "max_lifetime" not in data:
        max_lifetime = max(expires_in, timedelta(seconds=DEFAULT_MAX_LIFETIME_SECONDS))
    else:
        max_lifetime = _duration(data, "max_lifetime")
        if max_lifetime < expires_in:
            raise BadRequest(
                "'max_lifetime' must not be shorter than 'expires_in'", param="max_lifetime"
            )
    metadata = data.get("metadata", {})
    _check_metadata(metadata)
    stripe_account = data.get("stripe_account")
    if stripe_account is not None:
        # The account a key is pinned to, for a vendor with accounts (Stripe's).
        accounts = vendors[vendor].account_pattern
        if accounts is None:
            raise BadRequest(
                f"'stripe_account' is not for {vendors[vendor].title} keys", param="stripe_account"
            )
        if not isinstance(stripe_account, str) or not accounts.fullmatch(stripe_account):
            raise BadRequest(
                f"'stripe_account' must be a {vendors[vendor].title} account id"
                f" ({accounts.pattern})",
                param="stripe_account",
            )
    return {
        "vendor": vendor,
        "label": label,
        "stripe_account": stripe_account,
        "allowed_endpoints": tuple(endpoints),
        "cap_micros": cap_micros,
        "expires_in": expires_in,
        "max_lifetime": max_lifetime,
        "metadata": metadata,
        **_brakes(data),
    }


def _micros(delta: timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


# Idempotent issuance must be able to answer a replay with the token, yet the store may
# only hold hashes. The token is kept sealed under a one-time pad derived from the
# Idempotency-Key itself, which the store never holds: only the client that retries with the
# same key can unseal it.
def _idem_hash(tenant: str, idem_key: str) -> str:
    return hashlib.sha256(f"keybrake-idem\0{tenant}\0{idem_key}".encode()).hexdigest()


def _pad(tenant: str, idem_key: str, length: int) -> bytes:
    return hashlib.shake_256(f"keybrake-seal\0{tenant}\0{idem_key}".encode()).digest(length)


def _seal(tenant: str, idem_key: str, token: str) -> str:
    raw = token.encode()
    return bytes(a ^ b for a, b in zip(raw, _pad(tenant, idem_key, len(raw)), strict=False)).hex()


def _unseal(tenant: str, idem_key: str, sealed: str) -> str:
    raw = bytes.fromhex(sealed)
    pad = _pad(tenant, idem_key, len(raw))
    return bytes(a ^ b for a, b in zip(raw, pad, strict=True)).decode()


def _fingerprint(data: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


async def create_key(request: web.Request) -> web.Response:
    store, tenant = _store(request), await _tenant(request)
    data = await read_json_object(request)
    fields = _parse_issue(data)
    idem_key = request.headers.get("Idempotency-Key")
    fingerprint = _fingerprint(data)
    if idem_key is not None:
        if not 0 < len(idem_key) <= 255 or not (idem_key.isascii() and idem_key.isprintable()):
            raise BadRequest("'Idempotency-Key' must be 1 to 255 printable ASCII characters")
        previous = await store.find_idempotent_issue(tenant, _idem_hash(tenant, idem_key))
        if previous is not None:
            return await _replay(request, previous, idem_key, fingerprint)

    now = now_micros()
    expires_at = now + _micros(fields["expires_in"])
    max_expires_at = now + _micros(fields["max_lifetime"])
    budget_id = fields["budget_id"]
    if budget_id is not None:
        budget = await store.get_budget(tenant, budget_id)
        if budget is None:
            return _budget_not_found(budget_id)
        if budget.status(now) != "active":
            return _budget_inactive(budget)
        # A key lives no longer than its budget: the budget is the run.
        expires_at = min(expires_at, budget.expires_at)
        max_expires_at = min(max_expires_at, budget.expires_at)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    key = KeyRecord(
        id="vk_" + secrets.token_hex(12),
        tenant=tenant,
        token_hash=hash_token(token),
        vendor=fields["vendor"],
        label=fields["label"],
        allowed_endpoints=fields["allowed_endpoints"],
        cap_micros=fields["cap_micros"],
        created_at=now,
        expires_at=expires_at,
        max_expires_at=max_expires_at,
        metadata=fields["metadata"],
        stripe_account=fields["stripe_account"],
        rate_limit=fields["rate_limit"],
        max_requests=fields["max_requests"],
        budget_id=budget_id,
    )
    idempotency = None
    if idem_key is not None:
        issue = IdempotentIssue(key.id, fingerprint, _seal(tenant, idem_key, token))
        idempotency = (_idem_hash(tenant, idem_key), issue)
    try:
        await store.insert_key(key, idempotency=idempotency)
    except IdempotencyConflict:
        # A concurrent retry with the same Idempotency-Key won the race: answer as it did.
        assert idem_key is not None
        previous = await store.find_idempotent_issue(tenant, _idem_hash(tenant, idem_key))
        assert previous is not None
        return await _replay(request, previous, idem_key, fingerprint)
    except BudgetInactive:  # revoked (or expired) since it was looked up
        return error_response(
            400, "budget_inactive", f"budget {budget_id!r} is no longer active", param="budget"
        )
    return web.json_response({**key_json(key, now), "token": token}, status=201)


def _budget_not_found(budget_id: str) -> web.Response:
    return error_response(
        404, "budget_not_found", f"no budget {budget_id[:MAX_QUERY_VALUE]!r}", param="budget"
    )


def _budget_inactive(budget: BudgetRecord) -> web.Response:
    status = budget.status(now_micros())
    return error_response(
        400, "budget_inactive", f"budget {budget.id!r} is {status}", param="budget"
    )


async def _replay(
    request: web.Request, previous: IdempotentIssue, idem_key: str, fingerprint: str
) -> web.Response:
    tenant = await _tenant(request)
    if previous.fingerprint != fingerprint:
        return error_response(
            422,
            "idempotency_key_reused",
            "this Idempotency-Key was used with a different request body",
        )
    key = await _store(request).get_key(tenant, previous.key_id)
    if key is None:  # pragma: no cover - keys are never deleted
        raise web.HTTPNotFound()
    token = _unseal(tenant, idem_key, previous.sealed_token)
    return web.json_response(
        {**key_json(key, now_micros()), "token": token},
        status=201,
        headers={"Idempotent-Replayed": "true"},
    )


def _not_found(key_id: str) -> web.Response:
    return error_response(404, "key_not_found", f"no key {key_id[:MAX_QUERY_VALUE]!r}")


def _can_be_id(key_id: str) -> bool:
    """Whether a key id from a path is worth a look in the store (not too long, no controls
    or NUL, which PostgreSQL text can't even hold)."""
    return len(key_id) <= MAX_QUERY_VALUE and key_id.isprintable()


async def get_key(request: web.Request) -> web.Response:
    store, tenant = _store(request), await _tenant(request)
    key_id = request.match_info["key_id"]
    key = await store.get_key(tenant, key_id) if _can_be_id(key_id) else None
    if key is None:
        return _not_found(key_id)
    now = now_micros()
    await request.app[LEDGER].flush()  # spend as of every request answered so far
    spend = await store.spend(key.id, utc_day(now))
    return web.json_response(
        {
            **key_json(key, now, spent=spend.spent),
            "reserved_today_usd": format_usd(spend.reserved),
            "unconfirmed_today_usd": format_usd(spend.unconfirmed),
            "requests_used": key.requests_used,
        }
    )


async def list_keys(request: web.Request) -> web.Response:
    tenant = await _tenant(request)
    status = query(request, "status")
    if status is not None and status not in ("active", "expired", "revoked"):
        raise BadRequest("'status' must be active, expired or revoked", param="status")
    limit = _limit(request)
    after = query(request, "starting_after") or None
    store, now = _store(request), now_micros()
    if after is not None and await store.get_key(tenant, after) is None:
        return _not_found(after)
    keys = await store.list_keys(
        tenant, status=status, limit=limit + 1, starting_after=after, now=now
    )
    return web.json_response(
        {
            "object": "list",
            "data": [key_json(key, now) for key in keys[:limit]],
            "has_more": len(keys) > limit,
        }
    )


async def revoke_key(request: web.Request) -> web.Response:
    tenant, key_id = await _tenant(request), request.match_info["key_id"]
    if not _can_be_id(key_id):
        return _not_found(key_id)
    key = await _store(request).revoke_key(tenant, key_id, now_micros())
    if key is None or key.revoked_at is None:
        return _not_found(key_id)
    return web.json_response(
        {
            "id": key.id,
            "object": "vault_key",
            "status": "revoked",
            "revoked_at": format_time(to_datetime(key.revoked_at)),
        }
    )


#: The filters of ``POST /v1/keys/revoke``; nothing else may be in its body.
REVOKE_FILTERS = ("label_prefix", "metadata", "vendor", "all")


def _parse_revoke_filters(data: dict[str, Any]) -> dict[str, Any]:
    """The filters of a bulk revocation, checked: at least one, none empty, nothing else."""
    for name in data:
        if name not in REVOKE_FILTERS:
            raise BadRequest(
                f"unknown field {name[:MAX_QUERY_VALUE]!r}: the filters are"
                f" {', '.join(REVOKE_FILTERS)}",
                param=name[:MAX_QUERY_VALUE],
            )
    # A filter given is a filter: null is refused, never read as "not given" (on a revocation
    # of everything else, a null vendor would widen it to every vendor).
    label_prefix = data.get("label_prefix")
    if "label_prefix" in data and (
        not isinstance(label_prefix, str) or not 0 < len(label_prefix) <= MAX_LABEL
    ):
        raise BadRequest(
            f"'label_prefix' must be a string of 1 to {MAX_LABEL} characters",
            param="label_prefix",
        )
    metadata = data.get("metadata")
    if "metadata" in data and (
        not isinstance(metadata, dict)
        or not 0 < len(metadata) <= MAX_METADATA
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
    ):
        raise BadRequest(
            f"'metadata' must map 1 to {MAX_METADATA} strings to strings", param="metadata"
        )
    vendor = data.get("vendor")
    vendors = installed_vendors()
    if "vendor" in data and (not isinstance(vendor, str) or vendor not in vendors):
        raise BadRequest(f"'vendor' must be one of {', '.join(vendors)}", param="vendor")
    every = data.get("all", False)
    if not isinstance(every, bool):
        raise BadRequest("'all' must be true or false", param="all")
    if label_prefix is None and metadata is None and vendor is None and not every:
        raise BadRequest(
            "name at least one filter: 'label_prefix', 'metadata', 'vendor', or 'all': true"
            " to revoke every active key",
            param="all",
        )
    return {"label_prefix": label_prefix, "metadata": metadata, "vendor": vendor, "all": every}


async def revoke_keys(request: web.Request) -> web.Response:
    """Revoke every active key of the caller's tenant that matches all the filters given."""
    tenant = await _tenant(request)
    filters = _parse_revoke_filters(await read_json_object(request))
    ids = await _store(request).revoke_keys(tenant, now_micros(), **filters)
    if ids:
        log.info("revoked %d keys of tenant %r in bulk", len(ids), tenant)
    return web.json_response({"revoked": len(ids), "ids": ids})


async def refresh_key(request: web.Request) -> web.Response:
    tenant = await _tenant(request)
    key_id = request.match_info["key_id"]
    data = await read_json_object(request)
    increment = _duration(data, "expires_in")
    if not _can_be_id(key_id):
        return _not_found(key_id)
    now = now_micros()
    key = await _store(request).extend_key(tenant, key_id, now, now + _micros(increment))
    if key is None:
        return _not_found(key_id)
    status = key.status(now)
    if status != "active":
        return error_response(409, f"key_{status}", f"key {key_id!r} is {status}")
    return web.json_response(
        {
            "id": key.id,
            "object": "vault_key",
            "expires_at": format_time(to_datetime(key.expires_at)),
            "max_expires_at": format_time(to_datetime(key.max_expires_at)),
            "status": status,
        }
    )


def audit_json(entry: AuditEntry, *, budget: str | None = None) -> dict[str, Any]:
    """An audit entry's public view; ``budget`` is its key's run budget, if any."""
    return {
        "id": entry.id,
        "object": "audit_entry",
        "at": format_time(to_datetime(entry.at)),
        "key_id": entry.key_id,
        "label": entry.label,
        "vendor": entry.vendor,
        "method": entry.method,
        "path": entry.path,
        "decision": entry.decision,
        "status": entry.status,
        "reserved_usd": format_usd(entry.reserved),
        "settled_usd": format_usd(entry.settled),
        "upstream_ms": entry.upstream_ms,
        "vendor_request_id": entry.vendor_request_id,
        "budget": budget,
    }


async def list_audit(request: web.Request) -> web.Response:
    tenant = await _tenant(request)
    limit = _limit(request)
    after = query(request, "starting_after") or None
    if after is not None and not is_whole_number(after, 0, MAX_AUDIT_ID):
        raise BadRequest("'starting_after' must be an audit entry id", param="starting_after")
    entries = await _store(request).list_audit(
        tenant,
        key_id=query(request, "key_id") or None,
        decision=query(request, "decision") or None,
        limit=limit + 1,
        starting_after=None if after is None else int(after),
    )
    # Each entry names its key's run budget, read from the key (a key's budget never
    # changes), so the audit log shows which budget a request drew from.
    budgets: dict[str, str | None] = {}
    for key_id in {e.key_id for e in entries[:limit] if e.key_id is not None}:
        key = await _store(request).get_key(tenant, key_id)
        budgets[key_id] = None if key is None else key.budget_id
    return web.json_response(
        {
            "object": "list",
            "data": [
                audit_json(e, budget=budgets.get(e.key_id) if e.key_id else None)
                for e in entries[:limit]
            ],
            "has_more": len(entries) > limit,
        }
    )


async def list_usage(request: web.Request) -> web.Response:
    tenant = await _tenant(request)
    limit = _limit(request)
    day = query(request, "day")
    if day is not None and not is_day(day):
        raise BadRequest("'day' must be a UTC date like 2026-11-27", param="day")
    after_raw = query(request, "starting_after")
    after: tuple[str, str] | None = None
    if after_raw is not None:
        after_day, _, after_key = after_raw.partition(":")
        if not is_day(after_day) or not after_key:
            raise BadRequest("'starting_after' must be '<day>:<key id>'", param="starting_after")
        after = (after_day, after_key)
    key_id = query(request, "key_id") or None
    await request.app[LEDGER].flush()  # spend as of every request answered so far
    rows = await _store(request).usage(
        tenant,
        key_id=key_id,
        day=day,
        limit=limit + 1,
        starting_after=after,
    )
    return web.json_response(
        {
            "object": "list",
            "data": [
                {
                    "object": "usage",
                    "id": f"{row.day}:{row.key_id}",
                    "key_id": row.key_id,
                    "label": row.label,
                    "day": row.day,
                    "spent_usd": format_usd(row.spent),
                    "reserved_usd": format_usd(row.reserved),
                    "unconfirmed_usd": format_usd(row.unconfirmed),
                    "daily_usd_cap": format_usd(row.cap),
                    "budget": row.budget_id,
                }
                for row in rows[:limit]
            ],
            "has_more": len(rows) > limit,
        }
    )


def _bearer(request: web.Request) -> str | None:
    """The token of an ``Authorization: Bearer ...`` header, if it has a usable one."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or not token.isascii():
        return None
    return token


BUDGET_PREFIX = "bud_"


async def create_budget(request: web.Request) -> web.Response:
    store, tenant = _store(request), await _tenant(request)
    data = await read_json_object(request)
    label, cap_micros = _label(data), _cap(data)
    expires_in = _duration(data, "expires_in")
    now = now_micros()
    budget = BudgetRecord(
        id=BUDGET_PREFIX + secrets.token_hex(12),
        tenant=tenant,
        label=label,
        cap_micros=cap_micros,
        created_at=now,
        expires_at=now + _micros(expires_in),
    )
    await store.insert_budget(budget)
    return web.json_response(budget_json(budget, now, spent=0), status=201)


async def get_budget(request: web.Request) -> web.Response:
    store, tenant = _store(request), await _tenant(request)
    budget_id = request.match_info["budget_id"]
    budget = await store.get_budget(tenant, budget_id) if _can_be_id(budget_id) else None
    if budget is None:
        return _budget_not_found(budget_id)
    now = now_micros()
    await request.app[LEDGER].flush()  # spend as of every request answered so far
    spend = await store.budget_spend(budget.id, utc_day(now))
    return web.json_response(
        {
            **budget_json(budget, now, spent=spend.spent),
            "reserved_today_usd": format_usd(spend.reserved),
        }
    )


async def revoke_budget(request: web.Request) -> web.Response:
    """Revoke a budget and every key drawing from it; idempotent."""
    tenant, budget_id = await _tenant(request), request.match_info["budget_id"]
    if not _can_be_id(budget_id):
        return _budget_not_found(budget_id)
    budget = await _store(request).revoke_budget(tenant, budget_id, now_micros())
    if budget is None or budget.revoked_at is None:
        return _budget_not_found(budget_id)
    return web.json_response(
        {
            "id": budget.id,
            "object": "budget",
            "status": "revoked",
            "revoked_at": format_time(to_datetime(budget.revoked_at)),
        }
    )


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text; behind a bearer token when the server is given one
    (``--metrics-token``), compared in constant time (as hashes of equal length)."""
    expected = request.app[METRICS_TOKEN_HASH]
    if expected:
        token = _bearer(request)
        presented = hash_token(token) if token is not None else ""
        if not hmac.compare_digest(presented, expected):
            return error_response(
                401,
                "unauthorized",
                "missing or wrong metrics token (Authorization: Bearer ...)",
                headers={"WWW-Authenticate": 'Bearer realm="keybrake metrics"'},
            )
    store, now = _store(request), now_micros()
    active = await store.count_active_keys(now)
    unconfirmed = await store.unconfirmed(utc_day(now))
    text = request.app[METRICS].render(active_keys=active, unconfirmed_today=unconfirmed)
    return web.Response(
        text=text,
        content_type="text/plain",
        charset="utf-8",
        headers={"X-Content-Type-Options": "nosniff"},
    )


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


async def healthz(request: web.Request) -> web.Response:
    """200 while the store answers and takes writes, else 503 with the reason.

    Cheap enough to poll: one trivial query, and what the ledger and the audit writer
    already know from their last writes (the ledger owes settlements the store refused; the
    audit writer's last batch failed). Both retry by themselves, so the answer turns 200
    again on its own once the store takes writes.
    """
    ledger, audit = request.app[LEDGER], request.app[AUDIT]
    reason = None
    if ledger.owed:
        reason = (
            f"the ledger can't write to the store ({ledger.last_error or 'unknown error'});"
            f" {ledger.owed} settlement(s) wait to be retried"
        )
    elif audit.failing is not None:
        reason = f"the audit log can't write to the store ({audit.failing})"
    else:
        try:
            await _store(request).ping()
        except StoreUnavailable as exc:
            reason = f"the store doesn't answer ({exc})"
    if reason is None:
        return web.json_response({"status": "ok"})
    body, headers = error_body(
        503, "store_unavailable", f"keybrake's store is unhealthy: {reason}", reason=reason
    )
    return web.json_response({"status": "unhealthy", **body}, status=503, headers=headers)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_post("/v1/keys", create_key)
    app.router.add_get("/v1/keys", list_keys)
    # Before the routes of one key: "revoke" is never a key id (they are "vk_...").
    app.router.add_post("/v1/keys/revoke", revoke_keys)
    app.router.add_get("/v1/keys/{key_id}", get_key)
    app.router.add_delete("/v1/keys/{key_id}", revoke_key)
    app.router.add_post("/v1/keys/{key_id}/refresh", refresh_key)
    app.router.add_post("/v1/budgets", create_budget)
    app.router.add_get("/v1/budgets/{budget_id}", get_budget)
    app.router.add_delete("/v1/budgets/{budget_id}", revoke_budget)
    app.router.add_get("/v1/audit", list_audit)
    app.router.add_get("/v1/usage", list_usage)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)
