"""Small helpers the server's packages share: time, UTC days, token hashing, redaction."""

from __future__ import annotations

import functools
import hashlib
import re
import time
from datetime import datetime, timezone
from urllib.parse import unquote

__all__ = ["hash_token", "now_micros", "redact", "to_datetime", "utc_day"]


def hash_token(token: str) -> str:
    """What we store instead of a token: its SHA-256, hex."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def now_micros() -> int:
    return time.time_ns() // 1000


def to_datetime(micros: int) -> datetime:
    return datetime.fromtimestamp(micros / 1_000_000, tz=timezone.utc)


def utc_day(micros: int) -> str:
    """The spend window a moment falls in: its UTC calendar day (``"2026-11-27"``)."""
    return _day_name(micros // 86_400_000_000)


@functools.lru_cache(maxsize=8)
def _day_name(day_number: int) -> str:
    return datetime.fromtimestamp(day_number * 86_400, tz=timezone.utc).strftime("%Y-%m-%d")


_SECRET = re.compile(
    r"(vault_key_|kb_admin_)[A-Za-z0-9_\-]+"
    # The rest of an Authorization header's line, in a header block or a dict's repr.
    r"|(?i:(authorization['\"]?[ \t]*[:=,][ \t]*))[^\r\n]+"
    # A credential after its scheme: token68 of 8 characters or more, so "Basic plan" stays.
    r"|(?i:(\b(?:bearer|basic)[ \t]+))[A-Za-z0-9\-._~+/]{8,}=*"
)
_HINTS = ("vault_key_", "kb_admin_", "authorization", "bearer", "basic")


def redact(text: str) -> str:
    """Hide anything that looks like a credential: a vault key or master token wherever it
    is, the rest of the line after ``Authorization:``, and the credential after ``Bearer``
    or ``Basic`` (Twilio's Basic carries the vault key base64-encoded, out of the first
    rule's reach). What names the secret is kept, the secret becomes ``***``. Text with
    percent-escapes is decoded first, so an escaped token is caught too.
    """
    if "%" in text:
        # An escaped credential (``vault%5Fkey_...``) is one all the same: redact what it
        # decodes to.
        text = unquote(text)
    lowered = text.lower()
    if not any(hint in lowered for hint in _HINTS):
        return text  # the common case, without the regex
    return _SECRET.sub(_keep_name, text)


def _keep_name(match: re.Match[str]) -> str:
    return next(group for group in match.groups() if group is not None) + "***"
