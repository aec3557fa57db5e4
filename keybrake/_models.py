"""Issuance API models."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

import attrs

from keybrake._common import parse_time

__all__ = ["IssuedKey", "KeyInfo", "Lease", "Revocation"]


def _time(data: Mapping[str, Any], name: str) -> datetime:
    return parse_time(str(data[name]))


def _opt_time(data: Mapping[str, Any], name: str) -> datetime | None:
    value = data.get(name)
    return None if value is None else parse_time(str(value))


@attrs.frozen(kw_only=True)
class KeyInfo:
    """A vault key as the issuance API describes it (never with its token)."""

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
    metadata: Mapping[str, str] = attrs.field(factory=dict)
    raw: Mapping[str, Any] = attrs.field(factory=dict, repr=False, eq=False)

    @classmethod
    def _fields_from_json(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        spent = data.get("spent_today_usd")
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
            "metadata": dict(data.get("metadata") or {}),
            "raw": dict(data),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> KeyInfo:
        return cls(**cls._fields_from_json(data))


def _no_token_raw(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k != "token"}


@attrs.frozen(kw_only=True)
class IssuedKey(KeyInfo):
    """A freshly issued key, with its token (shown only once; hidden from ``repr()``)."""

    token: str = attrs.field(repr=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> IssuedKey:
        fields = cls._fields_from_json(data)
        fields["raw"] = _no_token_raw(data)
        return cls(token=str(data["token"]), **fields)


@attrs.frozen(kw_only=True)
class Lease:
    """What a refresh granted: the key's new expiry, never past ``max_expires_at``."""

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
    """A revoked key and when it was revoked (the first time, if revoked twice)."""

    id: str
    revoked_at: datetime

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Revocation:
        return cls(id=str(data["id"]), revoked_at=_time(data, "revoked_at"))
