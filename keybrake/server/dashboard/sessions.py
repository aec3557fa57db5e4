"""Dashboard sessions: kept in the server's memory, known there only by a hash of their id.

The browser holds a random session id in a cookie; the server keeps, under the id's SHA-256,
the tenant, the hash of the master token that signed in (checked again on every request, so
revoking the master token ends its sessions), the session's CSRF token and its expiry. The
master token itself is kept nowhere.

Sessions live in the process that made them: a restart signs everyone out, and each replica
has its own (see docs/dashboard.md). In exchange, signing out ends a session at once and for
good, and there is no signing key to configure, share and rotate.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable

import attrs

__all__ = [
    "MAX_SESSIONS",
    "MAX_SESSIONS_PER_TOKEN",
    "SESSION_TTL_SECONDS",
    "Lookup",
    "Session",
    "Sessions",
    "SessionsFull",
]

#: How long a session lasts from sign-in, whatever is done with it.
SESSION_TTL_SECONDS = 12 * 3600
#: Sessions one process keeps at most; past it, a sign-in is refused (never another's ended).
MAX_SESSIONS = 10_000
#: Sessions one master token keeps at most; past it, its own oldest ends.
MAX_SESSIONS_PER_TOKEN = 20


class SessionsFull(Exception):
    """The process keeps as many sessions as it may: a sign-in must wait for some to end."""


@attrs.define(kw_only=True)
class Session:
    tenant: str
    #: SHA-256 of the master token that signed in (what the store keeps of it anyway).
    admin_token_hash: str
    csrf_token: str
    expires_at: float
    #: A message for the next page shown (what the last change did), then cleared.
    flash: str | None = None
    #: Set once the session is seen expired: it never comes back, whatever the clock says.
    expired: bool = False

    def csrf_matches(self, candidate: str) -> bool:
        """Whether ``candidate`` is this session's CSRF token (compared in constant time)."""
        return hmac.compare_digest(candidate.encode(), self.csrf_token.encode())


class Lookup(enum.Enum):
    """Why a cookie names no live session."""

    UNKNOWN = "unknown"
    EXPIRED = "expired"


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class Sessions:
    """The live sessions of one process.

    Args:
        ttl: seconds a session lasts from sign-in.
        clock: the time in seconds (tests move it forward).
        limit: sessions kept at most.
    """

    def __init__(
        self,
        *,
        ttl: float = SESSION_TTL_SECONDS,
        clock: Callable[[], float] = time.time,
        limit: int = MAX_SESSIONS,
        per_token: int = MAX_SESSIONS_PER_TOKEN,
    ) -> None:
        self.ttl = ttl
        self.clock = clock
        self.limit = limit
        self.per_token = per_token
        self._by_digest: dict[str, Session] = {}

    def __len__(self) -> int:
        return len(self._by_digest)

    def create(self, tenant: str, admin_token_hash: str) -> tuple[str, Session]:
        """Start a session; return its id (for the cookie, and nowhere else) and itself.

        A master token keeps its :attr:`per_token` newest sessions (signing in once more ends
        its own oldest); sessions of other tokens, other tenants' included, are never ended
        to make room: one who holds some tenant's token can't sign everyone else out.

        Raises:
            SessionsFull: the process already keeps :attr:`limit` sessions.
        """
        now = self.clock()
        self._drop_expired(now)
        # Dicts keep insertion order: the oldest first.
        mine = [d for d, s in self._by_digest.items() if s.admin_token_hash == admin_token_hash]
        while len(mine) >= self.per_token:
            del self._by_digest[mine.pop(0)]
        if len(self._by_digest) >= self.limit:
            raise SessionsFull(f"{len(self._by_digest)} sessions are open")
        session_id = secrets.token_urlsafe(32)
        session = Session(
            tenant=tenant,
            admin_token_hash=admin_token_hash,
            csrf_token=secrets.token_urlsafe(32),
            expires_at=now + self.ttl,
        )
        self._by_digest[_digest(session_id)] = session
        return session_id, session

    def get(self, session_id: str) -> Session | Lookup:
        """The live session of ``session_id``, or why there is none.

        An expired session stays known as expired for another ``ttl`` (so each page that
        still names it can say so), then is forgotten.
        """
        session = self._by_digest.get(_digest(session_id))
        if session is None:
            return Lookup.UNKNOWN
        if session.expired or self.clock() >= session.expires_at:
            session.expired = True
            return Lookup.EXPIRED
        return session

    def end(self, session_id: str) -> None:
        """Forget a session (signing out); an unknown id is ignored."""
        self._by_digest.pop(_digest(session_id), None)

    def _drop_expired(self, now: float) -> None:
        expired = [d for d, s in self._by_digest.items() if now >= s.expires_at + self.ttl]
        for digest in expired:
            del self._by_digest[digest]
