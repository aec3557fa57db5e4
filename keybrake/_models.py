"""Issuance API models."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

import attrs

from keybrake._common import parse_time

__all__ = [
    "AuditRecord",
    "BudgetInfo",
    "IssuedKey",
    "KeyInfo",
    "Lease",
    "Revocation",
    "UsageRecord",
]


def _time(data: Mapping[str, Any], name: str) -> datetime:
    return parse_time(str(data[name]))


def _opt_time(data: Mapping[str, Any], name: str) -> datetime | None:
    value = data.get(name)
    return None if value is None else parse_time(str(value))


@attrs.frozen(kw_only=True)
class KeyInfo:
    """A vault key as the issuance API describes it (never with its token).

    Returned by ``get_key()`` and ``list_keys()``. Money is ``Decimal``, times are
    timezone-aware ``datetime``s in UTC.

    Attributes:
        id: ``vk_...``.
        vendor: ``"stripe"`` or ``"twilio"``.
        label: the key's label.
        allowed_endpoints: the allowlist patterns.
        daily_usd_cap: the daily spend cap in USD.
        created_at: when the key was issued.
        expires_at: when the key expires, unless refreshed.
        max_expires_at: no refresh goes past this.
        status: ``"active"``, ``"expired"`` or ``"revoked"``.
        revoked_at: when the key was revoked, if it was.
        spent_today_usd: settled spend in the current UTC day (Twilio estimates included,
            requests in flight not); set by ``get_key()`` only.
        reserved_today_usd: reserved right now for requests in flight; set by ``get_key()``
            only.
        metadata: the string pairs stored with the key.
        stripe_account: the Stripe connected account the key acts on, if any.
        rate_limit: at most so many forwarded requests in any window (``"10/m"``), if set.
        max_requests: at most so many forwarded requests over the key's life, if set.
        requests_used: forwarded requests so far; set by ``get_key()`` only.
        budget: the run budget (``bud_...``) the key draws from, if any.
        raw: the JSON answer as received (left out of ``repr()`` and ``==``).
    """

    id: str
    vendor: str
    label: str
    allowed_endpoints: tuple[str, ...]
    daily_usd_cap: Decimal
    created_at: datetime
    expires_at: datetime
    max_expires_at: datetime
    status: str
    revoked_at: datetime | None = None
    spent_today_usd: Decimal | None = None
    reserved_today_usd: Decimal | None = None
    metadata: Mapping[str, str] = attrs.field(factory=dict)
    #: The Stripe connected account the key acts on, if it is pinned to one.
    stripe_account: str | None = None
    rate_limit: str | None = None
    max_requests: int | None = None
    requests_used: int | None = None
    budget: str | None = None
    raw: Mapping[str, Any] = attrs.field(factory=dict, repr=False, eq=False)

    @classmethod
    def _fields_from_json(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        spent = data.get("spent_today_usd")
        reserved = data.get("reserved_today_usd")
        return {
            "id": str(data["id"]),
            "vendor": str(data["vendor"]),
            "label": str(data.get("label", "")),
            "allowed_endpoints": tuple(data.get("allowed_endpoints", ())),
            "daily_usd_cap": Decimal(str(data["daily_usd_cap"])),
            "created_at": _time(data, "created_at"),
            "expires_at": _time(data, "expires_at"),
            "max_expires_at": _time(data, "max_expires_at"),
            "status": str(data["status"]),
            "revoked_at": _opt_time(data, "revoked_at"),
            "spent_today_usd": None if spent is None else Decimal(str(spent)),
            "reserved_today_usd": None if reserved is None else Decimal(str(reserved)),
            "metadata": dict(data.get("metadata") or {}),
            "stripe_account": data.get("stripe_account"),
            "rate_limit": data.get("rate_limit"),
            "max_requests": data.get("max_requests"),
            "requests_used": data.get("requests_used"),
            "budget": data.get("budget"),
            "raw": dict(data),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> KeyInfo:
        return cls(**cls._fields_from_json(data))


def _no_token_raw(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k != "token"}


@attrs.frozen(kw_only=True)
class IssuedKey(KeyInfo):
    """A freshly issued key, with its token (shown only once; hidden from ``repr()``).

    Returned by ``issue_key()`` and ``VaultKey.info``: a [`KeyInfo`][keybrake.KeyInfo] with one
    more field.

    Attributes:
        token: the key's secret, ``vault_key_...``; left out of ``raw``.
    """

    token: str = attrs.field(repr=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> IssuedKey:
        fields = cls._fields_from_json(data)
        fields["raw"] = _no_token_raw(data)
        return cls(token=str(data["token"]), **fields)


@attrs.frozen(kw_only=True)
class Lease:
    """What a refresh granted: the key's new expiry, never past ``max_expires_at``.

    Attributes:
        id: the key's id.
        expires_at: the new expiry.
        max_expires_at: no refresh goes past this.
    """

    id: str
    expires_at: datetime
    max_expires_at: datetime

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Lease:
        return cls(
            id=str(data["id"]),
            expires_at=_time(data, "expires_at"),
            max_expires_at=_time(data, "max_expires_at"),
        )


@attrs.frozen(kw_only=True)
class Revocation:
    """A revoked key and when it was revoked (the first time, if revoked twice).

    Attributes:
        id: the key's id.
        revoked_at: the first revocation time.
    """

    id: str
    revoked_at: datetime

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Revocation:
        return cls(id=str(data["id"]), revoked_at=_time(data, "revoked_at"))


@attrs.frozen(kw_only=True)
class AuditRecord:
    """One proxy decision from the audit log, as yielded by ``Keybrake.audit()``.

    Attributes:
        id: the entry's number; later entries have larger ones.
        at: when the proxy answered.
        key_id: the vault key; ``None`` when the request named no known key.
        label: the key's label, redacted.
        vendor: ``"stripe"`` or ``"twilio"``; ``None`` for an unknown vendor.
        method: ``"POST"``, ``"GET"``, ...
        path: the vendor path as sent, without the query string, redacted.
        decision: ``"allowed"`` (forwarded) or the refusal code (``"cap_exhausted"``, ...).
        status: the HTTP status the caller got: the vendor's when forwarded.
        reserved_usd: what was reserved against the cap before forwarding.
        settled_usd: what was counted once the vendor answered (0 when released).
        upstream_ms: how long the vendor took to answer; ``None`` if it was not asked or
            did not answer.
        vendor_request_id: the vendor's ``Request-Id`` or ``Twilio-Request-Id``.
        budget: the run budget (``bud_...``) the entry's key draws from, if any.
        raw: the JSON entry as received (left out of ``repr()`` and ``==``).
    """

    id: int
    at: datetime
    key_id: str | None
    label: str | None
    vendor: str | None
    method: str
    path: str
    decision: str
    status: int
    reserved_usd: Decimal
    settled_usd: Decimal
    upstream_ms: float | None = None
    vendor_request_id: str | None = None
    budget: str | None = None
    raw: Mapping[str, Any] = attrs.field(factory=dict, repr=False, eq=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AuditRecord:
        upstream_ms = data.get("upstream_ms")
        return cls(
            id=int(data["id"]),
            at=_time(data, "at"),
            key_id=data.get("key_id"),
            label=data.get("label"),
            vendor=data.get("vendor"),
            method=str(data["method"]),
            path=str(data["path"]),
            decision=str(data["decision"]),
            status=int(data["status"]),
            reserved_usd=Decimal(str(data["reserved_usd"])),
            settled_usd=Decimal(str(data["settled_usd"])),
            upstream_ms=None if upstream_ms is None else float(upstream_ms),
            vendor_request_id=data.get("vendor_request_id"),
            budget=data.get("budget"),
            raw=dict(data),
        )


@attrs.frozen(kw_only=True)
class UsageRecord:
    """A key's spend on one UTC day, as yielded by ``Keybrake.usage()``.

    Attributes:
        key_id: ``vk_...``.
        label: the key's label.
        day: the UTC day, ``"2026-11-27"``.
        spent_usd: settled spend that day (Twilio estimates included).
        reserved_usd: reserved for requests still in flight.
        daily_usd_cap: the key's cap; ``spent_usd + reserved_usd`` never passes it.
        unconfirmed_usd: of ``spent_usd``, what was counted at its bound because the
            request's outcome was lost: the vendor may have charged less.
        budget: the run budget the key draws from, if any.
    """

    key_id: str
    label: str
    day: str
    spent_usd: Decimal
    reserved_usd: Decimal
    daily_usd_cap: Decimal
    #: Of ``spent_usd``, what was counted at its bound because the request's outcome was
    #: lost (the server stopped before settling it): the vendor may have charged less.
    unconfirmed_usd: Decimal = Decimal(0)
    budget: str | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> UsageRecord:
        return cls(
            key_id=str(data["key_id"]),
            label=str(data.get("label", "")),
            day=str(data["day"]),
            spent_usd=Decimal(str(data["spent_usd"])),
            reserved_usd=Decimal(str(data["reserved_usd"])),
            daily_usd_cap=Decimal(str(data["daily_usd_cap"])),
            unconfirmed_usd=Decimal(str(data.get("unconfirmed_usd", "0"))),
            budget=data.get("budget"),
        )


@attrs.frozen(kw_only=True)
class BudgetInfo:
    """A run budget as the issuance API describes it: a daily cap shared by every key
    drawing from it, whatever their vendors.

    Returned by ``create_budget()`` and ``get_budget()``.

    Attributes:
        id: ``bud_...``.
        label: the budget's label.
        daily_usd_cap: the shared cap, in USD per UTC day.
        created_at: when the budget was made.
        expires_at: when it ends; its keys end with it.
        status: ``"active"``, ``"expired"`` or ``"revoked"``.
        revoked_at: when it was revoked, if it was.
        spent_today_usd: settled spend of all its keys in the current UTC day.
        reserved_today_usd: reserved right now; set by ``get_budget()`` only.
        raw: the JSON answer as received (left out of ``repr()`` and ``==``).
    """

    id: str
    label: str
    daily_usd_cap: Decimal
    created_at: datetime
    expires_at: datetime
    status: str
    revoked_at: datetime | None = None
    spent_today_usd: Decimal = Decimal(0)
    reserved_today_usd: Decimal | None = None
    raw: Mapping[str, Any] = attrs.field(factory=dict, repr=False, eq=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BudgetInfo:
        reserved = data.get("reserved_today_usd")
        return cls(
            id=str(data["id"]),
            label=str(data.get("label", "")),
            daily_usd_cap=Decimal(str(data["daily_usd_cap"])),
            created_at=_time(data, "created_at"),
            expires_at=_time(data, "expires_at"),
            status=str(data["status"]),
            revoked_at=_opt_time(data, "revoked_at"),
            spent_today_usd=Decimal(str(data.get("spent_today_usd", "0"))),
            reserved_today_usd=None if reserved is None else Decimal(str(reserved)),
            raw=dict(data),
        )
