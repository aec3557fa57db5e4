"""Master tokens: one per team (tenant), stored only as hashes, shown once when created."""

from __future__ import annotations

import hmac
import re
import secrets

from keybrake.server.stores.base import Store
from keybrake.server.util import hash_token, now_micros

__all__ = [
    "ADMIN_TOKEN_PREFIX",
    "DEFAULT_TENANT",
    "create_admin_token",
    "generate_admin_token",
    "tenant_of",
]

ADMIN_TOKEN_PREFIX = "kb_admin_"
DEFAULT_TENANT = "default"
_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def generate_admin_token() -> str:
    return ADMIN_TOKEN_PREFIX + secrets.token_urlsafe(32)


async def create_admin_token(store: Store, tenant: str = DEFAULT_TENANT) -> tuple[str, str]:
    """Make a master token for ``tenant``; return ``(token id, token)``. Only its hash is kept.

    Raises:
        ValueError: a tenant name that is not 1-63 letters, digits, ``_``, ``.`` or ``-``.
    """
    if not _TENANT.match(tenant):
        raise ValueError(f"not a tenant name: {tenant!r} (letters, digits, '_', '.', '-')")
    token = generate_admin_token()
    token_id = "tok_" + secrets.token_hex(8)
    await store.add_admin_token(token_id, hash_token(token), tenant, now_micros())
    return token_id, token


async def tenant_of(store: Store, configured_hash: str, token_hash: str) -> str | None:
    """The tenant a master token's hash signs in as, or None: the configured token's is the
    default tenant's (compared in constant time), any other is looked up in the store."""
    if hmac.compare_digest(token_hash, configured_hash):
        return DEFAULT_TENANT
    return await store.tenant_for_admin_token(token_hash)
